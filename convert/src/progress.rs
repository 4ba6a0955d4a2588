//! What a conversion tells its caller as it goes: the totals up front, then each tensor as it
//! is written. The CLI draws a progress bar and the `--verbose` table from it; the library
//! itself prints nothing.

use llava_runtime::gguf::TensorDecl;
use llava_runtime::quant::GgmlType;

use crate::error::ConvertError;
use crate::quantize::rmse;

/// One tensor, written.
#[derive(Clone, Debug)]
pub struct TensorDone<'a> {
    /// The GGUF tensor's name.
    pub name: &'a str,
    /// The type it was written in.
    pub ty: GgmlType,
    /// ggml order.
    pub shape: &'a [u64],
    /// Bytes read from the source (checkpoint or GGUF tensor).
    pub source_bytes: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Root-mean-square error of the written values against the source's, in f32; only when
    /// the monitor asked for it.
    pub rmse: Option<f64>,
}

/// Watches a conversion or requantization.
pub trait Monitor {
    /// Whether to compute each tensor's RMSE, at the cost of decoding what was written.
    fn wants_rmse(&self) -> bool {
        false
    }

    /// Called once before the first tensor.
    fn begin(&mut self, _n_tensors: usize, _source_bytes: u64) {}

    /// Called after each tensor is written, in file order.
    fn tensor_done(&mut self, _tensor: &TensorDone<'_>) {}
}

/// A monitor that wants nothing.
pub struct Silent;

impl Monitor for Silent {}

/// Tells `monitor` that `decl`'s `bytes` were written, computing the RMSE against `source`
/// if it asks; `source` is `None` when the bytes are the source's own, copied.
pub(crate) fn tensor_written(
    monitor: &mut dyn Monitor,
    decl: &TensorDecl,
    source: Option<&[f32]>,
    bytes: &[u8],
    source_bytes: u64,
) -> Result<(), ConvertError> {
    let rmse = match (monitor.wants_rmse(), source) {
        (false, _) => None,
        (true, None) => Some(0.0),
        (true, Some(src)) => Some(rmse(
            &decl.name,
            src,
            decl.ty,
            bytes,
            decl.shape.first().copied().unwrap_or(1) as usize,
        )?),
    };
    monitor.tensor_done(&TensorDone {
        name: &decl.name,
        ty: decl.ty,
        shape: &decl.shape,
        source_bytes,
        bytes: bytes.len() as u64,
        rmse,
    });
    Ok(())
}
