//! f32 building blocks of the BERT encoder (`bert_encoder.rs`): a safe
//! wrapper around gemm's matrix product, and the element-wise and per-row
//! operations between the matmuls (exp, GELU, softmax, layer norm).
//!
//! The element-wise functions are branch-free straight-line code over
//! slices, written so that LLVM vectorises them with whatever SIMD level the
//! build targets (AVX2/FMA with the workspace's `x86-64-v3`): reductions keep
//! [`LANES`] partial sums, because without fast-math the compiler must not
//! reorder a single running float sum.

/// Independent partial sums in reductions (two AVX2 or one AVX-512 register).
const LANES: usize = 16;

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)`, single-threaded.
///
/// Matrices are given as slices with row and column strides in elements, so
/// that a head's slice of a fused Q/K/V matrix, or a transposed view of it,
/// is passed without copying. `dst` rows are contiguous (`dst_cs` = 1).
/// Panics if a view does not fit its slice: the shapes are computed by the
/// encoder, never taken from input data.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    scale: f32,
) {
    fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    }
    assert!(extent(m, n, dst_rs, 1) <= dst.len(), "matmul: dst view");
    assert!(
        extent(m, k, lhs_rs, lhs_cs) <= lhs.len(),
        "matmul: lhs view"
    );
    assert!(
        extent(k, n, rhs_rs, rhs_cs) <= rhs.len(),
        "matmul: rhs view"
    );
    if m == 0 || n == 0 {
        return;
    }
    // Strides are element offsets within slices that are at most isize::MAX
    // bytes long, so they fit in isize.
    let s = |x: usize| x as isize;
    // SAFETY: the asserts above keep every element gemm reads or writes
    // ((i, j) ↦ i·rs + j·cs for i < rows, j < cols) inside its slice; `dst`
    // is borrowed mutably, so it cannot overlap `lhs` or `rhs`; the product
    // runs on this thread (Parallelism::None) before the borrows end.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(dst_rs),
            accumulate,
            lhs.as_ptr(),
            s(lhs_cs),
            s(lhs_rs),
            rhs.as_ptr(),
            s(rhs_cs),
            s(rhs_rs),
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `a·b + c`, one fused instruction where the build targets FMA (the
/// workspace's x86-64-v3 does); elsewhere a multiply and an add, because
/// `mul_add` without hardware FMA is a slow library call.
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}

/// e^x for x ≤ 87 (larger x are clamped), relative error below 2e-7;
/// about 0 (not denormal) below −87.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // x = n·ln2 + r with |r| ≤ ln2/2, e^x = 2^n · e^r.
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 87.0);
    let t = fma(x, LOG2E, ROUND);
    let n = t - ROUND;
    let r = fma(-n, LN2_LO, fma(-n, LN2_HI, x));
    // Taylor polynomial of e^r to degree 7 (error < 1e-8 on |r| ≤ 0.35).
    let mut p = 1.0 / 5040.0;
    for c in [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = fma(p, r, 1.0 / c);
    }
    // 2^n built from its exponent bits: t's bits are ROUND's bits + n.
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    p * two_n
}

/// 1 + erf(z), computed without cancellation for negative z: erfc(|z|) by
/// Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7).
#[inline(always)]
fn one_plus_erf(z: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_72;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let a = z.abs();
    let t = 1.0 / fma(P, a, 1.0);
    let mut p = A5;
    for c in [A4, A3, A2, A1] {
        p = fma(p, t, c);
    }
    let erfc = t * p * exp(-a * a);
    if z < 0.0 {
        erfc
    } else {
        2.0 - erfc
    }
}

/// GELU with the exact (erf) form, `x·Φ(x)`: BERT's `hidden_act = "gelu"`.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * one_plus_erf(x * std::f32::consts::FRAC_1_SQRT_2)
}

/// GELU, tanh approximation (`"gelu_new"`, candle's `GeluApproximate`).
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * fma(0.044_715 * x * x, x, x);
    // 1 + tanh(u) = 2 − 2/(e^{2u} + 1)
    0.5 * x * (2.0 - 2.0 / (exp(2.0 * u) + 1.0))
}

/// Hidden activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

/// `row[j] = act(row[j] + bias[j])` for every row of `rows` (row length =
/// `bias.len()`).
pub(crate) fn bias_act_rows(rows: &mut [f32], bias: &[f32], act: Activation) {
    fn each(rows: &mut [f32], bias: &[f32], f: impl Fn(f32) -> f32) {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (x, b) in row.iter_mut().zip(bias) {
                *x = f(*x + b);
            }
        }
    }
    match act {
        Activation::GeluErf => each(rows, bias, gelu_erf),
        Activation::GeluTanh => each(rows, bias, gelu_tanh),
        Activation::Relu => each(rows, bias, |x| x.max(0.0)),
    }
}

/// `row[j] += bias[j]` for every row of `rows`.
pub(crate) fn bias_rows(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (x, b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    }
}

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = if *x > *a { *x } else { *a };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// In-place softmax of one row.
pub(crate) fn softmax(row: &mut [f32]) {
    let m = max(row);
    // e^(x − max) and their sum in one pass.
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in chunks.by_ref() {
        for (a, x) in acc.iter_mut().zip(c) {
            *x = exp(*x - m);
            *a += *x;
        }
    }
    let mut total = acc.iter().sum::<f32>();
    for x in chunks.into_remainder() {
        *x = exp(*x - m);
        total += *x;
    }
    let inv = 1.0 / total;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// In-place layer norm of every row of `rows` (row length = `gamma.len()`),
/// after adding `bias` to each row: `y = (x + bias − mean) / √(var + eps) ·
/// gamma + beta`, variance over the row (biased), as PyTorch's LayerNorm.
pub(crate) fn bias_layer_norm_rows(
    rows: &mut [f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let h = gamma.len();
    let inv_h = 1.0 / h as f32;
    for row in rows.chunks_exact_mut(h) {
        if let Some(bias) = bias {
            for (x, b) in row.iter_mut().zip(bias) {
                *x += b;
            }
        }
        let mean = sum(row) * inv_h;
        for x in row.iter_mut() {
            *x -= mean;
        }
        let mut acc = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let rest: f32 = chunks.remainder().iter().map(|x| x * x).sum();
        for c in chunks {
            for (a, x) in acc.iter_mut().zip(c) {
                *a += x * x;
            }
        }
        let var = (acc.iter().sum::<f32>() + rest) * inv_h;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *x = fma(*x * rstd, *g, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
            .collect()
    }

    #[test]
    fn exp_is_accurate() {
        for x in grid(-87.0, 87.0, 100_001) {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let rel = ((got - want) / want).abs();
            assert!(rel < 2e-7, "exp({x}) = {got}, want {want} (rel {rel})");
        }
        assert!(exp(-1000.0) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn gelu_matches_candle() {
        let xs = grid(-12.0, 12.0, 48_001);
        let dev = Device::Cpu;
        let t = Tensor::from_vec(xs.clone(), xs.len(), &dev).expect("tensor");
        let erf_ref = t
            .gelu_erf()
            .expect("gelu_erf")
            .to_vec1::<f32>()
            .expect("vec");
        let tanh_ref = t.gelu().expect("gelu").to_vec1::<f32>().expect("vec");
        for ((x, e), th) in xs.iter().zip(&erf_ref).zip(&tanh_ref) {
            let got = gelu_erf(*x);
            assert!(
                (got - e).abs() <= 1e-6 * (1.0 + x.abs()),
                "gelu_erf({x}) = {got}, candle {e}"
            );
            let got = gelu_tanh(*x);
            assert!(
                (got - th).abs() <= 1e-6 * (1.0 + x.abs()),
                "gelu_tanh({x}) = {got}, candle {th}"
            );
        }
        let mut rows = xs.clone();
        bias_act_rows(&mut rows, &[0.0; 16], Activation::GeluErf);
        assert_eq!(
            rows[..16],
            xs[..16].iter().map(|&x| gelu_erf(x)).collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn softmax_and_layer_norm_match_candle() {
        let dev = Device::Cpu;
        // Rows of awkward lengths (remainders of the 16 lanes), wide ranges.
        for len in [1usize, 7, 16, 33, 150, 256] {
            let row: Vec<f32> = (0..len)
                .map(|i| {
                    ((i * 7919 % 1000) as f32 / 37.0 - 13.0) * if i % 3 == 0 { 3.0 } else { 1.0 }
                })
                .collect();
            let t = Tensor::from_vec(row.clone(), (1, len), &dev).expect("tensor");
            let want = candle_nn::ops::softmax_last_dim(&t)
                .expect("softmax")
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec");
            let mut got = row.clone();
            softmax(&mut got);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "softmax len {len}: {g} vs {w}");
            }

            let gamma: Vec<f32> = (0..len).map(|i| 0.5 + i as f32 / len as f32).collect();
            let beta: Vec<f32> = (0..len).map(|i| i as f32 / 100.0 - 0.3).collect();
            let bias: Vec<f32> = (0..len).map(|i| (i % 5) as f32 - 2.0).collect();
            let biased: Vec<f32> = row.iter().zip(&bias).map(|(x, b)| x + b).collect();
            let ln = candle_nn::LayerNorm::new(
                Tensor::from_vec(gamma.clone(), len, &dev).expect("gamma"),
                Tensor::from_vec(beta.clone(), len, &dev).expect("beta"),
                1e-12,
            );
            let want = candle_core::Module::forward(
                &ln,
                &Tensor::from_vec(biased, (1, len), &dev).expect("tensor"),
            )
            .expect("ln")
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
            let mut got = row.clone();
            bias_layer_norm_rows(&mut got, Some(&bias), &gamma, &beta, 1e-12);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "layer norm len {len}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn matmul_strided_views() {
        // dst = lhs · rhsᵀ with rhs given row-major (transposed view), then
        // accumulated a second time with a scale.
        let (m, n, k) = (5, 3, 4);
        let lhs: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let rhs_t: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 - 2.0).collect();
        let mut dst = vec![0f32; m * n];
        matmul(
            (m, n, k),
            &mut dst,
            n,
            false,
            (&lhs, k, 1),
            (&rhs_t, 1, k),
            1.0,
        );
        matmul(
            (m, n, k),
            &mut dst,
            n,
            true,
            (&lhs, k, 1),
            (&rhs_t, 1, k),
            0.5,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k)
                    .map(|p| lhs[i * k + p] * rhs_t[j * k + p])
                    .sum::<f32>()
                    * 1.5;
                assert!((dst[i * n + j] - want).abs() < 1e-4, "({i},{j})");
            }
        }
    }
}
