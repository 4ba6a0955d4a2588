//! SplitMix64, the project's one deterministic generator: sampling seeds, random weights of
//! synthetic models, and test data. Its output never changes between versions, so a seed
//! reproduces a run on any machine (Steele, Lea & Flood, "Fast splittable pseudorandom number
//! generators").

/// The generator; the tuple field is its state (the seed, before the first draw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Advances `state` and returns the next value: the generator as a function on a bare
    /// state, for callers that keep the state in their own structures.
    pub fn step(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        Self::step(&mut self.0)
    }

    /// Uniform in [0, 1), 24 bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1), 24 bits.
    pub fn next_signed(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in (0, 1], 53 bits (never 0: a logarithm's argument).
    pub fn next_f64_nonzero(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal, by Box–Muller on two draws.
    pub fn next_normal(&mut self) -> f32 {
        let (u1, u2) = (self.next_f64_nonzero(), self.next_f64_nonzero());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_splitmix64s() {
        // The reference implementation's first outputs for seed 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
        let mut r = SplitMix64(7);
        for _ in 0..1000 {
            let (u, s) = (r.clone().next_f32(), r.next_signed());
            assert!((0.0..1.0).contains(&u) && (-1.0..1.0).contains(&s));
        }
    }
}
