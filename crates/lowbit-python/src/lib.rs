//! `lowbit._lowbit`, the native module of the `lowbit` Python package (python/): a compiled model
//! that runs numpy arrays with the GIL released ([`model::Model`]), and quantize / evaluate / bench
//! / inspect with the command line's options, reports and errors ([`tools`]). The Python side
//! (python/lowbit/__init__.py) turns iterables into arrays and JSON into report objects.

mod convert;
mod model;
mod tools;

use pyo3::prelude::*;

// Declared under `lowbit` (which re-exports it) so that it pickles across processes.
pyo3::create_exception!(
    lowbit,
    LowbitError,
    pyo3::exceptions::PyException,
    "What lowbit refused or could not do; the message names the file, node and reason, as the command line's error does."
);

#[pymodule]
fn _lowbit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LowbitError", m.py().get_type::<LowbitError>())?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(tools::quantize, m)?)?;
    m.add_function(wrap_pyfunction!(tools::check_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(tools::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(tools::bench, m)?)?;
    m.add_function(wrap_pyfunction!(tools::inspect, m)?)?;
    m.add_function(wrap_pyfunction!(tools::cpu, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
