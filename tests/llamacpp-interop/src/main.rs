//! llama.cpp loads the files `llava convert` writes, and computes from them what it computes
//! from its own converters' files and what llava computes.
//!
//! The other direction, llava loading files written by llama.cpp's converters, is
//! `files_written_by_llama_cpps_converters_match_transformers` in tests/llava_parity.rs.
//!
//! Each case converts the tiny LLaVA-1.5 fixture (tests/fixtures/llava-tiny-hf) with
//! `llava convert`, then checks, in libllama and mtmd linked here:
//! - **text**: llama.cpp's token ids for a prompt equal `llava logits`', and its logits at every
//!   position are within the case's bound of llava's;
//! - **image**: mtmd's prompt (text ids and image positions) equals llava's; mtmd's image
//!   embeddings from our mmproj, and the logits of the last position after the image, are
//!   within the case's bound of what llama.cpp computes from the mmproj llama.cpp's own
//!   converter wrote for the same weights (tests/fixtures/llamacpp-converted, F32);
//! - **llama.cpp's reading**: mtmd's embeddings from our mmproj are within the case's bound of
//!   those of transformers' tower read the way llama.cpp reads it
//!   (tests/fixtures/llamacpp-converted/odd56-llamacpp-embeddings.npy, by llamacpp_tower.py
//!   there).
//!
//! Then, once each:
//! - **the other LLMs** (the original 1.6 layout, ChatML special tokens, a `mistral` config
//!   with rope_theta 1e6): ids and every position's logits against llava's, as the text case;
//! - **the first LLaVA** (llava-v1-tiny: one linear projector layer, a 42-px tower): mtmd
//!   refuses the mmproj cleanly (llama.cpp has no such projector); its LLM as the text case;
//! - **LLaVA-1.6** (llava-next-tiny-hf, five image shapes): mtmd loads our mmproj, makes the
//!   same text ids and encodes every view; its image positions are whole views, as llama.cpp
//!   runs LLaVA-1.6 (no unpadding, no newline rows), not LLaVA's count.
//!
//! Why the image is not compared with llava: llama.cpp's LLaVA tower does not compute what
//! transformers (and llava) compute. It places the class token after the patches (patch i
//! takes position embedding i, the class token the last; the projector then takes rows 1..,
//! dropping patch 0 and keeping the class token), and it runs one encoder layer fewer than
//! the file holds (llama.cpp issues 25814 and 25817; GGUF-AND-LLAVA.md §4.7). Both show on
//! llama.cpp's own legacy mmproj as on ours: they are llama.cpp's reading of the layout, not a
//! difference between the files.
//!
//! Both sides keep the KV cache in f32 and llama.cpp's flash attention is off (on the CPU it
//! rounds to f16), so the F32 case compares two F32 computations.
//!
//! Usage, from this directory (its .cargo/config.toml builds llama.cpp at -O0):
//! `cargo run --locked -- PATH/TO/llava`. Exit status 0 when every comparison holds.

use std::ffi::{c_char, c_void, CStr, CString};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::ptr;

use anyhow::{bail, ensure, Context, Result};
use llama_cpp_sys_2 as sys;

mod quantize;

#[path = "../../common/npy.rs"]
#[allow(dead_code)]
mod npy;

/// One conversion of the fixture and the bounds its results are held to: max |a − b| over the
/// compared values, as a fraction of the largest |value|.
struct Case {
    /// `llava convert -q`.
    quant: &'static str,
    /// `llava convert --vision-quant`.
    vision_quant: &'static str,
    /// llama.cpp's logits against llava's, text prompt, every position.
    text_bound: TextBound,
    /// llama.cpp on our mmproj against llama.cpp on its own converter's F32 mmproj, and
    /// against transformers' tower read as llama.cpp reads it.
    image_bound: f32,
}

const CASES: [Case; 3] = [
    // Everything F32. The text: two F32 computations that differ only in summation order
    // (measured 2.8e-7). The image: llama.cpp's legacy converter writes the patch embedding
    // and the projector in F16 whatever it is asked (measured 4.2e-4); ggml's GELU and
    // quick-GELU read f16 tables (measured 3.0e-4 from transformers' modules).
    Case {
        quant: "f32",
        vision_quant: "f32",
        text_bound: TextBound {
            median: 1e-5,
            any: 1e-5,
        },
        image_bound: 1e-3,
    },
    // 4-bit as users run it: both sides quantize activations to Q8_0 for Q4_0 weights, and a
    // different rounding of one activation moves a product by a quantization step (measured
    // 2.4e-4 against llava's scalar kernels; against its AVX2 ones on a Zen 3, 2.7e-3 at 6 of
    // the 32 positions, and ~1e-7 at the others: llava's scalar and AVX2 kernels alone differ
    // as much there, from the summation order alone). The F16 tower: embeddings measured
    // 4.2e-4; the last logits after them, with the Q4_0 LLM's rounding flips, 3.4e-3.
    Case {
        quant: "q4_0",
        vision_quant: "f16",
        text_bound: QUANTIZED_TEXT,
        image_bound: 5e-3,
    },
    // The default preset, with the fallbacks llama.cpp's mix takes for rows that are not a
    // multiple of 256 (measured 6.9e-8). A Q8_0 tower against the F32 one: the 8-bit weights'
    // error through the tower and the projector (measured 1.1e-2).
    Case {
        quant: "q4_k_m",
        vision_quant: "q8_0",
        text_bound: QUANTIZED_TEXT,
        image_bound: 3e-2,
    },
];

/// How close llama.cpp's logits of a text prompt must be to llava's: the largest |Δ| of a
/// position as a fraction of the largest |logit|.
#[derive(Clone, Copy)]
struct TextBound {
    /// The median position's: a systematic difference (a misread scale or layout, a different
    /// rounding of the weights) shows at every position.
    median: f32,
    /// Every position's.
    any: f32,
}

/// Where both sides quantize the activations (Q8_0 for Q4_0 weights, Q8_K for the K-quants),
/// two summation orders can round one activation to neighbouring quants, and the step moves
/// that position's later logits by up to a few 1e-3 of the largest (see `CASES`); the median
/// position stays at the F32 level (measured 6.9e-8 and 3.4e-8), with room for flips at more
/// positions on other CPUs. A file read differently moves every position, by far more.
const QUANTIZED_TEXT: TextBound = TextBound {
    median: 1e-4,
    any: 1e-2,
};

const TEXT_PROMPT: &str = "The quick brown fox jumps over 13 lazy dogs, and then   again: yes!";
/// The image question, with llava's marker; mtmd's replaces it for llama.cpp.
const IMAGE_PROMPT: &str = "USER: <image>\nWhat is shown here? ASSISTANT:";
/// 56×56, the tower's own size: neither side resamples it (their bicubic filters differ;
/// llava's is checked against transformers' elsewhere).
const IMAGE: &str = "images/odd-bicubic-56x56.png";
/// llama.cpp's legacy LLaVA-1.5 mmproj of the fixture's weights (make.sh there).
const THEIR_MMPROJ: &str = "llamacpp-converted/mmproj-model-f32.gguf";
/// [`IMAGE`]'s embeddings by transformers' tower read as llama.cpp reads it
/// (llamacpp_tower.py there).
const LLAMACPP_READING: &str = "llamacpp-converted/odd56-llamacpp-embeddings.npy";
const THREADS: i32 = 2;
/// The LLMs of the other LLaVA fixtures, F32, each on a prompt in its own format: llama.cpp's
/// ids and logits against llava's, with the F32 text bound.
const OTHER_LLMS: [(&str, &str); 3] = [
    // The original repository's layout: 512-token vocabulary, `model.*` names.
    (
        "llava-next-tiny-orig",
        "A chat between a curious human and an artificial intelligence assistant. USER: Hi there! ASSISTANT:",
    ),
    // ChatML special tokens in rows of the padded vocabulary.
    (
        "llava-next-tiny-chatml",
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nWhat is 2 + 2?<|im_end|><|im_start|>assistant\n",
    ),
    // A `mistral` text config with rope_theta 1e6.
    ("llava-next-tiny-mistral", "[INST] What is in this picture? [/INST]"),
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llamacpp-interop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let llava = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: llamacpp-interop PATH/TO/llava")?,
    );
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let checkpoint = fixtures.join("llava-tiny-hf");
    let image = fixtures.join(IMAGE);
    let their_mmproj = fixtures.join(THEIR_MMPROJ);
    let reading = fixtures.join(LLAMACPP_READING);
    let (shape, llamacpp_reading) = npy::read_npy_shaped(&reading);
    let work_dir =
        WorkDir(std::env::temp_dir().join(format!("llamacpp-interop-{}", std::process::id())));
    let work = work_dir.0.as_path();
    std::fs::create_dir_all(work).with_context(|| work.display().to_string())?;

    // SAFETY: called once, before any other llama.cpp function; the callback only reads the
    // NUL-terminated text llama.cpp passes.
    unsafe {
        sys::llama_log_set(Some(log), ptr::null_mut());
        sys::mtmd_helper_log_set(Some(log), ptr::null_mut());
        sys::llama_backend_init();
    }
    let mut failures = 0;
    for case in &CASES {
        let name = format!("{}+{}", case.quant, case.vision_quant);
        let llm = work.join(format!("llm-{}.gguf", case.quant));
        let mmproj = work.join(format!("mmproj-{}.gguf", case.vision_quant));
        let files = Converted {
            llm: &llm,
            mmproj: &mmproj,
        };
        convert(
            &llava,
            &checkpoint,
            None,
            (case.quant, case.vision_quant),
            &files,
        )?;
        let image_files = ImageFiles {
            ours: &mmproj,
            theirs: &their_mmproj,
            image: &image,
            llamacpp_reading: (&shape, &llamacpp_reading),
        };
        for (what, result) in [
            ("text", text_case(&llava, &llm, work, case.text_bound)),
            ("image", image_case(&llava, &llm, &image_files, work, case)),
        ] {
            failures += report(&name, what, result);
        }
    }
    for (checkpoint, prompt) in OTHER_LLMS {
        let llm = work.join(format!("{checkpoint}.gguf"));
        let mmproj = work.join(format!("mmproj-{checkpoint}.gguf"));
        let files = Converted {
            llm: &llm,
            mmproj: &mmproj,
        };
        let result = convert(&llava, &fixtures.join(checkpoint), None, F32, &files)
            .and_then(|()| text_prompt_case(&llava, &llm, work, prompt, CASES[0].text_bound));
        failures += report(checkpoint, "text", result);
    }
    // The quantizers: a model with rows of 256 (the K-quants apply) and the LLaVA fixture's
    // LLM (rows of 128: every K-quant falls back).
    let gqa = work.join("llama-gqa-f32.gguf");
    let result = llava_cmd(&llava, &["convert", "-q", "f32", "--force", "-o"])
        .arg(&gqa)
        .arg(fixtures.join("llama-gqa"))
        .status_ok()
        .and_then(|()| quantize::quantize_case(&llava, &gqa, work));
    failures += report("llama-gqa", "quantize", result);
    let result = quantize::quantize_case(&llava, &work.join("llm-f32.gguf"), work);
    failures += report("llava-tiny-hf", "quantize", result);
    let v1 = v1_case(&llava, &fixtures, work).map(|line| vec![line]);
    failures += report("v1 f32", "image", v1);
    failures += report("next f32", "image", next_case(&llava, &fixtures, work));
    ensure!(failures == 0, "{failures} comparison(s) failed");
    Ok(())
}

/// The work directory, removed however `main` ends (an error part-way through left the
/// converted files behind in the system's temporary directory).
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Prints one line per result line (`ok`), or the error (`FAIL`); 1 for a failure.
fn report(name: &str, what: &str, result: Result<Vec<String>>) -> usize {
    match result {
        Ok(lines) => {
            for line in lines {
                println!("ok   {name:<12} {what:<5} {line}");
            }
            0
        }
        Err(e) => {
            println!("FAIL {name:<12} {what:<5} {e:#}");
            1
        }
    }
}

/// llama.cpp's log, shown with LLAMACPP_LOG=1.
unsafe extern "C" fn log(_level: sys::ggml_log_level, text: *const c_char, _data: *mut c_void) {
    if std::env::var_os("LLAMACPP_LOG").is_some() && !text.is_null() {
        // SAFETY: llama.cpp passes a NUL-terminated string.
        eprint!("{}", unsafe { CStr::from_ptr(text) }.to_string_lossy());
    }
}

/// `llava logits` over [`TEXT_PROMPT`] against libllama decoding the same ids, every position.
fn text_case(llava: &Path, llm: &Path, work: &Path, bound: TextBound) -> Result<Vec<String>> {
    text_prompt_case(llava, llm, work, TEXT_PROMPT, bound)
}

/// `llava logits` over `prompt` against libllama decoding the same ids, every position.
fn text_prompt_case(
    llava: &Path,
    llm: &Path,
    work: &Path,
    prompt: &str,
    bound: TextBound,
) -> Result<Vec<String>> {
    let (ours_ids, ours) = llava_logits(llava, llm, None, prompt, work)?;
    let model = Model::load(llm)?;
    let ids = model.tokenize(prompt)?;
    let ours_ids: Vec<i32> = ours_ids.iter().map(|&id| id as i32).collect();
    ensure!(
        ids == ours_ids,
        "token ids differ:\n  llama.cpp {ids:?}\n  llava     {ours_ids:?}"
    );
    let ctx = model.context(ids.len())?;
    let theirs = ctx.decode_all(&ids, model.n_vocab)?;
    let line = compare_positions(&theirs, &ours, model.n_vocab, bound)?;
    Ok(vec![format!("{} positions, ids equal; {line}", ids.len())])
}

/// LLaVA-1.6 (tests/fixtures/llava-next-tiny-hf): for images wide, tall, square, smaller than
/// one view and exactly a pinpoint, mtmd loads our mmproj, makes the prompt's text ids llava
/// makes, and encodes every view. The image positions differ by design: llama.cpp runs
/// LLaVA-1.6 as views of `image_size²/patch²` positions each (tiles, then the overview),
/// without LLaVA's unpadding and newline rows (GGUF-AND-LLAVA.md §5.4), so only that their
/// count is whole views is checked.
fn next_case(llava: &Path, fixtures: &Path, work: &Path) -> Result<Vec<String>> {
    const PROMPT: &str = "[INST] <image>\nWhat is in this picture? [/INST]";
    const VIEW: usize = 16; // (56 / 14)²
    let llm = work.join("next-llm.gguf");
    let mmproj = work.join("next-mmproj.gguf");
    let files = Converted {
        llm: &llm,
        mmproj: &mmproj,
    };
    convert(
        llava,
        &fixtures.join("llava-next-tiny-hf"),
        None,
        F32,
        &files,
    )?;
    let model = Model::load(&llm)?;
    let mtmd = Mtmd::load(&mmproj, &model)?;
    let mut lines = Vec::new();
    for name in ["wide", "tall", "square", "small", "exact"] {
        let image = fixtures.join(format!("images/next-{name}.png"));
        let (ours, _) = llava_logits(llava, &llm, Some((&mmproj, &image)), PROMPT, work)?;
        let chunks = mtmd.tokenize(PROMPT, &image)?;
        let theirs = chunks.ids()?;
        let text = |ids: &[i64]| {
            ids.iter()
                .copied()
                .filter(|&id| id >= 0)
                .collect::<Vec<_>>()
        };
        ensure!(
            text(&theirs) == text(&ours),
            "{name}: the text ids differ:\n  llama.cpp {theirs:?}\n  llava     {ours:?}"
        );
        let count = |ids: &[i64]| ids.iter().filter(|&&id| id < 0).count();
        let (n_theirs, n_ours) = (count(&theirs), count(&ours));
        ensure!(
            n_theirs > 0 && n_theirs % VIEW == 0,
            "{name}: llama.cpp made {n_theirs} image positions, not whole views of {VIEW}"
        );
        let embeddings = mtmd.encode_views(&chunks, model.n_embd)?;
        ensure!(
            embeddings.iter().flatten().all(|v| v.is_finite()),
            "{name}: non-finite embeddings"
        );
        let views = embeddings.len();
        ensure!(
            views * VIEW == n_theirs,
            "{name}: {views} views encoded for {n_theirs} positions"
        );
        lines.push(format!(
            "{name}: text ids equal; {views} views encoded ({n_theirs} positions; llava's \
             unpadded grid with newline rows: {n_ours})"
        ));
    }
    Ok(lines)
}

/// The first LLaVA's kind (tests/fixtures/llava-v1-tiny, its 42-px tower beside it): llama.cpp
/// has no single-layer LLaVA projector (it crashes on an "mlp" without `mm.2`), so our mmproj
/// says "linear" and mtmd must refuse it cleanly; the LLM loads and matches llava's logits.
fn v1_case(llava: &Path, fixtures: &Path, work: &Path) -> Result<String> {
    let llm = work.join("v1-llm.gguf");
    let mmproj = work.join("v1-mmproj.gguf");
    let files = Converted {
        llm: &llm,
        mmproj: &mmproj,
    };
    let tower = fixtures.join("clip-tiny-v1");
    convert(
        llava,
        &fixtures.join("llava-v1-tiny"),
        Some(&tower),
        F32,
        &files,
    )?;
    let model = Model::load(&llm)?;
    ensure!(
        Mtmd::load(&mmproj, &model).is_err(),
        "mtmd loaded a \"linear\" mmproj"
    );
    drop(model);
    let text = text_case(llava, &llm, work, CASES[0].text_bound)?;
    Ok(format!(
        "mtmd refuses the mmproj cleanly; LLM: {}",
        text.join("; ")
    ))
}

/// The mmproj files of an image case and the image.
struct ImageFiles<'a> {
    ours: &'a Path,
    theirs: &'a Path,
    image: &'a Path,
    /// The shape and values of [`LLAMACPP_READING`].
    llamacpp_reading: (&'a [usize], &'a [f32]),
}

/// mtmd on our mmproj against mtmd on llama.cpp's own: the prompt against llava's, then the
/// image embeddings and the last position's logits against each other.
fn image_case(
    llava: &Path,
    llm: &Path,
    files: &ImageFiles,
    work: &Path,
    case: &Case,
) -> Result<Vec<String>> {
    let (ours_ids, _) = llava_logits(
        llava,
        llm,
        Some((files.ours, files.image)),
        IMAGE_PROMPT,
        work,
    )?;
    let model = Model::load(llm)?;
    let ours = MtmdRun::new(&model, files.ours, files.image)?;
    ensure!(
        ours.ids == ours_ids,
        "the prompts differ (-1: an image position):\n  llama.cpp {:?}\n  llava     {ours_ids:?}",
        ours.ids
    );
    let theirs = MtmdRun::new(&model, files.theirs, files.image)?;
    ensure!(
        ours.ids == theirs.ids,
        "mtmd's prompts differ between the two mmproj files"
    );
    let images = ours_ids.iter().filter(|&&id| id < 0).count();
    let (shape, reading) = files.llamacpp_reading;
    ensure!(
        shape == [images, model.n_embd],
        "{LLAMACPP_READING}: shape {shape:?}, for {images} image positions of {}",
        model.n_embd
    );
    Ok(vec![
        format!(
            "{images} image positions, prompt equal to llava's; {}",
            compare(
                "embeddings, ours vs llama.cpp's mmproj",
                &ours.embeddings,
                &theirs.embeddings,
                case.image_bound
            )?
        ),
        format!(
            "{} positions; {}",
            ours_ids.len(),
            compare(
                "last logits, ours vs llama.cpp's mmproj",
                &ours.last_logits,
                &theirs.last_logits,
                case.image_bound
            )?
        ),
        compare(
            "embeddings, ours vs transformers' tower read as llama.cpp reads it",
            &ours.embeddings,
            reading,
            case.image_bound,
        )?,
    ])
}

/// The largest difference relative to the largest |value| of `b`, checked against `bound`.
fn compare(what: &str, a: &[f32], b: &[f32], bound: f32) -> Result<String> {
    ensure!(
        a.len() == b.len(),
        "{what}: {} values against {}",
        a.len(),
        b.len()
    );
    ensure!(
        a.iter().chain(b).all(|v| v.is_finite()),
        "{what}: non-finite values"
    );
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    ensure!(scale > 0.0, "{what}: all zero");
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let relative = diff / scale;
    let line = format!(
        "{what}: max |Δ| {diff:.2e} of max {scale:.3} = {relative:.1e} (bound {bound:.0e})"
    );
    ensure!(relative <= bound, "{line}");
    Ok(line)
}

/// llama.cpp's logits (`a`) against llava's (`b`), `n_vocab` to a position: each position's
/// max |Δ| as a fraction of the largest |logit|, held to `bound`.
fn compare_positions(a: &[f32], b: &[f32], n_vocab: usize, bound: TextBound) -> Result<String> {
    let what = "logits, llama.cpp vs llava";
    compare(what, a, b, f32::INFINITY)?;
    ensure!(
        n_vocab > 0 && b.len().is_multiple_of(n_vocab),
        "{what}: {} values are not whole rows of {n_vocab}",
        b.len()
    );
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut rows: Vec<f32> = a
        .chunks_exact(n_vocab)
        .zip(b.chunks_exact(n_vocab))
        .map(|(x, y)| x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale)
        .collect();
    rows.sort_by(f32::total_cmp);
    let (median, max) = (rows[rows.len() / 2], rows[rows.len() - 1]);
    let over = rows.iter().filter(|&&r| r > bound.median).count();
    let line = format!(
        "{what}: max |Δ| {:.2e} of max {scale:.3} = {max:.1e} (bound {:.0e}), median position \
         {median:.1e} (bound {:.0e}), {over} of {} positions over it",
        max * scale,
        bound.any,
        bound.median,
        rows.len()
    );
    ensure!(max <= bound.any && median <= bound.median, "{line}");
    Ok(line)
}

/// `llava logits` on `prompt` (with an mmproj and image, or text only): the ids of its
/// positions (-1 for image positions) and the logits of each, row after row.
fn llava_logits(
    llava: &Path,
    llm: &Path,
    image: Option<(&Path, &Path)>,
    prompt: &str,
    work: &Path,
) -> Result<(Vec<i64>, Vec<f32>)> {
    let out = work.join("logits.npy");
    let ids_out = work.join("ids.txt");
    let mut cmd = llava_cmd(llava, &["logits", "--kv-type", "f32", "--force", "-t", "2"]);
    cmd.arg("-m").arg(llm).arg("--prompt").arg(prompt);
    if let Some((mmproj, image)) = image {
        cmd.arg("--mmproj").arg(mmproj).arg("--image").arg(image);
    }
    cmd.arg("--out").arg(&out).arg("--ids-out").arg(&ids_out);
    cmd.status_ok()?;
    let ids_text = std::fs::read_to_string(&ids_out)?;
    let ids = ids_text
        .split_whitespace()
        .map(|id| id.parse::<i64>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: {ids_text:?}", ids_out.display()))?;
    let (shape, logits) = npy::parse_npy(&std::fs::read(&out)?)
        .map_err(anyhow::Error::msg)
        .with_context(|| out.display().to_string())?;
    ensure!(
        shape.len() == 2 && shape[0] == ids.len(),
        "{}: shape {shape:?} for {} ids",
        out.display(),
        ids.len()
    );
    Ok((ids, logits))
}

/// `llava convert`'s (LLM, vision) presets, both F32.
const F32: (&str, &str) = ("f32", "f32");

/// Where [`convert`] writes the LLM and the mmproj (always somewhere: left unnamed, `llava
/// convert` would put the mmproj in the working directory).
struct Converted<'a> {
    llm: &'a Path,
    mmproj: &'a Path,
}

/// `llava convert` of `checkpoint` (with `--vision-tower tower`) at `presets` into `to`,
/// replacing what is there.
fn convert(
    llava: &Path,
    checkpoint: &Path,
    tower: Option<&Path>,
    (quant, vision_quant): (&str, &str),
    to: &Converted,
) -> Result<()> {
    let mut cmd = llava_cmd(
        llava,
        &["convert", "-q", quant, "--vision-quant", vision_quant],
    );
    cmd.arg(checkpoint).arg("--force").arg("-o").arg(to.llm);
    if let Some(tower) = tower {
        cmd.arg("--vision-tower").arg(tower);
    }
    cmd.arg("--mmproj-out").arg(to.mmproj).status_ok()
}

fn llava_cmd(llava: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(llava);
    cmd.args(args);
    cmd
}

trait StatusOk {
    fn status_ok(&mut self) -> Result<()>;
}

impl StatusOk for Command {
    fn status_ok(&mut self) -> Result<()> {
        let out = self.output().with_context(|| format!("{self:?}"))?;
        if !out.status.success() {
            bail!(
                "{self:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// A llama.cpp model, loaded on the CPU.
struct Model {
    model: *mut sys::llama_model,
    vocab: *const sys::llama_vocab,
    n_vocab: usize,
    n_embd: usize,
}

impl Model {
    fn load(path: &Path) -> Result<Model> {
        let c_path = c_string(path)?;
        // SAFETY: default parameters with no GPU layers; the path is a NUL-terminated string
        // that outlives the call. A null result is an error, checked.
        let model = unsafe {
            let mut params = sys::llama_model_default_params();
            params.n_gpu_layers = 0;
            sys::llama_model_load_from_file(c_path.as_ptr(), params)
        };
        ensure!(
            !model.is_null(),
            "{}: llama.cpp cannot load it",
            path.display()
        );
        // SAFETY: `model` is a loaded model; its vocabulary lives as long as it does.
        let (vocab, n_vocab, n_embd) = unsafe {
            let vocab = sys::llama_model_get_vocab(model);
            (
                vocab,
                sys::llama_vocab_n_tokens(vocab),
                sys::llama_model_n_embd(model),
            )
        };
        Ok(Model {
            model,
            vocab,
            n_vocab: n_vocab as usize,
            n_embd: n_embd as usize,
        })
    }

    /// llama.cpp's ids for `text`, BOS added, special-token text parsed (as `llava logits`).
    fn tokenize(&self, text: &str) -> Result<Vec<i32>> {
        let mut ids = vec![0i32; text.len() + 2];
        // SAFETY: `text` is valid for `text.len()` bytes, `ids` for `ids.len()` tokens, and
        // every byte makes at most one token, plus BOS.
        let n = unsafe {
            sys::llama_tokenize(
                self.vocab,
                text.as_ptr().cast(),
                text.len() as i32,
                ids.as_mut_ptr(),
                ids.len() as i32,
                true,
                true,
            )
        };
        ensure!(n >= 0, "llama_tokenize needs {} slots", -n);
        ids.truncate(n as usize);
        Ok(ids)
    }

    /// A context for `positions` positions, with an f32 KV cache.
    fn context(&self, positions: usize) -> Result<LlamaCtx<'_>> {
        // SAFETY: default parameters with sizes set; the model outlives the context (its
        // borrow, held by the context, makes the compiler see to that).
        let ctx = unsafe {
            let mut params = sys::llama_context_default_params();
            params.n_ctx = positions.next_multiple_of(256) as u32;
            params.n_batch = params.n_ctx;
            params.n_ubatch = params.n_ctx;
            params.n_threads = THREADS;
            params.n_threads_batch = THREADS;
            params.type_k = sys::GGML_TYPE_F32;
            params.type_v = sys::GGML_TYPE_F32;
            // On the CPU llama.cpp's flash attention rounds to f16 (4e-4 on this fixture).
            params.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
            sys::llama_init_from_model(self.model, params)
        };
        ensure!(!ctx.is_null(), "llama_init_from_model failed");
        Ok(LlamaCtx {
            ctx,
            _model: PhantomData,
        })
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: loaded in `load`, freed once; the contexts and mtmd contexts made on it
        // borrow it, so they are gone before it.
        unsafe { sys::llama_model_free(self.model) }
    }
}

/// A llama.cpp context on a [`Model`], which it borrows: llama.cpp's context uses the model
/// until it is freed.
struct LlamaCtx<'m> {
    ctx: *mut sys::llama_context,
    _model: PhantomData<&'m Model>,
}

impl LlamaCtx<'_> {
    /// Decodes `ids` at positions 0.. in one batch and returns every position's logits.
    fn decode_all(&self, ids: &[i32], n_vocab: usize) -> Result<Vec<f32>> {
        // SAFETY: the batch holds `ids.len()` tokens with one sequence id each; every field
        // written is within those sizes; it is freed after the decode.
        let status = unsafe {
            let mut batch = sys::llama_batch_init(ids.len() as i32, 0, 1);
            for (i, &id) in ids.iter().enumerate() {
                *batch.token.add(i) = id;
                *batch.pos.add(i) = i as i32;
                *batch.n_seq_id.add(i) = 1;
                *(*batch.seq_id.add(i)) = 0;
                *batch.logits.add(i) = 1;
            }
            batch.n_tokens = ids.len() as i32;
            let status = sys::llama_decode(self.ctx, batch);
            sys::llama_batch_free(batch);
            status
        };
        ensure!(status == 0, "llama_decode failed ({status})");
        let mut all = Vec::with_capacity(ids.len() * n_vocab);
        for i in 0..ids.len() {
            all.extend(self.logits(i as i32, n_vocab)?);
        }
        Ok(all)
    }

    /// The logits of output `i` of the last decode (-1: the last).
    fn logits(&self, i: i32, n_vocab: usize) -> Result<Vec<f32>> {
        // SAFETY: llama.cpp returns null for an output it did not compute, else a row of
        // `n_vocab` floats valid until the next decode.
        unsafe {
            let row = sys::llama_get_logits_ith(self.ctx, i);
            ensure!(!row.is_null(), "no logits for output {i}");
            Ok(std::slice::from_raw_parts(row, n_vocab).to_vec())
        }
    }
}

impl Drop for LlamaCtx<'_> {
    fn drop(&mut self) {
        // SAFETY: made in `Model::context`, freed once.
        unsafe { sys::llama_free(self.ctx) }
    }
}

/// What llama.cpp makes of [`IMAGE_PROMPT`] with an mmproj: the prompt in llava's
/// `--ids-out` notation (-1 per image position), the image's embeddings, and the logits of
/// the last position after decoding the whole prompt.
struct MtmdRun {
    ids: Vec<i64>,
    embeddings: Vec<f32>,
    last_logits: Vec<f32>,
}

impl MtmdRun {
    fn new(model: &Model, mmproj: &Path, image: &Path) -> Result<MtmdRun> {
        let mtmd = Mtmd::load(mmproj, model)?;
        let chunks = mtmd.tokenize(IMAGE_PROMPT, image)?;
        let ids = chunks.ids()?;
        let mut views = mtmd.encode_views(&chunks, model.n_embd)?;
        ensure!(views.len() == 1, "{} image chunks, not one", views.len());
        let embeddings = views.pop().expect("one view");
        let ctx = model.context(ids.len())?;
        let mut n_past = 0;
        // SAFETY: the mtmd context, the llama context and the chunks are live objects made
        // above; n_past 0 on sequence 0 of a fresh context; llama.cpp writes the new position
        // count to `n_past`.
        let status = unsafe {
            sys::mtmd_helper_eval_chunks(
                mtmd.ctx,
                ctx.ctx,
                chunks.chunks,
                0,
                0,
                ids.len() as i32,
                true,
                &mut n_past,
            )
        };
        ensure!(status == 0, "mtmd_helper_eval_chunks failed ({status})");
        ensure!(
            n_past as usize == ids.len(),
            "mtmd evaluated {n_past} positions of {}",
            ids.len()
        );
        let last_logits = ctx.logits(-1, model.n_vocab)?;
        Ok(MtmdRun {
            ids,
            embeddings,
            last_logits,
        })
    }
}

/// The mmproj loaded by mtmd, on a [`Model`], which it borrows: mtmd keeps the model's
/// pointer.
struct Mtmd<'m> {
    ctx: *mut sys::mtmd_context,
    _model: PhantomData<&'m Model>,
}

impl<'m> Mtmd<'m> {
    fn load(path: &Path, model: &'m Model) -> Result<Mtmd<'m>> {
        let c_path = c_string(path)?;
        // SAFETY: default parameters, CPU only; the path outlives the call; the marker
        // pointer stays mtmd's default (a static string). A null result is an error.
        let ctx = unsafe {
            let mut params = sys::mtmd_context_params_default();
            params.use_gpu = false;
            params.n_threads = THREADS;
            params.print_timings = false;
            params.warmup = false;
            sys::mtmd_init_from_file(c_path.as_ptr(), model.model, params)
        };
        ensure!(!ctx.is_null(), "{}: mtmd cannot load it", path.display());
        Ok(Mtmd {
            ctx,
            _model: PhantomData,
        })
    }

    /// mtmd's chunks for `prompt` (llava's `<image>` marker replaced by mtmd's) with `image`.
    fn tokenize(&self, prompt: &str, image: &Path) -> Result<Chunks> {
        // SAFETY: the default marker is a static NUL-terminated string.
        let marker = unsafe { CStr::from_ptr(sys::mtmd_default_marker()) };
        let text = CString::new(prompt.replace("<image>", marker.to_str()?))?;
        let c_image = c_string(image)?;
        // SAFETY: `self.ctx` is live; the file name outlives the call; a null bitmap is an
        // error. The bitmap is freed after tokenize, which copies what it needs.
        unsafe {
            let wrapper = sys::mtmd_helper_bitmap_init_from_file(
                self.ctx,
                c_image.as_ptr(),
                false,
                sys::mtmd_helper_init_opt_default(),
            );
            ensure!(
                !wrapper.bitmap.is_null(),
                "{}: mtmd cannot read it",
                image.display()
            );
            let input = sys::mtmd_input_text {
                text: text.as_ptr(),
                text_len: text.as_bytes().len(),
                add_special: true,
                parse_special: true,
            };
            let chunks = Chunks {
                chunks: sys::mtmd_input_chunks_init(),
            };
            let bitmaps = [wrapper.bitmap as *const sys::mtmd_bitmap];
            let status = sys::mtmd_tokenize(self.ctx, chunks.chunks, &input, bitmaps.as_ptr(), 1);
            sys::mtmd_bitmap_free(wrapper.bitmap);
            ensure!(status == 0, "mtmd_tokenize failed ({status})");
            Ok(chunks)
        }
    }
}

impl Mtmd<'_> {
    /// Encodes every image chunk of the prompt: the embeddings of each, `n_embd` per image
    /// position.
    fn encode_views(&self, chunks: &Chunks, n_embd: usize) -> Result<Vec<Vec<f32>>> {
        let mut views = Vec::new();
        // SAFETY: `self.ctx` and the chunks are live; mtmd's output holds n_embd floats per
        // position of the chunk just encoded, valid until the next encode, and is copied
        // before it.
        unsafe {
            for i in 0..sys::mtmd_input_chunks_size(chunks.chunks) {
                let chunk = sys::mtmd_input_chunks_get(chunks.chunks, i);
                if sys::mtmd_input_chunk_get_type(chunk) != sys::MTMD_INPUT_CHUNK_TYPE_IMAGE {
                    continue;
                }
                let status = sys::mtmd_encode_chunk(self.ctx, chunk);
                ensure!(status == 0, "mtmd_encode_chunk failed ({status})");
                let n = sys::mtmd_input_chunk_get_n_tokens(chunk) * n_embd;
                let out = sys::mtmd_get_output_embd(self.ctx);
                ensure!(!out.is_null(), "mtmd_get_output_embd gave nothing");
                views.push(std::slice::from_raw_parts(out, n).to_vec());
            }
        }
        Ok(views)
    }
}

impl Drop for Mtmd<'_> {
    fn drop(&mut self) {
        // SAFETY: made in `load`, freed once.
        unsafe { sys::mtmd_free(self.ctx) }
    }
}

struct Chunks {
    chunks: *mut sys::mtmd_input_chunks,
}

impl Chunks {
    /// The prompt's ids, -1 for each image position.
    fn ids(&self) -> Result<Vec<i64>> {
        let mut ids = Vec::new();
        // SAFETY: `self.chunks` is live; each chunk pointer and its token array are valid
        // while the chunks are.
        unsafe {
            for i in 0..sys::mtmd_input_chunks_size(self.chunks) {
                let chunk = sys::mtmd_input_chunks_get(self.chunks, i);
                match sys::mtmd_input_chunk_get_type(chunk) {
                    sys::MTMD_INPUT_CHUNK_TYPE_TEXT => {
                        let mut n = 0;
                        let tokens = sys::mtmd_input_chunk_get_tokens_text(chunk, &mut n);
                        // An empty vector's data may be null, which from_raw_parts forbids.
                        if n > 0 {
                            ids.extend(
                                std::slice::from_raw_parts(tokens, n)
                                    .iter()
                                    .map(|&t| t as i64),
                            );
                        }
                    }
                    sys::MTMD_INPUT_CHUNK_TYPE_IMAGE => {
                        let n = sys::mtmd_input_chunk_get_n_tokens(chunk);
                        ids.extend(std::iter::repeat_n(-1, n));
                    }
                    other => bail!("unexpected mtmd chunk type {other}"),
                }
            }
        }
        Ok(ids)
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        // SAFETY: made in `Mtmd::tokenize`, freed once.
        unsafe { sys::mtmd_input_chunks_free(self.chunks) }
    }
}

fn c_string(path: &Path) -> Result<CString> {
    let text = path
        .to_str()
        .with_context(|| format!("{}: not UTF-8", path.display()))?;
    Ok(CString::new(text)?)
}
