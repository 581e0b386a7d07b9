//! numpy arrays to lowbit tensors and back, and lowbit's errors to Python exceptions.

use lowbit_core::{Data, Tensor};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::LowbitError;

/// An error as the command line prints it (one line: file, node, reason), as [`LowbitError`].
pub fn err(e: impl std::fmt::Display) -> PyErr {
    LowbitError::new_err(format!("{e:#}").trim_start_matches("error: ").to_string())
}

/// The array's values in C order (copied: a plan reads its inputs from its own arena).
fn values<T: numpy::Element + Copy>(a: &PyReadonlyArrayDyn<'_, T>) -> Vec<T> {
    match a.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => a.as_array().iter().copied().collect(),
    }
}

/// A numpy array (float32, int64, int32, int8, uint8 or bool) as a tensor.
pub fn tensor(x: &Bound<'_, PyAny>, name: &str) -> PyResult<Tensor> {
    macro_rules! try_as {
        ($t:ty, $v:ident) => {
            if let Ok(a) = x.extract::<PyReadonlyArrayDyn<'_, $t>>() {
                let shape = a.shape().to_vec();
                return Tensor::new(shape, Data::$v(values(&a))).map_err(err);
            }
        };
    }
    try_as!(f32, F32);
    try_as!(i64, I64);
    try_as!(i32, I32);
    try_as!(i8, I8);
    try_as!(u8, U8);
    try_as!(bool, Bool);
    let what = x.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    let dtype = x.getattr("dtype").map(|d| d.to_string()).unwrap_or_default();
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "input '{name}': expected a numpy array of float32, int64, int32, int8, uint8 or bool, got {what} {dtype}"
    )))
}

/// A tensor as a numpy array of its own type (moved, not copied).
pub fn array(py: Python<'_>, t: Tensor) -> PyResult<Py<PyAny>> {
    let shape = IxDyn(&t.shape);
    macro_rules! arr {
        ($v:expr) => {
            ArrayD::from_shape_vec(shape, $v).map_err(err)?.into_pyarray(py).into_any().unbind()
        };
    }
    Ok(match t.data {
        Data::F32(v) => arr!(v),
        Data::I64(v) => arr!(v),
        Data::I32(v) => arr!(v),
        Data::I8(v) => arr!(v),
        Data::U8(v) => arr!(v),
        Data::Bool(v) => arr!(v),
    })
}

/// Runs `f` (lowbit code, outside the GIL) and turns a panic into a [`LowbitError`] instead of
/// pyo3's `PanicException` (a `BaseException` that `except Exception` does not catch).
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown".into());
        format!("internal error (please report): {why}")
    })
}
