//! Fast f32 convolution in NCHW: pointwise convolutions go straight to GEMM, stride-1 windows run as
//! "shifted rows" of a padded copy, other windows through im2col + GEMM, small planes on the
//! channel-vector GEMM, depthwise ones on [`crate::fp32::depthwise`]. The strategy is chosen once,
//! when the weights are packed for a path ([`PackedConv::new`]). Bias and the fused activation are
//! applied in the GEMM epilogue.

use lowbit_core::Act;
use rayon::prelude::*;

use crate::fp32::depthwise::depthwise;
use crate::fp32::direct_t::{self, DirectT};
use crate::fp32::gemm::{pack_t, prefer_t, sgemm_bias_act, sgemm_rows, sgemm_t};
use crate::fp32::layout::{clamp_of, fused_clamp, BRows, Ptr};
use crate::fp32::winograd::{self, Wino};
#[cfg(target_arch = "x86_64")]
use crate::fp32::{avx2, avx512};
use crate::geom::{valid_range, ConvGeom};
use crate::isa::F32Isa;

/// A convolution with its weights laid out for one path's kernels (done once, at plan time).
#[derive(Clone, Debug)]
pub struct PackedConv {
    pub isa: F32Isa,
    pub geom: ConvGeom,
    /// `[c_out, c_in/group * kh * kw]`, row-major (ONNX order already fits); empty on the
    /// channel-vector path, which holds `wt` instead.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub act: Act,
    /// Shifted path: start of each B row in the padded input.
    pub row_offsets: Vec<usize>,
    /// Channel-vector path: the weights transposed ([`pack_t`]) and their row length.
    pub wt: Vec<f32>,
    pub mp: usize,
    shifted: bool,
    /// Winograd F(4x4, 3x3): the transformed weights (`weight` is then empty).
    wino: Option<Box<Wino>>,
    /// Shifted rows with output channels in the lanes ([`direct_t`]): its weights (`weight` is
    /// then empty).
    direct: Option<Box<DirectT>>,
}

/// Does `g` run on the channel-vector GEMM ([`sgemm_t`]) on path `isa`? Small planes (7x7) do:
/// vectors along the spatial axis would leave a quarter of their lanes empty.
fn channel_vector(isa: F32Isa, g: &ConvGeom) -> bool {
    if g.group != 1 {
        return false;
    }
    let n = g.oh * g.ow;
    // Columns the spatial kernel computes: the padded row width on the shifted path.
    let cols = if !g.is_pointwise() && g.sh == 1 && g.sw == 1 { g.oh * (g.ow + (g.kw - 1) * g.dw) } else { n };
    prefer_t(isa, g.c_out, n, g.k(), cols)
}

/// Padded input height and width of one plane for the shifted path, and the planes per input
/// channel: at stride 1 the zero-padded image, at stride 2 (no dilation) its four phases (even and
/// odd rows by even and odd columns), each `oh + (kh-1)/2` rows of `ow + (kw-1)/2`, in which
/// every window tap is again a shifted row: tap `(ky, kx)` of output `(oy, ox)` is element
/// `(oy + ky/2, ox + kx/2)` of phase `(ky mod 2, kx mod 2)`. For [`direct_t`] (`direct`), which
/// reads along rows at any stride, the plain zero-padded image at every stride.
fn padded_hw(g: &ConvGeom, direct: bool) -> (usize, usize, usize) {
    if direct {
        return ((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1, 1);
    }
    if g.sh == 2 {
        (g.oh + (g.kh - 1) / 2, g.ow + (g.kw - 1) / 2, 4)
    } else {
        (g.oh + (g.kh - 1) * g.dh, g.ow + (g.kw - 1) * g.dw, 1)
    }
}

/// Whether the shifted path takes a convolution of this stride: 1, or 2 in both axes without
/// dilation (as phases, [`padded_hw`]) for windows at least 2x2 (a 1x1 window reads one phase:
/// its im2col is one gather).
fn shiftable(g: &ConvGeom) -> bool {
    (g.sh == 1 && g.sw == 1) || (g.sh == 2 && g.sw == 2 && g.dh == 1 && g.dw == 1 && g.kh >= 2 && g.kw >= 2)
}

impl PackedConv {
    /// Chooses the strategy for `geom` on path `isa` and lays the weights out for it (direct
    /// kernels only: results equal the reference up to summation order).
    pub fn new(isa: F32Isa, geom: ConvGeom, weight: Vec<f32>, bias: Option<Vec<f32>>, act: Act) -> PackedConv {
        Self::with_strategy(isa, geom, weight, bias, act, Some(false), None)
    }

    /// As [`PackedConv::new`], with stride-1 3x3 convolutions as Winograd F(4x4, 3x3)
    /// ([`crate::fp32::winograd`]) `Some(true)` wherever the geometry allows, `Some(false)` never,
    /// `None` where [`winograd::pays`] says; and on the direct channel-lane kernel ([`direct_t`],
    /// AVX-512 and AVX2, one group, rows that can be shifted, and on AVX2 1x1 convolutions)
    /// `Some(true)` wherever it can run, `Some(false)` never, `None` where it pays.
    pub fn with_strategy(
        isa: F32Isa,
        geom: ConvGeom,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        act: Act,
        winograd: Option<bool>,
        direct: Option<bool>,
    ) -> PackedConv {
        assert_eq!(weight.len(), geom.c_out * geom.k(), "weight size does not fit the geometry");
        let bias = bias.unwrap_or_else(|| vec![0.0; geom.c_out]);
        let wino = match winograd {
            Some(true) => winograd::applies(&geom),
            Some(false) => false,
            None => winograd::pays(isa, &geom),
        };
        if wino {
            let w = Some(Box::new(Wino::new(isa, &geom, &weight)));
            return PackedConv { wino: w, ..Self::bare(isa, geom, bias, act, vec![], false) };
        }
        // 1x1 convolutions on small planes on AVX2: output channels in the lanes, straight from
        // the input planes (their rows: [`pointwise_rows`]), where the channel-vector GEMM would
        // run (`cargo bench -p lowbit-kernels --bench f32 -- 1x1`, `LOWBIT_F32_DIRECT=0|1`, AMD
        // EPYC Zen 3, GMAC/s: 160->960 at 7x7 27.3 -> 41.7, 960->160 28.4 -> 40.6, 320->1280 28.1
        // -> 42.0, 64->384 36.9 -> 42.1; on larger planes the spatial GEMM keeps its lead, 576->96
        // at 14x14 44.7 against 40.1, 16->96 at 112x112 39.8 against 26.1).
        if isa == F32Isa::Avx2
            && geom.group == 1
            && geom.is_pointwise()
            && direct.or_else(direct_forced).unwrap_or_else(|| channel_vector(isa, &geom))
        {
            let hw = geom.h * geom.w;
            let offs = (0..geom.c_in).map(|c| c * hw).collect();
            let d = Some(Box::new(DirectT::new(isa, geom.c_out, geom.k(), &weight)));
            return PackedConv { direct: d, ..Self::bare(isa, geom, bias, act, offs, false) };
        }
        // Output channels in the lanes straight from the shifted rows (AVX-512 and AVX2, one group).
        let direct = (isa == F32Isa::Avx512 || isa == F32Isa::Avx2)
            && geom.group == 1
            && !geom.is_pointwise()
            && !geom.is_depthwise()
            && shiftable(&geom)
            && direct.unwrap_or_else(|| direct_pays(isa, &geom));
        let cv = channel_vector(isa, &geom) && !direct;
        // Shifted rows need a GEMM that reads B through row offsets (AVX-512 streams them, AVX2
        // packs its panels from them; the portable path's is a plain loop). They compute
        // `(kw - 1)·dw` extra columns per output row, so on AVX2, which has no channel-vector
        // kernel for small planes, only where that waste is small.
        let simd = isa == F32Isa::Avx512 || isa == F32Isa::Avx2;
        // The channel-vector GEMM (small planes) reads B through the same offsets at stride 2 only:
        // at stride 1 its `kw - 1` extra columns per row cost more than the im2col saves.
        let shifted = direct
            || simd && !geom.is_pointwise() && !geom.is_depthwise() && shiftable(&geom) && (!cv || geom.sh == 2) && {
                let (_, wp, _) = padded_hw(&geom, false);
                isa == F32Isa::Avx512 || (wp - geom.ow) * 100 <= 15 * geom.ow
            };
        let mut row_offsets = vec![];
        if shifted {
            let (hp, wp, phases) = padded_hw(&geom, direct);
            let cig = geom.c_in / geom.group;
            for c in 0..cig {
                for ky in 0..geom.kh {
                    for kx in 0..geom.kw {
                        row_offsets.push(if phases == 4 {
                            (((ky % 2) * 2 + kx % 2) * cig + c) * hp * wp + (ky / 2) * wp + kx / 2
                        } else {
                            c * hp * wp + ky * geom.dh * wp + kx * geom.dw
                        });
                    }
                }
            }
        }
        if direct {
            let d = Some(Box::new(DirectT::new(isa, geom.c_out, geom.k(), &weight)));
            return PackedConv { direct: d, ..Self::bare(isa, geom, bias, act, row_offsets, shifted) };
        }
        // The channel-vector path keeps only the transposed copy.
        let (weight, wt, mp) = if cv {
            let (wt, mp) = pack_t(geom.c_out, geom.k(), &weight, geom.k());
            (vec![], wt, mp)
        } else {
            (weight, vec![], 0)
        };
        PackedConv { isa, geom, weight, bias, act, row_offsets, wt, mp, shifted, wino: None, direct: None }
    }

    /// A convolution whose weights live elsewhere (Winograd's or the direct kernel's).
    fn bare(
        isa: F32Isa,
        geom: ConvGeom,
        bias: Vec<f32>,
        act: Act,
        row_offsets: Vec<usize>,
        shifted: bool,
    ) -> PackedConv {
        let (weight, wt, mp, wino, direct) = (vec![], vec![], 0, None, None);
        PackedConv { isa, geom, weight, bias, act, row_offsets, wt, mp, shifted, wino, direct }
    }

    /// The padded planes the shifted path reads: height, width and phases per channel.
    fn planes_hw(&self) -> (usize, usize, usize) {
        padded_hw(&self.geom, self.direct.is_some())
    }

    /// Runs on the direct channel-lane kernel ([`direct_t`])?
    pub fn direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Packed for the channel-vector GEMM?
    pub fn channel_vector(&self) -> bool {
        self.mp > 0
    }

    /// Runs as shifted rows of a padded copy (stride 1, or stride 2 as four phase planes; no
    /// im2col)?
    pub fn shifted(&self) -> bool {
        self.shifted
    }

    /// Whether [`conv2d_bands`] runs this convolution: shifted rows in one group, on the spatial
    /// GEMM (whose bands of output rows it hands out; the channel-vector GEMM of small planes
    /// computes the whole output at once).
    pub fn bands(&self) -> bool {
        self.shifted && self.geom.group == 1 && !self.channel_vector()
    }

    /// The strategy, for reports.
    pub fn kernel_name(&self) -> &'static str {
        let g = &self.geom;
        if self.wino.is_some() {
            "f32 winograd F(4x4,3x3)"
        } else if self.direct.is_some() {
            if g.is_pointwise() {
                "f32 1x1 direct (channel lanes)"
            } else {
                "f32 shifted-rows direct (channel lanes)"
            }
        } else if g.is_depthwise() {
            "f32 depthwise direct"
        } else if self.channel_vector() {
            if g.is_pointwise() {
                "f32 1x1 channel-vector gemm"
            } else if self.shifted {
                "f32 shifted-rows channel-vector gemm"
            } else {
                "f32 im2col+channel-vector gemm"
            }
        } else if g.is_pointwise() {
            "f32 1x1 gemm"
        } else if self.shifted {
            "f32 shifted-rows gemm"
        } else {
            "f32 im2col+gemm"
        }
    }

    /// f32 elements of scratch space [`conv2d`] needs.
    pub fn scratch_len(&self) -> usize {
        let g = &self.geom;
        if let Some(w) = &self.wino {
            w.scratch_len(g)
        } else if g.is_pointwise() || g.is_depthwise() {
            0
        } else if self.shifted {
            let (hp, wp, phases) = self.planes_hw();
            g.c_in / g.group * hp * wp * phases + (g.kw - 1) * g.dw + 16 + g.c_out / g.group * g.oh * wp
        } else {
            g.k() * g.oh * g.ow
        }
    }

    /// Bytes of packed weights and biases held.
    pub fn weight_bytes(&self) -> usize {
        (self.weight.len() + self.wt.len() + self.bias.len() + self.direct.as_ref().map_or(0, |d| d.len())) * 4
            + self.wino.as_ref().map_or(0, |w| w.bytes())
    }
}

/// Convolves one image `x` (`[c_in, h, w]`) into `out` (`[c_out, oh, ow]`).
pub fn conv2d(p: &PackedConv, x: &[f32], out: &mut [f32], scratch: &mut [f32], threads: usize) {
    let g = &p.geom;
    let hw_out = g.oh * g.ow;
    assert!(x.len() >= g.c_in * g.h * g.w && out.len() >= g.c_out * hw_out);
    let isa = p.isa;
    if let Some(w) = &p.wino {
        w.run(isa, g, &p.bias, p.act, x, out, scratch, threads);
        return;
    }
    if g.is_depthwise() {
        depthwise(isa, g, &p.weight, &p.bias, p.act, x, out, threads);
        return;
    }
    let k = g.k();
    let cog = g.c_out / g.group;
    let cig = g.c_in / g.group;
    for gi in 0..g.group {
        let xg = &x[gi * cig * g.h * g.w..(gi + 1) * cig * g.h * g.w];
        let w = if p.channel_vector() || p.direct.is_some() {
            &[][..]
        } else {
            &p.weight[gi * cog * k..(gi + 1) * cog * k]
        };
        let bias = &p.bias[gi * cog..(gi + 1) * cog];
        if p.shifted {
            let (wp, xpad, cbuf) = pad_planes(isa, g, p.planes_hw(), xg, scratch, threads);
            if let Some(d) = &p.direct {
                // (One group: `with_strategy`.)
                let rows = direct_rows(p, xpad, wp, 0, g.oh, hw_out);
                direct_t::rows(d, &rows, &mut out[..g.c_out * hw_out], threads);
                act_planes(p, &mut out[..g.c_out * hw_out]);
                continue;
            }
            let dptr = Ptr(out[gi * cog * hw_out..(gi + 1) * cog * hw_out].as_mut_ptr());
            let compact = |y0: usize, y1: usize, cb: &[f32], nw: usize| {
                for c in 0..cog {
                    for y in y0..y1 {
                        let src = &cb[c * nw + (y - y0) * wp..c * nw + (y - y0) * wp + g.ow];
                        // SAFETY: the group's output holds cog·oh·ow values; this band alone writes
                        // rows y0..y1 of each plane.
                        unsafe {
                            std::ptr::copy_nonoverlapping(src.as_ptr(), dptr.get().add(c * hw_out + y * g.ow), g.ow)
                        };
                    }
                }
            };
            if p.channel_vector() {
                // Small planes: the whole output in one GEMM (output channels in the vector lanes),
                // then compacted.
                let nw = g.oh * wp;
                let cb = &mut cbuf[..cog * nw];
                sgemm_t(
                    isa,
                    cog,
                    nw,
                    k,
                    &p.wt,
                    p.mp,
                    xpad,
                    BRows::Offsets(&p.row_offsets),
                    bias,
                    p.act,
                    cb,
                    nw,
                    threads,
                );
                compact(0, g.oh, cb, nw);
            } else {
                shifted_bands(p, w, bias, xpad, wp, cbuf, threads, &compact);
            }
            continue;
        }
        if let Some(d) = &p.direct {
            // (A 1x1 convolution in one group: `with_strategy`.)
            direct_t::rows(d, &pointwise_rows(p, xg), &mut out[..g.c_out * hw_out], threads);
            act_planes(p, &mut out[..g.c_out * hw_out]);
            continue;
        }
        let rhs: &[f32] = if g.is_pointwise() {
            xg
        } else {
            let col = &mut scratch[..k * hw_out];
            im2col(isa, g, xg, col, threads);
            col
        };
        let dst = &mut out[gi * cog * hw_out..(gi + 1) * cog * hw_out];
        if p.channel_vector() {
            let rows = BRows::Strided(hw_out);
            sgemm_t(isa, cog, hw_out, k, &p.wt, p.mp, rhs, rows, bias, p.act, dst, hw_out, threads);
        } else {
            sgemm_bias_act(isa, cog, hw_out, k, w, k, rhs, hw_out, bias, p.act, dst, hw_out, threads);
        }
    }
}

/// `LOWBIT_F32_DIRECT=0|1`: the direct channel-lane kernel forced off / on.
fn direct_forced() -> Option<bool> {
    match std::env::var("LOWBIT_F32_DIRECT").ok().as_deref() {
        Some("0") => Some(false),
        Some("1") => Some(true),
        _ => None,
    }
}

/// Whether a shifted-rows convolution in one group on AVX-512 or AVX2 pays on [`direct_t`] (output channels
/// in the lanes) rather than on the spatial GEMM: where its lanes waste less than the spatial
/// tile's `(kw - 1)·dw` padding columns per row do, by a margin its transposes need on short
/// reductions (`cargo bench -p lowbit-kernels --bench f32 -- 'x'`, `LOWBIT_F32_DIRECT=0|1`, AMD
/// EPYC Zen 4, GMAC/s spatial -> direct: 16->16 at 28x28 46.8 -> 52.7, 32->32 at 14x14 44.3 -> 52.9,
/// 64->64 at 7x7 32.5 (channel-vector GEMM) -> 52.7, stride 2 16->32 at 28x28 37.1 -> 46.4,
/// 64->128 at 56x56 51.4 -> 54.8, 256->256 at 14x14 49.5 -> 57.0; but the 7x7 stride-2 stem
/// 3->64 (reduction 147) 51.4 -> 47.5 and 1x1 convolutions (reductions of 16-160) lose). On AVX2
/// (AMD EPYC Zen 3, against the spatial GEMM or, on 7x7 planes, im2col): 16->16 at 28x28 33.4 ->
/// 41.2, 24->24 at 56x56 39.3 -> 42.1, 32->32 at 14x14 33.4 -> 41.9, 64->64 at 7x7 21.7 -> 37.4,
/// 512->512 at 7x7 33.0 -> 36.4-38.0, stride 2 16->32 at 28x28 27.9 -> 38.6, the stem 3->32
/// (reduction 27) 24.4-27.4 -> 29.7-31.9.
/// `LOWBIT_F32_DIRECT=0|1` forces it off / on.
fn direct_pays(isa: F32Isa, g: &ConvGeom) -> bool {
    if let Some(f) = direct_forced() {
        return f;
    }
    let (_, wp, _) = padded_hw(g, false);
    let vl = DirectT::grid(isa).0;
    let lanes = g.c_out as f64 / (g.c_out.div_ceil(vl) * vl) as f64;
    let spatial = g.ow as f64 / wp as f64;
    if isa == F32Isa::Avx512 {
        g.c_out >= 16 && g.k() >= 64 && (lanes >= spatial + 0.05 || (lanes > spatial && g.k() >= 256))
    } else {
        // AVX2's transposes are 8x8 and its spatial tile packs B panels: no margin needed, and
        // three-channel stems gain too (MobileNetV2's 3x3 s2 3->32 at 112x112 in the model, four
        // alternating runs of `LOWBIT_PROFILE=1 lowbit bench`: 0.58-0.61 ms -> 0.43-0.48 ms).
        g.c_out >= 8 && g.k() >= 27 && lanes > spatial
    }
}

/// The [`direct_t::Rows`] of output rows `y0..y1` of `p` from padded planes `wp` wide, written
/// compact (rows `ow` apart) at channel stride `cs`.
fn direct_rows<'a>(
    p: &'a PackedConv,
    xpad: &'a [f32],
    wp: usize,
    y0: usize,
    y1: usize,
    cs: usize,
) -> direct_t::Rows<'a> {
    let (g, (lo, hi)) = (&p.geom, fused_clamp(p.act));
    let (ry, sx, rs) = (g.sh * wp, g.sw, g.ow);
    direct_t::Rows {
        xpad,
        offs: &p.row_offsets,
        ry,
        sx,
        ow: g.ow,
        y0,
        y1,
        bias: &p.bias,
        lo,
        hi,
        cs,
        rs,
        kb: usize::MAX,
    }
}

/// The [`direct_t::Rows`] of a 1x1 convolution `p` of input planes `x`: runs of `d` image rows
/// taken as one row, `d` the least divisor of the height that makes a run at least 48 pixels
/// (eight tiles of six), so that small planes (7x7: one 49-pixel row) fill whole tiles and large
/// ones still give the threads rows to share.
fn pointwise_rows<'a>(p: &'a PackedConv, x: &'a [f32]) -> direct_t::Rows<'a> {
    let (g, (lo, hi)) = (&p.geom, fused_clamp(p.act));
    let run = (1..=g.h).find(|d| g.h % d == 0 && d * g.w >= 48).unwrap_or(g.h) * g.w;
    let (hw, rows) = (g.h * g.w, g.h * g.w / run);
    direct_t::Rows {
        xpad: x,
        offs: &p.row_offsets,
        ry: run,
        sx: 1,
        ow: run,
        y0: 0,
        y1: rows,
        bias: &p.bias,
        lo,
        hi,
        cs: hw,
        rs: run,
        kb: 128,
    }
}

/// An activation [`direct_t`] cannot fuse (not a clamp), applied to its output afterwards.
fn act_planes(p: &PackedConv, out: &mut [f32]) {
    if clamp_of(p.act).is_none() {
        crate::eltwise::apply_act(p.isa, p.act, out);
    }
}

/// Output rows of the shifted-rows GEMM per band: its `c_out × rows × wp` f32 block within about
/// 256 KB, so the band is compacted into the planes while it is still in L2. One GEMM over the
/// whole image wrote and re-read a block the size of the output (U²-Netp's float stem, 64 channels
/// at 320x320: 26 MB written twice and read once more, 5.4 ms at 34 GMAC/s).
fn band_rows(cog: usize, wp: usize, oh: usize) -> usize {
    ((256 << 10) / (cog * wp * 4).max(1)).clamp(1, oh.max(1))
}

/// The zero-padded planes of one group's input `xg` at the start of `scratch` (the shifted-rows
/// layout, at stride 2 the four phases of each channel, with the tail the last row's window
/// overruns); returns the padded row width, the planes and the rest of `scratch`.
fn pad_planes<'a>(
    isa: F32Isa,
    g: &ConvGeom,
    (hp, wp, phases): (usize, usize, usize),
    xg: &[f32],
    scratch: &'a mut [f32],
    threads: usize,
) -> (usize, &'a [f32], &'a mut [f32]) {
    let cig = g.c_in / g.group;
    let (xpad, cbuf) = scratch.split_at_mut(cig * hp * wp * phases + (g.kw - 1) * g.dw + 16);
    let plane = hp * wp;
    let fill = |i: usize, dst: &mut [f32]| {
        if phases == 1 {
            // Only the border is zeroed: the image rows overwrite the rest.
            let c = i;
            let (pl, pt) = (g.pl.min(wp), g.pt.min(hp));
            let (rows, n) = (g.h.min(hp - pt), g.w.min(wp - pl));
            dst[..pt * wp].fill(0.0);
            for y in 0..rows {
                let d = (y + pt) * wp;
                let row = &mut dst[d..d + wp];
                row[..pl].fill(0.0);
                row[pl..pl + n].copy_from_slice(&xg[(c * g.h + y) * g.w..(c * g.h + y) * g.w + n]);
                row[pl + n..].fill(0.0);
            }
            dst[(pt + rows) * wp..].fill(0.0);
            return;
        }
        dst.fill(0.0);
        // Phase (py, px) of channel c: padded element (2r + py, 2j + px), image element
        // (2r + py - pt, 2j + px - pl).
        let (ph, c) = (i / cig, i % cig);
        let (py, px) = (ph / 2, ph % 2);
        let (r0, r1) = valid_range(hp, 2, py, g.pt, g.h);
        let (j0, j1) = valid_range(wp, 2, px, g.pl, g.w);
        for r in r0..r1 {
            let y = 2 * r + py - g.pt;
            let src = &xg[(c * g.h + y) * g.w..(c * g.h + y + 1) * g.w];
            if j0 < j1 {
                gather_strided(isa, &mut dst[r * wp + j0..r * wp + j1], &src[2 * j0 + px - g.pl..], 2);
            }
        }
    };
    let (planes, tail) = xpad.split_at_mut(cig * plane * phases);
    tail.fill(0.0);
    if threads > 1 {
        planes.par_chunks_mut(plane).enumerate().for_each(|(c, d)| fill(c, d));
    } else {
        planes.chunks_mut(plane).enumerate().for_each(|(c, d)| fill(c, d));
    }
    (wp, xpad, cbuf)
}

/// A band of output rows of the shifted-rows GEMM: rows `y0..y1`, the values of channel `c`, row
/// `y`, column `x` at `cb[c·nw + (y - y0)·wp + x]` (columns `ow..wp` of each row are padding).
pub trait BandSink: Fn(usize, usize, &[f32], usize) + Sync {}
impl<F: Fn(usize, usize, &[f32], usize) + Sync> BandSink for F {}

/// The shifted-rows GEMM of one group in bands of output rows, each handed to `sink` (bands split
/// over the pool, each task with its own block of `cbuf`). Every output value is the same FMA chain
/// as one GEMM over the whole image (a column's reduction does not depend on the column range), so
/// the bits are the same.
#[allow(clippy::too_many_arguments)]
fn shifted_bands(
    p: &PackedConv,
    w: &[f32],
    bias: &[f32],
    xpad: &[f32],
    wp: usize,
    cbuf: &mut [f32],
    threads: usize,
    sink: &dyn BandSink,
) {
    let g = &p.geom;
    let (cog, k) = (g.c_out / g.group, g.k());
    let rows = band_rows(cog, wp, g.oh);
    let bands = g.oh.div_ceil(rows);
    let per = cog * rows * wp;
    let slots = threads.clamp(1, bands).min(cbuf.len() / per).max(1);
    let run = |slot: usize, cb: &mut [f32]| {
        for b in (slot..bands).step_by(slots) {
            let (y0, y1) = (b * rows, ((b + 1) * rows).min(g.oh));
            if let Some(d) = &p.direct {
                // Compact rows (the sink reads the row pitch as nw / (y1 - y0)).
                let nw = (y1 - y0) * g.ow;
                let cb = &mut cb[..cog * nw];
                direct_t::rows(d, &direct_rows(p, xpad, wp, y0, y1, nw), cb, 1);
                act_planes(p, cb);
                sink(y0, y1, cb, nw);
            } else {
                let nw = (y1 - y0) * wp;
                let cb = &mut cb[..cog * nw];
                let rowsel = BRows::Offsets(&p.row_offsets);
                sgemm_rows(p.isa, cog, nw, k, w, k, &xpad[y0 * wp..], rowsel, bias, p.act, cb, nw, 1);
                sink(y0, y1, cb, nw);
            }
        }
    };
    if slots > 1 {
        cbuf[..slots * per].par_chunks_mut(per).enumerate().for_each(|(s, cb)| run(s, cb));
    } else {
        run(0, &mut cbuf[..per]);
    }
}

/// Convolves one image `x` band by band into `sink` instead of planes, where the convolution runs as
/// shifted rows in one group (returns false, doing nothing, otherwise): for a consumer that turns
/// the f32 output into something smaller while it is in cache (QuantizeLinear into NHWC bytes).
pub fn conv2d_bands(p: &PackedConv, x: &[f32], scratch: &mut [f32], threads: usize, sink: &dyn BandSink) -> bool {
    let g = &p.geom;
    // (A Winograd convolution is never `shifted`.)
    if !p.bands() {
        return false;
    }
    assert!(x.len() >= g.c_in * g.h * g.w);
    let (wp, xpad, cbuf) = pad_planes(p.isa, g, p.planes_hw(), x, scratch, threads);
    shifted_bands(p, &p.weight, &p.bias, xpad, wp, cbuf, threads, sink);
    true
}

/// `dst[i] = src[i * stride]`, with AVX-512 and AVX2 paths for stride 2.
fn gather_strided(isa: F32Isa, dst: &mut [f32], src: &[f32], stride: usize) {
    assert!(dst.is_empty() || (dst.len() - 1) * stride < src.len());
    #[cfg(target_arch = "x86_64")]
    if stride == 2 && isa == F32Isa::Avx512 {
        // SAFETY: the AVX-512 path runs here (checked by the GEMM entry points); loads are masked to
        // `src`, stores to `dst`.
        unsafe { avx512::gather2(dst, src) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if stride == 2 && isa == F32Isa::Avx2 {
        // SAFETY: the AVX2 path runs here (checked by the GEMM entry points); every load and
        // store is bounded by the slices.
        unsafe { avx2::gather2(dst, src) };
        return;
    }
    for (i, v) in dst.iter_mut().enumerate() {
        *v = src[i * stride];
    }
}

fn im2col(isa: F32Isa, g: &ConvGeom, x: &[f32], col: &mut [f32], threads: usize) {
    let hw_out = g.oh * g.ow;
    let row = |r: usize, dst: &mut [f32]| {
        let kx = r % g.kw;
        let ky = (r / g.kw) % g.kh;
        let c = r / (g.kw * g.kh);
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (xlo, xhi) = valid_range(g.ow, g.sw, kx * g.dw, g.pl, g.w);
        for oy in 0..g.oh {
            let d = &mut dst[oy * g.ow..(oy + 1) * g.ow];
            let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
            if iy < 0 || iy >= g.h as isize {
                d.fill(0.0);
                continue;
            }
            // A tap whose dilated column never meets the image (narrow planes, wide dilation): all padding.
            if xlo >= xhi {
                d.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            d[..xlo].fill(0.0);
            d[xhi..].fill(0.0);
            let base = xlo * g.sw + kx * g.dw - g.pl;
            if g.sw == 1 {
                d[xlo..xhi].copy_from_slice(&src[base..base + (xhi - xlo)]);
            } else if xlo < xhi {
                gather_strided(isa, &mut d[xlo..xhi], &src[base..], g.sw);
            }
        }
    };
    if threads > 1 {
        col.par_chunks_mut(hw_out).enumerate().for_each(|(r, d)| row(r, d));
    } else {
        col.chunks_mut(hw_out).enumerate().for_each(|(r, d)| row(r, d));
    }
}
