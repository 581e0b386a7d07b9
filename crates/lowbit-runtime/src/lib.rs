//! `lowbit-runtime` turns a [`lowbit_core::Graph`] into a compiled [`Plan`] for concrete input
//! shapes and runs it: shape specialization and constant folding ([`specialize`]), kernel choice and
//! weight packing, a liveness-based activation arena ([`memory`]) and a thread pool. It contains no
//! kernel math: that lives in `lowbit-kernels`.

pub mod classify;
pub mod fakequant;
pub mod memory;
mod plan;
mod qfuse;
pub mod specialize;

pub use plan::{Plan, PlanOptions, StepInfo};
pub use specialize::{canonicalize_free, specialize, Specialized};
