//! Where a plan's values live: one buffer per computed value (aliases such as Reshape share their
//! input's), each buffer's lifetime in steps, and their places in one arena ([`crate::memory`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lowbit_core::{DType, Error, Graph, Node, Op, Result, ValueInfo};

use crate::memory::{self, Interval};
use crate::specialize::Specialized;
use crate::step::Operand;

/// The types of a specialized graph's values and which are stored as integers in lowbit's layout.
pub(crate) struct Values<'a> {
    pub spec: &'a Specialized,
    pub int_vals: &'a HashSet<String>,
}

impl Values<'_> {
    pub fn ty(&self, name: &str) -> Result<(DType, Vec<usize>)> {
        self.spec.types.get(name).cloned().ok_or_else(|| Error::value(name, "no inferred type"))
    }

    /// A 4-D integer value: stored NHWC (the integer kernels' layout).
    pub fn nhwc(&self, v: &str) -> bool {
        self.int_vals.contains(v) && self.spec.types.get(v).is_some_and(|t| t.1.len() == 4)
    }

    fn spatial(&self, v: &str) -> usize {
        self.spec.types.get(v).map(|t| t.1.iter().skip(2).product::<usize>()).unwrap_or(1)
    }

    /// Does `n` only rename its input (no step, same bytes)?
    pub fn is_alias(&self, n: &Node) -> bool {
        let g = &self.spec.graph;
        let reshape =
            matches!(n.op, Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. });
        (reshape || matches!(n.op, Op::Identity))
            && !g.initializers.contains_key(&n.inputs[0])
            // NHWC bytes are not the NCHW order a reshape assumes (unless the plane is 1x1).
            && !(reshape && self.nhwc(&n.inputs[0]) && self.spatial(&n.inputs[0]) > 1)
    }
}

/// Every value's byte offset in the arena.
pub(crate) struct Layout {
    buf_of: HashMap<String, usize>,
    offsets: Vec<usize>,
    pub arena_bytes: usize,
}

impl Layout {
    /// Buffers for the runtime inputs and every output of the nodes in `items` (in step order),
    /// live from the step that writes them to the last that reads them (graph outputs to the end),
    /// placed by [`memory::plan`].
    pub fn plan(v: &Values, inputs: &[ValueInfo], items: &[Node]) -> Result<Layout> {
        let g: &Graph = &v.spec.graph;
        let mut buf_of: HashMap<String, usize> = HashMap::new();
        let mut bufs: Vec<Interval> = vec![];
        let new_buf = |bufs: &mut Vec<Interval>, dt: DType, shape: &[usize], at: usize| {
            let bytes = shape.iter().try_fold(dt.size(), |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
            bufs.push(Interval { bytes: bytes.max(1), first: at, last: at });
            bufs.len() - 1
        };
        for i in inputs {
            let (dt, sh) = v.ty(&i.name)?;
            let b = new_buf(&mut bufs, dt, &sh, 0);
            buf_of.insert(i.name.clone(), b);
        }
        // Step index of each node (aliases share the index of the next real step).
        let mut step_no = 0usize;
        for n in items {
            let at = step_no + 1;
            if v.is_alias(n) {
                let root =
                    *buf_of.get(&n.inputs[0]).ok_or_else(|| Error::node(&n.name, "alias of an unknown buffer"))?;
                buf_of.insert(n.outputs[0].clone(), root);
            } else {
                step_no += 1;
                for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                    let (dt, sh) = v.ty(o)?;
                    let b = new_buf(&mut bufs, dt, &sh, step_no);
                    buf_of.insert(o.clone(), b);
                }
            }
            for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
                if let Some(&b) = buf_of.get(inp) {
                    bufs[b].last = bufs[b].last.max(at);
                }
            }
        }
        // A convolution whose output feeds the next step may be fused with it into one step that
        // reads the convolution's input while it writes the next output ([`crate::blocks`]): an
        // integer convolution and the grouped (depthwise) one after it, a float convolution and
        // its QuantizeLinear. Keep that input live one step longer so the two never share bytes.
        let steps: Vec<&Node> = items.iter().filter(|n| !v.is_alias(n)).collect();
        for (k, pair) in steps.windows(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            let int_out = a.outputs.first().is_some_and(|o| v.int_vals.contains(o));
            let next_reads = match &b.op {
                Op::Conv(at) => int_out && at.group > 1,
                Op::QuantizeLinear { .. } => !int_out,
                _ => false,
            } && b.inputs.first() == a.outputs.first();
            if matches!(a.op, Op::Conv(_)) && next_reads {
                if let Some(&buf) = a.inputs.first().and_then(|x| buf_of.get(x)) {
                    // Steps are numbered from 1; `b` is step k + 2.
                    bufs[buf].last = bufs[buf].last.max(k + 2);
                }
            }
        }
        let end = step_no + 1;
        for o in &g.outputs {
            if let Some(&b) = buf_of.get(&o.name) {
                bufs[b].last = end;
            }
        }
        // Checked against the memory limit before the arena is allocated (shape inference has
        // already checked every single value).
        let (offsets, arena_bytes) = memory::plan(&bufs);
        lowbit_core::limits::check_memory("the plan's activation arena", arena_bytes)?;
        Ok(Layout { buf_of, offsets, arena_bytes })
    }

    /// Byte offset of a value's buffer.
    pub fn offset(&self, name: &str) -> Result<usize> {
        self.buf_of.get(name).map(|&b| self.offsets[b]).ok_or_else(|| Error::value(name, "no buffer"))
    }

    /// How a step reads or writes value `name`: a constant, or its buffer.
    pub fn operand(&self, v: &Values, name: &str) -> Result<Operand> {
        if let Some(t) = v.spec.graph.initializers.get(name) {
            return Ok(Operand::Const(Arc::new(t.clone())));
        }
        let off = self.offset(name)?;
        let (dtype, shape) = v.ty(name)?;
        Ok(Operand::Buf { off, dtype, shape, nhwc: v.nhwc(name) })
    }
}
