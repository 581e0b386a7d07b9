//! Plans of one graph compiled on demand, one per set of input shapes met ([`PlanCache`]): one
//! process runs a detector or segmentation network at the size of each image.

use std::sync::{Arc, Mutex};

use lowbit_core::{Graph, Result};

use crate::plan::{Plan, PlanOptions};

/// A graph with symbolic (or overridable) input dimensions and the plans compiled for it, the most
/// recently used kept: each plan holds its activation arena and its own worker threads, so a folder
/// of photos of many sizes must not keep one per size.
pub struct PlanCache {
    graph: Graph,
    opts: PlanOptions,
    cap: usize,
    /// Least recently used first.
    plans: Mutex<Vec<(Vec<Vec<usize>>, Arc<Plan>)>>,
    compiled: Mutex<usize>,
}

impl PlanCache {
    /// Keeps at most `cap` plans (at least one).
    pub fn new(graph: Graph, opts: PlanOptions, cap: usize) -> PlanCache {
        PlanCache { graph, opts, cap: cap.max(1), plans: Mutex::new(vec![]), compiled: Mutex::new(0) }
    }

    /// The plan for these input shapes, compiled when they are not among the plans kept; `true` when
    /// it was compiled by this call.
    pub fn plan(&self, shapes: &[Vec<usize>]) -> Result<(Arc<Plan>, bool)> {
        {
            let mut m = self.plans.lock().unwrap();
            if let Some(i) = m.iter().position(|(k, _)| k.as_slice() == shapes) {
                let e = m.remove(i);
                let p = e.1.clone();
                m.push(e);
                return Ok((p, false));
            }
        }
        // Compiled outside the lock: another caller may compile the same shapes meanwhile (the plans
        // are equal; both are used, the later one is kept).
        let p = Arc::new(Plan::compile(&self.graph, shapes, &self.opts)?);
        *self.compiled.lock().unwrap() += 1;
        let mut m = self.plans.lock().unwrap();
        m.retain(|(k, _)| k.as_slice() != shapes);
        m.push((shapes.to_vec(), p.clone()));
        if m.len() > self.cap {
            m.remove(0);
        }
        Ok((p, true))
    }

    /// Plans compiled so far (including those dropped since).
    pub fn compiled(&self) -> usize {
        *self.compiled.lock().unwrap()
    }

    /// Plans kept now.
    pub fn len(&self) -> usize {
        self.plans.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_core::{Dim, Node, Op, ValueInfo};

    /// Shapes met again reuse their plan, the least recently used plan goes past the cap, and each
    /// plan computes its own shape.
    #[test]
    fn plans_per_shape_with_the_least_recently_used_dropped() {
        let vi = |n: &str| ValueInfo {
            name: n.into(),
            dtype: lowbit_core::DType::F32,
            shape: Some(vec![Dim::Sym("N".into()), Dim::Fixed(1), Dim::Sym("H".into()), Dim::Sym("W".into())]),
        };
        let mut g = Graph::default();
        g.inputs = vec![vi("x")];
        g.outputs = vec![vi("y")];
        g.nodes = vec![Node { name: "r".into(), op: Op::Relu, inputs: vec!["x".into()], outputs: vec!["y".into()] }];
        let c = PlanCache::new(g, PlanOptions::default(), 2);
        let s = |h: usize, w: usize| vec![vec![1, 1, h, w]];
        assert!(c.plan(&s(4, 5)).unwrap().1);
        assert!(c.plan(&s(6, 7)).unwrap().1);
        assert!(!c.plan(&s(4, 5)).unwrap().1, "met again: reused");
        assert!(c.plan(&s(8, 9)).unwrap().1);
        assert_eq!((c.len(), c.compiled()), (2, 3));
        // 6x7 was the least recently used: dropped, compiled again; 4x5 kept.
        assert!(c.plan(&s(6, 7)).unwrap().1);
        assert!(!c.plan(&s(8, 9)).unwrap().1);
        let (p, _) = c.plan(&s(2, 3)).unwrap();
        let x = lowbit_core::Tensor::f32(vec![1, 1, 2, 3], vec![-1.0, 2.0, -3.0, 4.0, -5.0, 6.0]);
        let y = p.run(&[x]).unwrap().remove(0);
        assert_eq!((y.shape.clone(), y.to_f32_vec()), (vec![1, 1, 2, 3], vec![0.0, 2.0, 0.0, 4.0, 0.0, 6.0]));
    }
}
