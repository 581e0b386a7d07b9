//! Data movement and per-channel steps on quantized NHWC bytes for detection and segmentation networks: Concat
//! (copying, or requantizing through a table), Resize (nearest and linear, in the reference's f32 order) and PRelu.
//! Each follows the arithmetic of its QDQ pattern (DequantizeLinear → op → QuantizeLinear) exactly.

#[cfg(target_arch = "x86_64")]
use crate::int8::ops::{lut_rows_vbmi, vbmi};
use crate::int8::ops::{lut_scalar, QParams};
use crate::isa::{trace, Isa};
use crate::resample::Taps;

multiversion! {
    /// PRelu on quantized values with one slope per channel of `[pixels][c]` bytes (NHWC, or `[n][c]`):
    /// `qo(prelu(qi(x), slope[c]))`, the f32 arithmetic of `DequantizeLinear → PRelu → QuantizeLinear`.
    pub fn prelu_channels(x: &[u8], c: usize, slope: &[f32], qi: QParams, qo: QParams, out: &mut [u8]) {
        for (orow, xrow) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            for ((o, &v), &a) in orow.iter_mut().zip(xrow).zip(slope) {
                let f = qi.dequant(v);
                *o = qo.quant(if f >= 0.0 { f } else { f * a });
            }
        }
    }
}

/// Concatenation of quantized values: for each of `outer` blocks, each part's `inners[i]` bytes in
/// turn, copied where the part's parameters are the output's (`table` `None`), else looked up in
/// its requantization table (`lut_table(q_part, q_out, |v| v)`: `QuantizeLinear(DequantizeLinear)`).
pub fn concat(isa: Isa, parts: &[(&[u8], Option<&[u8; 256]>)], outer: usize, inners: &[usize], out: &mut [u8]) {
    trace::int8(isa);
    let total: usize = inners.iter().sum();
    let mut at = 0;
    for (&(x, table), &inner) in parts.iter().zip(inners) {
        match table {
            None => {
                for o in 0..outer {
                    out[o * total + at..o * total + at + inner].copy_from_slice(&x[o * inner..(o + 1) * inner]);
                }
            }
            Some(t) => lut_rows(isa, x, inner, t, out, total, at, outer),
        }
        at += inner;
    }
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
