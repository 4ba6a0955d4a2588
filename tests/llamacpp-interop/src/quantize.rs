//! llama.cpp's quantizer (`llama_model_quantize`, what `llama-quantize` runs) and `llava
//! quantize` on the same F32 file, preset by preset: the same tensors, each of the type
//! llama.cpp's mix rules choose, with the same bytes. One check of both the rules (which
//! tensors get more bits, the fallbacks for rows that are not a multiple of 256) and the
//! quantizers, against llama.cpp itself rather than against our reading of it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use llama_cpp_sys_2 as sys;

use crate::{c_string, llava_cmd, StatusOk};

/// `llava quantize --quant` names and llama.cpp's `llama_ftype` for each (the values GGUF's
/// `general.file_type` takes).
const PRESETS: [(&str, u32); 7] = [
    ("f16", 1),
    ("bf16", 32),
    ("q8_0", 7),
    ("q6_k", 18),
    ("q5_k_m", 17),
    ("q4_k_m", 15),
    ("q4_0", 2),
];

/// One tensor as `llava inspect --json` lists it, with its data.
#[derive(PartialEq, Eq)]
struct Tensor {
    ty: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// Every preset of [`PRESETS`] on `f32_file` (an F32 GGUF), both ways, into `work`; a line
/// per preset.
pub fn quantize_case(llava: &Path, f32_file: &Path, work: &Path) -> Result<Vec<String>> {
    let stem = f32_file
        .file_stem()
        .context("a file name")?
        .to_string_lossy();
    let mut lines = Vec::new();
    for (preset, ftype) in PRESETS {
        let ours = work.join(format!("{stem}-llava-{preset}.gguf"));
        let theirs = work.join(format!("{stem}-llamacpp-{preset}.gguf"));
        llava_cmd(llava, &["quantize"])
            .arg(f32_file)
            .arg(&ours)
            .args(["--quant", preset])
            .status_ok()?;
        let (input, output) = (c_string(f32_file)?, c_string(&theirs)?);
        // SAFETY: the default parameters are plain values; `llama_model_quantize` reads the two
        // NUL-terminated paths and the parameters, which outlive the call.
        let rc = unsafe {
            let mut params = sys::llama_model_quantize_default_params();
            params.ftype = ftype as _;
            params.nthread = 2;
            sys::llama_model_quantize(input.as_ptr(), output.as_ptr(), &params)
        };
        ensure!(rc == 0, "{preset}: llama_model_quantize returned {rc}");
        let (a, b) = (tensors(llava, &ours)?, tensors(llava, &theirs)?);
        let names = |t: &BTreeMap<String, Tensor>| t.keys().cloned().collect::<Vec<_>>();
        ensure!(
            names(&a) == names(&b),
            "{preset}: tensors differ: llava {:?}, llama.cpp {:?}",
            names(&a),
            names(&b)
        );
        for (name, t) in &a {
            let u = &b[name];
            ensure!(
                (&t.ty, &t.shape) == (&u.ty, &u.shape),
                "{preset}: {name}: llava {} {:?}, llama.cpp {} {:?}",
                t.ty,
                t.shape,
                u.ty,
                u.shape
            );
            ensure!(
                t.data == u.data,
                "{preset}: {name} ({}): bytes differ",
                t.ty
            );
        }
        let mut types: BTreeMap<&str, usize> = BTreeMap::new();
        for t in a.values() {
            *types.entry(&t.ty).or_default() += 1;
        }
        lines.push(format!(
            "{preset}: {} tensors of the same types, byte for byte ({})",
            a.len(),
            types
                .iter()
                .map(|(ty, n)| format!("{n} {ty}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(lines)
}

/// The tensors of GGUF file `path` by name: `llava inspect --json`'s list, and each one's
/// bytes read at the absolute offset it gives.
fn tensors(llava: &Path, path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let out = llava_cmd(llava, &["inspect", "--json"])
        .arg(path)
        .output()
        .with_context(|| format!("llava inspect {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "llava inspect {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let file = std::fs::read(path).with_context(|| path.display().to_string())?;
    let mut tensors = BTreeMap::new();
    for t in json["tensors"].as_array().context("no tensors")? {
        let field = |k: &str| t[k].as_u64().with_context(|| format!("{k} of {t}"));
        let (offset, bytes) = (field("offset")? as usize, field("bytes")? as usize);
        let data = file
            .get(offset..offset + bytes)
            .with_context(|| format!("{}: {t} beyond the file", path.display()))?;
        let name = t["name"].as_str().context("name")?.to_owned();
        let tensor = Tensor {
            ty: t["type"].as_str().context("type")?.to_owned(),
            shape: t["shape"]
                .as_array()
                .context("shape")?
                .iter()
                .map(|d| d.as_u64().context("a dimension"))
                .collect::<Result<_>>()?,
            data: data.to_vec(),
        };
        ensure!(
            tensors.insert(name.clone(), tensor).is_none(),
            "{name} twice"
        );
    }
    Ok(tensors)
}
