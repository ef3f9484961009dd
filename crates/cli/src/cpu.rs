//! The CPU this binary was compiled for.
//!
//! The workspace builds for x86-64-v3 (`.cargo/config.toml`): the compiler
//! may use AVX2/FMA/BMI anywhere, so on an older CPU the binary would die
//! with SIGILL at some unpredictable point. [`check`] runs first in `main`
//! and turns that into a clear message. It reads CPUID directly: under
//! `target-cpu=x86-64-v3`, `is_x86_feature_detected!` is answered at compile
//! time and would always say yes.

/// The x86-64-v3 features that `missing` looks for, as (name, CPUID leaf,
/// bit). Leaf 1 is read from ECX, leaf 7 (sub-leaf 0) from EBX.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "avx2")),
    allow(dead_code)
)]
const V3_FEATURES: &[(&str, u32, u32)] = &[
    ("fma", 1, 12),
    ("movbe", 1, 22),
    ("avx", 1, 28),
    ("f16c", 1, 29),
    ("bmi1", 7, 3),
    ("avx2", 7, 5),
    ("bmi2", 7, 8),
];

/// The features of [`V3_FEATURES`] absent from CPUID leaf 1 ECX and leaf 7
/// EBX (`leaf7_ebx` is 0 when the CPU has no leaf 7).
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "avx2")),
    allow(dead_code)
)]
fn missing(leaf1_ecx: u32, leaf7_ebx: u32) -> Vec<&'static str> {
    V3_FEATURES
        .iter()
        .filter(|&&(_, leaf, bit)| {
            let reg = if leaf == 1 { leaf1_ecx } else { leaf7_ebx };
            reg & (1 << bit) == 0
        })
        .map(|&(name, _, _)| name)
        .collect()
}

/// Exit with a clear message when this build needs CPU features the
/// machine lacks. A no-op for builds without AVX2 codegen.
#[inline(never)]
pub fn check() {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        let lacking = this_cpu_lacks();
        if !lacking.is_empty() {
            eprintln!(
                "ragfleet: this build targets x86-64-v3 and this CPU lacks {}.\n\
                 Rebuild for it with: RUSTFLAGS=\"-C target-cpu=x86-64\" cargo build --release \
                 (see .cargo/config.toml)",
                lacking.join(", ")
            );
            std::process::exit(1);
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn this_cpu_lacks() -> Vec<&'static str> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let max_leaf = __cpuid(0).eax;
    let leaf1 = __cpuid(1).ecx;
    let leaf7 = if max_leaf >= 7 {
        __cpuid_count(7, 0).ebx
    } else {
        0
    };
    missing(leaf1, leaf7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_bits_set_lacks_nothing_and_each_cleared_bit_is_named() {
        assert!(missing(u32::MAX, u32::MAX).is_empty());
        assert_eq!(missing(u32::MAX, !(1 << 5)), vec!["avx2"]);
        assert_eq!(missing(!(1 << 12), u32::MAX), vec!["fma"]);
        // A pre-Haswell CPU (AVX, no leaf-7 features).
        assert_eq!(missing(u32::MAX, 0), vec!["bmi1", "avx2", "bmi2"]);
    }

    /// The machine the tests run on runs the tests, so it has what the
    /// build targets: the real CPUID read must agree.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn this_cpu_has_what_this_build_needs() {
        assert_eq!(this_cpu_lacks(), Vec::<&str>::new());
    }
}
