//! `lowbit-train` owns training. It builds a trainable view of a lowbit `Graph` on burn's
//! autodiff (CPU `flex` backend) ([`model`]), trains it in float with BatchNorm in training mode,
//! SGD-momentum or AdamW, a warm-up + cosine schedule and crop/flip augmentation ([`train`]), and
//! runs quantization-aware training with the fake-quant functions of [`fq`] (STE, LSQ, PACT, DSQ)
//! initialised from a post-training result, optionally distilling from the float model ([`qat`]).
//! It re-implements no autodiff: gradients come from burn.

pub mod binary;
pub mod bn;
pub mod conv;
pub mod dsq;
pub mod fq;
pub mod model;
pub mod qat;
pub mod train;

pub use model::{Binary, Model, QatMethod};

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
