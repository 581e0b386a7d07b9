//! The Winograd kernels per path ([`crate::int8::winograd`]): the input transform, the 16-bit
//! pair GEMM micro-kernel and the output transform with the requantizing epilogue. The scalar
//! versions are the reference; AVX-512 uses `vpdpwssd` on 16 lanes, AVX2 (and the 256-bit VNNI
//! path) `vpmaddwd` + `vpaddd` on 8. All integer, so every path computes the same bits.

use crate::epilogue::{OutPtr, Requant};
use crate::int8::scalar::store_one;
use crate::int8::winograd::{input_2d, output_2d, recover, OutBlock, TileGeo};
use crate::isa::Isa;

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
        Isa::Avx2 | Isa::AvxVnni => {
            for vi in 0..nv {
                x86::micro_256(mr, nv, vi, v, kp, u, m.add(vi * 16), ldm)
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

    use crate::epilogue::{OutPtr, Requant};
    use crate::int8::avx2::store8;
    use crate::int8::avx512::{mask, store16};
    use crate::int8::winograd::{input_2d, output_2d, Lanes, OutBlock, TileGeo, A2, INV9};

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

    #[inline(always)]
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
                    ar[j] = _mm512_dpwssd_epi32(ar[j], a, w[j]);
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

    #[inline(always)]
    unsafe fn mk256<const R: usize>(v: *const i16, kp: usize, u: *const i16, wn: usize, m: *mut i32, ldm: usize) {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for p in 0..kp / 2 {
            let ub = u.add(p * wn * 2);
            let w0 = _mm256_loadu_si256(ub as *const __m256i);
            let w1 = _mm256_loadu_si256(ub.add(16) as *const __m256i);
            for (r, ar) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_epi32((v.add(r * kp + 2 * p) as *const i32).read_unaligned());
                ar[0] = _mm256_add_epi32(ar[0], _mm256_madd_epi16(a, w0));
                ar[1] = _mm256_add_epi32(ar[1], _mm256_madd_epi16(a, w1));
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            _mm256_storeu_si256(m.add(r * ldm) as *mut __m256i, ar[0]);
            _mm256_storeu_si256(m.add(r * ldm + 8) as *mut __m256i, ar[1]);
        }
    }

    /// Lanes `16·vi..16·vi + 16` of [`super::micro`] (`m` already at that column).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn micro_256(
        mr: usize,
        nv: usize,
        vi: usize,
        v: *const i16,
        kp: usize,
        u: *const i16,
        m: *mut i32,
        ldm: usize,
    ) {
        let (wn, u) = (16 * nv, u.add(vi * 32));
        match mr {
            6 => mk256::<6>(v, kp, u, wn, m, ldm),
            5 => mk256::<5>(v, kp, u, wn, m, ldm),
            4 => mk256::<4>(v, kp, u, wn, m, ldm),
            3 => mk256::<3>(v, kp, u, wn, m, ldm),
            2 => mk256::<2>(v, kp, u, wn, m, ldm),
            1 => mk256::<1>(v, kp, u, wn, m, ldm),
            _ => unreachable!("micro-kernel rows {mr}"),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    pub(super) unsafe fn output_512(geo: &TileGeo, ob: &OutBlock, m: &[i32], rq: &Requant, out: OutPtr) {
        let inv9 = _mm512_set1_epi32(INV9);
        for tl in 0..geo.nt {
            for vi in 0..ob.wn / 16 {
                let j = ob.j0 + vi * 16;
                if j >= ob.c_out {
                    break;
                }
                let mut mm = [[Z32(inv9); 6]; 6];
                for (xi, e) in mm.iter_mut().flatten().enumerate() {
                    *e = Z32(_mm512_loadu_si512(m.as_ptr().add((tl * 36 + xi) * ob.wn + vi * 16) as *const _));
                }
                let r = output_2d(&mm);
                let bi = _mm512_loadu_si512(rq.bias_i.as_ptr().add(j) as *const _);
                let msk = mask(ob.c_out - j);
                for (p, row) in r.iter().enumerate() {
                    for (q, val) in row.iter().enumerate() {
                        if let Some(pix) = geo.out_pixel(tl, p, q, ob.oh, ob.ow) {
                            let y = _mm512_mullo_epi32(val.0, inv9);
                            let y = _mm512_sra_epi32(y, _mm_cvtsi32_si128((A2[p] + A2[q]) as i32));
                            store16(_mm512_add_epi32(y, bi), j, rq, out.at(rq.out, pix, j, ob.c_out), msk);
                        }
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_256(geo: &TileGeo, ob: &OutBlock, m: &[i32], rq: &Requant, out: OutPtr) {
        let inv9 = _mm256_set1_epi32(INV9);
        for tl in 0..geo.nt {
            for vi in 0..ob.wn / 8 {
                let j = ob.j0 + vi * 8;
                if j >= ob.c_out {
                    break;
                }
                let mut mm = [[Y32(inv9); 6]; 6];
                for (xi, e) in mm.iter_mut().flatten().enumerate() {
                    *e = Y32(_mm256_loadu_si256(m.as_ptr().add((tl * 36 + xi) * ob.wn + vi * 8) as *const __m256i));
                }
                let r = output_2d(&mm);
                let valid = (ob.c_out - j).min(8);
                for (p, row) in r.iter().enumerate() {
                    for (q, val) in row.iter().enumerate() {
                        if let Some(pix) = geo.out_pixel(tl, p, q, ob.oh, ob.ow) {
                            let y = _mm256_mullo_epi32(val.0, inv9);
                            let y = _mm256_sra_epi32(y, _mm_cvtsi32_si128((A2[p] + A2[q]) as i32));
                            // `store8` adds the integer bias itself (`store16` does not).
                            store8(y, j, rq, out.at(rq.out, pix, j, ob.c_out), valid);
                        }
                    }
                }
            }
        }
    }
}
