//! lowbit's own f32 GEMM for convolutions in NCHW: `C[m×n] = A[m×k] · B[k×n] + bias[m]`, then a
//! clamp-type activation, with A the (row-major) weights and B the activations (row-major, rows
//! contiguous along the spatial axis), so 1x1 convolutions need no packing at all.
//!
//! The AVX-512 microkernel holds a 6×64 tile of C in 24 zmm registers, streams B rows with
//! masked loads (ragged edges need no copies) and broadcasts A. Machines without AVX-512 use the
//! `gemm` crate. The result is compared against the reference evaluator in tests.

use lowbit_core::Act;
use rayon::prelude::*;

const MR: usize = 6;
const NR: usize = 64;
const KC: usize = 384;

#[derive(Clone, Copy)]
struct Ptr<T>(T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T: Copy> Ptr<T> {
    #[inline(always)]
    fn get(self) -> T {
        self.0
    }
}

/// Lower and upper clamp of an activation the kernel can fuse, or `None` if it must run after.
pub fn clamp_of(act: Act) -> Option<(f32, f32)> {
    match act {
        Act::None => Some((f32::NEG_INFINITY, f32::INFINITY)),
        Act::Relu => Some((0.0, f32::INFINITY)),
        Act::Clip { lo, hi } => Some((lo, hi)),
        _ => None,
    }
}

/// Is the AVX-512 kernel usable on this CPU (and not disabled by `LOWBIT_ISA=scalar|avx2`)?
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            // The same LOWBIT_ISA values the integer kernels take (one parser).
            let forced = std::env::var("LOWBIT_ISA").ok().and_then(|s| crate::int8::Isa::parse(&s).ok());
            let allowed = !matches!(forced, Some(crate::int8::Isa::Scalar | crate::int8::Isa::Avx2));
            allowed && std::arch::is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Where row `p` of B starts: every `ldb` elements, or at an arbitrary offset per row (used for
/// stride-1 convolutions, whose "im2col" rows are shifted views of the padded input).
#[derive(Clone, Copy, Debug)]
pub enum BRows<'a> {
    Strided(usize),
    Offsets(&'a [usize]),
}

impl BRows<'_> {
    #[inline(always)]
    fn off(&self, p: usize) -> usize {
        match self {
            BRows::Strided(ld) => p * ld,
            // SAFETY of callers: `p < k <= offsets.len()` is asserted on entry.
            BRows::Offsets(o) => unsafe { *o.get_unchecked(p) },
        }
    }
    fn max_end(&self, k: usize, n: usize) -> usize {
        match self {
            BRows::Strided(ld) => (k - 1) * ld + n,
            BRows::Offsets(o) => o[..k].iter().max().copied().unwrap_or(0) + n,
        }
    }
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

/// An activation the AVX-512 epilogues cannot fuse (not a clamp), applied to C afterwards.
fn act_after(act: Act, m: usize, n: usize, c: &mut [f32], ldc: usize) {
    if clamp_of(act).is_none() {
        for i in 0..m {
            crate::eltwise::apply_act(act, &mut c[i * ldc..i * ldc + n]);
        }
    }
}

/// `c[i*ldc + j] = act(bias[i] + Σ_p a[i*lda + p] * b[p*ldb + j])` for `i < m`, `j < n`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_bias_act(
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
    sgemm_rows(m, n, k, a, lda, b, BRows::Strided(ldb), bias, act, c, ldc, threads)
}

/// As [`sgemm_bias_act`] with B's rows located by `rows`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_rows(
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
    #[cfg(target_arch = "x86_64")]
    if avx512_available() {
        let (lo, hi) = clamp_of(act).unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        // SAFETY: AVX-512F is available and the asserts above bound every access.
        unsafe { avx512::gemm(m, n, k, a.as_ptr(), lda, b.as_ptr(), rows, bias, lo, hi, c.as_mut_ptr(), ldc, threads) };
        act_after(act, m, n, c, ldc);
        return;
    }
    for i in 0..m {
        c[i * ldc..i * ldc + n].fill(bias[i]);
    }
    match rows {
        // SAFETY: the asserts above bound every access.
        BRows::Strided(ldb) => unsafe {
            crate::f32conv::sgemm_acc(m, n, k, c.as_mut_ptr(), ldc, a.as_ptr(), lda, b.as_ptr(), ldb, threads)
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
        crate::eltwise::apply_act(act, &mut c[i * ldc..i * ldc + n]);
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
    let job = |j0: usize, yc: &mut [f32]| {
        let wd = yc.len();
        match bias {
            Some(b) => yc.copy_from_slice(&b[j0..j0 + wd]),
            None => yc.fill(0.0),
        }
        let panel = &wp[j0 * k..j0 * k + k * wd];
        #[cfg(target_arch = "x86_64")]
        if avx512_available() {
            // SAFETY: AVX-512F available; the panel holds k rows of `wd` <= 128 columns.
            unsafe { avx512::gemv_panel(x, panel, k, yc) };
            crate::eltwise::apply_act(act, yc);
            return;
        }
        for (p, &xv) in x[..k].iter().enumerate() {
            yc.iter_mut().zip(&panel[p * wd..(p + 1) * wd]).for_each(|(a, &b)| *a += xv * b);
        }
        crate::eltwise::apply_act(act, yc);
    };
    if threads > 1 && n > GEMV_PANEL {
        y[..n].par_chunks_mut(GEMV_PANEL).enumerate().for_each(|(i, yc)| job(i * GEMV_PANEL, yc));
    } else {
        y[..n].chunks_mut(GEMV_PANEL).enumerate().for_each(|(i, yc)| job(i * GEMV_PANEL, yc));
    }
}

/// Output channels per panel of [`pack_t`] (three zmm vectors).
const TP: usize = 48;

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

/// Does the channel-vector kernel ([`sgemm_t`]) use the vector lanes better than the spatial one for
/// a GEMM whose B rows hold `n` useful columns out of `cols` computed ones? It does when 16-wide
/// vectors along n waste over 15% (7x7 planes: 49 of 64 lanes).
pub fn prefer_t(m: usize, n: usize, cols: usize) -> bool {
    avx512_available() && m >= 16 && (n as f64) < 0.85 * (cols.div_ceil(16) * 16) as f64
}

/// As [`sgemm_rows`], vectorised along m instead of n: zmm vectors hold 16 output channels of one
/// column, so narrow n (small planes) wastes no lanes. `at`/`mp` come from [`pack_t`]. Needs AVX-512
/// (see [`prefer_t`]); falls back to an exact scalar loop otherwise.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_t(
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
    #[cfg(target_arch = "x86_64")]
    if avx512_available() {
        let (lo, hi) = clamp_of(act).unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        // SAFETY: AVX-512F is available and the asserts above bound every access.
        unsafe {
            avx512::gemm_t(m, n, k, at.as_ptr(), mp, b.as_ptr(), rows, bias, lo, hi, c.as_mut_ptr(), ldc, threads)
        };
        act_after(act, m, n, c, ldc);
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
        crate::eltwise::apply_act(act, ci);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Accumulates `x · panel` into `y` (`panel` is `[k][y.len()]`, at most 128 columns).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemv_panel(x: &[f32], panel: &[f32], k: usize, y: &mut [f32]) {
        let wd = y.len();
        let m: [u16; 8] = std::array::from_fn(|v| mask(wd, v));
        let mut acc: [__m512; 8] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(m[v], y.as_ptr().add(v * 16)));
        let mut row = panel.as_ptr();
        for p in 0..k {
            let xv = _mm512_set1_ps(*x.get_unchecked(p));
            for v in 0..8 {
                acc[v] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m[v], row.add(v * 16)), acc[v]);
            }
            row = row.add(wd);
        }
        for v in 0..8 {
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(v * 16), m[v], acc[v]);
        }
    }

    #[inline(always)]
    fn mask(rem: usize, v: usize) -> u16 {
        let lo = v * 16;
        if rem >= lo + 16 {
            0xFFFF
        } else if rem <= lo {
            0
        } else {
            ((1u32 << (rem - lo)) - 1) as u16
        }
    }

    /// One R×(16·V) tile of C over the k-range `[k0, k1)` (V zmm vectors per row, so a ragged
    /// right edge costs only the vectors it needs).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const V: usize>(
        k0: usize,
        k1: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        rows: BRows,
        bias: *const f32,
        lo: f32,
        hi: f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        last: bool,
    ) {
        let m: [u16; V] = std::array::from_fn(|v| mask(cols, v));
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = if k0 == 0 {
                    _mm512_set1_ps(*bias.add(r))
                } else {
                    _mm512_maskz_loadu_ps(m[v], c.add(r * ldc + v * 16))
                };
            }
        }
        for p in k0..k1 {
            let bp = b.add(rows.off(p));
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(m[v], bp.add(v * 16)));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * lda + p));
                for v in 0..V {
                    row[v] = _mm512_fmadd_ps(av, bv[v], row[v]);
                }
            }
        }
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let y = if last { _mm512_min_ps(_mm512_max_ps(*x, vlo), vhi) } else { *x };
                _mm512_mask_storeu_ps(c.add(r * ldc + v * 16), m[v], y);
            }
        }
    }

    /// Runs `f(k0, k1, last)` over the reduction range `[0, k)` in blocks of `kc`.
    #[inline(always)]
    fn k_blocks(k: usize, kc: usize, mut f: impl FnMut(usize, usize, bool)) {
        let mut k0 = 0;
        loop {
            let k1 = (k0 + kc).min(k);
            f(k0, k1, k1 == k);
            if k1 == k {
                return;
            }
            k0 = k1;
        }
    }

    /// All tiles with rows in `[i0, i1)` and columns in `[j0, j1)`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        i0: usize,
        i1: usize,
        j0: usize,
        j1: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        rows: BRows,
        bias: *const f32,
        lo: f32,
        hi: f32,
        c: *mut f32,
        ldc: usize,
    ) {
        k_blocks(k, KC, |k0, k1, last| {
            let mut j = j0;
            while j < j1 {
                let cols = (j1 - j).min(NR);
                let mut i = i0;
                while i < i1 {
                    let nrows = (i1 - i).min(MR);
                    let (ap, cp) = (a.add(i * lda), c.add(i * ldc + j));
                    let (bp, bsp) = (b.add(j), bias.add(i));
                    macro_rules! go {
                        ($r:literal) => {
                            match cols.div_ceil(16) {
                                4 => tile::<$r, 4>(k0, k1, ap, lda, bp, rows, bsp, lo, hi, cp, ldc, cols, last),
                                3 => tile::<$r, 3>(k0, k1, ap, lda, bp, rows, bsp, lo, hi, cp, ldc, cols, last),
                                2 => tile::<$r, 2>(k0, k1, ap, lda, bp, rows, bsp, lo, hi, cp, ldc, cols, last),
                                _ => tile::<$r, 1>(k0, k1, ap, lda, bp, rows, bsp, lo, hi, cp, ldc, cols, last),
                            }
                        };
                    }
                    match nrows {
                        6 => go!(6),
                        5 => go!(5),
                        4 => go!(4),
                        3 => go!(3),
                        2 => go!(2),
                        _ => go!(1),
                    }
                    i += MR;
                }
                j += NR;
            }
        });
    }

    /// Empty products: nothing to do, or (k = 0) C is the clamped bias. True if handled.
    #[allow(clippy::too_many_arguments)]
    unsafe fn degenerate(
        m: usize,
        n: usize,
        k: usize,
        bias: &[f32],
        lo: f32,
        hi: f32,
        c: *mut f32,
        ldc: usize,
    ) -> bool {
        if m == 0 || n == 0 {
            return true;
        }
        if k == 0 {
            for i in 0..m {
                for j in 0..n {
                    *c.add(i * ldc + j) = bias[i].max(lo).min(hi);
                }
            }
            return true;
        }
        false
    }

    /// Reduction block of the channel-vector kernel: A^T (48 channels × KT) and B (KT × n) stay in L2.
    const KT: usize = 1024;

    /// One (16·V channels) × J columns tile of the channel-vector kernel over `[k0, k1)`. Partial
    /// sums live in C (gathered and scattered along the channel stride `ldc`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_t<const V: usize, const J: usize>(
        k0: usize,
        k1: usize,
        at: *const f32,
        ld: usize,
        b: *const f32,
        rows: BRows,
        bias: *const f32,
        lo: f32,
        hi: f32,
        c: *mut f32,
        ldc: usize,
        mrem: usize,
        last: bool,
    ) {
        let m: [u16; V] = std::array::from_fn(|v| mask(mrem, v));
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(ldc as i32),
        );
        let mut acc = [[_mm512_setzero_ps(); J]; V];
        for (v, row) in acc.iter_mut().enumerate() {
            let bv = _mm512_maskz_loadu_ps(m[v], bias.add(v * 16));
            for (j, x) in row.iter_mut().enumerate() {
                *x = if k0 == 0 {
                    bv
                } else {
                    _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m[v], idx, c.add(v * 16 * ldc + j))
                };
            }
        }
        for p in k0..k1 {
            let ap = at.add(p * ld);
            let av: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(ap.add(v * 16)));
            let bp = b.add(rows.off(p));
            for j in 0..J {
                let x = _mm512_set1_ps(*bp.add(j));
                for v in 0..V {
                    acc[v][j] = _mm512_fmadd_ps(av[v], x, acc[v][j]);
                }
            }
        }
        let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        for (v, row) in acc.iter().enumerate() {
            for (j, x) in row.iter().enumerate() {
                let y = if last { _mm512_min_ps(_mm512_max_ps(*x, vlo), vhi) } else { *x };
                _mm512_mask_i32scatter_ps::<4>(c.add(v * 16 * ldc + j), m[v], idx, y);
            }
        }
    }

    /// Channel rows `[i0, i1)` (a multiple of 16 apart except at m) of the channel-vector kernel.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_t(
        i0: usize,
        i1: usize,
        n: usize,
        k: usize,
        at: *const f32,
        mp: usize,
        b: *const f32,
        rows: BRows,
        bias: *const f32,
        lo: f32,
        hi: f32,
        c: *mut f32,
        ldc: usize,
    ) {
        // Columns per tile: as even a split of n into tiles of at most 8 as there is.
        let jw = n.div_ceil(n.div_ceil(8));
        k_blocks(k, KT, |k0, k1, last| {
            let mut i = i0;
            while i < i1 {
                let mrem = i1 - i;
                // This channel panel of pack_t: 48 wide except the last.
                let (ap, ld) = (at.add(i * k), TP.min(mp - i));
                let (bsp, ci) = (bias.add(i), c.add(i * ldc));
                let mut j = 0;
                while j < n {
                    let cols = (n - j).min(jw);
                    let (bp, cp) = (b.add(j), ci.add(j));
                    macro_rules! go {
                        ($v:literal) => {
                            match cols {
                                8 => tile_t::<$v, 8>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                                7 => tile_t::<$v, 7>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                                6 => tile_t::<$v, 6>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                                5 => tile_t::<$v, 5>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                                4 => tile_t::<$v, 4>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                                3 => tile_t::<$v, 3>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                                2 => tile_t::<$v, 2>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                                _ => tile_t::<$v, 1>(k0, k1, ap, ld, bp, rows, bsp, lo, hi, cp, ldc, mrem, last),
                            }
                        };
                    }
                    match mrem.div_ceil(16) {
                        1 => go!(1),
                        2 => go!(2),
                        _ => go!(3),
                    }
                    j += cols;
                }
                i += TP;
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_t(
        m: usize,
        n: usize,
        k: usize,
        at: *const f32,
        mp: usize,
        b: *const f32,
        rows: BRows,
        bias: &[f32],
        lo: f32,
        hi: f32,
        c: *mut f32,
        ldc: usize,
        threads: usize,
    ) {
        if degenerate(m, n, k, bias, lo, hi, c, ldc) {
            return;
        }
        let bias = bias.as_ptr();
        let tiles = m.div_ceil(TP);
        if threads <= 1 || tiles < 2 {
            block_t(0, m, n, k, at, mp, b, rows, bias, lo, hi, c, ldc);
            return;
        }
        let (pa, pb, pc, pbias, rows) = (Ptr(at), Ptr(b), Ptr(c), Ptr(bias), Ptr(rows));
        let parts = (threads * 2).min(tiles);
        let per = tiles.div_ceil(parts);
        (0..parts).into_par_iter().for_each(|t| {
            let (i0, i1) = ((t * per * TP).min(m), ((t + 1) * per * TP).min(m));
            if i0 < i1 {
                block_t(i0, i1, n, k, pa.get(), mp, pb.get(), rows.get(), pbias.get(), lo, hi, pc.get(), ldc);
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        rows: BRows,
        bias: &[f32],
        lo: f32,
        hi: f32,
        c: *mut f32,
        ldc: usize,
        threads: usize,
    ) {
        if degenerate(m, n, k, bias, lo, hi, c, ldc) {
            return;
        }
        let bias = bias.as_ptr();
        let nb = n.div_ceil(NR);
        let mb = m.div_ceil(MR);
        if threads <= 1 || (nb < 2 && mb < 2) {
            block(0, m, 0, n, k, a, lda, b, rows, bias, lo, hi, c, ldc);
            return;
        }
        let (pa, pb, pc, pbias) = (Ptr(a), Ptr(b), Ptr(c), Ptr(bias));
        let rows = Ptr(rows);
        // Split the larger operand: columns (B/C) when B is the bigger stream, rows (A/C) when the
        // weights are, so no thread streams the whole of the big matrix.
        let parts = threads * 2;
        if nb >= parts && (n >= m || mb < parts) {
            let per = nb.div_ceil(parts);
            (0..parts).into_par_iter().for_each(|t| {
                let (j0, j1) = ((t * per * NR).min(n), ((t + 1) * per * NR).min(n));
                if j0 < j1 {
                    block(0, m, j0, j1, k, pa.get(), lda, pb.get(), rows.get(), pbias.get(), lo, hi, pc.get(), ldc);
                }
            });
        } else {
            let per = mb.div_ceil(parts);
            (0..parts).into_par_iter().for_each(|t| {
                let (i0, i1) = ((t * per * MR).min(m), ((t + 1) * per * MR).min(m));
                if i0 < i1 {
                    block(i0, i1, 0, n, k, pa.get(), lda, pb.get(), rows.get(), pbias.get(), lo, hi, pc.get(), ldc);
                }
            });
        }
    }
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
            pool.install(|| sgemm_bias_act(m, n, k, &a, k, &b, n, &bias, act, &mut c, n, threads));
            let want = naive(m, n, k, &a, &b, &bias, act);
            for (x, y) in c.iter().zip(&want) {
                prop_assert!((x - y).abs() <= 1e-4 * (1.0 + k as f32).sqrt(), "{} vs {}", x, y);
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
            pool.install(|| sgemm_t(m, n, k, &at, mp, &b, BRows::Strided(n), &bias, act, &mut c, n, threads));
            let want = naive(m, n, k, &a, &b, &bias, act);
            for (x, y) in c.iter().zip(&want) {
                prop_assert!((x - y).abs() <= 1e-4 * (1.0 + k as f32).sqrt(), "{} vs {}", x, y);
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
            pool.install(|| gemv_bias_act(&x, &wp, k, n, bias.then_some(&b[..]), Act::Relu, &mut y, threads));
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
