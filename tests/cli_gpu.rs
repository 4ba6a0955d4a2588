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
    let run = |device: &str| {
        llava(&[
            "run",
            "-m",
            llm.to_str().unwrap(),
            "-p",
            "hi",
            "-n",
            "1",
            "--device",
            device,
        ])
    };
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
        // auto falls back to the CPU.
        assert!(run("auto").status.success());
    }
    let o = run("tpu");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("expected cpu, gpu, gpu:N"),
        "{}",
        stderr(&o)
    );
}
