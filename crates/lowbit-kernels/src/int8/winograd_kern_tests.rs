//! Tests of the Winograd arithmetic ([`super`]): the transforms against the direct correlation,
//! every encoding of the pair GEMM against the scalar one.

use super::*;

/// Both encodings of the 256-bit `vpdpwssd` micro-kernel (the path runs only the one the CPU
/// prefers) and the AVX-512 one equal the scalar reference, at the i16 extremes too.
#[cfg(target_arch = "x86_64")]
#[test]
fn pair_gemm_encodings_match_scalar() {
    let f = crate::isa::features();
    let mut s = 99u64;
    let mut r = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as i32
    };
    for case in 0..40 {
        let (mr, nv, kp) = (1 + case % 6, 1 + case % 4, 16 * (1 + case % 5));
        let wn = 16 * nv;
        let ext = |x: i32| {
            if case % 3 == 0 {
                if x % 2 == 0 {
                    i16::MIN
                } else {
                    i16::MAX
                }
            } else {
                (x % 65536 - 32768) as i16
            }
        };
        let v: Vec<i16> = (0..mr * kp).map(|_| ext(r())).collect();
        let u: Vec<i16> = (0..kp * wn).map(|_| ext(r())).collect();
        let mut want = vec![0i32; mr * wn];
        // SAFETY: sizes as `micro` documents.
        unsafe { micro_scalar(mr, nv, v.as_ptr(), kp, u.as_ptr(), want.as_mut_ptr(), wn) };
        let check = |name: &str, run: &dyn Fn(*mut i32)| {
            let mut got = vec![0i32; mr * wn];
            run(got.as_mut_ptr());
            assert_eq!(got, want, "{name} mr {mr} nv {nv} kp {kp}");
        };
        let (vp, up) = (v.as_ptr(), u.as_ptr());
        if f.avx2 && f.fma && f.avx512f && f.avx512vl && f.avx512vnni {
            // SAFETY: the CPU has the features; sizes as documented.
            check("evex", &|m| unsafe {
                (0..nv).for_each(|vi| x86::micro_256_evex(mr, nv, vi, vp, kp, up, m.add(vi * 16), wn))
            });
            // SAFETY: as above.
            check("avx512", &|m| unsafe { x86::micro_512(mr, nv, vp, kp, up, m, wn) });
        }
        if f.avx2 && f.fma && f.avxvnni {
            // SAFETY: as above.
            check("vex", &|m| unsafe {
                (0..nv).for_each(|vi| x86::micro_256_vex(mr, nv, vi, vp, kp, up, m.add(vi * 16), wn))
            });
        }
        if f.avx2 && f.fma {
            // SAFETY: as above.
            check("avx2", &|m| unsafe {
                (0..nv).for_each(|vi| x86::micro_256(mr, nv, vi, vp, kp, up, m.add(vi * 16), wn))
            });
        }
    }
}

/// One tile through the scaled transforms equals the direct 3x3 correlation.
#[test]
fn transforms_compute_the_direct_correlation() {
    let mut s = 12345u64;
    let mut r = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as i32
    };
    for _ in 0..200 {
        let d: [[i32; 6]; 6] = std::array::from_fn(|_| std::array::from_fn(|_| r() % 511 - 255));
        let w: [[i32; 3]; 3] = std::array::from_fn(|_| std::array::from_fn(|_| r() % 256 - 128));
        let d16: [[i16; 6]; 6] = std::array::from_fn(|i| std::array::from_fn(|j| d[i][j] as i16));
        // SAFETY: integer arithmetic.
        let v = unsafe { input_2d(&d16) };
        let mut m = [[0i32; 6]; 6];
        for i in 0..6 {
            for j in 0..6 {
                let u: i32 =
                    (0..3).flat_map(|a| (0..3).map(move |b| (a, b))).map(|(a, b)| G[i][a] * w[a][b] * G[j][b]).sum();
                m[i][j] = u * v[i][j] as i32;
            }
        }
        // SAFETY: integer arithmetic.
        let y = unsafe { output_2d(&m) };
        for p in 0..4 {
            for q in 0..4 {
                let want: i32 =
                    (0..3).flat_map(|a| (0..3).map(move |b| (a, b))).map(|(a, b)| d[p + a][q + b] * w[a][b]).sum();
                assert_eq!(recover(y[p][q], p, q), want, "({p},{q})");
            }
        }
    }
}
