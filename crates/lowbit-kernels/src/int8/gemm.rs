//! The integer GEMM driver: splits a GEMM into tasks (row chunks × column panels) over the
//! threads and runs each on the path's kernel table ([`Kernels`]); the depthwise driver likewise.

use rayon::prelude::*;

use crate::epilogue::{OutPtr, Requant};
use crate::int8::pack::{PackedB, PANEL};
use crate::int8::tile::{ASrc, Kernels, RowMap, SendConst, Tile};
use crate::isa::{trace, Isa};

/// The kernel table of a path.
pub(crate) fn kernels(isa: Isa) -> &'static Kernels {
    match isa {
        Isa::Scalar => &crate::int8::scalar::KERNELS,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &crate::int8::avx2::KERNELS,
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => crate::int8::avxvnni::kernels(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => &crate::int8::avx512::KERNELS,
        #[cfg(target_arch = "x86_64")]
        Isa::Amx => &crate::int8::amx::KERNELS,
        #[cfg(not(target_arch = "x86_64"))]
        _ => &crate::int8::scalar::KERNELS,
    }
}

/// C = epilogue(A · B): `m` rows of A (u8, `lda` bytes apart, each with `b.k4` readable bytes),
/// written as `m × b.n` outputs `ldc` elements apart.
///
/// # Safety
/// `a` must hold `(m - 1) * lda + b.k4` bytes; `out` must hold `(m - 1) * ldc + b.n` elements of the
/// output type; `b.isa` must be supported by this CPU.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    a: *const u8,
    lda: usize,
    b: &PackedB,
    rq: &Requant,
    out: OutPtr,
    ldc: usize,
    threads: usize,
) {
    gemm_ex(m, a, ASrc { lda, taps: &[0], kc: b.k4 }, RowMap::Linear, b, rq, out, ldc, threads)
}

/// [`gemm`] with A read through `src` and rows stored through `map`.
///
/// # Safety
/// Every byte `src` addresses for rows `0..m` is readable; `out` holds every row `map` yields.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_ex(
    m: usize,
    a: *const u8,
    src: ASrc,
    map: RowMap,
    b: &PackedB,
    rq: &Requant,
    out: OutPtr,
    ldc: usize,
    threads: usize,
) {
    if m == 0 || b.n == 0 {
        return;
    }
    assert!(src.kc.is_multiple_of(4) && src.taps.len() * src.kc == b.k4, "A layout does not match the packed weights");
    let panels = b.n.div_ceil(PANEL);
    let a = SendConst(a);
    trace::int8(b.isa);
    let kern = kernels(b.isa);
    let run = |i0: usize, rows: usize, p: usize| {
        let j0 = p * PANEL;
        let jn = PANEL.min(b.n - j0);
        let ap = a.get().add(i0 * src.lda);
        let t = Tile { rows, i0, map, j0, jn, ldc };
        (kern.gemm_tile)(&t, ap, &src, b, rq, out)
    };
    let macs = m * b.n * b.k4;
    if threads <= 1 || macs < 1 << 18 {
        for p in 0..panels {
            run(0, m, p);
        }
        return;
    }
    // Tasks: row chunks × column panels, enough of them to balance the threads.
    let want = threads * 4;
    // Row chunks in whole micro-tiles: 24 rows (AVX-512's tiles of 6, 8, 12), 32 for AMX's 2 tiles.
    let unit = if b.isa == Isa::Amx { 32 } else { 24 };
    let row_chunks = want.div_ceil(panels).clamp(1, m.div_ceil(unit));
    let chunk = m.div_ceil(row_chunks).div_ceil(unit) * unit;
    let row_chunks = m.div_ceil(chunk);
    (0..row_chunks * panels).into_par_iter().for_each(|t| {
        let (r, p) = (t / panels, t % panels);
        let i0 = r * chunk;
        run(i0, chunk.min(m - i0), p);
    });
}
