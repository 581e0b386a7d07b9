//! Weights packed once, at plan time, for one integer path: GEMM right-hand sides ([`PackedB`]) and
//! depthwise taps ([`PackedDw`]).

use crate::aligned::Aligned;
use crate::epilogue::Requant;
use crate::isa::Isa;

/// Columns per panel (one task of the GEMM).
pub const PANEL: usize = 64;

/// Columns per panel of [`PackedB::pairs`]: one 64-byte cache line per pair of reduction rows, so
/// a 32-column AVX2 tile streams its weights line after line.
pub const PAIR_PANEL: usize = 32;

/// GEMM right-hand side (weights, K × N) packed once for a path.
#[derive(Clone, Debug)]
pub struct PackedB {
    pub isa: Isa,
    /// Reduction length padded to a multiple of 4.
    pub k4: usize,
    /// Quad rows held per panel: `k4`, or for AMX `k4` padded with zeros to a multiple of 64 (one
    /// B tile is 16 quad rows) where that adds at most 1/16.
    pub kp: usize,
    pub n: usize,
    /// N padded to a multiple of 16.
    pub n_pad: usize,
    /// VNNI quads, panel by panel: for each panel of [`PANEL`] columns, `[k4/4][width][4]`, so
    /// the GEMM streams one contiguous block per panel (scalar and AVX-512 read this).
    pub quad: Aligned<i8>,
    /// Pairs of reduction rows per column, panel by panel: for each panel of [`PAIR_PANEL`]
    /// columns (N padded to a multiple of it), `[k4/2][PAIR_PANEL][2]` ([`pair_index`]). AVX2
    /// reads this, sign-extending 16 bytes to 16 i16 lanes per load, so the weights stay one byte
    /// each in memory. (One `[k4/2][n_pad][2]` block put a K-long column panel at a stride of
    /// `2·n_pad` bytes: at N = 512 a 1 KB stride, whose lines fall in 1/16 of the cache sets,
    /// so ResNet-18's layer-4 panels could not stay in L2 and its GEMM ran at 40% of peak.)
    pub pairs: Vec<i8>,
    /// Σ_k w[k][j] per column (for the activation zero-point correction).
    pub colsum: Vec<i32>,
}

impl PackedB {
    /// `w(k, j)` gives the weight of reduction index `k < k` and column `j < n`.
    pub fn new(isa: Isa, k: usize, n: usize, w: impl Fn(usize, usize) -> i8) -> PackedB {
        let k4 = k.div_ceil(4) * 4;
        // AMX tiles want whole 64-byte reductions: pad with zero quads only where that costs at most
        // 1/16 more weight memory; other reductions run on the AVX-512 kernel (see `gemm_ex`).
        let k64 = k4.div_ceil(64) * 64;
        let kp = if isa == Isa::Amx && (k64 - k4) * 16 <= k4 { k64 } else { k4 };
        let n_pad = n.div_ceil(16) * 16;
        let mut quad = Aligned::zeroed(kp * n_pad);
        let mut colsum = vec![0i32; n];
        for kk in 0..k {
            for (j, cs) in colsum.iter_mut().enumerate() {
                let v = w(kk, j);
                quad[quad_index(kp, n_pad, kk, j)] = v;
                *cs += v as i32;
            }
        }
        let mut pairs = vec![];
        if isa == Isa::Avx2 {
            pairs = vec![0i8; pairs_len(k4, n)];
            for kk in 0..k {
                for j in 0..n {
                    pairs[pair_index(k4, kk, j)] = w(kk, j);
                }
            }
            quad = Aligned::new();
        }
        PackedB { isa, k4, kp, n, n_pad, quad, pairs, colsum }
    }

    /// Bytes of packed weights held in memory.
    pub fn bytes(&self) -> usize {
        self.quad.len() + self.pairs.len() + self.colsum.len() * 4
    }
}

/// Where weight `(k, j)` lives in [`PackedB::quad`] (`kp`: [`PackedB::kp`]).
#[inline(always)]
pub(crate) fn quad_index(kp: usize, n_pad: usize, k: usize, j: usize) -> usize {
    let (p, jj) = (j / PANEL, j % PANEL);
    let width = PANEL.min(n_pad - p * PANEL);
    p * PANEL * kp + (k / 4) * width * 4 + jj * 4 + k % 4
}

/// Bytes of [`PackedB::pairs`] for `k4` reduction rows and `n` columns.
pub fn pairs_len(k4: usize, n: usize) -> usize {
    k4 * n.div_ceil(PAIR_PANEL) * PAIR_PANEL
}

/// Where weight `(k, j)` lives in [`PackedB::pairs`] (`k4`: [`PackedB::k4`]).
#[inline(always)]
pub fn pair_index(k4: usize, k: usize, j: usize) -> usize {
    (j / PAIR_PANEL) * PAIR_PANEL * k4 + (k / 2) * PAIR_PANEL * 2 + (j % PAIR_PANEL) * 2 + k % 2
}

/// The packed weights of the panel after the one at column `j0` (empty after the last).
#[inline(always)]
pub(crate) fn next_panel(b: &PackedB, j0: usize) -> (*const i8, usize) {
    let j = j0 + PANEL;
    if j >= b.n_pad || b.quad.is_empty() {
        return (b.quad.as_ptr(), 0);
    }
    let width = PANEL.min(b.n_pad - j);
    // SAFETY: panel `j / PANEL` starts at `j·kp` and holds `kp·width` bytes.
    (unsafe { b.quad.as_ptr().add(j * b.kp) }, b.kp * width)
}

/// Depthwise weights: `[taps][c_pad]`, one byte each (the kernels sign-extend as they load).
#[derive(Clone, Debug)]
pub struct PackedDw {
    pub isa: Isa,
    pub taps: usize,
    pub c: usize,
    pub c_pad: usize,
    pub w: Vec<i8>,
    pub colsum: Vec<i32>,
    /// VNNI layout: per block of a vector's bytes (64 channels for AVX-512, 32 for the 256-bit
    /// path), per group of 4 taps, 4 vectors whose i32 lane (L, j) holds the 4 tap weights of
    /// channel `16L + 4i + j` (the order byte interleaving of 4 tap rows produces, 128 bits at a
    /// time), plus the epilogue parameters in the same order.
    pub vnni: Aligned<i8>,
    pub rq_perm: Option<Requant>,
    /// `vnni` groups are window columns (the 4 bytes of a lane: rows 0..kh, kh ≤ 4), so one
    /// interleaved input column serves every output pixel that reads it; otherwise groups are 4
    /// consecutive taps.
    pub by_cols: bool,
    /// A 5x5 window on 64- or 32-channel blocks (stride 1 or 2, no column dilation): groups 0-4 are
    /// the window columns' rows 0-3 (kept across output pixels as with `by_cols`), group 5 row 4's
    /// columns 0-3, group 6 tap (4, 4) alone in byte 0.
    pub five: bool,
    pub groups: usize,
    /// AVX2 layout: per 16-channel block, per pair of taps (2p, 2p+1; a missing second tap is 0),
    /// 32 i16: channels 0-15 in order, each as (tap 2p, tap 2p+1), the order in which the kernel
    /// interleaves two taps' 16 input bytes (`vpunpck{l,h}bw`) before widening them to i16.
    pub pairs: Vec<i16>,
    /// Output pixels per `vnni` vector: 1, or 2 / 4 where the layer's 32 / 16 channels are
    /// repeated across a 64-channel block (the AVX-512 kernel then computes neighbouring pixels in
    /// one vector).
    pub ppv: usize,
}

/// Channel of lane `(L, j)` (lane index `4L + j`) of vector `i` in a 64- or 32-channel block.
#[inline(always)]
pub(crate) fn dw_perm(i: usize, lane: usize) -> usize {
    16 * (lane / 4) + 4 * i + lane % 4
}
