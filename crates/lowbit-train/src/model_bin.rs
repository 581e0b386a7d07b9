//! [`Model`]'s binary convolutions as trained: the sign of the input and the binarized weights (a
//! child module of `model`).

use burn::tensor::Tensor;

use super::{Binary, Model};
use crate::fq;

impl Model {
    pub(super) fn binarize<const D: usize>(&self, x: Tensor<D>, b: Binary) -> Tensor<D> {
        use crate::unary::{unary, Unary};
        let composed = crate::conv::burn_ops("sign");
        match (b.ede, composed) {
            (true, true) => fq::ede(x, fq::ede_t(self.progress)),
            (false, true) => fq::sign_ste(x),
            (true, false) => unary(x, Unary::SignEde { t: fq::ede_t(self.progress) }),
            (false, false) => unary(x, Unary::SignSte),
        }
    }

    /// A binary convolution's weights as trained: `±scale` per filter. `mask` (a width search's
    /// input-channel mask, [`crate::dms`]) weights each input channel in the filter statistics
    /// (Libra-PB's mean and deviation, the scale) and scales its binarized weights, so a 0/1 mask
    /// gives exactly the narrower convolution.
    pub(super) fn binary_weight(&self, i: usize, b: Binary, mask: Option<Tensor<1>>) -> Tensor<4> {
        let p = &self.params[i];
        let s = [p.shape[0], p.shape[1], p.shape[2], p.shape[3]];
        let (o, k) = (s[0], s[1] * s[2] * s[3]);
        let w: Tensor<2> = p.t.clone().reshape([o, k]);
        // Per-element weights of the statistics: the channel mask repeated over the kernel taps.
        let m: Option<Tensor<2>> = mask.map(|m| {
            let taps = s[2] * s[3];
            m.reshape([s[1], 1]).expand([s[1], taps]).reshape([1, k])
        });
        let mean = |t: Tensor<2>| -> Tensor<2> {
            match &m {
                Some(m) => {
                    let md = m.clone().detach();
                    (t * md.clone()).sum_dim(1) / md.sum_dim(1)
                }
                None => t.mean_dim(1),
            }
        };
        let q = if b.libra {
            let c = w.clone() - mean(w.clone());
            let std = mean(c.clone().square()).add_scalar(1e-12).sqrt();
            let bw = c / std;
            // 2^round(log2(mean |bw|)), no gradient.
            let ln2 = std::f32::consts::LN_2;
            let sw = mean(bw.clone().abs()).log().div_scalar(ln2).round().mul_scalar(ln2).exp().detach();
            self.binarize(bw, b) * sw
        } else {
            let a = mean(w.clone().abs()).detach();
            self.binarize(w, b) * a
        };
        let q = match m {
            Some(m) => q * m,
            None => q,
        };
        q.reshape(s)
    }
}
