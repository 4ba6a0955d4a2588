//! Ranges of the numeric flags, checked when the command line is parsed, each with the reason
//! in its message. What depends on the model (the context against the trained one and the
//! memory, threads against the CPUs) is checked again once the model is open.

/// Most worker threads accepted at all: far beyond any CPU this runs on; each thread gets a
/// stack and a share of every op, so absurd counts only fail slowly.
const MAX_THREADS: usize = 4096;

/// Largest context accepted: 16 M positions, 100 times the longest LLaMA-family context;
/// beyond it the KV cache could never be allocated.
const MAX_CONTEXT: usize = 1 << 24;

fn parse_usize(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .map_err(|_| format!("{s:?} is not a whole number of 0 or more"))
}

/// `-t/--threads`: 0 (one per physical core) to 4096.
pub fn threads(s: &str) -> Result<usize, String> {
    let n = parse_usize(s)?;
    if n > MAX_THREADS {
        return Err(format!(
            "{n} threads is more than any CPU has (at most {MAX_THREADS}; 0 picks one per core)"
        ));
    }
    Ok(n)
}

/// `-c/--ctx` and other counts of positions: 0 to 16 M.
pub fn context(s: &str) -> Result<usize, String> {
    let n = parse_usize(s)?;
    if n > MAX_CONTEXT {
        return Err(format!(
            "{n} positions is beyond any model's context (at most {MAX_CONTEXT})"
        ));
    }
    Ok(n)
}

/// `bench -r`: 1 to 1000 measured runs (each test's samples are kept).
pub fn repetitions(s: &str) -> Result<usize, String> {
    match parse_usize(s)? {
        0 => Err("at least 1 measured run".into()),
        n if n > 1000 => Err(format!("{n} runs: at most 1000 (a median needs far fewer)")),
        n => Ok(n),
    }
}

/// `--max-image-pixels`: at least 1.
pub fn max_pixels(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("0 would refuse every image; give at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number of pixels")),
    }
}

/// A `--seed`: `None` for a new one each run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed(pub Option<u64>);

/// `--seed`: a number, or -1 for a new seed each run (llama.cpp's convention).
pub fn seed(s: &str) -> Result<Seed, String> {
    if s.trim() == "-1" {
        return Ok(Seed(None));
    }
    s.parse::<u64>().map(|n| Seed(Some(n))).map_err(|_| {
        format!(
            "{s:?} is not a seed (0 to {}, or -1 for a random one)",
            u64::MAX
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_values_are_refused_with_the_reason() {
        assert_eq!(threads("8"), Ok(8));
        assert!(threads("100000").unwrap_err().contains("more than any CPU"));
        assert!(threads("-1").unwrap_err().contains("not a whole number"));
        assert_eq!(context("4096"), Ok(4096));
        assert!(context("18446744073709551615")
            .unwrap_err()
            .contains("beyond any model's context"));
        assert!(context("1000000000").is_err());
        assert!(max_pixels("0").unwrap_err().contains("refuse every image"));
        assert_eq!(seed("-1"), Ok(Seed(None)));
        assert_eq!(seed("42"), Ok(Seed(Some(42))));
        assert!(seed("-2").is_err());
    }
}
