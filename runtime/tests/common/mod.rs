//! Helpers shared by the backend tests: random values, GGUF files of quantized tensors.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use llava_runtime::gguf::{GgufFile, GgufWriteError, GgufWriter};
use llava_runtime::quant::{self, GgmlType};

pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = llava_runtime::rng::SplitMix64(seed);
    (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
}

/// Writes f32 tensors `(name, type, shape, values)` to a GGUF file, quantizing each.
pub fn gguf(dir: &Path, tensors: &[(&str, GgmlType, Vec<u64>, Vec<f32>)]) -> Arc<GgufFile> {
    let path = dir.join("t.gguf");
    let mut w = GgufWriter::new();
    for (name, ty, shape, _) in tensors {
        w.add_tensor(name, *ty, shape).unwrap();
    }
    w.write(&path, |i, decl, out| -> Result<(), GgufWriteError> {
        let (_, ty, _, values) = &tensors[i];
        let mut words = vec![0u32; (decl.n_bytes() as usize).div_ceil(4)];
        let bytes = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..decl.n_bytes() as usize];
        quant::quantize_row(*ty, values, bytes).unwrap();
        out.write_all(bytes).unwrap();
        Ok(())
    })
    .unwrap();
    Arc::new(GgufFile::open(&path).unwrap())
}

pub fn dequantized(file: &GgufFile, name: &str) -> Vec<f32> {
    let t = file.tensor(name).unwrap();
    let mut out = vec![0f32; t.n_elements() as usize];
    quant::dequantize_row(t.ggml_type(), t.data, &mut out).unwrap();
    out
}

pub const WEIGHT_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];
