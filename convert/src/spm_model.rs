//! SentencePiece's `tokenizer.model` (a `ModelProto` protobuf), read without a protobuf crate:
//! only the pieces, the special ids and the dummy-prefix flag are needed, and their wire format
//! is four field kinds.
//!
//! Field numbers are those of sentencepiece_model.proto: ModelProto { 1: repeated
//! SentencePiece pieces, 2: TrainerSpec, 3: NormalizerSpec }; SentencePiece { 1: piece,
//! 2: score (float), 3: type (enum: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
//! 6 byte) }; TrainerSpec { 40: unk_id, 41: bos_id, 42: eos_id, 43: pad_id }; NormalizerSpec
//! { 3: add_dummy_prefix }. The piece types are llama.cpp's token types one for one.

use std::path::Path;

use crate::error::ConvertError;

/// One vocabulary entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    /// The piece's text, with `▁` for space.
    pub text: String,
    /// Its SentencePiece score.
    pub score: f32,
    /// Its type, as llama.cpp's token types number them (1 normal, 2 unknown, 3 control, ...).
    pub kind: i32,
}

/// What llama.cpp's `tokenizer.ggml.*` keys need from a SentencePiece model.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmModel {
    /// The vocabulary, in id order.
    pub pieces: Vec<Piece>,
    /// The unknown token's id; `None` if the model disables it.
    pub unk_id: Option<u32>,
    /// The beginning-of-sequence token's id; `None` if the model disables it.
    pub bos_id: Option<u32>,
    /// The end-of-sequence token's id; `None` if the model disables it.
    pub eos_id: Option<u32>,
    /// Whether SentencePiece puts a space before the text it encodes.
    pub add_dummy_prefix: bool,
}

impl SpmModel {
    /// Reads and parses a `tokenizer.model` file. Fails if it cannot be read or is not a
    /// SentencePiece model.
    pub fn open(path: &Path) -> Result<SpmModel, ConvertError> {
        let io = |error| ConvertError::Io {
            path: path.to_owned(),
            error,
        };
        llava_runtime::files::regular_file(path).map_err(io)?;
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_bytes(path, &bytes)
    }

    /// Parses a model held in memory; `path` is only used in error messages.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<SpmModel, ConvertError> {
        Self::parse(bytes).map_err(|reason| ConvertError::Input {
            path: path.to_owned(),
            reason: format!("not a SentencePiece model: {reason}"),
        })
    }

    fn parse(bytes: &[u8]) -> Result<SpmModel, String> {
        // ids follow proto defaults: unk 0, bos 1, eos 2; -1 disables one.
        let mut model = SpmModel {
            pieces: Vec::new(),
            unk_id: Some(0),
            bos_id: Some(1),
            eos_id: Some(2),
            add_dummy_prefix: true,
        };
        for field in Fields::new(bytes) {
            match field? {
                (1, Value::Bytes(b)) => model.pieces.push(parse_piece(b)?),
                (2, Value::Bytes(b)) => {
                    for f in Fields::new(b) {
                        let id = |v: u64| u32::try_from(v as i64).ok();
                        match f? {
                            (40, Value::Varint(v)) => model.unk_id = id(v),
                            (41, Value::Varint(v)) => model.bos_id = id(v),
                            (42, Value::Varint(v)) => model.eos_id = id(v),
                            _ => {}
                        }
                    }
                }
                (3, Value::Bytes(b)) => {
                    for f in Fields::new(b) {
                        if let (3, Value::Varint(v)) = f? {
                            model.add_dummy_prefix = v != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err("no pieces".into());
        }
        Ok(model)
    }
}

fn parse_piece(bytes: &[u8]) -> Result<Piece, String> {
    let mut piece = Piece {
        text: String::new(),
        score: 0.0,
        kind: 1,
    };
    for f in Fields::new(bytes) {
        match f? {
            (1, Value::Bytes(b)) => {
                piece.text = String::from_utf8(b.to_vec()).map_err(|_| "a piece is not UTF-8")?
            }
            (2, Value::Fixed32(v)) => piece.score = f32::from_bits(v),
            (3, Value::Varint(v)) => piece.kind = v as i32,
            _ => {}
        }
    }
    Ok(piece)
}

enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The (field number, value) pairs of one protobuf message.
struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.bytes.len())
            .ok_or("a field runs past the end")?;
        let b = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(b)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let result = (|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed64
                }
                2 => {
                    let n = self.varint()?;
                    Value::Bytes(self.take(n)?)
                }
                5 => {
                    let b = self.take(4)?;
                    Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                w => return Err(format!("unsupported wire type {w}")),
            };
            Ok((key >> 3, value))
        })();
        if result.is_err() {
            // Stop after an error: the rest cannot be framed.
            self.pos = self.bytes.len();
        }
        Some(result)
    }
}
