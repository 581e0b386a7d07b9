use super::*;
use burn::tensor::{Device, TensorData};

fn rand(rng: &mut crate::Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

fn paths() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx].into_iter().filter(|i| i.supported()).collect()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 2e-5 * scale, "{what}[{i}]: int8 {x}, reference {y} (scale {scale})");
    }
}

/// The VNNI quads and AVX2 pairs written straight from the planes equal the general packer's, ragged pixel
/// counts and channel counts across a panel boundary included.
#[test]
fn planes_pack_like_the_general_packer() {
    let mut rng = crate::Rng::new(5);
    for (o, pix) in [(1, 1), (3, 5), (16, 49), (17, 196), (64, 7), (70, 30), (130, 13)] {
        let planes: Vec<u8> = (0..o * pix).map(|_| rng.below(256) as u8).collect();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni] {
            let fast = pack_planes(isa, &planes, o, pix);
            let slow = PackedB::new(isa, pix, o, |kk, j| (planes[j * pix + kk] ^ 0x80) as i8);
            assert_eq!((fast.k4, fast.kp, fast.n, fast.n_pad), (slow.k4, slow.kp, slow.n, slow.n_pad), "o{o} pix{pix}");
            assert_eq!(fast.quad, slow.quad, "quads o{o} pix{pix} {isa:?}");
            assert_eq!(fast.pairs, slow.pairs, "pairs o{o} pix{pix} {isa:?}");
            assert_eq!(fast.colsum, slow.colsum, "colsum o{o} pix{pix}");
        }
    }
}

/// Forward, input gradient and weight gradient of the int8 convolution against f32 convolutions
/// of the same dequantized operands (`sx·Xq`, `sw·Wq`, and the stochastically rounded `sg·dYq`
/// rebuilt from the documented draws), on every path this CPU has, stride 1 (integer input
/// gradient) and strided (f32 input gradient) geometries with ragged edges, depthwise ones (direct
/// integer loops where strided), weight-gradient
/// reductions split into row bands and shared by many images; DCLS off and on
/// (the weight gradient scaled by exactly the factor of the recorded deviation).
#[test]
fn int8_conv_equals_the_dequantized_products() {
    let dev = Device::flex().autodiff();
    let mut rng = crate::Rng::new(11);
    let cases = [
        // n, c, h, w, o, k, stride, pads (t, l, b, r); o = 0: depthwise (o = c, one group each)
        (2, 3, 9, 7, 5, 3, 1, [1, 1, 1, 1]),
        (2, 24, 9, 7, 0, 3, 1, [1, 1, 1, 1]),
        (3, 17, 8, 9, 0, 3, 2, [1, 1, 1, 1]),
        (2, 5, 6, 5, 0, 5, 1, [2, 1, 2, 0]),
        (3, 16, 8, 8, 16, 3, 1, [1, 1, 1, 1]),
        (2, 5, 7, 6, 4, 1, 1, [0, 0, 0, 0]),
        (3, 4, 8, 8, 6, 3, 2, [1, 1, 1, 1]),
        (2, 5, 7, 6, 4, 1, 2, [0, 0, 0, 0]),
        (2, 2, 6, 5, 3, 3, 1, [0, 2, 1, 0]),
        (1, 20, 5, 5, 33, 3, 1, [1, 1, 1, 1]),
        // Rows so wide that one image's weight-gradient reduction splits into row bands, and
        // images that share one reduction.
        (1, 2, 40, 1600, 3, 3, 1, [1, 1, 1, 1]),
        (150, 2, 7, 7, 3, 3, 1, [1, 0, 2, 1]),
        // The inference convolution's other kernels: shifted rows (c % 4 == 0, wide rows), a
        // direct 1x1 GEMM, and (on AVX2) Winograd.
        (2, 8, 6, 30, 8, 3, 1, [1, 1, 1, 1]),
        (2, 8, 5, 5, 12, 1, 1, [0, 0, 0, 0]),
        (2, 16, 16, 16, 16, 3, 1, [1, 1, 1, 1]),
    ];
    for isa in paths() {
        for (ci, &(n, c, h, w, o, k, s, pads)) in cases.iter().enumerate() {
            let dcls = ci % 2 == 1;
            let dsgc = ci % 3 == 2;
            let (o, cw, groups) = if o == 0 { (c, 1, c) } else { (o, c, 1) };
            let xs = rand(&mut rng, n * c * h * w);
            let wv = rand(&mut rng, o * cw * k * k);
            let p = [s, s, pads[0], pads[1], pads[2], pads[3]];
            let mut cfg = Int8Config::new(isa);
            cfg.dsgc = dsgc;
            cfg.dcls = dcls;
            cfg.record_every = 1;
            let layer = Int8Layer::new("t", cfg, ci);
            let x = flex(xs.clone(), [n, c, h, w]);
            let wt = flex(wv.clone(), [o, cw, k, k]);
            let (y, saved) = forward8(&x, &wt, p, &layer);
            let g = Geom::new(&[n, c, h, w], &[o, c, k, k], p); // (only its output shape is used)
            let dys = rand(&mut rng, g.n * g.o * g.pix());
            let (dx, dw) = backward8(&saved, &flex(dys.clone(), [n, o, g.oh, g.ow]), p, &layer, true, true);
            // The reference: f32 convolution of the dequantized operands, with gradient dYd.
            let xd: Vec<f32> = saved.xq.iter().map(|&b| (b as f32 - 128.0) * saved.sx).collect();
            let wd: Vec<f32> = saved.wq.iter().map(|&v| v as f32 * saved.sw).collect();
            // Quantization within half a step of the values.
            for (v, q) in xs.iter().zip(&xd) {
                assert!((v - q).abs() <= saved.sx * 0.5001, "input {v} quantized to {q}");
            }
            for (v, q) in wv.iter().zip(&wd) {
                assert!((v - q).abs() <= saved.sw * 0.5001, "weight {v} quantized to {q}");
            }
            let max = absmax(&dys);
            let clip =
                if dsgc { int8grad::dsgc_clip(&int8grad::sample(&dys, cfg.dsgc_sample), 8).clip.min(max) } else { max };
            let sg = step_of(clip, 127);
            let seed = layer.salt; // step 0
            let lv: Vec<f32> = dys
                .iter()
                .enumerate()
                .map(|(i, &v)| ((v * (1.0 / sg)) + int8grad::draw(seed, i as u32)).floor().clamp(-127.0, 127.0))
                .collect();
            let dyd: Vec<f32> = lv.iter().map(|&v| v * sg).collect();
            let xr = Tensor::<4>::from_data(TensorData::new(xd, [n, c, h, w]), &dev).require_grad();
            let wr = Tensor::<4>::from_data(TensorData::new(wd, [o, cw, k, k]), &dev).require_grad();
            let opts = ConvOptions {
                stride: [s, s],
                padding: [(pads[0], pads[2]), (pads[1], pads[3])],
                dilation: [1, 1],
                groups,
            };
            assert!(supports(&opts, &[o, cw, k, k]));
            let yr = burn::tensor::module::conv2d(xr.clone(), wr.clone(), None, opts);
            let m = Tensor::<4>::from_data(TensorData::new(dyd, [n, o, g.oh, g.ow]), &dev);
            let grads = (yr.clone() * m).sum().backward();
            let vec4 = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
            let what = format!("{isa:?} n{n} c{c} {h}x{w} o{o} groups{groups} k{k} s{s} pads{pads:?}");
            let ours = |t: &FlexTensor| t.storage::<f32>().to_vec();
            close(&ours(&y), &vec4(yr.detach()), &format!("{what} output"));
            close(&ours(&dx.unwrap()), &vec4(xr.grad(&grads).unwrap()), &format!("{what} input gradient"));
            let rec = layer.history()[0];
            assert_eq!(rec.clip, clip, "{what}: the clip (DSGC {dsgc})");
            assert!(!dsgc || dys.len() < 2000 || clip < max, "{what}: DSGC clips many Gaussian errors below their max");
            // The recorded deviation is 1 - cos(dY, dYq) of the levels used.
            let (dot, gg, qq) = dys.iter().zip(&lv).fold((0f64, 0f64, 0f64), |(d, a, b), (&g, &q)| {
                (d + g as f64 * q as f64, a + g as f64 * g as f64, b + q as f64 * q as f64)
            });
            let dev = 1.0 - dot / (gg.sqrt() * qq.sqrt());
            assert!((rec.deviation - dev).abs() <= 1e-6 + 1e-3 * dev, "{what}: deviation {} vs {dev}", rec.deviation);
            let f = if dcls { int8grad::dcls_factor(rec.deviation, 20.0, 0.1) } else { 1.0 };
            assert!(dcls == (rec.factor < 1.0) && (rec.factor - f).abs() < 1e-12, "{what}: factor {}", rec.factor);
            let dw_ref: Vec<f32> = vec4(wr.grad(&grads).unwrap()).iter().map(|v| v * f as f32).collect();
            close(&ours(&dw.unwrap()), &dw_ref, &format!("{what} weight gradient"));
        }
    }
}

/// The vectorized stochastic rounding is the scalar definition, element for element, and its
/// moments are the sums of the definition.
#[test]
fn stochastic_levels_are_the_definition() {
    let mut rng = crate::Rng::new(2);
    for len in [1, 15, 16, 17, 4095, 4097, 70_001] {
        let g: Vec<f32> = (0..len).map(|_| rng.normal() * 0.01).collect();
        let s = step_of(absmax(&g) * 0.5, 127);
        let mut out = vec![0u8; len];
        let m = levels_stochastic(&g, s, 127.0, 99, &mut out);
        let inv = 1.0 / s;
        let want: Vec<f32> = g
            .iter()
            .enumerate()
            .map(|(i, &v)| (v * inv + int8grad::draw(99, i as u32)).floor().clamp(-127.0, 127.0))
            .collect();
        let bytes: Vec<u8> = want.iter().map(|&q| (q as i32 + 128) as u8).collect();
        assert_eq!(out, bytes, "len {len}");
        let dot: f64 = g.iter().zip(&want).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((m.dot - dot).abs() <= 1e-4 * dot.abs(), "len {len}: dot {} vs {dot}", m.dot);
        let clipped = want.iter().any(|v| v.abs() == 127.0);
        assert!(len < 100 || clipped, "half the max as clip clips something");
    }
}
