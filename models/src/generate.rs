//! The text generation loop: prefill the prompt in one batch, then decode token by token,
//! streaming text that is never cut inside a UTF-8 sequence or inside a possible stop string.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use llava_runtime::backend::Backend;
use llava_runtime::sample::Sampler;
use llava_runtime::tokenizer::Tokenizer;

use crate::llama::Llama;

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token (EOS, `<|im_end|>`, ...).
    EndOfText,
    /// A user stop string appeared; it is not part of the output.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The KV cache is full.
    ContextFull,
    /// `emit` asked to stop (its reader went away).
    Cancelled,
}

/// Timings and counts of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    pub generation_time: Duration,
    pub stop_reason: StopReason,
}

impl GenerationStats {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    pub fn generation_tokens_per_second(&self) -> f64 {
        self.generated_tokens as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

/// Runs `prompt` (embedding rows at positions `0..`) and generates up to `max_tokens` tokens,
/// calling `emit` with each piece of text as it becomes final; `emit` returning
/// `ControlFlow::Break` stops generation (nothing more is computed or emitted). `prompt_ids`
/// are the prompt's tokens where known, for the sampler's repetition penalties.
#[allow(clippy::too_many_arguments)]
pub fn generate<B: Backend>(
    backend: &B,
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    cache: &mut B::KvCache,
    n_ctx: usize,
    prompt: B::Tensor,
    prompt_ids: &[u32],
    sampler: &mut Sampler,
    max_tokens: usize,
    stop: &[String],
    mut emit: impl FnMut(&str) -> ControlFlow<()>,
) -> GenerationStats {
    let cancelled = Cell::new(false);
    let mut emit = |text: &str| {
        if !cancelled.get() && emit(text).is_break() {
            cancelled.set(true);
        }
    };
    let (n_prompt, _) = backend.shape(&prompt);
    assert!(
        n_prompt > 0 && n_prompt <= n_ctx,
        "the caller checks the prompt fits"
    );
    for &t in prompt_ids {
        sampler.accept(t);
    }
    let t0 = Instant::now();
    let mut logits = backend.download(&model.forward(backend, prompt, 0, cache, true));
    let prompt_time = t0.elapsed();

    let t1 = Instant::now();
    let mut decoder = tokenizer.stream_decoder().strip_leading_space(true);
    let mut text = StopFilter::new(stop);
    let mut generated = 0;
    let stop_reason = loop {
        if generated == max_tokens {
            break StopReason::MaxTokens;
        }
        let token = sampler.sample(&logits);
        sampler.accept(token);
        generated += 1;
        if tokenizer.is_eog(token) {
            break StopReason::EndOfText;
        }
        // An id the model produced is in its vocabulary; decode errors cannot happen here.
        let piece = decoder.push(token).unwrap_or("");
        if text.push(piece, &mut emit) {
            break StopReason::StopString;
        }
        if cancelled.get() {
            break StopReason::Cancelled;
        }
        let pos = n_prompt + generated - 1;
        if pos >= n_ctx {
            break StopReason::ContextFull;
        }
        let x = model.embed(backend, &[token]);
        logits = backend.download(&model.forward(backend, x, pos, cache, true));
    };
    if !matches!(stop_reason, StopReason::StopString | StopReason::Cancelled) {
        let rest = decoder.finish().to_owned();
        if !text.push(&rest, &mut emit) {
            text.flush(&mut emit);
        }
    }
    GenerationStats {
        prompt_tokens: n_prompt,
        prompt_time,
        generated_tokens: generated,
        generation_time: t1.elapsed(),
        stop_reason,
    }
}

/// Holds back the end of the output while it could still turn into a stop string.
struct StopFilter<'s> {
    stop: &'s [String],
    pending: String,
}

impl<'s> StopFilter<'s> {
    fn new(stop: &'s [String]) -> Self {
        StopFilter {
            stop,
            pending: String::new(),
        }
    }

    /// Adds text; emits what is final. Returns true when a stop string was found (the text
    /// before it has been emitted).
    fn push(&mut self, piece: &str, emit: &mut impl FnMut(&str)) -> bool {
        self.pending.push_str(piece);
        let first_stop = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            emit(&self.pending[..at]);
            self.pending.clear();
            return true;
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep = self
            .stop
            .iter()
            .map(|s| longest_suffix_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        if cut > 0 {
            emit(&self.pending[..cut]);
            self.pending.drain(..cut);
        }
        false
    }

    fn flush(&mut self, emit: &mut impl FnMut(&str)) {
        emit(&self.pending);
        self.pending.clear();
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on a char boundary.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], pieces: &[&str]) -> (String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stop);
        let mut out = String::new();
        for p in pieces {
            if f.push(p, &mut |s| out.push_str(s)) {
                return (out, true);
            }
        }
        f.flush(&mut |s| out.push_str(s));
        (out, false)
    }

    #[test]
    fn stop_strings_split_across_pieces_are_caught_and_not_emitted() {
        assert_eq!(
            run(&["USER:"], &["Hi", " there", " US", "ER", ": more"]),
            ("Hi there ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn held_back_text_is_released_when_it_stops_matching() {
        assert_eq!(run(&["USER:"], &["US", "A"]), ("USA".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["ü!"], &["ü", "ü", "x"]), ("üüx".into(), false));
    }
}
