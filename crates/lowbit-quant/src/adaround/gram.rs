//! Second-order statistics of a layer's inputs for [`super::learn`]: the Gram matrices of the
//! quantized model's input patches with themselves and with the float model's, and their means.

/// How a layer turns its input tensor into rows of `k` values (one row per output element of a
/// channel group).
#[derive(Clone, Debug)]
pub enum Rows {
    /// A 2-D convolution over an (N, C, H, W) input.
    Conv {
        groups: usize,
        cin_g: usize,
        kernel: [usize; 2],
        strides: [usize; 2],
        /// Top, left padding.
        pads: [usize; 2],
        dilations: [usize; 2],
        out_hw: [usize; 2],
    },
    /// A matrix product over the last axis (Gemm, MatMul): every other axis is a row.
    Dense { k: usize },
}

impl Rows {
    pub fn groups(&self) -> usize {
        match self {
            Rows::Conv { groups, .. } => *groups,
            Rows::Dense { .. } => 1,
        }
    }
    pub fn k(&self) -> usize {
        match self {
            Rows::Conv { cin_g, kernel, .. } => cin_g * kernel[0] * kernel[1],
            Rows::Dense { k } => *k,
        }
    }
    /// Rows an input of `shape` gives (per group).
    pub fn count(&self, shape: &[usize]) -> usize {
        match self {
            Rows::Conv { out_hw, .. } => shape.first().copied().unwrap_or(1) * out_hw[0] * out_hw[1],
            Rows::Dense { k } => shape.iter().product::<usize>() / (*k).max(1),
        }
    }

    /// Writes the patches of rows `picks` (indices below [`Rows::count`]) of group `g` of the
    /// input `x` (of `shape`) into `out` (`picks.len() × k`).
    pub fn gather(&self, x: &[f32], shape: &[usize], g: usize, picks: &[usize], out: &mut [f32]) {
        let k = self.k();
        match self {
            Rows::Conv { cin_g, kernel, strides, pads, dilations, out_hw, .. } => {
                let (c, h, w) = (shape[1], shape[2], shape[3]);
                let per_img = out_hw[0] * out_hw[1];
                for (r, &p) in picks.iter().enumerate() {
                    let (img, pos) = (p / per_img, p % per_img);
                    let (oy, ox) = (pos / out_hw[1], pos % out_hw[1]);
                    let row = &mut out[r * k..(r + 1) * k];
                    let mut j = 0;
                    for ci in 0..*cin_g {
                        let plane = &x[(img * c + g * cin_g + ci) * h * w..][..h * w];
                        for ky in 0..kernel[0] {
                            let iy = (oy * strides[0] + ky * dilations[0]) as isize - pads[0] as isize;
                            for kx in 0..kernel[1] {
                                let ix = (ox * strides[1] + kx * dilations[1]) as isize - pads[1] as isize;
                                row[j] = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    plane[iy as usize * w + ix as usize]
                                } else {
                                    0.0
                                };
                                j += 1;
                            }
                        }
                    }
                }
            }
            Rows::Dense { .. } => {
                for (r, &p) in picks.iter().enumerate() {
                    out[r * k..(r + 1) * k].copy_from_slice(&x[p * k..(p + 1) * k]);
                }
            }
        }
    }
}

/// Accumulated statistics of one layer, per group: `qq`, `qf`, `ff` (`k × k` each, sums of outer
/// products), the sums of the patches (`k`), and the number of rows.
pub struct Grams {
    pub k: usize,
    pub groups: usize,
    pub qq: Vec<f32>,
    pub qf: Vec<f32>,
    pub ff: Vec<f32>,
    pub sum_q: Vec<f64>,
    pub sum_f: Vec<f64>,
    pub rows: usize,
}

/// `dst (k×k) += aᵀ b` for `a`, `b` of `rows × k`.
fn add_at_b(a: &[f32], b: &[f32], k: usize, dst: &mut [f32]) {
    let rows = a.len() / k.max(1);
    if k <= 16 {
        for r in 0..rows {
            let (ar, br) = (&a[r * k..(r + 1) * k], &b[r * k..(r + 1) * k]);
            for (i, &av) in ar.iter().enumerate() {
                for (d, &bv) in dst[i * k..(i + 1) * k].iter_mut().zip(br) {
                    *d += av * bv;
                }
            }
        }
        return;
    }
    // aᵀ is k × rows: row stride 1, column stride k.
    gemm(k, k, rows, dst, a, 1, k, b, true, 1);
}

/// `dst (m × n, row-major) (+)= lhs · rhs` on lowbit's f32 GEMM, `lhs` (m × kk) given by its row
/// and column strides, `rhs` (kk × n) row-major; the slices are checked to cover the shapes.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    m: usize,
    n: usize,
    kk: usize,
    dst: &mut [f32],
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 || kk == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(dst.len() >= m * n && rhs.len() >= kk * n && lhs.len() > (m - 1) * lhs_rs + (kk - 1) * lhs_cs);
    let isa = lowbit_kernels::isa::Paths::selected_or_scalar().f32;
    // SAFETY: the slices cover the strided shapes (checked above).
    unsafe {
        lowbit_kernels::fp32::gemm::sgemm(
            isa,
            m,
            n,
            kk,
            dst.as_mut_ptr(),
            n as isize,
            lhs.as_ptr(),
            lhs_rs as isize,
            lhs_cs as isize,
            rhs.as_ptr(),
            n as isize,
            1,
            accumulate,
            threads,
        )
    }
}

impl Grams {
    pub fn new(k: usize, groups: usize) -> Grams {
        Grams {
            k,
            groups,
            qq: vec![0.0; groups * k * k],
            qf: vec![0.0; groups * k * k],
            ff: vec![0.0; groups * k * k],
            sum_q: vec![0.0; groups * k],
            sum_f: vec![0.0; groups * k],
            rows: 0,
        }
    }

    /// Adds the rows `picks` of the quantized input `xq` and the float input `xf` (same shape).
    pub fn add(&mut self, rows: &Rows, xq: &[f32], xf: &[f32], shape: &[usize], picks: &[usize]) {
        let k = self.k;
        let (mut aq, mut af) = (vec![0f32; picks.len() * k], vec![0f32; picks.len() * k]);
        for g in 0..self.groups {
            rows.gather(xq, shape, g, picks, &mut aq);
            rows.gather(xf, shape, g, picks, &mut af);
            let kk = g * k * k..(g + 1) * k * k;
            add_at_b(&aq, &aq, k, &mut self.qq[kk.clone()]);
            add_at_b(&aq, &af, k, &mut self.qf[kk.clone()]);
            add_at_b(&af, &af, k, &mut self.ff[kk]);
            for r in 0..picks.len() {
                for j in 0..k {
                    self.sum_q[g * k + j] += aq[r * k + j] as f64;
                    self.sum_f[g * k + j] += af[r * k + j] as f64;
                }
            }
        }
        self.rows += picks.len();
    }

    /// Group `g`'s centered statistics divided by the row count: (`G_qq`, `G_qf`, `G_ff`, mean of
    /// `x_q`, mean of `x_f`). With `damp > 0`, `damp` times the mean diagonal of `G_qq` is added to
    /// the diagonals of `G_qq` and `G_qf` (a pull towards the float weights where the rows do not
    /// determine the error, as for a classifier fed fewer images than it has inputs).
    #[allow(clippy::type_complexity)]
    pub fn centered(&self, g: usize, damp: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f64>, Vec<f64>) {
        let k = self.k;
        let m = self.rows.max(1) as f64;
        let mq: Vec<f64> = self.sum_q[g * k..(g + 1) * k].iter().map(|v| v / m).collect();
        let mf: Vec<f64> = self.sum_f[g * k..(g + 1) * k].iter().map(|v| v / m).collect();
        let c = |src: &[f32], a: &[f64], b: &[f64]| -> Vec<f32> {
            (0..k * k).map(|ij| (src[g * k * k + ij] as f64 / m - a[ij / k] * b[ij % k]) as f32).collect()
        };
        let (mut qq, mut qf, ff) = (c(&self.qq, &mq, &mq), c(&self.qf, &mq, &mf), c(&self.ff, &mf, &mf));
        if damp > 0.0 {
            let d = damp * (0..k).map(|i| qq[i * k + i]).sum::<f32>() / k.max(1) as f32;
            for i in 0..k {
                qq[i * k + i] += d;
                qf[i * k + i] += d;
            }
        }
        (qq, qf, ff, mq, mf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A convolution computed through gathered rows equals the direct sum (padding, stride,
    /// dilation, groups).
    #[test]
    fn gathered_rows_are_the_convolution() {
        let (n, c, h, w) = (2usize, 4usize, 7usize, 6usize);
        let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let rows = Rows::Conv {
            groups: 2,
            cin_g: 2,
            kernel: [3, 2],
            strides: [2, 1],
            pads: [1, 0],
            dilations: [1, 2],
            out_hw: [(h + 2 - 3) / 2 + 1, w - 2 - 1 + 1],
        };
        let k = rows.k();
        let wt: Vec<f32> = (0..k).map(|i| i as f32 * 0.1 - 0.5).collect();
        let total = rows.count(&[n, c, h, w]);
        let picks: Vec<usize> = (0..total).collect();
        let mut a = vec![0f32; total * k];
        let Rows::Conv { out_hw, .. } = rows.clone() else { unreachable!() };
        for g in 0..2 {
            rows.gather(&x, &[n, c, h, w], g, &picks, &mut a);
            for (p, row) in a.chunks(k).enumerate() {
                let got: f32 = row.iter().zip(&wt).map(|(a, b)| a * b).sum();
                let (img, oy, ox) = (p / (out_hw[0] * out_hw[1]), p / out_hw[1] % out_hw[0], p % out_hw[1]);
                let mut want = 0f32;
                for ci in 0..2 {
                    for ky in 0..3 {
                        for kx in 0..2 {
                            let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox + kx * 2) as isize);
                            if iy >= 0 && (iy as usize) < h && (ix as usize) < w {
                                want += wt[(ci * 3 + ky) * 2 + kx]
                                    * x[((img * c + g * 2 + ci) * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                }
                assert!((got - want).abs() < 1e-4, "group {g} row {p}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn grams_match_direct_sums() {
        for k in [3usize, 20] {
            let rows = Rows::Dense { k };
            let xq: Vec<f32> = (0..5 * k).map(|i| (i % 7) as f32 - 3.0).collect();
            let xf: Vec<f32> = (0..5 * k).map(|i| (i % 5) as f32 * 0.5).collect();
            let mut g = Grams::new(k, 1);
            g.add(&rows, &xq, &xf, &[5, k], &[0, 1, 2, 3, 4]);
            g.add(&rows, &xq, &xf, &[5, k], &[4]);
            let idx = [0usize, 1, 2, 3, 4, 4];
            for i in 0..k {
                for j in 0..k {
                    let qf: f32 = idx.iter().map(|&r| xq[r * k + i] * xf[r * k + j]).sum();
                    assert!((g.qf[i * k + j] - qf).abs() < 1e-3);
                }
            }
            let (qq, _, _, mq, _) = g.centered(0, 0.0);
            let mean0 = idx.iter().map(|&r| xq[r * k] as f64).sum::<f64>() / 6.0;
            assert!((mq[0] - mean0).abs() < 1e-9);
            let var0 = idx.iter().map(|&r| (xq[r * k] as f64 - mean0).powi(2)).sum::<f64>() / 6.0;
            assert!((qq[0] as f64 - var0).abs() < 1e-4);
        }
    }
}
