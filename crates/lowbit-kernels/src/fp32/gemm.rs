//! lowbit's f32 GEMM drivers for convolutions in NCHW: `C[m×n] = A[m×k] · B[k×n] + bias[m]`, then a
//! clamp-type activation, with A the (row-major) weights and B the activations (row-major, rows
//! contiguous along the spatial axis), so 1x1 convolutions need no packing at all.
//!
//! Each entry point takes its path ([`F32Isa`]): AVX-512 runs lowbit's own tiles
//! ([`crate::fp32::avx512`]: a 6×64 tile of C in 24 zmm registers, B rows streamed with masked loads
//! so ragged edges need no copies); AVX2 runs lowbit's 6×16 tile over packed B panels
//! ([`crate::fp32::avx2`]); the general strided [`sgemm`] uses the `gemm` crate on both; the
//! portable path is plain loops (the reference, no AVX). The result is compared against the reference evaluator in tests.

use gemm::Parallelism;
use lowbit_core::Act;
use rayon::prelude::*;

use crate::fp32::layout::fused_clamp;
use crate::fp32::layout::TP;
pub use crate::fp32::layout::{clamp_of, BRows};
#[cfg(target_arch = "x86_64")]
use crate::fp32::{avx2, avx2_t, avx512};
use crate::isa::{trace, F32Isa};

/// Every entry point: the path must run here (its SIMD code is otherwise undefined behaviour), and
/// the call is counted for [`trace`].
#[inline]
fn enter(isa: F32Isa) {
    assert!(isa.supported(), "f32 path {} is not supported by this CPU", isa.name());
    trace::f32(isa);
}

/// The bounds every GEMM entry point asserts on B (rows located by `rows`), the bias and C.
#[allow(clippy::too_many_arguments)]
fn check_bc(m: usize, n: usize, k: usize, b: &[f32], rows: BRows, bias: &[f32], c: &[f32], ldc: usize) {
    if let BRows::Offsets(o) = rows {
        assert!(o.len() >= k);
    }
    assert!(k == 0 || n == 0 || b.len() >= rows.max_end(k, n));
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n);
    assert!(bias.len() >= m);
}

/// An activation the SIMD epilogues cannot fuse (not a clamp), applied to C afterwards.
fn act_after(isa: F32Isa, act: Act, m: usize, n: usize, c: &mut [f32], ldc: usize) {
    if clamp_of(act).is_none() {
        for i in 0..m {
            crate::eltwise::apply_act(isa, act, &mut c[i * ldc..i * ldc + n]);
        }
    }
}

/// `c[i*ldc + j] = act(bias[i] + Σ_p a[i*lda + p] * b[p*ldb + j])` for `i < m`, `j < n`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_bias_act(
    isa: F32Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    bias: &[f32],
    act: Act,
    c: &mut [f32],
    ldc: usize,
    threads: usize,
) {
    sgemm_rows(isa, m, n, k, a, lda, b, BRows::Strided(ldb), bias, act, c, ldc, threads)
}

/// As [`sgemm_bias_act`] with B's rows located by `rows`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_rows(
    isa: F32Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    rows: BRows,
    bias: &[f32],
    act: Act,
    c: &mut [f32],
    ldc: usize,
    threads: usize,
) {
    assert!(m == 0 || a.len() >= (m - 1) * lda + k);
    check_bc(m, n, k, b, rows, bias, c, ldc);
    enter(isa);
    #[cfg(target_arch = "x86_64")]
    if isa != F32Isa::Scalar {
        let (lo, hi) = fused_clamp(act);
        let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        // SAFETY: the path (AVX-512, or AVX2 + FMA) was checked supported on entry and the asserts
        // above bound every access.
        unsafe {
            if isa == F32Isa::Avx512 {
                avx512::gemm(m, n, k, ap, lda, bp, rows, bias, lo, hi, cp, ldc, threads)
            } else {
                avx2::gemm(m, n, k, ap, lda, bp, rows, bias, lo, hi, cp, ldc, threads)
            }
        };
        act_after(isa, act, m, n, c, ldc);
        return;
    }
    for i in 0..m {
        c[i * ldc..i * ldc + n].fill(bias[i]);
    }
    match rows {
        // SAFETY: the asserts above bound every access.
        BRows::Strided(ldb) => unsafe {
            sgemm_acc(isa, m, n, k, c.as_mut_ptr(), ldc, a.as_ptr(), lda, b.as_ptr(), ldb, threads)
        },
        BRows::Offsets(o) => {
            for i in 0..m {
                let ci = &mut c[i * ldc..i * ldc + n];
                for p in 0..k {
                    let av = a[i * lda + p];
                    let bp = &b[o[p]..o[p] + n];
                    ci.iter_mut().zip(bp).for_each(|(x, &y)| *x += av * y);
                }
            }
        }
    }
    for i in 0..m {
        crate::eltwise::apply_act(isa, act, &mut c[i * ldc..i * ldc + n]);
    }
}

/// Columns per panel of [`pack_gemv`].
pub const GEMV_PANEL: usize = 128;

/// Lays out a row-major `w[k×n]` for [`gemv_bias_act`]: panels of [`GEMV_PANEL`] columns, each
/// `[k][width]` contiguous (panel `j0` starts at `j0 * k`), so the kernel streams memory in order
/// instead of jumping a whole row (`4n` bytes, a new page for wide layers) per step.
pub fn pack_gemv(k: usize, n: usize, w: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; k * n];
    for j0 in (0..n).step_by(GEMV_PANEL) {
        let wd = (n - j0).min(GEMV_PANEL);
        for p in 0..k {
            out[j0 * k + p * wd..j0 * k + (p + 1) * wd].copy_from_slice(&w[p * n + j0..p * n + j0 + wd]);
        }
    }
    out
}

/// Matrix-vector product for batch-1 fully connected layers: `y[j] = act(bias[j] + Σ_p x[p] *
/// w[p][j])` with `w` laid out by [`pack_gemv`]. Threads split the panels.
pub fn gemv_bias_act(
    isa: F32Isa,
    x: &[f32],
    wp: &[f32],
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    act: Act,
    y: &mut [f32],
    threads: usize,
) {
    assert!(x.len() >= k && wp.len() >= k * n && y.len() >= n && bias.is_none_or(|b| b.len() >= n));
    enter(isa);
    let job = |j0: usize, yc: &mut [f32]| {
        let wd = yc.len();
        match bias {
            Some(b) => yc.copy_from_slice(&b[j0..j0 + wd]),
            None => yc.fill(0.0),
        }
        let panel = &wp[j0 * k..j0 * k + k * wd];
        #[cfg(target_arch = "x86_64")]
        if isa == F32Isa::Avx512 {
            // SAFETY: AVX-512 path (checked supported on entry); the panel holds k rows of `wd` <= 128 columns.
            unsafe { avx512::gemv_panel(x, panel, k, yc) };
            crate::eltwise::apply_act(isa, act, yc);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if isa == F32Isa::Avx2 {
            // SAFETY: AVX2 + FMA path (checked supported on entry); the panel holds k rows of `wd` columns.
            unsafe { avx2::gemv_panel(x, panel, k, yc) };
            crate::eltwise::apply_act(isa, act, yc);
            return;
        }
        for (p, &xv) in x[..k].iter().enumerate() {
            yc.iter_mut().zip(&panel[p * wd..(p + 1) * wd]).for_each(|(a, &b)| *a += xv * b);
        }
        crate::eltwise::apply_act(isa, act, yc);
    };
    if threads > 1 && n > GEMV_PANEL {
        y[..n].par_chunks_mut(GEMV_PANEL).enumerate().for_each(|(i, yc)| job(i * GEMV_PANEL, yc));
    } else {
        y[..n].chunks_mut(GEMV_PANEL).enumerate().for_each(|(i, yc)| job(i * GEMV_PANEL, yc));
    }
}

/// A weight matrix `A[m×k]` transposed and padded for [`sgemm_t`]: `mp` = m rounded up to 16;
/// panels of 48 channels (the last one `mp - i0` wide), each `[k][width]` contiguous and starting at
/// `i0 * k`, so a tile streams its weights in order; zeros in the padding.
pub fn pack_t(m: usize, k: usize, a: &[f32], lda: usize) -> (Vec<f32>, usize) {
    let mp = m.div_ceil(16) * 16;
    let mut at = vec![0f32; k * mp];
    for i0 in (0..mp).step_by(TP) {
        let wd = TP.min(mp - i0);
        for i in i0..(i0 + wd).min(m) {
            for p in 0..k {
                at[i0 * k + p * wd + (i - i0)] = a[i * lda + p];
            }
        }
    }
    (at, mp)
}

/// Does the channel-vector kernel ([`sgemm_t`]) suit an `m × k` by `k × n` GEMM whose B rows hold
/// `n` useful columns out of `cols` computed ones? On AVX-512 when 16-wide vectors along n waste over
/// 15% (7x7 planes: 49 of 64 lanes). On AVX2 for small planes (n <= 64) with a short reduction:
/// 1x1 convolutions on 7x7 planes run at 36-45 GMAC/s there against 36-38 on the spatial tile
/// (`cargo bench -p lowbit-kernels --bench f32 -- @7`), but with k = 4608 (3x3, 512 channels) at 28
/// against 33, the reduction's B rows no longer staying in cache.
pub fn prefer_t(isa: F32Isa, m: usize, n: usize, k: usize, cols: usize) -> bool {
    match isa {
        F32Isa::Avx512 => m >= 16 && (n as f64) < 0.85 * (cols.div_ceil(16) * 16) as f64,
        F32Isa::Avx2 => m >= 16 && n <= 64 && k <= 1152,
        F32Isa::Scalar => false,
    }
}

/// As [`sgemm_rows`], vectorised along m instead of n: vectors hold 16 (AVX-512) or 8 (AVX2) output
/// channels of one column, so narrow n (small planes) wastes no lanes. `at`/`mp` come from
/// [`pack_t`]. The portable path is an exact scalar loop.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_t(
    isa: F32Isa,
    m: usize,
    n: usize,
    k: usize,
    at: &[f32],
    mp: usize,
    b: &[f32],
    rows: BRows,
    bias: &[f32],
    act: Act,
    c: &mut [f32],
    ldc: usize,
    threads: usize,
) {
    assert!(mp >= m && mp % 16 == 0 && at.len() >= k * mp && ldc <= (i32::MAX as usize) / 16);
    check_bc(m, n, k, b, rows, bias, c, ldc);
    enter(isa);
    #[cfg(target_arch = "x86_64")]
    if isa != F32Isa::Scalar {
        let (lo, hi) = fused_clamp(act);
        let (ap, bp, cp) = (at.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        // SAFETY: the path (AVX-512, or AVX2 + FMA) was checked supported on entry and the asserts
        // above bound every access.
        unsafe {
            if isa == F32Isa::Avx512 {
                avx512::gemm_t(m, n, k, ap, mp, bp, rows, bias, lo, hi, cp, ldc, threads)
            } else {
                avx2_t::gemm_t(m, n, k, ap, mp, bp, rows, bias, lo, hi, cp, ldc, threads)
            }
        };
        act_after(isa, act, m, n, c, ldc);
        return;
    }
    for i in 0..m {
        let ci = &mut c[i * ldc..i * ldc + n];
        ci.fill(bias[i]);
        let (i0, wd) = (i / TP * TP, TP.min(mp - i / TP * TP));
        for p in 0..k {
            let (av, o) = (at[i0 * k + p * wd + i - i0], rows.off(p));
            ci.iter_mut().zip(&b[o..o + n]).for_each(|(x, &y)| *x += av * y);
        }
        crate::eltwise::apply_act(isa, act, ci);
    }
}

fn par(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `dst[m×n] = dst + lhs[m×k] · rhs[k×n]`, all row-major with the given row strides.
///
/// # Safety
/// The pointers must be valid for the given shapes and strides.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_acc(
    isa: F32Isa,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    threads: usize,
) {
    sgemm(isa, m, n, k, dst, dst_rs as isize, lhs, lhs_rs as isize, 1, rhs, rhs_rs as isize, 1, true, threads)
}

/// General strided f32 GEMM: `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` where element (i, j) of a matrix
/// lives at `ptr + i*rs + j*cs`. `accumulate == false` overwrites `dst`.
///
/// # Safety
/// The pointers must be valid for the given shapes and strides.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    isa: F32Isa,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    accumulate: bool,
    threads: usize,
) {
    enter(isa);
    if isa == F32Isa::Scalar {
        // The portable path: plain loops, i-p-j order so the inner loop runs along a row of C.
        for i in 0..m {
            let d = dst.offset(i as isize * dst_rs);
            if !accumulate {
                for j in 0..n {
                    *d.add(j) = 0.0;
                }
            }
            for p in 0..k {
                let av = *lhs.offset(i as isize * lhs_rs + p as isize * lhs_cs);
                let r = rhs.offset(p as isize * rhs_rs);
                for j in 0..n {
                    *d.add(j) += av * *r.offset(j as isize * rhs_cs);
                }
            }
        }
        return;
    }
    // AVX2 and AVX-512: the `gemm` crate (it picks its own kernels for the CPU).
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        1.0,
        1.0,
        false,
        false,
        false,
        par(threads),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], bias: &[f32], act: Act) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = bias[i] as f64;
                for p in 0..k {
                    s += a[i * k + p] as f64 * b[p * n + j] as f64;
                }
                c[i * n + j] = act.apply(s as f32);
            }
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matches_naive(m in 1usize..40, n in 1usize..200, k in 0usize..900, threads in 1usize..3, relu in any::<bool>(), seed in any::<u64>()) {
            let mut s = seed | 1;
            let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5 };
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..m).map(|_| rnd()).collect();
            let act = if relu { Act::Relu } else { Act::Clip { lo: -0.1, hi: 0.2 } };
            let mut c = vec![f32::NAN; m * n];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let want = naive(m, n, k, &a, &b, &bias, act);
            for isa in F32Isa::all_supported() {
                c.fill(f32::NAN);
                pool.install(|| sgemm_bias_act(isa, m, n, k, &a, k, &b, n, &bias, act, &mut c, n, threads));
                for (x, y) in c.iter().zip(&want) {
                    prop_assert!((x - y).abs() <= 1e-4 * (1.0 + k as f32).sqrt(), "{:?}: {} vs {}", isa, x, y);
                }
            }
        }

        /// Tall products: several row blocks of the AVX2 kernel (120 rows of A per block), ragged
        /// tiles at both edges, and reduction blocks.
        #[test]
        fn tall_matches_naive(m in 100usize..400, n in 1usize..40, k in 1usize..800, threads in 1usize..3, seed in any::<u64>()) {
            let mut s = seed | 1;
            let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5 };
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..m).map(|_| rnd()).collect();
            let mut c = vec![f32::NAN; m * n];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let want = naive(m, n, k, &a, &b, &bias, Act::Relu);
            for isa in F32Isa::all_supported() {
                c.fill(f32::NAN);
                pool.install(|| sgemm_bias_act(isa, m, n, k, &a, k, &b, n, &bias, Act::Relu, &mut c, n, threads));
                for (x, y) in c.iter().zip(&want) {
                    prop_assert!((x - y).abs() <= 1e-4 * (1.0 + k as f32).sqrt(), "{:?}: {} vs {}", isa, x, y);
                }
            }
        }

        #[test]
        fn channel_vector_matches_naive(m in 1usize..120, n in 1usize..70, k in 0usize..1300, threads in 1usize..3, relu in any::<bool>(), seed in any::<u64>()) {
            let mut s = seed | 1;
            let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5 };
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..m).map(|_| rnd()).collect();
            let act = if relu { Act::Relu } else { Act::Clip { lo: -0.1, hi: 0.2 } };
            let (at, mp) = pack_t(m, k, &a, k);
            let mut c = vec![f32::NAN; m * n];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let want = naive(m, n, k, &a, &b, &bias, act);
            for isa in F32Isa::all_supported() {
                c.fill(f32::NAN);
                pool.install(|| sgemm_t(isa, m, n, k, &at, mp, &b, BRows::Strided(n), &bias, act, &mut c, n, threads));
                for (x, y) in c.iter().zip(&want) {
                    prop_assert!((x - y).abs() <= 1e-4 * (1.0 + k as f32).sqrt(), "{:?}: {} vs {}", isa, x, y);
                }
            }
        }

        #[test]
        fn gemv_matches_naive(n in 1usize..400, k in 0usize..300, threads in 1usize..3, bias in any::<bool>(), seed in any::<u64>()) {
            let mut s = seed | 1;
            let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5 };
            let x: Vec<f32> = (0..k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let wp = pack_gemv(k, n, &w);
            let mut y = vec![f32::NAN; n];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| gemv_bias_act(F32Isa::best(), &x, &wp, k, n, bias.then_some(&b[..]), Act::Relu, &mut y, threads));
            // naive's bias is per row; the matrix-vector bias is per column
            let want: Vec<f32> = naive(1, n, k, &x, &w, &[0.0], Act::None)
                .iter()
                .zip(&b)
                .map(|(v, bj)| (v + if bias { *bj } else { 0.0 }).max(0.0))
                .collect();
            for (a, c) in y.iter().zip(&want) {
                prop_assert!((a - c).abs() <= 1e-4 * (1.0 + k as f32).sqrt(), "{} vs {}", a, c);
            }
        }
    }
}
