//! `llava tokenize`, `llava logits` and `llava run` end to end, against llama.cpp's vocabulary
//! test vectors and transformers' outputs on the fixture models; and malformed models refused
//! at load with a message naming the key or tensor.

use std::path::{Path, PathBuf};

use llava_convert::{convert_llama, Preset};
use llava_runtime::gguf::{GgufFile, GgufWriteError, GgufWriter, MetaValue};
use llava_runtime::quant::GgmlType;

mod common;
use common::*;

#[test]
fn tokenize_reproduces_llama_cpp_test_vectors() {
    let dir = tempfile::tempdir().unwrap();
    for vocab in [
        "ggml-vocab-llama-spm",
        "ggml-vocab-llama-bpe",
        "ggml-vocab-gpt-2",
    ] {
        let base = Path::new(FIXTURES)
            .join("vocab")
            .join(format!("{vocab}.gguf"));
        let inputs = std::fs::read_to_string(base.with_extension("gguf.inp")).unwrap();
        let outputs = std::fs::read_to_string(base.with_extension("gguf.out")).unwrap();
        let cases: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
        let expected: Vec<&str> = outputs.lines().collect();
        // The file ends with a separator: the empty item after it is not a case.
        assert_eq!(cases.len() - 1, expected.len(), "{vocab}");
        for (i, (text, want)) in cases.iter().zip(&expected).enumerate() {
            let path = dir.path().join("case.txt");
            std::fs::write(&path, text).unwrap();
            let o = llava(&[
                "tokenize",
                "-m",
                base.to_str().unwrap(),
                "--no-bos",
                "--no-parse-special",
                "--file",
                path.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{vocab} case {i}: {}", stderr(&o));
            assert_eq!(
                stdout(&o).trim_end_matches('\n'),
                want.trim(),
                "{vocab} case {i}: {text:?}"
            );
        }
    }
}

struct Reference {
    prompt: String,
    input_ids: Vec<u32>,
    logits: Vec<f32>,
    /// The same text as it continues the prompt: with that space where the first generated
    /// token has one (its piece in the fixture's tokenizer.json starts with `▁`), as
    /// llama.cpp prints it (" brown dog…" after "A small").
    continuation: String,
}

fn reference(model: &str) -> Reference {
    let r = text_reference(model);
    // transformers' `decode` of the generated ids is a sequence's text, so without the
    // SentencePiece space of its first token.
    let continuation = {
        let tok: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(FIXTURES).join(model).join("tokenizer.json"))
                .unwrap(),
        )
        .unwrap();
        let vocab = tok["model"]["vocab"].as_object().unwrap();
        let (piece, _) = vocab
            .iter()
            .find(|(_, id)| id.as_u64() == Some(u64::from(r.greedy[0])))
            .unwrap();
        let space = if piece.starts_with('\u{2581}') {
            " "
        } else {
            ""
        };
        format!("{space}{}", r.greedy_text)
    };
    Reference {
        logits: r.flat_logits(),
        prompt: r.prompt,
        input_ids: r.input_ids,
        continuation,
    }
}

fn converted(model: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{model}.gguf"));
    convert_llama(&Path::new(FIXTURES).join(model), &out, Preset::F32).unwrap();
    out
}

#[test]
fn logits_writes_transformers_logits_as_npy() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference("llama-gqa");
    let model = converted("llama-gqa", dir.path());
    let npy = dir.path().join("logits.npy");
    let ids = dir.path().join("ids.txt");
    let o = llava(&[
        "logits",
        "-m",
        model.to_str().unwrap(),
        "--prompt",
        &r.prompt,
        "--out",
        npy.to_str().unwrap(),
        "--ids-out",
        ids.to_str().unwrap(),
        "--kv-type",
        "f32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want_ids: Vec<String> = r.input_ids.iter().map(u32::to_string).collect();
    assert_eq!(
        std::fs::read_to_string(&ids).unwrap().trim(),
        want_ids.join(" ")
    );
    let (shape, values) = read_npy_shaped(&npy);
    assert_eq!(shape, [r.input_ids.len(), 512]);
    let diff = max_abs_diff(&values, &r.logits);
    assert!(diff <= F32_LOGITS, "max |diff| {diff}");
}

#[test]
fn run_greedy_prints_transformers_continuation() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama-gqa", "llama-tied"] {
        let r = reference(name);
        let model = converted(name, dir.path());
        let o = llava(&[
            "run",
            "-m",
            model.to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "20",
            "--verbose",
            "--template",
            "raw",
            &r.prompt,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            r.continuation.starts_with(' '),
            "{name}: the fixture's case"
        );
        assert_eq!(stdout(&o), format!("{}\n", r.continuation), "{name}");
        let err = stderr(&o);
        assert!(
            err.contains("tokens/s") && err.contains("max tokens"),
            "{err}"
        );
    }
}

#[test]
fn run_stops_at_a_stop_string_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference("llama-gqa");
    let model = converted("llama-gqa", dir.path());
    let o = llava(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "--temp",
        "0",
        "--stop",
        "wooden",
        "--template",
        "raw",
        &r.prompt,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cut = &r.continuation[..r.continuation.find("wooden").unwrap()];
    assert_eq!(stdout(&o), format!("{cut}\n"));
}

/// Rewrites `src` to `dst` through `edit_meta` (key, value) → Some(value) to keep, and
/// `edit_tensor` (name, type, shape) → Some((name, type, shape)) to keep.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit_meta: impl Fn(&str, MetaValue) -> Option<MetaValue>,
    edit_tensor: impl Fn(&str, GgmlType, &[u64]) -> Option<(String, GgmlType, Vec<u64>)>,
) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if let Some(v) = edit_meta(k, v.to_owned_value()) {
            w.add(k, v).unwrap();
        }
    }
    let mut kept = Vec::new();
    for t in f.tensors() {
        if let Some((name, ty, shape)) = edit_tensor(t.name(), t.ggml_type(), t.shape()) {
            w.add_tensor(&name, ty, &shape).unwrap();
            kept.push(t);
        }
    }
    w.write(dst, |i, decl, out| -> Result<(), GgufWriteError> {
        // Bytes of the original tensor, cut or zero-padded to the declared size.
        let mut bytes = kept[i].data.to_vec();
        bytes.resize(decl.n_bytes() as usize, 0);
        out.write_all(&bytes).unwrap();
        Ok(())
    })
    .unwrap();
}

#[test]
fn malformed_models_are_refused_with_the_key_or_tensor_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = converted("llama-gqa", dir.path());
    let keep = |_: &str, v: MetaValue| Some(v);
    let same = |n: &str, t: GgmlType, s: &[u64]| Some((n.to_owned(), t, s.to_vec()));
    let bad = dir.path().join("bad.gguf");
    let check = |expect: &str| {
        let o = llava(&["run", "-m", bad.to_str().unwrap(), "-n", "1", "hi"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{expect}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(expect) && err.contains("bad.gguf"),
            "want {expect:?}: {err}"
        );
    };

    rewrite(&good, &bad, keep, |n, t, s| {
        (n != "blk.1.ffn_up.weight").then(|| (n.to_owned(), t, s.to_vec()))
    });
    check("\"blk.1.ffn_up.weight\" is missing");

    rewrite(&good, &bad, keep, |n, t, s| {
        let mut s = s.to_vec();
        if n == "blk.0.attn_k.weight" {
            s[1] = 64;
        }
        Some((n.to_owned(), t, s))
    });
    check("\"blk.0.attn_k.weight\" has shape [256, 64], expected [256, 128]");

    rewrite(
        &good,
        &bad,
        |k, v| {
            Some(if k == "llama.attention.head_count" {
                MetaValue::U32(3)
            } else {
                v
            })
        },
        same,
    );
    check("llama.attention.head_count");

    rewrite(
        &good,
        &bad,
        |k, v| {
            Some(if k == "llama.attention.head_count_kv" {
                MetaValue::U32(3)
            } else {
                v
            })
        },
        same,
    );
    check("llama.attention.head_count_kv");

    rewrite(
        &good,
        &bad,
        |k, v| {
            Some(if k == "general.architecture" {
                "gemma".into()
            } else {
                v
            })
        },
        same,
    );
    check("architecture \"gemma\" is not supported");

    rewrite(&good, &bad, keep, |n, t, s| {
        let t = if n == "blk.0.ffn_gate.weight" {
            GgmlType::Iq2Xxs
        } else {
            t
        };
        Some((n.to_owned(), t, s.to_vec()))
    });
    check("\"blk.0.ffn_gate.weight\" has type iq2_xxs");

    rewrite(
        &good,
        &bad,
        |k, v| (k != "llama.attention.layer_norm_rms_epsilon").then_some(v),
        same,
    );
    check("\"llama.attention.layer_norm_rms_epsilon\" is missing");
}

#[test]
fn synth_makes_a_runnable_model_with_the_preset_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let p = path.to_str().unwrap();
    let o = llava(&["synth", "--preset", "tiny", "-q", "q4_k_m", "-o", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    // -o names the LLM; the mmproj goes beside it.
    assert!(dir.path().join("mmproj-tiny-f16.gguf").exists());
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_u32("general.file_type").unwrap(), 15);
    assert_eq!(
        f.tensor("blk.0.attn_q.weight").unwrap().ggml_type(),
        GgmlType::Q4K
    );
    assert_eq!(
        f.tensor("output.weight").unwrap().ggml_type(),
        GgmlType::Q6K
    );

    let o = llava(&[
        "run",
        "-m",
        p,
        "-n",
        "8",
        "--temp",
        "0",
        "--verbose",
        "Hello, world",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("generation: 8 tokens"),
        "{}",
        stderr(&o)
    );

    let o = llava(&["synth", "--preset", "huge", "-o", p]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown preset \"huge\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn convert_then_run_answers_like_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let src = Path::new(FIXTURES).join("llama-gqa");
    let o = llava(&[
        "convert",
        src.to_str().unwrap(),
        "-q",
        "q8_0",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("wrote"), "{}", stderr(&o));
    let r = reference("llama-gqa");
    let o = llava(&[
        "run",
        "-m",
        out.to_str().unwrap(),
        "--temp",
        "0",
        "-n",
        "20",
        "-p",
        &r.prompt,
        "--template",
        "raw",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{}\n", r.continuation));
}

#[test]
fn convert_refuses_bad_input_without_leaving_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let o = llava(&[
        "convert",
        dir.path().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
    assert!(!out.exists());
    let o = llava(&["convert", ".", "-q", "q3_k"]);
    assert_eq!(o.status.code(), Some(2), "clap rejects the value");
    assert!(
        stderr(&o).contains("unknown quantization \"q3_k\""),
        "{}",
        stderr(&o)
    );
}

/// The prompt length `run --verbose` reports ("prompt: N tokens").
fn prompt_tokens(stderr: &str) -> usize {
    let at = stderr.find("prompt: ").expect("a prompt line") + "prompt: ".len();
    stderr[at..].split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn run_applies_the_chat_template_by_default_raw_on_request_and_a_system_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference("llama-gqa");
    let model = converted("llama-gqa", dir.path());
    let m = model.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-m", m, "--temp", "0", "-n", "1", "-v"];
        args.extend_from_slice(extra);
        args.push(&r.prompt);
        llava(&args)
    };
    let raw = run(&["--template", "raw"]);
    assert!(raw.status.success(), "{}", stderr(&raw));
    // Raw: exactly the reference's tokens (BOS + the prompt).
    assert_eq!(prompt_tokens(&stderr(&raw)), r.input_ids.len());
    let default = run(&[]);
    assert!(default.status.success(), "{}", stderr(&default));
    let err = stderr(&default);
    // The file has no chat template: LLaVA-1.5's, with its system prompt of 30-odd words.
    assert!(err.contains("template llava_v1"), "{err}");
    let templated = prompt_tokens(&err);
    assert!(templated > r.input_ids.len() + 20, "{templated}");
    let system = run(&["--system", "Be brief."]);
    assert!(system.status.success(), "{}", stderr(&system));
    let with_system = prompt_tokens(&stderr(&system));
    assert!(
        with_system < templated && with_system > r.input_ids.len(),
        "{with_system}"
    );
    // llama.cpp's spelling of the same flag.
    let sys = run(&["-sys", "Be brief."]);
    assert_eq!(prompt_tokens(&stderr(&sys)), with_system);
    let mistral = run(&["--template", "mistral_instruct", "--system", "Be brief."]);
    assert_eq!(mistral.status.code(), Some(1));
    assert!(
        stderr(&mistral).contains("mistral_instruct template has no system prompt"),
        "{}",
        stderr(&mistral)
    );
}

#[test]
fn an_image_marker_without_images_is_text() {
    let dir = tempfile::tempdir().unwrap();
    let model = converted("llama-gqa", dir.path());
    let m = model.to_str().unwrap();
    let o = llava(&[
        "run",
        "-m",
        m,
        "--template",
        "raw",
        "-n",
        "1",
        "-v",
        "1 <image> 2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Its tokens, as `tokenize` gives them (BOS included).
    let t = llava(&["tokenize", "-m", m, "1 <image> 2"]);
    let n = stdout(&t).split_whitespace().count();
    assert!(n > 3, "{}", stdout(&t));
    assert_eq!(prompt_tokens(&stderr(&o)), n);
    let npy = dir.path().join("l.npy");
    let o = llava(&[
        "logits",
        "-m",
        m,
        "--prompt",
        "<image>",
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn llama_cpp_spellings_work_or_say_what_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference("llama-gqa");
    let model = converted("llama-gqa", dir.path());
    let m = model.to_str().unwrap();
    let base = ["run", "-m", m, "--temp", "0", "--template", "raw"];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        llava(&args)
    };
    // Same meaning: --n-predict, --ctx-size, -p, -f.
    let o = with(&["--n-predict", "20", "--ctx-size", "64", "-p", &r.prompt]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{}\n", r.continuation));
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, &r.prompt).unwrap();
    let o = with(&["-n", "20", "-f", file.to_str().unwrap()]);
    assert_eq!(
        stdout(&o),
        format!("{}\n", r.continuation),
        "{}",
        stderr(&o)
    );
    // A piped stdin is the prompt (echo's line break dropped).
    let mut args = base.to_vec();
    args.extend_from_slice(&["-n", "20"]);
    let o = llava_stdin(&args, &format!("{}\n", r.prompt));
    assert_eq!(
        stdout(&o),
        format!("{}\n", r.continuation),
        "{}",
        stderr(&o)
    );
    // No equivalent: refused, with what to do, before anything is loaded (exit 2, usage).
    for (flag, advice) in [
        (&["-hff", "model-Q4_0.gguf"][..], "--hf OWNER/NAME:Q4_K_M"),
        (&["-cnv"][..], "use `llava chat`"),
        (&["-ctk", "q8_0"][..], "--kv-type"),
    ] {
        let o = with(flag);
        assert_eq!(o.status.code(), Some(2), "{flag:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(advice), "{flag:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    }
}

#[test]
fn every_subcommand_help_has_examples() {
    for cmd in [
        "run", "logits", "tokenize", "convert", "quantize", "inspect", "synth", "bench",
    ] {
        let o = llava(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd}");
        let help = stdout(&o);
        assert!(
            help.contains("Examples:\n  llava {cmd}".replace("{cmd}", cmd).as_str()),
            "{cmd}: {help}"
        );
    }
    let o = llava(&["run", "--help"]);
    let help = stdout(&o);
    for flag in ["--frequency-penalty", "--presence-penalty"] {
        let line = help.lines().find(|l| l.contains(flag)).unwrap();
        let at = help.find(line).unwrap();
        // The flag's line or the next one says what it does.
        let text = &help[at..at + line.len() + 100];
        assert!(text.contains("Subtract"), "{flag}: {text}");
    }
}
