//! `lowbit-kernels` holds every numeric kernel: the generic reference evaluator for all ops
//! ([`reference`]), the fast f32 kernels ([`f32conv`], [`pool`], [`eltwise`]) and CPU feature
//! detection ([`isa`]). Kernels take slices and geometry, never graphs, and do not allocate in
//! their inner loops.

pub mod binary;
pub mod eltwise;
pub mod f32conv;
pub mod f32gemm;
pub mod int8;
pub mod isa;
pub mod pool;
pub mod reference;
