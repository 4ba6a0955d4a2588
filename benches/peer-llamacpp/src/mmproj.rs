//! The size of the synthetic image, from the mmproj's metadata, by the rule `llava bench` uses
//! (src/bench.rs `synthetic_image`): the tower's own size, or for a LLaVA-1.6 tower (one with
//! grid pinpoints) its largest pinpoint. llama-cpp-2's `GgufContext` reads no arrays, so this
//! reads the header through ggml's gguf API directly.

use std::ffi::{CStr, CString};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use llama_cpp_sys_2 as sys;

const KEY_IMAGE_SIZE: &CStr = c"clip.vision.image_size";
const KEY_PINPOINTS: &CStr = c"clip.vision.image_grid_pinpoints";

/// (width, height) of the synthetic image, and which rule chose it.
pub fn synthetic_image_size(mmproj: &Path) -> Result<((u32, u32), &'static str)> {
    let header = Header::open(mmproj)?;
    let side = header
        .u32(KEY_IMAGE_SIZE)
        .ok_or_else(|| anyhow!("{}: no clip.vision.image_size", mmproj.display()))?;
    let pinpoints = header.i32_array(KEY_PINPOINTS);
    let largest = pinpoints
        .chunks_exact(2)
        .filter(|p| p[0] > 0 && p[1] > 0)
        .map(|p| (p[0] as u32, p[1] as u32))
        .reduce(|best, p| {
            if u64::from(p.0) * u64::from(p.1) > u64::from(best.0) * u64::from(best.1) {
                p
            } else {
                best
            }
        });
    Ok(match largest {
        Some(p) => (p, "largest pinpoint"),
        None => ((side, side), "tower size"),
    })
}

/// A GGUF header parsed by ggml (`no_alloc`: no tensor data is read).
struct Header(*mut sys::gguf_context);

impl Header {
    fn open(path: &Path) -> Result<Header> {
        let c_path = path
            .to_str()
            .and_then(|s| CString::new(s).ok())
            .ok_or_else(|| anyhow!("{}: not a usable path", path.display()))?;
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: a valid C string and params; ggml returns null on any failure.
        let ctx = unsafe { sys::gguf_init_from_file(c_path.as_ptr(), params) };
        if ctx.is_null() {
            bail!("{}: ggml cannot read it as GGUF", path.display());
        }
        Ok(Header(ctx))
    }

    fn find(&self, key: &CStr) -> Option<i64> {
        // SAFETY: self.0 is a live context (freed only in Drop); key is a C string.
        let id = unsafe { sys::gguf_find_key(self.0, key.as_ptr()) };
        (id >= 0).then_some(id)
    }

    fn u32(&self, key: &CStr) -> Option<u32> {
        let id = self.find(key)?;
        // SAFETY: id is a key of this context; the type is checked before the typed getter,
        // which ggml would otherwise abort on.
        unsafe {
            (sys::gguf_get_kv_type(self.0, id) == sys::GGUF_TYPE_UINT32)
                .then(|| sys::gguf_get_val_u32(self.0, id))
        }
    }

    /// The values of an INT32 array; empty when the key is missing or of another type.
    fn i32_array(&self, key: &CStr) -> Vec<i32> {
        let Some(id) = self.find(key) else {
            return Vec::new();
        };
        // SAFETY: id is a key of this context and is checked to be an INT32 array, so
        // gguf_get_arr_data points at gguf_get_arr_n aligned i32s owned by the context, which
        // outlives this copy.
        unsafe {
            if sys::gguf_get_kv_type(self.0, id) != sys::GGUF_TYPE_ARRAY
                || sys::gguf_get_arr_type(self.0, id) != sys::GGUF_TYPE_INT32
            {
                return Vec::new();
            }
            let n = sys::gguf_get_arr_n(self.0, id);
            if n == 0 {
                // An empty array's data pointer may be null, which from_raw_parts forbids.
                return Vec::new();
            }
            let data = sys::gguf_get_arr_data(self.0, id).cast::<i32>();
            std::slice::from_raw_parts(data, n).to_vec()
        }
    }
}

impl Drop for Header {
    fn drop(&mut self) {
        // SAFETY: the context came from gguf_init_from_file and is freed once.
        unsafe { sys::gguf_free(self.0) }
    }
}
