//! The memory limit every allocation sized by user input is checked against before it is made:
//! set by the caller (`lowbit --max-memory`), or by default three quarters of the smallest of the
//! machine's RAM, the process's address-space limit (`ulimit -v`) and its cgroup's memory limit.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Error, Result};

static MAX_MEMORY: AtomicUsize = AtomicUsize::new(0);

/// Sets the limit in bytes (0 restores the default).
pub fn set_max_memory(bytes: usize) {
    MAX_MEMORY.store(bytes, Ordering::Relaxed);
}

thread_local! {
    /// A limit for this thread only ([`with_max_memory`]), 0 for none.
    static LOCAL_MAX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with the limit set to `bytes` on this thread only (planning and shape inference
/// check on the calling thread), so one caller's limit cannot reach another's work in the same
/// process (the tests run in one process: the fuzzing harness's 256 MiB must not apply to the
/// others).
pub fn with_max_memory<R>(bytes: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            LOCAL_MAX.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LOCAL_MAX.with(|l| l.replace(bytes)));
    f()
}

/// The limit in bytes: this thread's ([`with_max_memory`]), else the process's.
pub fn max_memory() -> usize {
    match LOCAL_MAX.with(|l| l.get()) {
        0 => {}
        n => return n,
    }
    match MAX_MEMORY.load(Ordering::Relaxed) {
        0 => default_max_memory(),
        n => n,
    }
}

/// Three quarters of the smallest of RAM, `ulimit -v` and the cgroup limit (what is known of them).
pub fn default_max_memory() -> usize {
    static DEFAULT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let mut m = u64::MAX;
        if let Some(kb) = read_field("/proc/meminfo", "MemTotal:") {
            m = m.min(kb.saturating_mul(1024));
        }
        if let Ok(s) = std::fs::read_to_string("/proc/self/limits") {
            // "Max address space   <soft>   <hard>   bytes"
            if let Some(l) = s.lines().find(|l| l.starts_with("Max address space")) {
                if let Some(v) =
                    l["Max address space".len()..].split_whitespace().next().and_then(|v| v.parse::<u64>().ok())
                {
                    m = m.min(v);
                }
            }
        }
        for f in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
            if let Some(v) = std::fs::read_to_string(f).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                m = m.min(v);
            }
        }
        if m == u64::MAX {
            m = 8 << 30;
        }
        usize::try_from(m / 4 * 3).unwrap_or(usize::MAX)
    })
}

fn read_field(file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(file).ok()?;
    let l = s.lines().find(|l| l.starts_with(key))?;
    l[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Human-readable size: "1.5 GiB", "640 MiB", "12 KiB", "100 B".
pub fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1 << 20) as f64 {
        format!("{:.0} MiB", b / (1 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Fails when `bytes` (for `what`) is over the limit, before anything is allocated.
pub fn check_memory(what: &str, bytes: usize) -> Result<()> {
    let max = max_memory();
    if bytes > max {
        return Err(Error::Invalid(format!(
            "{what} needs {}, more than the memory limit of {} (raise it with --max-memory)",
            human_bytes(bytes),
            human_bytes(max)
        )));
    }
    Ok(())
}

/// `count` elements of `elem` bytes, or an error when that overflows.
pub fn checked_bytes(shape: &[usize], elem: usize) -> Option<usize> {
    shape.iter().try_fold(elem, |a, &d| a.checked_mul(d))
}

/// Parses a size: plain bytes or with a K/M/G/T suffix (powers of 1024), e.g. "512M", "2G", "1.5G".
pub fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(format!("bad size '{s}' (want e.g. 512M, 2G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("bad size '{s}' (want e.g. 512M, 2G)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("bad size '{s}': must be positive"));
    }
    Ok((v * mul as f64).min(usize::MAX as f64) as usize)
}
