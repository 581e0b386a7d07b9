//! `cargo bench -p lowbit-kernels --bench binary`: the binary (xnor-popcount) convolution on
//! every path this CPU has against lowbit's f32 convolution of the same shape, measured in the
//! same run (1 thread): ResNet-18's 3x3 layer shapes, including the 3x3 256→256 conv on 14x14.
//! The binary time includes packing the uint8 input into bits and the requantizing epilogue.
//! Results also go to target/binary-bench.json.

use std::time::Instant;

use lowbit_core::Act;
use lowbit_kernels::binary::{BinConv, BinIsa};
use lowbit_kernels::fp32::conv::{conv2d, PackedConv};
use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::int8::{Out, OutPtr, Requant};
use lowbit_kernels::isa::F32Isa;

fn time_it(mut f: impl FnMut()) -> f64 {
    f();
    let mut times = vec![];
    let mut total = 0.0;
    while total < 0.5 || times.len() < 20 {
        let t = Instant::now();
        f();
        let s = t.elapsed().as_secs_f64();
        times.push(s);
        total += s;
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

fn main() {
    let shapes: &[(&str, usize, usize, usize, usize)] = &[
        ("resnet18 layer1 3x3 64->64 56x56", 64, 64, 56, 1),
        ("resnet18 layer2 3x3 128->128 28x28", 128, 128, 28, 1),
        ("3x3 256->256 14x14 (issue target)", 256, 256, 14, 1),
        ("resnet18 layer4 3x3 512->512 7x7", 512, 512, 7, 1),
        ("resnet18 layer3.0 3x3 128->256 s2", 128, 256, 28, 2),
    ];
    let mut rows = vec![];
    let bound = lowbit_kernels::binary::measured_bound_gmacs(BinIsa::Avx512);
    if bound > 0.0 {
        println!("avx512vpopcntdq register-only bound (xor + popcount + add, no loads): {bound:.0} G binary MAC/s");
    }
    println!("{:<38} {:>10} {:>10} {:>18} {:>9} {:>8}", "conv", "f32 ms", "path", "binary ms", "GMAC/s", "speed-up");
    for &(name, ci, co, hw, s) in shapes {
        let o = (hw + 2 - 3) / s + 1;
        let g = ConvGeom {
            c_in: ci,
            h: hw,
            w: hw,
            c_out: co,
            kh: 3,
            kw: 3,
            sh: s,
            sw: s,
            dh: 1,
            dw: 1,
            pt: 1,
            pl: 1,
            oh: o,
            ow: o,
            group: 1,
        };
        let macs = g.macs() as f64;
        let wf: Vec<f32> = (0..co * ci * 9).map(|i| if (i * 2654435761usize) % 7 < 3 { -0.1 } else { 0.1 }).collect();
        let p = PackedConv::new(F32Isa::best(), g.clone(), wf.clone(), Some(vec![0.0; co]), Act::None);
        let xf: Vec<f32> = (0..ci * hw * hw).map(|i| ((i * 37) % 255) as f32 / 255.0 - 0.5).collect();
        let mut of = vec![0f32; co * o * o];
        let mut sf = vec![0f32; p.scratch_len()];
        let tf = time_it(|| conv2d(&p, &xf, &mut of, &mut sf, 1));
        let w: Vec<i8> = wf.iter().map(|&v| if v < 0.0 { -1 } else { 1 }).collect();
        let x: Vec<u8> = (0..ci * hw * hw).map(|i| ((i * 37) % 255) as u8).collect();
        for isa in BinIsa::all_supported() {
            let rq = Requant::new(
                &vec![0.01; co],
                &vec![0; co],
                &vec![0.0; co],
                f32::NEG_INFINITY,
                f32::INFINITY,
                Out::Q { scale: 0.05, zp: 128, qmin: 0, qmax: 255 },
            );
            let c = BinConv::new(isa, g.clone(), &w, 1, rq).unwrap();
            let mut out = vec![0u8; co * o * o];
            let mut scratch = vec![0u64; c.scratch_words()];
            // SAFETY: buffers sized for the shape; the path is supported.
            let tb = time_it(|| unsafe { c.run_u8(&x, 128, OutPtr(out.as_mut_ptr()), &mut scratch, 1) });
            let share = if isa == BinIsa::Avx512 && bound > 0.0 {
                format!(" ({:.0}% of the bound)", macs / tb / 1e9 / bound * 100.0)
            } else {
                String::new()
            };
            println!(
                "{:<38} {:>10.3} {:>10} {:>18.4} {:>9.0} {:>7.1}x{share}",
                name,
                tf * 1e3,
                isa.name(),
                tb * 1e3,
                macs / tb / 1e9,
                tf / tb
            );
            rows.push(format!(
                "{{\"conv\":\"{name}\",\"path\":\"{}\",\"f32_ms\":{:.4},\"binary_ms\":{:.5},\"speedup\":{:.2}}}",
                isa.name(),
                tf * 1e3,
                tb * 1e3,
                tf / tb
            ));
        }
    }
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/binary-bench.json"),
        format!("[{}]\n", rows.join(",\n")),
    );
}
