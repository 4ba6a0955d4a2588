//! The report of a benchmark run, shared by `llava bench` (src/bench.rs) and the llama.cpp peer
//! (benches/peer-llamacpp): the same JSON fields, the same table and the same token ids, so
//! benches/compare.sh reads both alike. The peer crate does not depend on llava-edge, only on
//! this.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Tokens per second and milliseconds of a token test's runs.
pub fn token_test(tokens: usize, samples: &[Duration]) -> Value {
    let rates: Vec<f64> = samples
        .iter()
        .map(|d| tokens as f64 / d.as_secs_f64().max(1e-9))
        .collect();
    let times: Vec<f64> = samples.iter().map(|&d| ms(d)).collect();
    json!({
        "tokens": tokens,
        "tokens_per_second": spread(&rates),
        "ms": spread(&times),
        "samples_ms": times,
    })
}

/// Median (the mean of the middle two for an even count), min and max.
pub fn spread(values: &[f64]) -> Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    json!({ "median": median, "min": v[0], "max": v[n - 1] })
}

pub fn file_entry(path: &Path) -> Result<Value> {
    let bytes = std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .len();
    Ok(json!({ "path": path.display().to_string(), "bytes": bytes }))
}

/// The process's peak resident set (`VmHWM`), where /proc says it; `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `count` ids: BOS first when `bos` is given, then ids drawn from `candidates` by a fixed
/// xorshift64*, so both runtimes see the same ids for the same vocabulary.
pub fn bench_tokens<T: Copy + Default>(candidates: &[T], bos: Option<T>, count: usize) -> Vec<T> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut ids: Vec<T> = (0..count)
        .map(|_| {
            if candidates.is_empty() {
                return T::default();
            }
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
            candidates[(r % candidates.len() as u64) as usize]
        })
        .collect();
    if let (Some(bos), Some(first)) = (bos, ids.first_mut()) {
        *first = bos;
    }
    ids
}

/// The report as a Markdown table, with the setup on the lines above it.
pub fn table(r: &Value) -> String {
    let mb = |v: &Value| {
        v.as_f64()
            .map_or("n/a".into(), |b| format!("{:.1} MB", b / 1e6))
    };
    let mut out = format!(
        "{}: {} ({}), {} threads, {} kernels, {} KV cache, loaded in {:.0} ms, peak RSS {}\n",
        r["runtime"].as_str().unwrap_or(""),
        r["model"]["path"].as_str().unwrap_or(""),
        mb(&r["model"]["bytes"]),
        r["threads"],
        r["kernels"].as_str().unwrap_or(""),
        r["kv_type"].as_str().unwrap_or(""),
        r["load_ms"].as_f64().unwrap_or(0.0),
        mb(&r["peak_rss_bytes"]),
    );
    if !r["mmproj"].is_null() {
        out += &format!(
            "mmproj: {} ({}), loaded in {:.0} ms; image: {}\n",
            r["mmproj"]["path"].as_str().unwrap_or(""),
            mb(&r["mmproj"]["bytes"]),
            r["encode"]["mmproj_load_ms"].as_f64().unwrap_or(0.0),
            r["encode"]["image"].as_str().unwrap_or(""),
        );
    }
    out += "\n| test | median | min | max | unit |\n|---|---:|---:|---:|---|\n";
    let row = |name: String, s: &Value, unit: &str| {
        let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
        format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {unit} |\n",
            f("median"),
            f("min"),
            f("max")
        )
    };
    let depth = match r["depth"].as_u64() {
        Some(d) if d > 0 => format!(" @ d{d}"),
        _ => String::new(),
    };
    for key in ["pp", "tg"] {
        let t = &r[key];
        if !t.is_null() {
            out += &row(
                format!("{key}{}{depth}", t["tokens"]),
                &t["tokens_per_second"],
                "tokens/s",
            );
        }
    }
    let e = &r["encode"];
    if !e.is_null() {
        let views = match e["views"].as_u64() {
            Some(v) => format!("{v} view(s), "),
            None => String::new(),
        };
        let name = format!(
            "image encode, {}x{}, {views}{} tokens",
            e["width"], e["height"], e["image_tokens"]
        );
        out += &row(name, &e["ms"], "ms");
    }
    let t = &r["ttft"];
    if !t.is_null() {
        let name = format!(
            "image question to first token, {} positions ({} text)",
            t["positions"], t["text_tokens"]
        );
        out += &row(name, &t["ms"], "ms");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle_and_the_ends() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0]),
            json!({"median": 2.0, "min": 1.0, "max": 3.0})
        );
        assert_eq!(
            spread(&[4.0, 1.0, 2.0, 3.0]),
            json!({"median": 2.5, "min": 1.0, "max": 4.0})
        );
    }

    #[test]
    fn token_ids_are_drawn_alike_for_any_id_type() {
        let a = bench_tokens(&[10u32, 20, 30], Some(1), 6);
        let b = bench_tokens(&[10i32, 20, 30], Some(1), 6);
        assert_eq!(a[0], 1);
        assert_eq!(a.iter().map(|&x| x as i32).collect::<Vec<_>>(), b);
        assert!(a[1..].iter().all(|x| [10, 20, 30].contains(x)));
        assert_eq!(bench_tokens::<u32>(&[], None, 2), [0, 0]);
    }
}
