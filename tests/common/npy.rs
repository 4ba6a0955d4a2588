//! A strict reader of float32 NPY files (format 1.0 and 2.0, little-endian, C order): every
//! header field is checked, and the data must hold exactly the header's shape. A reader that
//! ignored the shape once let `logits --image` write 85 rows under a `(69, 702)` header.

use std::path::Path;

/// The shape and the values of a float32 NPY file.
pub fn read_npy_shaped(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_npy(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of a float32 NPY file, checked against its header's shape.
pub fn read_npy(path: &Path) -> Vec<f32> {
    read_npy_shaped(path).1
}

pub fn parse_npy(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an NPY file".into());
    }
    let (header_start, header_len) = match bytes[6] {
        1 => (10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 if bytes.len() >= 12 => (
            12,
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
        ),
        v => return Err(format!("NPY version {v}")),
    };
    let data_start = header_start + header_len;
    if !data_start.is_multiple_of(16) {
        return Err(format!("data starts at {data_start}, not 16-aligned"));
    }
    let header = bytes
        .get(header_start..data_start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-UTF-8 header")?;
    if !header.ends_with('\n') {
        return Err("the header does not end with a newline".into());
    }
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}': "))
            .ok_or(format!("no '{key}' in {header:?}"))?;
        Ok(&header[at + key.len() + 4..])
    };
    if !field("descr")?.starts_with("'<f4'") {
        return Err(format!("not little-endian float32: {header:?}"));
    }
    if !field("fortran_order")?.starts_with("False") {
        return Err(format!("Fortran order: {header:?}"));
    }
    let shape_text = field("shape")?;
    let tuple = shape_text
        .strip_prefix('(')
        .and_then(|t| t.split_once(')'))
        .ok_or(format!("shape is not a tuple: {header:?}"))?
        .0;
    let shape = tuple
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<usize>()
                .map_err(|e| format!("shape {tuple:?}: {e}"))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[data_start..];
    if data.len() != n * 4 {
        return Err(format!(
            "the header's shape {shape:?} holds {n} values, the data {} bytes ({} values)",
            data.len(),
            data.len() as f64 / 4.0
        ));
    }
    let values = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((shape, values))
}
