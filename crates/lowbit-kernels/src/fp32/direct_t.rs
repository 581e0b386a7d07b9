//! f32 convolution straight from the shifted rows of a padded input, with output channels in the
//! vector lanes: a tile is up to 64 output channels (four zmm vectors; on AVX2 16 channels, two
//! ymm vectors, of a panel) × J pixels of one output row, every tap a broadcast of one input value
//! times one weight vector, the J × V accumulators transposed to channel planes in registers at the
//! end.
//!
//! The spatial GEMM over shifted rows ([`crate::fp32::conv`]) computes the `(kw - 1)·dw` padding
//! columns of every row (14 of 16 lanes on 14x14 planes) and writes a padded block that is then
//! compacted; here every lane is an output channel and every column an output pixel, written once
//! where it belongs. Each output is the same FMA chain (the bias, then tap by tap in reduction order)
//! as the spatial kernel's, so the two give the same bits ([`rows_ref`] is the portable statement
//! of that chain).

use rayon::prelude::*;

use crate::fp32::layout::Ptr;
use crate::isa::F32Isa;

/// Most vectors (16 channels each) per tile.
const VMAX: usize = 4;
/// Accumulators a tile may hold, of the 32 zmm registers (the rest hold the weights and the
/// broadcast). 28 would fit, but LLVM then keeps one accumulator on the stack, stored every step:
/// 16->16 at 28x28 (one-vector tiles) ran at 22 GMAC/s against 53 with 24 (AMD EPYC Zen 4).
const ACC: usize = 24;
/// The same on AVX2's 16 ymm registers: 12 accumulators, two weight vectors and the broadcast.
const ACC2: usize = 12;
/// AVX2 tiles sharing one reduction block (their accumulators: 6 KB).
const GT2: usize = 16;

/// Weights laid out for [`rows`]: panels of up to 64 output channels on AVX-512 (the last
/// `16·⌈rest/16⌉` wide), of up to 16 on AVX2 and the portable path (the last `8·⌈rest/8⌉`), each
/// `[k][width]` contiguous from `i0 · k`, zeros in the padding channels.
#[derive(Clone, Debug)]
pub struct DirectT {
    w: Vec<f32>,
    m: usize,
    k: usize,
    isa: F32Isa,
}

impl DirectT {
    /// Packs `a` (`[m][k]`, row-major: ONNX's `[c_out][c_in·kh·kw]`) for path `isa` (AVX-512 and
    /// AVX2 have tiles; any other runs [`rows_ref`]).
    pub fn new(isa: F32Isa, m: usize, k: usize, a: &[f32]) -> DirectT {
        assert!(a.len() >= m * k);
        let vl = Self::grid(isa).0;
        let mut d = DirectT { w: vec![0f32; m.div_ceil(vl) * vl * k], m, k, isa };
        for (i0, wd) in d.panels().collect::<Vec<_>>() {
            for i in i0..(i0 + wd).min(m) {
                for p in 0..k {
                    d.w[i0 * k + p * wd + i - i0] = a[i * k + p];
                }
            }
        }
        d
    }

    /// f32 elements held.
    pub fn len(&self) -> usize {
        self.w.len()
    }

    /// Whether no weights are held (no output channels).
    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }

    /// The vector width and the most vectors of a panel on this path: four zmm vectors on
    /// AVX-512; on AVX2 two ymm vectors, so that a panel's weights (`16 · k` floats) stay in L2
    /// (a 64-wide panel of a 256-channel 3x3 layer is 590 KB: 25 GMAC/s against 40 for the
    /// spatial GEMM, AMD EPYC Zen 3).
    pub(crate) fn grid(isa: F32Isa) -> (usize, usize) {
        if isa == F32Isa::Avx512 {
            (16, VMAX)
        } else {
            (8, 2)
        }
    }

    /// The panels: (first channel, width in lanes).
    fn panels(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.panel_count()).map(move |i| self.panel(i))
    }

    /// How many panels the channels take.
    fn panel_count(&self) -> usize {
        let (vl, vmax) = Self::grid(self.isa);
        self.m.div_ceil(vl * vmax)
    }

    /// Panel `i`: (first channel, width in lanes; the last `vl·⌈rest/vl⌉` wide).
    fn panel(&self, i: usize) -> (usize, usize) {
        let (vl, vmax) = Self::grid(self.isa);
        let (mp, i0) = (self.m.div_ceil(vl) * vl, i * vl * vmax);
        (i0, (vl * vmax).min(mp - i0))
    }
}

/// The output rows `y0..y1` of a convolution computed from shifted rows: output `(c, y, x)` =
/// clamp(`bias[c] + Σ_p w[c][p] · xpad[offs[p] + y·ry + x·sx]`, lo, hi) for `x < ow`, written at
/// `out[c·cs + (y - y0)·rs + x]` (`ry`: input elements per output row, `sx`: 1 or 2, the stride).
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub xpad: &'a [f32],
    pub offs: &'a [usize],
    pub ry: usize,
    pub sx: usize,
    pub ow: usize,
    pub y0: usize,
    pub y1: usize,
    pub bias: &'a [f32],
    pub lo: f32,
    pub hi: f32,
    pub cs: usize,
    pub rs: usize,
    /// Taps per reduction block on AVX2 (`usize::MAX`: one block). 1x1 convolutions read a new
    /// input row per tap: 128 keeps a block's input rows and weights in L1 while a group of tiles
    /// reads them (AMD EPYC Zen 3, 960->160 at 7x7: 34 -> 41 GMAC/s); 3x3 windows reuse each row
    /// for three taps and only lose to the blocks (16->16 at 28x28: 38.9 -> 37.1 with blocks of 128).
    pub kb: usize,
}

impl Rows<'_> {
    fn check(&self, d: &DirectT, out: &[f32]) {
        assert!(self.offs.len() >= d.k && self.bias.len() >= d.m && self.y0 <= self.y1);
        assert!(self.sx == 1 || self.sx == 2, "column stride {}", self.sx);
        if d.m == 0 || self.ow == 0 || self.y0 == self.y1 {
            return;
        }
        let last = (self.y1 - 1) * self.ry + (self.ow - 1) * self.sx + 1;
        assert!(d.k == 0 || self.offs[..d.k].iter().max().unwrap() + last <= self.xpad.len());
        assert!(out.len() >= (d.m - 1) * self.cs + (self.y1 - self.y0 - 1) * self.rs + self.ow);
    }
}

/// Runs [`Rows`] on the path the weights were packed for (`threads` > 1: tasks of (panel, row)
/// on the pool).
pub fn rows(d: &DirectT, r: &Rows, out: &mut [f32], threads: usize) {
    r.check(d, out);
    if d.m == 0 || r.ow == 0 || r.y0 == r.y1 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if (d.isa == F32Isa::Avx512 || d.isa == F32Isa::Avx2) && d.isa.supported() {
        let ny = r.y1 - r.y0;
        let outp = Ptr(out.as_mut_ptr());
        let wide = d.isa == F32Isa::Avx512;
        let task = |t: usize| {
            let ((i0, wd), y) = (d.panel(t / ny), r.y0 + t % ny);
            // SAFETY: the path's features are present; `check` bounds every read and write, and
            // each task writes only its own panel's channels of its own row.
            unsafe {
                if wide {
                    row_avx512(d, r, i0, wd, y, outp.get())
                } else {
                    row_avx2(d, r, i0, wd, y, outp.get())
                }
            };
        };
        let n = d.panel_count() * ny;
        if threads > 1 && n > 1 {
            (0..n).into_par_iter().with_min_len(n.div_ceil(4 * threads)).for_each(task);
        } else {
            (0..n).for_each(task);
        }
        return;
    }
    rows_ref(d, r, out);
}

/// The portable statement of [`rows`]: the same FMA chain per output, element by element.
pub fn rows_ref(d: &DirectT, r: &Rows, out: &mut [f32]) {
    r.check(d, out);
    for (i0, wd) in d.panels() {
        for c in i0..(i0 + wd).min(d.m) {
            for y in r.y0..r.y1 {
                for x in 0..r.ow {
                    let mut acc = r.bias[c];
                    for p in 0..d.k {
                        let xv = r.xpad[r.offs[p] + y * r.ry + x * r.sx];
                        acc = d.w[i0 * d.k + p * wd + c - i0].mul_add(xv, acc);
                    }
                    out[c * r.cs + (y - r.y0) * r.rs + x] = acc.max(r.lo).min(r.hi);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// What one tile reads and writes.
#[cfg(target_arch = "x86_64")]
struct Tile {
    k: usize,
    /// The panel's weights, `[k][pw]`.
    w: *const f32,
    pw: usize,
    /// `xpad + y·ry + x0·sx`.
    x: *const f32,
    offs: *const usize,
    /// The panel's first bias.
    bias: *const f32,
    /// Channels of the panel that exist.
    mrem: usize,
    lo: f32,
    hi: f32,
    /// Output of the panel's first channel at pixel `x0`.
    out: *mut f32,
    cs: usize,
    /// Pixels of the output row from `x0` on (AVX2 stores whole vectors where they fit in the
    /// row: the row's later tiles overwrite what lies past this tile).
    room: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// The tile of panel `(i0, wd)` starting at pixel `x0` of output row `y`.
    ///
    /// # Safety
    /// `Rows::check` has passed for `d`, `r` and the output `out` points to.
    #[inline(always)]
    unsafe fn at(d: &DirectT, r: &Rows, i0: usize, wd: usize, y: usize, x0: usize, out: *mut f32) -> Tile {
        Tile {
            k: d.k,
            w: d.w.as_ptr().add(i0 * d.k),
            pw: wd,
            x: r.xpad.as_ptr().add(y * r.ry + x0 * r.sx),
            offs: r.offs.as_ptr(),
            bias: r.bias.as_ptr().add(i0),
            mrem: d.m - i0,
            lo: r.lo,
            hi: r.hi,
            out: out.add(i0 * r.cs + (y - r.y0) * r.rs + x0),
            cs: r.cs,
            room: r.ow - x0,
        }
    }
}

/// One row of one panel: tiles of at most `ACC / V` pixels, as even as the row allows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(d: &DirectT, r: &Rows, i0: usize, wd: usize, y: usize, out: *mut f32) {
    let v = wd / 16;
    let jmax = ACC / v;
    let nt = r.ow.div_ceil(jmax);
    for t in 0..nt {
        let (x0, x1) = (t * r.ow / nt, (t + 1) * r.ow / nt);
        tile_fn(v, x1 - x0, r.sx)(&Tile::at(d, r, i0, wd, y, x0, out));
    }
}

/// One row of one panel (one or two vectors) on AVX2: tiles of at most `ACC2 / V` pixels, as even
/// as the row allows. Long reductions run in blocks of about `r.kb` taps over groups of up to `GT2`
/// tiles (the accumulators kept in `buf` between blocks, which keeps each output's FMA chain), so
/// the block's weights and input rows stay in L1 while the group's tiles read them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(d: &DirectT, r: &Rows, i0: usize, wd: usize, y: usize, out: *mut f32) {
    let v = wd / 8;
    let nt = r.ow.div_ceil(ACC2 / v);
    // Written before it is read (a tile stores its accumulators after every block but the last).
    let mut buf = std::mem::MaybeUninit::<[__m256; GT2 * ACC2]>::uninit();
    let buf = buf.as_mut_ptr() as *mut __m256;
    // Blocks as even as `r.kb` allows.
    let kb = d.k.div_ceil(d.k.div_ceil(r.kb.max(1)).max(1)).max(1);
    for g0 in (0..nt).step_by(GT2) {
        crate::fp32::layout::k_blocks(d.k, kb, |k0, k1, _| {
            for t in g0..(g0 + GT2).min(nt) {
                let (x0, x1) = (t * r.ow / nt, (t + 1) * r.ow / nt);
                let a = Tile::at(d, r, i0, wd, y, x0, out);
                tile8_fn(v, x1 - x0, r.sx, kb < d.k)(&a, k0, k1, buf.add((t - g0) * ACC2));
            }
        });
    }
}

/// The AVX2 tile kernel for `v` vectors (of eight channels), `j` pixels, column stride `sx`, and
/// reductions in blocks or not (one block: no accumulator traffic, no branches around the loop).
#[cfg(target_arch = "x86_64")]
fn tile8_fn(v: usize, j: usize, sx: usize, blocks: bool) -> unsafe fn(&Tile, usize, usize, *mut __m256) {
    macro_rules! pick {
        ($V:literal, $S:literal, $B:literal, [$($J:literal)*]) => {
            match j { $($J => tile8::<$V, $J, $S, $B> as unsafe fn(&Tile, usize, usize, *mut __m256),)* _ => unreachable!("{j} pixels") }
        };
    }
    macro_rules! by_b {
        ($B:literal) => {
            match (v, sx) {
                (1, 1) => pick!(1, 1, $B, [1 2 3 4 5 6 7 8 9 10 11 12]),
                (1, _) => pick!(1, 2, $B, [1 2 3 4 5 6 7 8 9 10 11 12]),
                (_, 1) => pick!(2, 1, $B, [1 2 3 4 5 6]),
                _ => pick!(2, 2, $B, [1 2 3 4 5 6]),
            }
        };
    }
    if blocks {
        by_b!(true)
    } else {
        by_b!(false)
    }
}

/// `V` ymm vectors of output channels × `J` pixels `SX` input columns apart: the AVX-512 tile's
/// FMA chain on eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile8<const V: usize, const J: usize, const SX: usize, const B: bool>(
    a: &Tile,
    k0: usize,
    k1: usize,
    buf: *mut __m256,
) {
    use crate::fp32::avx2::{load_part, store_part};
    use crate::fp32::layout::transpose8;
    let (k0, k1) = if B { (k0, k1) } else { (0, a.k) };
    let mut acc = if !B || k0 == 0 {
        [std::array::from_fn::<__m256, V, _>(|v| load_part(a.bias.add(8 * v), a.mrem.saturating_sub(8 * v))); J]
    } else {
        std::array::from_fn(|j| std::array::from_fn(|v| *buf.add(j * V + v)))
    };
    let mut w = a.w.add(k0 * a.pw);
    for p in k0..k1 {
        let wv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(w.add(8 * v)));
        let x = a.x.add(*a.offs.add(p));
        for (j, row) in acc.iter_mut().enumerate() {
            let b = _mm256_broadcast_ss(&*x.add(j * SX));
            for v in 0..V {
                row[v] = _mm256_fmadd_ps(wv[v], b, row[v]);
            }
        }
        w = w.add(a.pw);
    }
    if B && k1 < a.k {
        for (j, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                *buf.add(j * V + v) = *x;
            }
        }
        return;
    }
    let (lo, hi) = (_mm256_set1_ps(a.lo), _mm256_set1_ps(a.hi));
    for v in 0..V {
        let nc = a.mrem.saturating_sub(8 * v).min(8);
        let mut j0 = 0;
        while j0 < J {
            let nj = (J - j0).min(8);
            let mut r = [_mm256_setzero_ps(); 8];
            for (i, ri) in r.iter_mut().enumerate().take(nj) {
                *ri = _mm256_min_ps(_mm256_max_ps(acc[j0 + i][v], lo), hi);
            }
            let t = transpose8(r);
            let whole = j0 + 8 <= a.room;
            for (c, tc) in t.iter().enumerate().take(nc) {
                let o = a.out.add((8 * v + c) * a.cs + j0);
                if whole {
                    _mm256_storeu_ps(o, *tc);
                } else {
                    store_part(o, *tc, nj);
                }
            }
            j0 += 8;
        }
    }
}

/// The tile kernel for `v` vectors, `j` pixels and column stride `sx`.
#[cfg(target_arch = "x86_64")]
fn tile_fn(v: usize, j: usize, sx: usize) -> unsafe fn(&Tile) {
    macro_rules! pick {
        ($V:literal, $S:literal, [$($J:literal)*]) => {
            match j { $($J => tile::<$V, $J, $S> as unsafe fn(&Tile),)* _ => unreachable!("{j} pixels") }
        };
    }
    macro_rules! by_v {
        ($S:literal) => {
            match v {
                1 => pick!(1, $S, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24]),
                2 => pick!(2, $S, [1 2 3 4 5 6 7 8 9 10 11 12]),
                3 => pick!(3, $S, [1 2 3 4 5 6 7 8]),
                _ => pick!(4, $S, [1 2 3 4 5 6]),
            }
        };
    }
    if sx == 1 {
        by_v!(1)
    } else {
        by_v!(2)
    }
}

#[inline(always)]
fn lanes(rem: usize, v: usize) -> u16 {
    let n = rem.saturating_sub(16 * v).min(16);
    ((1u32 << n) - 1) as u16
}

/// `V` vectors of output channels × `J` pixels `SX` input columns apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const V: usize, const J: usize, const SX: usize>(a: &Tile) {
    let bv: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(lanes(a.mrem, v), a.bias.add(16 * v)));
    let mut acc = [bv; J];
    let mut w = a.w;
    for p in 0..a.k {
        let wv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(w.add(16 * v)));
        let x = a.x.add(*a.offs.add(p));
        for (j, row) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*x.add(j * SX));
            for v in 0..V {
                row[v] = _mm512_fmadd_ps(wv[v], b, row[v]);
            }
        }
        w = w.add(a.pw);
    }
    let (lo, hi) = (_mm512_set1_ps(a.lo), _mm512_set1_ps(a.hi));
    for v in 0..V {
        let nc = a.mrem.saturating_sub(16 * v).min(16);
        let mut j0 = 0;
        while j0 < J {
            let nj = (J - j0).min(16);
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, ri) in r.iter_mut().enumerate().take(nj) {
                *ri = _mm512_min_ps(_mm512_max_ps(acc[j0 + i][v], lo), hi);
            }
            let t = transpose16(r);
            let mk = ((1u32 << nj) - 1) as u16;
            for (c, tc) in t.iter().enumerate().take(nc) {
                _mm512_mask_storeu_ps(a.out.add((16 * v + c) * a.cs + j0), mk, *tc);
            }
            j0 += 16;
        }
    }
}

/// The 16 × 16 transpose: row `c` of the result holds element `c` of every input row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved within each 128-bit lane, then pairs of pairs (as 64-bit
    // elements): u[4i + q] holds, in lane L, column 4L + q of rows 4i..4i + 3.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; 16] = std::array::from_fn(|n| {
        let (i, q) = (n / 4, n % 4);
        let (a, b) = (_mm512_castps_pd(t[4 * i + q / 2]), _mm512_castps_pd(t[4 * i + q / 2 + 2]));
        _mm512_castpd_ps(if q % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
    });
    // Lane L of the result row 4L + q gathers lane L of u[q], u[4 + q], u[8 + q], u[12 + q].
    let mut out = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[q], u[4 + q]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[q], u[4 + q]);
        let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + q], u[12 + q]);
        let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + q], u[12 + q]);
        out[q] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
        out[8 + q] = _mm512_shuffle_f32x4::<0xDD>(v0, w0);
        out[4 + q] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
        out[12 + q] = _mm512_shuffle_f32x4::<0xDD>(v1, w1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The AVX-512 and AVX2 tiles give the reference's bits on random shapes: channel counts
        /// off the 8- and 16-lane grids and past one 64-channel panel, rows wider than one tile,
        /// output rows that are bands of a larger image (`y0 > 0`, a row pitch wider than the
        /// row), stride 1 and 2 along the row; every output outside the rows is left alone.
        #[test]
        fn simd_matches_reference(m in 1usize..150, k in 0usize..80, ow in 1usize..60, y0 in 0usize..3, ny in 1usize..4,
                                    extra in 0usize..5, sx in 1usize..3, threads in 1usize..3, clamp in any::<bool>(), kb in prop_oneof![Just(usize::MAX), 1usize..40],
                                    seed in any::<u64>()) {
            let wp = (ow - 1) * sx + 1 + extra;
            let mut s = seed;
            let mut rnd = move || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5 };
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..m).map(|_| rnd()).collect();
            let y1 = y0 + ny;
            let plane = (y1 + 2) * wp + 8;
            let xpad: Vec<f32> = (0..plane * 3).map(|_| rnd()).collect();
            let offs: Vec<usize> = (0..k).map(|p| (p % 3) * plane + (p / 3 % 3) * wp + p % 2).collect();
            let (lo, hi) = if clamp { (-0.1, 0.2) } else { (f32::NEG_INFINITY, f32::INFINITY) };
            let (cs, rs) = (ny * (wp + 1) + 3, wp + 1);
            let r = Rows { xpad: &xpad, offs: &offs, ry: wp, sx, ow, y0, y1, bias: &bias, lo, hi, cs, rs, kb };
            let mut want = vec![f32::NAN; m * cs];
            rows_ref(&DirectT::new(F32Isa::Scalar, m, k, &a), &r, &mut want);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for isa in F32Isa::all_supported() {
                let d = DirectT::new(isa, m, k, &a);
                let mut got = vec![f32::NAN; m * cs];
                pool.install(|| rows(&d, &r, &mut got, threads));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    prop_assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{}: at {}: {} vs {}", isa.name(), i, g, w);
                }
            }
        }
    }
}
