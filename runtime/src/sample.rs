//! Logits to a token: greedy, temperature, top-k, top-p, min-p, and repetition / frequency /
//! presence penalties, with a seed that makes runs reproducible.
//!
//! The stages run in llama.cpp's default order (`common/sampling.cpp`): penalties, top-k,
//! top-p, min-p, temperature, then a draw. The penalty arithmetic is llama.cpp's too, so the same
//! settings mean the same thing in both tools.

use crate::rng::SplitMix64;
use std::collections::HashMap;
use std::collections::VecDeque;

/// Sampling settings. The defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 (or below) picks the most likely token: greedy decoding.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities sum to at least `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens; 1 is off.
    pub repeat_penalty: f32,
    /// Subtract `frequency_penalty × count` from recently seen tokens' logits.
    pub frequency_penalty: f32,
    /// Subtract `presence_penalty` once from recently seen tokens' logits.
    pub presence_penalty: f32,
    /// How many of the most recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Seed of the random draws: the same seed, settings and logits give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token, no penalties.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every setting is in its range (the names in the message are the fields'):
    /// temperature 0 or more, top_p in (0, 1], min_p in [0, 1], repeat_penalty above 0, the
    /// other penalties finite.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be 0 or more, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!(
                "repeat_penalty must be above 0, got {}",
                self.repeat_penalty
            ));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !v.is_finite() {
                return Err(format!("{name} must be a finite number, got {v}"));
            }
        }
        Ok(())
    }
}

/// Picks tokens from logits. Holds the random state and the recent tokens the penalties use.
pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
    recent: VecDeque<u32>,
    /// Scratch space reused between calls: (token, logit), then (token, probability).
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler with `config`'s settings, no recent tokens and a random state seeded from
    /// `config.seed`.
    pub fn new(config: SamplerConfig) -> Self {
        Sampler {
            rng: SplitMix64(config.seed),
            // The window fills as tokens come; its length is a setting, not an allocation.
            recent: VecDeque::with_capacity(config.penalty_last_n.min(1024)),
            candidates: Vec::new(),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Records a token of the prompt or of the output, for the penalties.
    pub fn accept(&mut self, token: u32) {
        if self.config.penalty_last_n == 0 {
            return;
        }
        if self.recent.len() == self.config.penalty_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Chooses the next token from one position's logits. Does not call [`Sampler::accept`].
    ///
    /// # Panics
    /// If `logits` is empty.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "sampling from an empty vocabulary");
        let mut cands = std::mem::take(&mut self.candidates);
        cands.clear();
        cands.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        self.apply_penalties(&mut cands);

        let token = if self.config.temperature <= 0.0 {
            argmax(&cands)
        } else {
            self.draw(&mut cands)
        };
        self.candidates = cands;
        token
    }

    fn apply_penalties(&self, cands: &mut [(u32, f32)]) {
        let c = &self.config;
        let active =
            c.repeat_penalty != 1.0 || c.frequency_penalty != 0.0 || c.presence_penalty != 0.0;
        if !active || self.recent.is_empty() {
            return;
        }
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in &self.recent {
            *counts.entry(t).or_default() += 1;
        }
        for (&token, &count) in &counts {
            // Tokens outside the vocabulary (from a caller's prompt) are ignored.
            let Some((_, logit)) = cands.get_mut(token as usize) else {
                continue;
            };
            // llama.cpp: divide when positive, multiply when negative, so the penalty always
            // makes the token less likely.
            if *logit <= 0.0 {
                *logit *= c.repeat_penalty;
            } else {
                *logit /= c.repeat_penalty;
            }
            *logit -= count as f32 * c.frequency_penalty + c.presence_penalty;
        }
    }

    fn draw(&mut self, cands: &mut Vec<(u32, f32)>) -> u32 {
        let c = &self.config;
        // Most likely first; ties keep the lower token id, so results do not depend on the sort.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if c.top_k > 0 && c.top_k < cands.len() {
            cands.select_nth_unstable_by(c.top_k - 1, by_logit);
            cands.truncate(c.top_k);
        }
        cands.sort_unstable_by(by_logit);

        // Probabilities at temperature 1, for top-p and min-p (llama.cpp applies the
        // temperature after them).
        softmax(cands, 1.0);
        if c.top_p < 1.0 {
            let mut sum = 0.0;
            let mut keep = cands.len();
            for (i, &(_, p)) in cands.iter().enumerate() {
                sum += p;
                if sum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep);
        }
        if c.min_p > 0.0 {
            let threshold = cands[0].1 * c.min_p;
            let keep = cands.iter().take_while(|&&(_, p)| p >= threshold).count();
            cands.truncate(keep.max(1));
        }

        // Back to logits of the survivors, then the temperature.
        for (_, p) in cands.iter_mut() {
            *p = p.ln();
        }
        softmax(cands, c.temperature);

        let total: f32 = cands.iter().map(|&(_, p)| p).sum();
        let mut r = self.rng.next_f32() * total;
        for &(token, p) in cands.iter() {
            if r < p {
                return token;
            }
            r -= p;
        }
        cands.last().expect("at least one candidate").0
    }
}

/// The first token of largest logit.
fn argmax(cands: &[(u32, f32)]) -> u32 {
    let mut best = cands[0];
    for &c in &cands[1..] {
        if c.1 > best.1 {
            best = c;
        }
    }
    best.0
}

/// Replaces logits by `softmax(logit / temperature)`. `cands` is sorted most likely first.
fn softmax(cands: &mut [(u32, f32)], temperature: f32) {
    let max = cands[0].1;
    let mut sum = 0.0;
    for (_, v) in cands.iter_mut() {
        *v = ((*v - max) / temperature).exp();
        sum += *v;
    }
    for (_, v) in cands.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(temperature: f32) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        }
    }

    /// Draw counts over `n` samples.
    fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut h = vec![0.0; logits.len()];
        for _ in 0..n {
            h[s.sample(logits) as usize] += 1.0;
        }
        h.iter().map(|c| c / n as f64).collect()
    }

    fn softmax_ref(logits: &[f32], t: f64) -> Vec<f64> {
        let m = logits.iter().fold(f64::MIN, |m, &l| m.max(l as f64));
        let e: Vec<f64> = logits.iter().map(|&l| ((l as f64 - m) / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    #[test]
    fn greedy_takes_the_first_largest_logit() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(s.sample(&[-5.0]), 0);
    }

    #[test]
    fn draws_follow_the_softmax_at_the_given_temperature() {
        let logits = [1.0, 2.0, 0.5, -1.0, 1.5];
        for t in [1.0f32, 0.5, 2.0] {
            let mut s = Sampler::new(SamplerConfig {
                seed: 7,
                ..config(t)
            });
            let got = histogram(&mut s, &logits, 200_000);
            let want = softmax_ref(&logits, t as f64);
            for (g, w) in got.iter().zip(&want) {
                // 200k draws: the standard error of a frequency is below 0.0012.
                assert!((g - w).abs() < 0.006, "t={t}: got {got:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                ..config(1.0)
            });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_keeps_only_the_k_most_likely() {
        let logits = [0.0, 5.0, 4.0, 1.0, 3.0];
        let mut s = Sampler::new(SamplerConfig {
            top_k: 2,
            ..config(1.0)
        });
        let got = histogram(&mut s, &logits, 50_000);
        let want = softmax_ref(&[5.0, 4.0], 1.0);
        assert_eq!((got[0], got[3], got[4]), (0.0, 0.0, 0.0));
        assert!((got[1] - want[0]).abs() < 0.01 && (got[2] - want[1]).abs() < 0.01);
        let mut s = Sampler::new(SamplerConfig {
            top_k: 1,
            ..config(3.0)
        });
        assert!((0..100).all(|_| s.sample(&logits) == 1));
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.2 (as logits of their logs).
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut s = Sampler::new(SamplerConfig {
            top_p: 0.75,
            ..config(1.0)
        });
        let got = histogram(&mut s, &logits, 50_000);
        assert_eq!(got[2], 0.0);
        assert!((got[0] - 0.625).abs() < 0.01, "{got:?}");
        let mut s = Sampler::new(SamplerConfig {
            top_p: 0.5,
            ..config(1.0)
        });
        assert!((0..100).all(|_| s.sample(&logits) == 0));
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_best() {
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        // 0.2 < 0.5 × 0.5 is dropped, 0.3 is kept.
        let mut s = Sampler::new(SamplerConfig {
            min_p: 0.5,
            ..config(1.0)
        });
        let got = histogram(&mut s, &logits, 50_000);
        assert_eq!(got[2], 0.0);
        assert!((got[0] - 0.625).abs() < 0.01, "{got:?}");
    }

    #[test]
    fn penalties_follow_llama_cpp_arithmetic() {
        let cfg = SamplerConfig {
            repeat_penalty: 2.0,
            frequency_penalty: 0.25,
            presence_penalty: 0.5,
            penalty_last_n: 3,
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(cfg);
        // Token 0 is seen first, then pushed out of the 3-token window.
        for t in [0, 1, 1, 2] {
            s.accept(t);
        }
        let mut cands: Vec<(u32, f32)> = [4.0, 4.0, -1.0, 3.0]
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        s.apply_penalties(&mut cands);
        let got: Vec<f32> = cands.iter().map(|c| c.1).collect();
        // 1: 4/2 - 2×0.25 - 0.5 = 1.0; 2: -1×2 - 0.25 - 0.5 = -2.75; 0 and 3 untouched.
        assert_eq!(got, [4.0, 1.0, -2.75, 3.0]);
        assert_eq!(s.sample(&[4.0, 4.0, -1.0, 3.0]), 0);
    }
}
