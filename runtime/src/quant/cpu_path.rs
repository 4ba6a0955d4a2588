//! The CPU path matmul's kernels come from (scalar or a SIMD level): the running CPU's
//! features, detected once per process, and the `LLAVA_CPU` override. The table from
//! (weight type, path) to kernels is `dispatch.rs`'s, which re-exports all of this.
//!
//! The path is the best the running CPU offers, unless `LLAVA_CPU` names one:
//! - `LLAVA_CPU=scalar` forces the scalar reference kernels;
//! - `LLAVA_CPU=avx2` asks for the AVX2 (+FMA, F16C) kernels, `avx-vnni` for those with the
//!   256-bit `vpdpbusd` of AVX-VNNI in the batch kernels;
//! - `LLAVA_CPU=avx512` asks for the AVX-512 (F, BW, VL) dot products, `avx512-vnni` for those
//!   that use the VNNI `vpdpbusd` instruction (both quantize activations with AVX2);
//! - `LLAVA_CPU=neon` asks for the plain NEON kernels (64-bit ARM), `neon-dotprod` for those
//!   that use the ARMv8.2 `sdot` instruction;
//! - unset, empty or `auto`: the best available.
//!
//! A path the CPU or this build cannot run (`avx2` or `avx512` on a CPU without it, `neon` on x86, a typo)
//! is not an error: one warning goes to stderr and the best available path is used instead.
//! The variable is read by a library, where aborting the process over it would be worse than
//! running correctly but slower; the warning says what happened.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The environment variable that forces a [`CpuPath`].
pub const CPU_PATH_ENV: &str = "LLAVA_CPU";

/// A family of CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuPath {
    /// The scalar reference code, on every CPU.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (Haswell, Zen and later).
    Avx2,
    /// `Avx2` with AVX-VNNI (Alder Lake and later Intel Core, Sierra Forest, Zen 5): the
    /// batch kernels of interleaved Q4_0 and Q8_0 use the VEX-encoded 256-bit `vpdpbusd`.
    /// For CPUs with 256-bit vectors only; where AVX-512 VNNI is present too, `Avx512Vnni` is
    /// the better path. A path of its own for the reason given at `NeonDotprod`.
    AvxVnni,
    /// x86-64 with AVX-512F, BW and VL besides AVX2 (Skylake-SP, Ice Lake, Sapphire Rapids,
    /// Zen 4): 512-bit dot products; the activation quantizers, and every kernel it has no
    /// 512-bit version of, are AVX2's.
    Avx512,
    /// `Avx512` with AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4 and later): the integer dots
    /// of the 32-element formats use `vpdpbusd`. A path of its own for the reason given at
    /// `NeonDotprod`.
    Avx512Vnni,
    /// 64-bit ARM with NEON, which every aarch64 CPU has (Cortex-A53 and later).
    Neon,
    /// 64-bit ARM with NEON and the dot-product extension (ARMv8.2 `sdot`: Cortex-A55, A76,
    /// Neoverse, Apple M1 and later). It differs from `Neon` only in the integer dots.
    ///
    /// A path of its own, rather than `Neon` choosing `sdot` by itself where the CPU has it:
    /// on a dotprod CPU both levels can then be forced, measured against each other and held
    /// to the scalar reference in one run (`tests/simd_kernels.rs` tests every available
    /// path); otherwise the widening kernels would be tested only on pre-ARMv8.2 cores.
    NeonDotprod,
}

impl CpuPath {
    /// Every path: the scalar one, then the x86-64 and the ARM ones, each from the least to the
    /// most capable.
    pub const ALL: [CpuPath; 7] = [
        CpuPath::Scalar,
        CpuPath::Avx2,
        CpuPath::AvxVnni,
        CpuPath::Avx512,
        CpuPath::Avx512Vnni,
        CpuPath::Neon,
        CpuPath::NeonDotprod,
    ];

    /// The name `LLAVA_CPU` accepts.
    pub fn name(self) -> &'static str {
        match self {
            CpuPath::Scalar => "scalar",
            CpuPath::Avx2 => "avx2",
            CpuPath::AvxVnni => "avx-vnni",
            CpuPath::Avx512 => "avx512",
            CpuPath::Avx512Vnni => "avx512-vnni",
            CpuPath::Neon => "neon",
            CpuPath::NeonDotprod => "neon-dotprod",
        }
    }

    /// Whether this build has the path's kernels and the running CPU can execute them.
    pub fn is_available(self) -> bool {
        match self {
            CpuPath::Scalar => true,
            CpuPath::Avx2 => avx2().is_some(),
            CpuPath::AvxVnni => avx_vnni().is_some(),
            CpuPath::Avx512 => avx512(false).is_some(),
            CpuPath::Avx512Vnni => avx512(true).is_some(),
            CpuPath::Neon => neon(false).is_some(),
            CpuPath::NeonDotprod => neon(true).is_some(),
        }
    }

    /// The fastest available path: the widest, with the dot-product instructions where the
    /// CPU has them.
    pub fn best_available() -> CpuPath {
        [
            CpuPath::Avx512Vnni,
            CpuPath::Avx512,
            CpuPath::AvxVnni,
            CpuPath::Avx2,
            CpuPath::NeonDotprod,
            CpuPath::Neon,
        ]
        .into_iter()
        .find(|path| path.is_available())
        .unwrap_or(CpuPath::Scalar)
    }
}

/// The environment variable that makes [`report_skipped_paths`] fail the test for a missing
/// path: a comma-separated list of path names (`avx2`, `neon-dotprod`, …) and, on 64-bit
/// ARM, `i8mm` (the `smmla` kernels of `neon-dotprod`). CI sets it for each CPU it runs on, so
/// that a runner or an emulated CPU without the instructions fails instead of testing less.
pub const REQUIRE_CPU_ENV: &str = "LLAVA_REQUIRE_CPU";

/// Tests only: for each SIMD path of the architecture this was built for that the CPU cannot
/// run, one line "`test`: skipped PATH (not on this CPU)", written to the process's stderr
/// directly. The test harness captures `eprintln!` of passing tests, so without this a green
/// run on an AVX2-only machine reads like one that covered AVX-512.
///
/// Panics if `LLAVA_REQUIRE_CPU` ([`REQUIRE_CPU_ENV`]) names a path this CPU cannot run, or a
/// name it does not know.
#[doc(hidden)]
pub fn report_skipped_paths(test: &str) {
    if let Ok(required) = std::env::var(REQUIRE_CPU_ENV) {
        for name in required.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let available = if name == "i8mm" {
                has_i8mm()
            } else {
                match name.parse::<CpuPath>() {
                    Ok(path) => path.is_available(),
                    Err(e) => panic!("{REQUIRE_CPU_ENV}: {e}"),
                }
            };
            assert!(
                available,
                "{test}: {REQUIRE_CPU_ENV} requires {name}, which this CPU lacks"
            );
        }
    }
    let native: &[CpuPath] = if cfg!(target_arch = "x86_64") {
        &[
            CpuPath::Avx2,
            CpuPath::AvxVnni,
            CpuPath::Avx512,
            CpuPath::Avx512Vnni,
        ]
    } else if cfg!(target_arch = "aarch64") {
        &[CpuPath::Neon, CpuPath::NeonDotprod]
    } else {
        &[]
    };
    let mut stderr = std::io::stderr().lock();
    for path in native.iter().filter(|p| !p.is_available()) {
        let _ = writeln!(stderr, "{test}: skipped {path} (not on this CPU)");
    }
}

/// Whether the CPU has ARM's 8-bit integer matrix multiply (`smmla`) besides `sdot`.
fn has_i8mm() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
            && std::arch::is_aarch64_feature_detected!("i8mm")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

impl fmt::Display for CpuPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A CPU path name that is not one of [`CpuPath::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CPU path {0:?} (known: scalar, avx2, avx-vnni, avx512, avx512-vnni, neon, neon-dotprod)")]
pub struct UnknownCpuPath(pub String);

impl FromStr for CpuPath {
    type Err = UnknownCpuPath;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuPath::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownCpuPath(s.to_owned()))
    }
}

/// Why [`set_cpu_path`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {0} kernels cannot run here (not built for this architecture, or the CPU lacks the instructions)")]
pub struct CpuPathUnavailable(pub CpuPath);

/// Set by [`set_cpu_path`]; `UNSET` until then.
static OVERRIDE: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;
static FROM_ENV: OnceLock<CpuPath> = OnceLock::new();

/// The path matmul's kernels come from: the last [`set_cpu_path`], else `LLAVA_CPU`, else the
/// best available (read once per process).
pub fn cpu_path() -> CpuPath {
    match OVERRIDE.load(Ordering::Relaxed) {
        UNSET => *FROM_ENV.get_or_init(path_from_env),
        i => CpuPath::ALL[usize::from(i)],
    }
}

/// Switches the whole process to `path` (benchmarks comparing paths in one run use this). A
/// matmul already running keeps the kernels it started with.
pub fn set_cpu_path(path: CpuPath) -> Result<(), CpuPathUnavailable> {
    if !path.is_available() {
        return Err(CpuPathUnavailable(path));
    }
    let index = CpuPath::ALL
        .iter()
        .position(|&p| p == path)
        .expect("ALL lists every path");
    OVERRIDE.store(index as u8, Ordering::Relaxed);
    Ok(())
}

fn path_from_env() -> CpuPath {
    let best = CpuPath::best_available();
    let Ok(value) = std::env::var(CPU_PATH_ENV) else {
        return best;
    };
    if value.trim().is_empty() || value.trim().eq_ignore_ascii_case("auto") {
        return best;
    }
    match value.parse::<CpuPath>() {
        Ok(path) if path.is_available() => path,
        Ok(path) => {
            // Best effort: a closed stderr must not panic the process.
            let _ = writeln!(
                std::io::stderr(),
                "warning: {CPU_PATH_ENV}={value}: {}; using {best}",
                CpuPathUnavailable(path)
            );
            best
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "warning: {CPU_PATH_ENV}={value}: {e}; using {best}"
            );
            best
        }
    }
}

/// The AVX2 kernels, if this is an x86-64 build on a CPU that has them.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2() -> Option<super::x86::Avx2> {
    super::x86::Avx2::detect()
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn avx2() -> Option<std::convert::Infallible> {
    None
}

/// The AVX-VNNI kernels, if this is an x86-64 build on a CPU that has AVX2 and AVX-VNNI.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx_vnni() -> Option<super::x86::AvxVnni> {
    super::x86::AvxVnni::detect()
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn avx_vnni() -> Option<std::convert::Infallible> {
    None
}

/// The AVX-512 kernels (those using `vpdpbusd` if `vnni`), if this is an x86-64 build on a CPU
/// that has them.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512(vnni: bool) -> Option<super::x86::Avx512> {
    if vnni {
        super::x86::Avx512::detect_vnni()
    } else {
        super::x86::Avx512::detect()
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn avx512(_vnni: bool) -> Option<std::convert::Infallible> {
    None
}

/// The NEON kernels (those using `sdot` if `dotprod`), if this is a 64-bit ARM build and the
/// CPU has them.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(super) fn neon(dotprod: bool) -> Option<super::arm::Neon> {
    if dotprod {
        super::arm::Neon::detect_dotprod()
    } else {
        super::arm::Neon::detect()
    }
}

#[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
pub(super) fn neon(_dotprod: bool) -> Option<std::convert::Infallible> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_names_parse_back() {
        for path in CpuPath::ALL {
            assert_eq!(path.name().parse::<CpuPath>(), Ok(path));
        }
        assert_eq!(" AVX2 ".parse::<CpuPath>(), Ok(CpuPath::Avx2));
        assert_eq!("AVX512-VNNI".parse::<CpuPath>(), Ok(CpuPath::Avx512Vnni));
        assert_eq!("avx-VNNI".parse::<CpuPath>(), Ok(CpuPath::AvxVnni));
        assert_eq!("Neon-DotProd".parse::<CpuPath>(), Ok(CpuPath::NeonDotprod));
        assert!("sse".parse::<CpuPath>().is_err());
    }

    #[test]
    fn the_unknown_path_error_lists_every_name() {
        let message = "sse".parse::<CpuPath>().unwrap_err().to_string();
        let known: Vec<&str> = CpuPath::ALL.iter().map(|p| p.name()).collect();
        assert!(
            message.ends_with(&format!("(known: {})", known.join(", "))),
            "{message}"
        );
    }

    #[test]
    fn the_best_path_is_the_widest_this_architecture_has() {
        let best = CpuPath::best_available();
        assert!(best.is_available());
        if cfg!(all(target_arch = "aarch64", target_feature = "neon")) {
            assert!(CpuPath::Neon.is_available());
            assert!(
                matches!(best, CpuPath::Neon | CpuPath::NeonDotprod),
                "{best}"
            );
            assert_eq!(
                best == CpuPath::NeonDotprod,
                CpuPath::NeonDotprod.is_available()
            );
        } else {
            assert!(!CpuPath::Neon.is_available() && !CpuPath::NeonDotprod.is_available());
        }
        if cfg!(target_arch = "x86_64") {
            let widest = [
                CpuPath::Avx512Vnni,
                CpuPath::Avx512,
                CpuPath::AvxVnni,
                CpuPath::Avx2,
            ]
            .into_iter()
            .find(|p| p.is_available())
            .unwrap_or(CpuPath::Scalar);
            assert_eq!(best, widest);
        } else {
            for path in [CpuPath::Avx2, CpuPath::Avx512, CpuPath::Avx512Vnni] {
                assert!(!path.is_available(), "{path}");
            }
        }
        // VNNI comes only with the rest of AVX-512.
        assert!(!CpuPath::Avx512Vnni.is_available() || CpuPath::Avx512.is_available());
    }
}
