//! The integer GEMM driver: splits a GEMM into tasks (row chunks × column panels) over the
//! threads and runs each on the path's kernel table ([`Kernels`]); the depthwise driver likewise.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
    let tasks = row_chunks * panels;
    let task = |k: usize| {
        let (r, p) = (k / panels, k % panels);
        let i0 = r * chunk;
        run(i0, if r + 1 == row_chunks { m - i0 } else { chunk }, p);
    };
    if threads == 2 {
        // Two threads walk the tasks (row chunk by row chunk, panels within) from the two ends
        // until they meet: each keeps a contiguous share, its rows of A (and on one chunk, its
        // panels of weights) stay in its own cache, and whichever finishes its share first takes
        // the next task from its end. Rayon's halving of the range gave the halves whole tasks
        // of unequal chunks: ResNet-18's 14x14 layers (196 rows as 120 + 76 over 4 panels) ended
        // one thread at 480 row-units of work and the other at 304.
        let ends = AtomicU64::new(tasks as u64);
        (0..2usize).into_par_iter().for_each(|side| loop {
            let s = ends.load(Ordering::Relaxed);
            let (front, back) = ((s >> 32) as usize, (s & 0xFFFF_FFFF) as usize);
            if front >= back {
                break;
            }
            let (k, next) = if side == 0 { (front, s + (1 << 32)) } else { (back - 1, s - 1) };
            if ends.compare_exchange_weak(s, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                task(k);
            }
        });
    } else {
        // More threads: one counter, the tasks in order.
        let next = AtomicUsize::new(0);
        (0..threads.min(tasks)).into_par_iter().for_each(|_| loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= tasks {
                break;
            }
            task(k);
        });
    }
}

/// How to cut `m` rows into row chunks for `panels` column panels on `threads` threads: `(rows
/// per chunk, chunks)`, every chunk `rows` long but the last, which takes the rest (up to `rows +
/// unit / 2`: a remainder of a few rows rides on the chunk before it rather than making a
/// task of its own, which would load a whole weight panel for them). Of the splits into `r0 =
/// 4 · threads / panels` to `r0 + threads` chunks of whole `unit`s (`m / r` rounded up or
/// down), the one whose tasks finish first as [`gemm_ex`] hands them out (each task costing its
/// rows plus a fixed overhead: from both ends of the list on two threads, [`two_ended`]; else
/// estimated largest first, [`makespan`]), then the most even chunks, then the fewest. Before,
/// the chunk count was `r0` whatever the remainder: 49 rows (a 7x7 plane) and 5 panels made
/// chunks of 48 and 1 rows, five tasks of work for two threads (3:2).
pub(crate) fn split_rows(m: usize, panels: usize, unit: usize, threads: usize) -> (usize, usize) {
    // A task's own cost in rows: the weight panel it streams, its dispatch.
    const OVERHEAD: usize = 4;
    // `r` chunks of `m / r` rows rounded up to whole units, or down (when the rest then fits in
    // the last chunk).
    let cut = |r: usize, down: bool| {
        let chunk = if down { (m / r / unit).max(1) * unit } else { m.div_ceil(r).div_ceil(unit) * unit };
        let mut n = m.div_ceil(chunk);
        if n > 1 && m - (n - 1) * chunk < unit / 2 {
            n -= 1;
        }
        (chunk, n)
    };
    // At least the chunks that make four tasks per thread (taking tasks as they free up evens
    // out what the estimate cannot see), and up to `threads` more where that finishes sooner.
    let rmax = m.div_ceil(unit).max(1);
    let r0 = (4 * threads).div_ceil(panels.max(1)).clamp(1, rmax);
    let mut best = ((usize::MAX, usize::MAX), cut(r0, false));
    for r in r0..=rmax.min(r0 + threads) {
        for down in [false, true] {
            let (chunk, n) = cut(r, down);
            let last = m - (n - 1) * chunk;
            if n > 1 && last > chunk + unit / 2 {
                continue;
            }
            let span = if threads == 2 {
                two_ended(n * panels, |k| if k / panels + 1 == n { last } else { chunk } + OVERHEAD).0
            } else {
                makespan((n - 1) * panels, chunk + OVERHEAD, panels, last + OVERHEAD, threads.max(1))
            };
            let uneven = if n > 1 { chunk.abs_diff(last) } else { 0 };
            if (span, uneven) < best.0 {
                best = ((span, uneven), (chunk, n));
            }
        }
    }
    best.1
}

/// When two threads taking `tasks` tasks (of costs `cost(k)`) from the two ends of the list, as
/// [`gemm_ex`] does, finish (each takes the next task from its end as soon as it is free), and
/// the tasks' total cost.
fn two_ended(tasks: usize, cost: impl Fn(usize) -> usize) -> (usize, usize) {
    let (mut front, mut back, mut t, mut total) = (0, tasks, [0usize; 2], 0);
    while front < back {
        let (side, k) = if t[0] <= t[1] {
            front += 1;
            (0, front - 1)
        } else {
            back -= 1;
            (1, back)
        };
        let c = cost(k);
        t[side] += c;
        total += c;
    }
    (t[0].max(t[1]), total)
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
        assert!(n >= 4, "56x56, one panel: {chunk} x {n}");
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

    /// Two threads end together on the layers where contiguous halves did not: ResNet-18's
    /// 14x14 layers (196 rows, 4 panels) were cut 120 + 76 and halved into 480 and 304 row-units
    /// of work (96 + 100 now: 416 and 400); and on every shape the later thread ends within half
    /// a task of an even split.
    #[test]
    fn two_threads_from_both_ends_finish_together() {
        let split = |m: usize, panels: usize| {
            let (chunk, n) = split_rows(m, panels, 24, 2);
            let last = m - (n - 1) * chunk;
            let (span, total) = two_ended(n * panels, |k| if k / panels + 1 == n { last } else { chunk } + 4);
            (span, total, chunk)
        };
        let (span, total, _) = split(196, 4);
        assert!(span * 100 <= total / 2 * 103, "196 rows, 4 panels: {span} of {total}");
        for m in (1..400).chain([784, 3136, 12544]) {
            for panels in 1..12 {
                let (span, total, chunk) = split(m, panels);
                // The largest task: a chunk, its last up to half a unit longer, plus the overhead.
                let largest = chunk + 12 + 4;
                assert!(span <= total.div_ceil(2) + largest / 2, "m {m}, {panels} panels: {span} of {total}");
            }
        }
    }
}
