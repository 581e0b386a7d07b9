//! Data movement and per-channel steps on quantized NHWC bytes for detection and segmentation networks: Concat
//! (copying, or requantizing through a table), Resize (nearest and linear, in the reference's f32 order) and PRelu.
//! Each follows the arithmetic of its QDQ pattern (DequantizeLinear → op → QuantizeLinear) exactly.

#[cfg(target_arch = "x86_64")]
use crate::int8::ops::{lut_avx2, lut_rows_vbmi, vbmi};
use crate::int8::ops::{lut_scalar, QParams};
use crate::isa::{trace, Isa};
use crate::resample::Taps;

/// PRelu on quantized values with one slope per channel of `[pixels][c]` bytes (NHWC, or `[n][c]`):
/// `qo(prelu(qi(x), slope[c]))`, the f32 arithmetic of `DequantizeLinear → PRelu → QuantizeLinear`.
/// The 256-bit paths run eight channels at a time with the same f32 operations (the compiler does
/// not vectorise the per-channel slopes and the division on its own there); the others as written.
pub fn prelu_channels(isa: Isa, x: &[u8], c: usize, slope: &[f32], qi: QParams, qo: QParams, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::AvxVnni) {
        trace::int8(isa);
        assert!(isa.supported(), "integer path {} is not supported by this CPU", isa.name());
        assert!(slope.len() >= c);
        // SAFETY: the CPU has AVX2 and FMA (asserted); rows and slopes are within bounds (asserted).
        return unsafe { prelu_avx2(x, c, slope, qi, qo, out) };
    }
    prelu_channels_portable(isa, x, c, slope, qi, qo, out)
}

/// One PRelu element, the definition.
#[inline(always)]
fn prelu_one(v: u8, a: f32, qi: QParams, qo: QParams) -> u8 {
    let f = qi.dequant(v);
    qo.quant(if f >= 0.0 { f } else { f * a })
}

multiversion! {
    /// [`prelu_channels`] element by element.
    pub fn prelu_channels_portable(x: &[u8], c: usize, slope: &[f32], qi: QParams, qo: QParams, out: &mut [u8]) {
        for (orow, xrow) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            for ((o, &v), &a) in orow.iter_mut().zip(xrow).zip(slope) {
                *o = prelu_one(v, a, qi, qo);
            }
        }
    }
}

/// [`prelu_channels`] on AVX2, eight channels per step: `(v - zp_i)·s_i`, times the slope where
/// negative, `/ s_o` (correctly rounded), clamped to the output range as `f32::max`/`min` do, rounded
/// half to even, `+ zp_o`; the channel tail element by element.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn prelu_avx2(x: &[u8], c: usize, slope: &[f32], qi: QParams, qo: QParams, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let c8 = c / 8 * 8;
    let (lo, hi) = qo.range();
    let (zi, si) = (_mm256_set1_epi32(qi.zp), _mm256_set1_ps(qi.scale));
    let zero = _mm256_setzero_ps();
    let inv = 1.0 / qo.scale;
    // y clamped to one step beyond the output range first (NaN -> the lower bound, as the scalar
    // path's `f32::max` gives): the result is unchanged and `y·(1/s)` cannot overflow, so the
    // division is the epilogues' (Markstein's, correctly rounded).
    let (ylo, yhi) =
        (_mm256_set1_ps((lo - qo.zp - 1) as f32 * qo.scale), _mm256_set1_ps((hi - qo.zp + 1) as f32 * qo.scale));
    for (orow, xrow) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let mut j = 0;
        while j < c8 {
            let b = _mm_loadl_epi64(xrow.as_ptr().add(j) as *const _);
            let v = if qi.signed { _mm256_cvtepi8_epi32(b) } else { _mm256_cvtepu8_epi32(b) };
            let f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, zi)), si);
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(f, zero);
            let y = _mm256_blendv_ps(f, _mm256_mul_ps(f, _mm256_loadu_ps(slope.as_ptr().add(j))), neg);
            let y = _mm256_min_ps(_mm256_max_ps(y, ylo), yhi);
            let q8 = crate::int8::avx2::quantize8(y, qo.scale, inv, qo.zp, lo, hi);
            _mm_storel_epi64(orow.as_mut_ptr().add(j) as *mut _, q8);
            j += 8;
        }
        for j in c8..c {
            orow[j] = prelu_one(xrow[j], slope[j], qi, qo);
        }
    }
}

/// One byte table per channel of `[pixels][c]` bytes (`c = tables.len()`; NHWC, or `[n][c]`):
/// `out[p·c + ch] = tables[ch][x[p·c + ch]]` (a per-channel function between Q/DQ pairs, such as an
/// unfolded BatchNormalization, tabulated with [`crate::int8::ops::lut_table`]). One byte at a time
/// on every path: the 256-byte tables of a few dozen channels stay in L1.
pub fn lut_channels(isa: Isa, x: &[u8], tables: &[[u8; 256]], out: &mut [u8]) {
    trace::int8(isa);
    let c = tables.len();
    for (orow, xrow) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for ((o, &v), t) in orow.iter_mut().zip(xrow).zip(tables) {
            *o = t[v as usize];
        }
    }
}

/// Concatenation of quantized values: for each of `outer` blocks, each part's `inners[i]` bytes in
/// turn, copied where the part's parameters are the output's (`table` `None`), else looked up in
/// its requantization table (`lut_table(q_part, q_out, |v| v)`: `QuantizeLinear(DequantizeLinear)`).
/// Short rows (a few channels per pixel, as a segmentation network's side outputs) are looked up a
/// block of rows at a time into a buffer and then placed: one lookup call per row cost more than
/// the row (U²-Netp's six one-channel maps at 320x320: 17 ms).
pub fn concat(isa: Isa, parts: &[(&[u8], Option<&[u8; 256]>)], outer: usize, inners: &[usize], out: &mut [u8]) {
    trace::int8(isa);
    let total: usize = inners.iter().sum();
    let mut at = 0;
    for (&(x, table), &inner) in parts.iter().zip(inners) {
        match table {
            None => place_rows(x, inner, out, total, at, outer),
            Some(t) if inner >= LONG_ROW => lut_rows(isa, x, inner, t, out, total, at, outer),
            Some(t) => {
                let mut buf = [0u8; LUT_BLOCK];
                let per = LUT_BLOCK / inner;
                let mut o = 0;
                while o < outer {
                    let r = per.min(outer - o);
                    let block = &mut buf[..r * inner];
                    lut_any(isa, &x[o * inner..(o + r) * inner], t, block);
                    place_rows(block, inner, &mut out[o * total..], total, at, r);
                    o += r;
                }
            }
        }
        at += inner;
    }
}

/// Rows at least this long are looked up straight into place (one table set-up per row).
const LONG_ROW: usize = 512;
/// Bytes per block of short rows looked up at once.
const LUT_BLOCK: usize = 4096;

/// `rows` rows of `w` bytes of `x` (contiguous) into `out` at row stride `stride` from column `at`;
/// rows of 1-32 bytes in fixed-size moves (a `memcpy` call per row of a few bytes cost more).
fn place_rows(x: &[u8], w: usize, out: &mut [u8], stride: usize, at: usize, rows: usize) {
    fn fixed<const W: usize>(x: &[u8], out: &mut [u8], stride: usize, at: usize, rows: usize) {
        for (s, d) in x[..rows * W].chunks_exact(W).zip(out[at..].chunks_mut(stride)) {
            d[..W].copy_from_slice(s);
        }
    }
    if rows == 0 || w == 0 {
        return;
    }
    assert!(x.len() >= rows * w && out.len() >= (rows - 1) * stride + at + w);
    match w {
        1 => fixed::<1>(x, out, stride, at, rows),
        2 => fixed::<2>(x, out, stride, at, rows),
        3 => fixed::<3>(x, out, stride, at, rows),
        4 => fixed::<4>(x, out, stride, at, rows),
        8 => fixed::<8>(x, out, stride, at, rows),
        16 => fixed::<16>(x, out, stride, at, rows),
        32 => fixed::<32>(x, out, stride, at, rows),
        _ => {
            for (s, d) in x[..rows * w].chunks_exact(w).zip(out[at..].chunks_mut(stride)) {
                d[..w].copy_from_slice(s);
            }
        }
    }
}

/// Every byte of `x` through `table` into `out` on the path's widest lookup.
fn lut_any(isa: Isa, x: &[u8], table: &[u8; 256], out: &mut [u8]) {
    lut_rows(isa, x, x.len(), table, out, x.len(), 0, 1)
}

/// `rows` rows of `w` bytes of `x` (contiguous) through `table` into `out` at row stride `stride` from
/// column `at`.
#[allow(clippy::too_many_arguments)]
fn lut_rows(isa: Isa, x: &[u8], w: usize, table: &[u8; 256], out: &mut [u8], stride: usize, at: usize, rows: usize) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512Vnni | Isa::Amx) && vbmi() {
        // SAFETY: the CPU has AVX-512 F/BW/VBMI; every row lies within `x` and `out` (checked by the slicing below).
        unsafe {
            assert!(x.len() >= rows * w && (rows == 0 || out.len() >= (rows - 1) * stride + at + w));
            return lut_rows_vbmi(x, w, table, out, stride, at, rows);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::AvxVnni) {
        for r in 0..rows {
            // SAFETY: the 256-bit paths run only where the CPU has AVX2; the slices are of equal length.
            unsafe { lut_avx2(&x[r * w..(r + 1) * w], table, &mut out[r * stride + at..r * stride + at + w]) };
        }
        return;
    }
    let _ = isa;
    for r in 0..rows {
        lut_scalar(&x[r * w..(r + 1) * w], table, &mut out[r * stride + at..r * stride + at + w]);
    }
}

multiversion! {
    /// Resize of quantized NHWC images (`n` of `h`x`w`x`c` bytes to `oh`x`ow`x`c`), the arithmetic of
    /// `DequantizeLinear → Resize → QuantizeLinear` on the reference evaluator: dequantized values, the
    /// height first (when `rows` is given: `a + (b - a) · f`, or the nearest row), then the width, then
    /// quantized. Nearest on both axes with equal parameters is a byte copy.
    pub fn resize_nhwc(
        n: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        c: usize,
        rows: Option<&Taps>,
        cols: Option<&Taps>,
        qi: QParams,
        qo: QParams,
        x: &[u8],
        out: &mut [u8],
    ) {
        let ((h, w), (oh, ow)) = (hw, ohw);
        let near = |t: Option<&Taps>| t.is_none_or(|t| t.nearest);
        let row_of = |j: usize| rows.map_or((j, j, 0.0, true), |t| (t.taps[j].0, t.taps[j].1, t.taps[j].2, t.nearest));
        let col_of = |q: usize| cols.map_or((q, q, 0.0, true), |t| (t.taps[q].0, t.taps[q].1, t.taps[q].2, t.nearest));
        if near(rows) && near(cols) && qi == qo {
            for b in 0..n {
                let (xi, oi) = (&x[b * h * w * c..(b + 1) * h * w * c], &mut out[b * oh * ow * c..(b + 1) * oh * ow * c]);
                for j in 0..oh {
                    let src = &xi[row_of(j).0 * w * c..(row_of(j).0 + 1) * w * c];
                    for q in 0..ow {
                        let s = col_of(q).0 * c;
                        oi[(j * ow + q) * c..(j * ow + q + 1) * c].copy_from_slice(&src[s..s + c]);
                    }
                }
            }
            return;
        }
        let mut mid = vec![0f32; w * c];
        for b in 0..n {
            let (xi, oi) = (&x[b * h * w * c..(b + 1) * h * w * c], &mut out[b * oh * ow * c..(b + 1) * oh * ow * c]);
            for j in 0..oh {
                let (i0, i1, f, nearest) = row_of(j);
                let (r0, r1) = (&xi[i0 * w * c..(i0 + 1) * w * c], &xi[i1 * w * c..(i1 + 1) * w * c]);
                if nearest {
                    for (m, &a) in mid.iter_mut().zip(r0) {
                        *m = qi.dequant(a);
                    }
                } else {
                    for ((m, &a), &bb) in mid.iter_mut().zip(r0).zip(r1) {
                        let (a, bb) = (qi.dequant(a), qi.dequant(bb));
                        *m = a + (bb - a) * f;
                    }
                }
                let orow = &mut oi[j * ow * c..(j + 1) * ow * c];
                for q in 0..ow {
                    let (j0, j1, g, nearest) = col_of(q);
                    let o = &mut orow[q * c..(q + 1) * c];
                    let m0 = &mid[j0 * c..(j0 + 1) * c];
                    if nearest {
                        for (d, &a) in o.iter_mut().zip(m0) {
                            *d = qo.quant(a);
                        }
                    } else {
                        let m1 = &mid[j1 * c..(j1 + 1) * c];
                        for ((d, &a), &bb) in o.iter_mut().zip(m0).zip(m1) {
                            *d = qo.quant(a + (bb - a) * g);
                        }
                    }
                }
            }
        }
    }
}
