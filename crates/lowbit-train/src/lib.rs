//! `lowbit-train` owns training. It builds a trainable view of a lowbit `Graph` on burn's
//! autodiff (CPU `flex` backend) ([`model`]), trains it in float with BatchNorm in training mode,
//! SGD-momentum or AdamW, a warm-up + cosine schedule and crop/flip augmentation ([`train`]), and
//! runs quantization-aware training with the fake-quant functions of [`fq`] (STE, LSQ, PACT, DSQ)
//! initialised from a post-training result, optionally distilling from the float model ([`qat`]). [`embed`] trains embedding models for
//! open-set recognition (CosFace / ArcFace heads, and RCM for their QAT).
//! It re-implements no autodiff: gradients come from burn.

/// The body of a function, `$body($args)`, compiled for AVX-512 (F/BW/VL with AVX2 and FMA) or
/// AVX2 + FMA where the CPU has them, else the portable build. The body is plain IEEE f32/integer
/// code without FMA contraction, so every build computes the same bits; only the vector width
/// LLVM uses differs. Expands to the function's tail expression (it `return`s on the SIMD paths).
#[macro_export]
#[doc(hidden)]
macro_rules! simd_dispatch {
    ($body:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn v512($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v256($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            let f = lowbit_kernels::isa::features();
            if f.avx512f && f.avx512bw && f.avx512vl && f.avx2 && f.fma {
                // SAFETY: the CPU has the features (checked just above).
                return unsafe { v512($($arg),*) };
            }
            if f.avx2 && f.fma {
                // SAFETY: as above.
                return unsafe { v256($($arg),*) };
            }
        }
        $body($($arg),*)
    }};
}

pub mod binary;
pub mod bn;
pub mod conv;
pub mod conv8;
pub mod conv_dw;
pub mod dms;
pub mod dms_setup;
pub mod dsq;
pub mod embed;
pub mod fq;
pub mod fqop;
pub mod head;
pub mod int8grad;
pub mod model;
pub mod qat;
pub mod recon;
pub mod softround;
pub mod train;
pub mod unary;

pub use model::{Binary, Model, QatMethod};

/// The device training runs on: burn's flex CPU backend with autodiff (what every training entry
/// point of this crate takes, so callers need not depend on burn).
pub fn device() -> burn::tensor::Device {
    burn::tensor::Device::flex().autodiff()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node '{node}': {msg}")]
    Node { node: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Core(#[from] lowbit_core::Error),
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}

impl Error {
    pub fn node(node: &str, msg: impl Into<String>) -> Error {
        Error::Node { node: node.into(), msg: msg.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A vector of `len` f32 built chunk by chunk on the rayon pool: each chunk of `chunk` elements
/// (the last may be shorter) is zeroed and handed to `f(index, chunk)`. Replaces
/// `vec![0.0; len]` + `par_chunks_mut`, whose zeroing of a whole batch ran serially on the
/// calling thread (a twentieth of a two-thread training step on fmnist-resnet).
pub(crate) fn par_build(len: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    par_build_init(len, chunk, || (), |_, i, c| f(i, c))
}

/// [`par_build`] with per-thread scratch made by `init` (rayon's `for_each_init`).
pub(crate) fn par_build_init<S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each_init(init, |s, (i, c)| {
        f(s, i, zeroed(c));
    });
    // SAFETY: the chunks cover the first `len` elements, and each was initialised.
    unsafe { v.set_len(len) };
    v
}

use std::mem::MaybeUninit;

/// A chunk of a vector's spare capacity, zeroed and viewed as initialised values.
fn zeroed(c: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    c.fill(MaybeUninit::new(0.0));
    // SAFETY: every element of `c` was initialised just above, and MaybeUninit<f32> has the
    // layout of f32.
    unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// [`par_build`] where each chunk's call also returns a value (a partial reduction, say): the
/// values in chunk order.
pub(crate) fn par_build_map<R: Send>(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) -> R + Sync + Send,
) -> (Vec<f32>, Vec<R>) {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let parts: Vec<R> =
        v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().map(|(i, c)| f(i, zeroed(c))).collect();
    // SAFETY: the chunks cover the first `len` elements, and each was initialised.
    unsafe { v.set_len(len) };
    (v, parts)
}

/// Asks glibc's allocator to keep freed memory for reuse. A training step allocates and frees
/// dozens of multi-megabyte tensors; by default glibc serves those with fresh `mmap`s and returns
/// them on free, so every step page-faults its activations in again (about 10% of a step on
/// fmnist-resnet, measured with `perf`). Call once before training.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before the training threads allocate.
    unsafe {
        // 32 MB is the largest mmap threshold glibc accepts; the trim threshold keeps the heap top.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A small deterministic generator (SplitMix64) for shuffling, augmentation and initialization.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Reads a 1-D tensor back to the host.
pub fn host(t: &burn::tensor::Tensor<1>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
}
