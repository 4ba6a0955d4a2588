//! Quantization presets and llama.cpp's per-tensor type rules (`llama-quant.cpp`,
//! GGUF-AND-LLAVA.md §2.5), so a `q4_k_m` file of ours holds the same types as llama.cpp's.

use std::fmt;
use std::str::FromStr;

use llava_runtime::quant::GgmlType;

/// A whole-file quantization preset, as `llama-quantize` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Every matrix in f32.
    F32,
    /// Every matrix in f16.
    F16,
    /// Every matrix in bf16.
    BF16,
    /// Every matrix in Q8_0.
    Q8_0,
    /// Every matrix in Q6_K.
    Q6K,
    /// Q5_K, with Q6_K for `output.weight` and for `attn_v`/`ffn_down` in the layers
    /// [`use_more_bits`] picks.
    Q5KM,
    /// Q4_K, with Q6_K for `output.weight` and for `attn_v`/`ffn_down` in the layers
    /// [`use_more_bits`] picks.
    Q4KM,
    /// Q4_0, with Q6_K for `output.weight`.
    Q4_0,
}

impl Preset {
    /// Every preset, in the order error messages list them.
    pub const ALL: [Preset; 8] = [
        Preset::F32,
        Preset::F16,
        Preset::BF16,
        Preset::Q8_0,
        Preset::Q6K,
        Preset::Q5KM,
        Preset::Q4KM,
        Preset::Q4_0,
    ];

    /// llama-quantize's name for the preset in lower case (`q4_k_m`, `f16`, ...), as `--quant`
    /// takes it; [`FromStr`] parses it back, ignoring case.
    pub fn name(self) -> &'static str {
        match self {
            Preset::F32 => "f32",
            Preset::F16 => "f16",
            Preset::BF16 => "bf16",
            Preset::Q8_0 => "q8_0",
            Preset::Q6K => "q6_k",
            Preset::Q5KM => "q5_k_m",
            Preset::Q4KM => "q4_k_m",
            Preset::Q4_0 => "q4_0",
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Preset::F32 => 0,
            Preset::F16 => 1,
            Preset::Q4_0 => 2,
            Preset::Q8_0 => 7,
            Preset::Q4KM => 15,
            Preset::Q5KM => 17,
            Preset::Q6K => 18,
            Preset::BF16 => 32,
        }
    }

    /// The type most matrices get.
    fn default_type(self) -> GgmlType {
        match self {
            Preset::F32 => GgmlType::F32,
            Preset::F16 => GgmlType::F16,
            Preset::BF16 => GgmlType::BF16,
            Preset::Q8_0 => GgmlType::Q8_0,
            Preset::Q6K => GgmlType::Q6K,
            Preset::Q5KM => GgmlType::Q5K,
            Preset::Q4KM => GgmlType::Q4K,
            Preset::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// The type of one LLM tensor. `shape` is in ggml order; `n_layers` is the block count.
    pub fn tensor_type(self, name: &str, shape: &[u64], n_layers: usize) -> GgmlType {
        // Only matrices named *weight are quantized; norms and biases stay F32.
        if shape.len() < 2 || !name.ends_with("weight") || name.ends_with("_norm.weight") {
            return GgmlType::F32;
        }
        let float = matches!(self, Preset::F32 | Preset::F16 | Preset::BF16);
        let mut ty = self.default_type();
        if !float {
            if name == "output.weight" {
                if self != Preset::Q8_0 {
                    ty = GgmlType::Q6K;
                }
            } else if matches!(self, Preset::Q4KM | Preset::Q5KM)
                && (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
                && layer_of(name).is_some_and(|i| use_more_bits(i, n_layers))
            {
                ty = GgmlType::Q6K;
            }
        }
        fallback(ty, shape[0])
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Preset, String> {
        let lower = s.to_ascii_lowercase();
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == lower)
            .ok_or_else(|| {
                let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
                format!("unknown quantization {s:?} (one of {})", names.join(", "))
            })
    }
}

/// `blk.N.` → N.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama.cpp's choice of layers that get more bits: the first and last eighth, and every
/// third layer in between.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    // `i < n/8` is handled first, so the subtraction cannot underflow.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// When a row is not a whole number of 256-element super-blocks, llama.cpp falls back to a
/// 32-element format of similar size; and to F16 when even that does not fit.
fn fallback(ty: GgmlType, ne0: u64) -> GgmlType {
    if ne0.is_multiple_of(ty.block_size() as u64) {
        return ty;
    }
    let alt = match ty {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if ne0.is_multiple_of(alt.block_size() as u64) {
        alt
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_selects_llama_cpp_layers_for_32() {
        let chosen: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        // GGUF-AND-LLAVA.md §2.5: layers 0–3, 6, 9, ..., 27 and 28–31.
        let want: Vec<usize> = (0..4)
            .chain([6, 9, 12, 15, 18, 21, 24, 27])
            .chain(28..32)
            .collect();
        assert_eq!(chosen, want);
    }

    #[test]
    fn q4_k_m_mix() {
        let p = Preset::Q4KM;
        let m = [4096, 4096];
        assert_eq!(
            p.tensor_type("output.weight", &[4096, 32000], 32),
            GgmlType::Q6K
        );
        assert_eq!(
            p.tensor_type("token_embd.weight", &[4096, 32000], 32),
            GgmlType::Q4K
        );
        assert_eq!(p.tensor_type("blk.0.attn_v.weight", &m, 32), GgmlType::Q6K);
        assert_eq!(p.tensor_type("blk.4.attn_v.weight", &m, 32), GgmlType::Q4K);
        assert_eq!(
            p.tensor_type("blk.6.ffn_down.weight", &[11008, 4096], 32),
            GgmlType::Q6K
        );
        assert_eq!(p.tensor_type("blk.6.ffn_up.weight", &m, 32), GgmlType::Q4K);
        assert_eq!(p.tensor_type("blk.6.attn_q.weight", &m, 32), GgmlType::Q4K);
        assert_eq!(
            p.tensor_type("blk.0.attn_norm.weight", &[4096], 32),
            GgmlType::F32
        );
        // Rows of 64: Q4_K → Q5_0, Q6_K → Q8_0.
        assert_eq!(
            p.tensor_type("blk.4.attn_q.weight", &[64, 64], 32),
            GgmlType::Q5_0
        );
        assert_eq!(
            p.tensor_type("output.weight", &[64, 300], 32),
            GgmlType::Q8_0
        );
        // Rows of 48: nothing fits but F16.
        assert_eq!(
            p.tensor_type("blk.4.attn_q.weight", &[48, 64], 32),
            GgmlType::F16
        );
    }

    #[test]
    fn q4_0_and_q8_0_outputs() {
        assert_eq!(
            Preset::Q4_0.tensor_type("output.weight", &[4096, 32000], 32),
            GgmlType::Q6K
        );
        assert_eq!(
            Preset::Q4_0.tensor_type("token_embd.weight", &[4096, 32000], 32),
            GgmlType::Q4_0
        );
        assert_eq!(
            Preset::Q8_0.tensor_type("output.weight", &[4096, 32000], 32),
            GgmlType::Q8_0
        );
        assert_eq!(
            Preset::F16.tensor_type("output.weight", &[4096, 32000], 32),
            GgmlType::F16
        );
    }

    #[test]
    fn presets_parse_by_name() {
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>(), Ok(p));
        }
        assert_eq!("Q4_K_M".parse::<Preset>(), Ok(Preset::Q4KM));
        assert!("q3_k".parse::<Preset>().unwrap_err().contains("q4_k_m"));
    }
}
