//! Binary convolution: every path this CPU supports against the scalar path, bit for bit, and the
//! scalar path against a naive `±1` convolution over a zero-padded input, on random shapes
//! (channels not a multiple of 64, output channels not a multiple of the panel, 1x1/3x3/5x5,
//! strides, dilation, asymmetric padding), zero points at the extremes and saturating outputs.

use lowbit_kernels::binary::{pack_f32_nchw, pack_u8, words, BinConv, BinIsa};
use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::int8::{epilogue_f32, quantize_one, Out, OutPtr, Requant};
use proptest::prelude::*;

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

fn requant(n: usize, seed: u64, f32_out: bool) -> Requant {
    let mut r = rng(seed);
    let mut unit = move || (r() % 1_000_000) as f32 / 1_000_000.0;
    let scale: Vec<f32> =
        (0..n).map(|_| if unit() < 0.5 { 1e-3 + unit() * 0.05 } else { 0.5 + unit() * 4.0 }).collect();
    let bias_f: Vec<f32> = (0..n).map(|_| if unit() < 0.3 { 0.0 } else { (unit() - 0.5) * 8.0 }).collect();
    let (lo, hi) = if unit() < 0.5 { (f32::NEG_INFINITY, f32::INFINITY) } else { (-1.0, 1.0) };
    let out = if f32_out {
        Out::F32
    } else {
        let s = [1e-3, 0.02, 0.5][(unit() * 3.0) as usize % 3];
        if unit() < 0.7 {
            Out::Q { scale: s, zp: [0, 255, 128, 3][(unit() * 4.0) as usize % 4], qmin: 0, qmax: 255 }
        } else {
            Out::Q { scale: s, zp: [-128, 127, 0][(unit() * 3.0) as usize % 3], qmin: -128, qmax: 127 }
        }
    };
    Requant::new(&scale, &vec![0; n], &bias_f, lo, hi, out)
}

#[derive(Debug, Clone)]
struct Case {
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    dil: usize,
    pads: [usize; 4],
    zp: u8,
    /// The accumulator multiplier (a binarized input stored as ±mul).
    mul: i32,
    f32_out: bool,
    seed: u64,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![1usize, 3, 17, 63, 64, 65, 130, 256]),
        prop::sample::select(vec![1usize, 5, 16, 31, 33, 70]),
        1usize..11,
        1usize..11,
        prop::sample::select(vec![1usize, 3, 5]),
        1usize..3,
        1usize..3,
        (0usize..3, 0usize..3, 0usize..3, 0usize..3),
        (prop::sample::select(vec![0u8, 1, 128, 200, 255]), prop::sample::select(vec![1i32, 64, 127])),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(c_in, c_out, h, w, k, stride, dil, p, (zp, mul), f32_out, seed)| Case {
            c_in,
            c_out,
            h,
            w,
            k,
            stride,
            dil,
            pads: [p.0, p.1, p.2, p.3],
            zp,
            mul,
            f32_out,
            seed,
        })
}

fn geom(c: &Case) -> Option<ConvGeom> {
    let ek = (c.k - 1) * c.dil + 1;
    let (hp, wp) = (c.h + c.pads[0] + c.pads[2], c.w + c.pads[1] + c.pads[3]);
    if hp < ek || wp < ek {
        return None;
    }
    Some(ConvGeom {
        c_in: c.c_in,
        h: c.h,
        w: c.w,
        c_out: c.c_out,
        kh: c.k,
        kw: c.k,
        sh: c.stride,
        sw: c.stride,
        dh: c.dil,
        dw: c.dil,
        pt: c.pads[0],
        pl: c.pads[1],
        oh: (hp - ek) / c.stride + 1,
        ow: (wp - ek) / c.stride + 1,
        group: 1,
    })
}

fn inputs(c: &Case, g: &ConvGeom) -> (Vec<u8>, Vec<i8>) {
    let mut r = rng(c.seed);
    let x: Vec<u8> = (0..g.h * g.w * g.c_in)
        .map(|_| match r() % 6 {
            0 => c.zp,
            1 => 0,
            2 => 255,
            _ => (r() >> 9) as u8,
        })
        .collect();
    let w: Vec<i8> = (0..g.c_out * g.c_in * g.kh * g.kw).map(|_| if r() % 2 == 0 { 1 } else { -1 }).collect();
    (x, w)
}

/// Runs one path; bytes of the output (f32 as bytes).
fn run(isa: BinIsa, g: &ConvGeom, x: &[u8], zp: u8, w: &[i8], mul: i32, rq: &Requant, threads: usize) -> Vec<u8> {
    let conv = BinConv::new(isa, g.clone(), w, mul, rq.clone()).unwrap();
    let n = g.oh * g.ow * g.c_out;
    let elem = if rq.out == Out::F32 { 4 } else { 1 };
    let mut out = vec![0u8; n * elem + 64];
    let mut scratch = vec![0u64; conv.scratch_words()];
    // SAFETY: `out` holds n elements; the path is supported (checked by the caller).
    unsafe { conv.run_u8(x, zp, OutPtr(out.as_mut_ptr()), &mut scratch, threads) };
    out.truncate(n * elem);
    out
}

/// The definition: Σ over in-bounds taps of sign(x - zp) · w, padding contributing 0, then the
/// int8 epilogue.
fn naive(g: &ConvGeom, x: &[u8], zp: u8, w: &[i8], mul: i32, rq: &Requant) -> Vec<u8> {
    let mut out = vec![];
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            for n in 0..g.c_out {
                let mut acc = 0i32;
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let iy = (oy * g.sh + ky * g.dh) as isize - g.pt as isize;
                        let ix = (ox * g.sw + kx * g.dw) as isize - g.pl as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        for ci in 0..g.c_in {
                            let xv = x[(iy as usize * g.w + ix as usize) * g.c_in + ci];
                            let s = if xv >= zp { 1 } else { -1 };
                            acc += s * w[((n * g.c_in + ci) * g.kh + ky) * g.kw + kx] as i32;
                        }
                    }
                }
                let y = epilogue_f32(acc * mul, n, rq);
                match rq.out {
                    Out::F32 => out.extend(y.to_ne_bytes()),
                    Out::Q { scale, zp, qmin, qmax } => out.push(quantize_one(y, scale, zp, qmin, qmax) as u8),
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]
    #[test]
    fn every_path_matches_the_definition_bit_for_bit(c in cases()) {
        let Some(g) = geom(&c) else { return Ok(()) };
        let (x, w) = inputs(&c, &g);
        let rq = requant(g.c_out, c.seed ^ 0x55, c.f32_out);
        let want = naive(&g, &x, c.zp, &w, c.mul, &rq);
        for isa in BinIsa::all_supported() {
            for threads in [1, 2] {
                let got = run(isa, &g, &x, c.zp, &w, c.mul, &rq, threads);
                prop_assert!(got == want, "{:?} threads {} differs on {:?}", isa, threads, c);
            }
            // The same input as f32 NCHW (`x - zp`: negative exactly where `x < zp`).
            let mut xf = vec![0f32; x.len()];
            for p in 0..g.h * g.w {
                for ch in 0..g.c_in {
                    xf[ch * g.h * g.w + p] = x[p * g.c_in + ch] as f32 - c.zp as f32;
                }
            }
            let conv = BinConv::new(isa, g.clone(), &w, c.mul, rq.clone()).unwrap();
            let elem = if rq.out == Out::F32 { 4 } else { 1 };
            let mut out = vec![0u8; want.len() + 64];
            let mut scratch = vec![0u64; conv.scratch_words()];
            // SAFETY: `out` holds the output; the path is supported.
            unsafe { conv.run_f32_nchw(&xf, OutPtr(out.as_mut_ptr()), &mut scratch, 1) };
            out.truncate(g.oh * g.ow * g.c_out * elem);
            prop_assert!(out == want, "{:?} f32 input differs on {:?}", isa, c);
        }
    }
}

#[test]
fn packing_puts_negative_values_in_set_bits() {
    let c = 70;
    let x: Vec<u8> = (0..2 * c).map(|i| (i * 7 % 256) as u8).collect();
    let mut out = vec![0u64; 2 * words(c)];
    pack_u8(&x, 2, c, 100, &mut out);
    for p in 0..2 {
        for ch in 0..c {
            let bit = out[p * words(c) + ch / 64] >> (ch % 64) & 1;
            assert_eq!(bit == 1, x[p * c + ch] < 100, "pixel {p} channel {ch}");
        }
        // Unused high bits stay clear.
        assert_eq!(out[p * words(c) + 1] >> (c - 64), 0);
    }
    // f32 NCHW: zero is +1 (bit clear), negatives set.
    let xf = [-1.0f32, 0.0, 2.0, -0.0, -3.0, 5.0];
    let mut o = vec![0u64; 3];
    pack_f32_nchw(&xf, 3, 2, &mut o);
    assert_eq!(o, vec![0b01, 0b10, 0b00]);
}

#[test]
fn forcing_an_unknown_path_is_an_error() {
    assert!(BinIsa::parse("neon").is_err());
    assert_eq!(BinIsa::parse("avx512").unwrap(), BinIsa::Avx512);
}
