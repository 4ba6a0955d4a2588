//! `prompt_splice`: a user's question through the chat templates, image markers and the
//! prompt builder (`tokenize_pieces`, `embed_pieces`), as `llava run` builds a prompt.
//!
//! Input: one control byte (bits 0–2: the template, modulo their number; bits 3–4: how many
//! images; bits 5–6: the vocabulary, modulo their number), then the question (UTF-8, invalid
//! sequences replaced).

use std::sync::{Arc, OnceLock};

use llava_models::llava::{embed_pieces, tokenize_pieces, Piece, PromptError};
use llava_models::template::{with_image_markers, Template, IMAGE_MARKER};
use llava_models::Llama;
use llava_runtime::backend::{Backend, CpuBackend};
use llava_runtime::gguf::{GgufFile, GgufWriteError, GgufWriter};
use llava_runtime::quant::GgmlType;

use crate::fixtures::{self, backend};
use crate::input::Input;

/// The width of the stand-in LLM's embeddings.
const HIDDEN: u64 = 8;

pub fn prompt_splice(data: &[u8]) {
    let mut input = Input::new(data);
    let control = input.u8();
    let template = Template::ALL[usize::from(control & 7) % Template::ALL.len()];
    let n_images = usize::from(control >> 3 & 3);
    let vocab = usize::from(control >> 5 & 3) % fixtures::VOCABS.len();
    let question = String::from_utf8_lossy(input.rest());

    let _ = Template::from_chat_template(Some(&question));
    assert_eq!(template.name().parse::<Template>(), Ok(template));
    let prompt = template.render(&with_image_markers(&question, n_images));

    let tokenizer = fixtures::tokenizer(vocab);
    let pieces = match tokenize_pieces(tokenizer, &prompt, n_images, true) {
        Ok(pieces) => pieces,
        Err(PromptError::MarkerCount { markers, images }) => {
            // Markers are only added to a question without any, so only the question's own
            // can disagree with the images.
            assert!(question.contains(IMAGE_MARKER));
            assert_eq!(
                (markers, images),
                (prompt.matches(IMAGE_MARKER).count(), n_images)
            );
            return;
        }
        Err(e) => panic!("tokenize_pieces: {e}"),
    };
    if pieces.is_empty() {
        // The CLI stops here ("the prompt has no tokens"): nothing to embed.
        assert_eq!(n_images, 0);
        return;
    }
    let images: Vec<usize> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Image(i) => Some(*i),
            Piece::Text(_) => None,
        })
        .collect();
    assert_eq!(images, (0..n_images).collect::<Vec<_>>());

    // Image i takes i + 1 rows, so a misplaced image changes the count.
    let b = backend();
    let image_rows: Vec<usize> = (1..=n_images).collect();
    let embedded: Vec<_> = image_rows
        .iter()
        .map(|&rows| b.upload(vec![0.5; rows * HIDDEN as usize], rows, HIDDEN as usize))
        .collect();
    let p = embed_pieces(b, stand_in_llm(vocab), &pieces, &embedded);
    let n_text: usize = pieces
        .iter()
        .map(|p| match p {
            Piece::Text(ids) => ids.len(),
            Piece::Image(_) => 0,
        })
        .sum();
    assert_eq!(p.text_ids.len(), n_text);
    assert_eq!(p.n_positions, n_text + image_rows.iter().sum::<usize>());
    assert_eq!(b.shape(&p.embeddings), (p.n_positions, HIDDEN as usize));
}

/// A LLaMA with no blocks and an embedding row for every token of `VOCABS[vocab]`: all the
/// prompt builder needs of an LLM.
fn stand_in_llm(vocab: usize) -> &'static Llama<CpuBackend> {
    static LLMS: [OnceLock<Llama<CpuBackend>>; 3] = [const { OnceLock::new() }; 3];
    LLMS[vocab].get_or_init(|| {
        let n_vocab = fixtures::tokenizer(vocab).vocab_size() as u64;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("llm.gguf");
        write_llm(&path, n_vocab).expect("the stand-in LLM is written");
        let file = Arc::new(GgufFile::open(&path).expect("the stand-in LLM reads back"));
        Llama::load(backend(), &file).expect("the stand-in LLM loads")
    })
}

fn write_llm(path: &std::path::Path, n_vocab: u64) -> Result<(), GgufWriteError> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama")?;
    for (key, value) in [
        ("llama.embedding_length", HIDDEN as u32),
        ("llama.block_count", 0),
        ("llama.attention.head_count", 2),
        ("llama.feed_forward_length", 16),
        ("llama.context_length", 4096),
    ] {
        w.add(key, value)?;
    }
    w.add("llama.attention.layer_norm_rms_epsilon", 1e-5f32)?;
    w.add_tensor("token_embd.weight", GgmlType::F32, &[HIDDEN, n_vocab])?;
    w.add_tensor("output_norm.weight", GgmlType::F32, &[HIDDEN])?;
    w.write(path, |_, decl, out| -> Result<(), GgufWriteError> {
        let bytes = vec![0u8; decl.n_bytes() as usize];
        out.write_all(&bytes).map_err(|error| GgufWriteError::Io {
            path: path.to_owned(),
            error,
        })
    })
}
