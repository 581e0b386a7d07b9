//! `lowbit-kernels` holds every numeric kernel, and the one place that asks the CPU what it can
//! run ([`isa`]): the generic reference evaluator for all ops ([`reference`]); f32 kernels
//! ([`fp32`]: GEMM, convolution, depthwise; [`pool`], [`eltwise`]); integer kernels ([`int8`]:
//! uint8 × int8 GEMM and convolution with the requantizing [`epilogue`], element-wise and pooling
//! steps); binary xnor-popcount kernels ([`binary`]); and the geometry they share ([`geom`]).
//!
//! Each family has one module per instruction set behind a driver that receives its path
//! ([`isa::F32Isa`], [`isa::Isa`], [`isa::BinIsa`]) as an argument; the portable path is the
//! reference every SIMD path matches (bit for bit for the integer and binary kernels). Kernels take
//! slices and geometry, never graphs, and do not allocate in their inner loops.

pub mod aligned;
pub mod binary;
pub mod eltwise;
pub mod epilogue;
pub mod fp32;
pub mod geom;
pub mod int8;
pub mod isa;
pub mod pool;
pub mod reference;
pub mod refops;
pub mod resample;
