//! `lowbit.Model`: a model file compiled by lowbit's runtime for the input shapes it is called with
//! (one plan per shape met, the most recent kept), run on numpy arrays with the GIL released so
//! that Python threads run it at once (each run has its own state; the plan is shared).

use std::path::PathBuf;

use lowbit_core::{DType, Dim, Tensor};
use lowbit_runtime::{PlanCache, PlanOptions};
use pyo3::prelude::*;

use crate::convert::{array, err, guarded, tensor};

/// A model loaded from an ONNX file (float, or QDQ on the integer kernels).
#[pyclass(frozen, module = "lowbit._lowbit")]
pub struct Model {
    cache: PlanCache,
    /// Runtime inputs: name, type, declared dimensions (None where symbolic).
    inputs: Vec<(String, DType, Option<Vec<Option<usize>>>)>,
    outputs: Vec<String>,
    path: PathBuf,
    threads: usize,
}

#[pymethods]
impl Model {
    /// Loads and checks `path`; plans are compiled on the first run at each input shape.
    #[new]
    #[pyo3(signature = (path, threads = 1))]
    fn new(path: PathBuf, threads: usize) -> PyResult<Model> {
        let mut g = lowbit_cli::common::load_model(&path).map_err(err)?;
        let threads = lowbit_cli::common::clamp_threads(threads);
        let inputs: Vec<_> = g
            .runtime_inputs()
            .iter()
            .map(|v| {
                let dims = v.shape.as_ref().map(|d| {
                    d.iter()
                        .map(|x| match x {
                            Dim::Fixed(n) => Some(*n),
                            Dim::Sym(_) => None,
                        })
                        .collect()
                });
                (v.name.clone(), v.dtype, dims)
            })
            .collect();
        // Every dimension is taken from the arrays of each call (as `lowbit run` takes the images'
        // shape, also where the file fixes another); the rank stays the declared one.
        let names: Vec<String> = inputs.iter().map(|i| i.0.clone()).collect();
        for (k, i) in g.inputs.iter_mut().filter(|i| names.contains(&i.name)).enumerate() {
            if let Some(d) = i.shape.as_mut() {
                d.iter_mut().enumerate().for_each(|(j, x)| *x = Dim::Sym(format!("lowbit_in{k}_{j}")));
            }
        }
        let outputs = g.outputs.iter().map(|o| o.name.clone()).collect();
        let cache = PlanCache::new(g, PlanOptions { threads, ..Default::default() }, 4);
        Ok(Model { cache, inputs, outputs, path, threads })
    }

    /// Runs the model on one array per runtime input (in `input_names` order); returns every output.
    fn run(&self, py: Python<'_>, inputs: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<Py<PyAny>>> {
        if inputs.len() != self.inputs.len() {
            return Err(err(format!(
                "{}: the model has {} input(s) ({}), {} given",
                self.path.display(),
                self.inputs.len(),
                self.input_names().join(", "),
                inputs.len()
            )));
        }
        let mut xs: Vec<Tensor> = Vec::with_capacity(inputs.len());
        for (x, (name, dtype, dims)) in inputs.iter().zip(&self.inputs) {
            let t = tensor(x, name)?;
            let bad = |why: String| err(format!("{}: input '{name}': {why}", self.path.display()));
            if t.dtype() != *dtype {
                return Err(bad(format!("the model takes {}, the array is {}", dtype.name(), t.dtype().name())));
            }
            if let Some(d) = dims.as_ref().filter(|d| d.len() != t.shape.len()) {
                return Err(bad(format!(
                    "the model takes rank {} ({d:?}), the array has shape {:?}",
                    d.len(),
                    t.shape
                )));
            }
            if t.shape.contains(&0) {
                return Err(bad(format!("the array has an empty dimension: shape {:?}", t.shape)));
            }
            xs.push(t);
        }
        let shapes: Vec<Vec<usize>> = xs.iter().map(|t| t.shape.clone()).collect();
        let path = &self.path;
        let cache = &self.cache;
        let outs = py
            .detach(move || {
                guarded(|| {
                    let (plan, new) = cache.plan(&shapes).map_err(|e| format!("{}: {e}", path.display()))?;
                    if new {
                        for note in plan.int8_notes() {
                            eprintln!("note: {} at {shapes:?}: {note}", path.display());
                        }
                    }
                    plan.run(&xs).map_err(|e| format!("{}: {e}", path.display()))
                })
            })
            .and_then(|r| r)
            .map_err(err)?;
        outs.into_iter().map(|t| array(py, t)).collect()
    }

    /// Names of the runtime inputs, in the order `run` takes them.
    #[getter]
    fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|i| i.0.clone()).collect()
    }

    /// Declared input shapes (None for a symbolic dimension, or for an input without a shape).
    #[getter]
    fn input_shapes(&self) -> Vec<Option<Vec<Option<usize>>>> {
        self.inputs.iter().map(|i| i.2.clone()).collect()
    }

    /// numpy type names of the inputs.
    #[getter]
    fn input_dtypes(&self) -> Vec<&'static str> {
        self.inputs.iter().map(|i| i.1.name()).collect()
    }

    #[getter]
    fn output_names(&self) -> Vec<String> {
        self.outputs.clone()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Worker threads of each run (each Python thread calling `run` adds its own).
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// Plans compiled so far (one per input shape met; the 4 most recently used are kept).
    #[getter]
    fn plans_compiled(&self) -> usize {
        self.cache.compiled()
    }

    fn __repr__(&self) -> String {
        format!("lowbit.Model('{}', threads={})", self.path.display(), self.threads)
    }
}
