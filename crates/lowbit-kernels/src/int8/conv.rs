//! Quantized 2-D convolution ([`QConv`]): the strategy per geometry (1x1 GEMM, im2col, shifted rows,
//! space to depth, depthwise), weights packed once, and the input rearrangements each strategy needs
//! (zero-point padding, NHWC im2col, space-to-depth blocks).

use rayon::prelude::*;

use crate::epilogue::{Out, OutPtr, Requant};
use crate::geom::{ConvGeom, DwGeom};
use crate::int8::bands::{depthwise_bands, pad_nhwc};
use crate::int8::gemm::{gemm, gemm_ex};
use crate::int8::narrow::{narrow_conv, NarrowW};
use crate::int8::pack::{dw_perm, PackedB, PackedDw};
use crate::int8::s2d::{copy_small, S2d};
use crate::int8::tile::{ASrc, RowMap};
use crate::int8::winograd::Winograd;
use crate::isa::Isa;

/// How a quantized convolution runs.
#[derive(Clone, Debug)]
enum ConvKind {
    /// Stride-1 1x1 convolution on an input whose channels are a multiple of 4: GEMM over the
    /// activation buffer itself.
    Direct(PackedB, Requant),
    /// im2col into NHWC rows (zero-point padded), then GEMM; one entry per group.
    Im2col(Vec<(PackedB, Requant)>),
    /// Stride-1 window convolution as a GEMM over the zero-point-padded input, one tap per
    /// window position (tap byte offsets), no im2col copy; rows over the padding columns are
    /// computed and dropped.
    Shifted(PackedB, Requant, Vec<usize>),
    /// Stride-2 convolution on few input channels (the 7x7 stem): the zero-point-padded input
    /// rearranged into 2x2 blocks (space to depth: 4·c_in channels, padded to `s2d.cs`), which
    /// turns the window into a stride-1 ⌈kh/2⌉×⌈kw/2⌉ one run as shifted rows, one tap per window
    /// row. No im2col copy; the price is the zero weights of the odd window's missing row and
    /// column (the stem's 147-byte reduction becomes 192, or 256 for AMX's whole 64-byte taps).
    SpaceToDepth(PackedB, Requant, S2d),
    Depthwise(PackedDw, Requant),
    /// 1 to 4 output channels, stride 1, no dilation (AVX-512 VNNI): the vector along the
    /// reduction ([`narrow`]), over the zero-point-padded input with `cs` bytes per pixel (`c_in`
    /// rounded up to 4). A 1x1 window on channels a multiple of 4 stays a direct GEMM (the
    /// expansion + depthwise fusion reads its packing).
    Narrow(NarrowW, Requant),
    /// Stride-1 3x3 as integer Winograd F(4x4, 3x3) ([`crate::int8::winograd`]), bit-exact with the
    /// direct convolution (admitted only when its bound holds); the epilogue without the
    /// zero-point correction.
    Winograd(Winograd, Requant),
}

/// Folds the activation zero point into the epilogue of a convolution's GEMM (`-zx·Σ_k w` into the
/// integer bias, which the column sums are kept for; they are dropped after) and lets the epilogue
/// skip the clamp where the reduction length allows.
fn fold_zero_point(b: &mut PackedB, mut r: Requant, zx: u8) -> Requant {
    let corr: Vec<i32> = b.colsum.iter().map(|&s| -(zx as i32) * s).collect();
    r.add_bias_i(&corr);
    r.allow_unclamped(b.k4 as f64 * 255.0 * 128.0);
    b.colsum = vec![];
    r
}

/// The AVX2 depthwise weights (see [`PackedDw::pairs`]) of `w` ([c][taps] int8), for the whole
/// 16-channel blocks.
fn dw_pairs(w: &[i8], c: usize, taps: usize) -> Vec<i16> {
    let np = taps.div_ceil(2);
    let mut v = vec![0i16; c / 16 * np * 32];
    for b in 0..c / 16 {
        for p in 0..np {
            for j in 0..16 {
                let ch = b * 16 + j;
                let at = (b * np + p) * 32 + 2 * j;
                for k in 0..2 {
                    let t = 2 * p + k;
                    v[at + k] = if t < taps { w[ch * taps + t] as i16 } else { 0 };
                }
            }
        }
    }
    v
}

/// A quantized 2-D convolution (one image at a time), weights packed for one path.
#[derive(Clone, Debug)]
pub struct QConv {
    pub geom: ConvGeom,
    /// Activation zero point (uint8).
    pub zx: u8,
    kind: ConvKind,
}

impl QConv {
    /// `w` is OIHW int8 (zero point 0); `rq` per output channel with the bias already in it (the
    /// activation zero-point correction is added here).
    pub fn new(isa: Isa, geom: ConvGeom, w: &[i8], zx: u8, rq: Requant) -> QConv {
        QConv::with_choice(isa, geom, w, zx, rq, wino_mode())
    }

    /// [`QConv::new`] with the Winograd choice given: `Some(false)` never, `Some(true)` wherever
    /// exact, `None` where it is expected to pay on `isa` (by default only on AVX2, where measured).
    pub fn with_choice(isa: Isa, geom: ConvGeom, w: &[i8], zx: u8, rq: Requant, wino: Option<bool>) -> QConv {
        let wino = wino.unwrap_or_else(|| wino_pays(isa, &geom));
        QConv::with_winograd(isa, geom, w, zx, rq, wino)
    }

    /// [`QConv::new`] with the Winograd choice made by the caller: `wino` runs a stride-1 3x3
    /// convolution as integer Winograd wherever that is exact (on any path, scalar included).
    pub fn with_winograd(isa: Isa, geom: ConvGeom, w: &[i8], zx: u8, rq: Requant, wino: bool) -> QConv {
        let g = &geom;
        let taps = g.kh * g.kw;
        let (cig, cog) = (g.c_in / g.group, g.c_out / g.group);
        let kind = if wino && Winograd::exact_for(g, w, zx) {
            let mut rq = rq;
            rq.allow_unclamped((taps * g.c_in) as f64 * 255.0 * 128.0);
            ConvKind::Winograd(Winograd::new(isa, g, w), rq)
        } else if g.is_depthwise() {
            let c_pad = g.c_out.div_ceil(16) * 16;
            let mut wv = vec![0i8; taps * c_pad];
            let mut colsum = vec![0i32; g.c_out];
            for c in 0..g.c_out {
                for t in 0..taps {
                    wv[t * c_pad + c] = w[c * taps + t];
                    colsum[c] += w[c * taps + t] as i32;
                }
            }
            let mut rq = rq;
            let corr: Vec<i32> = colsum.iter().map(|&s| -(zx as i32) * s).collect();
            rq.add_bias_i(&corr);
            let (mut vnni, mut rq_perm) = (crate::aligned::Aligned::new(), None);
            // Channel blocks of a vector's bytes: 64 for AVX-512, 32 for the 256-bit VNNI path.
            let bw = match isa {
                Isa::Avx512Vnni | Isa::Amx => 64,
                Isa::AvxVnni => 32,
                _ => 0,
            };
            let by_cols = g.kh <= 4 && g.dw == 1 && g.sw <= 2;
            let five = bw > 0 && (g.kh, g.kw, g.dw) == (5, 5, 1) && g.sw <= 2;
            let groups = if by_cols { g.kw } else { taps.div_ceil(4) };
            // group and byte of tap t (`five`: the 5 columns' rows 0-3, row 4's columns 0-3, tap (4, 4))
            let slot = |t: usize| match (by_cols, five, t / g.kw, t % g.kw) {
                (true, _, ky, kx) => (kx, ky),
                (_, true, 4, 4) => (6, 0),
                (_, true, 4, kx) => (5, kx),
                (_, true, ky, kx) => (kx, ky),
                _ => (t / 4, t % 4),
            };
            // Pixels per 64-byte vector: 16 or 32 channels at stride 1 in a 3x3 window fill the
            // AVX-512 kernel's 64 lanes with 4 or 2 neighbouring output pixels (their windows'
            // columns are neighbouring 64-byte loads), the channels repeated across the block.
            let ppv = match (bw, g.c_out, g.kh, g.kw, g.sw, g.dh, by_cols) {
                (64, 16 | 32, 3, 3, 1, 1, true) => 64 / g.c_out,
                _ => 1,
            };
            // The packed block's channel `c` is the layer's channel `c mod c_out` when it repeats.
            let real = |c: usize| if ppv > 1 { c % g.c_out } else { c };
            if bw > 0 && rq.out != Out::F32 && taps <= 64 {
                let blocks = (g.c_out * ppv).div_ceil(bw);
                vnni = crate::aligned::Aligned::zeroed(blocks * groups * 4 * bw);
                let nb = blocks * bw;
                let (mut sc, mut bi, mut bf) = (vec![0f32; nb], vec![0i32; nb], vec![0f32; nb]);
                let rbf = |c: usize| if rq.bias_f.is_empty() { 0.0 } else { rq.bias_f[c] };
                for b in 0..blocks {
                    for i in 0..4 {
                        for lane in 0..bw / 4 {
                            let c = b * bw + dw_perm(i, lane);
                            let at = b * bw + i * (bw / 4) + lane;
                            if c < g.c_out * ppv {
                                let c = real(c);
                                (sc[at], bi[at], bf[at]) = (rq.scale[c], rq.bias_i[c], rbf(c));
                                for t in 0..taps {
                                    let (gr, byte) = slot(t);
                                    vnni[((b * groups + gr) * 4 + i) * bw + lane * 4 + byte] = w[c * taps + t];
                                }
                            }
                        }
                    }
                }
                let bf = if rq.bias_f.is_empty() { vec![] } else { bf };
                let mut rp = Requant { scale: sc, bias_i: bi, bias_f: bf, ..rq.clone() };
                rp.allow_unclamped(taps as f64 * 255.0 * 128.0);
                rq_perm = Some(rp);
            }
            let ppv = if rq_perm.is_some() { ppv } else { 1 };
            let five = five && rq_perm.is_some();
            let (mut wv, mut colsum, mut rq) = (wv, colsum, rq);
            if rq_perm.is_some() {
                // The VNNI kernel reads only its own copies.
                (wv, colsum) = (vec![], vec![]);
                (rq.scale, rq.bias_i, rq.bias_f) = (vec![], vec![], vec![]);
            }
            let pairs = if matches!(isa, Isa::Avx2 | Isa::AvxVnni) && rq_perm.is_none() {
                dw_pairs(w, g.c_out, taps)
            } else {
                vec![]
            };
            ConvKind::Depthwise(
                PackedDw {
                    isa,
                    taps,
                    c: g.c_out,
                    c_pad,
                    w: wv,
                    colsum,
                    vnni,
                    rq_perm,
                    by_cols,
                    five,
                    groups,
                    pairs,
                    ppv,
                },
                rq,
            )
        } else if isa != Isa::Scalar
            && g.group == 1
            && g.c_out <= 4
            && (g.sh, g.sw, g.dh, g.dw) == (1, 1, 1, 1)
            && !(g.is_pointwise() && g.c_in.is_multiple_of(4))
        {
            let cs = g.c_in.div_ceil(4) * 4;
            let (_, wp) = QConv::shifted_hw(g);
            let offs = (0..taps).map(|t| ((t / g.kw) * wp + t % g.kw) * cs).collect();
            let nw = NarrowW::new(
                isa,
                g.c_out,
                cs,
                offs,
                |j, t, c| if c < g.c_in { w[(j * g.c_in + c) * taps + t] } else { 0 },
            );
            let mut rq = rq;
            let corr: Vec<i32> = nw.colsum().iter().map(|&s| -(zx as i32) * s).collect();
            rq.add_bias_i(&corr);
            rq.allow_unclamped((taps * cs) as f64 * 255.0 * 128.0);
            ConvKind::Narrow(nw, rq)
        } else if let Some(s2d) = S2d::fits(isa, g) {
            // k = window row · (kw·cs) + window column · cs + (dy·2 + dx)·c_in + c
            let (ci, kwb) = (g.c_in, s2d.kw * s2d.cs);
            let mut b = PackedB::new(isa, s2d.kh * kwb, g.c_out, |k, j| {
                let (ky2, kx2, ch) = (k / kwb, k % kwb / s2d.cs, k % s2d.cs);
                let (dy, dx, c) = (ch / (2 * ci), ch / ci % 2, ch % ci);
                let (ky, kx) = (2 * ky2 + dy, 2 * kx2 + dx);
                if ch < 4 * ci && ky < g.kh && kx < g.kw {
                    w[((j * ci + c) * g.kh + ky) * g.kw + kx]
                } else {
                    0
                }
            });
            let r = fold_zero_point(&mut b, rq, zx);
            ConvKind::SpaceToDepth(b, r, s2d)
        } else {
            let mut parts = vec![];
            for gi in 0..g.group {
                // k = tap * cig + ci, matching the NHWC im2col row.
                let mut b = PackedB::new(isa, taps * cig, cog, |k, j| {
                    let (t, ci) = (k / cig, k % cig);
                    w[((gi * cog + j) * cig + ci) * taps + t]
                });
                let r = fold_zero_point(&mut b, rq.slice(gi * cog, cog), zx);
                parts.push((b, r));
            }
            let (_, wp) = QConv::shifted_hw(g);
            if g.is_pointwise() && g.c_in.is_multiple_of(4) {
                let (b, r) = parts.pop().unwrap();
                ConvKind::Direct(b, r)
            } else if g.group == 1
                && g.sh == 1
                && g.sw == 1
                && g.dh == 1
                && g.dw == 1
                && g.c_in.is_multiple_of(4)
                && g.ow >= 28
            {
                let (b, r) = parts.pop().unwrap();
                let taps: Vec<usize> = (0..taps).map(|t| ((t / g.kw) * wp + t % g.kw) * g.c_in).collect();
                ConvKind::Shifted(b, r, taps)
            } else {
                ConvKind::Im2col(parts)
            }
        };
        QConv { geom, zx, kind }
    }

    /// The integer path the weights were packed for.
    pub fn isa(&self) -> Isa {
        match &self.kind {
            ConvKind::Direct(b, _) | ConvKind::Shifted(b, _, _) | ConvKind::SpaceToDepth(b, _, _) => b.isa,
            ConvKind::Im2col(p) => p[0].0.isa,
            ConvKind::Depthwise(w, _) => w.isa,
            ConvKind::Narrow(w, _) => w.isa,
            ConvKind::Winograd(w, _) => w.isa,
        }
    }

    pub fn kernel_name(&self) -> &'static str {
        match self.kind {
            ConvKind::Direct(..) => "int8 1x1 gemm",
            ConvKind::Im2col(..) => "int8 im2col+gemm",
            ConvKind::Shifted(..) => "int8 shifted-rows gemm",
            ConvKind::SpaceToDepth(..) => "int8 space-to-depth gemm",
            ConvKind::Depthwise(..) => "int8 depthwise",
            ConvKind::Narrow(..) => "int8 narrow conv",
            ConvKind::Winograd(..) => "int8 winograd f(4x4,3x3)",
        }
    }

    pub fn out(&self) -> Out {
        match &self.kind {
            ConvKind::Direct(_, r)
            | ConvKind::Depthwise(_, r)
            | ConvKind::Shifted(_, r, _)
            | ConvKind::SpaceToDepth(_, r, _)
            | ConvKind::Narrow(_, r)
            | ConvKind::Winograd(_, r) => r.out,
            ConvKind::Im2col(p) => p[0].1.out,
        }
    }

    /// Bytes of packed weights and epilogue parameters held.
    pub fn weight_bytes(&self) -> usize {
        match &self.kind {
            ConvKind::Direct(b, r) | ConvKind::Shifted(b, r, _) | ConvKind::SpaceToDepth(b, r, _) => {
                b.bytes() + r.bytes()
            }
            ConvKind::Im2col(p) => p.iter().map(|(b, r)| b.bytes() + r.bytes()).sum(),
            ConvKind::Depthwise(w, r) => {
                w.w.len() + w.colsum.len() * 4 + w.vnni.len() + r.bytes() + w.rq_perm.as_ref().map_or(0, |p| p.bytes())
            }
            ConvKind::Narrow(w, rq) => w.bytes() + rq.bytes(),
            ConvKind::Winograd(w, rq) => w.bytes() + rq.bytes(),
        }
    }

    /// Padded input height and width for the shifted-rows path.
    fn shifted_hw(g: &ConvGeom) -> (usize, usize) {
        (g.oh + g.kh - 1, g.ow + g.kw - 1)
    }

    /// The depthwise kernels' view of the geometry (padded input rows of `cs` bytes per pixel).
    ///
    /// The vector kernels that read a pixel's channels in whole blocks (64 bytes on AVX-512, 32 on
    /// AVX-VNNI) get a channel stride rounded up to the block, so that with the band starting on a
    /// cache line every block load does too (the padding bytes hold the zero point and feed only
    /// lanes that are not stored). With 96 or 144 channels every other block load straddled two
    /// lines (see `crate::aligned` for what that costs).
    pub(crate) fn dw_geom(&self) -> DwGeom {
        let g = &self.geom;
        let (_, wp) = self.padded_hw();
        let block = match &self.kind {
            ConvKind::Depthwise(w, _) if w.rq_perm.is_some() && w.ppv == 1 => match w.isa {
                Isa::Avx512Vnni | Isa::Amx => 64,
                Isa::AvxVnni => 32,
                _ => 1,
            },
            _ => 1,
        };
        DwGeom {
            c: g.c_in,
            cs: g.c_in.div_ceil(block) * block,
            wp,
            kh: g.kh,
            kw: g.kw,
            sh: g.sh,
            sw: g.sw,
            dh: g.dh,
            dw: g.dw,
            oh: g.oh,
            ow: g.ow,
        }
    }

    /// Runs as one GEMM over its input (a 1x1 convolution on channels a multiple of 4)?
    pub fn direct_gemm(&self) -> bool {
        self.direct().is_some()
    }

    /// The packed weights of a 1x1 convolution run as one GEMM over its input.
    pub(crate) fn direct(&self) -> Option<(&PackedB, &Requant)> {
        match &self.kind {
            ConvKind::Direct(b, r) => Some((b, r)),
            _ => None,
        }
    }

    /// The packed weights of a depthwise convolution.
    pub(crate) fn depthwise(&self) -> Option<(&PackedDw, &Requant)> {
        match &self.kind {
            ConvKind::Depthwise(w, r) => Some((w, r)),
            _ => None,
        }
    }

    fn padded_hw(&self) -> (usize, usize) {
        let g = &self.geom;
        ((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1)
    }

    /// Scratch bytes `run` needs.
    pub fn scratch_len(&self) -> usize {
        let g = &self.geom;
        match &self.kind {
            ConvKind::Direct(..) => 0,
            ConvKind::Im2col(p) => g.oh * g.ow * p[0].0.k4,
            ConvKind::Shifted(..) => {
                let (hp, wp) = Self::shifted_hw(g);
                (hp * wp + g.kw) * g.c_in
            }
            // Bands of padded rows in a buffer per thread (see `depthwise_bands`).
            ConvKind::Depthwise(..) => 0,
            ConvKind::SpaceToDepth(_, _, s2d) => s2d.len(),
            ConvKind::Narrow(w, _) => {
                let (hp, wp) = Self::shifted_hw(g);
                (hp * wp + g.kw) * w.cs
            }
            ConvKind::Winograd(w, _) => w.scratch_len(),
        }
    }

    /// Runs on one NHWC image `x` (`h*w*c_in` bytes), writing NHWC `oh*ow*c_out` outputs.
    ///
    /// # Safety
    /// `out` must hold `oh*ow*c_out` elements of the output type; the path must be supported.
    pub unsafe fn run(&self, x: &[u8], out: OutPtr, scratch: &mut [u8], threads: usize) {
        let g = &self.geom;
        assert!(x.len() >= g.h * g.w * g.c_in);
        let p = g.oh * g.ow;
        match &self.kind {
            ConvKind::Direct(b, r) => gemm(p, x.as_ptr(), g.c_in, b, r, out, g.c_out, threads),
            ConvKind::Im2col(parts) => {
                let k4 = parts[0].0.k4;
                let cig = g.c_in / g.group;
                let cog = g.c_out / g.group;
                let a = &mut scratch[..p * k4];
                for (gi, (b, r)) in parts.iter().enumerate() {
                    im2col_nhwc(g, x, gi * cig, cig, k4, self.zx, a, threads);
                    let o = OutPtr(out.at(r.out, 0, gi * cog, 0));
                    gemm(p, a.as_ptr(), k4, b, r, o, g.c_out, threads);
                }
            }
            ConvKind::Shifted(b, r, taps) => {
                let (hp, wp) = Self::shifted_hw(g);
                let xp = &mut scratch[..(hp * wp + g.kw) * g.c_in];
                pad_nhwc(g, x, hp, wp, g.c_in, self.zx, &mut xp[..hp * wp * g.c_in], threads);
                xp[hp * wp * g.c_in..].fill(self.zx);
                let src = ASrc { lda: g.c_in, taps, kc: g.c_in };
                let map = RowMap::Padded { wp, ow: g.ow };
                gemm_ex(g.oh * wp, xp.as_ptr(), src, map, b, r, out, g.c_out, threads);
            }
            ConvKind::SpaceToDepth(b, r, s2d) => {
                let xp = &mut scratch[..s2d.len()];
                s2d.fill(g, x, self.zx, xp);
                let src = ASrc { lda: s2d.cs, taps: &s2d.taps, kc: s2d.kw * s2d.cs };
                let map = RowMap::Padded { wp: s2d.wp, ow: g.ow };
                gemm_ex(g.oh * s2d.wp, xp.as_ptr(), src, map, b, r, out, g.c_out, threads);
            }
            ConvKind::Depthwise(w, r) => depthwise_bands(g, &self.dw_geom(), x, self.zx, w, r, out, threads),
            ConvKind::Narrow(w, rq) => {
                let (hp, wp) = Self::shifted_hw(g);
                let xp = &mut scratch[..(hp * wp + g.kw) * w.cs];
                pad_nhwc(g, x, hp, wp, w.cs, self.zx, &mut xp[..hp * wp * w.cs], threads);
                xp[hp * wp * w.cs..].fill(self.zx);
                let map = RowMap::Padded { wp, ow: g.ow };
                narrow_conv(g.oh * wp, xp, w, rq, map, out, g.c_out, threads)
            }
            ConvKind::Winograd(w, rq) => w.run(g, x, self.zx, rq, out, scratch, threads),
        }
    }
}

/// `LOWBIT_WINOGRAD=0|1`: never / wherever exact (unset: where [`wino_pays`] says).
pub fn wino_mode() -> Option<bool> {
    match std::env::var("LOWBIT_WINOGRAD").ok()?.as_str() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Whether integer Winograd is expected to beat the direct kernels for `g` on `isa` (by default
/// only where measured). AVX2's direct kernels widen bytes to 16 bits for `vpmaddwd`, so
/// Winograd's 4x fewer products on the same instruction pay in full: 3.1-4.0x on ResNet-18's
/// layer 1-3 and U²-Netp's 3x3 shapes (`cargo bench -p lowbit-kernels --bench int8 -- 3x3`, AMD
/// EPYC, AVX2), but 0.8x on layer 4 (7x7, 512 channels: 19 MB of transformed weights streamed for
/// 4 tiles), hence at least 8 tiles and at most 256 input channels (8+ tiles per task). Few output
/// channels too: U²-Netp's 64->1 side outputs padded a 16-column GEMM tile with 15 empty columns
/// (Conv_945 at 320x320 44 ms, as Winograd 10 ms); fewer than 8 input channels (the RGB stem) lose
/// (11.3 -> 14.6 ms: the transforms of 16 padded channels for 3 real ones).
///
/// On the VNNI paths (`vpdpwssd`: half of `vpdpbusd`'s products per instruction, so at best 2x
/// fewer instructions less the transforms) it pays only where the transforms are small next to
/// the GEMM and the transformed weights stay in L2: at least 64 input and output channels, at most
/// 1.5 MB of `U` (36·c_in·c_out·2 bytes: ResNet-18's 128-channel layers) and 48+ tiles. Measured on
/// an AMD EPYC with AVX-512 VNNI and AVX-VNNI (`cargo bench -p lowbit-kernels --bench int8 -- 3x3`,
/// 1 core): ResNet-18 layer 1 (64@56) 0.235 -> 0.166 ms, layer 2 (128@28) 0.240 -> 0.153 ms,
/// U²-Netp 64->64@80 0.493 -> 0.363 ms (avxvnni 0.474 -> 0.316, 0.476 -> 0.288, 0.993 -> 0.670),
/// but 16 output channels 0.216 -> 0.296 ms (the transforms dominate) and ResNet-18 layer 3
/// (256@14, 4.7 MB of `U` for 16 tiles) slower inside the network than alone (cold weights).
/// AMX keeps its tiles.
fn wino_pays(isa: Isa, g: &ConvGeom) -> bool {
    let tiles = g.oh.div_ceil(4) * g.ow.div_ceil(4);
    match isa {
        // 1-4 output channels run along the reduction (`int8 narrow conv`): 4-7x Winograd's rate there.
        Isa::Avx2 => g.c_in >= 8 && g.c_in <= 256 && tiles >= 8 && g.c_out > 4,
        Isa::AvxVnni | Isa::Avx512Vnni => {
            let u_bytes = 36 * g.c_in.div_ceil(16) * 16 * g.c_out.div_ceil(16) * 16 * 2;
            g.c_in >= 64 && g.c_out >= 64 && u_bytes <= 3 << 19 && tiles >= 48
        }
        _ => false,
    }
}

/// NHWC im2col for channels `c0..c0+cig`: row `p` = for each tap, `cig` bytes (the zero point
/// outside the image), then zeros up to `k4`.
#[allow(clippy::too_many_arguments)]
fn im2col_nhwc(g: &ConvGeom, x: &[u8], c0: usize, cig: usize, k4: usize, zx: u8, a: &mut [u8], threads: usize) {
    let taps = g.kh * g.kw;
    // With one group and no dilation, the kw taps of a window row are one contiguous run.
    let runs = cig == g.c_in && g.dw == 1;
    let job = |(oy, orow): (usize, &mut [u8])| {
        for ox in 0..g.ow {
            let row = &mut orow[ox * k4..(ox + 1) * k4];
            let ix0 = (ox * g.sw) as isize - g.pl as isize;
            let inside_x = ix0 >= 0 && ix0 as usize + (g.kw - 1) * g.dw < g.w;
            for ky in 0..g.kh {
                let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
                let seg = &mut row[ky * g.kw * cig..(ky + 1) * g.kw * cig];
                if iy < 0 || iy >= g.h as isize {
                    seg.fill(zx);
                    continue;
                }
                let rbase = iy as usize * g.w;
                if runs && inside_x {
                    let s = (rbase + ix0 as usize) * g.c_in;
                    copy_small(seg, &x[s..s + g.kw * cig]);
                    continue;
                }
                for kx in 0..g.kw {
                    let ix = ix0 + (kx * g.dw) as isize;
                    let dst = &mut seg[kx * cig..(kx + 1) * cig];
                    if ix < 0 || ix >= g.w as isize {
                        dst.fill(zx);
                    } else {
                        let s = (rbase + ix as usize) * g.c_in + c0;
                        copy_small(dst, &x[s..s + cig]);
                    }
                }
            }
            row[taps * cig..].fill(0);
        }
    };
    if threads > 1 && g.oh * g.ow * k4 >= 1 << 16 {
        a[..g.oh * g.ow * k4].par_chunks_mut(g.ow * k4).enumerate().for_each(job);
    } else {
        a[..g.oh * g.ow * k4].chunks_mut(g.ow * k4).enumerate().for_each(job);
    }
}
