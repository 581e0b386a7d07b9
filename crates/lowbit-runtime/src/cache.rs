//! Plans of one graph compiled on demand, one per set of input shapes met ([`PlanCache`]): one
//! process runs a detector or segmentation network at the size of each image.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lowbit_core::{Graph, Result};

use crate::plan::{Plan, PlanOptions};

/// A graph with symbolic (or overridable) input dimensions and the plans compiled for it so far.
pub struct PlanCache {
    graph: Graph,
    opts: PlanOptions,
    plans: Mutex<HashMap<Vec<Vec<usize>>, Arc<Plan>>>,
}

impl PlanCache {
    pub fn new(graph: Graph, opts: PlanOptions) -> PlanCache {
        PlanCache { graph, opts, plans: Mutex::new(HashMap::new()) }
    }

    /// The plan for these input shapes, compiled the first time they are met; `true` when it was
    /// compiled by this call.
    pub fn plan(&self, shapes: &[Vec<usize>]) -> Result<(Arc<Plan>, bool)> {
        if let Some(p) = self.plans.lock().unwrap().get(shapes) {
            return Ok((p.clone(), false));
        }
        // Compiled outside the lock: another caller may compile the same shapes meanwhile, and the
        // first one stored wins (the plans are equal).
        let p = Arc::new(Plan::compile(&self.graph, shapes, &self.opts)?);
        let mut m = self.plans.lock().unwrap();
        let e = m.entry(shapes.to_vec()).or_insert(p);
        Ok((e.clone(), true))
    }

    /// Plans compiled so far.
    pub fn len(&self) -> usize {
        self.plans.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
