//! ReLU as a backend extension that runs on the rayon pool. burn-flex's `relu` and its backward
//! are single-threaded element-wise kernels; with two threads they ran serially on the calling
//! thread while the pool idled (about 6% of a training step's samples on fmnist-resnet).

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{Tensor, TensorData};
use burn_flex::FlexTensor;

use crate::conv::f32_data;

/// Elements per parallel chunk (64 KB).
const CHUNK: usize = 1 << 14;

#[backend_extension(Flex, Autodiff)]
pub trait LbRelu: Backend {
    /// `max(x, 0)`; the gradient passes where the output is positive.
    fn lb_relu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `max(x, 0)` on the rayon pool (burn's own `relu` with `LOWBIT_BURN_OPS=relu`).
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if crate::conv::burn_ops("relu") {
        return burn::tensor::activation::relu(x);
    }
    Tensor::<D>::from_dispatch(<Dispatch as LbRelu>::lb_relu(x.into_dispatch()))
}

fn forward(x: &FlexTensor) -> FlexTensor {
    let x = f32_data(x, "input");
    let xs: &[f32] = x.storage();
    let y = crate::par_build(xs.len(), CHUNK, |i, yc| {
        yc.iter_mut().zip(&xs[i * CHUNK..]).for_each(|(y, &v)| *y = v.max(0.0));
    });
    FlexTensor::from_data(TensorData::new(y, x.layout().shape().to_vec()))
}

/// `dx = dy` where `y > 0`, else 0.
fn backward(y: &FlexTensor, dy: &FlexTensor) -> FlexTensor {
    let (y, dy) = (f32_data(y, "output"), f32_data(dy, "output gradient"));
    let (ys, dys): (&[f32], &[f32]) = (y.storage(), dy.storage());
    assert_eq!(ys.len(), dys.len(), "relu: output and its gradient differ in size");
    let dx = crate::par_build(ys.len(), CHUNK, |i, dc| {
        let off = i * CHUNK;
        for ((d, &v), &g) in dc.iter_mut().zip(&ys[off..]).zip(&dys[off..]) {
            *d = if v > 0.0 { g } else { 0.0 };
        }
    });
    FlexTensor::from_data(TensorData::new(dx, y.layout().shape().to_vec()))
}

impl LbRelu for Flex {
    fn lb_relu(x: FlexTensor) -> FlexTensor {
        forward(&x)
    }
}

#[derive(Debug)]
struct ReluBackward;

impl Backward<Flex, 1> for ReluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, backward(&ops.state, &dy));
        }
    }
}

impl<C: CheckpointStrategy> LbRelu for Autodiff<Flex, C> {
    fn lb_relu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match ReluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = forward(x.primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Output and gradient against burn's relu, on a tensor larger than one chunk with a ragged
    /// last chunk, zeros included (where the two gradient conventions could differ).
    #[test]
    fn matches_burn_relu() {
        let dev = Device::flex().autodiff();
        let mut rng = crate::Rng::new(5);
        let n = 7 * (CHUNK / 3 + 11);
        let xs: Vec<f32> = (0..n).map(|i| if i % 13 == 0 { 0.0 } else { rng.normal() }).collect();
        let run = |ours: bool| {
            let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [n / 7, 7]), &dev).require_grad();
            let y = if ours { relu(x.clone()) } else { burn::tensor::activation::relu(x.clone()) };
            let m = Tensor::<2>::from_data(
                TensorData::new((0..n).map(|i| (i % 5) as f32 - 2.0).collect::<Vec<_>>(), [n / 7, 7]),
                &dev,
            );
            let grads = (y.clone() * m).sum().backward();
            let dx = x.grad(&grads).unwrap().to_data().try_to_vec::<f32>().unwrap();
            (y.detach().to_data().try_to_vec::<f32>().unwrap(), dx)
        };
        assert_eq!(run(true), run(false));
    }
}
