//! This core's measured peak for each integer path's multiply-accumulate instruction.

#[cfg(target_arch = "x86_64")]
use crate::int8::{amx, avx2, avx512, avxvnni};
use crate::isa::Isa;

/// This core's measured peak for a path's multiply-accumulate instruction, in GMAC/s (about
/// 0.1 s of work, measured once per process).
pub fn measured_peak_gmacs(isa: Isa) -> f64 {
    static PEAKS: std::sync::Mutex<Vec<(Isa, f64)>> = std::sync::Mutex::new(Vec::new());
    if let Some(p) = PEAKS.lock().unwrap().iter().find(|p| p.0 == isa) {
        return p.1;
    }
    let run = |iters: usize| -> (f64, f64) {
        let t = std::time::Instant::now();
        let (macs, sink) = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only called for supported paths (checked below).
            Isa::Avx512Vnni => (iters as f64 * 12.0 * 64.0, unsafe { avx512::peak_probe(iters) }),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above (AMX support includes the tile permission).
            Isa::Amx => ((iters / 16) as f64 * 4.0 * 16384.0, unsafe { amx::peak_probe(iters / 16) }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => (iters as f64 * 12.0 * 16.0, unsafe { avx2::peak_probe(iters) }),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => (iters as f64 * 12.0 * 32.0, unsafe { avxvnni::peak_probe(iters) }),
            _ => {
                let mut acc = [0i32; 8];
                for i in 0..iters {
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = a.wrapping_add(std::hint::black_box((i + j) as i32).wrapping_mul(3));
                    }
                }
                (iters as f64 * 8.0, acc.iter().sum())
            }
        };
        std::hint::black_box(sink);
        (macs, t.elapsed().as_secs_f64())
    };
    if !isa.supported() {
        return 0.0;
    }
    run(1000);
    let mut best = 0.0f64;
    for _ in 0..5 {
        let (m, s) = run(400_000);
        best = best.max(m / s / 1e9);
    }
    PEAKS.lock().unwrap().push((isa, best));
    best
}
