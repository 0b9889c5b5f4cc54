//! Locates the eBPF object (`gateway-ebpf`) to embed in the daemon.
//!
//! - `TAILGATE_EBPF_OBJ=<path>` (set by `cargo xtask build`): embed that file; it must exist.
//! - otherwise, if `gateway-ebpf/target/bpfel-unknown-none/release/gateway-ebpf` exists (a
//!   previous `cargo xtask build`/`build-ebpf`), embed it;
//! - otherwise build without it: `tailgate::xdp` then reports that XDP is unavailable.
//!
//! When an object is embedded this script sets `cfg(tailgate_ebpf_obj)` and the env variable
//! `TAILGATE_EBPF_OBJ_PATH` (absolute path) for `include_bytes_aligned!`.

use std::env;
use std::path::{Path, PathBuf};

const ENV_OBJ: &str = "TAILGATE_EBPF_OBJ";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tailgate_ebpf_obj)");
    println!("cargo::rerun-if-env-changed={ENV_OBJ}");
    println!("cargo::rerun-if-changed=build.rs");

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));

    let object = match env::var_os(ENV_OBJ).filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = manifest_dir.join(path);
            if !path.is_file() {
                panic!(
                    "{ENV_OBJ}={} does not name a file; build the eBPF object with \
                     `cargo xtask build` (or unset {ENV_OBJ})",
                    path.display()
                );
            }
            Some(path)
        }
        None => {
            let ebpf_target = manifest_dir.join("../gateway-ebpf/target");
            let release = ebpf_target.join("bpfel-unknown-none/release");
            let candidate = release.join("gateway-ebpf");
            if candidate.is_file() {
                Some(candidate)
            } else {
                // Rerun once the object appears: watch the deepest directory that exists
                // (a missing path would make cargo rerun this script on every build).
                let watch = [
                    release.as_path(),
                    &ebpf_target.join("bpfel-unknown-none"),
                    &ebpf_target,
                    &manifest_dir.join("../gateway-ebpf"),
                ]
                .into_iter()
                .find(|p| p.is_dir())
                .map(Path::to_path_buf);
                if let Some(dir) = watch {
                    println!("cargo::rerun-if-changed={}", dir.display());
                }
                None
            }
        }
    };

    if let Some(path) = object {
        let path = path.canonicalize().unwrap_or(path);
        println!("cargo::rerun-if-changed={}", path.display());
        println!("cargo::rustc-cfg=tailgate_ebpf_obj");
        println!("cargo::rustc-env=TAILGATE_EBPF_OBJ_PATH={}", path.display());
    } else {
        println!(
            "cargo::warning=eBPF object not found: building tailgate without XDP support \
             (build with `cargo xtask build` to embed it)"
        );
    }
}
