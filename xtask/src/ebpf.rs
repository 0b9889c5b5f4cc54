//! Building the eBPF object (`gateway-ebpf/`) with the Debian rustc (see docs/TOOLCHAIN.md).
//!
//! The eBPF crate is its own workspace and is built by `/usr/bin/cargo` (rustc-web, which has
//! the standard library sources that `-Z build-std=core` needs, unlocked with
//! `RUSTC_BOOTSTRAP=1`) for `bpfel-unknown-none`, linked by `bpf-linker`. The userspace
//! workspace keeps using rustup's stable toolchain.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Target triple of the eBPF object.
pub const EBPF_TARGET: &str = "bpfel-unknown-none";
/// Crate directory, relative to the workspace root.
pub const EBPF_CRATE_DIR: &str = "gateway-ebpf";
/// Binary (object) name.
pub const EBPF_OBJECT_NAME: &str = "gateway-ebpf";
/// Environment variable through which `gateway/build.rs` receives the object's path.
pub const EBPF_OBJ_ENV: &str = "TAILGATE_EBPF_OBJ";

const SYSTEM_CARGO: &str = "/usr/bin/cargo";
const SYSTEM_RUSTC: &str = "/usr/bin/rustc";
const SETUP_HINT: &str = "run `cargo xtask setup` (see docs/TOOLCHAIN.md)";

/// Where the object of a build with `release` ends up.
pub fn ebpf_object_path(workspace_root: &Path, release: bool) -> PathBuf {
    workspace_root
        .join(EBPF_CRATE_DIR)
        .join("target")
        .join(EBPF_TARGET)
        .join(if release { "release" } else { "debug" })
        .join(EBPF_OBJECT_NAME)
}

/// Builds `gateway-ebpf` and returns the absolute path of the eBPF object. Pass it to the
/// userspace build as `TAILGATE_EBPF_OBJ=<path>` to embed it.
pub fn build_ebpf(workspace_root: &Path, release: bool) -> Result<PathBuf> {
    let workspace_root = workspace_root
        .canonicalize()
        .with_context(|| format!("workspace root {}", workspace_root.display()))?;
    let crate_dir = workspace_root.join(EBPF_CRATE_DIR);
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("{} not found", manifest.display());
    }

    let path = tool_path()?;
    check_toolchain(&path)?;

    let mut cmd = Command::new(SYSTEM_CARGO);
    cmd.current_dir(&crate_dir)
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(crate_dir.join("target"))
        .arg("--target")
        .arg(EBPF_TARGET)
        .args(["-Z", "build-std=core"]);
    if release {
        cmd.arg("--release");
    }
    // Anything inherited from an outer (rustup) cargo would point the build at the wrong
    // compiler or flags.
    for var in [
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_MANIFEST_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PATH", &path)
        .env("RUSTC", SYSTEM_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1");

    eprintln!(
        "building eBPF object: {SYSTEM_CARGO} build{} --target {EBPF_TARGET} -Z build-std=core \
         ({})",
        if release { " --release" } else { "" },
        crate_dir.display()
    );
    let status = cmd
        .status()
        .with_context(|| format!("running {SYSTEM_CARGO}"))?;
    if !status.success() {
        bail!("building {EBPF_CRATE_DIR} failed ({status})");
    }

    let object = ebpf_object_path(&workspace_root, release);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} does not exist",
            object.display()
        );
    }
    eprintln!(
        "eBPF object: {} (embed it with {EBPF_OBJ_ENV}=<path> cargo build -p tailgate)",
        object.display()
    );
    Ok(object)
}

/// PATH for the eBPF build: `/usr/bin` first (so that `rustc`/`cargo` are the Debian ones, not
/// rustup's proxies), then the caller's PATH, then `$CARGO_HOME/bin` (where `cargo install`
/// puts bpf-linker) if it is not already there.
fn tool_path() -> Result<OsString> {
    let mut dirs = vec![PathBuf::from("/usr/bin")];
    if let Some(p) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&p).filter(|d| d != Path::new("/usr/bin")));
    }
    if let Some(bin) = cargo_home().map(|h| h.join("bin")) {
        if !dirs.contains(&bin) {
            dirs.push(bin);
        }
    }
    env::join_paths(dirs).context("building PATH")
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

fn find_in_path(path: &OsString, name: &str) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Checks the pieces of docs/TOOLCHAIN.md: the Debian cargo/rustc, the standard library sources
/// for `-Z build-std`, and bpf-linker.
fn check_toolchain(path: &OsString) -> Result<()> {
    for tool in [SYSTEM_CARGO, SYSTEM_RUSTC] {
        if !Path::new(tool).is_file() {
            bail!("{tool} not found (Debian packages rustc-web and cargo-web); {SETUP_HINT}");
        }
    }
    let out = Command::new(SYSTEM_RUSTC)
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("running {SYSTEM_RUSTC} --print sysroot"))?;
    if !out.status.success() {
        bail!(
            "{SYSTEM_RUSTC} --print sysroot failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core_src.is_file() {
        bail!(
            "the Rust standard library sources are missing ({} not found; Debian package \
             rust-web-src); {SETUP_HINT}",
            core_src.display()
        );
    }
    if find_in_path(path, "bpf-linker").is_none() {
        bail!("bpf-linker not found in PATH or $CARGO_HOME/bin; {SETUP_HINT}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_path_layout() {
        let p = ebpf_object_path(Path::new("/w"), true);
        assert_eq!(
            p,
            Path::new("/w/gateway-ebpf/target/bpfel-unknown-none/release/gateway-ebpf")
        );
    }

    #[test]
    fn path_starts_with_usr_bin() {
        let p = tool_path().unwrap();
        let first = env::split_paths(&p).next().unwrap();
        assert_eq!(first, Path::new("/usr/bin"));
    }
}
