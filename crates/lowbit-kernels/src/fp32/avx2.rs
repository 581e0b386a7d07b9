//! lowbit's AVX2 + FMA f32 kernels: the 6×16 GEMM tile over packed B panels ([`gemm`]), the
//! batch-1 matrix-vector panel ([`gemv_panel`]), stride-2 gathers ([`gather2`]), and depthwise
//! convolution and max pooling on a padded, phase-split plane layout ([`windows`]). Callers hold an [`crate::isa::F32Isa::Avx2`] path (or
//! AVX-512, which includes AVX2 and FMA).
//!
//! Unlike the AVX-512 tile, which streams B rows straight from the activations with masked loads,
//! this one copies each 16-column panel of B (one reduction block) into a contiguous buffer first:
//! AVX2 has no cheap masked loads for ragged edges, and a panel of unaligned rows would span twice
//! the cache lines of L1. The copy is amortised over every row tile of a block of A rows.

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::fp32::layout::{degenerate, k_blocks, split_gemm, BRows, Planes, Ptr, GEMV_AHEAD, KC, MR};
use crate::geom::ConvGeom;

/// Columns of C per tile (two ymm vectors).
const NR2: usize = 16;
/// Rows of A per block: `MC × KC` weights (180 KB) stay in L2 while every B panel of the block
/// streams past them.
const MC: usize = 120;

std::thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PLANE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Copies rows `[k0, k1)`, columns `[j, j + cols)` of B into `dst` as `k1 - k0` rows of 16, zero
/// past `cols`.
#[inline(always)]
unsafe fn pack_b(k0: usize, k1: usize, b: *const f32, rows: BRows, j: usize, cols: usize, dst: *mut f32) {
    for p in k0..k1 {
        let (src, d) = (b.add(rows.off(p) + j), dst.add((p - k0) * NR2));
        if cols == NR2 {
            _mm256_storeu_ps(d, _mm256_loadu_ps(src));
            _mm256_storeu_ps(d.add(8), _mm256_loadu_ps(src.add(8)));
        } else {
            for c in 0..NR2 {
                *d.add(c) = if c < cols { *src.add(c) } else { 0.0 };
            }
        }
    }
}

/// Lane masks: eight all-ones then eight zeros; the mask of the first `n` lanes starts at `8 - n`.
static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// The mask of the first `n <= 8` lanes.
#[inline(always)]
unsafe fn lanes(n: usize) -> __m256i {
    _mm256_loadu_si256(MASKS.as_ptr().add(8 - n.min(8)) as *const __m256i)
}

/// Loads `n` floats (all eight if `n >= 8`; the rest zero).
#[inline(always)]
pub(crate) unsafe fn load_part(p: *const f32, n: usize) -> __m256 {
    if n >= 8 {
        return _mm256_loadu_ps(p);
    }
    _mm256_maskload_ps(p, lanes(n))
}

/// Stores the first `n` lanes of `v` (all eight if `n >= 8`) with 4-, 2- and 1-lane stores (AMD's
/// masked stores are slow).
#[inline(always)]
pub(crate) unsafe fn store_part(p: *mut f32, v: __m256, n: usize) {
    if n >= 8 {
        return _mm256_storeu_ps(p, v);
    }
    let (mut p, mut n, mut r) = (p, n, _mm256_castps256_ps128(v));
    if n >= 4 {
        _mm_storeu_ps(p, r);
        r = _mm256_extractf128_ps::<1>(v);
        p = p.add(4);
        n -= 4;
    }
    if n >= 2 {
        _mm_storel_pd(p as *mut f64, _mm_castps_pd(r));
        r = _mm_movehl_ps(r, r);
        p = p.add(2);
        n -= 2;
    }
    if n == 1 {
        _mm_store_ss(p, r);
    }
}

/// One R×(8·V) tile of C over `[k0, k1)`, B from a packed panel (rows of 16).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const V: usize>(
    k0: usize,
    k1: usize,
    a: *const f32,
    lda: usize,
    panel: *const f32,
    bias: *const f32,
    lo: f32,
    hi: f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    last: bool,
) {
    let n: [usize; V] = std::array::from_fn(|v| cols.saturating_sub(v * 8));
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (v, x) in row.iter_mut().enumerate() {
            *x = if k0 == 0 { _mm256_set1_ps(*bias.add(r)) } else { load_part(c.add(r * ldc + v * 8), n[v]) };
        }
    }
    let mut bp = panel;
    for p in k0..k1 {
        let bv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(bp.add(v * 8)));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
            for v in 0..V {
                row[v] = _mm256_fmadd_ps(av, bv[v], row[v]);
            }
        }
        bp = bp.add(NR2);
    }
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    for (r, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            let y = if last { _mm256_min_ps(_mm256_max_ps(*x, vlo), vhi) } else { *x };
            store_part(c.add(r * ldc + v * 8), y, n[v]);
        }
    }
}

/// All tiles with rows in `[i0, i1)` and columns in `[j0, j1)`.
#[target_feature(enable = "avx2,fma")]
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
    PANEL.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < KC * NR2 {
            buf.resize(KC * NR2, 0.0);
        }
        let panel = buf.as_mut_ptr();
        k_blocks(k, KC, |k0, k1, last| {
            let mut ib = i0;
            while ib < i1 {
                let ie = (ib + MC).min(i1);
                let mut j = j0;
                while j < j1 {
                    let cols = (j1 - j).min(NR2);
                    pack_b(k0, k1, b, rows, j, cols, panel);
                    let mut i = ib;
                    while i < ie {
                        let (ap, cp, bsp) = (a.add(i * lda), c.add(i * ldc + j), bias.add(i));
                        macro_rules! go {
                            ($r:literal) => {
                                if cols > 8 {
                                    tile::<$r, 2>(k0, k1, ap, lda, panel, bsp, lo, hi, cp, ldc, cols, last)
                                } else {
                                    tile::<$r, 1>(k0, k1, ap, lda, panel, bsp, lo, hi, cp, ldc, cols, last)
                                }
                            };
                        }
                        match (ie - i).min(MR) {
                            6 => go!(6),
                            5 => go!(5),
                            4 => go!(4),
                            3 => go!(3),
                            2 => go!(2),
                            _ => go!(1),
                        }
                        i += MR;
                    }
                    j += NR2;
                }
                ib = ie;
            }
        });
    })
}

/// `C = clamp(bias + A · B, lo, hi)`, B's rows located by `rows` (see [`crate::fp32::gemm::sgemm_rows`]).
///
/// # Safety
/// AVX2 and FMA must be available; the pointers must be valid for the shapes (the callers assert it).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
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
    let (pa, pb, pc, pbias, rows) = (Ptr(a), Ptr(b), Ptr(c), Ptr(bias.as_ptr()), Ptr(rows));
    split_gemm(m, n, MR, NR2, threads, |i0, i1, j0, j1| {
        block(i0, i1, j0, j1, k, pa.get(), lda, pb.get(), rows.get(), pbias.get(), lo, hi, pc.get(), ldc)
    });
}

/// Accumulates `x · panel` into `y` (`panel` is `[k][y.len()]`, at most 128 columns), 64 columns
/// (eight ymm accumulators) per sweep of the panel.
///
/// # Safety
/// AVX2 and FMA must be available; `x` holds `k` values and `panel` `k * y.len()`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemv_panel(x: &[f32], panel: &[f32], k: usize, y: &mut [f32]) {
    let wd = y.len();
    debug_assert!(x.len() >= k && panel.len() >= k * wd);
    for h0 in (0..wd).step_by(64) {
        let hn = (wd - h0).min(64);
        let nv = hn.div_ceil(8);
        let n: [usize; 8] = std::array::from_fn(|v| hn.saturating_sub(v * 8).min(8));
        let mut acc: [__m256; 8] =
            std::array::from_fn(
                |v| if v < nv { load_part(y.as_ptr().add(h0 + v * 8), n[v]) } else { _mm256_setzero_ps() },
            );
        let mut row = panel.as_ptr().add(h0);
        if nv == 8 {
            for p in 0..k {
                let xv = _mm256_set1_ps(*x.get_unchecked(p));
                // As on AVX-512: the panel's rows fetched ahead of the hardware prefetcher.
                for l in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(row.add(GEMV_AHEAD * wd + l * 16) as *const i8);
                }
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(xv, _mm256_loadu_ps(row.add(v * 8)), *a);
                }
                row = row.add(wd);
            }
        } else {
            for p in 0..k {
                let xv = _mm256_set1_ps(*x.get_unchecked(p));
                for (v, a) in acc.iter_mut().enumerate().take(nv) {
                    *a = _mm256_fmadd_ps(xv, load_part(row.add(v * 8), n[v]), *a);
                }
                row = row.add(wd);
            }
        }
        for (v, a) in acc.iter().enumerate().take(nv) {
            store_part(y.as_mut_ptr().add(h0 + v * 8), *a, n[v]);
        }
    }
}

/// The per-layer layout of AVX2 depthwise convolution: each channel's plane is copied into padded
/// rows (`(oh - 1)·sh + (kh - 1)·dh + 1` of them), each holding `s = sw` phases of `pwq` columns,
/// phase `q` column `j` being padded column `s·j + q` (zero outside the image). Tap `(ky, kx)` of
/// output `(oy, ox)` then sits at `oy·sh·rl + offs[ky·kw + kx] + ox`, `rl = s·pwq`: a constant
/// offset per tap, so strided windows load contiguous vectors like stride-1 ones.
struct DwLayout {
    pwq: usize,
    rl: usize,
    ph: usize,
    /// Two vectors (16 columns) per block; one for planes at most 8 wide.
    v2: bool,
    offs: Vec<usize>,
    /// Channels laid out per call of [`dw_channels`] (about 24 KB of planes): the kernel reads a
    /// plane only after the copies of the others were written, not straight after its own stores.
    group: usize,
}

impl DwLayout {
    fn new(g: &ConvGeom) -> DwLayout {
        let s = g.sw.max(1);
        let v2 = g.ow > 8;
        let vw = if v2 { 16 } else { 8 };
        // Multiple of 8: stride 2 splits whole 16-column runs into both phases.
        let pwq = (g.ow.div_ceil(vw) * vw + (g.kw - 1) * g.dw / s).div_ceil(8) * 8;
        let rl = s * pwq;
        let ph = (g.oh.max(1) - 1) * g.sh + (g.kh - 1) * g.dh + 1;
        let mut offs = Vec::with_capacity(g.kh * g.kw);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let d = kx * g.dw;
                offs.push(ky * g.dh * rl + (d % s) * pwq + d / s);
            }
        }
        let group = (6144 / (ph * rl).max(1)).clamp(1, 32);
        DwLayout { pwq, rl, ph, v2, offs, group }
    }
}

/// Sets every element of `d` to `v`'s lanes, eight at a time.
#[inline(always)]
unsafe fn fill(d: &mut [f32], z: __m256) {
    let (p, n) = (d.as_mut_ptr(), d.len());
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(p.add(i), z);
        i += 8;
    }
    store_part(p.add(i), z, n - i);
}

/// `d = s` (equal lengths), eight lanes at a time.
#[inline(always)]
unsafe fn copy(d: &mut [f32], s: &[f32]) {
    let n = d.len().min(s.len());
    let (dp, sp) = (d.as_mut_ptr(), s.as_ptr());
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(dp.add(i), _mm256_loadu_ps(sp.add(i)));
        i += 8;
    }
    store_part(dp.add(i), load_part(sp.add(i), n - i), n - i);
}

/// Lanes `2i + P` (`P` = 0: even, 1: odd) of the 16 floats `a`, `b`, in order.
#[inline(always)]
unsafe fn half<const P: i32>(a: __m256, b: __m256) -> __m256 {
    // Within 128-bit lanes: [a0 a2 b0 b2 | a4 a6 b4 b6] (P = 0); the 64-bit permute orders the pairs.
    let x = if P == 0 { _mm256_shuffle_ps::<0b10_00_10_00>(a, b) } else { _mm256_shuffle_ps::<0b11_01_11_01>(a, b) };
    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(x)))
}

/// `dst[i] = src[2i]`: eight at a time from 16 inputs (shuffles), the rest one by one.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gather2(dst: &mut [f32], src: &[f32]) {
    let mut i = 0;
    while i + 8 <= dst.len() && 2 * i + 16 <= src.len() {
        let (a, b) = (_mm256_loadu_ps(src.as_ptr().add(2 * i)), _mm256_loadu_ps(src.as_ptr().add(2 * i + 8)));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), half::<0>(a, b));
        i += 8;
    }
    for (j, v) in dst.iter_mut().enumerate().skip(i) {
        *v = src[2 * j];
    }
}

/// Copies one channel's `plane` into `dst` (`ph` rows of `rl`): `pl` pads, the image row, pads;
/// rows of pads above and below (the pad `v`: zero for convolution, -inf for max pooling). For
/// stride 1 that is the layout; wider strides split the phases afterwards ([`split_phases`]).
#[inline(always)]
unsafe fn pad_rows(g: &ConvGeom, lay: &DwLayout, plane: &[f32], dst: &mut [f32], v: f32) {
    let (rl, z) = (lay.rl, _mm256_set1_ps(v));
    for (y, row) in dst[..lay.ph * rl].chunks_mut(rl).enumerate() {
        let iy = y as isize - g.pt as isize;
        if iy < 0 || iy >= g.h as isize {
            fill(row, z);
            continue;
        }
        let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
        let a = g.pl.min(rl);
        let n = g.w.min(rl - a);
        fill(&mut row[..a], z);
        copy(&mut row[a..a + n], &src[..n]);
        fill(&mut row[a + n..], z);
    }
}

/// Stride 2 in one pass: every padded row of `plane` straight into its two phases in `dst` (phase
/// `q` holds padded column `2j + q`, i.e. image column `2j + q - pl`). Sixteen image columns give
/// their even and odd halves with two shuffles, each stored whole into the phase it belongs to;
/// no row is stored and re-read, as [`pad_rows`] + [`split_phases`] do.
#[inline(always)]
unsafe fn pad_split2(g: &ConvGeom, lay: &DwLayout, plane: &[f32], dst: &mut [f32], v: f32) {
    let (pwq, rl, z) = (lay.pwq, lay.rl, _mm256_set1_ps(v));
    for (y, row) in dst[..lay.ph * rl].chunks_mut(rl).enumerate() {
        fill(row, z);
        let iy = y as isize - g.pt as isize;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
        // Half-vector `i0..i0 + 8` of even (odd) columns lands in phase `(pl + 0) % 2` (`(pl + 1) % 2`)
        // from index `i0 + (pl + 0) / 2` (`i0 + (pl + 1) / 2`).
        let (q0, j0) = (g.pl % 2, g.pl / 2);
        let (q1, j1) = ((g.pl + 1) % 2, (g.pl + 1) / 2);
        // The last columns are loaded masked, the lanes past the image set to the pad (the stores
        // only write pad there, inside the phase row).
        let mut i0 = 0;
        while 2 * i0 < g.w && i0 + j1.max(j0) + 8 <= pwq {
            let n = g.w - 2 * i0;
            let (a, b) = if n >= 16 {
                (_mm256_loadu_ps(src.as_ptr().add(2 * i0)), _mm256_loadu_ps(src.as_ptr().add(2 * i0 + 8)))
            } else {
                let (ma, mb) = (lanes(n), lanes(n.saturating_sub(8)));
                let a = _mm256_maskload_ps(src.as_ptr().add(2 * i0), ma);
                let b = _mm256_maskload_ps(src.as_ptr().add((2 * i0 + 8).min(g.w)), mb);
                (_mm256_blendv_ps(z, a, _mm256_castsi256_ps(ma)), _mm256_blendv_ps(z, b, _mm256_castsi256_ps(mb)))
            };
            _mm256_storeu_ps(row.as_mut_ptr().add(q0 * pwq + i0 + j0), half::<0>(a, b));
            _mm256_storeu_ps(row.as_mut_ptr().add(q1 * pwq + i0 + j1), half::<1>(a, b));
            i0 += 8;
        }
        for (i, &x) in src.iter().enumerate().skip((2 * i0).min(g.w)) {
            let p = i + g.pl;
            if p / 2 < pwq {
                row[(p % 2) * pwq + p / 2] = x;
            }
        }
    }
}

/// Splits every padded row of `src` (as [`pad_rows`] wrote it) into its `s` phases in `dst`.
#[inline(always)]
unsafe fn split_phases(g: &ConvGeom, lay: &DwLayout, src: &[f32], dst: &mut [f32]) {
    let (s, pwq, rl) = (g.sw, lay.pwq, lay.rl);
    for (row, d) in src[..lay.ph * rl].chunks(rl).zip(dst.chunks_mut(rl)) {
        for q in 0..s {
            for j in 0..pwq {
                d[q * pwq + j] = row[s * j + q];
            }
        }
    }
}

/// R output rows × 8·V columns from `ox0`: every tap is one broadcast weight and R·V loads (the
/// maximum instead of the weighted sum if `MAX`; `w` is then not read).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_block<const MAX: bool, const R: usize, const V: usize, const T: usize>(
    offs: &[usize],
    w: *const f32,
    base: *const f32,
    rowstep: usize,
    bias: f32,
    vlo: __m256,
    vhi: __m256,
    out: *mut f32,
    ow: usize,
    cols: usize,
) {
    let nt = if T > 0 { T } else { offs.len() };
    let mut acc = [[_mm256_set1_ps(bias); V]; R];
    for t in 0..nt {
        let off = *offs.get_unchecked(t);
        let wv = if MAX { _mm256_setzero_ps() } else { _mm256_broadcast_ss(&*w.add(t)) };
        for (r, row) in acc.iter_mut().enumerate() {
            let p = base.add(r * rowstep + off);
            for (v, a) in row.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(p.add(v * 8));
                *a = if MAX { _mm256_max_ps(*a, x) } else { _mm256_fmadd_ps(wv, x, *a) };
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            let y = _mm256_min_ps(_mm256_max_ps(*a, vlo), vhi);
            store_part(out.add(r * ow + v * 8), y, cols.saturating_sub(v * 8));
        }
    }
}

/// Sliding windows over every plane of `x` (`[planes, h, w]`) into `out` (`[planes, oh, ow]`), any
/// stride, dilation and padding: depthwise convolution with weights `w` (`[planes, kh·kw]`), `bias`
/// (`[planes]`) and the clamp `[lo, hi]` fused, or with `MAX` max pooling (`w` and `bias` not read,
/// no clamp). Groups of planes ([`DwLayout::group`]) are laid out, then convolved; with `parallel`
/// the groups go to the thread pool.
///
/// # Safety
/// AVX2 and FMA must be available.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn windows<const MAX: bool>(p: &Planes, planes: usize, out: &mut [f32], parallel: bool) {
    use rayon::prelude::*;
    let Planes { g, x, w, bias, lo, hi } = *p;
    let (ip, op, kk) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    assert!(
        x.len() >= planes * ip && out.len() >= planes * op && (MAX || (w.len() >= planes * kk && bias.len() >= planes))
    );
    if op == 0 {
        return;
    }
    let lay = DwLayout::new(g);
    let job = |i: usize, o: &mut [f32]| {
        let (c0, nc) = (i * lay.group, o.len() / op);
        let (wg, bg) = if MAX { (&[][..], &[][..]) } else { (&w[c0 * kk..(c0 + nc) * kk], &bias[c0..c0 + nc]) };
        // SAFETY: the caller's path has AVX2 and FMA.
        unsafe { dw_channels::<MAX>(g, &lay, nc, &x[c0 * ip..(c0 + nc) * ip], wg, bg, lo, hi, o) };
    };
    let out = &mut out[..planes * op];
    if parallel {
        out.par_chunks_mut(lay.group * op).enumerate().for_each(|(i, o)| job(i, o));
    } else {
        out.chunks_mut(lay.group * op).enumerate().for_each(|(i, o)| job(i, o));
    }
}

/// [`windows`] on `nc` planes laid out together.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_channels<const MAX: bool>(
    g: &ConvGeom,
    lay: &DwLayout,
    nc: usize,
    planes: &[f32],
    w: &[f32],
    bias: &[f32],
    lo: f32,
    hi: f32,
    out: &mut [f32],
) {
    let (kk, ip, op) = (lay.offs.len(), g.h * g.w, g.oh * g.ow);
    let psz = lay.ph * lay.rl;
    PLANE.with(|buf| {
        let mut buf = buf.borrow_mut();
        // The planes (stride 2: straight into their phases), and for strides over 2 the padded rows
        // before their phases are split. Each
        // pass reads what the previous one wrote a whole group earlier, not straight after the
        // stores (a load that spans two recent stores waits for them to reach the cache).
        let split = g.sw > 2;
        let need = nc * psz * if split { 2 } else { 1 };
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        let (pbuf, tmp) = buf.split_at_mut(nc * psz);
        for c in 0..nc {
            let fillv = if MAX { f32::NEG_INFINITY } else { 0.0 };
            if g.sw == 2 {
                pad_split2(g, lay, &planes[c * ip..(c + 1) * ip], &mut pbuf[c * psz..(c + 1) * psz], fillv);
                continue;
            }
            let d = if split { &mut tmp[c * psz..(c + 1) * psz] } else { &mut pbuf[c * psz..(c + 1) * psz] };
            pad_rows(g, lay, &planes[c * ip..(c + 1) * ip], d, fillv);
        }
        if split {
            for c in 0..nc {
                split_phases(g, lay, &tmp[c * psz..(c + 1) * psz], &mut pbuf[c * psz..(c + 1) * psz]);
            }
        }
        for c in 0..nc {
            let (wc, bc) = if MAX { (&[][..], f32::NEG_INFINITY) } else { (&w[c * kk..(c + 1) * kk], bias[c]) };
            dw_plane::<MAX>(g, lay, &pbuf[c * psz..], wc, bc, lo, hi, &mut out[c * op..(c + 1) * op]);
        }
    })
}

/// One laid-out plane `pbuf` convolved into `out`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_plane<const MAX: bool>(
    g: &ConvGeom,
    lay: &DwLayout,
    pbuf: &[f32],
    w: &[f32],
    bias: f32,
    lo: f32,
    hi: f32,
    out: &mut [f32],
) {
    let offs = &lay.offs[..];
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let (src, dst, wp) = (pbuf.as_ptr(), out.as_mut_ptr(), w.as_ptr());
    let rowstep = g.sh * lay.rl;
    macro_rules! run {
        ($t:literal, $v:literal) => {{
            let mut oy = 0;
            while oy < g.oh {
                // Rows per block: as many independent accumulators as registers allow (16
                // with one vector per row, four rows of two), so the FMA latency is hidden.
                let r = match (g.oh - oy, $v) {
                    (n, 1) if n >= 8 => 8,
                    (n, _) if n >= 4 => 4,
                    (n, _) => n,
                };
                let mut ox0 = 0;
                while ox0 < g.ow {
                    let cols = (g.ow - ox0).min(8 * $v);
                    let (b, o) = (src.add(oy * rowstep + ox0), dst.add(oy * g.ow + ox0));
                    macro_rules! blk {
                        ($r:literal) => {
                            dw_block::<MAX, $r, $v, $t>(offs, wp, b, rowstep, bias, vlo, vhi, o, g.ow, cols)
                        };
                    }
                    match r {
                        8 => blk!(8),
                        4 => blk!(4),
                        3 => blk!(3),
                        2 => blk!(2),
                        _ => blk!(1),
                    }
                    ox0 += 8 * $v;
                }
                oy += r;
            }
        }};
    }
    match (offs.len(), lay.v2) {
        (9, true) => run!(9, 2),
        (9, false) => run!(9, 1),
        (25, true) => run!(25, 2),
        (25, false) => run!(25, 1),
        (_, true) => run!(0, 2),
        (_, false) => run!(0, 1),
    }
}
