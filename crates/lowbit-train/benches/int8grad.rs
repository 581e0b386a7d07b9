//! `cargo bench -p lowbit-train --bench int8grad`: the GEMMs of a training step (issue 22, line 3)
//! as f32 (lowbit's f32 GEMM on the f32 path) against int8 (`int8grad::qgemm`: both operands
//! quantized, B packed, lowbit's integer GEMM on the integer path), one thread, on the shapes of
//! fmnist-resnet's convolutions per image of a batch (forward `Y = W · cols`: m = output channels,
//! k = C·3·3, n = pixels) and of its weight gradient over a batch of 128 (m = output channels, k =
//! 128·pixels, n = C·3·3). The int8 figure includes the quantization and packing a step pays; the
//! GEMM-only figure (operands already quantized and packed) shows what the kernels alone give.
//! Prints the CPU's paths: `LOWBIT_ISA` picks them as everywhere.

#[allow(dead_code)]
#[path = "../../lowbit-kernels/benches/common/mod.rs"]
mod common;

use common::time_it;
use lowbit_kernels::fp32::gemm::sgemm_bias_act;
use lowbit_kernels::int8::{gemm, Out, OutPtr, PackedB, Requant};
use lowbit_kernels::isa::Paths;
use lowbit_train::int8grad::qgemm;
use lowbit_train::Rng;

fn main() {
    let paths = Paths::selected_or_scalar();
    println!("paths: f32 {}, integer {}", paths.f32.name(), paths.int8.name());
    println!(
        "{:<34} {:>10} {:>12} {:>12} {:>9} {:>9}",
        "gemm (m x k x n)", "f32 ms", "int8 ms", "int8 gemm ms", "speed-up", "gemm only"
    );
    let mut r = Rng::new(1);
    let shapes = [
        ("fwd 16@28x28 <- 16x3x3", 16, 144, 784),
        ("fwd 32@14x14 <- 32x3x3", 32, 288, 196),
        ("fwd 64@7x7 <- 64x3x3", 64, 576, 49),
        ("wgrad 16 <- 16x3x3, 128x28x28", 16, 128 * 784, 144),
        ("wgrad 32 <- 32x3x3, 128x14x14", 32, 128 * 196, 288),
        ("wgrad 64 <- 64x3x3, 128x7x7", 64, 128 * 49, 576),
    ];
    for (name, m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|_| r.uniform() - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|_| r.uniform() - 0.5).collect();
        let mut c = vec![0f32; m * n];
        let zero = vec![0f32; m];
        let f32_s =
            time_it(|| sgemm_bias_act(paths.f32, m, n, k, &a, k, &b, n, &zero, lowbit_core::Act::None, &mut c, n, 1));
        let int8_s = time_it(|| {
            let mut rng = Rng::new(2);
            std::hint::black_box(qgemm(paths.int8, m, n, k, &a, 0.5, &b, 0.5, Some(&mut rng), 1));
        });
        // The kernel alone: operands already levels, B packed.
        let k4 = k.div_ceil(4) * 4;
        let bytes = vec![128u8; m * k4];
        let packed = PackedB::new(paths.int8, k, n, |kk, j| ((kk * 7 + j * 3) % 255) as i8);
        let rq = Requant::new(&vec![1e-4; n], &vec![0; n], &[], f32::NEG_INFINITY, f32::INFINITY, Out::F32);
        let gemm_s = time_it(|| {
            // SAFETY: `bytes` holds m rows of k4 bytes, `c` m rows of n f32; the path is this CPU's.
            unsafe { gemm(m, bytes.as_ptr(), k4, &packed, &rq, OutPtr(c.as_mut_ptr() as *mut u8), n, 1) }
        });
        println!(
            "{:<34} {:>10.3} {:>12.3} {:>12.3} {:>8.2}x {:>8.2}x",
            format!("{name} ({m}x{k}x{n})"),
            f32_s * 1e3,
            int8_s * 1e3,
            gemm_s * 1e3,
            f32_s / int8_s,
            f32_s / gemm_s
        );
    }
}
