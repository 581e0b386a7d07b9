//! f32 Winograd F(4x4, 3x3) (Lavin & Gray 2016, interpolation points 0, ±1, ±2, ∞) for stride-1 3x3
//! convolutions: each 4x4 output tile costs 36 products per channel pair instead of 144. Per band
//! of tile rows: the input tiles' 6x6 transforms `Bᵀ d B` go to `V[ξ][c_in][tile]`, one GEMM per
//! transform position `ξ` multiplies them by the weights' transforms `U[ξ] = G g Gᵀ`
//! (`[c_out][c_in]`, made once in f64), and `Aᵀ M A` gives the 4x4 outputs with bias and activation.
//!
//! The transforms run along rows: input rows are split into their four column phases (column
//! `4t + q`), so every step of both transforms is an elementwise combination of contiguous rows
//! over the tiles of a tile row, which the compiler vectorises (no FMA contraction, so every path
//! computes the same transforms). Results differ from direct convolution by rounding only (about
//! 1e-6 of the output range per layer; `f32_vs_reference` bounds it).

use lowbit_core::Act;
use rayon::prelude::*;

use crate::fp32::gemm::{pack_t, prefer_t, sgemm_bias_act, sgemm_t};
use crate::fp32::layout::{clamp_of, fused_clamp, BRows, Ptr};
#[cfg(target_arch = "x86_64")]
use crate::fp32::{winograd_avx2, winograd_lanes};
use crate::geom::ConvGeom;
use crate::isa::F32Isa;

/// Transform positions of a 6x6 tile.
const XI: usize = 36;
/// Bytes of `V` and `M` a band of tile rows aims at.
const BAND_BYTES: usize = 2 << 20;

/// Geometry only: a stride-1, undilated, ungrouped 3x3 convolution with an output.
pub fn applies(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.group == 1 && g.oh * g.ow > 0
}

/// Whether F(4x4, 3x3) is expected to beat the direct kernels for `g` on `isa` (measured with
/// `cargo bench -p lowbit-kernels --bench f32 -- '3x3 s1 '` and in the zoo models, AMD EPYC, AVX2):
/// at least 8 output tiles (on 7x7 planes, 4 tiles, the transformed weights, 4x the direct ones,
/// are streamed from memory for 4 columns: ResNet-18's layer 4 ran at 17 GMAC/s against 33 direct)
/// and 64 input channels. Below that the gain is small or negative (16->16 at 28x28: 40 against 32
/// GMAC/s direct, 32->32 at 14x14: 32 against 34; 64->64 at 56x56: 92 against 44) while the
/// transforms' rounding adds up: with 8+ channels U²-Netp's output moved 1.13e-4 of its range from
/// ONNX Runtime's (4.7e-5 direct), over the 1e-4 lowbit holds fp32 models to.
///
/// On AVX-512 (twice the direct kernels' width, the transforms still eight lanes) only where the
/// transformed weights stay within 2.5 MB and there are 48+ tiles: ResNet-18 in the network
/// (`LOWBIT_PROFILE=1 LOWBIT_WINOGRAD=0|1 lowbit bench ../shared/zoo/resnet18-random.onnx`, AMD
/// EPYC, AVX-512, 1 thread): layer 1 (64@56) 1.02-1.04 -> 0.70-0.74 ms, layer 2 (128@28) 1.05-1.06
/// -> 0.47 ms, but layer 3 (256@14, 9.4 MB of `U`) 1.08-1.09 -> 1.15-1.19 ms and layer 4 1.48-1.51
/// -> 1.72-1.77 ms. Also, as on AVX2, on fewer tiles where `U` stays within 1 MB (it then stays in
/// L2 across the tiles): fmnist-resnet's 64->64 convolutions on 7x7 planes (4 tiles, 0.59 MB)
/// 0.034 -> 0.021 ms each on the channel-vector kernel (`LOWBIT_PROFILE=1 LOWBIT_WINOGRAD=0|1
/// lowbit bench ../shared/zoo/fmnist-resnet.onnx --threads 1`, AMD EPYC Zen 5).
///
/// With channels in the lanes ([`lanes_fit`]) also where `U` streams from memory once per image
/// but the plane has 100+ pixels to spread it over (each pixel then reads 16 / (oh·ow) bytes of `U`
/// per product it saves): ResNet-18's layer 3 (256@14, 9.4 MB of `U`) 2.20-2.22 -> 1.44-1.66 ms per
/// convolution, layer 4 (7x7) 2.42-2.52 -> 4.27-4.35 ms (`LOWBIT_PROFILE=1 LOWBIT_WINOGRAD=1`, AMD
/// EPYC Zen 4, 1 thread).
pub fn pays(isa: F32Isa, g: &ConvGeom) -> bool {
    let tiles = g.oh.div_ceil(4) * g.ow.div_ceil(4);
    let u_bytes = XI * 4 * g.c_in * g.c_out;
    let small = u_bytes <= 1 << 20;
    let common = applies(g) && g.c_in >= 64 && g.c_out >= 8;
    match isa {
        F32Isa::Avx2 => common && (tiles >= 8 || small),
        F32Isa::Avx512 => {
            let streamed = lanes_fit(g) && g.oh * g.ow >= 100;
            common && ((tiles >= 48 && u_bytes <= 5 << 19) || small || streamed)
        }
        F32Isa::Scalar => false,
    }
}

/// Tile rows per band of the row-wise transforms.
fn band_rows(g: &ConvGeom) -> usize {
    (BAND_BYTES / (XI * 4 * (g.c_in + g.c_out) * g.ow.div_ceil(4))).clamp(1, g.oh.div_ceil(4))
}

/// Whether `g` runs with channels in the lanes on AVX-512 ([`winograd_lanes`]): fewer tiles per row
/// than the row-wise transforms' eight lanes, the whole plane in one band.
fn lanes_fit(g: &ConvGeom) -> bool {
    g.ow.div_ceil(4) < 8 && band_rows(g) == g.oh.div_ceil(4)
}

/// A convolution's transformed weights and band height.
#[derive(Clone, Debug)]
pub struct Wino {
    /// `U[ξ][c_out][c_in]`, or with `mp > 0` each `U[ξ]` packed for the channel-vector GEMM
    /// ([`pack_t`], `c_in · mp` floats each).
    u: Vec<f32>,
    mp: usize,
    zero: Vec<f32>,
    /// Tile rows per band.
    rb: usize,
    /// Channels in the lanes ([`winograd_lanes`]): `u` is `[ξ][c_in][c_out]`, one band, `zero` one
    /// zero per tile.
    lanes: bool,
}

/// `G` of F(4x4, 3x3).
const GM: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

impl Wino {
    /// Transforms `weight` (`[c_out][c_in][3][3]`) for `g` (which must [`applies`]) on path `isa`.
    pub fn new(isa: F32Isa, g: &ConvGeom, weight: &[f32]) -> Wino {
        assert!(applies(g) && weight.len() >= g.c_out * g.c_in * 9);
        let (co, ci) = (g.c_out, g.c_in);
        let mut u = vec![0f32; XI * co * ci];
        for o in 0..co {
            for c in 0..ci {
                let w = &weight[(o * ci + c) * 9..(o * ci + c + 1) * 9];
                let mut t = [[0f64; 3]; 6];
                for (i, ti) in t.iter_mut().enumerate() {
                    for (j, v) in ti.iter_mut().enumerate() {
                        *v = (0..3).map(|k| GM[i][k] * w[k * 3 + j] as f64).sum();
                    }
                }
                for (i, ti) in t.iter().enumerate() {
                    for (k, gk) in GM.iter().enumerate() {
                        let v: f64 = (0..3).map(|j| ti[j] * gk[j]).sum();
                        u[((i * 6 + k) * co + o) * ci + c] = v as f32;
                    }
                }
            }
        }
        let rb = band_rows(g);
        #[cfg(target_arch = "x86_64")]
        if isa == F32Isa::Avx512 && lanes_fit(g) {
            let u = winograd_lanes::layout_u(&u, co, ci);
            let tiles = g.oh.div_ceil(4) * g.ow.div_ceil(4);
            return Wino { u, mp: 0, zero: vec![0.0; tiles], rb, lanes: true };
        }
        // Few tiles per band (small planes): output channels in the vector lanes instead.
        let tb = rb * g.ow.div_ceil(4);
        if prefer_t(isa, co, tb, ci, tb) {
            let mut packed = vec![];
            let mut mp = 0;
            for xi in 0..XI {
                let (t, m) = pack_t(co, ci, &u[xi * co * ci..(xi + 1) * co * ci], ci);
                packed.extend_from_slice(&t);
                mp = m;
            }
            return Wino { u: packed, mp, zero: vec![0.0; co], rb, lanes: false };
        }
        Wino { u, mp: 0, zero: vec![0.0; co], rb, lanes: false }
    }

    /// f32 elements of scratch [`Wino::run`] needs.
    pub fn scratch_len(&self, g: &ConvGeom) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.lanes {
            return winograd_lanes::scratch_len(g);
        }
        XI * (g.c_in + g.c_out) * self.rb * g.ow.div_ceil(4)
    }

    /// Bytes of transformed weights held.
    pub fn bytes(&self) -> usize {
        (self.u.len() + self.zero.len()) * 4
    }

    /// Convolves one image `x` (`[c_in, h, w]`) into `out` (`[c_out, oh, ow]`).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        isa: F32Isa,
        g: &ConvGeom,
        bias: &[f32],
        act: Act,
        x: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
        threads: usize,
    ) {
        let (ci, co, ip, op) = (g.c_in, g.c_out, g.h * g.w, g.oh * g.ow);
        assert!(x.len() >= ci * ip && out.len() >= co * op && bias.len() >= co);
        assert!(scratch.len() >= self.scratch_len(g));
        let (th, tw) = (g.oh.div_ceil(4), g.ow.div_ceil(4));
        let (lo, hi) = fused_clamp(act);
        let par = threads > 1;
        #[cfg(target_arch = "x86_64")]
        if self.lanes {
            winograd_lanes::run(g, &self.u, &self.zero, bias, lo, hi, x, out, scratch, threads);
            if clamp_of(act).is_none() {
                crate::eltwise::apply_act(isa, act, &mut out[..co * op]);
            }
            return;
        }
        let mut r0 = 0;
        while r0 < th {
            let r1 = (r0 + self.rb).min(th);
            let tb = (r1 - r0) * tw;
            let (v, m) = scratch.split_at_mut(XI * ci * tb);
            let m = &mut m[..XI * co * tb];
            let vp = Ptr(v.as_mut_ptr());
            let input = |c: usize| {
                // SAFETY: channel `c` writes only its own rows `V[ξ][c]` (disjoint across tasks),
                // all inside `v` (`XI · ci · tb` elements).
                with_buf(|buf| unsafe {
                    input_tiles(isa, g, &x[c * ip..(c + 1) * ip], r0, r1, tw, vp.get(), c, tb, buf)
                })
            };
            if par {
                (0..ci).into_par_iter().for_each(input);
            } else {
                (0..ci).for_each(input);
            }
            let v = &*v;
            let gemm = |xi: usize, mx: &mut [f32]| {
                let b = &v[xi * ci * tb..(xi + 1) * ci * tb];
                if self.mp > 0 {
                    let u = &self.u[xi * ci * self.mp..(xi + 1) * ci * self.mp];
                    sgemm_t(isa, co, tb, ci, u, self.mp, b, BRows::Strided(tb), &self.zero, Act::None, mx, tb, 1);
                } else {
                    let u = &self.u[xi * co * ci..(xi + 1) * co * ci];
                    sgemm_bias_act(isa, co, tb, ci, u, ci, b, tb, &self.zero, Act::None, mx, tb, 1);
                }
            };
            if par {
                m.par_chunks_mut(co * tb).enumerate().for_each(|(xi, mx)| gemm(xi, mx));
            } else {
                m.chunks_mut(co * tb).enumerate().for_each(|(xi, mx)| gemm(xi, mx));
            }
            let m = &*m;
            let output = |o: usize, plane: &mut [f32]| {
                with_buf(|buf| output_tiles(isa, g, m, o, r0, r1, tw, tb, bias[o], lo, hi, plane, buf))
            };
            let out = &mut out[..co * op];
            if par {
                out.par_chunks_mut(op).enumerate().for_each(|(o, p)| output(o, p));
            } else {
                out.chunks_mut(op).enumerate().for_each(|(o, p)| output(o, p));
            }
            r0 = r1;
        }
        if clamp_of(act).is_none() {
            crate::eltwise::apply_act(isa, act, &mut out[..co * op]);
        }
    }
}

std::thread_local! {
    static BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_buf<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    BUF.with(|b| f(&mut b.borrow_mut()))
}

/// `Bᵀ d` for one column of six values.
#[inline(always)]
fn bt(d: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        2.0 * (d[3] - d[1]) + d[4] - d[2],
        2.0 * (d[1] - d[3]) + d[4] - d[2],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `Aᵀ m` for one column of six values.
#[inline(always)]
fn at(m: [f32; 6]) -> [f32; 4] {
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    [m[0] + a + c, b + 2.0 * d, a + 4.0 * c, b + 8.0 * d + m[5]]
}

/// Input transforms of channel `c`'s tile rows `r0..r1` into `v` (`V[ξ][c][(ty - r0)·tw + tx]`).
///
/// # Safety
/// `v` must hold `XI · c_in · tb` elements, and no other task may write channel `c`'s rows.
#[allow(clippy::too_many_arguments)]
unsafe fn input_tiles(
    isa: F32Isa,
    g: &ConvGeom,
    plane: &[f32],
    r0: usize,
    r1: usize,
    tw: usize,
    v: *mut f32,
    c: usize,
    tb: usize,
    buf: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if isa != F32Isa::Scalar {
        // The band's input rows, zero-padded, for the eight-tile steps.
        let (nr, wp) = (r1 - r0, tw.div_ceil(8) * 32 + 8);
        buf.clear();
        buf.resize((4 * nr + 2) * wp, 0.0);
        for j in 0..4 * nr + 2 {
            let iy = (4 * r0 + j) as isize - g.pt as isize;
            if iy >= 0 && (iy as usize) < g.h {
                let iy = iy as usize;
                buf[j * wp + g.pl..j * wp + g.pl + g.w].copy_from_slice(&plane[iy * g.w..(iy + 1) * g.w]);
            }
        }
        // SAFETY: both SIMD paths include AVX2 (the caller's path was checked supported); the
        // caller guarantees `v`'s rows.
        return winograd_avx2::input_rows(buf, wp, nr, tw, v.add(c * tb), g.c_in * tb);
    }
    let _ = isa;
    // Columns per phase: tile `tx` reads phases 0-3 at `tx` and phases 0-1 at `tx + 1`.
    let n = tw + 1;
    buf.clear();
    buf.resize(2 * 24 * n, 0.0);
    let (ph, t) = buf.split_at_mut(24 * n);
    let ci = g.c_in;
    for ty in r0..r1 {
        // Six padded input rows, each split into four column phases: ph[(j·4 + q)·n + tx].
        for j in 0..6 {
            let iy = (4 * ty + j) as isize - g.pt as isize;
            let rows = &mut ph[j * 4 * n..(j + 1) * 4 * n];
            if iy < 0 || iy >= g.h as isize {
                rows.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            for q in 0..4 {
                let d = &mut rows[q * n..(q + 1) * n];
                for (tx, e) in d.iter_mut().enumerate() {
                    let ix = (4 * tx + q) as isize - g.pl as isize;
                    *e = if ix >= 0 && (ix as usize) < g.w { src[ix as usize] } else { 0.0 };
                }
            }
        }
        // Vertical: t[(i·4 + q)·n + tx] = (Bᵀ d)_i over the six rows.
        for q in 0..4 {
            let r: [&[f32]; 6] = std::array::from_fn(|j| &ph[(j * 4 + q) * n..(j * 4 + q + 1) * n]);
            let o: [&mut [f32]; 6] = split6(t, q, n);
            for x in 0..n {
                let y = bt([r[0][x], r[1][x], r[2][x], r[3][x], r[4][x], r[5][x]]);
                for i in 0..6 {
                    o[i][x] = y[i];
                }
            }
        }
        // Horizontal: V[i·6 + k] = (Bᵀ e)_k over columns 4tx .. 4tx + 5 of row i.
        let base = (ty - r0) * tw;
        for i in 0..6 {
            let p: [&[f32]; 4] = std::array::from_fn(|q| &t[(i * 4 + q) * n..(i * 4 + q + 1) * n]);
            let dst: [*mut f32; 6] = std::array::from_fn(|k| v.add(((i * 6 + k) * ci + c) * tb + base));
            for x in 0..tw {
                let y = bt([p[0][x], p[1][x], p[2][x], p[3][x], p[0][x + 1], p[1][x + 1]]);
                for k in 0..6 {
                    *dst[k].add(x) = y[k];
                }
            }
        }
    }
}

/// The six rows `t[(i·4 + q)·n ..]`, `i < 6`, as disjoint mutable slices.
#[inline(always)]
fn split6(t: &mut [f32], q: usize, n: usize) -> [&mut [f32]; 6] {
    let mut rest = &mut t[..24 * n];
    let mut rows: [&mut [f32]; 6] = Default::default();
    for r in rows.iter_mut() {
        let (a, b) = std::mem::take(&mut rest).split_at_mut(4 * n);
        *r = &mut a[q * n..(q + 1) * n];
        rest = b;
    }
    rows
}

/// `t[..4·w]` as four slices of `w`.
#[inline(always)]
fn split4(t: &mut [f32], w: usize) -> [&mut [f32]; 4] {
    let (a, rest) = t[..4 * w].split_at_mut(w);
    let (b, rest) = rest.split_at_mut(w);
    let (c, d) = rest.split_at_mut(w);
    [a, b, c, d]
}

/// Output transforms of output channel `o`'s tile rows `r0..r1` from `m` (`M[ξ][o][tile]`) into
/// `plane` (`[oh, ow]`), bias added and clamped to `[lo, hi]`.
#[allow(clippy::too_many_arguments)]
fn output_tiles(
    isa: F32Isa,
    g: &ConvGeom,
    m: &[f32],
    o: usize,
    r0: usize,
    r1: usize,
    tw: usize,
    tb: usize,
    bias: f32,
    lo: f32,
    hi: f32,
    plane: &mut [f32],
    buf: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if isa != F32Isa::Scalar {
        // SAFETY: both SIMD paths include AVX2 (the caller's path was checked supported); `m`
        // holds every row of channel `o` (`XI · c_out · tb` elements).
        return unsafe {
            winograd_avx2::output_rows(g, m.as_ptr().add(o * tb), g.c_out * tb, r0, r1, tw, bias, lo, hi, plane)
        };
    }
    let _ = isa;
    let co = g.c_out;
    buf.clear();
    buf.resize(40 * tw, 0.0);
    // s[(i·4 + q)·tw + tx]: the horizontal transform of row i; y[(p·4 + q)·tw + tx]: output row p's
    // column phases.
    let (s, y) = buf.split_at_mut(24 * tw);
    for ty in r0..r1 {
        let base = (ty - r0) * tw;
        for i in 0..6 {
            let r: [&[f32]; 6] = std::array::from_fn(|k| &m[((i * 6 + k) * co + o) * tb + base..][..tw]);
            let d = split4(&mut s[i * 4 * tw..(i + 1) * 4 * tw], tw);
            for x in 0..tw {
                let z = at([r[0][x], r[1][x], r[2][x], r[3][x], r[4][x], r[5][x]]);
                for q in 0..4 {
                    d[q][x] = z[q];
                }
            }
        }
        for q in 0..4 {
            let c: [&[f32]; 6] = std::array::from_fn(|i| &s[(i * 4 + q) * tw..(i * 4 + q + 1) * tw]);
            let d = split4(y, 4 * tw);
            for x in 0..tw {
                let z = at([c[0][x], c[1][x], c[2][x], c[3][x], c[4][x], c[5][x]]);
                for p in 0..4 {
                    d[p][q * tw + x] = (z[p] + bias).max(lo).min(hi);
                }
            }
        }
        for p in 0..4 {
            let oy = 4 * ty + p;
            if oy >= g.oh {
                break;
            }
            let y = &y[p * 4 * tw..(p + 1) * 4 * tw];
            let row = &mut plane[oy * g.ow..(oy + 1) * g.ow];
            let full = g.ow / 4;
            for x in 0..full {
                for q in 0..4 {
                    row[4 * x + q] = y[q * tw + x];
                }
            }
            for ox in 4 * full..g.ow {
                row[ox] = y[(ox % 4) * tw + ox / 4];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(ci: usize, co: usize, h: usize, w: usize, pt: usize, pl: usize) -> ConvGeom {
        let (oh, ow) = (h + 2 * pt - 2, w + 2 * pl - 2);
        ConvGeom { c_in: ci, h, w, c_out: co, kh: 3, kw: 3, sh: 1, sw: 1, dh: 1, dw: 1, pt, pl, oh, ow, group: 1 }
    }

    /// Channels in the lanes (AVX-512, small planes) give the floats of the row-wise transforms
    /// (AVX2 here): the same operations in the same order, the same FMA chain per product.
    #[test]
    fn channel_lanes_give_the_row_wise_floats() {
        if !F32Isa::Avx512.supported() {
            return;
        }
        for (ci, co, h, w, pt, pl) in
            [(3, 5, 7, 7, 1, 1), (20, 33, 9, 13, 1, 0), (64, 64, 7, 7, 1, 1), (17, 16, 6, 26, 0, 2)]
        {
            let g = geom(ci, co, h, w, pt, pl);
            let x: Vec<f32> = (0..ci * h * w).map(|i| ((i * 7919) % 251) as f32 / 125.0 - 1.0).collect();
            let wt: Vec<f32> = (0..co * ci * 9).map(|i| ((i * 104_729) % 97) as f32 / 48.0 - 1.0).collect();
            let bias: Vec<f32> = (0..co).map(|i| i as f32 * 0.1 - 1.0).collect();
            let run = |isa: F32Isa, threads: usize| {
                let wi = Wino::new(isa, &g, &wt);
                assert_eq!(wi.lanes, isa == F32Isa::Avx512);
                let mut out = vec![f32::NAN; co * g.oh * g.ow];
                let mut scratch = vec![f32::NAN; wi.scratch_len(&g)];
                let act = Act::Clip { lo: -2.0, hi: 3.0 };
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| wi.run(isa, &g, &bias, act, &x, &mut out, &mut scratch, threads));
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let want = run(F32Isa::Avx2, 1);
            assert_eq!(run(F32Isa::Avx512, 1), want, "{ci}->{co} {h}x{w}");
            assert_eq!(run(F32Isa::Avx512, 2), want, "{ci}->{co} {h}x{w}, 2 threads");
        }
    }

    /// Bands of one, two and all tile rows give the same floats on every path (banding only
    /// changes which tiles share a GEMM).
    #[test]
    fn bands_do_not_change_results() {
        for (ci, co, h, w, pt, pl) in [(3, 5, 19, 37, 1, 1), (8, 16, 30, 9, 0, 2), (1, 1, 5, 70, 2, 0)] {
            let g = ConvGeom {
                c_in: ci,
                h,
                w,
                c_out: co,
                kh: 3,
                kw: 3,
                sh: 1,
                sw: 1,
                dh: 1,
                dw: 1,
                pt,
                pl,
                oh: h + 2 * pt - 2,
                ow: w + 2 * pl - 2,
                group: 1,
            };
            let x: Vec<f32> = (0..ci * h * w).map(|i| ((i * 7919) % 251) as f32 / 125.0 - 1.0).collect();
            let wt: Vec<f32> = (0..co * ci * 9).map(|i| ((i * 104_729) % 97) as f32 / 48.0 - 1.0).collect();
            let bias: Vec<f32> = (0..co).map(|i| i as f32 * 0.1).collect();
            for isa in F32Isa::all_supported() {
                let mut runs = vec![];
                for rb in [1, 2, usize::MAX] {
                    let mut wi = Wino::new(isa, &g, &wt);
                    wi.rb = rb.min(g.oh.div_ceil(4));
                    let mut out = vec![f32::NAN; co * g.oh * g.ow];
                    let mut scratch = vec![f32::NAN; wi.scratch_len(&g)];
                    wi.run(isa, &g, &bias, Act::Relu, &x, &mut out, &mut scratch, 1);
                    runs.push(out);
                }
                assert!(runs[0].iter().all(|v| v.is_finite()));
                assert_eq!(runs[0], runs[1], "{}", isa.name());
                assert_eq!(runs[0], runs[2], "{}", isa.name());
            }
        }
    }
}
