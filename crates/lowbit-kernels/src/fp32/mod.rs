//! f32 kernels: GEMM drivers ([`gemm`]), convolution strategies ([`conv`]), depthwise convolution
//! ([`depthwise`]) and lowbit's AVX-512 kernels ([`avx512`]), with the layouts they share
//! ([`layout`]). Every entry point takes its path ([`crate::isa::F32Isa`]).

#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod conv;
pub mod deconv;
pub mod depthwise;
pub mod gemm;
pub mod layout;
