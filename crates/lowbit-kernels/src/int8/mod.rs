//! Integer kernels: uint8 activations × int8 weights, int32 accumulation, and the requantization
//! epilogue that turns accumulators back into uint8/int8 (or f32) values.
//!
//! Activations are NHWC (channels innermost), so a pointwise convolution is a plain GEMM over the
//! activation buffer, the per-channel epilogue runs on whole vectors, and depthwise convolutions
//! vectorize over channels.
//!
//! One module per instruction set ([`scalar`], [`avx2`], [`avxvnni`], [`avx512`], [`amx`]); each exports one table of kernels
//! ([`tile::Kernels`]: a GEMM tile, a depthwise row) that the drivers ([`gemm`], [`conv`]) call on
//! the path they are given ([`Isa`], resolved once by [`crate::isa::Paths`]) (`LOWBIT_ISA=scalar|avx2|avxvnni|avx512vnni|amx` forces a path). The
//! AMX path runs the GEMMs on tiles and everything else (depthwise, pooling, element-wise) on the
//! AVX-512 kernels. Every path
//! computes the same integers and applies the same f32 operations in the same order, so they are
//! bit-exact with each other; the scalar path is the reference.
//!
//! The arithmetic contract (the same one lowbit's fake-quant executor uses):
//! `acc = Σ (x - zx)·w` exactly in i32; `y = f32(acc + bias_i[c]) · scale[c] + bias_f[c]`;
//! `y = min(max(y, lo), hi)` (the fused ReLU/Clip); and for a quantized output
//! `q = round_half_even(clamp(y / s_out, qmin - z_out, qmax - z_out)) + z_out`.

/// Defines a public function, taking the integer path as its first argument, whose body is
/// compiled three times (AVX-512, AVX2, portable) and dispatched on that path. The body is plain IEEE f32/integer code, so all three compute the same
/// bits; only the vector width LLVM uses differs.
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name(isa: Isa, $($arg: $ty),*) {
            trace::int8(isa);
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
            unsafe fn v512($($arg: $ty),*) { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v256($($arg: $ty),*) { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            assert!(isa.supported(), "integer path {} is not supported by this CPU", isa.name());
            match isa {
                // SAFETY: the CPU supports the path (asserted above).
                Isa::Avx512Vnni | Isa::Amx => return unsafe { v512($($arg),*) },
                Isa::Avx2 | Isa::AvxVnni => return unsafe { v256($($arg),*) },
                Isa::Scalar => {}
            }
            body($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub mod amx;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_dw;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_epi;
#[cfg(target_arch = "x86_64")]
pub mod avxvnni;
pub(crate) mod bands;
pub mod conv;
pub mod deconv;
pub mod edges;
pub mod fused;
pub mod gemm;
pub mod maxpool;
pub mod moves;
pub mod narrow;
pub mod ops;
pub mod pack;
pub mod peak;
pub(crate) mod s2d;
pub mod scalar;
pub mod tile;
pub mod winograd;
pub(crate) mod winograd_kern;

// The integer API in one place for the runtime (nothing inside the crate imports through these).
pub use crate::epilogue::{div_markstein, epilogue_f32, quantize_one, split_bias, Out, OutPtr, Requant};
pub use crate::geom::DwGeom;
pub use crate::isa::Isa;
pub use conv::QConv;
pub use deconv::QDeconv;
pub use fused::QExpandDw;
pub use gemm::{gemm, gemm_ex};
pub use pack::{PackedB, PackedDw, PANEL};
pub use peak::measured_peak_gmacs;
pub use tile::{ASrc, RowMap, Tile};
