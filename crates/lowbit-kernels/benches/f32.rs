//! `cargo bench -p lowbit-kernels --bench f32 [-- FILTER]`: GMAC/s of lowbit's f32 convolution
//! strategies (depthwise, 1x1 GEMM, im2col / shifted rows) on every f32 path this CPU has, on
//! MobileNetV2 / EfficientNet-Lite0 / ResNet-18 layer shapes, one thread, with the share of the
//! path's FMA peak measured in the same run (a register-only chain of independent FMAs).

mod common;

use common::{square_geom as geom, time_it};
use lowbit_core::Act;
use lowbit_kernels::fp32::conv::{conv2d, PackedConv};
use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::isa::F32Isa;

/// f32 multiply-adds per second one core can issue: 12 independent 8-lane FMA chains (AVX2).
#[cfg(target_arch = "x86_64")]
fn fma_peak_gmacs() -> f64 {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run(iters: usize) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..iters / 64 {
            for _ in 0..64 {
                for x in acc.iter_mut() {
                    *x = _mm256_fmadd_ps(*x, a, b);
                }
            }
            acc = std::hint::black_box(acc);
        }
        let mut s = 0.0;
        for x in acc {
            s += _mm256_cvtss_f32(x);
        }
        s
    }
    if !F32Isa::Avx2.supported() {
        return f64::NAN;
    }
    let iters = 2_000_000;
    // SAFETY: AVX2 and FMA checked above.
    let t = time_it(|| {
        std::hint::black_box(unsafe { run(iters) });
    });
    (iters * 12 * 8) as f64 / t / 1e9
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak_gmacs() -> f64 {
    f64::NAN
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let shapes: Vec<(&str, ConvGeom)> = vec![
        ("dw 3x3 s1 32@112", geom(32, 32, 112, 3, 1, 32)),
        ("dw 3x3 s1 144@56", geom(144, 144, 56, 3, 1, 144)),
        ("dw 3x3 s2 96@112", geom(96, 96, 112, 3, 2, 96)),
        ("dw 3x3 s2 144@56", geom(144, 144, 56, 3, 2, 144)),
        ("dw 3x3 s1 192@28", geom(192, 192, 28, 3, 1, 192)),
        ("dw 3x3 s1 576@14", geom(576, 576, 14, 3, 1, 576)),
        ("dw 3x3 s2 576@14", geom(576, 576, 14, 3, 2, 576)),
        ("dw 3x3 s1 960@7", geom(960, 960, 7, 3, 1, 960)),
        ("dw 5x5 s1 480@14", geom(480, 480, 14, 5, 1, 480)),
        ("dw 5x5 s2 144@56", geom(144, 144, 56, 5, 2, 144)),
        ("1x1 16->96 @112", geom(16, 96, 112, 1, 1, 1)),
        ("1x1 32->16 @112", geom(32, 16, 112, 1, 1, 1)),
        ("1x1 144->24 @56", geom(144, 24, 56, 1, 1, 1)),
        ("1x1 576->96 @14", geom(576, 96, 14, 1, 1, 1)),
        ("1x1 160->960 @7", geom(160, 960, 7, 1, 1, 1)),
        ("1x1 960->160 @7", geom(960, 160, 7, 1, 1, 1)),
        ("1x1 320->1280 @7", geom(320, 1280, 7, 1, 1, 1)),
        ("1x1 64->384 @7", geom(64, 384, 7, 1, 1, 1)),
        ("3x3 s1 64->64 @7", geom(64, 64, 7, 3, 1, 1)),
        ("3x3 s1 16->16 @28", geom(16, 16, 28, 3, 1, 1)),
        ("3x3 s1 32->32 @14", geom(32, 32, 14, 3, 1, 1)),
        ("3x3 s2 3->32 @224", geom(3, 32, 224, 3, 2, 1)),
        ("3x3 s2 16->32 @28", geom(16, 32, 28, 3, 2, 1)),
        ("3x3 s2 64->128 @56", geom(64, 128, 56, 3, 2, 1)),
        ("3x3 s1 24->24 @56", geom(24, 24, 56, 3, 1, 1)),
        ("3x3 s1 40->40 @20", geom(40, 40, 20, 3, 1, 1)),
        ("7x7 s2 3->64 @224", geom(3, 64, 224, 7, 2, 1)),
        ("3x3 s1 64->64 @56", geom(64, 64, 56, 3, 1, 1)),
        ("3x3 s1 256->256 @14", geom(256, 256, 14, 3, 1, 1)),
        ("3x3 s1 512->512 @7", geom(512, 512, 7, 3, 1, 1)),
    ];
    let peak = fma_peak_gmacs();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let feats = lowbit_kernels::isa::features().names().join(" ");
    println!("CPU: {cpu} ({feats}); f32 FMA peak (avx2, 1 core): {peak:.1} GMAC/s");
    println!("{:<22} {:>8} {:>24} {:>9} {:>8}", "conv", "path", "kernel", "GMAC/s", "of peak");
    for (name, g) in shapes {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let macs = (g.c_out * g.oh * g.ow * g.k()) as f64;
        let x: Vec<f32> = (0..g.c_in * g.h * g.w).map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5).collect();
        let w: Vec<f32> = (0..g.c_out * g.k()).map(|i| ((i * 104_729) % 97) as f32 / 97.0 - 0.5).collect();
        for isa in F32Isa::all_supported() {
            if isa == F32Isa::Scalar && macs > 5e7 {
                continue;
            }
            // The direct strategy, then Winograd where the geometry allows it (SIMD paths).
            let wino = isa != F32Isa::Scalar && lowbit_kernels::fp32::winograd::applies(&g);
            for choice in [Some(false), Some(true)].into_iter().take(if wino { 2 } else { 1 }) {
                let (b, act) = (Some(vec![0.1; g.c_out]), Act::Clip { lo: 0.0, hi: 6.0 });
                let p = PackedConv::with_strategy(isa, g.clone(), w.clone(), b, act, choice, None);
                let mut out = vec![0f32; g.c_out * g.oh * g.ow];
                let mut scratch = vec![0f32; p.scratch_len()];
                let t = time_it(|| conv2d(&p, &x, &mut out, &mut scratch, 1));
                let gm = macs / t / 1e9;
                let (path, kernel) = (isa.name(), p.kernel_name());
                println!("{:<22} {:>8} {:>24} {:>9.1} {:>7.0}%", name, path, kernel, gm, 100.0 * gm / peak);
            }
        }
    }
}
