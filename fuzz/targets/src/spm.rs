//! `spm_model`: SentencePiece's `tokenizer.model` protobuf, as the converter reads it for
//! checkpoints without a tokenizer.json.

use std::path::Path;

use llava_convert::SpmModel;

pub fn spm_model(data: &[u8]) {
    let Ok(model) = SpmModel::from_bytes(Path::new("tokenizer.model"), data) else {
        return;
    };
    // Every piece is at least its two-byte field header in the input.
    assert!(!model.pieces.is_empty() && model.pieces.len() <= data.len() / 2);
}
