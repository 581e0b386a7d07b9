//! AMX-INT8 GEMM: `tdpbusd` multiplies a 16×64 tile of u8 activations by a 64×16 tile of s8
//! weights into a 16×16 tile of i32 (16,384 multiply-adds per instruction, exact integer
//! arithmetic like `vpdpbusd`), so the accumulators are the scalar path's bit for bit and the
//! epilogue is AVX-512's.
//!
//! Tiles: `tmm0..tmm3` accumulate a 32×32 block (2 row tiles × 2 column tiles), `tmm4`/`tmm5`
//! hold the two A tiles, `tmm6`/`tmm7` the two B tiles of one 64-byte reduction chunk. The weights
//! are the [`PackedB`] quad layout with the reduction padded to a multiple of 64 (zero quads; the
//! dispatcher sends weights it did not pad to AVX-512), so a B tile is 16 consecutive quad rows of
//! a panel, loaded with the panel's row stride. A tiles
//! load straight from the activation rows when the chunk lies inside one tap and all 16 rows
//! exist; otherwise (reduction tails, taps narrower than 64 bytes, the last rows) the chunk is
//! gathered into a zero-padded 16×64 buffer first.
//!
//! Instructions through `asm!` (the AMX intrinsics are not stable); Linux hands out the tile
//! state only after `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`
//! ([`crate::isa::amx_permitted`]).

use std::arch::asm;

use crate::epilogue::{OutPtr, Requant};
use crate::int8::avx512_epi::store_block;
use crate::int8::pack::PackedB;
use crate::int8::tile::{ASrc, Kernels, Tile};

/// The AMX path's kernels: GEMM tiles on AMX where the packing has whole 64-byte reductions and the
/// task at least 16 rows, AVX-512 VNNI otherwise (it reads the AMX packing, whose extra zero quads
/// it never reaches) and for depthwise.
pub(crate) const KERNELS: Kernels =
    Kernels { gemm_tile: gemm_tile_or_vnni, depthwise_row: crate::int8::avx512::KERNELS.depthwise_row };

unsafe fn gemm_tile_or_vnni(t: &Tile, a: *const u8, src: &ASrc, b: &PackedB, rq: &Requant, out: OutPtr) {
    if !b.kp.is_multiple_of(64) || t.rows < 16 {
        (crate::int8::avx512::KERNELS.gemm_tile)(t, a, src, b, rq, out)
    } else {
        gemm_tile(t, a, src, b, rq, out)
    }
}

/// The tile configuration: palette 1; tiles 0..7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileCfg([u8; 64]);

const fn tile_cfg() -> TileCfg {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        // colsb (u16, little endian) at 16 + 2t, rows at 48 + t.
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileCfg(c)
}

static CFG: TileCfg = tile_cfg();

#[inline(always)]
unsafe fn load_config() {
    asm!("ldtilecfg [{}]", in(reg) CFG.0.as_ptr(), options(nostack, readonly));
}

#[inline(always)]
unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

macro_rules! tileload {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"), p = in(reg) $p, s = in(reg) $stride,
             options(nostack, readonly))
    };
}
macro_rules! tilestore {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tilestored [{p} + {s}*1], tmm", $t), p = in(reg) $p, s = in(reg) $stride,
             options(nostack))
    };
}
macro_rules! tilezero {
    ($t:literal) => {
        asm!(concat!("tilezero tmm", $t), options(nostack, nomem))
    };
}
macro_rules! dpbusd {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(concat!("tdpbusd tmm", $c, ", tmm", $a, ", tmm", $b), options(nostack, nomem))
    };
}

/// Copies bytes `k0..k0+64` of the reduction of `rows` A rows (through `src`'s taps) into `buf`
/// (16 rows of 64 bytes), zero-filling what lies past the reduction or past the rows.
#[inline(always)]
unsafe fn gather(buf: &mut [u8; 1024], a: *const u8, src: &ASrc, k4: usize, rows: usize, k0: usize) {
    let kend = (k0 + 64).min(k4);
    for r in 0..16 {
        let dst = buf.as_mut_ptr().add(r * 64);
        let mut filled = 0;
        if r < rows && k0 < kend {
            let row = a.add(r * src.lda);
            let mut k = k0;
            while k < kend {
                let (tap, c) = (k / src.kc, k % src.kc);
                let run = (src.kc - c).min(kend - k);
                std::ptr::copy_nonoverlapping(row.add(src.taps[tap] + c), dst.add(k - k0), run);
                k += run;
            }
            filled = kend - k0;
        }
        std::ptr::write_bytes(dst.add(filled), 0, 64 - filled);
    }
}

/// Loads A tile `T` (rows `0..rows` of the block at `a`, reduction chunk `k0`, which starts at
/// byte `c` of tap `tap`): straight from the rows when possible, else through `buf`.
macro_rules! load_a {
    ($t:literal, $a:expr, $src:expr, $k4:expr, $rows:expr, $k0:expr, $tap:expr, $c:expr, $buf:expr) => {{
        let (a, src, k0, c): (*const u8, &ASrc, usize, usize) = ($a, $src, $k0, $c);
        let inside = $rows >= 16 && k0 + 64 <= $k4 && c + 64 <= src.kc;
        if inside {
            tileload!($t, a.add(src.taps[$tap] + c), src.lda);
        } else {
            gather($buf, a, src, $k4, $rows, k0);
            tileload!($t, $buf.as_ptr(), 64usize);
        }
    }};
}

/// Reduction chunks (64 bytes each) per K block. Measured on ResNet-18 (1 thread): K blocks of 8
/// chunks (the B tiles of a column pair in L1 across the row blocks) were 2-3% slower end to end
/// than no blocking; 32 chunks (2 KB) splits only ResNet-18's 512-channel layers.
const KB: usize = 32;
/// Rows per super block (its accumulators round-trip through `cacc` between K blocks).
const SB: usize = 128;

/// One GEMM task (see [`crate::int8::gemm::gemm_ex`]), columns `jn ≤ 64`.
///
/// Loop order per super block of 128 rows: K blocks of 2 KB, column pairs (2 tiles of 16),
/// row blocks (2 tiles of 16), then the chunks of the K block; the accumulators are stored to and
/// reloaded from a 128×64 i32 buffer between K blocks, and the epilogue reads that buffer.
///
/// # Safety
/// As for [`crate::int8::gemm::gemm_ex`]; the CPU has AMX-INT8 and AVX-512 F/BW/VL/VNNI, and this process
/// holds the AMX tile permission; `b` was packed for [`crate::isa::Isa::Amx`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
pub unsafe fn gemm_tile(t: &Tile, a: *const u8, src: &ASrc, b: &PackedB, rq: &Requant, out: OutPtr) {
    debug_assert!(b.kp.is_multiple_of(64));
    load_config();
    let width = crate::int8::pack::PANEL.min(b.n_pad - t.j0);
    let bp = b.quad.as_ptr().add(t.j0 * b.kp);
    let bstride = width * 4;
    let chunks = b.kp / 64;
    let ntiles = t.jn.div_ceil(16);
    // On the stack, no allocation per task, and not zeroed (32 KB): every accumulator block is
    // stored (from zeroed tiles in the first K block) before it is read, only through `cp`.
    let mut cacc = std::mem::MaybeUninit::<[i32; SB * 64]>::uninit();
    let cp = cacc.as_mut_ptr() as *mut u8;
    let mut abuf0 = [0u8; 1024];
    let mut abuf1 = [0u8; 1024];
    // The finished block whose epilogue is still to run: (its first row in `cacc`, task row, rows,
    // column tile, column tiles). It runs after the next block's multiplies are issued, so the
    // vector units work while the tiles do.
    let mut pending: Option<(usize, usize, usize, usize, usize)> = None;
    let flush = |p: (usize, usize, usize, usize, usize)| {
        let (cr, i, rows, jt, nt) = p;
        let acc = (cp as *const i32).add(cr * 64 + jt * 16);
        store_block(acc, 64, i, rows, t.j0 + jt * 16, nt, t, rq, out);
    };
    let mut rs = 0;
    while rs < t.rows {
        let rrows = SB.min(t.rows - rs);
        let mut kb = 0;
        while kb < chunks {
            let kend = chunks.min(kb + KB);
            let mut jt = 0;
            while jt < ntiles {
                let two = jt + 1 < ntiles;
                let mut ib = 0;
                while ib < rrows {
                    let mr = 32.min(rrows - ib);
                    let a0 = a.add((rs + ib) * src.lda);
                    let a1 = a0.add(16 * src.lda);
                    // C tiles of rows ib.., columns jt*16.. in `cacc` (256-byte rows).
                    let c0 = cp.add((ib * 64 + jt * 16) * 4);
                    let c2 = c0.add(16 * 256);
                    if kb == 0 {
                        tilezero!(0);
                        tilezero!(1);
                        tilezero!(2);
                        tilezero!(3);
                    } else {
                        tileload!(0, c0, 256usize);
                        tileload!(1, c0.add(64), 256usize);
                        tileload!(2, c2, 256usize);
                        tileload!(3, c2.add(64), 256usize);
                    }
                    // Tap and byte of the chunk's first reduction index, advanced without division.
                    let (mut tap, mut c) = (kb * 64 / src.kc, kb * 64 % src.kc);
                    for ch in kb..kend {
                        let k0 = ch * 64;
                        load_a!(4, a0, src, b.k4, mr, k0, tap, c, &mut abuf0);
                        let bq = bp.add(ch * 16 * bstride + jt * 64);
                        tileload!(6, bq, bstride);
                        dpbusd!(0, 4, 6);
                        if two {
                            tileload!(7, bq.add(64), bstride);
                            dpbusd!(1, 4, 7);
                        }
                        if mr > 16 {
                            load_a!(5, a1, src, b.k4, mr - 16, k0, tap, c, &mut abuf1);
                            dpbusd!(2, 5, 6);
                            if two {
                                dpbusd!(3, 5, 7);
                            }
                        }
                        c += 64;
                        while c >= src.kc && tap + 1 < src.taps.len() {
                            c -= src.kc;
                            tap += 1;
                        }
                    }
                    if let Some(p) = pending.take() {
                        flush(p);
                    }
                    tilestore!(0, c0, 256usize);
                    tilestore!(1, c0.add(64), 256usize);
                    tilestore!(2, c2, 256usize);
                    tilestore!(3, c2.add(64), 256usize);
                    if kend == chunks {
                        pending = Some((ib, rs + ib, mr, jt, 1 + two as usize));
                    }
                    ib += 32;
                }
                jt += 2;
            }
            kb = kend;
        }
        rs += rrows;
    }
    if let Some(p) = pending {
        flush(p);
    }
    release();
}

/// Peak probe: `iters` rounds of 4 independent `tdpbusd` (16,384 multiply-adds each) on zero
/// tiles; returns a value read back from the accumulators so the loop is not removed.
///
/// # Safety
/// The CPU has AMX-INT8 and this process holds the tile permission.
pub unsafe fn peak_probe(iters: usize) -> i32 {
    load_config();
    tilezero!(0);
    tilezero!(1);
    tilezero!(2);
    tilezero!(3);
    tilezero!(4);
    tilezero!(5);
    tilezero!(6);
    tilezero!(7);
    for _ in 0..iters {
        dpbusd!(0, 4, 6);
        dpbusd!(1, 4, 7);
        dpbusd!(2, 5, 6);
        dpbusd!(3, 5, 7);
    }
    let mut c = [0i32; 256];
    tilestore!(0, c.as_mut_ptr() as *mut u8, 64usize);
    release();
    c.iter().sum()
}
