//! The GPU from the command line: `llava devices`, `--device` (and llama.cpp's `-ngl`) and
//! `--vision-device` on `run`, with the tiny LLaVA fixture; the GPU's greedy answer is the CPU's. Runs on whatever
//! adapter there is (CI: lavapipe, taken by its number since software adapters are never
//! chosen automatically); the GPU runs are skipped, saying so, where there is none.

mod common;
use common::*;

fn answer(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let (llm, mmproj) = tiny_llava(dir);
    let mut args = vec![
        "run",
        "-m",
        llm.to_str().unwrap(),
        "--mmproj",
        mmproj.to_str().unwrap(),
        "--image",
        "tests/fixtures/images/odd.png",
        "-p",
        "What is in this picture?",
        "-n",
        "12",
        "--temp",
        "0",
        "--verbose",
    ];
    args.extend_from_slice(extra);
    let o = std::process::Command::new(llava_bin())
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
    o
}

#[test]
fn run_on_the_gpu_answers_as_the_cpu_does() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = answer(dir.path(), &["--device", "cpu"]);
    assert!(stderr(&cpu).contains("cpu, "), "{}", stderr(&cpu));
    let ngl0 = answer(dir.path(), &["-ngl", "0"]);
    assert_eq!(stdout(&ngl0), stdout(&cpu));
    if gpu_backend().is_none() {
        return;
    }
    // The optional features (integer dot products, f16 tiles) by default, not with either
    // flag; `--verbose` names what the backend uses.
    for (extra, integer_dot) in [
        (&["--device", "gpu:0"][..], true),
        (&["--device", "gpu:0", "--gpu-downlevel"], false),
        (&["--device", "gpu:0", "--gpu-f32"], false),
    ] {
        let gpu = answer(dir.path(), extra);
        let said = stderr(&gpu);
        assert!(said.contains("gpu, "), "{said}");
        assert_eq!(
            said.contains("integer dot products"),
            integer_dot,
            "{extra:?}: {said}"
        );
        if !integer_dot {
            assert!(!said.contains("f16 tiles"), "{extra:?}: {said}");
        }
        assert_eq!(stdout(&gpu), stdout(&cpu), "{extra:?}");
    }
    // A split: the tower on one device, the LLM on the other, either way round.
    for (llm, vision) in [("gpu:0", "cpu"), ("cpu", "gpu:0")] {
        let split = answer(dir.path(), &["--device", llm, "--vision-device", vision]);
        let said = stderr(&split);
        let tower = said.split("vision tower: ").nth(1).unwrap_or_default();
        assert!(tower.starts_with(&vision[..3]), "{llm}/{vision}: {said}");
        assert_eq!(stdout(&split), stdout(&cpu), "{llm}/{vision}");
    }
}

/// Where no display session exists (a service, a container), Mesa's device-selection layer
/// would print libwayland's complaint about `XDG_RUNTIME_DIR` before the list: `llava` turns
/// the layer off there, so stderr stays empty.
#[test]
fn devices_on_a_machine_without_a_display_prints_no_errors() {
    let o = std::process::Command::new(llava_bin())
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "llava devices wrote to stderr");
}

#[test]
fn devices_lists_the_adapters_and_a_missing_gpu_is_a_one_line_error() {
    let o = llava(&["devices"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o);
    if gpu_backend().is_some() {
        assert!(listed.starts_with("gpu:0  "), "{listed}");
        assert!(listed.contains("limits: storage binding"), "{listed}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (llm, _) = tiny_llava(dir.path());
    let run_with = |device: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "-m",
            llm.to_str().unwrap(),
            "-p",
            "hi",
            "-n",
            "1",
            "--device",
            device,
        ];
        args.extend_from_slice(extra);
        llava(&args)
    };
    let run = |device: &str| run_with(device, &[]);
    let o = run("gpu:99");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no adapter 99"), "{}", stderr(&o));
    // `gpu` takes hardware only: where every adapter is software, it is an error.
    let hardware = listed
        .lines()
        .any(|l| l.starts_with("gpu:") && !l.contains("software"));
    if !hardware {
        let o = run("gpu");
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let text = stderr(&o);
        let err: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
            .collect();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].contains("no hardware GPU adapter"), "{err:?}");
        // auto falls back to the CPU, and says so.
        let o = run_with("auto", &["--verbose"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("cpu, "), "{}", stderr(&o));
        assert!(!stderr(&o).contains("gpu, "), "{}", stderr(&o));
    }
    let o = run("tpu");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("expected cpu, gpu, gpu:N"),
        "{}",
        stderr(&o)
    );
}

/// `logits` and `bench` take `--device` as `run` does: the GPU's logits of the fixture's
/// prompt are transformers' within the F32 bound (and the CPU's), and `bench` reports the GPU.
#[test]
fn logits_and_bench_run_on_the_gpu() {
    if gpu_backend().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = text_reference("llama-gqa");
    let llm = dir.path().join("llm.gguf");
    llava_convert::convert_llama(&fixture("llama-gqa"), &llm, llava_convert::Preset::F32).unwrap();
    let llm = llm.to_str().unwrap();
    let logits = |device: &str| {
        let out = dir.path().join(format!("{device}.npy"));
        let o = llava(&[
            "logits",
            "-m",
            llm,
            "--prompt",
            &r.prompt,
            "--out",
            out.to_str().unwrap(),
            "--kv-type",
            "f32",
            "--device",
            device,
        ]);
        assert!(o.status.success(), "{device}: {}", stderr(&o));
        let (shape, values) = read_npy_shaped(&out);
        assert_eq!(shape, [r.input_ids.len(), r.n_vocab()], "{device}");
        values
    };
    let (cpu, gpu) = (logits("cpu"), logits("gpu:0"));
    let want = r.flat_logits();
    for (device, values) in [("cpu", &cpu), ("gpu:0", &gpu)] {
        let diff = max_abs_diff(values, &want);
        assert!(diff <= F32_LOGITS, "{device}: max |diff| {diff}");
    }
    assert!(max_abs_diff(&cpu, &gpu) <= F32_LOGITS);

    let o = llava(&[
        "bench", "--json", "-m", llm, "-p", "4", "-n", "2", "-r", "1", "--device", "gpu:0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["pp"]["tokens"], 4, "{report}");
    assert_eq!(report["tg"]["tokens"], 2, "{report}");
    assert_eq!(report["kernels"], "wgsl", "{report}");
    assert!(stderr(&o).contains("gpu, "), "{}", stderr(&o));
}
