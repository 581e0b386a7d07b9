//! `cargo bench -p lowbit-kernels --bench int8`: GMAC/s of the integer GEMM and depthwise kernels
//! on every path this CPU has, on ResNet-18 / MobileNetV2 layer shapes, with the share of the
//! path's measured peak, and lowbit's f32 GEMM on the same shapes measured in the same run.
//! Results also go to target/int8-bench.json.

mod common;

use common::{square_geom, time_it};
use lowbit_kernels::fp32::gemm as f32gemm;
use lowbit_kernels::int8::{self, measured_peak_gmacs, Isa, Out, OutPtr, PackedB, QConv, Requant};
use lowbit_kernels::isa::F32Isa;

/// Uniform requantization of `n` channels to uint8 (scale 0.05), outputs clamped to `[0, hi]`.
fn requant_u8(n: usize, hi: f32) -> Requant {
    Requant::new(
        &vec![0.001; n],
        &vec![0; n],
        &vec![0.0; n],
        0.0,
        hi,
        Out::Q { scale: 0.05, zp: 0, qmin: 0, qmax: 255 },
    )
}

fn main() {
    // `cargo bench -p lowbit-kernels --bench int8 -- <text>` runs only the shapes whose name holds
    // <text> (cargo passes `--bench` itself, which is skipped).
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let gemms: &[(&str, usize, usize, usize)] = &[
        ("resnet18 layer1 3x3 (im2col)", 3136, 64, 576),
        ("resnet18 layer2 3x3", 784, 128, 1152),
        ("resnet18 layer3 3x3", 196, 256, 2304),
        ("resnet18 layer4 3x3", 49, 512, 4608),
        ("mobilenetv2 expand 1x1 56x56", 3136, 144, 24),
        ("mobilenetv2 expand 1x1 14x14", 196, 576, 96),
        ("mobilenetv2 expand 1x1 28x28", 784, 192, 32),
        ("centerface expand 1x1 240x320", 76800, 96, 16),
        ("centerface project 1x1 240x320", 76800, 16, 32),
        ("mobilenetv2 project 1x1 14x14", 196, 96, 576),
        ("mobilenetv2 last 1x1 7x7", 49, 1280, 320),
    ];
    let mut rows = vec![];
    println!("{:<34} {:>10} {:>9} {:>8} {:>9}", "GEMM m×n×k", "path", "GMAC/s", "of peak", "f32 GMAC/s");
    for &(name, m, n, k) in gemms.iter().filter(|g| wanted(g.0)) {
        let a: Vec<u8> = (0..m * k.div_ceil(4) * 4).map(|i| (i * 7 % 251) as u8).collect();
        let af: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let wf: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 - 6.0).collect();
        let macs = (m * n * k) as f64;
        let mut cf = vec![0f32; m * n];
        let bias = vec![0f32; n];
        // f32 peer: the same product as lowbit's f32 conv runs it (C[n×m] = W[n×k]·A[k×m]).
        let at: Vec<f32> = (0..k * m).map(|i| af[(i % m) * k + i / m]).collect();
        let tf = time_it(|| {
            f32gemm::sgemm_bias_act(
                F32Isa::best(),
                n,
                m,
                k,
                &wf,
                k,
                &at,
                m,
                &bias,
                lowbit_core::Act::None,
                &mut cf,
                m,
                1,
            )
        });
        for isa in Isa::all_supported() {
            let b = PackedB::new(isa, k, n, |kk, j| ((kk * 31 + j * 17) % 255) as i8);
            let rq = requant_u8(n, f32::INFINITY);
            let mut c = vec![0u8; m * n];
            // SAFETY: buffers sized for the shapes; isa supported.
            let t = time_it(|| unsafe {
                int8::gemm(m, a.as_ptr(), k.div_ceil(4) * 4, &b, &rq, OutPtr(c.as_mut_ptr()), n, 1)
            });
            let g = macs / t / 1e9;
            let peak = measured_peak_gmacs(isa);
            println!(
                "{:<34} {:>10} {:>9.1} {:>7.0}% {:>9.1}",
                format!("{name} {m}×{n}×{k}"),
                isa.name(),
                g,
                100.0 * g / peak,
                macs / tf / 1e9
            );
            rows.push(format!("{{\"kernel\":\"gemm\",\"shape\":\"{name}\",\"isa\":\"{}\",\"gmacs\":{g:.2},\"peak\":{peak:.1},\"f32_gmacs\":{:.2}}}", isa.name(), macs / tf / 1e9));
        }
    }
    let dws: &[(&str, usize, usize, usize, usize)] = &[
        ("mobilenetv2 dw 3x3 s1 144@56", 144, 56, 1, 3),
        ("mobilenetv2 dw 3x3 s2 96@112", 96, 112, 2, 3),
        ("mobilenetv2 dw 3x3 s1 576@14", 576, 14, 1, 3),
        ("mobilenetv2 dw 3x3 s1 960@7", 960, 7, 1, 3),
        ("lite0 dw 5x5 s2 144@56", 144, 56, 2, 5),
        ("lite0 dw 5x5 s1 240@28", 240, 28, 1, 5),
        ("lite0 dw 5x5 s1 672@14", 672, 14, 1, 5),
        ("lite0 dw 5x5 s1 1152@7", 1152, 7, 1, 5),
    ];
    println!("\n{:<34} {:>10} {:>9} {:>8}", "depthwise", "path", "GMAC/s", "of peak");
    for &(name, c, hw, s, k) in dws.iter().filter(|d| wanted(d.0)) {
        let geom = square_geom(c, c, hw, k, s, c);
        let o = geom.oh;
        let x: Vec<u8> = (0..hw * hw * c).map(|i| (i * 7 % 251) as u8).collect();
        let w: Vec<i8> = (0..c * k * k).map(|i| (i % 255) as i8).collect();
        let macs = geom.macs() as f64;
        for isa in Isa::all_supported() {
            let rq = requant_u8(c, 6.0);
            let qc = QConv::new(isa, geom.clone(), &w, 3, rq);
            let mut scratch = vec![0u8; qc.scratch_len()];
            let mut out = vec![0u8; o * o * c];
            // SAFETY: buffers sized from the geometry; isa supported.
            let t = time_it(|| unsafe { qc.run(&x, OutPtr(out.as_mut_ptr()), &mut scratch, 1) });
            let g = macs / t / 1e9;
            let peak = measured_peak_gmacs(isa);
            println!("{:<34} {:>10} {:>9.1} {:>7.0}%", name, isa.name(), g, 100.0 * g / peak);
            rows.push(format!(
                "{{\"kernel\":\"depthwise\",\"shape\":\"{name}\",\"isa\":\"{}\",\"gmacs\":{g:.2},\"peak\":{peak:.1}}}",
                isa.name()
            ));
        }
    }
    // Whole convolutions (im2col or shifted rows included), ResNet-18 shapes.
    let convs: &[(&str, usize, usize, usize, usize, usize)] = &[
        ("resnet18 stem 7x7 s2 3->64 @224", 3, 64, 224, 7, 2),
        ("resnet18 layer1 3x3 64@56", 64, 64, 56, 3, 1),
        ("resnet18 layer2.0 3x3 s2 64->128 @56", 64, 128, 56, 3, 2),
        ("resnet18 layer3 3x3 256@14", 256, 256, 14, 3, 1),
        ("resnet18 layer4 3x3 512@7", 512, 512, 7, 3, 1),
        ("resnet18 layer2 3x3 128@28", 128, 128, 28, 3, 1),
        ("centerface stem 3x3 s2 3->32 @480", 3, 32, 480, 3, 2),
        ("u2netp 3x3 16->16 @160", 16, 16, 160, 3, 1),
        ("u2netp 3x3 32->16 @320", 32, 16, 320, 3, 1),
        ("u2netp 3x3 64->64 @80", 64, 64, 80, 3, 1),
    ];
    println!(
        "\n{:<38} {:>10} {:>24} {:>9} {:>8} {:>8} {:>10}",
        "convolution", "path", "kernel", "GMAC/s", "of peak", "ms", "2 threads"
    );
    for &(name, ci, co, hw, k, s) in convs.iter().filter(|c| wanted(c.0)) {
        let geom = square_geom(ci, co, hw, k, s, 1);
        let o = geom.oh;
        let x: Vec<u8> = (0..hw * hw * ci).map(|i| (i * 7 % 251) as u8).collect();
        // Weights of a trained layer's spread (|w| mostly well below 127), so stride-1 3x3 layers
        // pass the integer Winograd exactness bound as real ones do.
        let w: Vec<i8> = (0..co * ci * k * k).map(|i| ((i * 37 % 97) as i32 - 48) as i8).collect();
        let macs = geom.macs() as f64;
        for isa in Isa::all_supported() {
            // Stride-1 3x3: the direct kernels and integer Winograd (where exact), side by side.
            let choices: &[bool] = if k == 3 && s == 1 { &[false, true] } else { &[false] };
            for &wino in choices {
                let rq = requant_u8(co, f32::INFINITY);
                let qc = QConv::with_winograd(isa, geom.clone(), &w, 3, rq, wino);
                if wino && !qc.kernel_name().contains("winograd") {
                    continue;
                }
                let mut scratch = vec![0u8; qc.scratch_len()];
                let mut out = vec![0u8; o * o * co];
                // SAFETY: buffers sized from the geometry; isa supported.
                let t = time_it(|| unsafe { qc.run(&x, OutPtr(out.as_mut_ptr()), &mut scratch, 1) });
                // The same convolution on 2 threads (the runtime's pool), as a throughput ratio.
                let t2 = time_it(|| unsafe { qc.run(&x, OutPtr(out.as_mut_ptr()), &mut scratch, 2) });
                // Direct-convolution multiply-adds per second (Winograd's effective rate).
                let g = macs / t / 1e9;
                let peak = measured_peak_gmacs(isa);
                println!(
                    "{:<38} {:>10} {:>24} {:>9.1} {:>7.0}% {:>8.3} {:>9.2}x",
                    name,
                    isa.name(),
                    qc.kernel_name(),
                    g,
                    100.0 * g / peak,
                    t * 1e3,
                    t / t2
                );
                rows.push(format!(
                    "{{\"kernel\":\"conv\",\"shape\":\"{name}\",\"isa\":\"{}\",\"impl\":\"{}\",\"gmacs\":{g:.2},\"peak\":{peak:.1}}}",
                    isa.name(),
                    qc.kernel_name()
                ));
            }
        }
    }
    // Quantized PRelu (SFace's activation), elements per nanosecond on each path.
    if wanted("prelu") {
        println!("\n{:<38} {:>10} {:>9} {:>8}", "prelu", "path", "elem/ns", "ms");
        for &(c, hw) in &[(64usize, 112usize), (128, 56), (512, 14)] {
            let x: Vec<u8> = (0..hw * hw * c).map(|i| (i * 7 % 251) as u8).collect();
            let slope: Vec<f32> = (0..c).map(|i| 0.05 + i as f32 * 0.01).collect();
            let qi = int8::ops::QParams { scale: 0.03, zp: 120, signed: false };
            let qo = int8::ops::QParams { scale: 0.025, zp: 60, signed: false };
            let mut out = vec![0u8; x.len()];
            for isa in Isa::all_supported() {
                let t = time_it(|| int8::moves::prelu_channels(isa, &x, c, &slope, qi, qo, &mut out));
                let name = format!("prelu {c}@{hw}");
                println!("{:<38} {:>10} {:>9.2} {:>8.3}", name, isa.name(), x.len() as f64 / t / 1e9, t * 1e3);
            }
        }
    }
    println!("\nmeasured peaks (GMAC/s, one core):");
    for isa in Isa::all_supported() {
        println!("  {:<10} {:.1}", isa.name(), measured_peak_gmacs(isa));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let _ = std::fs::write(dir.join("int8-bench.json"), format!("[{}]\n", rows.join(",\n")));
}
