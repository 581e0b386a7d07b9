//! Run-time CPU feature detection, so one binary picks the best path on every x86-64 machine.

/// Instruction-set features relevant to lowbit's kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vnni: bool,
    pub avxvnni: bool,
    pub avx512vpopcntdq: bool,
    /// Byte permutes (`vpermb`, `vpermi2b`): the integer table lookup.
    pub avx512vbmi: bool,
    pub amx_int8: bool,
}

impl Features {
    pub fn detect() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            Features {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                fma: std::arch::is_x86_feature_detected!("fma"),
                avx512f: std::arch::is_x86_feature_detected!("avx512f"),
                avx512bw: std::arch::is_x86_feature_detected!("avx512bw"),
                avx512vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
                avxvnni: std::arch::is_x86_feature_detected!("avxvnni"),
                avx512vpopcntdq: std::arch::is_x86_feature_detected!("avx512vpopcntdq"),
                avx512vbmi: std::arch::is_x86_feature_detected!("avx512vbmi"),
                amx_int8: amx_int8_cpuid(),
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
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`),
/// once per process; the permission covers every thread. `false` where the kernel refuses (or
/// on other systems): then the AMX path is not offered.
pub fn amx_permitted() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
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
