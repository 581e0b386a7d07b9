//! Binary (1-bit) convolution: sign-packed activations × sign-packed weights, xnor-popcount.
//!
//! Values are `±1`. An activation or weight is one bit, set for `-1`; activations are packed
//! along channels (NHWC, `cw = ceil(c / 64)` words per pixel, unused high bits zero), so one
//! 64-bit word holds 64 channels of one pixel. The product of two `±1` vectors of length `n` is
//! `n - 2 · popcount(a XOR w)`.
//!
//! A convolution is a GEMM over bit rows: row `m` (an output pixel) concatenates the words of
//! its window's input pixels (im2col of bits); a tap that falls in the padding is stored as zero
//! bits (`+1`), and its contribution `Σ_c w[n][tap][c]` is subtracted afterwards, so padding
//! counts as 0 — not as `+1` or `-1` — exactly as a float convolution over a zero-padded `±1`
//! input would. The integer result then goes through the same epilogue as the int8 kernels
//! ([`Requant`]: per-channel scale and bias — the folded BatchNorm — a clamp, and f32 or
//! quantized output), so the next layer reads uint8 or f32 as it needs.
//!
//! One module per instruction set ([`scalar`], [`avx2`]: nibble-table popcount, [`avx512`]:
//! `vpopcntq`), chosen by the [`BinIsa`] a convolution is packed for ([`crate::isa::Paths`] resolves it;
//! `LOWBIT_BIN_ISA=scalar|avx2|avx512` forces a path). All paths produce the same integers and use the same epilogue, so they are bit-exact.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod layout;
pub mod run;
pub mod scalar;

pub use crate::isa::BinIsa;
pub use layout::{words, BinConv, PANEL};
pub use run::{measured_bound_gmacs, pack_f32_nchw, pack_u8};
