//! Integer kernels: uint8 activations × int8 weights, int32 accumulation, and the requantization
//! epilogue that turns accumulators back into uint8/int8 (or f32) values.
//!
//! Activations are NHWC (channels innermost), so a pointwise convolution is a plain GEMM over the
//! activation buffer, the per-channel epilogue runs on whole vectors, and depthwise convolutions
//! vectorize over channels.
//!
//! One module per instruction set ([`scalar`], [`avx2`], [`avx512`], [`amx`]); [`Isa`] is the one
//! dispatch point, chosen at run time (`LOWBIT_ISA=scalar|avx2|avx512vnni|amx` forces a path). The
//! AMX path runs the GEMMs on tiles and everything else (depthwise, pooling, element-wise) on the
//! AVX-512 kernels. Every path
//! computes the same integers and applies the same f32 operations in the same order, so they are
//! bit-exact with each other; the scalar path is the reference.
//!
//! The arithmetic contract (the same one lowbit's fake-quant executor uses):
//! `acc = Σ (x - zx)·w` exactly in i32; `y = f32(acc + bias_i[c]) · scale[c] + bias_f[c]`;
//! `y = min(max(y, lo), hi)` (the fused ReLU/Clip); and for a quantized output
//! `q = round_half_even(clamp(y / s_out, qmin - z_out, qmax - z_out)) + z_out`.

#[cfg(target_arch = "x86_64")]
pub mod amx;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod ops;
pub mod scalar;

use crate::f32conv::ConvGeom;
use rayon::prelude::*;

/// An integer kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512Vnni,
    /// AMX-INT8 tiles for GEMM and convolution, AVX-512 VNNI for the rest.
    Amx,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
        }
    }

    /// Can this CPU run the path?
    pub fn supported(self) -> bool {
        let f = crate::isa::Features::detect();
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => f.avx2 && f.fma,
            Isa::Avx512Vnni => f.avx512f && f.avx512bw && f.avx512vnni,
            Isa::Amx => f.avx512f && f.avx512bw && f.avx512vnni && f.amx_int8 && crate::isa::amx_permitted(),
        }
    }

    /// Every path this CPU can run, best last.
    pub fn all_supported() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx].into_iter().filter(|i| i.supported()).collect()
    }

    /// The best path this CPU runs.
    pub fn best() -> Isa {
        *Isa::all_supported().last().unwrap_or(&Isa::Scalar)
    }

    /// Parses a `LOWBIT_ISA` value.
    pub fn parse(s: &str) -> Result<Isa, String> {
        match s {
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512vnni" | "avx512" => Ok(Isa::Avx512Vnni),
            "amx" => Ok(Isa::Amx),
            "avxvnni" => Err(format!(
                "LOWBIT_ISA={s}: lowbit has no AVX-VNNI (256-bit) integer kernels yet; use scalar, avx2, avx512vnni or amx"
            )),
            _ => Err(format!("LOWBIT_ISA={s}: unknown path; use scalar, avx2, avx512vnni or amx")),
        }
    }

    /// The path to use: `LOWBIT_ISA` if set, else the best supported one.
    pub fn selected() -> Result<Isa, String> {
        match std::env::var("LOWBIT_ISA") {
            Ok(s) if !s.is_empty() => {
                let isa = Isa::parse(&s)?;
                if !isa.supported() {
                    return Err(format!("LOWBIT_ISA={s}: this CPU does not support it"));
                }
                Ok(isa)
            }
            _ => Ok(Isa::best()),
        }
    }
}

/// This core's measured peak for a path's multiply-accumulate instruction, in GMAC/s (about
/// 0.1 s of work, measured once per process).
pub fn measured_peak_gmacs(isa: Isa) -> f64 {
    static PEAKS: std::sync::Mutex<Vec<(Isa, f64)>> = std::sync::Mutex::new(Vec::new());
    if let Some(p) = PEAKS.lock().unwrap().iter().find(|p| p.0 == isa) {
        return p.1;
    }
    let run = |iters: usize| -> (f64, f64) {
        let t = std::time::Instant::now();
        let (macs, sink) = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only called for supported paths (checked below).
            Isa::Avx512Vnni => (iters as f64 * 12.0 * 64.0, unsafe { avx512::peak_probe(iters) }),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above (AMX support includes the tile permission).
            Isa::Amx => ((iters / 16) as f64 * 4.0 * 16384.0, unsafe { amx::peak_probe(iters / 16) }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => (iters as f64 * 12.0 * 16.0, unsafe { avx2::peak_probe(iters) }),
            _ => {
                let mut acc = [0i32; 8];
                for i in 0..iters {
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = a.wrapping_add(std::hint::black_box((i + j) as i32).wrapping_mul(3));
                    }
                }
                (iters as f64 * 8.0, acc.iter().sum())
            }
        };
        std::hint::black_box(sink);
        (macs, t.elapsed().as_secs_f64())
    };
    if !isa.supported() {
        return 0.0;
    }
    run(1000);
    let mut best = 0.0f64;
    for _ in 0..5 {
        let (m, s) = run(400_000);
        best = best.max(m / s / 1e9);
    }
    PEAKS.lock().unwrap().push((isa, best));
    best
}

/// Where the epilogue writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Out {
    /// f32 values.
    F32,
    /// Quantized bytes (uint8 when `qmin == 0`, int8 bit patterns when `qmin == -128`).
    Q { scale: f32, zp: i32, qmin: i32, qmax: i32 },
}

/// Per-output-channel epilogue parameters (vectors padded with zeros to a multiple of 16).
#[derive(Clone, Debug)]
pub struct Requant {
    pub scale: Vec<f32>,
    pub bias_i: Vec<i32>,
    pub bias_f: Vec<f32>,
    pub lo: f32,
    pub hi: f32,
    pub out: Out,
    /// For quantized outputs, what the SIMD epilogues use: the activation clamp narrowed to the
    /// values that do not saturate (`y/s` within one step of the output range, so the result
    /// is unchanged and `y · (1/s)` cannot overflow), and `1/s` for the correctly rounded
    /// division `y/s = q + (y - q·s)·(1/s)`, `q = y·(1/s)` (Markstein's theorem: one FMA
    /// correction of a faithful quotient gives the correctly rounded one).
    pub ylo: f32,
    pub yhi: f32,
    pub inv: f32,
    /// Set by [`Requant::allow_unclamped`]: no activation clamp and `|y/s|` provably far from
    /// overflow, so the SIMD epilogues skip clamping `y` (the saturating narrow does the rest).
    pub unclamped: bool,
}

/// `y / s` rounded correctly, from `inv = 1/s` rounded: the quotient `q = y·inv`, the exact
/// residual `r = y - q·s` (one FMA), and the corrected `q + r·inv` (another FMA). Matches the
/// IEEE division bit for bit for normal operands (checked by the property tests).
#[inline(always)]
pub fn div_markstein(y: f32, s: f32, inv: f32) -> f32 {
    let q = y * inv;
    let r = (-q).mul_add(s, y);
    r.mul_add(inv, q)
}

impl Requant {
    /// `scale`, `bias_i`, `bias_f` per channel (unpadded); activation clamp `lo..hi`.
    pub fn new(scale: &[f32], bias_i: &[i32], bias_f: &[f32], lo: f32, hi: f32, out: Out) -> Requant {
        let n = scale.len();
        let np = n.div_ceil(16) * 16;
        let pad = |v: &[f32]| {
            let mut o = v.to_vec();
            o.resize(np, 0.0);
            o
        };
        let mut bi = bias_i.to_vec();
        bi.resize(np, 0);
        // An all-zero f32 bias is not stored (and not added: for quantized outputs `y + 0` only
        // differs from `y` in the sign of zero, which rounding erases).
        let bias_f = if bias_f.iter().all(|&v| v == 0.0) { vec![] } else { pad(bias_f) };
        let (ylo, yhi, inv) = match out {
            Out::Q { scale, zp, qmin, qmax } => {
                (lo.max((qmin - zp - 1) as f32 * scale), hi.min((qmax - zp + 1) as f32 * scale), 1.0 / scale)
            }
            Out::F32 => (lo, hi, 1.0),
        };
        Requant { scale: pad(scale), bias_i: bi, bias_f, lo, hi, out, ylo, yhi, inv, unclamped: false }
    }

    /// Lets the SIMD epilogues skip the `y` clamp when there is no activation clamp and every
    /// accumulator (at most `max_acc` in magnitude before the integer bias) keeps `|y/s_out|`
    /// below 2^30: then `y/s_out` cannot overflow the conversion, and saturating after rounding
    /// equals the scalar path's clamping.
    pub fn allow_unclamped(&mut self, max_acc: f64) {
        let Out::Q { scale: so, .. } = self.out else { return };
        if self.lo != f32::NEG_INFINITY || self.hi != f32::INFINITY {
            return;
        }
        let ok = (0..self.scale.len()).all(|c| {
            let bf = self.bias_f.get(c).copied().unwrap_or(0.0) as f64;
            let y = (max_acc + (self.bias_i[c] as f64).abs()) * (self.scale[c] as f64).abs() * 1.001 + bf.abs();
            let t = y / so as f64;
            t.is_finite() && t < (1u64 << 30) as f64
        });
        self.unclamped = ok;
    }

    /// Channels `c0..c0+n` of this epilogue.
    pub fn slice(&self, c0: usize, n: usize) -> Requant {
        let bf = if self.bias_f.is_empty() { vec![0.0; n] } else { self.bias_f[c0..c0 + n].to_vec() };
        Requant::new(&self.scale[c0..c0 + n], &self.bias_i[c0..c0 + n], &bf, self.lo, self.hi, self.out)
    }

    /// Bytes of per-channel parameters held.
    pub fn bytes(&self) -> usize {
        (self.scale.len() + self.bias_i.len() + self.bias_f.len()) * 4
    }

    /// Adds `d[c]` to the integer bias (zero-point corrections).
    pub fn add_bias_i(&mut self, d: &[i32]) {
        for (b, &v) in self.bias_i.iter_mut().zip(d) {
            *b = b.wrapping_add(v);
        }
    }
}

/// The epilogue's f32 value for one accumulator (before output quantization).
#[inline(always)]
pub fn epilogue_f32(acc: i32, c: usize, rq: &Requant) -> f32 {
    let mut y = (acc.wrapping_add(rq.bias_i[c]) as f32) * rq.scale[c];
    if !rq.bias_f.is_empty() {
        y += rq.bias_f[c];
    }
    y.max(rq.lo).min(rq.hi)
}

/// QuantizeLinear of one value: `round_half_even(y / scale) + zp`, saturated to `qmin..=qmax`.
#[inline(always)]
pub fn quantize_one(y: f32, scale: f32, zp: i32, qmin: i32, qmax: i32) -> i32 {
    let t = (y / scale).max((qmin - zp) as f32).min((qmax - zp) as f32);
    // SAFETY: `max` returns the bound for NaN, so `t` is finite and within i32 range.
    unsafe { t.round_ties_even().to_int_unchecked::<i32>() + zp }
}

/// Splits a bias given as int32 values with their own scale into the integer part (when its
/// scale equals the accumulator scale bit for bit, as quantize_static and lowbit write it) and the
/// f32 part (otherwise). Returns `(bias_i, bias_f)`.
pub fn split_bias(bias: Option<(&[i32], &[f32])>, acc_scale: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let n = acc_scale.len();
    let mut bi = vec![0i32; n];
    let mut bf = vec![0f32; n];
    if let Some((q, s)) = bias {
        for c in 0..n {
            let sc = if s.len() == 1 { s[0] } else { s[c] };
            if sc.to_bits() == acc_scale[c].to_bits() {
                bi[c] = q[c];
            } else {
                bf[c] = q[c] as f32 * sc;
            }
        }
    }
    (bi, bf)
}

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
    pub quad: Vec<i8>,
    /// `[k4/2][n_pad][2]` as i16 (AVX2 reads this).
    pub pairs: Vec<i16>,
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
        let mut quad = vec![0i8; kp * n_pad];
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
            pairs = vec![0i16; k4 * n_pad];
            for kk in 0..k {
                for j in 0..n {
                    pairs[(kk / 2) * n_pad * 2 + j * 2 + kk % 2] = w(kk, j) as i16;
                }
            }
            quad = vec![];
        }
        PackedB { isa, k4, kp, n, n_pad, quad, pairs, colsum }
    }

    /// Bytes of packed weights held in memory.
    pub fn bytes(&self) -> usize {
        self.quad.len() + self.pairs.len() * 2 + self.colsum.len() * 4
    }
}

/// Where weight `(k, j)` lives in [`PackedB::quad`] (`kp`: [`PackedB::kp`]).
#[inline(always)]
pub(crate) fn quad_index(kp: usize, n_pad: usize, k: usize, j: usize) -> usize {
    let (p, jj) = (j / PANEL, j % PANEL);
    let width = PANEL.min(n_pad - p * PANEL);
    p * PANEL * kp + (k / 4) * width * 4 + jj * 4 + k % 4
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

/// An output pointer for the epilogue (bytes or f32 depending on [`Out`]).
#[derive(Clone, Copy)]
pub struct OutPtr(pub *mut u8);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    /// Element `(i, j)` with row stride `ldc` elements.
    ///
    /// # Safety
    /// The element must lie inside the buffer this pointer addresses.
    #[inline(always)]
    pub unsafe fn at(self, out: Out, i: usize, j: usize, ldc: usize) -> *mut u8 {
        match out {
            Out::F32 => (self.0 as *mut f32).add(i * ldc + j) as *mut u8,
            Out::Q { .. } => self.0.add(i * ldc + j),
        }
    }
}

/// Columns per panel (one task of the GEMM).
pub const PANEL: usize = 64;

/// How the GEMM reads row `i` of A: `taps` runs of `kc` bytes (a multiple of 4) at
/// `i·lda + taps[t]`, in the order B's reduction index uses (`k = t·kc + c`). A plain matrix is
/// one tap at offset 0 with `kc = k4`; a stride-1 convolution reads its window straight from the
/// zero-point-padded input, one tap per window position ("shifted rows", no im2col copy).
#[derive(Clone, Copy, Debug)]
pub struct ASrc<'a> {
    pub lda: usize,
    pub taps: &'a [usize],
    pub kc: usize,
}

/// Where GEMM row `i` is stored: row `i`, or (shifted rows) row `(i / wp)·ow + i % wp` when
/// `i % wp < ow` and nowhere otherwise (the padding columns of the shifted input).
#[derive(Clone, Copy, Debug)]
pub enum RowMap {
    Linear,
    Padded { wp: usize, ow: usize },
}

/// Walks [`RowMap`] over consecutive GEMM rows with one division at the start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowCursor {
    map: RowMap,
    /// `Padded`: column `i % wp` and output row of column 0 (`(i / wp)·ow`); `Linear`: the row.
    x: usize,
    base: usize,
}

impl RowCursor {
    #[inline(always)]
    pub(crate) fn new(map: RowMap, i: usize) -> RowCursor {
        match map {
            RowMap::Linear => RowCursor { map, x: 0, base: i },
            RowMap::Padded { wp, ow } => RowCursor { map, x: i % wp, base: (i / wp) * ow },
        }
    }

    /// The current row's output row, then steps to the next row.
    #[inline(always)]
    pub(crate) fn next_row(&mut self) -> Option<usize> {
        match self.map {
            RowMap::Linear => {
                self.base += 1;
                Some(self.base - 1)
            }
            RowMap::Padded { wp, ow } => {
                let r = (self.x < ow).then_some(self.base + self.x);
                self.x += 1;
                if self.x == wp {
                    self.x = 0;
                    self.base += ow;
                }
                r
            }
        }
    }
}

impl RowMap {
    #[inline(always)]
    pub fn out_row(self, i: usize) -> Option<usize> {
        match self {
            RowMap::Linear => Some(i),
            RowMap::Padded { wp, ow } => {
                let x = i % wp;
                (x < ow).then(|| (i / wp) * ow + x)
            }
        }
    }
}

/// C = epilogue(A · B): `m` rows of A (u8, `lda` bytes apart, each with `b.k4` readable bytes),
/// written as `m × b.n` outputs `ldc` elements apart.
///
/// # Safety
/// `a` must hold `(m - 1) * lda + b.k4` bytes; `out` must hold `(m - 1) * ldc + b.n` elements of the
/// output type; `b.isa` must be supported by this CPU.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    a: *const u8,
    lda: usize,
    b: &PackedB,
    rq: &Requant,
    out: OutPtr,
    ldc: usize,
    threads: usize,
) {
    gemm_ex(m, a, ASrc { lda, taps: &[0], kc: b.k4 }, RowMap::Linear, b, rq, out, ldc, threads)
}

/// [`gemm`] with A read through `src` and rows stored through `map`.
///
/// # Safety
/// Every byte `src` addresses for rows `0..m` is readable; `out` holds every row `map` yields.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_ex(
    m: usize,
    a: *const u8,
    src: ASrc,
    map: RowMap,
    b: &PackedB,
    rq: &Requant,
    out: OutPtr,
    ldc: usize,
    threads: usize,
) {
    if m == 0 || b.n == 0 {
        return;
    }
    assert!(src.kc.is_multiple_of(4) && src.taps.len() * src.kc == b.k4, "A layout does not match the packed weights");
    let panels = b.n.div_ceil(PANEL);
    let a = SendConst(a);
    let run = |i0: usize, rows: usize, p: usize| {
        let j0 = p * PANEL;
        let jn = PANEL.min(b.n - j0);
        let ap = a.get().add(i0 * src.lda);
        let t = Tile { rows, i0, map, j0, jn, ldc };
        match b.isa {
            Isa::Scalar => scalar::gemm_tile(&t, ap, &src, b, rq, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::gemm_tile(&t, ap, &src, b, rq, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => avx512::gemm_tile(&t, ap, &src, b, rq, out),
            #[cfg(target_arch = "x86_64")]
            // Reductions not padded to whole tiles, or fewer than 16 rows: AVX-512 VNNI (it
            // reads the AMX packing, whose extra zero quads it never reaches).
            Isa::Amx if !b.kp.is_multiple_of(64) || rows < 16 => avx512::gemm_tile(&t, ap, &src, b, rq, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => amx::gemm_tile(&t, ap, &src, b, rq, out),
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar::gemm_tile(&t, ap, &src, b, rq, out),
        }
    };
    let macs = m * b.n * b.k4;
    if threads <= 1 || macs < 1 << 18 {
        for p in 0..panels {
            run(0, m, p);
        }
        return;
    }
    // Tasks: row chunks × column panels, enough of them to balance the threads.
    let want = threads * 4;
    // Row chunks in whole micro-tiles: 24 rows (AVX-512's tiles of 6, 8, 12), 32 for AMX's 2 tiles.
    let unit = if b.isa == Isa::Amx { 32 } else { 24 };
    let row_chunks = want.div_ceil(panels).clamp(1, m.div_ceil(unit));
    let chunk = m.div_ceil(row_chunks).div_ceil(unit) * unit;
    let row_chunks = m.div_ceil(chunk);
    (0..row_chunks * panels).into_par_iter().for_each(|t| {
        let (r, p) = (t / panels, t % panels);
        let i0 = r * chunk;
        run(i0, chunk.min(m - i0), p);
    });
}

/// One GEMM task: rows `i0..i0+rows` (A already advanced to row `i0`), columns `j0..j0+jn`.
#[derive(Clone, Copy, Debug)]
pub struct Tile {
    pub rows: usize,
    pub i0: usize,
    pub map: RowMap,
    pub j0: usize,
    pub jn: usize,
    pub ldc: usize,
}

#[derive(Clone, Copy)]
pub(crate) struct SendConst(pub *const u8);
unsafe impl Send for SendConst {}
unsafe impl Sync for SendConst {}
impl SendConst {
    pub(crate) fn get(self) -> *const u8 {
        self.0
    }
}

/// Depthwise weights: `[taps][c_pad]` as i32.
#[derive(Clone, Debug)]
pub struct PackedDw {
    pub isa: Isa,
    pub taps: usize,
    pub c: usize,
    pub c_pad: usize,
    pub w: Vec<i32>,
    pub colsum: Vec<i32>,
    /// AVX-512 VNNI layout: per 64-channel block, per group of 4 taps, 4 vectors whose i32 lane
    /// (L, j) holds the 4 tap weights of channel `16L + 4i + j` (the order byte interleaving of
    /// 4 tap rows produces), plus the epilogue parameters in the same order.
    pub vnni: Vec<i8>,
    pub rq_perm: Option<Requant>,
    /// `vnni` groups are window columns (the 4 bytes of a lane: rows 0..kh, kh ≤ 4), so one
    /// interleaved input column serves every output pixel that reads it; otherwise groups are 4
    /// consecutive taps.
    pub by_cols: bool,
    pub groups: usize,
}

/// Channel of lane `(L, j)` (lane index `4L + j`) of vector `i` in a 64-channel block.
#[inline(always)]
pub(crate) fn dw_perm(i: usize, lane: usize) -> usize {
    16 * (lane / 4) + 4 * i + lane % 4
}

/// Depthwise geometry on a zero-point-padded NHWC input `[hp][wp][c]`.
#[derive(Clone, Copy, Debug)]
pub struct DwGeom {
    pub c: usize,
    /// Channel stride of the padded input (a multiple of 64 ≥ `c`).
    pub cs: usize,
    pub wp: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Depthwise convolution rows `oh0..oh0+rows` of a padded NHWC input.
///
/// # Safety
/// `x` is the padded input of `g`; `out` holds `g.oh * g.ow * g.c` outputs; the path is supported.
pub unsafe fn depthwise(g: &DwGeom, x: &[u8], w: &PackedDw, rq: &Requant, out: OutPtr, threads: usize) {
    let run = |r: usize| match w.isa {
        Isa::Scalar => scalar::depthwise_row(g, x, w, rq, out, r),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::depthwise_row(g, x, w, rq, out, r),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx => avx512::depthwise_row(g, x, w, rq, out, r),
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::depthwise_row(g, x, w, rq, out, r),
    };
    if threads <= 1 || g.oh * g.ow * g.c < 1 << 14 {
        (0..g.oh).for_each(run);
    } else {
        (0..g.oh).into_par_iter().for_each(run);
    }
}

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
}

/// Geometry of the space-to-depth input: `[hp][wp][cs]` blocks, window `kh`×`kw` blocks.
#[derive(Clone, Debug)]
struct S2d {
    kh: usize,
    kw: usize,
    cs: usize,
    hp: usize,
    wp: usize,
    /// Tap byte offsets (one per window row of blocks, `kw·cs` bytes each).
    taps: Vec<usize>,
}

impl S2d {
    /// The layout for `g` when space to depth applies: one group, stride 2, no dilation, at most
    /// 4 input channels (a block's 4·c_in ≤ 16 bytes) and a window of at least 5 (smaller windows
    /// waste more on zero weights than im2col costs).
    fn fits(isa: Isa, g: &ConvGeom) -> Option<S2d> {
        if g.group != 1 || g.sh != 2 || g.sw != 2 || g.dh != 1 || g.dw != 1 || g.c_in > 4 || g.kh < 5 || g.kw < 5 {
            return None;
        }
        let (kh, kw) = (g.kh.div_ceil(2), g.kw.div_ceil(2));
        // A block's 4·c_in bytes; for AMX, padded to make a window row a whole 64-byte tile row when
        // that at most doubles it (2 to 4 channels and a window 7 or 8 wide: the stem).
        let mut cs = 4 * g.c_in;
        if isa == Isa::Amx && 64 % kw == 0 && 64 / kw >= cs && 64 / kw <= 2 * cs {
            cs = 64 / kw;
        }
        let (hp, wp) = (g.oh + kh - 1, g.ow + kw - 1);
        let taps = (0..kh).map(|t| t * wp * cs).collect();
        Some(S2d { kh, kw, cs, hp, wp, taps })
    }

    /// Scratch bytes: the blocks plus one window row of slack (rows past the last are computed and
    /// dropped).
    fn len(&self) -> usize {
        (self.hp * self.wp + self.kw) * self.cs
    }

    /// Writes the blocks of image `x`: block `(Y, X)` byte `(dy·2 + dx)·c_in + c` is input pixel
    /// `(2Y + dy - pt, 2X + dx - pl)` channel `c`, the zero point outside the image and in the
    /// padding channels.
    fn fill(&self, g: &ConvGeom, x: &[u8], zx: u8, xp: &mut [u8]) {
        let (c, cs) = (g.c_in, self.cs);
        xp.fill(zx);
        for yb in 0..self.hp {
            for dy in 0..2 {
                let iy = (2 * yb + dy) as isize - g.pt as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let src = &x[iy as usize * g.w * c..(iy as usize + 1) * g.w * c];
                let row = &mut xp[yb * self.wp * cs..(yb + 1) * self.wp * cs];
                for xb in 0..self.wp {
                    let ix = (2 * xb) as isize - g.pl as isize;
                    let dst = &mut row[xb * cs + dy * 2 * c..xb * cs + (dy + 1) * 2 * c];
                    if ix >= 0 && ix as usize + 1 < g.w {
                        // Both pixels of the block row inside: one run of 2·c_in bytes.
                        copy_small(dst, &src[ix as usize * c..(ix as usize + 2) * c]);
                    } else {
                        for dx in 0..2 {
                            let i = ix + dx as isize;
                            if i >= 0 && i < g.w as isize {
                                dst[dx * c..(dx + 1) * c].copy_from_slice(&src[i as usize * c..(i as usize + 1) * c]);
                            }
                        }
                    }
                }
            }
        }
    }
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
        let g = &geom;
        let taps = g.kh * g.kw;
        let (cig, cog) = (g.c_in / g.group, g.c_out / g.group);
        let kind = if g.is_depthwise() {
            let c_pad = g.c_out.div_ceil(16) * 16;
            let mut wv = vec![0i32; taps * c_pad];
            let mut colsum = vec![0i32; g.c_out];
            for c in 0..g.c_out {
                for t in 0..taps {
                    wv[t * c_pad + c] = w[c * taps + t] as i32;
                    colsum[c] += w[c * taps + t] as i32;
                }
            }
            let mut rq = rq;
            let corr: Vec<i32> = colsum.iter().map(|&s| -(zx as i32) * s).collect();
            rq.add_bias_i(&corr);
            let (mut vnni, mut rq_perm) = (vec![], None);
            let by_cols = g.kh <= 4 && g.dw == 1 && g.sw <= 2;
            let groups = if by_cols { g.kw } else { taps.div_ceil(4) };
            // group and byte of tap t
            let slot = |t: usize| if by_cols { (t % g.kw, t / g.kw) } else { (t / 4, t % 4) };
            if matches!(isa, Isa::Avx512Vnni | Isa::Amx) && rq.out != Out::F32 && taps <= 64 {
                let blocks = g.c_out.div_ceil(64);
                vnni = vec![0i8; blocks * groups * 256];
                let n64 = blocks * 64;
                let (mut sc, mut bi, mut bf) = (vec![0f32; n64], vec![0i32; n64], vec![0f32; n64]);
                let rbf = |c: usize| if rq.bias_f.is_empty() { 0.0 } else { rq.bias_f[c] };
                for b in 0..blocks {
                    for i in 0..4 {
                        for lane in 0..16 {
                            let c = b * 64 + dw_perm(i, lane);
                            let at = b * 64 + i * 16 + lane;
                            if c < g.c_out {
                                (sc[at], bi[at], bf[at]) = (rq.scale[c], rq.bias_i[c], rbf(c));
                                for t in 0..taps {
                                    let (gr, byte) = slot(t);
                                    vnni[((b * groups + gr) * 4 + i) * 64 + lane * 4 + byte] = w[c * taps + t];
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
            let (mut wv, mut colsum, mut rq) = (wv, colsum, rq);
            if rq_perm.is_some() {
                // The VNNI kernel reads only its own copies.
                (wv, colsum) = (vec![], vec![]);
                (rq.scale, rq.bias_i, rq.bias_f) = (vec![], vec![], vec![]);
            }
            ConvKind::Depthwise(
                PackedDw { isa, taps, c: g.c_out, c_pad, w: wv, colsum, vnni, rq_perm, by_cols, groups },
                rq,
            )
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

    pub fn kernel_name(&self) -> &'static str {
        match self.kind {
            ConvKind::Direct(..) => "int8 1x1 gemm",
            ConvKind::Im2col(..) => "int8 im2col+gemm",
            ConvKind::Shifted(..) => "int8 shifted-rows gemm",
            ConvKind::SpaceToDepth(..) => "int8 space-to-depth gemm",
            ConvKind::Depthwise(..) => "int8 depthwise",
        }
    }

    pub fn out(&self) -> Out {
        match &self.kind {
            ConvKind::Direct(_, r)
            | ConvKind::Depthwise(_, r)
            | ConvKind::Shifted(_, r, _)
            | ConvKind::SpaceToDepth(_, r, _) => r.out,
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
                w.w.len() * 4
                    + w.colsum.len() * 4
                    + w.vnni.len()
                    + r.bytes()
                    + w.rq_perm.as_ref().map_or(0, |p| p.bytes())
            }
        }
    }

    /// Padded input height and width for the shifted-rows path.
    fn shifted_hw(g: &ConvGeom) -> (usize, usize) {
        (g.oh + g.kh - 1, g.ow + g.kw - 1)
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
            ConvKind::Depthwise(..) => {
                let (hp, wp) = self.padded_hw();
                hp * wp * g.c_in.div_ceil(64) * 64 + 64
            }
            ConvKind::SpaceToDepth(_, _, s2d) => s2d.len(),
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
            ConvKind::Depthwise(w, r) => {
                let (hp, wp) = self.padded_hw();
                let (c, cs) = (g.c_in, g.c_in.div_ceil(64) * 64);
                let xp = &mut scratch[..hp * wp * cs];
                pad_nhwc(g, x, hp, wp, cs, self.zx, xp, threads);
                let dg = DwGeom {
                    c,
                    cs,
                    wp,
                    kh: g.kh,
                    kw: g.kw,
                    sh: g.sh,
                    sw: g.sw,
                    dh: g.dh,
                    dw: g.dw,
                    oh: g.oh,
                    ow: g.ow,
                };
                depthwise(&dg, xp, w, r, out, threads);
            }
        }
    }
}

/// Copies the NHWC input into a `[hp][wp][cs]` buffer (channel stride `cs ≥ c`) filled with the
/// zero point outside the image and in the padding channels.
#[allow(clippy::too_many_arguments)]
fn pad_nhwc(g: &ConvGeom, x: &[u8], hp: usize, wp: usize, cs: usize, zx: u8, xp: &mut [u8], threads: usize) {
    let c = g.c_in;
    let job = |(ph, row): (usize, &mut [u8])| {
        let ih = ph as isize - g.pt as isize;
        if ih < 0 || ih >= g.h as isize {
            row.fill(zx);
            return;
        }
        let ih = ih as usize;
        let left = g.pl.min(wp);
        let n = g.w.min(wp - left);
        if cs == c {
            row[..left * c].fill(zx);
            row[left * c..(left + n) * c].copy_from_slice(&x[ih * g.w * c..(ih * g.w + n) * c]);
            row[(left + n) * c..].fill(zx);
        } else {
            row.fill(zx);
            for i in 0..n {
                let s = (ih * g.w + i) * c;
                row[(left + i) * cs..(left + i) * cs + c].copy_from_slice(&x[s..s + c]);
            }
        }
    };
    if threads > 1 && hp * wp * cs >= 1 << 16 {
        // Indexed chunks, not `par_bridge` (which hands rows out one at a time through a lock).
        xp[..hp * wp * cs].par_chunks_mut(wp * cs).enumerate().for_each(job);
    } else {
        xp[..hp * wp * cs].chunks_mut(wp * cs).enumerate().for_each(job);
    }
}

/// `dst.copy_from_slice(src)` without a library call for the short runs im2col copies (two
/// overlapping fixed-size moves cover any length between a size and twice it).
#[inline(always)]
fn copy_small(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    assert_eq!(dst.len(), n);
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY: every access is within `0..n` of both slices (checked equal above).
    unsafe {
        macro_rules! two {
            ($t:ty) => {{
                let w = std::mem::size_of::<$t>();
                (d as *mut $t).write_unaligned((s as *const $t).read_unaligned());
                (d.add(n - w) as *mut $t).write_unaligned((s.add(n - w) as *const $t).read_unaligned());
            }};
        }
        match n {
            0 => {}
            1..=3 => {
                for i in 0..n {
                    *d.add(i) = *s.add(i);
                }
            }
            4..=7 => two!(u32),
            8..=15 => two!(u64),
            16..=31 => two!(u128),
            32..=64 => {
                two!([u128; 2]);
            }
            _ => std::ptr::copy_nonoverlapping(s, d, n),
        }
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
