//! `convert_inputs`: a Hugging Face checkpoint directory made from one input (config.json,
//! tokenizer files, safetensors shards, a separate vision tower), converted as `llava convert`
//! converts it: the LLM, and the mmproj file of a LLaVA checkpoint. What the converter writes
//! must read back as GGUF, and is then loaded as `llm_load` and `mmproj_load` load files.
//!
//! Input: one control byte (bits 0–2: the LLM preset, 3–5: the vision preset), then frames
//! (`input::frame`) whose tag picks the file, modulo the number of files.

use std::path::Path;

use llava_convert::{check_mmproj, convert_llama, convert_mmproj, Preset};

use crate::input::Input;
use crate::model::{llm_load, mmproj_load};

/// The files a frame's tag can name; `tower/` is given as `--vision-tower` when present.
pub const CHECKPOINT_FILES: [&str; 10] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "preprocessor_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "tower/config.json",
    "tower/model.safetensors",
    "tower/preprocessor_config.json",
];

pub fn convert_inputs(data: &[u8]) {
    let mut input = Input::new(data);
    let control = input.u8();
    let preset = Preset::ALL[usize::from(control & 7)];
    let vision_preset = Preset::ALL[usize::from(control >> 3 & 7)];
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (src, out) = (dir.path().join("src"), dir.path().join("out"));
    for d in [&src, &src.join("tower"), &out] {
        std::fs::create_dir_all(d).expect("a directory in the temporary one");
    }
    for (tag, bytes) in input.frames() {
        let path = src.join(CHECKPOINT_FILES[usize::from(tag) % CHECKPOINT_FILES.len()]);
        std::fs::write(path, bytes).expect("writable temporary directory");
    }
    let tower = src.join("tower");
    let has_tower = std::fs::read_dir(&tower).is_ok_and(|mut d| d.next().is_some());

    let llm = out.join("llm.gguf");
    if convert_llama(&src, &llm, preset).is_ok() {
        llm_load(&read_converted(&llm));
    }
    let mmproj = out.join("mmproj.gguf");
    let tower = has_tower.then_some(tower.as_path());
    // `llava convert` runs the checks first, so that a broken vision side fails before the
    // LLM is written: whatever converts must pass them.
    let checked = check_mmproj(&src, tower, vision_preset);
    if convert_mmproj(&src, tower, &mmproj, vision_preset).is_ok() {
        if let Err(e) = checked {
            panic!("converted, but check_mmproj refused it: {e}");
        }
        mmproj_load(&read_converted(&mmproj));
    }
}

/// A converted file's bytes, which must parse as GGUF.
fn read_converted(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("the converter's output");
    if let Err(e) = llava_runtime::gguf::GgufFile::from_bytes(path, bytes.clone()) {
        panic!("the converter wrote a file the reader refuses: {e}");
    }
    bytes
}
