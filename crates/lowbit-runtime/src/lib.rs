//! `lowbit-runtime` turns a [`lowbit_core::Graph`] into a compiled [`Plan`] for concrete input
//! shapes and runs it: shape specialization and constant folding ([`specialize`]), integer-unit
//! fusion of QDQ patterns (`qfuse`, its multiply-accumulate units in `qunits`), buffer layout by liveness (`layout`, [`memory`]), kernel
//! choice and weight packing per node (`lower`), and the interpreter (`exec`) with a thread pool.
//! A plan is immutable once compiled; each run owns a [`State`]. It contains no kernel math: that
//! lives in `lowbit-kernels`. Also: the fake-quant executor ([`fakequant`]) and classification
//! metrics ([`classify`]), open-set embedding metrics and the class/individual error decomposition
//! ([`embedding`]).

mod blocks;
mod cache;
pub mod classify;
pub mod embedding;
mod exec;
pub mod fakequant;
mod layout;
mod lower;
pub mod memory;
mod plan;
mod qfuse;
mod qunits;
pub mod specialize;
mod step;
pub mod task;

pub use cache::PlanCache;
pub use exec::State;
pub use plan::{Plan, PlanOptions};
pub use specialize::{canonicalize_free, specialize, Specialized};
pub use step::StepInfo;
