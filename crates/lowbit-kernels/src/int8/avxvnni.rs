//! 256-bit VNNI integer kernels: `vpdpbusd ymm` (u8 × s8, four products summed into each i32
//! lane, exact) for the GEMMs, on the quad-packed weights the AVX-512 path reads, and for
//! depthwise convolutions with an 8-bit output, on 32-channel blocks whose 4 interleaved taps
//! (window rows) each lane multiplies at once, as the AVX-512 path does on 64. The GEMM epilogue
//! and the depthwise convolutions with an f32 output are the AVX2 path's (the same 8-lane
//! arithmetic).
//!
//! The kernel source is compiled twice: VEX-encoded with AVX-VNNI (Intel client cores since Alder
//! Lake, which have no AVX-512), and EVEX-encoded with AVX-512 VNNI + VL (the same instruction on
//! 256-bit registers). [`Isa::AvxVnni`](crate::isa::Isa::AvxVnni) takes the VEX form where the CPU
//! has it, else the EVEX form, so the property tests exercise this code on every VNNI machine. The
//! micro-kernel keeps to the 16 registers VEX can name: 6 rows × 16 columns of accumulators, two
//! weight vectors and one broadcast row.

use crate::int8::tile::Kernels;
use crate::isa::features;

/// The kernels of the encoding this CPU runs.
pub(crate) fn kernels() -> &'static Kernels {
    if features().avxvnni {
        &vex::KERNELS
    } else {
        &evex::KERNELS
    }
}

/// Peak probe of the encoding this CPU runs: `iters` rounds of 12 independent `vpdpbusd ymm` (32
/// MACs each).
///
/// # Safety
/// [`crate::isa::Isa::AvxVnni`] is supported by this CPU.
pub unsafe fn peak_probe(iters: usize) -> i32 {
    if features().avxvnni {
        vex::peak_probe(iters)
    } else {
        evex::peak_probe(iters)
    }
}

macro_rules! vnni256 {
    ($feat:literal, $dp:ident) => {
        use std::arch::x86_64::*;

        use crate::epilogue::{Out, OutPtr, Requant};
        use crate::geom::DwGeom;
        use crate::int8::avx2::{round_div_zp8, store8};
        use crate::int8::pack::{PackedB, PackedDw, PANEL};
        use crate::int8::tile::{ASrc, Kernels, RowCursor, Tile};

        pub(crate) const KERNELS: Kernels = Kernels { gemm_tile, depthwise_row };

        /// One GEMM task (see [`crate::int8::gemm::gemm_ex`]), columns `jn ≤ 64`.
        ///
        /// # Safety
        /// As for [`crate::int8::gemm::gemm_ex`]; the CPU has this encoding's features.
        #[target_feature(enable = $feat)]
        pub unsafe fn gemm_tile(t: &Tile, a: *const u8, src: &ASrc, b: &PackedB, rq: &Requant, out: OutPtr) {
            // This panel's contiguous block: `[k4/4][width][4]`. Columns step by 16 and `n_pad` is a
            // multiple of 16, so a step's two vectors never read past the panel.
            let width = PANEL.min(b.n_pad - t.j0);
            let bp = b.quad.as_ptr().add(t.j0 * b.kp);
            // A fully connected layer at batch 1, and a last block of one or two rows (ResNet-18's
            // and MobileNetV2's 7x7 planes: 49 = 8·6 + 1): one row at a time against the whole
            // panel (the 6-row tile below would compute 6 copies of it, 16 columns at a time).
            let single = if t.rows <= 2 {
                t.rows
            } else if t.rows % 6 <= 2 {
                t.rows % 6
            } else {
                0
            };
            let tiled = t.rows - single;
            if single > 0 {
                for i in tiled..t.rows {
                    let r = Row1 { a: a.add(i * src.lda), src, bp, stride: width * 4, rq, out, t, i };
                    match t.jn.div_ceil(8) {
                        8 => row1::<8>(&r),
                        7 => row1::<7>(&r),
                        6 => row1::<6>(&r),
                        5 => row1::<5>(&r),
                        4 => row1::<4>(&r),
                        3 => row1::<3>(&r),
                        2 => row1::<2>(&r),
                        _ => row1::<1>(&r),
                    }
                }
            }
            let mut jb = 0;
            while jb < t.jn && tiled > 0 {
                let cols = (t.jn - jb).min(16);
                let mut i = 0;
                while i < tiled {
                    micro(
                        (tiled - i).min(6),
                        a.add(i * src.lda),
                        src,
                        bp.add(jb * 4),
                        width * 4,
                        rq,
                        out,
                        t,
                        i,
                        jb,
                        cols,
                    );
                    i += 6;
                }
                jb += 16;
            }
        }

        /// One row of A (at `a`) against the task's `jn ≤ 64` columns (`bp`: the panel block,
        /// `stride` bytes per quad row), stored as row `i` of the task.
        struct Row1<'a> {
            a: *const u8,
            src: &'a ASrc<'a>,
            bp: *const i8,
            stride: usize,
            rq: &'a Requant,
            out: OutPtr,
            t: &'a Tile,
            i: usize,
        }

        /// [`Row1`] with `NV = ⌈jn / 8⌉` accumulators, the weights read as the multiplies' operands.
        #[inline(always)]
        unsafe fn row1<const NV: usize>(r: &Row1) {
            let (src, t) = (r.src, r.t);
            let mut acc = [_mm256_setzero_si256(); NV];
            let quads = src.kc / 4;
            for (tp, &off) in src.taps.iter().enumerate() {
                let bt = r.bp.add(tp * quads * r.stride);
                for q in 0..quads {
                    let av = _mm256_set1_epi32((r.a.add(off + q * 4) as *const i32).read_unaligned());
                    let bq = bt.add(q * r.stride);
                    for (v, x) in acc.iter_mut().enumerate() {
                        *x = $dp(*x, av, _mm256_loadu_si256(bq.add(32 * v) as *const _));
                    }
                }
            }
            let Some(orow) = RowCursor::new(t.map, t.i0 + r.i).next_row() else { return };
            for (v, &x) in acc.iter().enumerate() {
                let j = t.j0 + v * 8;
                store8(x, j, r.rq, r.out.at(r.rq.out, orow, j, t.ldc), (t.jn - v * 8).min(8));
            }
        }

        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn micro(
            mr: usize,
            a: *const u8,
            src: &ASrc,
            bp: *const i8,
            stride: usize,
            rq: &Requant,
            out: OutPtr,
            t: &Tile,
            i: usize,
            jb: usize,
            cols: usize,
        ) {
            // Rows past the end repeat the last row (computed, not stored).
            let ap: [*const u8; 6] = std::array::from_fn(|r| a.add(r.min(mr - 1) * src.lda));
            // The common epilogue (`store_rows16`) takes accumulators that started at the integer
            // bias; `store8` adds it itself.
            let common = cols == 16
                && matches!(rq.out, Out::Q { qmin, qmax, .. } if (qmin, qmax) == (0, 255) || (qmin, qmax) == (-128, 127));
            let start = |v: usize| {
                if common {
                    _mm256_loadu_si256(rq.bias_i.as_ptr().add(t.j0 + jb + 8 * v) as *const _)
                } else {
                    _mm256_setzero_si256()
                }
            };
            let mut acc = [[start(0), start(1)]; 6];
            let quads = src.kc / 4;
            for (tp, &off) in src.taps.iter().enumerate() {
                let bt = bp.add(tp * quads * stride);
                for q in 0..quads {
                    let bq = bt.add(q * stride);
                    let w0 = _mm256_loadu_si256(bq as *const _);
                    let w1 = _mm256_loadu_si256(bq.add(32) as *const _);
                    for r in 0..6 {
                        let av = _mm256_set1_epi32((ap[r].add(off + q * 4) as *const i32).read_unaligned());
                        acc[r][0] = $dp(acc[r][0], av, w0);
                        acc[r][1] = $dp(acc[r][1], av, w1);
                    }
                }
            }
            let mut cur = RowCursor::new(t.map, t.i0 + i);
            if common {
                if let Out::Q { scale, zp, qmin, qmax } = rq.out {
                    return store_rows16(&acc, mr, &mut cur, t.j0 + jb, rq, out, t.ldc, (scale, zp, qmin, qmax));
                }
            }
            for row in acc.iter().take(mr) {
                let Some(orow) = cur.next_row() else { continue };
                for (v, x) in row.iter().enumerate().take(cols.div_ceil(8)) {
                    let j = t.j0 + jb + v * 8;
                    store8(*x, j, rq, out.at(rq.out, orow, j, t.ldc), (cols - v * 8).min(8));
                }
            }
        }

        /// Epilogue of `mr` rows of 16 accumulators (channels `j..j+16`, started at the integer
        /// bias) with a full-range 8-bit output: `store8`'s arithmetic with the per-channel vectors
        /// and constants loaded once for the rows, and two rows' four vectors packed together and
        /// put in order by one dword permute, a 16-byte store each. Short reductions (MobileNets'
        /// 1x1 layers on 16-32 channels) spend more on the epilogue than on the MACs.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn store_rows16(
            acc: &[[__m256i; 2]; 6],
            mr: usize,
            cur: &mut RowCursor,
            j: usize,
            rq: &Requant,
            out: OutPtr,
            ldc: usize,
            (scale, zp, qmin, _): (f32, i32, i32, i32),
        ) {
            let ld_f = |p: &[f32], v: usize| _mm256_loadu_ps(p.as_ptr().add(j + 8 * v));
            let sc = [ld_f(&rq.scale, 0), ld_f(&rq.scale, 1)];
            let has_bf = !rq.bias_f.is_empty();
            let bf = if has_bf { [ld_f(&rq.bias_f, 0), ld_f(&rq.bias_f, 1)] } else { [_mm256_setzero_ps(); 2] };
            let (ylo, yhi) = (_mm256_set1_ps(rq.ylo), _mm256_set1_ps(rq.yhi));
            let (vs, vinv, vzp) = (_mm256_set1_ps(scale), _mm256_set1_ps(rq.inv), _mm256_set1_epi32(zp));
            // Stage by stage over the six rows (see the AVX-512 `store_tile`: row by row, the
            // out-of-order window waited on each vector's chain of dependent operations).
            let mut y = [[_mm256_setzero_ps(); 2]; 6];
            for r in 0..6 {
                for v in 0..2 {
                    y[r][v] = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][v]), sc[v]);
                }
            }
            if has_bf {
                for row in y.iter_mut() {
                    for v in 0..2 {
                        row[v] = _mm256_add_ps(row[v], bf[v]);
                    }
                }
            }
            if !rq.unclamped {
                for row in y.iter_mut() {
                    for x in row.iter_mut() {
                        *x = _mm256_min_ps(_mm256_max_ps(*x, ylo), yhi);
                    }
                }
            }
            let mut q = [[_mm256_setzero_si256(); 2]; 6];
            for r in 0..6 {
                for v in 0..2 {
                    q[r][v] = round_div_zp8(y[r][v], vs, vinv, vzp);
                }
            }
            // The output range is a whole byte range and |y/s| < 2^30 (y clamped, or provably
            // unclamped), so the saturating packs clamp. Packing rows r and r + 1 (i32 -> i16 per
            // row, then both rows to bytes) leaves dword d of 128-bit lane L holding channels
            // 4·(2(d mod 2) + L) .. + 3 of row r + d / 2: one dword permute puts row r in the low
            // half and row r + 1 in the high half, each in channel order.
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let mut r = 0;
            while r < mr {
                let (o0, o1) = (cur.next_row(), if r + 1 < mr { cur.next_row() } else { None });
                let (p0, p1) = (_mm256_packs_epi32(q[r][0], q[r][1]), _mm256_packs_epi32(q[r + 1][0], q[r + 1][1]));
                let b = if qmin == 0 { _mm256_packus_epi16(p0, p1) } else { _mm256_packs_epi16(p0, p1) };
                let b = _mm256_permutevar8x32_epi32(b, order);
                if let Some(o) = o0 {
                    _mm_storeu_si128(out.0.add(o * ldc + j) as *mut _, _mm256_castsi256_si128(b));
                }
                if let Some(o) = o1 {
                    _mm_storeu_si128(out.0.add(o * ldc + j) as *mut _, _mm256_extracti128_si256::<1>(b));
                }
                r += 2;
            }
        }

        /// Interleaves the bytes of 4 rows of 32 channels so that i32 lane `(L, j)` of vector `i`
        /// holds channel `16L + 4i + j` of rows 0..3 (the unpacks work within 128-bit halves).
        #[inline(always)]
        unsafe fn interleave4(x: [__m256i; 4]) -> [__m256i; 4] {
            let (alo, ahi) = (_mm256_unpacklo_epi8(x[0], x[1]), _mm256_unpackhi_epi8(x[0], x[1]));
            let (blo, bhi) = (_mm256_unpacklo_epi8(x[2], x[3]), _mm256_unpackhi_epi8(x[2], x[3]));
            [
                _mm256_unpacklo_epi16(alo, blo),
                _mm256_unpackhi_epi16(alo, blo),
                _mm256_unpacklo_epi16(ahi, bhi),
                _mm256_unpackhi_epi16(ahi, bhi),
            ]
        }

        /// Interleaved input column `ix` of the window's `kh ≤ 4` rows (missing rows read as zeros).
        #[inline(always)]
        pub(crate) unsafe fn dw_col(row0: *const u8, g: &DwGeom, kh: usize, ix: usize) -> [__m256i; 4] {
            let p = row0.add(ix * g.cs);
            let mut r = [_mm256_setzero_si256(); 4];
            for (ky, v) in r.iter_mut().enumerate().take(kh) {
                *v = _mm256_loadu_si256(p.add(ky * g.dh * g.wp * g.cs) as *const _);
            }
            interleave4(r)
        }

        /// The 4 permuted accumulators of a 32-channel block plus one group of 4 taps.
        #[inline(always)]
        unsafe fn dp4(acc: &mut [__m256i; 4], x: &[__m256i; 4], wg: *const i8) {
            for i in 0..4 {
                acc[i] = $dp(acc[i], x[i], _mm256_loadu_si256(wg.add(32 * i) as *const _));
            }
        }

        /// Epilogue of the 4 permuted accumulators of a 32-channel block (the AVX-512 path's
        /// `dw_store64` on 8 lanes): the saturating packs, which work within 128-bit halves, put
        /// the channels back in order; `valid` of the 32 are stored.
        #[inline(always)]
        pub(crate) unsafe fn dw_store32(
            acc: &[__m256i; 4],
            sc: &[__m256; 4],
            bf: &[__m256; 4],
            rp: &Requant,
            o: *mut u8,
            valid: usize,
        ) {
            let Out::Q { scale, zp, qmin, qmax } = rp.out else { unreachable!() };
            let (vlo, vhi) = (_mm256_set1_ps(rp.ylo), _mm256_set1_ps(rp.yhi));
            let (vs, vinv, vzp) = (_mm256_set1_ps(scale), _mm256_set1_ps(rp.inv), _mm256_set1_epi32(zp));
            let mut q = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                let y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[i]), sc[i]);
                let y = if rp.bias_f.is_empty() { y } else { _mm256_add_ps(y, bf[i]) };
                let y = if rp.unclamped { y } else { _mm256_min_ps(_mm256_max_ps(y, vlo), vhi) };
                q[i] = round_div_zp8(y, vs, vinv, vzp);
            }
            if !matches!((qmin, qmax), (0, 255) | (-128, 127)) {
                for v in q.iter_mut() {
                    *v = _mm256_min_epi32(_mm256_max_epi32(*v, _mm256_set1_epi32(qmin)), _mm256_set1_epi32(qmax));
                }
            }
            let (a, b) = (_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            let bytes = if qmin >= 0 { _mm256_packus_epi16(a, b) } else { _mm256_packs_epi16(a, b) };
            if valid == 32 {
                _mm256_storeu_si256(o as *mut _, bytes);
            } else {
                let mut v = [0u8; 32];
                _mm256_storeu_si256(v.as_mut_ptr() as *mut _, bytes);
                std::ptr::copy_nonoverlapping(v.as_ptr(), o, valid);
            }
        }

        /// Interleaved input column `ix` of the window's `KH ≤ 4` rows (`dw_col` with the row
        /// count known at compile time).
        #[inline(always)]
        unsafe fn col<const KH: usize>(row0: *const u8, g: &DwGeom, ix: usize) -> [__m256i; 4] {
            let p = row0.add(ix * g.cs);
            let mut r = [_mm256_setzero_si256(); 4];
            for (ky, v) in r.iter_mut().enumerate().take(KH) {
                *v = _mm256_loadu_si256(p.add(ky * g.dh * g.wp * g.cs) as *const _);
            }
            interleave4(r)
        }

        /// What the row kernels of one 32-channel block work on (the AVX-512 path's `Block` on
        /// 256-bit vectors): the geometry, the block's first window row and packed weights, its
        /// per-channel epilogue vectors (lane order), its output row and its valid channels.
        #[derive(Clone, Copy)]
        struct Blk<'a> {
            g: &'a DwGeom,
            row0: *const u8,
            wb: *const i8,
            bi: &'a [__m256i; 4],
            sc: &'a [__m256; 4],
            bf: &'a [__m256; 4],
            rp: &'a Requant,
            orow: *mut u8,
            valid: usize,
        }

        /// A row of a `KH`×`KW` depthwise convolution at stride `SW` (`by_cols` packing), the
        /// interleaved columns kept in registers and shifted along the row.
        #[inline(always)]
        unsafe fn cols_row<const KH: usize, const KW: usize, const SW: usize>(b: &Blk) {
            let Blk { g, row0, wb, bi, sc, bf, rp, orow, valid } = *b;
            if KH == 3 && KW == 3 && valid == 32 && rp.bias_f.is_empty() && rp.unclamped {
                if let Out::Q { qmin: 0, qmax: 255, .. } = rp.out {
                    return dw3_fast::<SW>(b);
                }
            }
            let mut cols = [[_mm256_setzero_si256(); 4]; KW];
            for (k, c) in cols.iter_mut().enumerate() {
                *c = col::<KH>(row0, g, k);
            }
            for ox in 0..g.ow {
                if ox > 0 {
                    for k in 0..KW {
                        cols[k] = if k + SW < KW { cols[k + SW] } else { col::<KH>(row0, g, ox * SW + k) };
                    }
                }
                let mut acc = *bi;
                for (kx, c) in cols.iter().enumerate() {
                    dp4(&mut acc, c, wb.add(kx * 128));
                }
                dw_store32(&acc, sc, bf, rp, orow.add(ox * g.c), valid);
            }
        }

        /// [`cols_row`] for a full 3x3 block with the common epilogue (integer bias only, no
        /// clamp to apply, full-range unsigned bytes): the three columns as separate values, each
        /// channel group's three products and its requantization in one chain, no per-pixel tests
        /// (the AVX-512 path's `dw3_fast` on 32 channels).
        #[inline(always)]
        unsafe fn dw3_fast<const SW: usize>(b: &Blk) {
            let Blk { g, row0, wb, bi, sc, rp, orow, .. } = *b;
            let Out::Q { scale, zp, .. } = rp.out else { unreachable!() };
            let (vs, vinv, vzp) = (_mm256_set1_ps(scale), _mm256_set1_ps(rp.inv), _mm256_set1_epi32(zp));
            let mut c0 = col::<3>(row0, g, 0);
            let mut c1 = col::<3>(row0, g, 1);
            let mut o = orow;
            for ox in 0..g.ow {
                let c2 = col::<3>(row0, g, ox * SW + 2);
                let mut q = [_mm256_setzero_si256(); 4];
                for i in 0..4 {
                    let a = $dp(bi[i], c0[i], _mm256_loadu_si256(wb.add(32 * i) as *const _));
                    let a = $dp(a, c1[i], _mm256_loadu_si256(wb.add(128 + 32 * i) as *const _));
                    let a = $dp(a, c2[i], _mm256_loadu_si256(wb.add(256 + 32 * i) as *const _));
                    q[i] = round_div_zp8(_mm256_mul_ps(_mm256_cvtepi32_ps(a), sc[i]), vs, vinv, vzp);
                }
                let bytes = _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
                _mm256_storeu_si256(o as *mut _, bytes);
                o = o.add(g.c);
                if SW == 1 {
                    (c0, c1) = (c1, c2);
                } else if ox + 1 < g.ow {
                    (c0, c1) = (c2, col::<3>(row0, g, ox * SW + 3));
                }
            }
        }

        /// A row of a 5x5 depthwise convolution at stride `SW` in the [`PackedDw::five`] layout
        /// (the AVX-512 path's `dw5_row` on 32 channels): rows 0-3 of each window column
        /// interleaved once and kept for the pixels that share it, row 4 interleaved per output pixel as one
        /// group of its first four columns, its last tap moved to the low byte of each lane by one
        /// byte shuffle per vector: 7 groups of `vpdpbusd`.
        #[inline(always)]
        unsafe fn dw5_row<const SW: usize>(b: &Blk) {
            let Blk { g, row0, .. } = *b;
            // Vector i's lane (L, j) takes byte 4i + j of its 128-bit lane (`interleave4`'s order);
            // bytes 1-3 of each lane select nothing (0x80: zero).
            let spread: [__m256i; 4] = std::array::from_fn(|i| {
                let b = 4 * i as i32;
                _mm256_setr_epi32(
                    b | -256,
                    (b + 1) | -256,
                    (b + 2) | -256,
                    (b + 3) | -256,
                    b | -256,
                    (b + 1) | -256,
                    (b + 2) | -256,
                    (b + 3) | -256,
                )
            });
            let r4 = row0.add(4 * g.dh * g.wp * g.cs);
            // The window columns as a ring (see the AVX-512 path's `dw5_fast`): column `k` in slot
            // `k mod 5`, the `SW` new ones interleaved per pixel, the pixel loop unrolled five
            // times so every slot index is a constant (the columns were shifted every pixel).
            let mut c = [[_mm256_setzero_si256(); 4]; 5];
            for (k, slot) in c.iter_mut().enumerate().take(5 - SW) {
                *slot = col::<4>(row0, g, k);
            }
            let mut ox = 0;
            while ox < g.ow {
                dw5_step::<SW, 0>(&mut c, b, &spread, r4, &mut ox);
                dw5_step::<SW, 1>(&mut c, b, &spread, r4, &mut ox);
                dw5_step::<SW, 2>(&mut c, b, &spread, r4, &mut ox);
                dw5_step::<SW, 3>(&mut c, b, &spread, r4, &mut ox);
                dw5_step::<SW, 4>(&mut c, b, &spread, r4, &mut ox);
            }
        }

        /// Pixel `ox` (if in the row) of [`dw5_row`], `J = ox mod 5`: its new columns into their
        /// ring slots, the 7 groups of products, the epilogue.
        #[inline(always)]
        unsafe fn dw5_step<const SW: usize, const J: usize>(
            c: &mut [[__m256i; 4]; 5],
            b: &Blk,
            spread: &[__m256i; 4],
            r4: *const u8,
            ox: &mut usize,
        ) {
            let Blk { g, row0, wb, bi, sc, bf, rp, orow, valid } = *b;
            let x = *ox;
            if x >= g.ow {
                return;
            }
            for k in 5 - SW..5 {
                c[(SW * J + k) % 5] = col::<4>(row0, g, x * SW + k);
            }
            let mut acc = *bi;
            for kx in 0..5 {
                dp4(&mut acc, &c[(SW * J + kx) % 5], wb.add(kx * 128));
            }
            let p = r4.add(x * SW * g.cs);
            let mut r = [_mm256_setzero_si256(); 5];
            for (k, v) in r.iter_mut().enumerate() {
                *v = _mm256_loadu_si256(p.add(k * g.cs) as *const _);
            }
            let h = interleave4([r[0], r[1], r[2], r[3]]);
            dp4(&mut acc, &h, wb.add(5 * 128));
            let mut last = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                last[i] = _mm256_shuffle_epi8(r[4], spread[i]);
            }
            dp4(&mut acc, &last, wb.add(6 * 128));
            dw_store32(&acc, sc, bf, rp, orow.add(x * g.c), valid);
            *ox = x + 1;
        }

        /// One output row of a depthwise convolution (see the AVX-512 path's `depthwise_row`):
        /// with an 8-bit output, 32 channels at a time through `vpdpbusd` on interleaved taps,
        /// each interleaved window column kept for the output pixels that share it (3x3 and 5x5
        /// windows and others of at most 4 rows, stride 1 and 2); with an f32 output, the AVX2
        /// kernel.
        ///
        /// # Safety
        /// As for the band loop in `crate::int8::conv`; the CPU has this encoding's features.
        #[target_feature(enable = $feat)]
        pub unsafe fn depthwise_row(g: &DwGeom, x: &[u8], w: &PackedDw, rq: &Requant, out: OutPtr, oy: usize) {
            let (Some(rp), Out::Q { .. }) = (&w.rq_perm, rq.out) else {
                return crate::int8::avx2::depthwise_row(g, x, w, rq, out, oy);
            };
            let taps = g.kh * g.kw;
            let groups = w.groups;
            let xp = x.as_ptr();
            let mut toff = [0usize; 64];
            for (t, o) in toff.iter_mut().enumerate().take(taps) {
                *o = ((t / g.kw) * g.dh * g.wp + (t % g.kw) * g.dw) * g.cs;
            }
            // Window columns kept across output pixels: each one serves up to ceil(kw / sw) of them.
            let keep = w.by_cols && g.kw <= 5 && g.sw <= 2;
            for c0 in (0..g.c).step_by(32) {
                let valid = (g.c - c0).min(32);
                let wb = w.vnni.as_ptr().add(c0 / 32 * groups * 128);
                let (mut sc, mut bf, mut bi) =
                    ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4], [_mm256_setzero_si256(); 4]);
                for i in 0..4 {
                    sc[i] = _mm256_loadu_ps(rp.scale.as_ptr().add(c0 + 8 * i));
                    if !rp.bias_f.is_empty() {
                        bf[i] = _mm256_loadu_ps(rp.bias_f.as_ptr().add(c0 + 8 * i));
                    }
                    bi[i] = _mm256_loadu_si256(rp.bias_i.as_ptr().add(c0 + 8 * i) as *const _);
                }
                let row0 = xp.add((oy * g.sh) * g.wp * g.cs + c0);
                let orow = out.0.add(oy * g.ow * g.c + c0);
                let blk = Blk { g, row0, wb, bi: &bi, sc: &sc, bf: &bf, rp, orow, valid };
                if w.five {
                    if g.sw == 1 {
                        dw5_row::<1>(&blk);
                    } else {
                        dw5_row::<2>(&blk);
                    }
                } else if keep && (g.kh, g.kw, g.sw) == (3, 3, 1) {
                    cols_row::<3, 3, 1>(&blk);
                } else if keep && (g.kh, g.kw, g.sw) == (3, 3, 2) {
                    cols_row::<3, 3, 2>(&blk);
                } else if keep {
                    let mut cols = [[_mm256_setzero_si256(); 4]; 5];
                    for (k, c) in cols.iter_mut().enumerate().take(g.kw) {
                        *c = dw_col(row0, g, g.kh, k);
                    }
                    for ox in 0..g.ow {
                        if ox > 0 {
                            for k in 0..g.kw {
                                cols[k] =
                                    if k + g.sw < g.kw { cols[k + g.sw] } else { dw_col(row0, g, g.kh, ox * g.sw + k) };
                            }
                        }
                        let mut acc = bi;
                        for (kx, c) in cols.iter().enumerate().take(g.kw) {
                            dp4(&mut acc, c, wb.add(kx * 128));
                        }
                        dw_store32(&acc, &sc, &bf, rp, orow.add(ox * g.c), valid);
                    }
                } else if w.by_cols {
                    for ox in 0..g.ow {
                        let mut acc = bi;
                        for kx in 0..g.kw {
                            dp4(&mut acc, &dw_col(row0, g, g.kh, ox * g.sw + kx), wb.add(kx * 128));
                        }
                        dw_store32(&acc, &sc, &bf, rp, orow.add(ox * g.c), valid);
                    }
                } else {
                    for ox in 0..g.ow {
                        let base = row0.add(ox * g.sw * g.cs);
                        let mut acc = bi;
                        for gi in 0..groups {
                            let mut xs = [_mm256_setzero_si256(); 4];
                            for (j, v) in xs.iter_mut().enumerate() {
                                if gi * 4 + j < taps {
                                    *v = _mm256_loadu_si256(base.add(toff[gi * 4 + j]) as *const _);
                                }
                            }
                            dp4(&mut acc, &interleave4(xs), wb.add(gi * 128));
                        }
                        dw_store32(&acc, &sc, &bf, rp, orow.add(ox * g.c), valid);
                    }
                }
            }
        }

        /// See [`super::peak_probe`].
        ///
        /// # Safety
        /// The CPU has this encoding's features.
        #[target_feature(enable = $feat)]
        pub unsafe fn peak_probe(iters: usize) -> i32 {
            let a = _mm256_set1_epi32(0x01020304);
            let b = _mm256_set1_epi32(0x01ff01ff);
            let mut acc = [_mm256_setzero_si256(); 12];
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = $dp(*x, a, b);
                }
            }
            let mut s = _mm256_setzero_si256();
            for x in acc {
                s = _mm256_add_epi32(s, x);
            }
            let mut v = [0i32; 8];
            _mm256_storeu_si256(v.as_mut_ptr() as *mut _, s);
            v.iter().sum()
        }
    };
}

/// VEX encoding (AVX-VNNI).
mod vex {
    vnni256!("avx2,fma,avxvnni", _mm256_dpbusd_avx_epi32);
}

/// EVEX encoding (AVX-512 VNNI + VL).
pub(crate) mod evex {
    vnni256!("avx2,fma,avx512f,avx512vl,avx512vnni", _mm256_dpbusd_epi32);
}
