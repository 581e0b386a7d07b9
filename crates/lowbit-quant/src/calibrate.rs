//! Calibration: run the float model over calibration images and feed every float activation to
//! an [`Observer`]. Two passes (range, then histogram) keep memory bounded by the number of
//! tensors, not the number of images.

use std::collections::HashMap;

use lowbit_core::{Graph, Result, Tensor};
use lowbit_runtime::{Plan, PlanOptions};

use crate::observer::Observer;

/// Observers of every float value of the canonical graph, keyed by value name.
pub type Stats = HashMap<String, Observer>;

/// Runs `graph` (canonical, see `lowbit_runtime::canonicalize_free`; one image input of shape `image_shape`) over `n`
/// images in `data` and returns
/// the statistics of every float value. `hist` adds the second (histogram) pass. `progress` gets
/// (images done, total images across passes).
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    graph: &Graph,
    image_shape: &[usize],
    data: &[f32],
    n: usize,
    batch: usize,
    threads: usize,
    hist: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Stats> {
    let per: usize = image_shape.iter().product();
    let batch = batch.max(1);
    let mut plans: HashMap<usize, Plan> = HashMap::new();
    let mut stats: Stats = HashMap::new();
    let passes = if hist { 2 } else { 1 };
    for pass in 0..passes {
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            if !plans.contains_key(&len) {
                let mut s = vec![len];
                s.extend_from_slice(image_shape);
                // The graph as given (canonical already): re-optimizing would fuse activations that
                // `split_activations` took out back into their convolutions and hide the pre-activation.
                let opts = PlanOptions { threads, optimize: false, ..Default::default() };
                plans.insert(len, Plan::compile(graph, &[s], &opts)?);
            }
            let plan = plans.get_mut(&len).unwrap();
            let mut s = vec![len];
            s.extend_from_slice(image_shape);
            let x = Tensor::f32(s, data[start * per..(start + len) * per].to_vec());
            let st = &mut stats;
            let mut f = |name: &str, shape: &[usize], v: &[f32]| {
                let o = st.entry(name.to_string()).or_default();
                if pass == 0 {
                    o.observe_range(v);
                    o.observe_channels(shape, v);
                } else {
                    o.observe_hist(v)
                }
            };
            plan.run_observed(&[x], Some(&mut f))?;
            start += len;
            progress(pass * n + start, passes * n);
        }
    }
    Ok(stats)
}
