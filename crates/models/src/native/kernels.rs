//! Weight matrices kept in the GGUF file's own blocks and the kernels that
//! multiply them with **f32** activations.
//!
//! Unlike candle's quantized matmuls, the activations are never quantized:
//! each weight block is expanded to f32 in registers and multiplied with the
//! f32 input by FMA, so the result equals the f32 reference (the same
//! dequantised weights) up to the order of the float additions.
//!
//! Kernels: AVX2 + FMA + F16C (x86_64, chosen at run time) and a portable
//! scalar fallback that computes the same sums.
use std::ops::Range;

use half::f16;

/// Values per quantization block (Q4_1, Q8_0).
pub(crate) const QK: usize = 32;
/// Bytes of a Q4_1 block: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles
/// (value `i` in the low nibble of byte `i`, value `i + 16` in its high nibble).
pub(crate) const Q4_1_BYTES: usize = 20;
/// Bytes of a Q8_0 block: f16 scale `d`, 32 signed bytes.
pub(crate) const Q8_0_BYTES: usize = 34;

/// The storage of a weight matrix, row-major (`rows` × `cols`).
pub(crate) enum Data {
    /// ggml Q4_1 blocks, as in the file.
    Q4_1(Vec<u8>),
    /// ggml Q8_0 blocks, as in the file.
    Q8_0(Vec<u8>),
    /// Dense f32 (any other GGUF type, dequantised at load).
    F32(Vec<f32>),
}

/// A weight matrix `W` (`rows` outputs × `cols` inputs); `y = W x`.
pub(crate) struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Data,
}

/// Whether the AVX2/FMA/F16C kernels can run on this CPU (checked once).
#[inline]
pub(crate) fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::env::var_os("RAGFLEET_NO_SIMD").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

impl Matrix {
    /// Bytes (or f32 values) of one row.
    fn row_len(&self) -> usize {
        match self.data {
            Data::Q4_1(_) => self.cols / QK * Q4_1_BYTES,
            Data::Q8_0(_) => self.cols / QK * Q8_0_BYTES,
            Data::F32(_) => self.cols,
        }
    }

    /// Bytes held in memory (read once per decoded token).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::Q4_1(b) | Data::Q8_0(b) => b.len(),
            Data::F32(v) => v.len() * 4,
        }
    }

    /// Row `r` as f32 into `out` (`cols` long): exactly candle's dequantisation.
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        let n = self.row_len();
        #[cfg(target_arch = "x86_64")]
        if simd() {
            match &self.data {
                Data::Q4_1(b) => {
                    // SAFETY: features checked at run time; lengths asserted inside.
                    unsafe { x86::dequant_q4_1(&b[r * n..(r + 1) * n], &mut out[..self.cols]) };
                    return;
                }
                Data::Q8_0(b) => {
                    // SAFETY: as above.
                    unsafe { x86::dequant_q8_0(&b[r * n..(r + 1) * n], &mut out[..self.cols]) };
                    return;
                }
                Data::F32(_) => {}
            }
        }
        match &self.data {
            Data::Q4_1(b) => {
                for (blk, o) in b[r * n..(r + 1) * n]
                    .chunks_exact(Q4_1_BYTES)
                    .zip(out.chunks_exact_mut(QK))
                {
                    let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                    for i in 0..16 {
                        let q = blk[4 + i];
                        o[i] = (q & 0xF) as f32 * d + m;
                        o[i + 16] = (q >> 4) as f32 * d + m;
                    }
                }
            }
            Data::Q8_0(b) => {
                for (blk, o) in b[r * n..(r + 1) * n]
                    .chunks_exact(Q8_0_BYTES)
                    .zip(out.chunks_exact_mut(QK))
                {
                    let d = f16_at(blk, 0);
                    for i in 0..QK {
                        o[i] = blk[2 + i] as i8 as f32 * d;
                    }
                }
            }
            Data::F32(v) => out[..self.cols].copy_from_slice(&v[r * n..(r + 1) * n]),
        }
    }

    /// `out[i] = W[rows.start + i] · x` for the rows in `rows`.
    /// `xsum4` is [`block_sums`] of `x` (only read for Q4_1).
    pub fn matvec(&self, x: &[f32], xsum4: &[f32], rows: Range<usize>, out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.cols);
        debug_assert_eq!(out.len(), rows.len());
        let n = self.row_len();
        match &self.data {
            Data::Q4_1(b) => {
                let w = &b[rows.start * n..rows.end * n];
                #[cfg(target_arch = "x86_64")]
                if simd() {
                    // SAFETY: simd() checked AVX2, FMA and F16C at run time;
                    // slice lengths are consistent (asserted inside).
                    unsafe { x86::q4_1_matvec(w, n, x, xsum4, out) };
                    return;
                }
                for (row, o) in w.chunks_exact(n).zip(out.iter_mut()) {
                    *o = scalar::q4_1_dot(row, x, xsum4);
                }
            }
            Data::Q8_0(b) => {
                let w = &b[rows.start * n..rows.end * n];
                #[cfg(target_arch = "x86_64")]
                if simd() {
                    // SAFETY: as above.
                    unsafe { x86::q8_0_matvec(w, n, x, out) };
                    return;
                }
                for (row, o) in w.chunks_exact(n).zip(out.iter_mut()) {
                    *o = scalar::q8_0_dot(row, x);
                }
            }
            Data::F32(v) => {
                for (row, o) in v[rows.start * n..rows.end * n]
                    .chunks_exact(n)
                    .zip(out.iter_mut())
                {
                    *o = dot(row, x);
                }
            }
        }
    }

    /// Several inputs at once (prompt processing): `out[t * rows + r] =
    /// W[r] · xs[t]` for every row `r` and `t < n_tok`, `xs` row-major
    /// (`n_tok` × `cols`). The weight rows are expanded to f32 four at a time
    /// into `panel` (≥ 4 × `cols`) and reused for every input.
    pub fn matmul(&self, xs: &[f32], n_tok: usize, panel: &mut [f32], out: &mut [f32]) {
        let (k, rows) = (self.cols, self.rows);
        assert!(xs.len() == n_tok * k && out.len() == n_tok * rows && panel.len() >= 4 * k);
        let mut r = 0;
        while r < rows {
            let nr = (rows - r).min(4);
            for i in 0..nr {
                self.dequant_row(r + i, &mut panel[i * k..(i + 1) * k]);
            }
            panel_matmul(&panel[..nr * k], nr, k, xs, n_tok, &mut out[r..], rows);
            r += nr;
        }
    }
}

/// Per-block sums of `x` for the Q4_1 kernels, laid out `[0, s, 0, 0]` per
/// block of 32 (the `m · Σx` term of `Σ (d·q + m)·x`).
pub(crate) fn block_sums(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    for c in x.chunks(QK) {
        out.extend_from_slice(&[0.0, c.iter().sum::<f32>(), 0.0, 0.0]);
    }
}

/// `out[t * stride + i] = panel[i] · xs[t]` for `nr` ≤ 4 dense rows of
/// length `k`.
fn panel_matmul(
    panel: &[f32],
    nr: usize,
    k: usize,
    xs: &[f32],
    n_tok: usize,
    out: &mut [f32],
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if simd() && nr == 4 && k.is_multiple_of(8) {
        // SAFETY: features checked at run time; lengths asserted inside.
        unsafe { x86::panel4_matmul(panel, k, xs, n_tok, out, stride) };
        return;
    }
    for i in 0..nr {
        let row = &panel[i * k..(i + 1) * k];
        for t in 0..n_tok {
            out[t * stride + i] = dot(row, &xs[t * k..(t + 1) * k]);
        }
    }
}

/// Dot product of two f32 slices of equal length.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: features checked at run time.
        return unsafe { x86::dot(a, b) };
    }
    scalar::dot(a, b)
}

/// `y += a · x`.
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Attention scores of one query against keys stored in tiles of 8
/// positions (`[tile][i][8]`, `q.len()` × 8 values per tile):
/// `s[8t + c] = Σ_i q[i] · kt[(t · q.len() + i) · 8 + c]` for `8t + c <
/// s.len()` (a multiple of 8). Tiles are contiguous, so the keys stream
/// from memory in order.
pub(crate) fn scores_tiled(q: &[f32], kt: &[f32], s: &mut [f32]) {
    let hd = q.len();
    assert!(s.len().is_multiple_of(8) && s.len() * hd <= kt.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: features checked at run time; s.len() / 8 tiles of hd × 8
        // values are in bounds (asserted above).
        unsafe { x86::scores_tiled(q, kt.as_ptr(), s) };
        return;
    }
    for (t, st) in s.chunks_exact_mut(8).enumerate() {
        st.fill(0.0);
        let tile = &kt[t * hd * 8..(t + 1) * hd * 8];
        for (i, qi) in q.iter().enumerate() {
            axpy(st, *qi, &tile[i * 8..i * 8 + 8]);
        }
    }
}

/// `out = Σ_j p[j] · v[j * out.len() ..][..out.len()]` (weighted sum of rows).
pub(crate) fn weighted_rows(p: &[f32], v: &[f32], out: &mut [f32]) {
    let hd = out.len();
    assert!(p.len() * hd <= v.len());
    #[cfg(target_arch = "x86_64")]
    if simd() && hd == 64 {
        // SAFETY: features checked at run time; v holds p.len() rows of 64.
        unsafe { x86::weighted_rows64(p, v.as_ptr(), out) };
        return;
    }
    out.fill(0.0);
    for (j, w) in p.iter().enumerate() {
        axpy(out, *w, &v[j * hd..(j + 1) * hd]);
    }
}

/// `exp` of every value in place (for softmax and SiLU); within 2 ulp of
/// `f32::exp` on the SIMD path.
pub(crate) fn exp_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: features checked at run time.
        unsafe { x86::exp_in_place(v) };
        return;
    }
    for x in v {
        *x = x.exp();
    }
}

/// Softmax of `v` in place.
pub(crate) fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in v.iter_mut() {
        *x -= max;
    }
    exp_in_place(v);
    let sum: f32 = v.iter().sum();
    let inv = 1.0 / sum;
    for x in v {
        *x *= inv;
    }
}

/// `g = silu(g) * u` (SwiGLU), with `silu(x) = x / (1 + e^-x)`.
pub(crate) fn silu_mul(g: &mut [f32], u: &[f32], tmp: &mut Vec<f32>) {
    tmp.clear();
    tmp.extend(g.iter().map(|x| -x));
    exp_in_place(tmp);
    for ((g, u), e) in g.iter_mut().zip(u).zip(tmp.iter()) {
        *g = *g / (1.0 + e) * u;
    }
}

/// RMSNorm: `out = x / sqrt(mean(x²) + eps) * w` (candle's formula).
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum2: f32 = x.iter().map(|v| v * v).sum();
    let m = (sum2 / x.len() as f32 + eps).sqrt();
    for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
        *o = x / m * w;
    }
}

pub(crate) mod scalar {
    use super::{f16_at, Q4_1_BYTES, Q8_0_BYTES};

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    pub fn q4_1_dot(row: &[u8], x: &[f32], xsum4: &[f32]) -> f32 {
        let mut total = 0f32;
        let mut mterm = 0f32;
        for (b, blk) in row.chunks_exact(Q4_1_BYTES).enumerate() {
            let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
            let xb = &x[b * 32..b * 32 + 32];
            let mut acc = 0f32;
            for i in 0..16 {
                let q = blk[4 + i];
                acc += (q & 0xF) as f32 * xb[i] + (q >> 4) as f32 * xb[i + 16];
            }
            total += d * acc;
            mterm += m * xsum4[4 * b + 1];
        }
        total + mterm
    }

    pub fn q8_0_dot(row: &[u8], x: &[f32]) -> f32 {
        let mut total = 0f32;
        for (b, blk) in row.chunks_exact(Q8_0_BYTES).enumerate() {
            let d = f16_at(blk, 0);
            let xb = &x[b * 32..b * 32 + 32];
            let mut acc = 0f32;
            for i in 0..32 {
                acc += blk[2 + i] as i8 as f32 * xb[i];
            }
            total += d * acc;
        }
        total
    }
}

/// AVX2/FMA/F16C kernels. Safety contract of every function here: the CPU
/// has the features it enables (callers check [`simd`] first), and raw
/// pointers cover the lengths that the safe wrappers above assert.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Q4_1_BYTES, Q8_0_BYTES, QK};

    /// Horizontal sum of 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8 * j)),
                    _mm256_loadu_ps(pb.add(i + 8 * j)),
                    *a,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    /// One Q4_1 block against 32 activations in `xv`: returns the 8-lane
    /// partial sums of `q · x`; `d`/`m` are converted separately.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q4_1_block(p: *const u8, xv: &[__m256; 4]) -> __m256 {
        let mask = _mm256_set1_epi32(0xF);
        let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(4) as *const __m128i));
        let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(12) as *const __m128i));
        let lo0 = _mm256_cvtepi32_ps(_mm256_and_si256(a, mask));
        let lo1 = _mm256_cvtepi32_ps(_mm256_and_si256(b, mask));
        let hi0 = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4));
        let hi1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
        let acc = _mm256_mul_ps(lo0, xv[0]);
        let acc = _mm256_fmadd_ps(lo1, xv[1], acc);
        let acc = _mm256_fmadd_ps(hi0, xv[2], acc);
        _mm256_fmadd_ps(hi1, xv[3], acc)
    }

    /// `R` Q4_1 rows (`n` bytes each, starting at `w`) against `x`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_rows<const R: usize>(
        w: *const u8,
        n: usize,
        x: *const f32,
        xsum4: *const f32,
        out: &mut [f32],
    ) {
        let nb = n / Q4_1_BYTES;
        let mut total = [_mm256_setzero_ps(); R];
        let mut mterm = [_mm_setzero_ps(); R];
        for b in 0..nb {
            let xp = x.add(b * QK);
            let xv = [
                _mm256_loadu_ps(xp),
                _mm256_loadu_ps(xp.add(8)),
                _mm256_loadu_ps(xp.add(16)),
                _mm256_loadu_ps(xp.add(24)),
            ];
            let xs = _mm_loadu_ps(xsum4.add(4 * b));
            // The next group of rows (contiguous after these R rows), at the
            // pace this group is read: keeps the memory stream going across
            // 4 KiB pages, where hardware prefetchers stop (2x faster decoding
            // measured). Past the end of the slice it is a harmless hint, so
            // the address is computed with wrapping arithmetic.
            let ahead = w.wrapping_add(R * n + b * R * Q4_1_BYTES);
            _mm_prefetch(ahead as *const i8, _MM_HINT_T0);
            _mm_prefetch(ahead.wrapping_add(64) as *const i8, _MM_HINT_T0);
            for r in 0..R {
                let p = w.add(r * n + b * Q4_1_BYTES);
                // [d, m, 0, 0] from the block's two f16 values.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
                let acc = q4_1_block(p, &xv);
                total[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), acc, total[r]);
                mterm[r] = _mm_fmadd_ps(dm, xs, mterm[r]);
            }
        }
        for r in 0..R {
            out[r] = hsum(total[r]) + _mm_cvtss_f32(_mm_movehdup_ps(mterm[r]));
        }
    }

    /// Q4_1 rows of `n` bytes in `w` against `x`; one output per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1_matvec(w: &[u8], n: usize, x: &[f32], xsum4: &[f32], out: &mut [f32]) {
        let rows = out.len();
        assert!(w.len() >= rows * n && x.len() * Q4_1_BYTES >= n * QK);
        assert!(xsum4.len() * Q4_1_BYTES >= n * 4);
        let mut r = 0;
        while r + 4 <= rows {
            q4_1_rows::<4>(
                w.as_ptr().add(r * n),
                n,
                x.as_ptr(),
                xsum4.as_ptr(),
                &mut out[r..],
            );
            r += 4;
        }
        while r < rows {
            q4_1_rows::<1>(
                w.as_ptr().add(r * n),
                n,
                x.as_ptr(),
                xsum4.as_ptr(),
                &mut out[r..],
            );
            r += 1;
        }
    }

    /// 8 signed bytes at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn i8x8(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// `2^e` for integer lanes with `e + 127` in 1..=254.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pow2i(e: __m256i) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(e, _mm256_set1_epi32(127)),
            23,
        ))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_rows<const R: usize>(w: *const u8, n: usize, x: *const f32, out: &mut [f32]) {
        let nb = n / Q8_0_BYTES;
        let mut total = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let xp = x.add(b * QK);
            let xv = [
                _mm256_loadu_ps(xp),
                _mm256_loadu_ps(xp.add(8)),
                _mm256_loadu_ps(xp.add(16)),
                _mm256_loadu_ps(xp.add(24)),
            ];
            // Prefetch the next group of rows, as in q4_1_rows.
            let ahead = w.wrapping_add(R * n + b * R * Q8_0_BYTES);
            _mm_prefetch(ahead as *const i8, _MM_HINT_T0);
            _mm_prefetch(ahead.wrapping_add(64) as *const i8, _MM_HINT_T0);
            _mm_prefetch(ahead.wrapping_add(128) as *const i8, _MM_HINT_T0);
            for (r, total) in total.iter_mut().enumerate() {
                let p = w.add(r * n + b * Q8_0_BYTES);
                let d = _mm_cvtph_ps(_mm_set1_epi16((p as *const i16).read_unaligned()));
                let acc = _mm256_mul_ps(i8x8(p.add(2)), xv[0]);
                let acc = _mm256_fmadd_ps(i8x8(p.add(10)), xv[1], acc);
                let acc = _mm256_fmadd_ps(i8x8(p.add(18)), xv[2], acc);
                let acc = _mm256_fmadd_ps(i8x8(p.add(26)), xv[3], acc);
                *total = _mm256_fmadd_ps(_mm256_set_m128(d, d), acc, *total);
            }
        }
        for r in 0..R {
            out[r] = hsum(total[r]);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0_matvec(w: &[u8], n: usize, x: &[f32], out: &mut [f32]) {
        let rows = out.len();
        assert!(w.len() >= rows * n && x.len() * Q8_0_BYTES >= n * QK);
        let mut r = 0;
        while r + 4 <= rows {
            q8_0_rows::<4>(w.as_ptr().add(r * n), n, x.as_ptr(), &mut out[r..]);
            r += 4;
        }
        while r < rows {
            q8_0_rows::<1>(w.as_ptr().add(r * n), n, x.as_ptr(), &mut out[r..]);
            r += 1;
        }
    }

    /// 4 dense rows (`panel`, 4 × `k`) against `n_tok` inputs (`xs`,
    /// `n_tok` × `k`): `out[t * stride + i]`. Register tile: 4 rows × 3
    /// inputs.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn panel4_matmul(
        panel: &[f32],
        k: usize,
        xs: &[f32],
        n_tok: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        assert!(k.is_multiple_of(8) && panel.len() >= 4 * k && xs.len() >= n_tok * k);
        assert!(n_tok == 0 || out.len() >= (n_tok - 1) * stride + 4);
        let w = panel.as_ptr();
        let x = xs.as_ptr();
        let mut t = 0;
        while t + 3 <= n_tok {
            let mut acc = [[_mm256_setzero_ps(); 3]; 4];
            let (x0, x1, x2) = (x.add(t * k), x.add((t + 1) * k), x.add((t + 2) * k));
            let mut j = 0;
            while j < k {
                let wv = [
                    _mm256_loadu_ps(w.add(j)),
                    _mm256_loadu_ps(w.add(k + j)),
                    _mm256_loadu_ps(w.add(2 * k + j)),
                    _mm256_loadu_ps(w.add(3 * k + j)),
                ];
                let xv = [
                    _mm256_loadu_ps(x0.add(j)),
                    _mm256_loadu_ps(x1.add(j)),
                    _mm256_loadu_ps(x2.add(j)),
                ];
                for i in 0..4 {
                    for c in 0..3 {
                        acc[i][c] = _mm256_fmadd_ps(wv[i], xv[c], acc[i][c]);
                    }
                }
                j += 8;
            }
            for (i, row) in acc.iter().enumerate() {
                for (c, a) in row.iter().enumerate() {
                    out[(t + c) * stride + i] = hsum(*a);
                }
            }
            t += 3;
        }
        while t < n_tok {
            let xt = &xs[t * k..(t + 1) * k];
            for i in 0..4 {
                out[t * stride + i] = dot(&panel[i * k..(i + 1) * k], xt);
            }
            t += 1;
        }
    }

    /// Q4_1 blocks to f32 (`d · q + m`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequant_q4_1(blocks: &[u8], out: &mut [f32]) {
        assert!(blocks.len() / Q4_1_BYTES * QK == out.len());
        let mask = _mm256_set1_epi32(0xF);
        for (b, blk) in blocks.chunks_exact(Q4_1_BYTES).enumerate() {
            let p = blk.as_ptr();
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
            let d = _mm256_broadcastss_ps(dm);
            let m = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
            let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(4) as *const __m128i));
            let c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(12) as *const __m128i));
            let o = out.as_mut_ptr().add(b * QK);
            _mm256_storeu_ps(
                o,
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(a, mask)), d, m),
            );
            _mm256_storeu_ps(
                o.add(8),
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(c, mask)), d, m),
            );
            _mm256_storeu_ps(
                o.add(16),
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), d, m),
            );
            _mm256_storeu_ps(
                o.add(24),
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(c, 4)), d, m),
            );
        }
    }

    /// Q8_0 blocks to f32 (`d · q`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequant_q8_0(blocks: &[u8], out: &mut [f32]) {
        assert!(blocks.len() / Q8_0_BYTES * QK == out.len());
        for (b, blk) in blocks.chunks_exact(Q8_0_BYTES).enumerate() {
            let p = blk.as_ptr();
            let d = _mm_cvtph_ps(_mm_set1_epi16((p as *const i16).read_unaligned()));
            let d = _mm256_set_m128(d, d);
            let o = out.as_mut_ptr().add(b * QK);
            for c in 0..4 {
                _mm256_storeu_ps(o.add(8 * c), _mm256_mul_ps(i8x8(p.add(2 + 8 * c)), d));
            }
        }
    }

    /// See [`super::scores_tiled`]: four tiles (32 keys) at a time in four
    /// registers, one broadcast of `q[i]` per row.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores_tiled(q: &[f32], kt: *const f32, s: &mut [f32]) {
        let hd = q.len();
        let tiles = s.len() / 8;
        let mut t = 0;
        while t + 4 <= tiles {
            let mut acc = [_mm256_setzero_ps(); 4];
            let base = kt.add(t * hd * 8);
            for (i, qi) in q.iter().enumerate() {
                let qv = _mm256_set1_ps(*qi);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(base.add((c * hd + i) * 8)), *a);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(s.as_mut_ptr().add((t + c) * 8), *a);
            }
            t += 4;
        }
        while t < tiles {
            let mut acc = _mm256_setzero_ps();
            let base = kt.add(t * hd * 8);
            for (i, qi) in q.iter().enumerate() {
                acc = _mm256_fmadd_ps(_mm256_set1_ps(*qi), _mm256_loadu_ps(base.add(i * 8)), acc);
            }
            _mm256_storeu_ps(s.as_mut_ptr().add(t * 8), acc);
            t += 1;
        }
    }

    /// See [`super::weighted_rows`] for rows of 64: the output stays in
    /// eight registers.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_rows64(p: &[f32], v: *const f32, out: &mut [f32]) {
        assert!(out.len() == 64);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, w) in p.iter().enumerate() {
            let wv = _mm256_set1_ps(*w);
            let row = v.add(j * 64);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * c)), *a);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), *a);
        }
    }

    /// `e^x` for 8 lanes: range reduction `x = n·ln2 + r`, degree-6
    /// polynomial for `e^r` on |r| ≤ ln2/2 (rel. error < 2e-7), `2^n` built
    /// in the exponent bits. Inputs below -87.3 give 0, above 88.7 give inf.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        // x second: min/max return their second operand when one is NaN,
        // so a NaN input stays NaN (as in the scalar path).
        let x = _mm256_min_ps(_mm256_set1_ps(88.72), x);
        let x = _mm256_max_ps(_mm256_set1_ps(-87.33), x);
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // r = x - n·ln2 in two parts for precision.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        // 2^n: n + 127 in the exponent field; n ∈ [-126, 128] after the clamps,
        // split in two factors so that n = 128 does not overflow the field.
        let ni = _mm256_cvtps_epi32(n);
        let half = _mm256_srai_epi32(ni, 1);
        _mm256_mul_ps(
            _mm256_mul_ps(p, pow2i(half)),
            pow2i(_mm256_sub_epi32(ni, half)),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_in_place(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp8(_mm256_loadu_ps(c.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
        }
        for x in chunks.into_remainder() {
            *x = x.exp();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream (no test depends on its values).
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn rand_f32(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (lcg(seed) as f32 / u32::MAX as f32 - 0.5) * 2.0 * scale)
            .collect()
    }

    fn q4_1(seed: &mut u64, rows: usize, cols: usize) -> Matrix {
        let mut b = Vec::new();
        for _ in 0..rows * cols / QK {
            b.extend_from_slice(
                &f16::from_f32(0.01 + (lcg(seed) % 100) as f32 * 1e-3).to_le_bytes(),
            );
            b.extend_from_slice(
                &f16::from_f32(-0.1 + (lcg(seed) % 100) as f32 * 1e-3).to_le_bytes(),
            );
            b.extend((0..16).map(|_| lcg(seed) as u8));
        }
        Matrix {
            rows,
            cols,
            data: Data::Q4_1(b),
        }
    }

    fn q8_0(seed: &mut u64, rows: usize, cols: usize) -> Matrix {
        let mut b = Vec::new();
        for _ in 0..rows * cols / QK {
            b.extend_from_slice(
                &f16::from_f32(0.001 + (lcg(seed) % 100) as f32 * 1e-4).to_le_bytes(),
            );
            b.extend((0..32).map(|_| lcg(seed) as u8));
        }
        Matrix {
            rows,
            cols,
            data: Data::Q8_0(b),
        }
    }

    /// Every kernel against the dequantised rows and a plain f64 dot product.
    #[test]
    fn kernels_match_dequantised_reference() {
        let mut seed = 1;
        let (rows, cols) = (7, 96);
        // Outliers in x like ffn_down's input.
        let mut x = rand_f32(&mut seed, cols, 1.0);
        x[5] = 300.0;
        x[70] = -120.0;
        let mut xs4 = Vec::new();
        block_sums(&x, &mut xs4);
        for m in [q4_1(&mut seed, rows, cols), q8_0(&mut seed, rows, cols)] {
            let mut dense = vec![0f32; rows * cols];
            for r in 0..rows {
                m.dequant_row(r, &mut dense[r * cols..(r + 1) * cols]);
            }
            let reference: Vec<f64> = (0..rows)
                .map(|r| {
                    (0..cols)
                        .map(|c| dense[r * cols + c] as f64 * x[c] as f64)
                        .sum()
                })
                .collect();
            let mut out = vec![0f32; rows - 1];
            m.matvec(&x, &xs4, 1..rows, &mut out);
            for (o, r) in out.iter().zip(&reference[1..]) {
                assert!((*o as f64 - r).abs() < 1e-4 * (1.0 + r.abs()), "{o} vs {r}");
            }
            // Scalar fallback, same sums.
            let n = m.row_len();
            for r in 0..rows {
                let s = match &m.data {
                    Data::Q4_1(b) => scalar::q4_1_dot(&b[r * n..(r + 1) * n], &x, &xs4),
                    Data::Q8_0(b) => scalar::q8_0_dot(&b[r * n..(r + 1) * n], &x),
                    Data::F32(_) => unreachable!(),
                };
                assert!((s as f64 - reference[r]).abs() < 1e-4 * (1.0 + reference[r].abs()));
            }
            // Several inputs at once.
            let n_tok = 5;
            let xs: Vec<f32> = (0..n_tok)
                .flat_map(|t| x.iter().map(move |v| v * (t as f32 + 1.0)))
                .collect();
            let mut panel = vec![0f32; 4 * cols];
            let mut mm = vec![0f32; rows * n_tok];
            m.matmul(&xs, n_tok, &mut panel, &mut mm);
            for r in 0..rows {
                for t in 0..n_tok {
                    let want = reference[r] * (t as f64 + 1.0);
                    let got = mm[t * rows + r] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn attention_kernels_match_plain_loops() {
        let mut seed = 3;
        let (hd, cap) = (64, 48);
        let q = rand_f32(&mut seed, hd, 1.0);
        let kt = rand_f32(&mut seed, hd * cap, 1.0);
        for n in [8, 40, 48] {
            let mut s = vec![0f32; n];
            scores_tiled(&q, &kt, &mut s);
            for (j, got) in s.iter().enumerate() {
                let want: f32 = (0..hd)
                    .map(|i| q[i] * kt[((j / 8) * hd + i) * 8 + j % 8])
                    .sum();
                assert!((got - want).abs() < 1e-4, "{got} vs {want}");
            }
            let v = rand_f32(&mut seed, n * hd, 1.0);
            let mut out = vec![0f32; hd];
            weighted_rows(&s, &v, &mut out);
            for (c, got) in out.iter().enumerate() {
                let want: f32 = (0..n).map(|j| s[j] * v[j * hd + c]).sum();
                assert!((got - want).abs() < 1e-3, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn exp_is_close_to_std() {
        let mut v: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        v.retain(|x| *x < 88.0); // above, f32::exp overflows to inf (ours saturates)
        v.extend([-100.0, -87.0, 88.0, 0.0, -0.0, f32::NEG_INFINITY]);
        let want: Vec<f32> = v.iter().map(|x| x.exp()).collect();
        exp_in_place(&mut v);
        for (g, w) in v.iter().zip(&want) {
            let err = (g - w).abs() / w.max(f32::MIN_POSITIVE);
            assert!(err < 1e-6 || (g - w).abs() < 1e-37, "{g} vs {w}");
        }
    }

    #[test]
    fn exp_keeps_nan_in_every_lane() {
        // Eight lanes (the SIMD path, where AVX2 is there) and a remainder.
        let mut v = vec![f32::NAN; 9];
        v[3] = 0.0;
        exp_in_place(&mut v);
        for (i, x) in v.iter().enumerate() {
            assert_eq!(x.is_nan(), i != 3, "lane {i}: {x}");
        }
    }
}
