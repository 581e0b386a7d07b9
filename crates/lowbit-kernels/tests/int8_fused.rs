//! The fused expansion + depthwise step computes exactly what the two convolutions compute one
//! after the other, on every path, 1 and 2 threads: random channel counts off every vector width,
//! planes with one band and with many (rows carried between bands), strides 1 and 2, 3x3 and 5x5
//! windows, zero points at both ends, saturating outputs.

use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::int8::{Isa, Out, OutPtr, QConv, QExpandDw, Requant};
use proptest::prelude::*;

fn stream(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

fn requant(n: usize, r: &mut impl FnMut() -> u64, out: Out) -> Requant {
    let mut unit = || (r() % 1_000_000) as f32 / 1_000_000.0;
    let scale: Vec<f32> = (0..n).map(|_| 1e-4 + unit() * 0.05).collect();
    let bias_i: Vec<i32> = (0..n).map(|_| (unit() * 20000.0) as i32 - 10000).collect();
    let bias_f: Vec<f32> = (0..n).map(|_| if unit() < 0.5 { 0.0 } else { unit() - 0.5 }).collect();
    let (lo, hi) = if unit() < 0.5 { (0.0, f32::INFINITY) } else { (0.0, 6.0) };
    Requant::new(&scale, &bias_i, &bias_f, lo, hi, out)
}

/// A 1x1 stride-1 convolution on an `h`×`w` image.
fn pointwise(c_in: usize, c_out: usize, h: usize, w: usize) -> ConvGeom {
    ConvGeom { c_in, h, w, c_out, kh: 1, kw: 1, sh: 1, sw: 1, dh: 1, dw: 1, pt: 0, pl: 0, oh: h, ow: w, group: 1 }
}

#[allow(clippy::too_many_arguments)]
fn case(c_in: usize, c_mid: usize, h: usize, w: usize, k: usize, s: usize, zx: u8, zm: u8, f32_out: bool, seed: u64) {
    let mut r = stream(seed);
    let pad = k / 2;
    let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
    let ge = pointwise(c_in, c_mid, h, w);
    let gd = ConvGeom {
        c_in: c_mid,
        c_out: c_mid,
        kh: k,
        kw: k,
        sh: s,
        sw: s,
        pt: pad,
        pl: pad,
        oh,
        ow,
        group: c_mid,
        ..ge
    };
    let x: Vec<u8> = (0..h * w * c_in).map(|_| r() as u8).collect();
    let we: Vec<i8> = (0..c_mid * c_in).map(|_| r() as i8).collect();
    let wd: Vec<i8> = (0..c_mid * k * k).map(|_| r() as i8).collect();
    let mid = Out::Q { scale: [0.02, 0.5][(r() % 2) as usize], zp: zm as i32, qmin: 0, qmax: 255 };
    let re = requant(c_mid, &mut r, mid);
    let out = if f32_out { Out::F32 } else { Out::Q { scale: 0.05, zp: (r() % 256) as i32, qmin: 0, qmax: 255 } };
    let rd = requant(c_mid, &mut r, out);
    let esz = if f32_out { 4 } else { 1 };
    for isa in Isa::all_supported() {
        let e = QConv::new(isa, ge.clone(), &we, zx, re.clone());
        let d = QConv::new(isa, gd.clone(), &wd, zm, rd.clone());
        // Unfused: the expansion's whole output, then the depthwise convolution.
        let mut m = vec![0u8; h * w * c_mid];
        let mut want = vec![0u8; oh * ow * c_mid * esz];
        // SAFETY: buffers sized from the geometries; the path is supported.
        unsafe {
            e.run(&x, OutPtr(m.as_mut_ptr()), &mut [], 1);
            d.run(&m, OutPtr(want.as_mut_ptr()), &mut [], 1);
        }
        let f = QExpandDw::fuse(e, d).unwrap_or_else(|_| panic!("{}: not fused", isa.name()));
        for t in [1, 2] {
            let mut got = vec![0u8; want.len()];
            // SAFETY: as above.
            unsafe { f.run(&x, OutPtr(got.as_mut_ptr()), t) };
            assert!(got == want, "{} threads {t}: fused differs ({c_in}->{c_mid}, {h}x{w}, k{k} s{s})", isa.name());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn fused_expand_depthwise_matches_the_two_steps(c4 in 1usize..12, c_mid in 2usize..100, h in 1usize..40, w in 1usize..40,
                                                    k5 in any::<bool>(), s in 1usize..3,
                                                    zx in prop_oneof![Just(0u8), Just(255u8), any::<u8>()],
                                                    zm in prop_oneof![Just(0u8), Just(255u8), any::<u8>()],
                                                    f32_out in proptest::bool::weighted(0.2), seed in any::<u64>()) {
        case(4 * c4, c_mid, h, w, if k5 { 5 } else { 3 }, s, zx, zm, f32_out, seed);
    }
}

/// Planes large enough for many bands per thread (the rows two bands share are moved, not
/// recomputed), planes small enough to be expanded whole before the depthwise rows on two threads
/// (EfficientNet-Lite0's 5x5 blocks at 14x14 and 7x7), and a layer the fuse must refuse (an int8
/// expansion output).
#[test]
fn fused_over_many_bands_and_refusals() {
    case(16, 96, 112, 112, 3, 2, 7, 3, false, 1);
    case(24, 144, 96, 80, 3, 1, 128, 0, false, 2);
    case(40, 240, 60, 60, 5, 1, 0, 255, false, 3);
    case(112, 672, 14, 14, 5, 1, 3, 250, false, 4);
    case(192, 1152, 7, 7, 5, 1, 255, 0, false, 5);
    case(96, 576, 14, 14, 3, 2, 0, 17, false, 6);
    let g = pointwise(8, 8, 4, 4);
    let gd = ConvGeom { kh: 3, kw: 3, pt: 1, pl: 1, group: 8, ..g.clone() };
    let mut r = stream(9);
    let int8_mid = requant(8, &mut r, Out::Q { scale: 0.1, zp: 0, qmin: -128, qmax: 127 });
    let e = QConv::new(Isa::Scalar, g.clone(), &[1; 64], 0, int8_mid);
    let d = QConv::new(Isa::Scalar, gd.clone(), &[1; 72], 0, requant(8, &mut r, Out::F32));
    assert!(QExpandDw::fuse(e, d).is_err(), "an int8 (signed) expansion output is not the depthwise input");
    let u8_mid = requant(8, &mut r, Out::Q { scale: 0.1, zp: 5, qmin: 0, qmax: 255 });
    let e = QConv::new(Isa::Scalar, g.clone(), &[1; 64], 0, u8_mid);
    let d = QConv::new(Isa::Scalar, gd, &[1; 72], 6, requant(8, &mut r, Out::F32));
    assert!(QExpandDw::fuse(e, d).is_err(), "the depthwise pads with another zero point");
}
