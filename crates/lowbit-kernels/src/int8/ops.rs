//! Integer element-wise and pooling steps on NHWC tensors, and the conversions at the edges of the
//! integer region (f32 NCHW ⇄ quantized NHWC). Each follows the arithmetic of its QDQ pattern
//! (DequantizeLinear → op → QuantizeLinear) with the same f32 operations in the same order.

use crate::epilogue::{div_markstein, quantize_one};
pub use crate::geom::PoolGeom;
use crate::isa::{trace, Isa};

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

/// An integer Add step: `q_out(clamp(dq_a(a) + dq_b(b), lo, hi))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AddQ {
    pub qa: QParams,
    pub qb: QParams,
    pub lo: f32,
    pub hi: f32,
    pub qo: QParams,
    /// `1/s_out`, set when dividing by `s_out` through it ([`super::div_markstein`]: one multiply,
    /// two FMAs) was checked to give the same byte as the division for all 65,536 input pairs.
    /// The division costs more than the rest of the step on every vector width.
    pub(crate) inv: Option<f32>,
}

impl AddQ {
    pub fn new(qa: QParams, qb: QParams, lo: f32, hi: f32, qo: QParams) -> AddQ {
        // A NaN bound clamps nothing (`x.max(NaN) == x`); as an infinity it means the same to
        // `clamp_sel`, which gives the bound itself for a NaN bound.
        let lo = if lo.is_nan() { f32::NEG_INFINITY } else { lo };
        let hi = if hi.is_nan() { f32::INFINITY } else { hi };
        let mut p = AddQ { qa, qb, lo, hi, qo, inv: None };
        let inv = 1.0 / qo.scale;
        let same = inv.is_finite()
            && (0..=255u8).all(|x| {
                (0..=255u8).all(|y| {
                    let v = p.value(x, y);
                    p.by_inv(v, inv) == qo.quant(v)
                })
            });
        p.inv = same.then_some(inv);
        p
    }

    /// The clamped f32 sum, in the QDQ pattern's order.
    #[inline(always)]
    fn value(&self, x: u8, y: u8) -> f32 {
        clamp_sel(self.qa.dequant(x) + self.qb.dequant(y), self.lo, self.hi)
    }

    /// [`QParams::quant`] with the division through `inv`.
    #[inline(always)]
    fn by_inv(&self, v: f32, inv: f32) -> u8 {
        let q = self.qo;
        let (lo, hi) = q.range();
        let t = clamp_sel(div_markstein(v, q.scale, inv), (lo - q.zp) as f32, (hi - q.zp) as f32);
        // SAFETY: the clamp returns a bound for NaN, so `t` is finite and within i32 range.
        (unsafe { t.round_ties_even().to_int_unchecked::<i32>() } + q.zp) as u8
    }
}

/// `x.max(lo).min(hi)` written as compare-and-select, which is the same value for every `x`
/// (NaN included: it gives `lo`) when `lo` and `hi` are not NaN, but compiles to one `vmaxps`
/// and one `vminps` instead of IEEE maxNum's extra NaN test and blend.
#[inline(always)]
fn clamp_sel(x: f32, lo: f32, hi: f32) -> f32 {
    let x = if x > lo { x } else { lo };
    if x < hi {
        x
    } else {
        hi
    }
}

multiversion! {
    /// The [`AddQ`] step on same-shaped tensors.
    pub fn add(a: &[u8], b: &[u8], p: &AddQ, out: &mut [u8]) {
        match p.inv {
            Some(inv) => {
                for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                    *o = p.by_inv(p.value(x, y), inv);
                }
            }
            None => {
                for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                    *o = p.qo.quant(p.value(x, y));
                }
            }
        }
    }
}

/// The table of `DequantizeLinear(qi) → f → QuantizeLinear(qo)` over every stored byte: the integer form of any
/// element-wise function of one quantized tensor (an activation such as hard-swish). Exact by construction: each entry
/// is the fake-quant arithmetic itself.
pub fn lut_table(qi: QParams, qo: QParams, f: impl Fn(f32) -> f32) -> [u8; 256] {
    std::array::from_fn(|b| qo.quant(f(qi.dequant(b as u8))))
}

/// Looks every byte up in a [`lut_table`]: 64 bytes per step with AVX-512 VBMI where the CPU has it and the selected
/// path is AVX-512 or AMX, 32 with AVX2 on the 256-bit paths, else one byte at a time ([`lut_scalar`], the reference).
pub fn lut(isa: Isa, x: &[u8], table: &[u8; 256], out: &mut [u8]) {
    trace::int8(isa);
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512Vnni | Isa::Amx) && vbmi() {
        // SAFETY: the CPU has AVX-512 F/BW/VBMI.
        return unsafe { lut_vbmi(x, table, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::AvxVnni) {
        // SAFETY: the 256-bit paths run only where the CPU has AVX2.
        return unsafe { lut_avx2(x, table, out) };
    }
    lut_scalar(x, table, out)
}

/// The byte lookup with AVX2, 32 bytes per step: the table as 16 rows of 16 bytes, each looked up by
/// the low nibble (`vpshufb`) and kept where the high nibble is the row's (about 2 operations per byte
/// where the scalar loop makes two loads and a store). The tail goes through a 32-byte buffer.
///
/// # Safety
/// The CPU has AVX2; `out` is at least as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn lut_avx2(x: &[u8], table: &[u8; 256], out: &mut [u8]) {
    use std::arch::x86_64::*;
    assert!(out.len() >= x.len());
    let rows: [__m256i; 16] =
        std::array::from_fn(|i| _mm256_broadcastsi128_si256(_mm_loadu_si128(table.as_ptr().add(16 * i) as *const _)));
    let mut i = 0;
    while i + 32 <= x.len() {
        let v = _mm256_loadu_si256(x.as_ptr().add(i) as *const _);
        _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut _, lut32(&rows, v));
        i += 32;
    }
    if i < x.len() {
        let n = x.len() - i;
        let mut buf = [0u8; 32];
        buf[..n].copy_from_slice(&x[i..]);
        let v = _mm256_loadu_si256(buf.as_ptr() as *const _);
        _mm256_storeu_si256(buf.as_mut_ptr() as *mut _, lut32(&rows, v));
        out[i..x.len()].copy_from_slice(&buf[..n]);
    }
}

/// 32 bytes through the table's 16 rows (see [`lut_avx2`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lut32(rows: &[std::arch::x86_64::__m256i; 16], v: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let nib = _mm256_set1_epi8(0x0f);
    let lo = _mm256_and_si256(v, nib);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
    let mut acc = _mm256_setzero_si256();
    for (r, t) in rows.iter().enumerate() {
        let hit = _mm256_cmpeq_epi8(hi, _mm256_set1_epi8(r as i8));
        acc = _mm256_or_si256(acc, _mm256_and_si256(hit, _mm256_shuffle_epi8(*t, lo)));
    }
    acc
}

/// The byte lookup one byte at a time.
pub fn lut_scalar(x: &[u8], table: &[u8; 256], out: &mut [u8]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = table[v as usize]);
}

/// Whether the CPU has AVX-512 VBMI (byte permutes).
#[cfg(target_arch = "x86_64")]
pub fn vbmi() -> bool {
    crate::isa::features().vbmi()
}

/// The byte lookup with AVX-512 VBMI: two 128-entry two-register permutes (index bits 0-6) and a blend on bit 7.
/// The tail goes through masked loads and stores.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VBMI; `out` is at least as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub unsafe fn lut_vbmi(x: &[u8], table: &[u8; 256], out: &mut [u8]) {
    assert!(out.len() >= x.len());
    lut_rows_vbmi(x, x.len(), table, out, 0, 0, 1)
}

/// `rows` rows of `w` bytes of `x` (contiguous) through `table` into `out` at row stride `stride` from column `at`, with
/// AVX-512 VBMI (the table's four registers loaded once; tails through masked loads and stores).
///
/// # Safety
/// The CPU has AVX-512 F/BW/VBMI; `x` holds `rows * w` bytes and `out` `(rows - 1) * stride + at + w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(crate) unsafe fn lut_rows_vbmi(
    x: &[u8],
    w: usize,
    table: &[u8; 256],
    out: &mut [u8],
    stride: usize,
    at: usize,
    rows: usize,
) {
    use std::arch::x86_64::*;
    let t = |i: usize| _mm512_loadu_si512(table.as_ptr().add(64 * i) as *const _);
    let (t0, t1, t2, t3) = (t(0), t(1), t(2), t(3));
    let look = |v: __m512i| {
        let lo = _mm512_permutex2var_epi8(t0, v, t1);
        let hi = _mm512_permutex2var_epi8(t2, v, t3);
        _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi)
    };
    for r in 0..rows {
        let (src, dst) = (x.as_ptr().add(r * w), out.as_mut_ptr().add(r * stride + at));
        let mut i = 0;
        while i + 64 <= w {
            let v = _mm512_loadu_si512(src.add(i) as *const _);
            _mm512_storeu_si512(dst.add(i) as *mut _, look(v));
            i += 64;
        }
        if i < w {
            let k: __mmask64 = (1u64 << (w - i)) - 1;
            let v = _mm512_maskz_loadu_epi8(k, src.add(i) as *const i8);
            _mm512_mask_storeu_epi8(dst.add(i) as *mut i8, k, look(v));
        }
    }
}

/// `QuantizeLinear(DequantizeLinear(a) · DequantizeLinear(b))`, the product in f32 as the QDQ pattern computes it.
/// The dequantized values of every byte are tabulated once.
#[derive(Clone, Debug)]
pub struct MulQ {
    pub qo: QParams,
    ta: Box<[f32; 256]>,
    tb: Box<[f32; 256]>,
}

impl MulQ {
    pub fn new(qa: QParams, qb: QParams, qo: QParams) -> MulQ {
        let t = |q: QParams| Box::new(std::array::from_fn(|b| q.dequant(b as u8)));
        MulQ { qo, ta: t(qa), tb: t(qb) }
    }
}

multiversion! {
    /// [`MulQ`] on same-shaped tensors.
    pub fn mul(a: &[u8], b: &[u8], p: &MulQ, out: &mut [u8]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = p.qo.quant(p.ta[x as usize] * p.tb[y as usize]);
        }
    }
}

multiversion! {
    /// [`MulQ`] scaling each channel of NHWC `a` (`[n][plane][c]`) by one value of `b` (`[n][c]`), as a squeeze-and-
    /// excitation gate does.
    pub fn mul_channels(a: &[u8], b: &[u8], n: usize, plane: usize, c: usize, p: &MulQ, out: &mut [u8]) {
        for img in 0..n {
            let gate = &b[img * c..(img + 1) * c];
            let (a, out) = (&a[img * plane * c..(img + 1) * plane * c], &mut out[img * plane * c..(img + 1) * plane * c]);
            for (orow, arow) in out.chunks_exact_mut(c).zip(a.chunks_exact(c)) {
                for ((o, &x), &g) in orow.iter_mut().zip(arow).zip(gate) {
                    *o = p.qo.quant(p.ta[x as usize] * p.tb[g as usize]);
                }
            }
        }
    }
}

/// GlobalAveragePool on NHWC `[n][plane][c]`: the exact integer sum, then
/// `q_out(f32(Σ(q - z)) · s / plane)`.
pub fn global_avg(x: &[u8], n: usize, plane: usize, c: usize, qi: QParams, qo: QParams, out: &mut [u8]) {
    // Channels in blocks of 256 so the sums live on the stack (no allocation per run).
    let mut acc = [0i32; 256];
    for b in 0..n {
        for c0 in (0..c).step_by(256) {
            let w = (c - c0).min(256);
            let acc = &mut acc[..w];
            acc.fill(0);
            for p in 0..plane {
                let row = &x[(b * plane + p) * c + c0..(b * plane + p) * c + c0 + w];
                for (s, &v) in acc.iter_mut().zip(row) {
                    *s += qi.get(v);
                }
            }
            for (ch, &s) in acc.iter().enumerate() {
                out[b * c + c0 + ch] = qo.quant(global_avg_value(s, plane, qi));
            }
        }
    }
}

/// The f32 mean of a plane whose integer sum is `sum` (shared with the fake-quant executor).
#[inline(always)]
pub fn global_avg_value(sum: i32, plane: usize, qi: QParams) -> f32 {
    (sum - plane as i32 * qi.zp) as f32 * qi.scale / plane as f32
}

/// Pseudo-random bytes (xorshift) for the integer op tests (here and in `maxpool`).
#[cfg(test)]
pub(crate) fn test_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::test_bytes as bytes;
    use super::*;

    #[test]
    fn lut_and_mul_follow_the_qdq_arithmetic() {
        for isa in Isa::all_supported() {
            // Parameters with a zero point at each end and in the middle, signed and unsigned, and an output range the
            // products overflow (saturation).
            let ps = [
                QParams { scale: 0.05, zp: 0, signed: false },
                QParams { scale: 0.013, zp: 255, signed: false },
                QParams { scale: 0.021, zp: -128, signed: true },
                QParams { scale: 0.1, zp: 7, signed: true },
            ];
            // The definition of hard-swish, written out (the table is built from `Act::apply`, as the runtime builds it).
            let hswish = |v: f32| v * (v * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0);
            for &qi in &ps {
                for &qo in &ps {
                    let t = lut_table(qi, qo, |v| lowbit_core::Act::HardSwish.apply(v));
                    let x: Vec<u8> = (0..=255).collect();
                    let mut out = vec![0u8; 256];
                    lut(isa, &x, &t, &mut out);
                    for (b, &o) in out.iter().enumerate() {
                        // The definition, written out: (q - zp) · s, hard-swish, y / s rounded half to even, saturated.
                        let v = (qi.get(b as u8) - qi.zp) as f32 * qi.scale;
                        let q =
                            ((hswish(v) / qo.scale).round_ties_even() as i32 + qo.zp).clamp(qo.range().0, qo.range().1);
                        assert_eq!(qo.get(o), q, "byte {b}, {qi:?} -> {qo:?}");
                    }
                    // Products: every byte pair, element by element and as a per-channel gate (ragged: 3 images, 5
                    // pixels, 7 channels).
                    let p = MulQ::new(qi, qo, qo);
                    let a: Vec<u8> = (0..65536).map(|i| (i >> 8) as u8).collect();
                    let bb: Vec<u8> = (0..65536).map(|i| i as u8).collect();
                    let mut out = vec![0u8; 65536];
                    mul(isa, &a, &bb, &p, &mut out);
                    let def = |x: u8, y: u8| {
                        let v = qi.dequant(x) * qo.dequant(y);
                        ((v / qo.scale).round_ties_even() as i32 + qo.zp).clamp(qo.range().0, qo.range().1)
                    };
                    for i in 0..65536 {
                        assert_eq!(qo.get(out[i]), def(a[i], bb[i]), "pair {i}");
                    }
                    let (n, plane, c) = (3, 5, 7);
                    let a = bytes(n * plane * c, 11);
                    let g = bytes(n * c, 12);
                    let mut out = vec![0u8; n * plane * c];
                    mul_channels(isa, &a, &g, n, plane, c, &p, &mut out);
                    for img in 0..n {
                        for px in 0..plane {
                            for ch in 0..c {
                                let i = (img * plane + px) * c + ch;
                                assert_eq!(
                                    qo.get(out[i]),
                                    def(a[i], g[img * c + ch]),
                                    "image {img} pixel {px} channel {ch}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_lookups_equal_scalar() {
        // Each vector lookup this CPU has, with the lengths around its step (ragged tails, empty, several blocks).
        type Lookup = unsafe fn(&[u8], &[u8; 256], &mut [u8]);
        let mut lookups: Vec<(&str, Lookup, usize)> = vec![];
        if std::arch::is_x86_feature_detected!("avx2") {
            lookups.push(("avx2", lut_avx2, 32));
        }
        if vbmi() {
            lookups.push(("vbmi", lut_vbmi, 64));
        }
        if lookups.len() < 2 {
            eprintln!("this CPU lacks AVX2 or AVX-512 VBMI: only {} lookup(s) tested here", lookups.len());
        }
        for (name, look, step) in lookups {
            let lens = [0, 1, step - 1, step, step + 1, 255, 256, 1000, 4097];
            for (seed, len) in lens.into_iter().enumerate() {
                let table: [u8; 256] = bytes(256, seed as u32 + 1).try_into().unwrap();
                // Every byte value, then random ones.
                let mut x = bytes(len, seed as u32 + 101);
                for (i, v) in x.iter_mut().enumerate().take(256) {
                    *v = i as u8;
                }
                let (mut a, mut b) = (vec![0u8; len + 7], vec![0u8; len + 7]);
                lut_scalar(&x, &table, &mut a);
                // SAFETY: only the lookups this CPU has are listed.
                unsafe { look(&x, &table, &mut b) };
                assert_eq!(a, b, "{name}, length {len}");
                // Bytes past the input are not written.
                assert!(b[len..].iter().all(|&v| v == 0), "{name}, length {len}");
            }
        }
    }

    #[test]
    fn clamp_sel_equals_max_then_min() {
        let xs = [f32::NAN, -f32::NAN, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1.5, -2.5, 1e-42, 3.0e38];
        let bounds = [(f32::NEG_INFINITY, f32::INFINITY), (0.0, 6.0), (-0.0, 0.0), (-1.0, 1e-42)];
        for &x in &xs {
            for &(lo, hi) in &bounds {
                // Equal as values (the sign of a zero may differ; quantization erases it).
                assert_eq!(clamp_sel(x, lo, hi), x.max(lo).min(hi), "x={x} lo={lo} hi={hi}");
            }
        }
    }

    #[test]
    fn global_avg_matches_its_definition_past_one_stack_block() {
        for signed in [false, true] {
            let (n, plane, c) = (2, 9, 300);
            let x = bytes(n * plane * c, 5 + signed as u32);
            let qi = QParams { scale: 0.05, zp: if signed { 4 } else { 130 }, signed };
            let qo = QParams { scale: 0.02, zp: if signed { -10 } else { 100 }, signed };
            let mut out = vec![0u8; n * c];
            global_avg(&x, n, plane, c, qi, qo, &mut out);
            for b in 0..n {
                for ch in 0..c {
                    let s: i32 = (0..plane).map(|p| qi.get(x[(b * plane + p) * c + ch])).sum();
                    assert_eq!(out[b * c + ch], qo.quant(global_avg_value(s, plane, qi)));
                }
            }
        }
    }

    #[test]
    fn add_and_layouts_follow_the_qdq_arithmetic() {
        for isa in Isa::all_supported() {
            // Every input pair, through the reciprocal path and (a subnormal output scale, whose
            // reciprocal overflows) the division path.
            let a: Vec<u8> = (0..65536u32).map(|i| (i >> 8) as u8).collect();
            let b: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
            let (qa, qb, qo) = (
                QParams { scale: 0.03, zp: 12, signed: false },
                QParams { scale: 0.07, zp: -5, signed: true },
                QParams { scale: 0.05, zp: 128, signed: false },
            );
            let mut out = vec![0u8; 65536];
            let p = AddQ::new(qa, qb, 0.0, f32::INFINITY, qo);
            assert!(p.inv.is_some(), "the reciprocal path holds for ordinary scales");
            add(isa, &a, &b, &p, &mut out);
            for i in 0..65536 {
                assert_eq!(out[i], qo.quant((qa.dequant(a[i]) + qb.dequant(b[i])).max(0.0)), "pair {i}");
            }
            // A length off the vector widths: the tail element by element, nothing past it written.
            let mut part = vec![7u8; 70];
            add(isa, &a[300..369], &b[300..369], &p, &mut part[..69]);
            for i in 0..69 {
                assert_eq!(part[i], out[300 + i], "tail pair {i}");
            }
            assert_eq!(part[69], 7);
            // A signed output and a Clip range on the reciprocal path; NaN bounds clamp nothing.
            let qs = QParams { scale: 0.031, zp: -7, signed: true };
            for (lo, hi, want_lo, want_hi) in
                [(-1.5f32, 2.25f32, -1.5f32, 2.25f32), (f32::NAN, 1.0, f32::NEG_INFINITY, 1.0)]
            {
                let p = AddQ::new(qa, qb, lo, hi, qs);
                assert!(p.inv.is_some());
                add(isa, &a, &b, &p, &mut out);
                for i in 0..65536 {
                    let v = (qa.dequant(a[i]) + qb.dequant(b[i])).max(want_lo).min(want_hi);
                    assert_eq!(out[i], qs.quant(v), "pair {i}");
                }
            }
            let tiny = QParams { scale: 1e-40, zp: 3, signed: true };
            let p = AddQ::new(qa, qb, -1.0, 2.0, tiny);
            assert_eq!(p.inv, None);
            add(isa, &a, &b, &p, &mut out);
            for i in 0..65536 {
                assert_eq!(out[i], tiny.quant((qa.dequant(a[i]) + qb.dequant(b[i])).clamp(-1.0, 2.0)), "pair {i}");
            }
            // NCHW -> NHWC -> NCHW round trip through quantize/dequantize layouts
            let x: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32 * 0.1 - 1.0).collect();
            let (mut q, mut tmp, mut back) = (vec![0u8; 24], vec![0u8; 24], vec![0f32; 24]);
            crate::int8::edges::quantize(isa, &x, qo, Some((2, 3, 4)), &mut q, &mut tmp, 1);
            crate::int8::edges::dequantize(isa, &q, qo, Some((2, 3, 4)), &mut back, 1);
            for (i, (&v, &r)) in x.iter().zip(&back).enumerate() {
                assert_eq!(r, qo.dequant(qo.quant(v)), "element {i}");
            }
        }
    }
}
