//! Layouts and blocking shared by the f32 drivers and the per-ISA f32 kernels: where GEMM rows of B
//! start ([`BRows`]), the clamp an epilogue fuses ([`clamp_of`]), and the tile sizes.

use lowbit_core::Act;

use crate::geom::ConvGeom;

/// Rows × columns of C per AVX-512 GEMM tile (6 rows of 4 zmm vectors: 24 accumulators).
pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 64;
/// Reduction block of the spatial GEMM.
pub(crate) const KC: usize = 384;
/// Rows of a matrix-vector panel fetched ahead by software prefetches. The panels stream from
/// memory once per image and the hardware prefetcher stops at page boundaries: EfficientNet-Lite0's
/// classifier (1280 -> 1000, 5 MB) 0.29-0.35 -> 0.13 ms on AMD EPYC Zen 5 with 8 rows (4 rows
/// 0.13, 16 rows 0.14-0.15; `LOWBIT_PROFILE=1 lowbit bench ../shared/zoo/efficientnet-lite0-imagenet.onnx
/// --threads 1`).
pub(crate) const GEMV_AHEAD: usize = 8;

/// Reduction block of the channel-vector kernel: A^T (48 channels × KT) and B (KT × n) stay in L2.
pub(crate) const KT: usize = 1024;
/// Output channels per panel of [`crate::fp32::gemm::pack_t`] (three zmm vectors).
pub(crate) const TP: usize = 48;
/// Output columns computed per register block in the depthwise kernels.
pub(crate) const DW_BLOCK: usize = 16;

/// Sliding windows over planes: the geometry, the input planes (`[planes, h, w]`), per-plane weights
/// (`[planes, kh·kw]`) and biases, and the clamp `[lo, hi]` fused into the outputs.
#[derive(Clone, Copy)]
pub(crate) struct Planes<'a> {
    pub g: &'a ConvGeom,
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub bias: &'a [f32],
    pub lo: f32,
    pub hi: f32,
}

/// A pointer that may cross to the pool's threads (each task writes a disjoint block).
#[derive(Clone, Copy)]
pub(crate) struct Ptr<T>(pub T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T: Copy> Ptr<T> {
    #[inline(always)]
    pub(crate) fn get(self) -> T {
        self.0
    }
}

/// Lower and upper clamp of an activation the kernel can fuse, or `None` if it must run after.
pub fn clamp_of(act: Act) -> Option<(f32, f32)> {
    match act {
        Act::None => Some((f32::NEG_INFINITY, f32::INFINITY)),
        Act::Relu => Some((0.0, f32::INFINITY)),
        Act::Clip { lo, hi } => Some((lo, hi)),
        _ => None,
    }
}

/// The clamp a SIMD epilogue applies for `act`: its own if it is one, else none (the activation
/// then runs afterwards).
pub(crate) fn fused_clamp(act: Act) -> (f32, f32) {
    clamp_of(act).unwrap_or((f32::NEG_INFINITY, f32::INFINITY))
}

/// Where row `p` of B starts: every `ldb` elements, or at an arbitrary offset per row (used for
/// stride-1 convolutions, whose "im2col" rows are shifted views of the padded input).
#[derive(Clone, Copy, Debug)]
pub enum BRows<'a> {
    Strided(usize),
    Offsets(&'a [usize]),
}

impl BRows<'_> {
    #[inline(always)]
    pub(crate) fn off(&self, p: usize) -> usize {
        match self {
            BRows::Strided(ld) => p * ld,
            // SAFETY of callers: `p < k <= offsets.len()` is asserted on entry.
            BRows::Offsets(o) => unsafe { *o.get_unchecked(p) },
        }
    }
    pub(crate) fn max_end(&self, k: usize, n: usize) -> usize {
        match self {
            BRows::Strided(ld) => (k - 1) * ld + n,
            BRows::Offsets(o) => o[..k].iter().max().copied().unwrap_or(0) + n,
        }
    }
}

/// Runs `f(k0, k1, last)` over the reduction range `[0, k)` in blocks of `kc`.
#[inline(always)]
pub(crate) fn k_blocks(k: usize, kc: usize, mut f: impl FnMut(usize, usize, bool)) {
    let mut k0 = 0;
    loop {
        let k1 = (k0 + kc).min(k);
        f(k0, k1, k1 == k);
        if k1 == k {
            return;
        }
        k0 = k1;
    }
}

/// Empty products: nothing to do, or (k = 0) C is the clamped bias. True if handled.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn degenerate(
    m: usize,
    n: usize,
    k: usize,
    bias: &[f32],
    lo: f32,
    hi: f32,
    c: *mut f32,
    ldc: usize,
) -> bool {
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                *c.add(i * ldc + j) = bias[i].max(lo).min(hi);
            }
        }
        return true;
    }
    false
}

/// Runs `block(i0, i1, j0, j1)` over the rows and columns of an `m × n` product on `threads` threads:
/// one block on one thread; otherwise the larger operand is split (columns, B and C, when B is the
/// bigger stream; rows, A and C, when the weights are), so no thread streams the whole of the big
/// matrix. `mr`/`nr`: the tile sizes the split respects.
pub(crate) fn split_gemm(
    m: usize,
    n: usize,
    mr: usize,
    nr: usize,
    threads: usize,
    block: impl Fn(usize, usize, usize, usize) + Sync,
) {
    use rayon::prelude::*;
    let (nb, mb) = (n.div_ceil(nr), m.div_ceil(mr));
    if threads <= 1 || (nb < 2 && mb < 2) {
        block(0, m, 0, n);
        return;
    }
    let parts = threads * 2;
    if nb >= parts && (n >= m || mb < parts) {
        let per = nb.div_ceil(parts);
        (0..parts).into_par_iter().for_each(|t| {
            let (j0, j1) = ((t * per * nr).min(n), ((t + 1) * per * nr).min(n));
            if j0 < j1 {
                block(0, m, j0, j1);
            }
        });
    } else {
        let per = mb.div_ceil(parts);
        (0..parts).into_par_iter().for_each(|t| {
            let (i0, i1) = ((t * per * mr).min(m), ((t + 1) * per * mr).min(m));
            if i0 < i1 {
                block(i0, i1, 0, n);
            }
        });
    }
}

/// `dst` (`cols × rows`, row-major) = `src` (`rows × cols`) transposed: NHWC pixels to NCHW
/// planes and back. 8 × 8 blocks of AVX2 unpacks/shuffles where the CPU has AVX2, the edges (and
/// other CPUs) element by element; the same values either way (moves only).
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    let (r8, c8) = blocks(src, rows, cols, dst);
    // What the blocks left: the last columns of every row, then the last rows' first columns.
    for r in 0..rows {
        let c0 = if r < r8 { c8 } else { 0 };
        for c in c0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// The whole 8 × 8 blocks of [`transpose`] on AVX2; the rows and columns they covered.
#[cfg(target_arch = "x86_64")]
fn blocks(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) -> (usize, usize) {
    if !crate::isa::features().avx2 {
        return (0, 0);
    }
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    // SAFETY: AVX2 is present; the blocks lie inside both matrices (the caller asserted the sizes).
    unsafe { transpose_avx2(src, rows, cols, r8, c8, dst) };
    (r8, c8)
}

#[cfg(not(target_arch = "x86_64"))]
fn blocks(_: &[f32], _: usize, _: usize, _: &mut [f32]) -> (usize, usize) {
    (0, 0)
}

/// Rows x columns of `v` (eight vectors) transposed: lane `j` of row `i` becomes lane `i` of row `j`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn transpose8(v: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t: [__m256; 8] = [
        _mm256_unpacklo_ps(v[0], v[1]),
        _mm256_unpackhi_ps(v[0], v[1]),
        _mm256_unpacklo_ps(v[2], v[3]),
        _mm256_unpackhi_ps(v[2], v[3]),
        _mm256_unpacklo_ps(v[4], v[5]),
        _mm256_unpackhi_ps(v[4], v[5]),
        _mm256_unpacklo_ps(v[6], v[7]),
        _mm256_unpackhi_ps(v[6], v[7]),
    ];
    let s: [__m256; 8] = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    [
        _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
        _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
        _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
        _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
        _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
        _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
        _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
        _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
    ]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_avx2(src: &[f32], rows: usize, cols: usize, r8: usize, c8: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for r in (0..r8).step_by(8) {
        for c in (0..c8).step_by(8) {
            let at = |i: usize| (r + i) * cols + c;
            let v = [
                _mm256_loadu_ps(s.add(at(0))),
                _mm256_loadu_ps(s.add(at(1))),
                _mm256_loadu_ps(s.add(at(2))),
                _mm256_loadu_ps(s.add(at(3))),
                _mm256_loadu_ps(s.add(at(4))),
                _mm256_loadu_ps(s.add(at(5))),
                _mm256_loadu_ps(s.add(at(6))),
                _mm256_loadu_ps(s.add(at(7))),
            ];
            let t = transpose8(v);
            for (j, tj) in t.iter().enumerate() {
                _mm256_storeu_ps(d.add((c + j) * rows + r), *tj);
            }
        }
    }
}

#[cfg(test)]
mod transpose_tests {
    /// The blocked transpose against the definition on ragged shapes (every element moved once).
    #[test]
    fn transpose_is_the_definition() {
        for (rows, cols) in [(1, 1), (7, 9), (8, 8), (16, 24), (17, 3), (49, 64), (784, 16), (5, 33)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            super::transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[c * rows + r], src[r * cols + c], "{rows}x{cols} at {r},{c}");
                }
            }
        }
    }
}
