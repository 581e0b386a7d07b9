//! Integer element-wise and pooling steps on NHWC tensors, and the conversions at the edges of the
//! integer region (f32 NCHW ⇄ quantized NHWC). Each follows the arithmetic of its QDQ pattern
//! (DequantizeLinear → op → QuantizeLinear) with the same f32 operations in the same order.

use super::{quantize_one, Isa};

/// The path the element-wise ops take (`LOWBIT_ISA`, else the best available), decided once.
fn path() -> Isa {
    static P: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *P.get_or_init(|| Isa::selected().unwrap_or(Isa::Scalar))
}

/// Defines a public function whose body is compiled three times (AVX-512, AVX2, portable) and
/// dispatched on [`path`]. The body is plain IEEE f32/integer code, so all three compute the same
/// bits; only the vector width LLVM uses differs.
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
            unsafe fn v512($($arg: $ty),*) { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn v256($($arg: $ty),*) { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            match path() {
                // SAFETY: `path` only returns paths this CPU supports.
                Isa::Avx512Vnni => return unsafe { v512($($arg),*) },
                Isa::Avx2 => return unsafe { v256($($arg),*) },
                Isa::Scalar => {}
            }
            body($($arg),*)
        }
    };
}

/// Per-tensor quantization parameters of an integer value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zp: i32,
    /// int8 (−128..127) rather than uint8.
    pub signed: bool,
}

impl QParams {
    #[inline(always)]
    pub fn range(&self) -> (i32, i32) {
        let s = self.signed as i32;
        (-128 * s, 255 - 128 * s)
    }
    /// The integer a stored byte holds (branch-free, so loops vectorize).
    #[inline(always)]
    pub fn get(&self, b: u8) -> i32 {
        let s = self.signed as u8;
        (b ^ (s << 7)) as i32 - 128 * s as i32
    }
    #[inline(always)]
    pub fn dequant(&self, b: u8) -> f32 {
        (self.get(b) - self.zp) as f32 * self.scale
    }
    #[inline(always)]
    pub fn quant(&self, y: f32) -> u8 {
        let (lo, hi) = self.range();
        quantize_one(y, self.scale, self.zp, lo, hi) as u8
    }
}

/// NCHW ↔ NHWC index map for `[n, c, plane]` tensors (`None`: same layout on both sides).
pub type Layout = Option<(usize, usize, usize)>;

multiversion! {
    /// QuantizeLinear of contiguous values.
    pub fn quantize_flat(x: &[f32], q: QParams, out: &mut [u8]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = q.quant(v));
    }
}

/// QuantizeLinear; with `layout` the f32 input is NCHW and the output NHWC (`tmp` holds the
/// NCHW bytes on the way, `x.len()` of them).
pub fn quantize(x: &[f32], q: QParams, layout: Layout, out: &mut [u8], tmp: &mut [u8]) {
    match layout {
        None => quantize_flat(x, q, out),
        Some((n, c, p)) => {
            let tmp = &mut tmp[..x.len()];
            quantize_flat(x, q, tmp);
            nchw_to_nhwc(tmp, n, c, p, out);
        }
    }
}

/// NCHW bytes → NHWC bytes.
pub fn nchw_to_nhwc(x: &[u8], n: usize, c: usize, p: usize, out: &mut [u8]) {
    for b in 0..n {
        for ch in 0..c {
            let src = &x[(b * c + ch) * p..(b * c + ch + 1) * p];
            for (i, &v) in src.iter().enumerate() {
                out[(b * p + i) * c + ch] = v;
            }
        }
    }
}

/// DequantizeLinear; with `layout` the input is NHWC and the f32 output NCHW.
pub fn dequantize(x: &[u8], q: QParams, layout: Layout, out: &mut [f32]) {
    match layout {
        None => out.iter_mut().zip(x).for_each(|(o, &v)| *o = q.dequant(v)),
        Some((n, c, p)) => {
            for b in 0..n {
                for ch in 0..c {
                    let dst = &mut out[(b * c + ch) * p..(b * c + ch + 1) * p];
                    for (i, o) in dst.iter_mut().enumerate() {
                        *o = q.dequant(x[(b * p + i) * c + ch]);
                    }
                }
            }
        }
    }
}

/// NHWC bytes → NCHW bytes (for generic fallbacks and graph outputs).
pub fn nhwc_to_nchw(x: &[u8], n: usize, c: usize, p: usize, out: &mut [u8]) {
    for b in 0..n {
        for ch in 0..c {
            for i in 0..p {
                out[(b * c + ch) * p + i] = x[(b * p + i) * c + ch];
            }
        }
    }
}

multiversion! {
    /// `q_out(clamp(dq_a(a) + dq_b(b), lo, hi))`, same shapes.
    pub fn add(a: &[u8], qa: QParams, b: &[u8], qb: QParams, lo: f32, hi: f32, qo: QParams, out: &mut [u8]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            let v = qa.dequant(x) + qb.dequant(y);
            *o = qo.quant(v.max(lo).min(hi));
        }
    }
}

/// GlobalAveragePool on NHWC `[n][plane][c]`: the exact integer sum, then
/// `q_out(f32(Σ(q - z)) · s / plane)`.
pub fn global_avg(x: &[u8], n: usize, plane: usize, c: usize, qi: QParams, qo: QParams, out: &mut [u8]) {
    let mut acc = vec![0i32; c];
    for b in 0..n {
        acc.fill(0);
        for p in 0..plane {
            let row = &x[(b * plane + p) * c..(b * plane + p + 1) * c];
            for (s, &v) in acc.iter_mut().zip(row) {
                *s += qi.get(v);
            }
        }
        for (ch, &s) in acc.iter().enumerate() {
            out[b * c + ch] = qo.quant(global_avg_value(s, plane, qi));
        }
    }
}

/// The f32 mean of a plane whose integer sum is `sum` (shared with the fake-quant executor).
#[inline(always)]
pub fn global_avg_value(sum: i32, plane: usize, qi: QParams) -> f32 {
    (sum - plane as i32 * qi.zp) as f32 * qi.scale / plane as f32
}

/// Max pooling geometry (one image, NHWC).
#[derive(Clone, Copy, Debug)]
pub struct PoolGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

/// MaxPool on quantized values whose input and output parameters are equal (max commutes with
/// the monotone dequantization, so this is exact). Padding is ignored, as ONNX specifies.
pub fn max_pool(g: &PoolGeom, n: usize, signed: bool, x: &[u8], out: &mut [u8]) {
    let flip = if signed { 0x80u8 } else { 0 };
    let (isz, osz) = (g.h * g.w * g.c, g.oh * g.ow * g.c);
    let mut best = vec![0u8; g.c];
    for b in 0..n {
        let xi = &x[b * isz..(b + 1) * isz];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                best.fill(0);
                for ky in 0..g.kh {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    for kx in 0..g.kw {
                        let ix = (ox * g.sw + kx * g.dw) as isize - g.pl as isize;
                        if ix < 0 || ix >= g.w as isize {
                            continue;
                        }
                        let s = (iy as usize * g.w + ix as usize) * g.c;
                        // Signed bytes compare as unsigned after flipping the sign bit.
                        for (m, &v) in best.iter_mut().zip(&xi[s..s + g.c]) {
                            *m = (*m).max(v ^ flip);
                        }
                    }
                }
                let o = &mut out[b * osz + (oy * g.ow + ox) * g.c..b * osz + (oy * g.ow + ox + 1) * g.c];
                o.iter_mut().zip(&best).for_each(|(d, &m)| *d = m ^ flip);
            }
        }
    }
}
