//! What generation reports, and the stop-string filter of the generation loop
//! ([`Session::generate`](crate::Session::generate)): text is streamed never cut inside a
//! UTF-8 sequence or inside a possible stop string.

use std::time::Duration;

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
    /// The callback asked to stop (its reader went away, or the user interrupted).
    Cancelled,
}

impl StopReason {
    /// A few words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::EndOfText => "end of text",
            StopReason::StopString => "stop string",
            StopReason::MaxTokens => "max tokens",
            StopReason::ContextFull => "context full",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// Counts and timings of one prompt's prefill.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefillStats {
    /// Positions the prompt took, image positions included.
    pub positions: usize,
    /// Images encoded.
    pub images: usize,
    /// Positions the images took.
    pub image_positions: usize,
    /// Time spent encoding the images (tower and projector).
    pub encode_time: Duration,
    /// Time spent in the LLM over the prompt's positions.
    pub prefill_time: Duration,
}

impl PrefillStats {
    /// Prompt positions per second of LLM time.
    pub fn positions_per_second(&self) -> f64 {
        self.positions as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
}

/// Counts and timings of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationStats {
    /// Tokens sampled, the last one (an end-of-text token, say) included.
    pub generated_tokens: usize,
    /// Time from the first sample to the end.
    pub generation_time: Duration,
    /// Why it ended.
    pub stop_reason: StopReason,
}

impl GenerationStats {
    /// Generated tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.generated_tokens as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

/// Holds back the end of the output while it could still turn into a stop string.
pub(crate) struct StopFilter<'s> {
    stop: &'s [String],
    pending: String,
}

impl<'s> StopFilter<'s> {
    pub(crate) fn new(stop: &'s [String]) -> Self {
        StopFilter {
            stop,
            pending: String::new(),
        }
    }

    /// Adds text; emits what is final. Returns true when a stop string was found (the text
    /// before it has been emitted).
    pub(crate) fn push(&mut self, piece: &str, emit: &mut impl FnMut(&str)) -> bool {
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

    pub(crate) fn flush(&mut self, emit: &mut impl FnMut(&str)) {
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
