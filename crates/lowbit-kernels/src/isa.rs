//! The one owner of the CPU question: run-time feature detection (cached), the kernel paths of the
//! three kernel families (f32, integer, binary), and which of them the environment forces.
//!
//! Nothing else in lowbit asks the CPU. A caller resolves a [`Paths`] value once ([`Paths::selected`]
//! reads `LOWBIT_ISA` and `LOWBIT_BIN_ISA` once per process), hands it to the plan, and every kernel
//! receives its path as an argument, so a forced path reaches every step. [`trace`] counts which
//! path each kernel call took, so tests can check that a forced path was really taken.

use std::sync::OnceLock;

/// Instruction-set features relevant to lowbit's kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512vnni: bool,
    /// VEX-encoded 256-bit `vpdpbusd` (Intel client cores since Alder Lake).
    pub avxvnni: bool,
    pub avx512vpopcntdq: bool,
    /// Byte permutes (`vpermb`, `vpermi2b`): the integer table lookup.
    pub avx512vbmi: bool,
    pub amx_int8: bool,
    /// An AMD CPU (vendor `AuthenticAMD` or `HygonGenuine`): tuning, not correctness.
    pub amd: bool,
}

/// This CPU's features, detected once per process.
pub fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(Features::detect)
}

impl Features {
    /// Asks the CPU (uncached; use [`features`]).
    pub fn detect() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            Features {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                fma: std::arch::is_x86_feature_detected!("fma"),
                avx512f: std::arch::is_x86_feature_detected!("avx512f"),
                avx512bw: std::arch::is_x86_feature_detected!("avx512bw"),
                avx512vl: std::arch::is_x86_feature_detected!("avx512vl"),
                avx512vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
                avxvnni: std::arch::is_x86_feature_detected!("avxvnni"),
                avx512vpopcntdq: std::arch::is_x86_feature_detected!("avx512vpopcntdq"),
                avx512vbmi: std::arch::is_x86_feature_detected!("avx512vbmi"),
                amx_int8: amx_int8_cpuid(),
                amd: amd_cpuid(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Features::default()
        }
    }

    /// Names of the detected features, for `lowbit inspect` and benchmark reports.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = vec![];
        for (on, n) in [
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512vl, "avx512vl"),
            (self.avx512vnni, "avx512vnni"),
            (self.avxvnni, "avxvnni"),
            (self.avx512vpopcntdq, "avx512vpopcntdq"),
            (self.avx512vbmi, "avx512vbmi"),
            (self.amx_int8, "amx-int8"),
        ] {
            if on {
                v.push(n);
            }
        }
        v
    }

    /// AVX-512 F and BW with VBMI byte permutes (the integer table lookup's fast path).
    pub fn vbmi(&self) -> bool {
        self.avx512f && self.avx512bw && self.avx512vbmi
    }
}

/// The CPU vendor is AMD (or Hygon, the same cores).
#[cfg(target_arch = "x86_64")]
fn amd_cpuid() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = [0u8; 12];
    for (i, x) in [r.ebx, r.edx, r.ecx].iter().enumerate() {
        v[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
    }
    &v == b"AuthenticAMD" || &v == b"HygonGenuine"
}

/// Whether the AVX-512 GEMM prefetches the next column panel's weights into L2 while it computes
/// the current one: `LOWBIT_PANEL_PREFETCH=0|1`, by default on except on AMD CPUs. On an Intel
/// Xeon (2 MB L2, mesh L3) it took ResNet-18 from 8.36-8.42 to 8.01-8.12 ms (efdf4b3); on an AMD
/// EPYC Zen 4 (1 MB L2 next to a fast L3) the bursts of prefetches cost more than they saved:
/// ResNet-18 8.60-8.81 ms with against 8.27-8.34 without, MobileNetV2 2.67-2.72 against 2.60-2.64
/// (`lowbit bench --threads 1 --iters 200`, three alternating rounds).
pub fn panel_prefetch() -> bool {
    static P: OnceLock<bool> = OnceLock::new();
    *P.get_or_init(|| match std::env::var("LOWBIT_PANEL_PREFETCH").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => !features().amd,
    })
}

/// An integer kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    /// 256-bit `vpdpbusd`: the GEMMs on 8-lane vectors, everything else on the AVX2 kernels. Runs
    /// VEX-encoded where the CPU has AVX-VNNI (Intel client cores), and as the same code
    /// EVEX-encoded where it has AVX-512 VNNI with VL instead (so every VNNI machine tests it).
    AvxVnni,
    Avx512Vnni,
    /// AMX-INT8 tiles for GEMM and convolution, AVX-512 VNNI for the rest.
    Amx,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
        }
    }

    /// Can this CPU run the path?
    pub fn supported(self) -> bool {
        let f = features();
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => f.avx2 && f.fma,
            Isa::AvxVnni => f.avx2 && f.fma && (f.avxvnni || (f.avx512vnni && f.avx512vl)),
            Isa::Avx512Vnni => f.avx512f && f.avx512bw && f.avx512vnni && f.fma,
            Isa::Amx => Isa::Avx512Vnni.supported() && f.amx_int8 && amx_permitted(),
        }
    }

    /// Every path this CPU can run, best last.
    pub fn all_supported() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    /// The best path this CPU runs.
    pub fn best() -> Isa {
        *Isa::all_supported().last().unwrap_or(&Isa::Scalar)
    }

    /// Parses a `LOWBIT_ISA` value.
    pub fn parse(s: &str) -> Result<Isa, String> {
        match s {
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avxvnni" => Ok(Isa::AvxVnni),
            "avx512vnni" | "avx512" => Ok(Isa::Avx512Vnni),
            "amx" => Ok(Isa::Amx),
            _ => Err(format!("LOWBIT_ISA={s}: unknown path; use scalar, avx2, avxvnni, avx512vnni or amx")),
        }
    }

    /// The integer path of [`Paths::selected`].
    pub fn selected() -> Result<Isa, String> {
        Paths::selected().map(|p| p.int8)
    }
}

/// An f32 kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum F32Isa {
    /// Portable loops (compiled for the baseline x86-64, no AVX); the reference.
    Scalar,
    /// AVX2 + FMA (the `gemm` crate's kernels for GEMMs).
    Avx2,
    /// lowbit's AVX-512 kernels.
    Avx512,
}

impl F32Isa {
    pub fn name(self) -> &'static str {
        match self {
            F32Isa::Scalar => "scalar",
            F32Isa::Avx2 => "avx2",
            F32Isa::Avx512 => "avx512",
        }
    }

    pub fn supported(self) -> bool {
        let f = features();
        match self {
            F32Isa::Scalar => true,
            F32Isa::Avx2 => f.avx2 && f.fma,
            F32Isa::Avx512 => f.avx512f && f.avx2 && f.fma,
        }
    }

    /// Every path this CPU can run, best last.
    pub fn all_supported() -> Vec<F32Isa> {
        [F32Isa::Scalar, F32Isa::Avx2, F32Isa::Avx512].into_iter().filter(|i| i.supported()).collect()
    }

    pub fn best() -> F32Isa {
        *F32Isa::all_supported().last().unwrap_or(&F32Isa::Scalar)
    }

    /// The f32 path that goes with an integer path: the same vector width.
    pub fn matching(isa: Isa) -> F32Isa {
        match isa {
            Isa::Scalar => F32Isa::Scalar,
            Isa::Avx2 | Isa::AvxVnni => F32Isa::Avx2,
            Isa::Avx512Vnni | Isa::Amx => F32Isa::Avx512,
        }
    }
}

/// A binary (xnor-popcount) kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinIsa {
    Scalar,
    Avx2,
    Avx512,
}

impl BinIsa {
    pub fn name(self) -> &'static str {
        match self {
            BinIsa::Scalar => "scalar",
            BinIsa::Avx2 => "avx2",
            BinIsa::Avx512 => "avx512vpopcntdq",
        }
    }

    pub fn supported(self) -> bool {
        let f = features();
        match self {
            BinIsa::Scalar => true,
            BinIsa::Avx2 => f.avx2 && f.fma,
            BinIsa::Avx512 => f.avx512f && f.avx512bw && f.avx512vpopcntdq && f.fma,
        }
    }

    /// Every path this CPU runs, best last.
    pub fn all_supported() -> Vec<BinIsa> {
        [BinIsa::Scalar, BinIsa::Avx2, BinIsa::Avx512].into_iter().filter(|i| i.supported()).collect()
    }

    pub fn best() -> BinIsa {
        *BinIsa::all_supported().last().unwrap_or(&BinIsa::Scalar)
    }

    pub fn parse(s: &str) -> Result<BinIsa, String> {
        match s {
            "scalar" => Ok(BinIsa::Scalar),
            "avx2" => Ok(BinIsa::Avx2),
            "avx512" | "avx512vpopcntdq" => Ok(BinIsa::Avx512),
            _ => Err(format!("LOWBIT_BIN_ISA={s}: unknown path; use scalar, avx2 or avx512")),
        }
    }

    /// The binary path of [`Paths::selected`].
    pub fn selected() -> Result<BinIsa, String> {
        Paths::selected().map(|p| p.binary)
    }

    /// The best binary path no wider than an integer path (so a forced `LOWBIT_ISA` holds for
    /// binary steps too).
    pub fn matching(isa: Isa) -> BinIsa {
        match isa {
            Isa::Scalar => BinIsa::Scalar,
            Isa::Avx2 | Isa::AvxVnni => BinIsa::Avx2,
            Isa::Avx512Vnni | Isa::Amx => BinIsa::best(),
        }
    }
}

/// The kernel path of each family: what a plan runs on. Build one with [`Paths::selected`] (the
/// environment), [`Paths::best`], [`Paths::scalar`] or [`Paths::for_int8`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Paths {
    pub f32: F32Isa,
    pub int8: Isa,
    pub binary: BinIsa,
}

impl Paths {
    /// Portable code everywhere: the reference.
    pub fn scalar() -> Paths {
        Paths { f32: F32Isa::Scalar, int8: Isa::Scalar, binary: BinIsa::Scalar }
    }

    /// The best path of every family this CPU has.
    pub fn best() -> Paths {
        Paths { f32: F32Isa::best(), int8: Isa::best(), binary: BinIsa::best() }
    }

    /// An integer path with the f32 and binary paths of the same width.
    pub fn for_int8(isa: Isa) -> Paths {
        Paths { f32: F32Isa::matching(isa), int8: isa, binary: BinIsa::matching(isa) }
    }

    /// One [`Paths`] per integer path this CPU runs (scalar first, best last): what the "every
    /// path" tests iterate over.
    pub fn all_supported() -> Vec<Paths> {
        Isa::all_supported().into_iter().map(Paths::for_int8).collect()
    }

    /// Can this CPU run every path named?
    pub fn supported(&self) -> bool {
        self.f32.supported() && self.int8.supported() && self.binary.supported()
    }

    /// Reads the environment (uncached; use [`Paths::selected`]): `LOWBIT_ISA=scalar|avx2|
    /// avxvnni|avx512vnni|amx` forces the integer path and the f32 and binary paths of the same width;
    /// `LOWBIT_BIN_ISA=scalar|avx2|avx512` then overrides the binary path. Unset: the best of each.
    pub fn from_env() -> Result<Paths, String> {
        let mut p = match std::env::var("LOWBIT_ISA") {
            Ok(s) if !s.is_empty() => {
                let isa = Isa::parse(&s)?;
                if !isa.supported() {
                    return Err(format!("LOWBIT_ISA={s}: this CPU does not support it"));
                }
                Paths::for_int8(isa)
            }
            _ => Paths::best(),
        };
        if let Ok(s) = std::env::var("LOWBIT_BIN_ISA") {
            if !s.is_empty() {
                let b = BinIsa::parse(&s)?;
                if !b.supported() {
                    return Err(format!("LOWBIT_BIN_ISA={s}: this CPU does not support it"));
                }
                p.binary = b;
            }
        }
        Ok(p)
    }

    /// [`Paths::from_env`], read once per process.
    pub fn selected() -> Result<Paths, String> {
        static P: OnceLock<Result<Paths, String>> = OnceLock::new();
        P.get_or_init(Paths::from_env).clone()
    }

    /// [`Paths::selected`], or the portable paths if the environment names a path this CPU lacks
    /// (for callers without an error channel; the plan reports the error itself).
    pub fn selected_or_scalar() -> Paths {
        Paths::selected().unwrap_or_else(|_| Paths::scalar())
    }
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`),
/// once per process; the permission covers every thread. `false` where the kernel refuses (or
/// on other systems): then the AMX path is not offered.
pub fn amx_permitted() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments.
            let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
            r == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// AMX-INT8 support per CPUID leaf 7 (EDX bit 25 AMX-INT8, bit 24 AMX-TILE) and OS state saving of
/// tile data (XCR0 bits 17 and 18).
#[cfg(target_arch = "x86_64")]
fn amx_int8_cpuid() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    let leaf0 = __cpuid_count(0, 0);
    if leaf0.eax < 7 {
        return false;
    }
    let l7 = __cpuid_count(7, 0);
    let tile = l7.edx & (1 << 24) != 0;
    let int8 = l7.edx & (1 << 25) != 0;
    let l1 = __cpuid_count(1, 0);
    let osxsave = l1.ecx & (1 << 27) != 0;
    if !(tile && int8 && osxsave) {
        return false;
    }
    // SAFETY: OSXSAVE is set, so xgetbv is available.
    let xcr0 = unsafe { _xgetbv(0) };
    xcr0 & (0b11 << 17) == (0b11 << 17)
}

/// Per-thread counts of kernel calls by path: every dispatch point records the path it took, so a
/// test can run a plan on one thread and check that only the forced path ran. One thread-local
/// increment per kernel call (not per element or tile).
pub mod trace {
    use super::{BinIsa, F32Isa, Isa};
    use std::cell::Cell;

    /// Kernel calls per path on this thread since the last [`take`].
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Counts {
        /// Indexed by `F32Isa as usize`: scalar, avx2, avx512.
        pub f32: [u64; 3],
        /// Indexed by `Isa as usize`: scalar, avx2, avxvnni, avx512vnni, amx.
        pub int8: [u64; 5],
        /// Indexed by `BinIsa as usize`: scalar, avx2, avx512.
        pub binary: [u64; 3],
    }

    impl Counts {
        /// Calls on any path but the portable one.
        pub fn simd(&self) -> u64 {
            self.f32[1..].iter().chain(&self.int8[1..]).chain(&self.binary[1..]).sum()
        }
        /// All calls.
        pub fn total(&self) -> u64 {
            self.f32.iter().chain(&self.int8).chain(&self.binary).sum()
        }
    }

    std::thread_local! {
        static COUNTS: Cell<Counts> = Cell::new(Counts { f32: [0; 3], int8: [0; 5], binary: [0; 3] });
    }

    #[inline]
    fn bump(f: impl FnOnce(&mut Counts)) {
        COUNTS.with(|c| {
            let mut v = c.get();
            f(&mut v);
            c.set(v);
        });
    }

    /// Records one f32 kernel call on `isa`.
    #[inline]
    pub fn f32(isa: F32Isa) {
        bump(|c| c.f32[isa as usize] += 1);
    }
    /// Records one integer kernel call on `isa`.
    #[inline]
    pub fn int8(isa: Isa) {
        bump(|c| c.int8[isa as usize] += 1);
    }
    /// Records one binary kernel call on `isa`.
    #[inline]
    pub fn binary(isa: BinIsa) {
        bump(|c| c.binary[isa as usize] += 1);
    }

    /// This thread's counts since the last call, and resets them.
    pub fn take() -> Counts {
        COUNTS.with(|c| c.replace(Counts::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_an_integer_path_share_its_width() {
        let s = Paths::for_int8(Isa::Scalar);
        assert_eq!(s, Paths::scalar());
        assert_eq!(Paths::for_int8(Isa::Avx2).f32, F32Isa::Avx2);
        assert_eq!(Paths::for_int8(Isa::Avx2).binary, BinIsa::Avx2);
        assert_eq!(Paths::for_int8(Isa::AvxVnni).f32, F32Isa::Avx2);
        assert_eq!(Paths::for_int8(Isa::AvxVnni).binary, BinIsa::Avx2);
        for p in Paths::all_supported() {
            assert!(p.supported(), "{p:?}");
        }
        assert_eq!(Paths::all_supported()[0], Paths::scalar());
    }

    #[test]
    fn parse_refuses_unknown_paths_by_name() {
        assert!(Isa::parse("avx512").is_ok());
        assert_eq!(Isa::parse("avxvnni"), Ok(Isa::AvxVnni));
        assert!(Isa::parse("neon").unwrap_err().contains("unknown"));
        assert!(BinIsa::parse("x").is_err());
    }

    #[test]
    fn vendor_agrees_with_the_kernel() {
        // Linux reports the CPUID vendor string as `vendor_id`; elsewhere there is nothing to compare.
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return };
        let Some(line) = info.lines().find(|l| l.starts_with("vendor_id")) else { return };
        let vendor = line.split(':').nth(1).unwrap_or("").trim();
        assert_eq!(features().amd, vendor == "AuthenticAMD" || vendor == "HygonGenuine", "{vendor}");
    }

    #[test]
    fn trace_counts_per_thread_and_resets() {
        trace::take();
        trace::int8(Isa::Avx2);
        trace::f32(F32Isa::Scalar);
        let c = trace::take();
        assert_eq!((c.total(), c.simd()), (2, 1));
        assert_eq!(trace::take().total(), 0);
        std::thread::spawn(|| trace::binary(BinIsa::Avx2)).join().unwrap();
        assert_eq!(trace::take().total(), 0);
    }
}
