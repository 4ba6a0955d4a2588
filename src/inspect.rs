//! `llava inspect FILE.gguf`: what a GGUF file holds. Only the header is read (the tensor data
//! stays unread in the map), and long arrays are cut to their first few elements, so a file of
//! many gigabytes is summarised at once.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use llava_runtime::gguf::{
    file_type_name, ArrayView, GgufFile, Value, KEY_ARCHITECTURE, KEY_FILE_TYPE, KEY_NAME,
};
use llava_runtime::quant::GgmlType;
use serde_json::json;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava inspect model.gguf
  llava inspect mmproj.gguf --json | jq .metadata")]
pub struct Args {
    /// The GGUF file.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Array elements to show per metadata key (0 = all of them).
    #[arg(long, default_value_t = 8, value_name = "N")]
    array_items: usize,
}

/// Strings longer than this are cut in the text output.
const MAX_STRING_CHARS: usize = 96;

pub fn run(args: &Args) -> Result<()> {
    let file = GgufFile::open(&args.file)?;
    let limit = if args.array_items == 0 {
        usize::MAX
    } else {
        args.array_items
    };
    if args.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        return match write_json(&file, limit, &mut out).and_then(|_| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r.context("cannot write to stdout"),
        };
    }
    crate::write_stdout(&to_text(&file, limit))
}

struct TypeTotals {
    tensors: usize,
    elements: u64,
    bytes: u64,
}

fn totals_by_type(file: &GgufFile) -> BTreeMap<GgmlType, TypeTotals> {
    let mut by_type: BTreeMap<GgmlType, TypeTotals> = BTreeMap::new();
    for t in file.tensor_infos() {
        let e = by_type.entry(t.ggml_type()).or_insert(TypeTotals {
            tensors: 0,
            elements: 0,
            bytes: 0,
        });
        e.tensors += 1;
        e.elements += t.n_elements();
        e.bytes += t.n_bytes();
    }
    by_type
}

fn file_type(file: &GgufFile) -> Option<(u32, &'static str)> {
    let v = file.get_u32(KEY_FILE_TYPE).ok()?;
    Some((v, file_type_name(v).unwrap_or("unknown")))
}

fn to_text(file: &GgufFile, limit: usize) -> String {
    let mut s = String::new();
    let by_type = totals_by_type(file);
    let params: u64 = by_type.values().map(|t| t.elements).sum();
    let tensor_bytes: u64 = by_type.values().map(|t| t.bytes).sum();
    let str_or = |key, default: &str| {
        file.get_str(key)
            .map(|v| printable(v).into_owned())
            .unwrap_or_else(|_| default.to_owned())
    };

    let _ = writeln!(s, "file          {}", file.path().display());
    let _ = writeln!(
        s,
        "format        GGUF v{}, alignment {}, {} ({} bytes)",
        file.version(),
        file.alignment(),
        human_bytes(file.file_size()),
        file.file_size()
    );
    let _ = writeln!(s, "architecture  {}", str_or(KEY_ARCHITECTURE, "(not set)"));
    let _ = writeln!(s, "name          {}", str_or(KEY_NAME, "(not set)"));
    if let Some((v, name)) = file_type(file) {
        let _ = writeln!(s, "file type     {name} ({v})");
    }
    let _ = writeln!(s, "parameters    {} ({params})", human_count(params));
    let bpw = if params > 0 {
        format!(
            ", {:.2} bits/weight",
            tensor_bytes as f64 * 8.0 / params as f64
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "tensors       {} in {}{bpw}",
        file.tensor_count(),
        human_bytes(tensor_bytes)
    );
    for (ty, t) in &by_type {
        let _ = writeln!(
            s,
            "  {:<8} {:>5} tensors {:>10} {:>12} params",
            ty.name(),
            t.tensors,
            human_bytes(t.bytes),
            human_count(t.elements)
        );
    }

    let _ = writeln!(s, "\nmetadata ({} keys)", file.metadata_len());
    let key_width = file
        .metadata()
        .map(|(k, _)| printable(k).len())
        .max()
        .unwrap_or(0);
    for (key, value) in file.metadata() {
        let key = printable(key);
        let _ = writeln!(
            s,
            "  {key:<key_width$}  {:<16} {}",
            type_label(&value),
            value_text(&value, limit)
        );
    }

    if file.tensor_count() > 0 {
        let _ = writeln!(s, "\ntensors ({})", file.tensor_count());
        let name_width = file
            .tensor_infos()
            .iter()
            .map(|t| printable(t.name()).len())
            .max()
            .unwrap_or(0)
            .max(4);
        let shapes: Vec<String> = file
            .tensor_infos()
            .iter()
            .map(|t| shape_text(t.shape()))
            .collect();
        let shape_width = shapes.iter().map(String::len).max().unwrap_or(0).max(5);
        let _ = writeln!(
            s,
            "  {:<name_width$}  {:<7} {:<shape_width$} {:>10}",
            "name", "type", "shape", "bytes"
        );
        for (t, shape) in file.tensor_infos().iter().zip(&shapes) {
            let _ = writeln!(
                s,
                "  {:<name_width$}  {:<7} {:<shape_width$} {:>10}",
                printable(t.name()),
                t.ggml_type().name(),
                shape,
                human_bytes(t.n_bytes())
            );
        }
    }
    s
}

/// `s` with its control characters escaped (`\u{1b}`), so a hostile file cannot clear the
/// screen or retitle the terminal through a key or tensor name it holds.
pub(crate) fn printable(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

fn type_label(v: &Value<'_>) -> String {
    match v {
        Value::Array(a) => format!("[{}; {}]", a.elem_type(), a.len()),
        v => v.value_type().name().to_owned(),
    }
}

fn value_text(v: &Value<'_>, limit: usize) -> String {
    match v {
        Value::Array(a) => array_text(a, limit),
        Value::String(s) => quoted(s, MAX_STRING_CHARS),
        v => scalar_text(v),
    }
}

fn scalar_text(v: &Value<'_>) -> String {
    match *v {
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        Value::Bool(x) => x.to_string(),
        Value::String(s) => quoted(s, 32),
        Value::Array(_) => unreachable!("nested arrays are rejected by the reader"),
    }
}

fn array_text(a: &ArrayView<'_>, limit: usize) -> String {
    let shown: Vec<String> = a.iter().take(limit).map(|v| scalar_text(&v)).collect();
    let more = a.len() - shown.len();
    let mut s = format!("[{}", shown.join(", "));
    if more > 0 {
        let _ = write!(s, ", … {more} more");
    }
    s.push(']');
    s
}

/// A string in Rust's escaped form, cut to `max_chars`.
fn quoted(s: &str, max_chars: usize) -> String {
    let mut cut: String = s.chars().take(max_chars).collect();
    let truncated = cut.len() < s.len();
    cut = format!("{cut:?}");
    if truncated {
        cut.push_str(&format!("… ({} bytes)", s.len()));
    }
    cut
}

fn shape_text(shape: &[u64]) -> String {
    if shape.is_empty() {
        return "scalar".to_owned();
    }
    shape
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" x ")
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{x:.2} {}", UNITS[unit])
    }
}

fn human_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.2} K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} M", n as f64 / 1e6),
        _ => format!("{:.2} B", n as f64 / 1e9),
    }
}

fn json_value(v: &Value<'_>, limit: usize) -> serde_json::Value {
    match *v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => serde_json::Value::Array(
            a.iter()
                .take(limit)
                .map(|e| json_value(&e, limit))
                .collect(),
        ),
    }
}

/// Writes the JSON report entry by entry: a file of a million metadata keys is not built as
/// one `serde_json::Value` first (that took 1.8 GB for a 24 MB file).
fn write_json(file: &GgufFile, limit: usize, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let by_type = totals_by_type(file);
    let types: serde_json::Map<_, _> = by_type
        .iter()
        .map(|(ty, t)| {
            (
                ty.name().to_owned(),
                json!({ "tensors": t.tensors, "elements": t.elements, "bytes": t.bytes }),
            )
        })
        .collect();
    let head = json!({
        "file": file.path(),
        "file_size": file.file_size(),
        "version": file.version(),
        "alignment": file.alignment(),
        "architecture": file.get_str(KEY_ARCHITECTURE).ok(),
        "name": file.get_str(KEY_NAME).ok(),
        "file_type": file_type(file).map(|(v, name)| json!({ "value": v, "name": name })),
        "parameters": by_type.values().map(|t| t.elements).sum::<u64>(),
        "tensor_bytes": by_type.values().map(|t| t.bytes).sum::<u64>(),
        "by_type": types,
    });
    // The head without its closing "\n}", then the two long lists, one entry per line.
    let head = serde_json::to_string_pretty(&head)?;
    w.write_all(head.trim_end_matches('}').trim_end().as_bytes())?;
    w.write_all(b",\n  \"metadata\": [")?;
    for (i, (key, v)) in file.metadata().enumerate() {
        let mut m =
            json!({ "key": key, "type": v.value_type().name(), "value": json_value(&v, limit) });
        if let Value::Array(a) = v {
            m["elem_type"] = json!(a.elem_type().name());
            m["len"] = json!(a.len());
            m["truncated"] = json!(a.len() > limit);
        }
        w.write_all(if i == 0 { b"\n    " } else { b",\n    " })?;
        serde_json::to_writer(&mut *w, &m)?;
    }
    w.write_all(b"\n  ],\n  \"tensors\": [")?;
    for (i, t) in file.tensor_infos().iter().enumerate() {
        let m = json!({
            "name": t.name(),
            "type": t.ggml_type().name(),
            "shape": t.shape(),
            "elements": t.n_elements(),
            "bytes": t.n_bytes(),
            "offset": file.data_offset() + t.offset(),
        });
        w.write_all(if i == 0 { b"\n    " } else { b",\n    " })?;
        serde_json::to_writer(&mut *w, &m)?;
    }
    w.write_all(b"\n  ]\n}\n")
}
