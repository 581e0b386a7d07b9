//! Every integer path this CPU supports against the scalar path, bit for bit, on random shapes
//! (ragged K and N, 1x1/3x3/5x5, strides, dilation, groups, depthwise, padding), zero points at
//! the extremes and outputs that saturate; and the convolution driver against a naive
//! definition of the arithmetic contract.

use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::int8::{self, epilogue_f32, quantize_one, Isa, Out, OutPtr, PackedB, QConv, Requant};
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

/// Random epilogue: scales from tiny to large (so outputs saturate), extreme zero points.
fn requant(n: usize, seed: u64, f32_out: bool) -> Requant {
    let mut r = rng(seed);
    let mut unit = move || (r() % 1_000_000) as f32 / 1_000_000.0;
    let scale: Vec<f32> = (0..n).map(|_| 1e-4 + unit() * 0.05).collect();
    let bias_i: Vec<i32> = (0..n).map(|_| (unit() * 20000.0) as i32 - 10000).collect();
    let bias_f: Vec<f32> = (0..n).map(|_| if unit() < 0.5 { 0.0 } else { unit() - 0.5 }).collect();
    // A third of the cases: what a quantized ReLU network mostly has, and what the kernels
    // specialise (integer bias only, a clamp the output range implies, full-range unsigned bytes).
    if !f32_out && unit() < 0.33 {
        let s = [1e-3, 0.02, 0.5][(unit() * 3.0) as usize % 3];
        let lo = if unit() < 0.5 { 0.0 } else { f32::NEG_INFINITY };
        // Sometimes a ReLU6 bound inside the output range: the clamp is then applied (the GEMM's
        // clamped common epilogue), otherwise implied by the saturation.
        let hi = if unit() < 0.3 { 6.0 } else { f32::INFINITY };
        // Mostly a ReLU into zero point 0 (the clamp implied), sometimes into a higher zero point
        // (the lower clamp applied).
        let zp = if lo == 0.0 { [0, 0, 3, 128][(unit() * 4.0) as usize % 4] } else { 128 };
        let out = Out::Q { scale: s, zp, qmin: 0, qmax: 255 };
        return Requant::new(&scale, &bias_i, &vec![0.0; n], lo, hi, out);
    }
    let pick = unit();
    let (lo, hi) = if pick < 0.3 {
        (f32::NEG_INFINITY, f32::INFINITY)
    } else if pick < 0.6 {
        (0.0, f32::INFINITY)
    } else {
        (0.0, 6.0)
    };
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
    Requant::new(&scale, &bias_i, &bias_f, lo, hi, out)
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut r = rng(seed);
    // Mix of uniform values and the extremes.
    (0..n)
        .map(|_| {
            let v = r();
            match v % 8 {
                0 => 0,
                1 => 255,
                _ => (v >> 8) as u8,
            }
        })
        .collect()
}

fn weights(n: usize, seed: u64) -> Vec<i8> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            let v = r();
            match v % 8 {
                0 => -128,
                1 => 127,
                _ => (v >> 8) as u8 as i8,
            }
        })
        .collect()
}

fn out_len(rq: &Requant, n: usize) -> usize {
    match rq.out {
        Out::F32 => n * 4,
        Out::Q { .. } => n,
    }
}

fn run_gemm(isa: Isa, m: usize, n: usize, k: usize, a: &[u8], lda: usize, w: &[i8], rq: &Requant, t: usize) -> Vec<u8> {
    let b = PackedB::new(isa, k, n, |kk, j| w[kk * n + j]);
    let mut out = vec![0u8; out_len(rq, m * n)];
    // SAFETY: a has (m-1)*lda + k4 bytes, out m*n elements; isa supported (checked by callers).
    unsafe { int8::gemm(m, a.as_ptr(), lda, &b, rq, OutPtr(out.as_mut_ptr()), n, t) };
    out
}

fn gemm_case(m: usize, n: usize, k: usize, extra: usize, seed: u64, f32_out: bool) -> Result<(), TestCaseError> {
    let k4 = k.div_ceil(4) * 4;
    let lda = k4 + extra;
    let a = bytes((m - 1) * lda + k4, seed);
    let w = weights(k * n, seed ^ 1);
    let rq = requant(n, seed ^ 2, f32_out);
    let want = run_gemm(Isa::Scalar, m, n, k, &a, lda, &w, &rq, 1);
    // the scalar path itself against the plain definition
    for i in 0..m {
        for j in 0..n {
            let acc: i32 = (0..k).map(|kk| a[i * lda + kk] as i32 * w[kk * n + j] as i32).sum();
            let y = epilogue_f32(acc, j, &rq);
            match rq.out {
                Out::F32 => prop_assert_eq!(&want[(i * n + j) * 4..(i * n + j) * 4 + 4], &y.to_le_bytes()[..]),
                Out::Q { scale, zp, qmin, qmax } => {
                    prop_assert_eq!(want[i * n + j], quantize_one(y, scale, zp, qmin, qmax) as u8)
                }
            }
        }
    }
    for isa in Isa::all_supported() {
        for t in [1, 2] {
            let got = run_gemm(isa, m, n, k, &a, lda, &w, &rq, t);
            prop_assert!(got == want, "{} threads={} differs from scalar (m={} n={} k={})", isa.name(), t, m, n, k);
        }
    }
    Ok(())
}

/// A convolution on every path against its definition, `pads.0` before and `pads.1` after the image
/// on both axes.
#[allow(clippy::too_many_arguments)]
fn conv_case(
    ci_g: usize,
    co_g: usize,
    groups: usize,
    dw: bool,
    k: usize,
    stride: usize,
    dil: usize,
    pads: (usize, usize),
    h: usize,
    w: usize,
    zx: u8,
    seed: u64,
    f32_out: bool,
) -> Result<(), TestCaseError> {
    let (pad, pad_end) = pads;
    let (c_in, c_out, group) = if dw { (ci_g * 3, ci_g * 3, ci_g * 3) } else { (ci_g * groups, co_g * groups, groups) };
    let ext = (k - 1) * dil + 1;
    if h + pad + pad_end < ext || w + pad + pad_end < ext {
        return Ok(());
    }
    let oh = (h + pad + pad_end - ext) / stride + 1;
    let ow = (w + pad + pad_end - ext) / stride + 1;
    let geom = ConvGeom {
        c_in,
        h,
        w,
        c_out,
        kh: k,
        kw: k,
        sh: stride,
        sw: stride,
        dh: dil,
        dw: dil,
        pt: pad,
        pl: pad,
        oh,
        ow,
        group,
    };
    let x = bytes(h * w * c_in, seed);
    let cig = c_in / group;
    let wt = weights(c_out * cig * k * k, seed ^ 5);
    let rq = requant(c_out, seed ^ 6, f32_out);
    // the definition: Σ (x - zx)·w over the window, padding contributing nothing
    let mut want = vec![0u8; out_len(&rq, oh * ow * c_out)];
    let cog = c_out / group;
    for oy in 0..oh {
        for ox in 0..ow {
            for co in 0..c_out {
                let gi = co / cog;
                let mut acc = 0i32;
                for ci in 0..cig {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * stride + ky * dil) as isize - pad as isize;
                            let ix = (ox * stride + kx * dil) as isize - pad as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                let xv = x[(iy as usize * w + ix as usize) * c_in + gi * cig + ci] as i32 - zx as i32;
                                acc += xv * wt[((co * cig + ci) * k + ky) * k + kx] as i32;
                            }
                        }
                    }
                }
                let y = epilogue_f32(acc, co, &rq);
                let o = (oy * ow + ox) * c_out + co;
                match rq.out {
                    Out::F32 => want[o * 4..o * 4 + 4].copy_from_slice(&y.to_le_bytes()),
                    Out::Q { scale, zp, qmin, qmax } => want[o] = quantize_one(y, scale, zp, qmin, qmax) as u8,
                }
            }
        }
    }
    // Every path as the plan would choose, and stride-1 3x3 windows also as integer Winograd on
    // every path (scalar included) wherever its exactness bound admits them.
    let wino_shape = k == 3 && stride == 1 && dil == 1 && group == 1;
    let mut variants = vec![];
    for isa in Isa::all_supported() {
        variants.push(QConv::new(isa, geom.clone(), &wt, zx, rq.clone()));
        if wino_shape {
            let qc = QConv::with_winograd(isa, geom.clone(), &wt, zx, rq.clone(), true);
            let bound = int8::winograd::Winograd::exact_for(&geom, &wt, zx);
            prop_assert_eq!(qc.kernel_name().contains("winograd"), bound);
            variants.push(qc);
        }
    }
    for qc in variants {
        let isa = qc.isa();
        let mut scratch = vec![0u8; qc.scratch_len()];
        for t in [1, 2] {
            let mut got = vec![0u8; want.len()];
            // SAFETY: buffers sized from the geometry; isa supported.
            unsafe { qc.run(&x, OutPtr(got.as_mut_ptr()), &mut scratch, t) };
            prop_assert!(
                got == want,
                "{} ({}) threads={} differs from the definition: {:?} first at {:?}",
                isa.name(),
                qc.kernel_name(),
                t,
                geom,
                got.iter().zip(&want).position(|(a, b)| a != b).map(|i| (i, got[i], want[i]))
            );
        }
    }
    Ok(())
}

/// GEMMs the thread split cuts into row chunks whose last one takes a remainder (a 7x7 plane's 49
/// rows as 24 + 25 on two threads, 196 rows of a 14x14 plane, 3136 of a 56x56 one) give the scalar
/// path's bytes on every path and thread count.
#[test]
fn gemm_row_chunks_with_remainders_match_scalar() {
    for (m, n, k) in [(49, 320, 96), (49, 160, 960), (196, 96, 576), (3136, 24, 16), (25, 64, 600)] {
        gemm_case(m, n, k, 0, (m * n + k) as u64, false).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn gemm_paths_match_scalar(m in 1usize..40, n in 1usize..150, k in 1usize..300, extra in 0usize..9,
                               seed in any::<u64>(), f32_out in proptest::bool::weighted(0.2)) {
        gemm_case(m, n, k, extra, seed, f32_out)?;
    }

    #[test]
    fn conv_paths_match_definition(ci_g in 1usize..20, co_g in 1usize..40, groups in 1usize..4, dw in any::<bool>(),
                                   ksel in 0usize..3, stride in 1usize..3, dil in 1usize..3, pad in 0usize..3,
                                   h in 1usize..12, w in 1usize..36, zx in prop_oneof![Just(0u8), Just(255u8), Just(128u8), any::<u8>()],
                                   seed in any::<u64>(), f32_out in proptest::bool::weighted(0.2)) {
        conv_case(ci_g, co_g, groups, dw, [1, 3, 5][ksel], stride, dil, (pad, pad), h, w, zx, seed, f32_out)?;
    }
}

// Depthwise convolutions of any channel count (one input and output channel per group), above all
// 16 and 32 channels, which the AVX-512 kernel computes 4 or 2 output pixels per vector at stride 1
// in a 3x3 window: every remainder of the row width, pads before and after, one-row images.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn depthwise_paths_match_definition(c in prop_oneof![Just(16usize), Just(32usize), 1usize..100], ksel in 0usize..3,
                                        stride in prop_oneof![Just(1usize), Just(2usize)], pad in 0usize..2,
                                        pad_end in 0usize..2, h in 1usize..9, w in 1usize..40,
                                        zx in prop_oneof![Just(0u8), Just(255u8), any::<u8>()],
                                        seed in any::<u64>(), f32_out in proptest::bool::weighted(0.1)) {
        conv_case(1, 1, c, false, [3, 3, 5][ksel], stride, 1, (pad, pad_end), h, w, zx, seed, f32_out)?;
    }
}

// Larger shapes, fewer cases: reductions over more than one AMX K block (2 KB) and more than one
// 128-row super block, and convolutions whose taps are whole 64-byte chunks (direct tile loads;
// rows 28 or more wide run as shifted-rows GEMMs, one tap per window position).
proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn large_gemm_paths_match_scalar(m in 100usize..300, n in 1usize..80, k in 480usize..2700, extra in 0usize..9,
                                     seed in any::<u64>(), f32_out in proptest::bool::weighted(0.2)) {
        gemm_case(m, n, k, extra, seed, f32_out)?;
    }

    #[test]
    fn wide_conv_paths_match_definition(cmul in 1usize..4, co_g in 1usize..70, ksel in 0usize..2, stride in 1usize..3,
                                        pad in 0usize..2, h in 1usize..6, w in 1usize..40,
                                        zx in prop_oneof![Just(0u8), Just(255u8), any::<u8>()],
                                        seed in any::<u64>(), f32_out in proptest::bool::weighted(0.2)) {
        conv_case(64 * cmul, co_g, 1, false, [1, 3, 5][ksel], stride, 1, (pad, pad), h, w, zx, seed, f32_out)?;
    }
}

// Stride-2 windows on 1 to 4 input channels run as space to depth (the 7x7 stem; on AVX-512 VNNI
// also 3x3 and 4x4 windows, the MobileNet/CenterFace stem); with 2 to 4
// channels and a window 7 or 8 wide the AMX packing makes each window row one 64-byte tile row (4
// blocks of 16 bytes), with 1 channel or other widths reductions cross taps. Odd and even sizes,
// symmetric and asymmetric padding (up to the window), images down to one output row, the extreme
// zero points, rows past one AMX super block.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn space_to_depth_conv_paths_match_definition(c_in in 1usize..5, co in 1usize..70, k in 3usize..12, pad in 0usize..6,
                                                  pad_end in 0usize..6, h in 3usize..40, w in 3usize..40,
                                                  zx in prop_oneof![Just(0u8), Just(255u8), any::<u8>()],
                                                  seed in any::<u64>(), f32_out in proptest::bool::weighted(0.2)) {
        conv_case(c_in, co, 1, false, k, 2, 1, (pad, pad_end), h, w, zx, seed, f32_out)?;
    }
}

// 1 to 4 output channels at stride 1 run along the reduction on every SIMD path (`int8 narrow conv`):
// input channels not a multiple of 4 (padded), over 64 (a masked last chunk; 4-12 bytes on AVX2), 1x1 windows on such
// channels, rows in blocks of 16 and single rows, the extreme zero points.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn narrow_conv_paths_match_definition(ci in 1usize..140, co in 1usize..5, ksel in 0usize..3, pad in 0usize..3,
                                          h in 1usize..9, w in 1usize..40,
                                          zx in prop_oneof![Just(0u8), Just(255u8), any::<u8>()],
                                          seed in any::<u64>(), f32_out in proptest::bool::weighted(0.3)) {
        conv_case(ci, co, 1, false, [1, 3, 5][ksel], 1, 1, (pad, pad), h, w, zx, seed, f32_out)?;
    }
}

// Stride-1 3x3 windows as integer Winograd F(4x4, 3x3): input channels past one 32-channel chunk
// with a 16-channel tail, output channels past one 64-channel block with 16-48 lane tails, ragged
// tiles (images not a multiple of 4, down to one pixel), pads 0 to 2, the extreme zero points.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn winograd_conv_paths_match_definition(ci in 1usize..90, co in 1usize..150, pad in 0usize..3,
                                            h in 1usize..19, w in 1usize..19,
                                            zx in prop_oneof![Just(0u8), Just(255u8), any::<u8>()],
                                            seed in any::<u64>(), f32_out in proptest::bool::weighted(0.2)) {
        conv_case(ci, co, 1, false, 3, 1, 1, (pad, pad), h, w, zx, seed, f32_out)?;
    }
}

/// The exactness bound: `Σ|w|·max|x - zx| < 2^25` per output channel. At the bound the recovery
/// `(s²·Y)·9⁻¹ >> a` would lose the top bits, so such a layer must stay on the direct kernels.
#[test]
fn winograd_admits_only_layers_within_its_bound() {
    let g = |c_in| ConvGeom {
        c_in,
        h: 8,
        w: 8,
        c_out: 2,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        pt: 1,
        pl: 1,
        oh: 8,
        ow: 8,
        group: 1,
    };
    // 2^25 / (127·255) = 1036.2 taps of |w| = 127 with zx = 0: 115 channels (1035 taps) fit, 116 do not.
    assert!(int8::winograd::Winograd::exact_for(&g(115), &vec![127; 2 * 115 * 9], 0));
    assert!(!int8::winograd::Winograd::exact_for(&g(116), &vec![-127; 2 * 116 * 9], 0));
    // max|x - zx| is 255 at either extreme zero point and 128 at 127.
    assert!(!int8::winograd::Winograd::exact_for(&g(116), &vec![127; 2 * 116 * 9], 255));
    assert!(int8::winograd::Winograd::exact_for(&g(200), &vec![127; 2 * 200 * 9], 127));
    // Only 3x3, stride 1, one group.
    let mut s2 = g(8);
    s2.sh = 2;
    assert!(!int8::winograd::Winograd::exact_for(&s2, &[1; 2 * 8 * 9], 0));
}

#[test]
fn few_output_channels_run_along_the_reduction() {
    let g = ConvGeom {
        c_in: 64,
        h: 20,
        w: 30,
        c_out: 1,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        pt: 1,
        pl: 1,
        oh: 20,
        ow: 30,
        group: 1,
    };
    let rq = requant(1, 3, false);
    for isa in Isa::all_supported() {
        let qc = QConv::new(isa, g.clone(), &weights(64 * 9, 4), 7, rq.clone());
        let narrow = isa != Isa::Scalar;
        assert_eq!(qc.kernel_name() == "int8 narrow conv", narrow, "{}: {}", isa.name(), qc.kernel_name());
    }
}

#[test]
fn stem_runs_as_space_to_depth() {
    let g = ConvGeom {
        c_in: 3,
        h: 224,
        w: 224,
        c_out: 64,
        kh: 7,
        kw: 7,
        sh: 2,
        sw: 2,
        dh: 1,
        dw: 1,
        pt: 3,
        pl: 3,
        oh: 112,
        ow: 112,
        group: 1,
    };
    for isa in Isa::all_supported() {
        let qc = QConv::new(isa, g.clone(), &weights(64 * 3 * 49, 1), 7, requant(64, 2, false));
        assert_eq!(qc.kernel_name(), "int8 space-to-depth gemm", "{}", isa.name());
    }
    // The 3x3 stride-2 stem of MobileNets: space to depth on the VNNI paths, im2col elsewhere.
    let g3 = ConvGeom { kh: 3, kw: 3, pt: 1, pl: 1, c_out: 32, ..g };
    for isa in Isa::all_supported() {
        let qc = QConv::new(isa, g3.clone(), &weights(32 * 3 * 9, 1), 7, requant(32, 2, false));
        let want =
            if matches!(isa, Isa::Avx512Vnni | Isa::AvxVnni) { "int8 space-to-depth gemm" } else { "int8 im2col+gemm" };
        assert_eq!(qc.kernel_name(), want, "{}", isa.name());
    }
}

#[test]
fn isa_parse_and_forcing() {
    assert_eq!(Isa::parse("scalar"), Ok(Isa::Scalar));
    assert_eq!(Isa::parse("avx512vnni"), Ok(Isa::Avx512Vnni));
    assert_eq!(Isa::parse("amx"), Ok(Isa::Amx));
    assert_eq!(Isa::parse("avxvnni"), Ok(Isa::AvxVnni));
    assert!(Isa::parse("sse9").is_err());
    assert!(Isa::all_supported().contains(&Isa::Scalar));
    // The best path is the last supported one, and AMX is offered exactly when the CPU has it and
    // Linux granted the tile permission.
    let f = lowbit_kernels::isa::Features::detect();
    assert_eq!(
        Isa::all_supported().contains(&Isa::Amx),
        f.amx_int8 && f.avx512vnni && lowbit_kernels::isa::amx_permitted()
    );
    assert_eq!(Isa::best(), *Isa::all_supported().last().unwrap());
    // The 256-bit VNNI path runs on either encoding of the instruction.
    assert_eq!(
        Isa::all_supported().contains(&Isa::AvxVnni),
        f.avx2 && f.fma && (f.avxvnni || (f.avx512vnni && f.avx512vl))
    );
}

/// The SIMD epilogues divide by the output scale as `q = y·(1/s)`, corrected once with FMAs; the
/// scalar path divides. Check they agree bit for bit on random scales and values in the ranges
/// the epilogues see (LOWBIT_DIV_SAMPLES raises the count; 10^9 were checked when this landed).
#[test]
fn markstein_division_is_correctly_rounded() {
    let n: u64 = std::env::var("LOWBIT_DIV_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let mut r = rng(7);
    let mut bad = 0u64;
    for _ in 0..n {
        let a = r();
        // scale: any normal f32 in [2^-20, 2^8); y within ±300 steps of it (the clamped range)
        let s = f32::from_bits(((107 + (a % 28) as u32) << 23) | ((a >> 8) as u32 & 0x7F_FFFF));
        let y = s * (((r() % 600_000_001) as f32 / 1_000_000.0) - 300.0);
        let y = if a % 17 == 0 { f32::from_bits(y.to_bits() ^ 1) } else { y };
        if int8::div_markstein(y, s, 1.0 / s).to_bits() != (y / s).to_bits() {
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "{bad} of {n} quotients differ");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Quantized PRelu on every path against its definition `qo(prelu(qi(x), slope[c]))`: ragged
    /// channel counts (tails below 8), int8 and uint8 on either side, zero points at the extremes,
    /// slopes negative, zero, above one and non-finite, output scales that saturate.
    #[test]
    fn prelu_paths_match_definition(c in 1usize..40, pixels in 1usize..20, si in any::<bool>(), so in any::<bool>(),
                                    zsel in 0usize..4, ssel in 0usize..3, seed in any::<u64>()) {
        let mut r = rng(seed);
        let x = bytes(c * pixels, seed ^ 3);
        let slope: Vec<f32> = (0..c)
            .map(|_| match r() % 9 {
                0 => 0.0,
                1 => -0.5,
                2 => 3.0,
                3 if seed % 5 == 0 => f32::INFINITY,
                4 if seed % 7 == 0 => f32::NAN,
                _ => (r() % 2000) as f32 / 1000.0 - 0.5,
            })
            .collect();
        let zp = |signed: bool| if signed { [-128, 127, 0, -3][zsel] } else { [0, 255, 128, 3][zsel] };
        let qi = int8::ops::QParams { scale: [0.02, 0.5, 3e-3][ssel], zp: zp(si), signed: si };
        let qo = int8::ops::QParams { scale: [0.01, 0.07, 1e-3][(ssel + 1) % 3], zp: zp(so), signed: so };
        let want: Vec<u8> = (0..c * pixels)
            .map(|i| {
                let f = qi.dequant(x[i]);
                qo.quant(if f >= 0.0 { f } else { f * slope[i % c] })
            })
            .collect();
        for isa in Isa::all_supported() {
            let mut got = vec![0u8; c * pixels];
            int8::moves::prelu_channels(isa, &x, c, &slope, qi, qo, &mut got);
            prop_assert!(got == want, "{} differs from the definition (c={} signed in/out {}/{})", isa.name(), c, si, so);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Concatenation with some inputs requantized through a byte table (the 256-bit paths look the
    /// bytes up with AVX2, AVX-512 with VBMI) and the others copied: rows of every fixed-size move
    /// (1-32 bytes), lengths off every vector width, rows past the long-row threshold, and enough
    /// rows that short ones span several lookup blocks.
    #[test]
    fn concat_paths_match_definition(outer in 1usize..700, n in 1usize..5, seed in any::<u64>()) {
        let mut r = rng(seed);
        let widths = [1usize, 2, 3, 4, 5, 8, 16, 32, 37, 70, 600];
        let inners: Vec<usize> = (0..n).map(|_| widths[(r() % widths.len() as u64) as usize]).collect();
        let total: usize = inners.iter().sum();
        let xs: Vec<Vec<u8>> = inners.iter().enumerate().map(|(i, &w)| bytes(outer * w, seed ^ i as u64)).collect();
        let tables: Vec<Option<[u8; 256]>> = (0..n)
            .map(|i| (r() % 3 != 0).then(|| bytes(256, seed ^ (100 + i as u64)).try_into().unwrap()))
            .collect();
        let mut want = vec![0u8; outer * total];
        for o in 0..outer {
            let mut at = o * total;
            for ((x, t), &w) in xs.iter().zip(&tables).zip(&inners) {
                for i in 0..w {
                    let v = x[o * w + i];
                    want[at + i] = t.map_or(v, |t| t[v as usize]);
                }
                at += w;
            }
        }
        let parts: Vec<(&[u8], Option<&[u8; 256]>)> = xs.iter().zip(&tables).map(|(x, t)| (&x[..], t.as_ref())).collect();
        for isa in Isa::all_supported() {
            let mut got = vec![0u8; outer * total];
            int8::moves::concat(isa, &parts, outer, &inners, &mut got);
            prop_assert!(got == want, "{} differs (outer {} inners {:?})", isa.name(), outer, inners);
        }
    }
}
