//! The Winograd arithmetic ([`crate::int8::winograd`]): the scaled transforms written once over
//! any lane type, and the kernels per path: the input transform, the 16-bit
//! pair GEMM micro-kernel and the output transform with the requantizing epilogue. The scalar
//! versions are the reference; AVX-512 uses `vpdpwssd` on 16 lanes, AVX2 `vpmaddwd` + `vpaddd` on 8,
//! the 256-bit VNNI path `vpdpwssd ymm`. All integer, so every path computes the same bits.

use crate::epilogue::{OutPtr, Requant};
use crate::int8::scalar::store_one;
use crate::isa::Isa;

/// Scaled `G`: `G'' = diag(4, 6, 6, 24, 24, 1)·G` (Lavin's F(4,3) kernel transform).
pub(crate) const G: [[i32; 3]; 6] = [[1, 0, 0], [-1, -1, -1], [-1, 1, -1], [1, 2, 4], [1, -2, 4], [0, 0, 1]];
/// The power of two in `s_p` (`s = 24, 12, 6, 6 = 3·2^a`).
pub(crate) const A2: [u32; 4] = [3, 2, 1, 1];
/// 9⁻¹ mod 2^32.
pub(crate) const INV9: i32 = 0x38E3_8E39;

/// Where a task's tiles are: `nt` tiles from `t0` (row-major over `tiles_w` tiles per row), the
/// padded input's row width `wp` pixels of `kp` bytes.
pub(crate) struct TileGeo {
    pub kp: usize,
    pub wp: usize,
    pub tiles_w: usize,
    pub t0: usize,
    pub nt: usize,
}

impl TileGeo {
    /// Byte offset of tile `tl`'s top-left input pixel.
    #[inline(always)]
    pub(crate) fn origin(&self, tl: usize) -> usize {
        let t = self.t0 + tl;
        ((t / self.tiles_w) * 4 * self.wp + (t % self.tiles_w) * 4) * self.kp
    }
    /// Output pixel of tile `tl` at `(p, q)`, if inside the image.
    #[inline(always)]
    pub(crate) fn out_pixel(&self, tl: usize, p: usize, q: usize, oh: usize, ow: usize) -> Option<usize> {
        let t = self.t0 + tl;
        let (y, x) = ((t / self.tiles_w) * 4 + p, (t % self.tiles_w) * 4 + q);
        (y < oh && x < ow).then_some(y * ow + x)
    }
}

/// One block of output channels: `j0..j0 + wn` (lanes; channels past `c_out` are not stored).
pub(crate) struct OutBlock {
    pub j0: usize,
    pub wn: usize,
    pub oh: usize,
    pub ow: usize,
    pub c_out: usize,
}

/// Lane arithmetic the transforms are written in, once for every vector width: i16 lanes for
/// the input transform, i32 lanes (wrapping) for the output transform.
pub(crate) trait Lanes: Copy {
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn shl(self, n: u32) -> Self;
}

/// `Bᵀ·x` for six values (one column or row of a tile): Lavin's F(4,3) input transform.
#[inline(always)]
pub(crate) unsafe fn b_t<L: Lanes>(x: [L; 6]) -> [L; 6] {
    let [x0, x1, x2, x3, x4, x5] = x;
    let a = x4.sub(x2); // rows 3 and 4
    let b = x3.sub(x1).shl(1);
    let c = x3.add(x4); // row 1
    let d = x1.add(x2).shl(2);
    let e = x4.sub(x3); // row 2
    let f = x1.sub(x2).shl(2);
    [
        x0.shl(2).sub(x2.shl(2)).sub(x2).add(x4),
        c.sub(d),
        e.add(f),
        a.add(b),
        a.sub(b),
        x1.shl(2).sub(x3.shl(2)).sub(x3).add(x5),
    ]
}

/// The scaled output transform for six values: rows `s_p·Aᵀ[p]/r` = `[6,4,4,1,1,0]`,
/// `[0,2,-2,1,-1,0]`, `[0,1,1,1,1,0]`, `[0,1,-1,2,-2,6]`.
#[inline(always)]
pub(crate) unsafe fn a_t<L: Lanes>(m: [L; 6]) -> [L; 4] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (s1, d1, s2, d2) = (m1.add(m2), m1.sub(m2), m3.add(m4), m3.sub(m4));
    [
        m0.shl(2).add(m0.shl(1)).add(s1.shl(2)).add(s2),
        d1.shl(1).add(d2),
        s1.add(s2),
        d1.add(d2.shl(1)).add(m5.shl(2)).add(m5.shl(1)),
    ]
}

/// The 2-D input transform of a 6x6 tile `d[r][c]`: `V[i][j]`, row-major.
#[inline(always)]
pub(crate) unsafe fn input_2d<L: Lanes>(d: &[[L; 6]; 6]) -> [[L; 6]; 6] {
    // Columns first: t[i][c] = Σ_r Bᵀ[i][r]·d[r][c].
    let mut t = [[d[0][0]; 6]; 6];
    for c in 0..6 {
        let col = b_t([d[0][c], d[1][c], d[2][c], d[3][c], d[4][c], d[5][c]]);
        for i in 0..6 {
            t[i][c] = col[i];
        }
    }
    let mut v = t;
    for i in 0..6 {
        v[i] = b_t(t[i]);
    }
    v
}

/// The 2-D output transform of `M[i][j]`: `R[p][q] = s_p·s_q·Y[p][q]` (mod 2^32).
#[inline(always)]
pub(crate) unsafe fn output_2d<L: Lanes>(m: &[[L; 6]; 6]) -> [[L; 4]; 4] {
    let mut t = [[m[0][0]; 6]; 4];
    for j in 0..6 {
        let col = a_t([m[0][j], m[1][j], m[2][j], m[3][j], m[4][j], m[5][j]]);
        for p in 0..4 {
            t[p][j] = col[p];
        }
    }
    let mut r = [[m[0][0]; 4]; 4];
    for p in 0..4 {
        r[p] = a_t(t[p]);
    }
    r
}

/// Scalar lanes (the reference): wrapping integer arithmetic.
macro_rules! scalar_lanes {
    ($($t:ty),*) => {$(
        impl Lanes for $t {
            #[inline(always)]
            unsafe fn add(self, b: $t) -> $t {
                self.wrapping_add(b)
            }
            #[inline(always)]
            unsafe fn sub(self, b: $t) -> $t {
                self.wrapping_sub(b)
            }
            #[inline(always)]
            unsafe fn shl(self, n: u32) -> $t {
                self.wrapping_shl(n)
            }
        }
    )*};
}
scalar_lanes!(i16, i32);

/// `Y` from `R = s_p·s_q·Y` (mod 2^32), exact for |Y| < 2^25.
#[inline(always)]
pub(crate) fn recover(r: i32, p: usize, q: usize) -> i32 {
    r.wrapping_mul(INV9) >> (A2[p] + A2[q])
}

/// Input transform of a task's tiles into `v[ξ][tile][kp]`.
///
/// # Safety
/// `xp` holds every tile's 6x6 window; `isa` is supported.
pub(crate) unsafe fn input_tiles(isa: Isa, geo: &TileGeo, xp: &[u8], zx: u8, v: &mut [i16]) {
    assert!(v.len() >= 36 * geo.nt * geo.kp);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx => x86::input_512(geo, xp, zx, v),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni => x86::input_256(geo, xp, zx, v),
        _ => input_scalar(geo, xp, zx, v),
    }
}

fn input_scalar(geo: &TileGeo, xp: &[u8], zx: u8, v: &mut [i16]) {
    let kp = geo.kp;
    for tl in 0..geo.nt {
        let o = geo.origin(tl);
        for k in 0..kp {
            let mut d = [[0i16; 6]; 6];
            for (r, row) in d.iter_mut().enumerate() {
                for (c, e) in row.iter_mut().enumerate() {
                    *e = xp[o + (r * geo.wp + c) * kp + k] as i16 - zx as i16;
                }
            }
            // SAFETY: plain integer arithmetic.
            let t = unsafe { input_2d(&d) };
            for (xi, val) in t.iter().flatten().enumerate() {
                v[(xi * geo.nt + tl) * kp + k] = *val;
            }
        }
    }
}

/// `mr` tiles × `16·nv` output lanes: `m[r·ldm + j] = Σ_p v[r·kp + 2p..+2] · u[p][j][..2]`.
///
/// # Safety
/// `v` holds `mr` rows of `kp` i16, `u` `kp/2` rows of `16·nv` pairs, `m` `mr` rows of `ldm` i32.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro(
    isa: Isa,
    mr: usize,
    nv: usize,
    v: *const i16,
    kp: usize,
    u: *const i16,
    m: *mut i32,
    ldm: usize,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx => x86::micro_512(mr, nv, v, kp, u, m, ldm),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            for vi in 0..nv {
                x86::micro_256(mr, nv, vi, v, kp, u, m.add(vi * 16), ldm)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => {
            let vex = crate::isa::features().avxvnni;
            for vi in 0..nv {
                if vex {
                    x86::micro_256_vex(mr, nv, vi, v, kp, u, m.add(vi * 16), ldm)
                } else {
                    x86::micro_256_evex(mr, nv, vi, v, kp, u, m.add(vi * 16), ldm)
                }
            }
        }
        _ => micro_scalar(mr, nv, v, kp, u, m, ldm),
    }
}

unsafe fn micro_scalar(mr: usize, nv: usize, v: *const i16, kp: usize, u: *const i16, m: *mut i32, ldm: usize) {
    let wn = 16 * nv;
    for r in 0..mr {
        for j in 0..wn {
            let mut acc = 0i32;
            for p in 0..kp / 2 {
                for h in 0..2 {
                    let a = *v.add(r * kp + 2 * p + h) as i32;
                    let b = *u.add((p * wn + j) * 2 + h) as i32;
                    acc = acc.wrapping_add(a * b);
                }
            }
            *m.add(r * ldm + j) = acc;
        }
    }
}

/// Output transform, recovery and epilogue of a task's tiles for one block of output channels
/// (`m[tile][ξ][wn]`, the integer bias of `rq` added before the epilogue).
///
/// # Safety
/// `out` holds `oh·ow·c_out` elements of `rq.out`'s type; `isa` is supported.
pub(crate) unsafe fn output_tiles(isa: Isa, geo: &TileGeo, ob: &OutBlock, m: &[i32], rq: &Requant, out: OutPtr) {
    assert!(m.len() >= geo.nt * 36 * ob.wn);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx => x86::output_512(geo, ob, m, rq, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni => x86::output_256(geo, ob, m, rq, out),
        _ => output_scalar(geo, ob, m, rq, out),
    }
}

unsafe fn output_scalar(geo: &TileGeo, ob: &OutBlock, m: &[i32], rq: &Requant, out: OutPtr) {
    for tl in 0..geo.nt {
        for jl in 0..ob.wn.min(ob.c_out - ob.j0) {
            let j = ob.j0 + jl;
            let mut mm = [[0i32; 6]; 6];
            for (xi, e) in mm.iter_mut().flatten().enumerate() {
                *e = m[(tl * 36 + xi) * ob.wn + jl];
            }
            let r = output_2d(&mm);
            for (p, row) in r.iter().enumerate() {
                for (q, &val) in row.iter().enumerate() {
                    if let Some(pix) = geo.out_pixel(tl, p, q, ob.oh, ob.ow) {
                        // `store_one` adds the integer bias itself.
                        store_one(recover(val, p, q), j, rq, out.at(rq.out, pix, j, ob.c_out));
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{input_2d, output_2d, Lanes, OutBlock, TileGeo, A2, INV9};
    use crate::epilogue::{OutPtr, Requant};
    use crate::int8::avx2::store8;
    use crate::int8::avx512_epi::{mask, store16};

    #[derive(Clone, Copy)]
    struct Z16(__m512i);
    #[derive(Clone, Copy)]
    struct Z32(__m512i);
    #[derive(Clone, Copy)]
    struct Y16(__m256i);
    #[derive(Clone, Copy)]
    struct Y32(__m256i);

    macro_rules! lanes {
        ($t:ident, $add:ident, $sub:ident, $sll:ident) => {
            impl Lanes for $t {
                #[inline(always)]
                unsafe fn add(self, b: Self) -> Self {
                    $t($add(self.0, b.0))
                }
                #[inline(always)]
                unsafe fn sub(self, b: Self) -> Self {
                    $t($sub(self.0, b.0))
                }
                #[inline(always)]
                unsafe fn shl(self, n: u32) -> Self {
                    $t($sll(self.0, _mm_cvtsi32_si128(n as i32)))
                }
            }
        };
    }
    lanes!(Z16, _mm512_add_epi16, _mm512_sub_epi16, _mm512_sll_epi16);
    lanes!(Z32, _mm512_add_epi32, _mm512_sub_epi32, _mm512_sll_epi32);
    lanes!(Y16, _mm256_add_epi16, _mm256_sub_epi16, _mm256_sll_epi16);
    lanes!(Y32, _mm256_add_epi32, _mm256_sub_epi32, _mm256_sll_epi32);

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    pub(super) unsafe fn input_512(geo: &TileGeo, xp: &[u8], zx: u8, v: &mut [i16]) {
        let (kp, nt) = (geo.kp, geo.nt);
        let z = _mm512_set1_epi16(zx as i16);
        let x = xp.as_ptr();
        for tl in 0..nt {
            let o = geo.origin(tl);
            assert!(o + ((5 * geo.wp + 5) * kp) + kp <= xp.len());
            let mut k0 = 0;
            while k0 < kp {
                // 32 channels, or the last 16.
                let m: __mmask32 = if kp - k0 >= 32 { !0 } else { 0xFFFF };
                let mut d = [[Z16(z); 6]; 6];
                for (r, row) in d.iter_mut().enumerate() {
                    for (c, e) in row.iter_mut().enumerate() {
                        let p = x.add(o + (r * geo.wp + c) * kp + k0);
                        let b = _mm256_maskz_loadu_epi8(m, p as *const i8);
                        *e = Z16(_mm512_sub_epi16(_mm512_cvtepu8_epi16(b), z));
                    }
                }
                let t = input_2d(&d);
                for (xi, val) in t.iter().flatten().enumerate() {
                    let p = v.as_mut_ptr().add((xi * nt + tl) * kp + k0);
                    _mm512_mask_storeu_epi16(p, m, val.0);
                }
                k0 += 32;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_256(geo: &TileGeo, xp: &[u8], zx: u8, v: &mut [i16]) {
        let (kp, nt) = (geo.kp, geo.nt);
        let z = _mm256_set1_epi16(zx as i16);
        let x = xp.as_ptr();
        for tl in 0..nt {
            let o = geo.origin(tl);
            assert!(o + ((5 * geo.wp + 5) * kp) + kp <= xp.len());
            for k0 in (0..kp).step_by(16) {
                let mut d = [[Y16(z); 6]; 6];
                for (r, row) in d.iter_mut().enumerate() {
                    for (c, e) in row.iter_mut().enumerate() {
                        let p = x.add(o + (r * geo.wp + c) * kp + k0);
                        let b = _mm_loadu_si128(p as *const __m128i);
                        *e = Y16(_mm256_sub_epi16(_mm256_cvtepu8_epi16(b), z));
                    }
                }
                let t = input_2d(&d);
                for (xi, val) in t.iter().flatten().enumerate() {
                    let p = v.as_mut_ptr().add((xi * nt + tl) * kp + k0);
                    _mm256_storeu_si256(p as *mut __m256i, val.0);
                }
            }
        }
    }

    /// `acc + vpdpwssd(a, b)`. Written as assembly: LLVM rewrites the intrinsic into `vpmaddwd` +
    /// `vpaddd` for a generic x86-64 target, twice the instructions of the Winograd-domain GEMM
    /// (measured on an AMD EPYC with AVX-512 VNNI: 30% of U²-Netp's time in this kernel).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dpwssd512(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        let mut acc = acc;
        std::arch::asm!("vpdpwssd {acc}, {a}, {b}", acc = inout(zmm_reg) acc, a = in(zmm_reg) a, b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags));
        acc
    }

    /// The 256-bit form, for the same reason, in each encoding: VEX (AVX-VNNI, `{vex}` prefix) and
    /// EVEX (AVX-512 VNNI + VL; the assembler's default for this mnemonic).
    macro_rules! dpwssd256 {
        ($($name:ident, $feat:literal, $ins:literal;)*) => {$(
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn $name(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
                let mut acc = acc;
                std::arch::asm!($ins, acc = inout(ymm_reg) acc, a = in(ymm_reg) a, b = in(ymm_reg) b,
                    options(pure, nomem, nostack, preserves_flags));
                acc
            }
        )*};
    }
    dpwssd256! {
        dpwssd256_vex, "avx2,avxvnni", "{{vex}} vpdpwssd {acc}, {a}, {b}";
        dpwssd256_evex, "avx2,avx512f,avx512vl,avx512vnni", "vpdpwssd {acc}, {a}, {b}";
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn mk512<const R: usize, const V: usize>(v: *const i16, kp: usize, u: *const i16, m: *mut i32, ldm: usize) {
        let mut acc = [[_mm512_setzero_si512(); V]; R];
        let wn = 16 * V;
        for p in 0..kp / 2 {
            let ub = u.add(p * wn * 2);
            let mut w = [_mm512_setzero_si512(); V];
            for (j, wj) in w.iter_mut().enumerate() {
                *wj = _mm512_loadu_si512(ub.add(j * 32) as *const _);
            }
            for (r, ar) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_epi32((v.add(r * kp + 2 * p) as *const i32).read_unaligned());
                for j in 0..V {
                    ar[j] = dpwssd512(ar[j], a, w[j]);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (j, &aj) in ar.iter().enumerate() {
                _mm512_storeu_si512(m.add(r * ldm + j * 16) as *mut _, aj);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    pub(super) unsafe fn micro_512(
        mr: usize,
        nv: usize,
        v: *const i16,
        kp: usize,
        u: *const i16,
        m: *mut i32,
        ldm: usize,
    ) {
        macro_rules! by_rows {
            ($nv:literal) => {
                match mr {
                    6 => mk512::<6, $nv>(v, kp, u, m, ldm),
                    5 => mk512::<5, $nv>(v, kp, u, m, ldm),
                    4 => mk512::<4, $nv>(v, kp, u, m, ldm),
                    3 => mk512::<3, $nv>(v, kp, u, m, ldm),
                    2 => mk512::<2, $nv>(v, kp, u, m, ldm),
                    1 => mk512::<1, $nv>(v, kp, u, m, ldm),
                    _ => unreachable!("micro-kernel rows {mr}"),
                }
            };
        }
        match nv {
            4 => by_rows!(4),
            3 => by_rows!(3),
            2 => by_rows!(2),
            1 => by_rows!(1),
            _ => unreachable!("micro-kernel vectors {nv}"),
        }
    }

    /// `E`: 0 `vpmaddwd` + `vpaddd` (AVX2), 1 VEX `vpdpwssd ymm` (AVX-VNNI), 2 its EVEX form; same bits.
    #[inline(always)]
    unsafe fn mk256<const R: usize, const E: u8>(
        v: *const i16,
        kp: usize,
        u: *const i16,
        wn: usize,
        m: *mut i32,
        ldm: usize,
    ) {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for p in 0..kp / 2 {
            let ub = u.add(p * wn * 2);
            let w0 = _mm256_loadu_si256(ub as *const __m256i);
            let w1 = _mm256_loadu_si256(ub.add(16) as *const __m256i);
            for (r, ar) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_epi32((v.add(r * kp + 2 * p) as *const i32).read_unaligned());
                if E == 1 {
                    ar[0] = dpwssd256_vex(ar[0], a, w0);
                    ar[1] = dpwssd256_vex(ar[1], a, w1);
                } else if E == 2 {
                    ar[0] = dpwssd256_evex(ar[0], a, w0);
                    ar[1] = dpwssd256_evex(ar[1], a, w1);
                } else {
                    ar[0] = _mm256_add_epi32(ar[0], _mm256_madd_epi16(a, w0));
                    ar[1] = _mm256_add_epi32(ar[1], _mm256_madd_epi16(a, w1));
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            _mm256_storeu_si256(m.add(r * ldm) as *mut __m256i, ar[0]);
            _mm256_storeu_si256(m.add(r * ldm + 8) as *mut __m256i, ar[1]);
        }
    }

    /// Rows of [`mk256`] for `mr`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows256<const E: u8>(
        mr: usize,
        v: *const i16,
        kp: usize,
        u: *const i16,
        wn: usize,
        m: *mut i32,
        ldm: usize,
    ) {
        match mr {
            6 => mk256::<6, E>(v, kp, u, wn, m, ldm),
            5 => mk256::<5, E>(v, kp, u, wn, m, ldm),
            4 => mk256::<4, E>(v, kp, u, wn, m, ldm),
            3 => mk256::<3, E>(v, kp, u, wn, m, ldm),
            2 => mk256::<2, E>(v, kp, u, wn, m, ldm),
            1 => mk256::<1, E>(v, kp, u, wn, m, ldm),
            _ => unreachable!("micro-kernel rows {mr}"),
        }
    }

    /// The entry points of the 256-bit pair GEMM, one per encoding (they differ only in the
    /// features they are compiled for): lanes `16·vi..16·vi + 16` of [`super::micro`] (`m` already
    /// at that column).
    macro_rules! micro256 {
        ($($(#[$doc:meta])* $name:ident, $feat:literal, $e:literal;)*) => {$(
            $(#[$doc])*
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                mr: usize,
                nv: usize,
                vi: usize,
                v: *const i16,
                kp: usize,
                u: *const i16,
                m: *mut i32,
                ldm: usize,
            ) {
                rows256::<$e>(mr, v, kp, u.add(vi * 32), 16 * nv, m, ldm)
            }
        )*};
    }
    micro256! {
        /// AVX2 (`vpmaddwd` + `vpaddd`).
        micro_256, "avx2,fma", 0;
        /// `vpdpwssd ymm`, VEX-encoded (AVX-VNNI).
        micro_256_vex, "avx2,fma,avxvnni", 1;
        /// `vpdpwssd ymm`, EVEX-encoded (AVX-512 VNNI + VL).
        micro_256_evex, "avx2,fma,avx512f,avx512vl,avx512vnni", 2;
    }

    /// An output vector: [`Lanes`] on i32 plus the recovery and the requantizing store of its
    /// `W` channels.
    trait OutVec: Lanes {
        const W: usize;
        unsafe fn load(p: *const i32) -> Self;
        /// `Y = (R · 9⁻¹) >> shift`, the epilogue with the integer bias, stored for `valid` channels.
        unsafe fn finish(self, shift: u32, j: usize, rq: &Requant, p: *mut u8, valid: usize);
    }

    impl OutVec for Z32 {
        const W: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const i32) -> Z32 {
            Z32(_mm512_loadu_si512(p as *const _))
        }
        #[inline(always)]
        unsafe fn finish(self, shift: u32, j: usize, rq: &Requant, p: *mut u8, valid: usize) {
            let y = _mm512_mullo_epi32(self.0, _mm512_set1_epi32(INV9));
            let y = _mm512_sra_epi32(y, _mm_cvtsi32_si128(shift as i32));
            // `store16` expects the integer bias already added (`store8` adds it itself).
            let bi = _mm512_loadu_si512(rq.bias_i.as_ptr().add(j) as *const _);
            store16(_mm512_add_epi32(y, bi), j, rq, p, mask(valid));
        }
    }

    impl OutVec for Y32 {
        const W: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const i32) -> Y32 {
            Y32(_mm256_loadu_si256(p as *const __m256i))
        }
        #[inline(always)]
        unsafe fn finish(self, shift: u32, j: usize, rq: &Requant, p: *mut u8, valid: usize) {
            let y = _mm256_mullo_epi32(self.0, _mm256_set1_epi32(INV9));
            let y = _mm256_sra_epi32(y, _mm_cvtsi32_si128(shift as i32));
            store8(y, j, rq, p, valid.min(8));
        }
    }

    /// [`super::output_tiles`] on vectors of `V::W` channels.
    #[inline(always)]
    unsafe fn output_vec<V: OutVec>(geo: &TileGeo, ob: &OutBlock, m: &[i32], rq: &Requant, out: OutPtr) {
        for tl in 0..geo.nt {
            for vi in 0..ob.wn / V::W {
                let j = ob.j0 + vi * V::W;
                if j >= ob.c_out {
                    break;
                }
                let mm: [[V; 6]; 6] = std::array::from_fn(|i| {
                    std::array::from_fn(|c| V::load(m.as_ptr().add((tl * 36 + i * 6 + c) * ob.wn + vi * V::W)))
                });
                let r = output_2d(&mm);
                for (p, row) in r.iter().enumerate() {
                    for (q, val) in row.iter().enumerate() {
                        if let Some(pix) = geo.out_pixel(tl, p, q, ob.oh, ob.ow) {
                            val.finish(A2[p] + A2[q], j, rq, out.at(rq.out, pix, j, ob.c_out), ob.c_out - j);
                        }
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn output_512(geo: &TileGeo, ob: &OutBlock, m: &[i32], rq: &Requant, out: OutPtr) {
        output_vec::<Z32>(geo, ob, m, rq, out)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_256(geo: &TileGeo, ob: &OutBlock, m: &[i32], rq: &Requant, out: OutPtr) {
        output_vec::<Y32>(geo, ob, m, rq, out)
    }
}

#[cfg(test)]
#[path = "winograd_kern_tests.rs"]
mod tests;
