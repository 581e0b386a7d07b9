//! f32 kernels: GEMM drivers ([`gemm`]), convolution strategies ([`conv`]), depthwise convolution
//! ([`depthwise`]) and lowbit's AVX2 and AVX-512 kernels (`avx2`, [`avx512`]), with the layouts they share
//! ([`layout`]). Every entry point takes its path ([`crate::isa::F32Isa`]).

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2_t;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod conv;
pub mod deconv;
pub mod depthwise;
pub mod direct_t;
#[cfg(target_arch = "x86_64")]
pub(crate) mod dw_cv;
pub mod gemm;
pub mod layout;
#[cfg(target_arch = "x86_64")]
pub(crate) mod max2;
pub mod winograd;
#[cfg(target_arch = "x86_64")]
pub(crate) mod winograd_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod winograd_lanes;
