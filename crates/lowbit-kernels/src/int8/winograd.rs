//! Integer Winograd F(4x4, 3x3) for stride-1 3x3 convolutions: 36 multiplies per 4x4 output tile
//! and input channel instead of 144, on 16-bit transformed values (`vpdpwssd` / `vpmaddwd`, two
//! products per 32-bit lane against four for `vpdpbusd` on bytes, so 2x fewer instructions than
//! the direct GEMM on VNNI and 4x fewer on AVX2, whose direct path widens to 16 bits anyway).
//!
//! **Exact, not approximate.** With Lavin's F(4,3) matrices scaled to integers
//! (`G'' = diag(4,6,6,24,24,1)·G`, the output transform's rows scaled by `s = 24, 12, 6, 6`):
//! - the input tile `d = x - zx` (|d| ≤ 255) becomes `V = Bᵀ d B` with |V| ≤ 10·10·255 < 2^15;
//! - the weights become `U = G'' w G''ᵀ` with |U| ≤ 7·7·127 < 2^15;
//! - `M = Σ_k U ⊙ V` and the output transform `R = A'ᵀ M A'` are computed modulo 2^32 (wrapping
//!   i32, a ring homomorphism, so overflow of the intermediates does not matter), and
//!   `R[p][q] = s_p·s_q·Y[p][q]` where `Y` is the direct convolution's accumulator `Σ w·(x - zx)`.
//! - `s_p·s_q = 9·2^(a_p + a_q)` (`a = 3, 2, 1, 1`): multiplying by 9⁻¹ mod 2^32 leaves
//!   `2^(a_p+a_q)·Y` mod 2^32, which is exact when |Y| < 2^25, and an arithmetic shift gives `Y`.
//!
//! [`Winograd::fits`] admits a layer only when `Σ|w|·max|x - zx| < 2^25` for every output channel
//! (a bound on |Y| for any input), so the result is bit-exact with the direct convolution on every
//! input, and the plan's other paths need no change of contract. The property tests compare with
//! the scalar direct convolution on random shapes, ragged tiles and extreme zero points.
//!
//! Layout: the zero-point-padded NHWC input (channel stride `kp`, a multiple of 16, the padding
//! channels at the zero point) is cut into tiles of 4x4 outputs; a task takes a block of tiles,
//! transforms their inputs into `V[ξ][tile][kp]` (i16, ξ = 0..36), and for each block of up to
//! 64 output channels runs 36 small GEMMs `M[tile][ξ][n] = Σ_k V[ξ][tile][k]·U[ξ][k][n]` (pairs of
//! k in each 32-bit lane), then the output transform and the requantizing epilogue.

use rayon::prelude::*;

use crate::epilogue::{OutPtr, Requant};
use crate::geom::ConvGeom;
use crate::int8::bands::pad_nhwc;
use crate::int8::winograd_kern::{OutBlock, TileGeo, G};
use crate::isa::{trace, Isa};

/// Output channels per block (four 16-lane vectors).
pub(crate) const NB: usize = 64;
/// Tiles per micro-kernel call.
pub(crate) const MR: usize = 6;
/// |Y| must stay below this for the recovery to be exact (2^(31 - max(a_p + a_q))).
const Y_LIMIT: i64 = 1 << 25;

/// A 3x3 stride-1 convolution's weights in the Winograd domain.
#[derive(Clone, Debug)]
pub struct Winograd {
    pub isa: Isa,
    pub c_in: usize,
    pub c_out: usize,
    /// Input channels rounded up to 16 (the padded input's channel stride and V's row length).
    pub kp: usize,
    /// `U` per block of [`NB`] output channels: `[ξ][kp/2][wn][2]` i16, `wn` the block's lanes
    /// (a multiple of 16).
    pub u: Vec<i16>,
    tiles_h: usize,
    tiles_w: usize,
}

impl Winograd {
    /// Whether `g` with weights `w` (OIHW int8) and activation zero point `zx` runs exactly here:
    /// one group, 3x3, stride 1, no dilation, and `Σ|w|·max|x - zx| < 2^25` per output channel.
    pub fn exact_for(g: &ConvGeom, w: &[i8], zx: u8) -> bool {
        if g.group != 1 || (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw) != (3, 3, 1, 1, 1, 1) {
            return false;
        }
        let zmax = (zx as i64).max(255 - zx as i64);
        let per = g.c_in * 9;
        w.len() == g.c_out * per
            && w.chunks(per).all(|wo| wo.iter().map(|&v| (v as i64).abs()).sum::<i64>() * zmax < Y_LIMIT)
    }

    /// Packs `w` (OIHW int8) for `g` (which [`Winograd::exact_for`] admitted).
    pub fn new(isa: Isa, g: &ConvGeom, w: &[i8]) -> Winograd {
        let (ci, co) = (g.c_in, g.c_out);
        let kp = ci.div_ceil(16) * 16;
        let n_pad = co.div_ceil(16) * 16;
        let mut u = vec![0i16; 36 * kp * n_pad];
        for nb in 0..n_pad.div_ceil(NB) {
            let (j0, wn) = (nb * NB, NB.min(n_pad - nb * NB));
            let base = 36 * kp * j0;
            for jl in 0..wn.min(co.saturating_sub(j0)) {
                let j = j0 + jl;
                for k in 0..ci {
                    let f = |a: usize, b: usize| w[((j * ci + k) * 3 + a) * 3 + b] as i32;
                    // t = G''·w (6x3), U = t·G''ᵀ (6x6)
                    let mut t = [[0i32; 3]; 6];
                    for (i, gi) in G.iter().enumerate() {
                        for (b, tb) in t[i].iter_mut().enumerate() {
                            *tb = (0..3).map(|a| gi[a] * f(a, b)).sum();
                        }
                    }
                    for i in 0..6 {
                        for (jj, gj) in G.iter().enumerate() {
                            let v: i32 = (0..3).map(|b| t[i][b] * gj[b]).sum();
                            debug_assert!(v.abs() < 1 << 15);
                            let xi = i * 6 + jj;
                            u[base + ((xi * kp / 2 + k / 2) * wn + jl) * 2 + k % 2] = v as i16;
                        }
                    }
                }
            }
        }
        Winograd { isa, c_in: ci, c_out: co, kp, u, tiles_h: g.oh.div_ceil(4), tiles_w: g.ow.div_ceil(4) }
    }

    /// Padded input height and width (whole tiles plus the window's two extra rows/columns).
    fn padded_hw(&self) -> (usize, usize) {
        (self.tiles_h * 4 + 2, self.tiles_w * 4 + 2)
    }

    /// Scratch bytes [`Winograd::run`] needs (the padded input).
    pub fn scratch_len(&self) -> usize {
        let (hp, wp) = self.padded_hw();
        hp * wp * self.kp
    }

    /// Bytes held (transformed weights).
    pub fn bytes(&self) -> usize {
        self.u.len() * 2
    }

    fn n_pad(&self) -> usize {
        self.c_out.div_ceil(16) * 16
    }

    /// Runs on one NHWC image (see [`crate::int8::QConv::run`]). `rq` holds the bias without the
    /// zero-point correction (the transform subtracts the zero point itself).
    ///
    /// # Safety
    /// `out` holds `oh·ow·c_out` elements of `rq.out`'s type; the path is supported by this CPU.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(
        &self,
        g: &ConvGeom,
        x: &[u8],
        zx: u8,
        rq: &Requant,
        out: OutPtr,
        scratch: &mut [u8],
        threads: usize,
    ) {
        let isa = self.isa;
        trace::int8(isa);
        let (hp, wp) = self.padded_hw();
        let xp = &mut scratch[..hp * wp * self.kp];
        pad_nhwc(g, x, hp, wp, self.kp, zx, xp, threads);
        let xp: &[u8] = xp;
        let tiles = self.tiles_h * self.tiles_w;
        // Tiles per task: V (36·tb·kp i16) within about 160 KB of L2.
        let mut tb = (160 << 10) / (72 * self.kp);
        tb = if tb >= 2 * MR { tb / MR * MR } else { tb.max(1) }.min(48);
        if threads > 1 {
            tb = tb.min(tiles.div_ceil(2 * threads)).max(1);
        }
        let tasks = tiles.div_ceil(tb);
        let task = |i: usize| {
            let t0 = i * tb;
            let t1 = (t0 + tb).min(tiles);
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let (vn, mn) = (36 * tb * self.kp, tb * 36 * NB);
                if s.0.len() < vn {
                    s.0.resize(vn, 0);
                }
                if s.1.len() < mn {
                    s.1.resize(mn, 0);
                }
                let (v, m) = &mut *s;
                self.block(isa, g, xp, zx, t0, t1, &mut v[..vn], &mut m[..mn], rq, out);
            });
        };
        if threads > 1 && tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }

    /// Tiles `t0..t1`: input transform, the GEMMs per output block, output transform and epilogue.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        isa: Isa,
        g: &ConvGeom,
        xp: &[u8],
        zx: u8,
        t0: usize,
        t1: usize,
        v: &mut [i16],
        m: &mut [i32],
        rq: &Requant,
        out: OutPtr,
    ) {
        let nt = t1 - t0;
        let (_, wp) = self.padded_hw();
        let geo = TileGeo { kp: self.kp, wp, tiles_w: self.tiles_w, t0, nt };
        crate::int8::winograd_kern::input_tiles(isa, &geo, xp, zx, v);
        let n_pad = self.n_pad();
        let kp = self.kp;
        for nb in 0..n_pad.div_ceil(NB) {
            let (j0, wn) = (nb * NB, NB.min(n_pad - nb * NB));
            let ub = &self.u[36 * kp * j0..36 * kp * (j0 + wn)];
            for xi in 0..36 {
                let uxi = &ub[xi * kp * wn..(xi + 1) * kp * wn];
                let mut r0 = 0;
                while r0 < nt {
                    let mr = MR.min(nt - r0);
                    let vp = v.as_ptr().add((xi * nt + r0) * kp);
                    let mp = m.as_mut_ptr().add((r0 * 36 + xi) * wn);
                    crate::int8::winograd_kern::micro(isa, mr, wn / 16, vp, kp, uxi.as_ptr(), mp, 36 * wn);
                    r0 += mr;
                }
            }
            let ob = OutBlock { j0, wn, oh: g.oh, ow: g.ow, c_out: self.c_out };
            crate::int8::winograd_kern::output_tiles(isa, &geo, &ob, m, rq, out);
        }
    }
}

thread_local! {
    /// Each thread's V (transformed inputs) and M (Winograd-domain accumulators) of one task.
    static SCRATCH: std::cell::RefCell<(Vec<i16>, Vec<i32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}
