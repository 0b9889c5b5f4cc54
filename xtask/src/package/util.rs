//! Small helpers shared by the package build and its check: running tools, installing files
//! with fixed modes, and a scratch directory that is removed (safely) when dropped.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `cmd` and returns its standard output (trimmed); fails with its standard error unless
/// it exits 0.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cmd` with inherited output; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Strips symbols, comments and notes from the binary at `path`, in place.
pub fn strip(path: &Path) -> Result<()> {
    run(Command::new("strip")
        .args([
            "--remove-section=.comment",
            "--remove-section=.note",
            "--strip-unneeded",
        ])
        .arg(path))
}

/// Copies the binary `bin` to `to` and strips the copy.
pub fn copy_stripped(bin: &Path, to: &Path) -> Result<()> {
    fs::copy(bin, to).with_context(|| format!("copying {}", bin.display()))?;
    strip(to)
}

/// Creates `dir` and its missing parents with mode 0755.
pub fn mkdir(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        set_mode(d, 0o755)?;
    }
    Ok(())
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Writes `data` to `dest` (parents created) with `mode`.
pub fn write(dest: &Path, data: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    if let Some(parent) = dest.parent() {
        mkdir(parent)?;
    }
    fs::write(dest, data).with_context(|| format!("writing {}", dest.display()))?;
    set_mode(dest, mode)
}

/// Copies `src` to `dest` (parents created) with `mode`.
pub fn install(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    write(dest, data, mode)
}

/// `gzip -9n` of `src` into `dest` (no name or time stamp in the header, as Debian wants).
pub fn install_gzipped(src: &Path, dest: &Path) -> Result<()> {
    let out = Command::new("gzip")
        .args(["-9n", "-c"])
        .arg(src)
        .output()
        .context("running gzip")?;
    if !out.status.success() {
        bail!(
            "gzip {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    write(dest, out.stdout, 0o644)
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/self/mounts escapes spaces and the like as octal; our paths have none.
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

/// Removes `dir` recursively, unmounting whatever is mounted below it first (a bootstrap tool
/// killed half-way can leave /proc or /dev mounted in a root); refuses to delete anything
/// while a mount remains, so a host file system is never deleted through a bind mount.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for m in mounts_below(dir) {
        let _ = Command::new("umount").arg(&m).status();
    }
    for m in mounts_below(dir) {
        let _ = Command::new("umount").arg("--lazy").arg(&m).status();
    }
    let left = mounts_below(dir);
    if !left.is_empty() {
        bail!(
            "not removing {}: still mounted below it: {left:?}",
            dir.display()
        );
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// A scratch directory, emptied when created and removed when dropped (also on errors).
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `path` afresh, removing what an earlier, interrupted run left there.
    pub fn new(path: PathBuf) -> Result<ScratchDir> {
        remove_tree(&path)?;
        mkdir(&path)?;
        Ok(ScratchDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            eprintln!("xtask: {e:#}");
        }
    }
}
