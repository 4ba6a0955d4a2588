//! llama.cpp's spellings of flags. Users arrive with llama.cpp's command lines in their
//! fingers: its multi-letter single-dash flags (`-ngl 99`, `-sys`) would otherwise be read by
//! clap as bundles of short flags (`-n gl`: "invalid value 'gl' for '--max-tokens'"). Those
//! that mean the same as a llava flag are rewritten to it; the rest are refused with the
//! llava way to get what they do. Spellings that are already llava flags (`-p`, `-f`, `-t`,
//! `--ctx-size`, `--n-predict`, `--temp`, `--top-k`, ...) are clap aliases, not handled here.

use std::ffi::OsString;

/// llama.cpp flags with the same meaning as a llava flag.
const SAME: &[(&str, &str)] = &[("-sys", "--system"), ("-hf", "--hf"), ("--hf-repo", "--hf")];

/// llama.cpp's "layers on the GPU": llava runs a model wholly on one device, so any number
/// above 0 (or `all`/`auto`) means `--device gpu` and 0 `--device cpu`.
const GPU_LAYERS: &[&str] = &["-ngl", "--n-gpu-layers", "--gpu-layers"];

/// llama.cpp flags llava has no equivalent for, with what to do instead.
const REFUSED: &[(&[&str], &str)] = &[
    (
        &["-hff", "--hf-file"],
        "give the quantization after the repository instead: --hf OWNER/NAME:Q4_K_M",
    ),
    (
        &["-hft", "--hf-token"],
        "set HF_TOKEN in the environment (a token on the command line shows in `ps`)",
    ),
    (
        &["-cnv", "--conversation", "-i", "--interactive"],
        "llava run answers one prompt; for a conversation use `llava chat`",
    ),
    (
        &["-ctk", "--cache-type-k", "-ctv", "--cache-type-v"],
        "use --kv-type f16|f32 (keys and values are stored alike)",
    ),
    (
        &["-b", "--batch-size", "-ub", "--ubatch-size"],
        "llava runs the whole prompt as one batch: drop it",
    ),
    (
        &["-fa", "--flash-attn"],
        "llava's attention never materialises the full score matrix: drop it",
    ),
];

/// The command line with llama.cpp's spellings rewritten, or a message for one llava cannot
/// take. `--` ends the flags: what follows is left as it is.
pub fn translate(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = args.into_iter();
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            break;
        }
        // `--flag=value` is refused or rewritten as `--flag value` would be.
        let (flag, value) = match text.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v)),
            _ => (text, None),
        };
        if let Some((_, llava)) = SAME.iter().find(|(cpp, _)| *cpp == flag) {
            out.push(OsString::from(match value {
                Some(v) => format!("{llava}={v}"),
                None => llava.to_string(),
            }));
            continue;
        }
        if GPU_LAYERS.contains(&flag) {
            let value = match value {
                Some(v) => Some(v.to_owned()),
                None => rest.next().and_then(|v| v.into_string().ok()),
            };
            let device = match value.as_deref() {
                Some("0") => "cpu",
                Some("all" | "auto") => "gpu",
                Some(n) if n.parse::<u32>().is_ok() => "gpu",
                _ => {
                    return Err(format!(
                    "{flag} takes a number of layers (llava: 0 runs on the CPU, more on the GPU)"
                ))
                }
            };
            out.extend([OsString::from("--device"), OsString::from(device)]);
            continue;
        }
        if let Some((_, advice)) = REFUSED.iter().find(|(names, _)| names.contains(&flag)) {
            return Err(format!("{flag} is llama.cpp's flag: {advice}"));
        }
        out.push(arg);
    }
    out.extend(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Result<Vec<String>, String> {
        translate(args.iter().map(OsString::from).collect())
            .map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn same_meaning_flags_are_rewritten() {
        assert_eq!(
            t(&["llava", "run", "-sys", "Be brief.", "q"]).unwrap(),
            ["llava", "run", "--system", "Be brief.", "q"]
        );
        assert_eq!(
            t(&["llava", "run", "-sys=S"]).unwrap(),
            ["llava", "run", "--system=S"]
        );
        assert_eq!(
            t(&["llava", "run", "-hf", "o/r:Q8_0", "q"]).unwrap(),
            ["llava", "run", "--hf", "o/r:Q8_0", "q"]
        );
    }

    #[test]
    fn gpu_layers_choose_the_device() {
        assert_eq!(
            t(&["llava", "run", "-ngl", "99", "q"]).unwrap(),
            ["llava", "run", "--device", "gpu", "q"]
        );
        assert_eq!(
            t(&["llava", "run", "--n-gpu-layers=0"]).unwrap(),
            ["llava", "run", "--device", "cpu"]
        );
        assert!(t(&["llava", "run", "-ngl", "many"])
            .unwrap_err()
            .contains("layers"));
        assert!(t(&["llava", "run", "-ngl"]).unwrap_err().contains("layers"));
    }

    #[test]
    fn flags_without_an_equivalent_are_refused_with_advice() {
        let e = t(&["llava", "run", "-hff", "x.gguf"]).unwrap_err();
        assert!(e.contains("--hf OWNER/NAME:Q4_K_M"), "{e}");
        let e = t(&["llava", "run", "--hf-token=secret"]).unwrap_err();
        assert!(e.contains("HF_TOKEN"), "{e}");
        assert!(t(&["llava", "run", "-cnv"])
            .unwrap_err()
            .contains("one prompt"));
        assert!(t(&["llava", "run", "-ctk", "q8_0"])
            .unwrap_err()
            .contains("--kv-type"));
        assert!(t(&["llava", "run", "--flash-attn=on"])
            .unwrap_err()
            .contains("drop it"));
    }

    #[test]
    fn prompts_and_values_are_left_alone() {
        // After `--`, and as the value of a flag in `--flag=value`, nothing is rewritten; a
        // prompt that happens to read "-ngl" after `--` is text.
        assert_eq!(
            t(&["llava", "run", "--", "-ngl"]).unwrap(),
            ["llava", "run", "--", "-ngl"]
        );
        assert_eq!(
            t(&["llava", "run", "--stop=-ngl", "-t", "2"]).unwrap(),
            ["llava", "run", "--stop=-ngl", "-t", "2"]
        );
    }
}
