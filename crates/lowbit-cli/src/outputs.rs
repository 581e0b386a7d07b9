//! Output safety: before any work starts, every file a command will write is checked against its
//! inputs and its other outputs, and refused when it is a folder, a symlink, a device or other
//! special file, or read-only (the last three unless `--force`); its folder must exist and be
//! writable. Writes then go through a temporary file and a rename ([`write_atomic`]), so an
//! interrupted command leaves the old file or the new one, never half of one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, bail, Context, Result};

static FORCE: AtomicBool = AtomicBool::new(false);

/// `--force`: allow replacing inputs, symlinks, special and read-only files.
pub fn set_force(f: bool) {
    FORCE.store(f, Ordering::Relaxed);
}

fn force() -> bool {
    FORCE.load(Ordering::Relaxed)
}

/// An absolute, normalized spelling of `p` whose folder is resolved through symlinks (the file
/// itself is not followed, so a link and its target stay different paths).
fn resolved(p: &Path) -> Option<PathBuf> {
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(p.file_name()?))
}

/// Do `a` and `b` name the same file (same path once resolved, or the same inode)?
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Some(x), Some(y)) = (resolved(a), resolved(b)) {
        if x == y {
            return true;
        }
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Checks the outputs `(flag, path)` of a command whose inputs are `inputs`, before the work.
pub fn check_outputs(inputs: &[&Path], outputs: &[(&str, &Path)]) -> Result<()> {
    for (i, &(flag, p)) in outputs.iter().enumerate() {
        let shown = p.display();
        if p.as_os_str().is_empty() {
            bail!("{flag}: empty path");
        }
        let folder = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !folder.is_dir() {
            bail!("{shown} ({flag}): folder {} does not exist", folder.display());
        }
        for &inp in inputs {
            if same_file(p, inp) && !force() {
                bail!("{shown} ({flag}): is the input {}; refusing to replace it (pass --force)", inp.display());
            }
        }
        for &(flag2, q) in &outputs[..i] {
            if same_file(p, q) {
                bail!("{shown}: {flag2} and {flag} name the same file");
            }
        }
        if let Ok(m) = std::fs::symlink_metadata(p) {
            let ft = m.file_type();
            if ft.is_dir() {
                bail!("{shown} ({flag}): is a folder; give a file name");
            }
            if !force() {
                if ft.is_symlink() {
                    bail!("{shown} ({flag}): is a symlink; refusing to replace it (pass --force to replace the link)");
                }
                if !ft.is_file() {
                    bail!("{shown} ({flag}): not a regular file (a device, FIFO or socket); refusing to replace it (pass --force)");
                }
                if m.permissions().readonly() {
                    bail!("{shown} ({flag}): is read-only; refusing to replace it (pass --force)");
                }
            }
        }
        writable(folder).with_context(|| format!("{shown} ({flag}): folder {} is not writable", folder.display()))?;
    }
    Ok(())
}

/// An output folder (created if missing): refused when the path exists and is not a folder.
pub fn check_folder(flag: &str, dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!("{} ({flag}): exists and is not a folder", dir.display()),
        Ok(_) => writable(dir).with_context(|| format!("{} ({flag}): folder is not writable", dir.display())),
        Err(_) => Ok(()),
    }
}

/// Creates and removes a probe file in `dir`.
fn writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".lowbit-probe-{}", std::process::id()));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Writes bytes to `path` through a temporary file in the same folder and a rename. An existing
/// regular file keeps its permissions. Errors name `path`, never the temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let folder = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = folder.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if m.file_type().is_file() {
                std::fs::set_permissions(&tmp, m.permissions())?;
            }
        }
        std::fs::rename(&tmp, path)
    })();
    r.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("{}: cannot write: {e}", path.display())
    })
}
