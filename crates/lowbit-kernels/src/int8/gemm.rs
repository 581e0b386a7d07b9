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
    // Tasks: row chunks × column panels, split so that the threads finish together.
    // Row chunks in whole micro-tiles: 24 rows (AVX-512's tiles of 6, 8, 12), 32 for AMX's 2 tiles.
    let unit = if b.isa == Isa::Amx { 32 } else { 24 };
    let (chunk, row_chunks) = split_rows(m, panels, unit, threads);
    (0..row_chunks * panels).into_par_iter().for_each(|t| {
        let (r, p) = (t / panels, t % panels);
        let i0 = r * chunk;
        run(i0, if r + 1 == row_chunks { m - i0 } else { chunk }, p);
    });
}

/// How to cut `m` rows into row chunks for `panels` column panels on `threads` threads: `(rows
/// per chunk, chunks)`, every chunk `rows` long but the last, which takes the rest (up to `rows +
/// unit / 2`: a remainder of a few rows rides on the chunk before it rather than making a
/// task of its own, which would load a whole weight panel for them). Of the splits into `r0 =
/// 4 · threads / panels` (as before) to `r0 + threads` chunks of whole `unit`s, the one whose
/// tasks finish first when handed out largest first (each task costing its rows plus a fixed
/// overhead), the fewest chunks on a tie. Before, the chunk count was `r0` whatever the
/// remainder: 49 rows (a 7x7 plane) and 5 panels made chunks of 48 and 1 rows, five tasks of
/// work for two threads (3:2).
pub(crate) fn split_rows(m: usize, panels: usize, unit: usize, threads: usize) -> (usize, usize) {
    // A task's own cost in rows: the weight panel it streams, its dispatch.
    const OVERHEAD: usize = 4;
    let cut = |r: usize| {
        let chunk = m.div_ceil(r).div_ceil(unit) * unit;
        let mut n = m.div_ceil(chunk);
        if n > 1 && m - (n - 1) * chunk < unit / 2 {
            n -= 1;
        }
        (chunk, n)
    };
    // At least the chunks that make four tasks per thread (work stealing evens out what the
    // estimate cannot see), and up to `threads` more where that finishes sooner.
    let rmax = m.div_ceil(unit).max(1);
    let r0 = (4 * threads).div_ceil(panels.max(1)).clamp(1, rmax);
    let mut best = (usize::MAX, cut(r0));
    for r in r0..=rmax.min(r0 + threads) {
        let (chunk, n) = cut(r);
        let last = m - (n - 1) * chunk;
        let span = makespan((n - 1) * panels, chunk + OVERHEAD, panels, last + OVERHEAD, threads.max(1));
        if span < best.0 {
            best = (span, (chunk, n));
        }
    }
    best.1
}

/// The finishing time of `k1` tasks of cost `x1` and `k2` of cost `x2` on `t` threads, each task
/// given to the least loaded thread, the larger tasks first (the water-filling of the smaller
/// tasks is counted in whole rounds).
fn makespan(k1: usize, x1: usize, k2: usize, x2: usize, t: usize) -> usize {
    let ((k1, x1), (k2, x2)) = if x1 >= x2 { ((k1, x1), (k2, x2)) } else { ((k2, x2), (k1, x1)) };
    let (lo, h) = (k1 / t * x1, k1 % t);
    let hi = if h > 0 { lo + x1 } else { lo };
    // The smaller tasks first fill the threads left one task short of the others.
    let fit = if h > 0 { (t - h) * (x1 / x2.max(1)) } else { 0 };
    if k2 <= fit {
        hi.max(lo + k2.div_ceil(t - h) * x2)
    } else {
        hi + (k2 - fit).div_ceil(t) * x2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row in exactly one chunk, chunks of whole units but the last, which holds the rest.
    fn check(m: usize, panels: usize, unit: usize, threads: usize) -> (usize, usize) {
        let (chunk, n) = split_rows(m, panels, unit, threads);
        assert!(n >= 1 && chunk % unit == 0, "m {m}: chunk {chunk}, {n} chunks");
        assert!((n - 1) * chunk < m && m - (n - 1) * chunk <= chunk + unit / 2, "m {m}: chunk {chunk} x {n}");
        (chunk, n)
    }

    /// A 7x7 plane (49 rows) and 5 panels on two threads: two chunks of 24 and 25 rows (ten equal
    /// tasks), not 48 + 1 (five tasks of work); a large GEMM keeps whole-unit chunks; one thread
    /// or one row never splits worse than the work allows.
    #[test]
    fn rows_split_into_balanced_tasks() {
        assert_eq!(check(49, 5, 24, 2), (24, 2));
        assert_eq!(check(49, 20, 24, 2), (72, 1), "20 panels balance alone");
        let (chunk, n) = check(3136, 1, 24, 2);
        assert!(n % 2 == 0 && n >= 4, "56x56, one panel: {chunk} x {n}");
        assert_eq!(check(1, 7, 24, 2), (24, 1));
        for m in 1..400 {
            for panels in 1..12 {
                for threads in [1, 2, 3, 4, 8] {
                    check(m, panels, 24, threads);
                    check(m, panels, 32, threads);
                }
            }
        }
        // The estimate against largest-first by hand: 5 tasks of 53 on 2 threads end at 159; 5 of 29
        // and 5 of 28 at 143 (87 + 28 + 28 on one thread).
        assert_eq!(makespan(5, 53, 0, 0, 2), 159);
        assert_eq!(makespan(5, 28, 5, 29, 2), 143);
        assert_eq!(makespan(4, 10, 2, 3, 2), 23);
    }
}
