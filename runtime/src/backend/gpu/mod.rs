//! The GPU backend: the `Backend` ops as WGSL compute shaders (../../../../shaders) on wgpu,
//! so one build runs on Vulkan (Linux, Windows, Android, a Raspberry Pi 5's v3dv), Metal and
//! DX12.
//!
//! Execution: every op records a compute pass into one pending command encoder and returns at
//! once; nothing runs until [`Backend::download`], which submits the encoder (one submission)
//! and reads the tensor back (one readback). A decode step therefore costs one submission and
//! one readback, of the logits. Errors wgpu reports while recording (out of memory, a buffer
//! beyond the adapter's limits, a lost device) are kept and returned by the next `download`:
//! ops themselves never fail and never panic on the device's account.
//!
//! Portability: the kernels stay within WebGPU's downlevel limits (≤ 256 invocations and
//! ≤ 16 KiB of workgroup memory per workgroup) and need no optional feature; weights larger
//! than a storage binding are split by rows ([`GpuOptions::max_binding`] lowers the bound, so
//! tests exercise the split on any adapter). Where the adapter has them (and not
//! [`GpuOptions::downlevel`]), optional features are used: subgroups (decode's sums), WGSL's
//! packed 4×8-bit integer dot products (Q4_0, Q8_0, Q4_K and Q6_K weights against 8-bit
//! activations, in decode and batches) and shader-f16 (batches of the other F16 and quantized
//! weights in f16 tiles); [`GpuOptions::f32_only`] turns the last two off.

mod weight;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::{Backend, BackendError, Heads, KvType, Rope};
use crate::gguf::GgufFile;
use crate::quant::{self, GgmlType};

const NAME: &str = "gpu";

/// u32 words per 32-value block of 8-bit activations (shaders/q8_act.wgsl). The shaders that
/// write and read these blocks get it as `XQ_WORDS` from [`xq_words`], so the sizes cannot drift.
const Q8_WORDS: usize = 10;

/// The WGSL declaration of [`Q8_WORDS`] that q8_act.wgsl and gemv_dot4.wgsl use.
fn xq_words() -> String {
    format!("const XQ_WORDS: u32 = {Q8_WORDS}u;\n")
}

/// Which adapter [`GpuBackend::new`] takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdapterChoice {
    /// The first hardware GPU (discrete before integrated); never a software rasteriser.
    #[default]
    Hardware,
    /// The first adapter of any kind, software ones (llvmpipe/lavapipe) included: tests.
    Any,
    /// The adapter at this index of [`adapters`].
    Index(usize),
}

/// How [`GpuBackend::new`] opens a device.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Which adapter.
    pub adapter: AdapterChoice,
    /// Ask for WebGPU's downlevel limits and no optional feature, whatever the adapter offers:
    /// the limits of the weakest GPUs the backend targets (a Pi 5's), to test that path.
    pub downlevel: bool,
    /// Split weights into parts of at most this many bytes (the adapter's storage-binding
    /// limit if lower).
    pub max_binding: Option<u64>,
    /// Compute in f32 only: no 8-bit activations with packed 4×8-bit integer dot products,
    /// no f16 tiles in batches (both are used where the adapter has them, except with
    /// `downlevel`): to compare.
    pub f32_only: bool,
}

/// What [`adapters`] reports about one adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// The adapter's name, as the driver reports it.
    pub name: String,
    /// vulkan, metal, dx12 or gl.
    pub backend: String,
    /// The driver's name and version.
    pub driver: String,
    /// DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu or Other.
    pub device_type: String,
    /// A CPU implementation (llvmpipe, lavapipe, WARP): never chosen automatically.
    pub software: bool,
    /// The largest storage binding, in bytes.
    pub max_storage_binding: u64,
    /// The largest buffer, in bytes.
    pub max_buffer: u64,
    /// Workgroup memory, in bytes.
    pub max_workgroup_storage: u32,
    /// Invocations per workgroup.
    pub max_invocations: u32,
    /// The optional features the backend could use (shader-f16, subgroups, timestamp-query).
    pub features: Vec<String>,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn summary(adapter: &wgpu::Adapter) -> AdapterSummary {
    let (info, limits, features) = (adapter.get_info(), adapter.limits(), adapter.features());
    let interesting = [
        (wgpu::Features::SHADER_F16, "shader-f16"),
        (wgpu::Features::SUBGROUP, "subgroups"),
        (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
    ];
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend).to_lowercase(),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_owned(),
        device_type: format!("{:?}", info.device_type),
        software: info.device_type == wgpu::DeviceType::Cpu,
        max_storage_binding: limits.max_storage_buffer_binding_size,
        max_buffer: limits.max_buffer_size,
        max_workgroup_storage: limits.max_compute_workgroup_storage_size,
        max_invocations: limits.max_compute_invocations_per_workgroup,
        features: interesting
            .iter()
            .filter(|(f, _)| features.contains(*f))
            .map(|(_, n)| (*n).to_owned())
            .collect(),
    }
}

/// Every adapter wgpu finds, in the order [`AdapterChoice::Index`] counts them.
pub fn adapters() -> Vec<AdapterSummary> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .map(summary)
        .collect()
}

/// The limits a device was opened with (the adapter's own, or WebGPU's downlevel ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// The largest storage binding, in bytes.
    pub max_storage_binding: u64,
    /// The largest buffer, in bytes.
    pub max_buffer: u64,
    /// Workgroup memory, in bytes.
    pub max_workgroup_storage: u32,
    /// Invocations per workgroup.
    pub max_invocations: u32,
}

/// Kernels run, submissions made and tensors read back since the backend was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Command buffers submitted.
    pub submissions: u64,
    /// Tensors read back to the host.
    pub readbacks: u64,
}

/// An activation `[rows, cols]` of f32 in a storage buffer.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    buf: wgpu::Buffer,
    rows: usize,
    cols: usize,
}

/// Rows of a weight in one buffer: rows `first_row..first_row + rows` of the tensor.
#[derive(Debug)]
struct Part {
    buf: wgpu::Buffer,
    first_row: usize,
    rows: usize,
}

/// A weight on the GPU: `n_rows` rows of `row_len` elements, in the type's GPU layout
/// (weight.rs), split into parts that each fit a binding. A 1-D weight (norm gains, biases)
/// is kept as f32 in one part.
#[derive(Debug)]
pub struct GpuWeight {
    ty: GgmlType,
    row_len: usize,
    n_rows: usize,
    row_words: usize,
    parts: Vec<Part>,
}

impl GpuWeight {
    /// The type it was stored as (f32 for vectors, which are widened).
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// How many buffers the weight was split into.
    pub fn n_parts(&self) -> usize {
        self.parts.len()
    }
}

/// The KV cache: per layer a K and a V buffer of `n_ctx` positions × `stride` values, f32 or
/// f16 packed two to a u32.
#[derive(Debug)]
pub struct GpuKvCache {
    kv_type: KvType,
    n_ctx: usize,
    stride: usize,
    layers: Vec<(wgpu::Buffer, wgpu::Buffer)>,
}

/// Shader sources, one file per kernel family.
mod source {
    pub const QUANT: &str = include_str!("../../../../shaders/quant.wgsl");
    pub const MATMUL: &str = include_str!("../../../../shaders/matmul.wgsl");
    pub const GEMV_SUBGROUP: &str = include_str!("../../../../shaders/gemv_subgroup.wgsl");
    pub const GEMV_DOT4: &str = include_str!("../../../../shaders/gemv_dot4.wgsl");
    pub const Q8_ACT: &str = include_str!("../../../../shaders/q8_act.wgsl");
    pub const TILED_F16: &str = include_str!("../../../../shaders/tiled_f16.wgsl");
    pub const ROWS: &str = include_str!("../../../../shaders/rows.wgsl");
    pub const ELEMENTWISE: &str = include_str!("../../../../shaders/elementwise.wgsl");
    pub const NORM: &str = include_str!("../../../../shaders/norm.wgsl");
    pub const ROPE: &str = include_str!("../../../../shaders/rope.wgsl");
    pub const ATTENTION: &str = include_str!("../../../../shaders/attention.wgsl");
    pub const KV_STORE: &str = include_str!("../../../../shaders/kv_store.wgsl");
}

/// A shader module: a family, and for the families that have them, the variant (a weight type
/// for matmul/rows, and whether subgroups and integer dot products are used; the KV element
/// type for attention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Module {
    Matmul {
        ty: GgmlType,
        subgroups: bool,
        /// `gemv` and `tiled_dot4` over 8-bit activations (gemv_dot4.wgsl); only for the
        /// types `weight::shader_fn_dot4` names.
        dot4: bool,
        /// With `tiled_f16` (tiled_f16.wgsl): the device has `shader-f16`.
        f16: bool,
    },
    Rows(GgmlType),
    /// Activations prepared for the kernels of lower precision (q8_act.wgsl).
    Activations,
    Elementwise,
    Norm,
    Rope,
    Attention(KvType),
    KvStore,
}

impl Module {
    /// The WGSL of the module, with its variant's definitions prepended.
    fn source(self) -> String {
        let with_dq = |ty: GgmlType, body: &str| {
            format!(
                "fn dq(base: u32, k: u32) -> f32 {{ return {}(base, k); }}\n\
                 fn dq8(base: u32, k8: u32) -> Eight {{ return {}(base, k8); }}\n{}\n{body}",
                weight::shader_fn(ty),
                weight::shader_fn8(ty),
                source::QUANT
            )
        };
        match self {
            Module::Matmul {
                ty,
                subgroups,
                dot4,
                f16,
            } => {
                let mut s = with_dq(ty, source::MATMUL);
                // WGSL's `enable` directives come before any declaration.
                if f16 {
                    s = format!("enable f16;\n{s}\n{}", source::TILED_F16);
                }
                // naga takes subgroup operations without WGSL's `enable subgroups;` (it
                // refuses the directive); the device's SUBGROUP feature is what allows them.
                if subgroups {
                    s = format!("{s}\n{}", source::GEMV_SUBGROUP);
                }
                match weight::shader_fn_dot4(ty).filter(|_| dot4) {
                    Some(f) => format!(
                        "{s}\n{}\n\
                         fn row_dot(base: u32, r: u32, t: u32) -> f32 {{ return row_partial_dot4(base, r, t); }}\n\
                         fn w_word(base: u32, blk: u32, i: u32) -> u32 {{ return w_word_{f}(base, blk, i); }}\n\
                         fn w_scales(base: u32, blk: u32) -> vec3<f32> {{ return w_scales_{f}(base, blk); }}\n",
                        source::GEMV_DOT4
                    ) + &xq_words(),
                    None => format!(
                        "{s}\nfn row_dot(base: u32, r: u32, t: u32) -> f32 {{ return row_partial(base, r, t); }}\n"
                    ),
                }
            }
            Module::Rows(ty) => with_dq(ty, source::ROWS),
            Module::Activations => format!("{}{}", xq_words(), source::Q8_ACT),
            Module::Elementwise => source::ELEMENTWISE.to_owned(),
            Module::Norm => source::NORM.to_owned(),
            Module::Rope => source::ROPE.to_owned(),
            Module::Attention(KvType::F32) => format!(
                "alias Kv = f32;\nconst KV_PER_WORD: u32 = 1u;\n\
                 fn kv_get(word: Kv, i: u32) -> f32 {{ return word; }}\n{}",
                source::ATTENTION
            ),
            Module::Attention(KvType::F16) => format!(
                "alias Kv = u32;\nconst KV_PER_WORD: u32 = 2u;\n\
                 fn kv_get(word: Kv, i: u32) -> f32 {{ return unpack2x16float(word)[i % 2u]; }}\n{}",
                source::ATTENTION
            ),
            Module::KvStore => source::KV_STORE.to_owned(),
        }
    }
}

/// A module's WGSL and the optional device features it needs, for the shader validation test.
#[doc(hidden)]
pub struct ShaderSource {
    pub name: String,
    pub wgsl: String,
    pub subgroups: bool,
    pub f16: bool,
}

/// Every module the backend can build, for the shader validation test.
#[doc(hidden)]
pub fn all_shader_sources() -> Vec<ShaderSource> {
    let mut modules = vec![
        Module::Elementwise,
        Module::Norm,
        Module::Rope,
        Module::Attention(KvType::F32),
        Module::Attention(KvType::F16),
        Module::KvStore,
        Module::Activations,
    ];
    for id in 0..64 {
        if let Some(ty) = GgmlType::from_id(id).filter(|&t| weight::block_bytes(t).is_some()) {
            for subgroups in [false, true] {
                for f16 in [false, true] {
                    modules.push(Module::Matmul {
                        ty,
                        subgroups,
                        dot4: false,
                        f16,
                    });
                    if weight::shader_fn_dot4(ty).is_some() {
                        modules.push(Module::Matmul {
                            ty,
                            subgroups,
                            dot4: true,
                            f16,
                        });
                    }
                }
            }
            modules.push(Module::Rows(ty));
        }
    }
    modules
        .into_iter()
        .map(|m| {
            let (subgroups, f16) = match m {
                Module::Matmul { subgroups, f16, .. } => (subgroups, f16),
                _ => (false, false),
            };
            ShaderSource {
                name: format!("{m:?}"),
                wgsl: m.source(),
                subgroups,
                f16,
            }
        })
        .collect()
}

/// What a rotary table depends on: start, rows, n_rot, base and frequency scale (as bits).
type RopeKey = (usize, usize, usize, u32, u32);

/// Which activations were quantized: their buffer, rows and columns.
type ActivationKey = (wgpu::Buffer, usize, usize);

/// The GPU backend. Not `Sync`: ops record into one pending encoder; use it from one thread.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterSummary,
    downlevel: bool,
    /// The device has subgroups (requested when the adapter offers them, unless downlevel).
    subgroups: bool,
    /// The kernels for Q4_0, Q8_0, Q4_K and Q6_K take 8-bit activations and packed 4×8-bit
    /// integer dot products (where WGSL has them, unless downlevel or f32 only).
    integer_dot: bool,
    /// Batches stage and multiply their tiles in f16 (the device has `shader-f16`, not
    /// downlevel or f32 only), for weights other than F32 and BF16.
    f16: bool,
    /// The largest weight part, in bytes (the binding limit, or less where asked).
    max_part: u64,
    /// The adapter's largest storage binding.
    max_binding: u64,
    max_buffer: u64,
    pipelines: RefCell<HashMap<(Module, &'static str), wgpu::ComputePipeline>>,
    encoder: RefCell<Option<wgpu::CommandEncoder>>,
    /// The first error wgpu reported (validation, out of memory, device lost), if any.
    error: Arc<Mutex<Option<String>>>,
    stats: Cell<GpuStats>,
    /// The rotary angles of the last `rope` call, for the next with the same positions.
    rope_table: RefCell<Option<(RopeKey, wgpu::Buffer)>>,
    /// The last activations quantized for the integer kernels (their buffer and shape) and
    /// the 8-bit blocks: the q, k and v projections (gate and up) of a decode step share one
    /// input. Forgotten by every op that writes a tensor in place.
    quantized: RefCell<Option<(ActivationKey, wgpu::Buffer)>>,
}

impl GpuBackend {
    /// Opens an adapter; an error (one line) when there is none to take.
    pub fn new(options: &GpuOptions) -> Result<GpuBackend, BackendError> {
        let device_error = |message: String| BackendError::Device {
            backend: NAME,
            message,
        };
        let instance = instance();
        let integer_dot = !options.downlevel
            && !options.f32_only
            && instance
                .wgsl_language_features()
                .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct);
        let found = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let adapter = match options.adapter {
            AdapterChoice::Index(i) => found.into_iter().nth(i).ok_or_else(|| {
                device_error(format!("no adapter {i} (`llava devices` lists them)"))
            })?,
            choice => {
                let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
                    wgpu::DeviceType::DiscreteGpu => 0,
                    wgpu::DeviceType::IntegratedGpu => 1,
                    wgpu::DeviceType::VirtualGpu | wgpu::DeviceType::Other => 2,
                    wgpu::DeviceType::Cpu => 3,
                };
                found
                    .into_iter()
                    .filter(|a| choice == AdapterChoice::Any || rank(a) < 3)
                    .min_by_key(rank)
                    .ok_or_else(|| {
                        device_error(if choice == AdapterChoice::Any {
                            "no GPU adapter (no Vulkan, Metal or DX12 driver found)".into()
                        } else {
                            "no hardware GPU adapter (software rasterisers are not used; \
                             `llava devices` lists what there is)"
                                .into()
                        })
                    })?
            }
        };
        let summary = summary(&adapter);
        let required_limits = if options.downlevel {
            wgpu::Limits::downlevel_defaults()
        } else {
            adapter.limits()
        };
        let subgroups = !options.downlevel && adapter.features().contains(wgpu::Features::SUBGROUP);
        let f16 = !options.downlevel
            && !options.f32_only
            && adapter.features().contains(wgpu::Features::SHADER_F16);
        let mut required_features = wgpu::Features::empty();
        required_features.set(wgpu::Features::SUBGROUP, subgroups);
        required_features.set(wgpu::Features::SHADER_F16, f16);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("llava"),
            required_features,
            required_limits: required_limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| device_error(format!("{}: {e}", summary.name)))?;
        let error = Arc::new(Mutex::new(None::<String>));
        {
            let slot = Arc::clone(&error);
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| one_line(&e.to_string()));
            }));
            let slot = Arc::clone(&error);
            device.set_device_lost_callback(move |_, message| {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| format!("the device was lost: {}", one_line(&message)));
            });
        }
        let limits = device.limits();
        // Metal reports its largest buffer (many GiB on Apple silicon) as the binding limit,
        // but the shaders index words with u32 and naga's bounds checks take sizes as u32:
        // bindings stay below 4 GiB.
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(u64::from(u32::MAX) & !3);
        let max_part = max_binding.min(options.max_binding.unwrap_or(u64::MAX));
        Ok(GpuBackend {
            device,
            queue,
            adapter: summary,
            downlevel: options.downlevel,
            subgroups,
            integer_dot,
            f16,
            max_part,
            max_binding,
            max_buffer: limits.max_buffer_size,
            pipelines: RefCell::default(),
            encoder: RefCell::default(),
            error,
            stats: Cell::default(),
            rope_table: RefCell::default(),
            quantized: RefCell::default(),
        })
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// Whether the device was opened with downlevel limits.
    pub fn downlevel(&self) -> bool {
        self.downlevel
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> DeviceLimits {
        let l = self.device.limits();
        DeviceLimits {
            max_storage_binding: l.max_storage_buffer_binding_size,
            max_buffer: l.max_buffer_size,
            max_workgroup_storage: l.max_compute_workgroup_storage_size,
            max_invocations: l.max_compute_invocations_per_workgroup,
        }
    }

    /// Whether the kernels use subgroup operations.
    pub fn subgroups(&self) -> bool {
        self.subgroups
    }

    /// Whether packed 4×8-bit integer dot products are used (for the types that have such
    /// kernels: [`GpuBackend::uses_integer_dot`]).
    pub fn integer_dot(&self) -> bool {
        self.integer_dot
    }

    /// Whether a matmul with a weight of this type takes the integer kernels (decode's and
    /// batches').
    pub fn uses_integer_dot(&self, ty: GgmlType) -> bool {
        self.integer_dot && weight::shader_fn_dot4(ty).is_some()
    }

    /// Whether batches are multiplied in f16 tiles (for the types [`uses_f16_tiles`] names).
    ///
    /// [`uses_f16_tiles`]: GpuBackend::uses_f16_tiles
    pub fn f16(&self) -> bool {
        self.f16
    }

    /// Whether a matmul of many rows with a weight of this type takes the f16 tiles: F16 and
    /// the quantized types without integer kernels (or all of them without integer dots).
    pub fn uses_f16_tiles(&self, ty: GgmlType) -> bool {
        self.f16 && !matches!(ty, GgmlType::F32 | GgmlType::BF16) && !self.uses_integer_dot(ty)
    }

    /// The activations as the integer kernels see them: `x` quantized to 8-bit blocks of 32
    /// (the layout in shaders/q8_act.wgsl), read back. For tests.
    #[doc(hidden)]
    pub fn quantized_activations(&self, x: &GpuTensor) -> Result<Vec<u32>, BackendError> {
        let words = self.quantize_q8(x);
        let n = x.rows * x.cols / 32 * Q8_WORDS;
        let values = self.download(&GpuTensor {
            buf: words,
            rows: 1,
            cols: n,
        })?;
        Ok(values.into_iter().map(f32::to_bits).collect())
    }

    /// Records the quantization of `x` (columns a multiple of 32) to 8-bit blocks for the
    /// integer kernels; the buffer it fills.
    fn quantize_q8(&self, x: &GpuTensor) -> wgpu::Buffer {
        debug_assert_eq!(x.cols % 32, 0);
        let blocks = x.rows * x.cols / 32;
        self.activation_pass(x, "quantize_q8", blocks * Q8_WORDS, blocks.div_ceil(64))
    }

    /// Records `entry` of q8_act.wgsl over `x` with `workgroups` workgroups, into a new
    /// buffer of `words` words; the buffer.
    fn activation_pass(
        &self,
        x: &GpuTensor,
        entry: &'static str,
        words: usize,
        workgroups: usize,
    ) -> wgpu::Buffer {
        let buf = self.storage(words);
        let (groups, gx) = Self::grid(workgroups);
        self.dispatch(
            Module::Activations,
            entry,
            &[x.rows as u32, x.cols as u32, x.cols as u32, gx],
            &[(1, &x.buf), (2, &buf)],
            groups,
        );
        buf
    }

    /// The first `rows` positions of `layer`'s keys and values as the cache holds them, as
    /// f32 (an f16 cache's values widened exactly). For tests: WGSL leaves the rounding of
    /// `pack2x16float` to the implementation (either neighbour), so a test checks what was
    /// stored rather than assuming round-to-nearest.
    #[doc(hidden)]
    pub fn kv_cache_rows(
        &self,
        cache: &GpuKvCache,
        layer: usize,
        rows: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), BackendError> {
        assert!(
            rows <= cache.n_ctx,
            "{rows} rows of a cache of {}",
            cache.n_ctx
        );
        let n = rows * cache.stride;
        let words = match cache.kv_type {
            KvType::F32 => n,
            KvType::F16 => n / 2,
        };
        let read = |buf: &wgpu::Buffer| -> Result<Vec<f32>, BackendError> {
            let copy = self.storage(words);
            self.with_encoder(|e| e.copy_buffer_to_buffer(buf, 0, &copy, 0, (words * 4) as u64));
            let values = self.download(&GpuTensor {
                buf: copy,
                rows: 1,
                cols: words,
            })?;
            Ok(match cache.kv_type {
                KvType::F32 => values,
                KvType::F16 => values
                    .iter()
                    .flat_map(|w| {
                        let w = w.to_bits();
                        [w as u16, (w >> 16) as u16].map(|h| half::f16::from_bits(h).to_f32())
                    })
                    .collect(),
            })
        };
        let (k, v) = &cache.layers[layer];
        Ok((read(k)?, read(v)?))
    }

    /// Work recorded and submitted so far.
    pub fn stats(&self) -> GpuStats {
        self.stats.get()
    }

    fn fail(&self, message: String) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(message);
    }

    fn take_error(&self) -> Result<(), BackendError> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(message) => Err(BackendError::Device {
                backend: NAME,
                message,
            }),
            None => Ok(()),
        }
    }

    /// Records the error of a tensor of `size` bytes too large to bind whole (the kernels
    /// bind activations whole; only weights are split): whether it is.
    fn too_large(&self, size: u64) -> bool {
        let over = size > self.max_binding;
        if over {
            self.fail(format!(
                "a tensor of {} MiB exceeds the adapter's largest storage binding, {} MiB",
                size.div_ceil(1 << 20),
                self.max_binding >> 20
            ));
        }
        over
    }

    /// A storage buffer for `len` f32 values (at least one word: bindings cannot be empty).
    /// One too large to bind is an error at the next download (and the buffer a stand-in).
    fn storage(&self, len: usize) -> wgpu::Buffer {
        let size = (len.max(1) * 4) as u64;
        let size = if self.too_large(size) { 4 } else { size };
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn tensor(&self, rows: usize, cols: usize) -> GpuTensor {
        GpuTensor {
            buf: self.storage(rows * cols),
            rows,
            cols,
        }
    }

    fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut slot = self.encoder.borrow_mut();
        let encoder = slot.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        f(encoder)
    }

    /// Submits what was recorded (one submission; none if nothing was).
    fn flush(&self) {
        if let Some(encoder) = self.encoder.borrow_mut().take() {
            self.queue.submit([encoder.finish()]);
            let mut s = self.stats.get();
            s.submissions += 1;
            self.stats.set(s);
        }
    }

    fn pipeline(&self, module: Module, entry: &'static str) -> wgpu::ComputePipeline {
        if let Some(p) = self.pipelines.borrow().get(&(module, entry)) {
            return p.clone();
        }
        let shader = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(entry),
                source: wgpu::ShaderSource::Wgsl(Cow::Owned(module.source())),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &shader,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        self.pipelines
            .borrow_mut()
            .insert((module, entry), pipeline.clone());
        pipeline
    }

    /// Records one dispatch: `params` (u32 words, f32 as bits) at binding 0, `buffers` at
    /// theirs, `groups` workgroups (x, y).
    fn dispatch(
        &self,
        module: Module,
        entry: &'static str,
        params: &[u32],
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
    ) {
        if groups.0 == 0 || groups.1 == 0 {
            return;
        }
        let pipeline = self.pipeline(module, entry);
        let mut words = params.to_vec();
        words.resize(params.len().next_multiple_of(4), 0);
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(buffers.iter().map(|(b, buf)| wgpu::BindGroupEntry {
            binding: *b,
            resource: buf.as_entire_binding(),
        }));
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.with_encoder(|encoder| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, 1);
        });
        let mut s = self.stats.get();
        s.dispatches += 1;
        self.stats.set(s);
    }

    /// `n` workgroups as a grid within the 65535-per-dimension limit: (x, y), and x for the
    /// shader to unfold the index with.
    fn grid(n: usize) -> ((u32, u32), u32) {
        const MAX: usize = 65535;
        let x = n.clamp(1, MAX);
        let y = n.div_ceil(x);
        ((x as u32, y as u32), x as u32)
    }

    /// An element-wise op over `len` values, 256 per workgroup, in place on `x`.
    fn elementwise(
        &self,
        entry: &'static str,
        x: &GpuTensor,
        y: Option<&wgpu::Buffer>,
        cols: usize,
    ) {
        // `x` changes: its 8-bit blocks, if any, are stale.
        self.quantized.take();
        let len = x.rows * x.cols;
        let (groups, gx) = Self::grid(len.div_ceil(256));
        let mut buffers = vec![(1, &x.buf)];
        if let Some(y) = y {
            buffers.push((2, y));
        }
        self.dispatch(
            Module::Elementwise,
            entry,
            &[len as u32, cols as u32, gx],
            &buffers,
            groups,
        );
    }

    fn vector<'w>(&self, w: &'w GpuWeight, len: usize, what: &str) -> Option<&'w wgpu::Buffer> {
        if w.ty != GgmlType::F32 || w.n_rows != 1 || w.row_len != len {
            self.fail(format!(
                "{what}: a vector of {len} was needed, the weight is {} × {} {}",
                w.n_rows, w.row_len, w.ty
            ));
            return None;
        }
        Some(&w.parts[0].buf)
    }

    /// Uploads tensor `index` of `file`: `shape` in ggml order (its own, or a reshape of it),
    /// `data` its bytes, viewed as rows of `row_len`. Each part's pages of the memory map are
    /// dropped once uploaded: on a GPU that shares the host's memory (a Pi, a Mac, an iGPU)
    /// the file's pages and the GPU's copy would otherwise both stay resident.
    fn upload_weight(
        &self,
        (file, index): (&GgufFile, usize),
        ty: GgmlType,
        shape: &[u64],
        data: &[u8],
        row_len: usize,
        name: &str,
    ) -> Result<GpuWeight, BackendError> {
        let path = file.path();
        let unsupported = || BackendError::UnsupportedType {
            path: path.to_owned(),
            name: name.to_owned(),
            ty,
        };
        let n: u64 = shape.iter().product();
        let n_rows = (n / row_len as u64) as usize;
        if shape.len() <= 1 && ty != GgmlType::F32 {
            // A vector (norm gain, bias): f32 on the GPU, whatever it is stored as.
            let mut values = vec![0f32; n as usize];
            quant::dequantize_row(ty, data, &mut values).map_err(|_| unsupported())?;
            return Ok(self.f32_weight(&values, n as usize, 1));
        }
        if weight::block_bytes(ty).is_none() || !row_len.is_multiple_of(ty.block_size()) {
            return Err(unsupported());
        }
        let row_words = weight::row_words(ty, row_len);
        let row_bytes = ty.row_bytes(row_len as u64).expect("whole blocks") as usize;
        let rows_per_part = ((self.max_part / (row_words as u64 * 4)) as usize).max(1);
        let mut parts = Vec::new();
        for first_row in (0..n_rows).step_by(rows_per_part) {
            let rows = rows_per_part.min(n_rows - first_row);
            let size = (rows * row_words * 4) as u64;
            if size > self.max_buffer {
                return Err(BackendError::Device {
                    backend: NAME,
                    message: format!(
                        "{}: tensor {name:?}: one row of {} bytes exceeds the adapter's largest buffer",
                        path.display(),
                        row_words * 4
                    ),
                });
            }
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(name),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: true,
            });
            {
                let mut view =
                    buf.slice(..)
                        .get_mapped_range_mut()
                        .map_err(|e| BackendError::Device {
                            backend: NAME,
                            message: format!("{name}: {e}"),
                        })?;
                // Re-laid a few MiB at a time (mapped memory is write-only).
                let step = ((4 << 20) / (row_words * 4)).max(1);
                let mut scratch = Vec::new();
                for r in (0..rows).step_by(step) {
                    let n = step.min(rows - r);
                    let from = (first_row + r) * row_bytes;
                    scratch.resize(n * row_words * 4, 0);
                    weight::relayout(ty, row_len, &data[from..from + n * row_bytes], &mut scratch);
                    let at = r * row_words * 4;
                    view.slice(at..at + scratch.len()).copy_from_slice(&scratch);
                }
            }
            buf.unmap();
            file.release_tensor_pages(index, first_row * row_bytes..(first_row + rows) * row_bytes);
            parts.push(Part {
                buf,
                first_row,
                rows,
            });
            // Let the driver take this part before the next is written: the host never holds
            // more than one part beside the memory map.
            self.queue.submit([]);
            let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        }
        self.take_error()?;
        Ok(GpuWeight {
            ty,
            row_len,
            n_rows,
            row_words,
            parts,
        })
    }

    fn f32_weight(&self, values: &[f32], row_len: usize, n_rows: usize) -> GpuWeight {
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(if values.is_empty() { &[0f32] } else { values }),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        GpuWeight {
            ty: GgmlType::F32,
            row_len,
            n_rows,
            row_words: row_len,
            parts: vec![Part {
                buf,
                first_row: 0,
                rows: n_rows,
            }],
        }
    }

    fn rope_table(&self, start: usize, rows: usize, rope: Rope) -> wgpu::Buffer {
        let key = (
            start,
            rows,
            rope.n_rot,
            rope.base.to_bits(),
            rope.freq_scale.to_bits(),
        );
        if let Some((k, buf)) = &*self.rope_table.borrow() {
            if *k == key {
                return buf.clone();
            }
        }
        // As the CPU backend computes them: base^(-2i/n_rot) in f32, angles in f32.
        let inv_freq: Vec<f32> = (0..rope.n_rot / 2)
            .map(|i| 1.0 / rope.base.powf((2 * i) as f32 / rope.n_rot as f32))
            .collect();
        let mut table = Vec::with_capacity(rows * rope.n_rot);
        for r in 0..rows {
            let p = (start + r) as f32 * rope.freq_scale;
            for &f in &inv_freq {
                let (sin, cos) = (p * f).sin_cos();
                table.extend([cos, sin]);
            }
        }
        if table.is_empty() {
            table.push(0.0);
        }
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("rope"),
                contents: bytemuck::cast_slice(&table),
                usage: wgpu::BufferUsages::STORAGE,
            });
        *self.rope_table.borrow_mut() = Some((key, buf.clone()));
        buf
    }

    fn ids(&self, ids: &[u32]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(if ids.is_empty() { &[0u32] } else { ids }),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &GpuTensor,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        kv_type: KvType,
        n_kv: usize,
        start: usize,
        causal: bool,
        heads: Heads,
    ) -> GpuTensor {
        let Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        } = heads;
        let out = self.tensor(q.rows, n_heads * head_dim);
        if head_dim > 256 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            self.fail(format!(
                "attention: {n_heads} heads over {n_kv_heads} KV heads of {head_dim} (at most 256)"
            ));
            return out;
        }
        let (groups, gx) = Self::grid(q.rows * n_heads);
        let scale = 1.0 / (head_dim as f32).sqrt();
        self.dispatch(
            Module::Attention(kv_type),
            "attend",
            &[
                q.rows as u32,
                n_heads as u32,
                (n_heads / n_kv_heads) as u32,
                head_dim as u32,
                n_kv as u32,
                start as u32,
                causal as u32,
                q.cols as u32,
                (n_kv_heads * head_dim) as u32,
                out.cols as u32,
                scale.to_bits(),
                gx,
            ],
            &[(1, &q.buf), (2, k), (3, v), (4, &out.buf)],
            groups,
        );
        out
    }

    /// Copies rows of `x` into the cache buffer `dst` at position `start`.
    fn store(&self, cache: &GpuKvCache, x: &GpuTensor, dst: &wgpu::Buffer, start: usize) {
        let n = x.rows * x.cols;
        match cache.kv_type {
            KvType::F32 => self.with_encoder(|e| {
                e.copy_buffer_to_buffer(
                    &x.buf,
                    0,
                    dst,
                    (start * cache.stride * 4) as u64,
                    (n * 4) as u64,
                )
            }),
            KvType::F16 => {
                let words = n / 2;
                let (groups, gx) = Self::grid(words.div_ceil(256));
                self.dispatch(
                    Module::KvStore,
                    "store_f16",
                    &[words as u32, (start * cache.stride / 2) as u32, gx],
                    &[(1, &x.buf), (2, dst)],
                    groups,
                );
            }
        }
    }
}

/// A multi-line wgpu error message as one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Backend for GpuBackend {
    type Tensor = GpuTensor;
    type Weight = GpuWeight;
    type KvCache = GpuKvCache;

    fn name(&self) -> &'static str {
        NAME
    }

    fn load_weight(&self, file: &Arc<GgufFile>, name: &str) -> Result<GpuWeight, BackendError> {
        let (index, t) = super::find_tensor(file, name)?;
        let row_len = t.shape().first().copied().unwrap_or(1) as usize;
        self.upload_weight(
            (file, index),
            t.ggml_type(),
            t.shape(),
            t.data,
            row_len.max(1),
            name,
        )
    }

    fn load_matrix(
        &self,
        file: &Arc<GgufFile>,
        name: &str,
        row_len: usize,
    ) -> Result<GpuWeight, BackendError> {
        let (index, t) = super::find_tensor(file, name)?;
        let shape = super::matrix_shape(file, name, t.shape(), row_len)?;
        self.upload_weight((file, index), t.ggml_type(), &shape, t.data, row_len, name)
    }

    fn upload(&self, data: Vec<f32>, rows: usize, cols: usize) -> GpuTensor {
        assert_eq!(data.len(), rows * cols, "upload of {rows} × {cols}");
        if self.too_large((data.len() * 4) as u64) {
            return GpuTensor {
                buf: self.storage(0),
                rows,
                cols,
            };
        }
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(if data.is_empty() { &[0f32] } else { &data }),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            });
        GpuTensor { buf, rows, cols }
    }

    fn download(&self, t: &GpuTensor) -> Result<Vec<f32>, BackendError> {
        // An error found while recording (a tensor too large to bind) needs no submission; the
        // work recorded since is dropped, so a backend that failed does not pile up more.
        if let Err(e) = self.take_error() {
            self.encoder.borrow_mut().take();
            return Err(e);
        }
        let size = (t.rows * t.cols * 4) as u64;
        if size == 0 {
            self.flush();
            return self.take_error().map(|()| Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|e| e.copy_buffer_to_buffer(&t.buf, 0, &staging, 0, size));
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            self.fail(one_line(&e.to_string()));
        }
        self.take_error()?;
        let mapped = rx.recv().ok().and_then(Result::ok);
        let data = match mapped.map(|()| staging.slice(..).get_mapped_range()) {
            Some(Ok(view)) => bytemuck::cast_slice::<u8, f32>(&view).to_vec(),
            _ => {
                self.fail("reading a tensor back failed".into());
                return self.take_error().map(|()| Vec::new());
            }
        };
        staging.unmap();
        let mut s = self.stats.get();
        s.readbacks += 1;
        self.stats.set(s);
        Ok(data)
    }

    fn shape(&self, t: &GpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn slice_rows(&self, x: &GpuTensor, start: usize, len: usize) -> GpuTensor {
        assert!(start + len <= x.rows, "row slice out of range");
        let out = self.tensor(len, x.cols);
        if len * x.cols > 0 {
            self.with_encoder(|e| {
                e.copy_buffer_to_buffer(
                    &x.buf,
                    (start * x.cols * 4) as u64,
                    &out.buf,
                    0,
                    (len * x.cols * 4) as u64,
                )
            });
        }
        out
    }

    fn concat_rows(&self, parts: &[&GpuTensor]) -> GpuTensor {
        let cols = parts.first().map_or(0, |p| p.cols);
        assert!(
            parts.iter().all(|p| p.cols == cols),
            "concat of different widths"
        );
        let out = self.tensor(parts.iter().map(|p| p.rows).sum(), cols);
        let mut at = 0u64;
        self.with_encoder(|e| {
            for p in parts {
                let size = (p.rows * cols * 4) as u64;
                if size > 0 {
                    e.copy_buffer_to_buffer(&p.buf, 0, &out.buf, at, size);
                }
                at += size;
            }
        });
        out
    }

    fn gather_rows(&self, x: &GpuTensor, rows: &[u32]) -> GpuTensor {
        for &r in rows {
            assert!((r as usize) < x.rows, "row {r} of a {}-row tensor", x.rows);
        }
        let out = self.tensor(rows.len(), x.cols);
        let ids = self.ids(rows);
        let (groups, gx) = Self::grid((rows.len() * x.cols).div_ceil(256));
        self.dispatch(
            Module::Rows(GgmlType::F32),
            "gather_rows",
            &[rows.len() as u32, x.cols as u32, 0, 0, 0, gx],
            &[(2, &ids), (3, &out.buf), (4, &x.buf)],
            groups,
        );
        out
    }

    fn get_rows(&self, table: &GpuWeight, ids: &[u32]) -> GpuTensor {
        for &id in ids {
            assert!(
                (id as usize) < table.n_rows,
                "token id {id} outside the table"
            );
        }
        let out = self.tensor(ids.len(), table.row_len);
        let id_buf = self.ids(ids);
        let (groups, gx) = Self::grid((ids.len() * table.row_len).div_ceil(256));
        for part in &table.parts {
            self.dispatch(
                Module::Rows(table.ty),
                "get_rows",
                &[
                    ids.len() as u32,
                    table.row_len as u32,
                    table.row_words as u32,
                    part.first_row as u32,
                    part.rows as u32,
                    gx,
                ],
                &[(1, &part.buf), (2, &id_buf), (3, &out.buf)],
                groups,
            );
        }
        out
    }

    fn matmul(&self, x: &GpuTensor, w: &GpuWeight) -> GpuTensor {
        assert_eq!(x.cols, w.row_len, "matmul: x has {} columns", x.cols);
        let out = self.tensor(x.rows, w.n_rows);
        let gemv = x.rows <= 4;
        // The integer kernels' types have blocks of 32 or 256: whole blocks of activations.
        let quantized = self.uses_integer_dot(w.ty).then(|| {
            let key = (x.buf.clone(), x.rows, x.cols);
            let mut last = self.quantized.borrow_mut();
            match &*last {
                Some((k, xq)) if *k == key => xq.clone(),
                _ => last.insert((key, self.quantize_q8(x))).1.clone(),
            }
        });
        let input = match &quantized {
            Some(xq) => (4, xq),
            None => (2, &x.buf),
        };
        // The f16 tiles divide each row of x by its largest |value| first.
        let scales = (!gemv && self.uses_f16_tiles(w.ty))
            .then(|| self.activation_pass(x, "row_absmax", x.rows, x.rows));
        let module = Module::Matmul {
            ty: w.ty,
            subgroups: self.subgroups,
            dot4: quantized.is_some(),
            f16: scales.is_some(),
        };
        let mut buffers = vec![input, (3, &out.buf)];
        if let Some(scales) = &scales {
            buffers.push((5, scales));
        }
        for part in &w.parts {
            let (groups, gx) = if gemv {
                Self::grid(part.rows)
            } else {
                (
                    (part.rows.div_ceil(16) as u32, x.rows.div_ceil(16) as u32),
                    0,
                )
            };
            self.dispatch(
                module,
                match (gemv, self.subgroups) {
                    (true, true) => "gemv_subgroup",
                    (true, false) => "gemv",
                    (false, _) if quantized.is_some() => "tiled_dot4",
                    (false, _) if scales.is_some() => "tiled_f16",
                    (false, _) => "tiled",
                },
                &[
                    x.rows as u32,
                    part.rows as u32,
                    w.row_len as u32,
                    w.row_words as u32,
                    x.cols as u32,
                    out.cols as u32,
                    part.first_row as u32,
                    gx,
                ],
                &[&[(1, &part.buf)], &buffers[..]].concat(),
                groups,
            );
        }
        out
    }

    fn add(&self, a: GpuTensor, b: &GpuTensor) -> GpuTensor {
        assert_eq!(
            (a.rows, a.cols),
            (b.rows, b.cols),
            "add of different shapes"
        );
        self.elementwise("add", &a, Some(&b.buf), a.cols);
        a
    }

    fn add_bias(&self, x: GpuTensor, bias: &GpuWeight) -> GpuTensor {
        if let Some(b) = self.vector(bias, x.cols, "bias") {
            self.elementwise("add_bias", &x, Some(b), x.cols);
        }
        x
    }

    fn rms_norm(&self, x: &GpuTensor, weight: &GpuWeight, eps: f32) -> GpuTensor {
        let out = self.tensor(x.rows, x.cols);
        if let Some(g) = self.vector(weight, x.cols, "norm") {
            let (groups, gx) = Self::grid(x.rows);
            self.dispatch(
                Module::Norm,
                "rms_norm",
                &[x.cols as u32, eps.to_bits(), gx, x.rows as u32],
                &[(1, &x.buf), (2, g), (4, &out.buf)],
                groups,
            );
        }
        out
    }

    fn layer_norm(
        &self,
        x: &GpuTensor,
        weight: &GpuWeight,
        bias: &GpuWeight,
        eps: f32,
    ) -> GpuTensor {
        let out = self.tensor(x.rows, x.cols);
        let (g, b) = (
            self.vector(weight, x.cols, "norm"),
            self.vector(bias, x.cols, "norm bias"),
        );
        if let (Some(g), Some(b)) = (g, b) {
            let (groups, gx) = Self::grid(x.rows);
            self.dispatch(
                Module::Norm,
                "layer_norm",
                &[x.cols as u32, eps.to_bits(), gx, x.rows as u32],
                &[(1, &x.buf), (2, g), (3, b), (4, &out.buf)],
                groups,
            );
        }
        out
    }

    fn rope(&self, x: &GpuTensor, start: usize, n_heads: usize, rope: Rope) -> GpuTensor {
        let head_dim = x.cols / n_heads;
        assert!(
            rope.n_rot <= head_dim && rope.n_rot.is_multiple_of(2),
            "rope dimensions"
        );
        let out = self.slice_rows(x, 0, x.rows);
        let table = self.rope_table(start, x.rows, rope);
        let half = rope.n_rot / 2;
        let (groups, gx) = Self::grid((x.rows * n_heads * half).div_ceil(256));
        self.dispatch(
            Module::Rope,
            "rope",
            &[
                x.rows as u32,
                x.cols as u32,
                head_dim as u32,
                half as u32,
                n_heads as u32,
                gx,
            ],
            &[(1, &out.buf), (2, &table)],
            groups,
        );
        out
    }

    fn silu_mul(&self, gate: GpuTensor, up: &GpuTensor) -> GpuTensor {
        assert_eq!(
            (gate.rows, gate.cols),
            (up.rows, up.cols),
            "silu_mul shapes"
        );
        self.elementwise("silu_mul", &gate, Some(&up.buf), gate.cols);
        gate
    }

    fn gelu(&self, x: GpuTensor) -> GpuTensor {
        self.elementwise("gelu", &x, None, x.cols);
        x
    }

    fn quick_gelu(&self, x: GpuTensor) -> GpuTensor {
        self.elementwise("quick_gelu", &x, None, x.cols);
        x
    }

    fn new_kv_cache(
        &self,
        n_layers: usize,
        n_ctx: usize,
        n_kv_heads: usize,
        head_dim: usize,
        kv_type: KvType,
    ) -> Result<GpuKvCache, BackendError> {
        let stride = n_kv_heads * head_dim;
        let bytes_per = match kv_type {
            KvType::F32 => 4,
            KvType::F16 => 2,
        };
        let size = (n_ctx * stride * bytes_per) as u64;
        let error = |message: String| BackendError::Device {
            backend: NAME,
            message,
        };
        if kv_type == KvType::F16 && !stride.is_multiple_of(2) {
            return Err(error(format!(
                "an f16 KV cache needs an even row ({stride} values); use --kv-type f32"
            )));
        }
        if size > self.max_binding {
            return Err(error(format!(
                "one layer's KV cache, {} MiB, exceeds the adapter's binding limit of {} MiB; use a smaller --ctx",
                size >> 20,
                self.max_binding >> 20
            )));
        }
        let buffer = || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kv"),
                size: size.max(4),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let layers = (0..n_layers).map(|_| (buffer(), buffer())).collect();
        self.take_error()?;
        Ok(GpuKvCache {
            kv_type,
            n_ctx,
            stride,
            layers,
        })
    }

    fn attention_cached(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        cache: &mut GpuKvCache,
        layer: usize,
        start: usize,
        heads: Heads,
    ) -> GpuTensor {
        assert!(
            start + q.rows <= cache.n_ctx,
            "KV cache overflow: positions {start}..{} of {}",
            start + q.rows,
            cache.n_ctx
        );
        assert_eq!(k.cols, cache.stride, "KV row width");
        let (kb, vb) = &cache.layers[layer];
        self.store(cache, k, kb, start);
        self.store(cache, v, vb, start);
        self.attend(q, kb, vb, cache.kv_type, start + q.rows, start, true, heads)
    }

    fn attention(&self, q: &GpuTensor, k: &GpuTensor, v: &GpuTensor, heads: Heads) -> GpuTensor {
        self.attend(q, &k.buf, &v.buf, KvType::F32, k.rows, 0, false, heads)
    }
}
