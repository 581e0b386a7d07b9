use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{DType, Error, Op, Result, Tensor};

/// A dimension of a declared input/output shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// Named or unknown (batch) dimension.
    Sym(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub dtype: DType,
    /// `None` when the file declares no shape.
    pub shape: Option<Vec<Dim>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    /// Value names; an empty string marks an absent optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

impl Node {
    /// Name of input `i` if present and non-empty.
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs.get(i).map(|s| s.as_str()).filter(|s| !s.is_empty())
    }
}

/// A model: nodes in topological order, constant initializers, declared inputs and outputs.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub initializers: BTreeMap<String, Tensor>,
    pub nodes: Vec<Node>,
    /// Default-domain opset the model was read with.
    pub opset: i64,
    /// Free-form key/value metadata carried to and from ONNX `metadata_props`.
    pub metadata: Vec<(String, String)>,
}

impl Graph {
    /// For each value, the indices of the nodes that read it.
    pub fn consumers(&self) -> HashMap<String, Vec<usize>> {
        let mut m: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
                let e = m.entry(inp.clone()).or_default();
                if e.last() != Some(&i) {
                    e.push(i);
                }
            }
        }
        m
    }

    /// For each value, the index of the node that writes it.
    pub fn producers(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                if !o.is_empty() {
                    m.insert(o.clone(), i);
                }
            }
        }
        m
    }

    pub fn is_output(&self, name: &str) -> bool {
        self.outputs.iter().any(|o| o.name == name)
    }

    /// Inputs the caller must feed: declared inputs that are not also initializers.
    pub fn runtime_inputs(&self) -> Vec<&ValueInfo> {
        // Inputs that are initializers (old exports list them) or that nothing reads (files
        // another tool rewrote keep them) are not fed.
        let read: HashSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.inputs.iter().map(String::as_str))
            .chain(self.outputs.iter().map(|o| o.name.as_str()))
            .collect();
        self.inputs
            .iter()
            .filter(|i| !self.initializers.contains_key(&i.name) && read.contains(i.name.as_str()))
            .collect()
    }

    /// Puts nodes in topological order (stable: an already sorted graph keeps its order) and checks
    /// that every value is defined once, every input is defined and every output is produced.
    /// Linear in the graph's size (Kahn's algorithm, ready nodes taken lowest index first).
    pub fn sort_and_check(&mut self) -> Result<()> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut defined: HashSet<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        defined.extend(self.initializers.keys().map(String::as_str));
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                if defined.contains(o.as_str()) || producer.insert(o.as_str(), i).is_some() {
                    return Err(Error::node(&n.name, format!("value '{o}' is defined twice")));
                }
            }
        }
        // waiting[i]: how many distinct produced values node i still waits for.
        let mut waiting = vec![0usize; self.nodes.len()];
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let mut seen = HashSet::new();
            for v in n.inputs.iter().filter(|s| !s.is_empty()) {
                if defined.contains(v.as_str()) || !seen.insert(v.as_str()) {
                    continue;
                }
                if !producer.contains_key(v.as_str()) {
                    return Err(Error::node(&n.name, format!("input(s) [\"{v}\"] are never defined")));
                }
                waiting[i] += 1;
                readers.entry(v.as_str()).or_default().push(i);
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..self.nodes.len()).filter(|&i| waiting[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for o in self.nodes[i].outputs.iter().filter(|o| !o.is_empty()) {
                for &r in readers.get(o.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                    waiting[r] -= 1;
                    if waiting[r] == 0 {
                        ready.push(Reverse(r));
                    }
                }
            }
        }
        if order.len() != self.nodes.len() {
            let n = self.nodes.iter().enumerate().find(|(i, _)| waiting[*i] > 0).map(|(_, n)| n);
            let name = n.map(|n| n.name.as_str()).unwrap_or("?");
            return Err(Error::node(name, "the graph has a cycle through this node"));
        }
        for o in &self.outputs {
            if !defined.contains(o.name.as_str()) && !producer.contains_key(o.name.as_str()) {
                return Err(Error::value(&o.name, "graph output is never produced"));
            }
        }
        if order.iter().enumerate().any(|(a, &b)| a != b) {
            let mut nodes: Vec<Option<Node>> = std::mem::take(&mut self.nodes).into_iter().map(Some).collect();
            self.nodes = order.into_iter().filter_map(|i| nodes[i].take()).collect();
        }
        Ok(())
    }

    /// Renames value `from` to `to` everywhere it is read (not where it is written).
    pub fn replace_uses(&mut self, from: &str, to: &str) {
        for n in &mut self.nodes {
            for i in &mut n.inputs {
                if i == from {
                    *i = to.to_string();
                }
            }
        }
    }

    /// Number of parameters (elements of float initializers).
    pub fn param_count(&self) -> usize {
        self.initializers.values().filter(|t| t.dtype() == DType::F32).map(|t| t.len()).sum()
    }

    /// Picks a value name not used yet, starting from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        let used = |s: &str| {
            self.initializers.contains_key(s)
                || self.inputs.iter().any(|i| i.name == s)
                || self.nodes.iter().any(|n| n.outputs.iter().any(|o| o == s))
        };
        if !used(base) {
            return base.to_string();
        }
        (1..).map(|k| format!("{base}_{k}")).find(|s| !used(s)).unwrap()
    }
}
