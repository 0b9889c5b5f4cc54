//! `cargo xtask setup`: installs what the build and the tests need, only what is missing.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages: the Debian rustc with library sources (eBPF build), LLVM for bpf-linker,
/// the peers and tools the lab tests use, and the packaging tools.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "wireguard-tools",
    "wireguard-go",
    "iperf3",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "procps",
    "ethtool",
    "nftables",
    // promtool checks the /metrics exposition.
    "prometheus",
    // MagicDNS tests: dig, an upstream resolver, and a load generator.
    "bind9-dnsutils",
    "dnsmasq-base",
    "dnsperf",
    // ACL tests: TCP and UDP probes.
    "netcat-openbsd",
    // Port-mapping lab (UPnP IGD, NAT-PMP, PCP): miniupnpd in a NAT box, and reference clients.
    "miniupnpd-nftables",
    "miniupnpc",
    "natpmpc",
    // The Debian package (`cargo xtask package deb`) and its check: man page, lintian,
    // dpkg-shlibdeps, a fresh root to install it into and systemd-nspawn to boot that root.
    "help2man",
    "lintian",
    "dpkg-dev",
    "mmdebstrap",
    "systemd-container",
    // The container image (`cargo xtask package oci`) and its check: skopeo and umoci read the
    // archive, podman loads and runs it (with runc, which works with either cgroup version).
    "skopeo",
    "umoci",
    "podman",
    "runc",
    // The QNAP package's check: busybox is the shell and tool set of its QTS-like root.
    "busybox",
    // The appliance disk image (`cargo xtask package image`) and its check: GRUB for BIOS
    // machines (grub-mkimage and its modules), qemu-img (qcow2), the NoCloud seed ISO and
    // qemu to boot the image.
    "grub-pc-bin",
    "qemu-utils",
    "genisoimage",
    "qemu-system-x86",
    // The cloud-init check (`cargo xtask test package_cloud_init`): Debian's cloud-init runs
    // from an unpacked copy (see package::install_cloud_init), with these libraries it imports.
    "python3-yaml",
    "python3-jsonschema",
    "python3-jinja2",
    "python3-configobj",
    "python3-requests",
    "python3-jsonpatch",
    "python3-netifaces",
    "python3-oauthlib",
    "python3-serial",
    // The Kubernetes check: kubernetes-validate in a venv (package::install_kubernetes_validate).
    "python3-venv",
];

/// Tools installed with `cargo install`: (binary, crate, version, extra args, PATH prefix).
const CARGO_TOOLS: &[(&str, &str, &str, &[&str], &str)] = &[
    (
        "bpf-linker",
        "bpf-linker",
        "0.13.0",
        &["--no-default-features", "--features", "llvm-22"],
        "/usr/lib/llvm-22/bin",
    ),
    ("boringtun-cli", "boringtun-cli", "0.7.1", &[], ""),
];

/// Installs whatever is missing; does nothing slow when everything is present.
pub fn run() -> Result<()> {
    install_apt_packages()?;
    for (bin, krate, version, extra, path_prefix) in CARGO_TOOLS {
        install_cargo_tool(bin, krate, version, extra, path_prefix)?;
    }
    mount_bpffs()?;
    crate::package::install_cloud_init()?;
    crate::package::install_kubernetes_validate()?;
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn apt_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn install_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; run `cargo xtask setup` as root");
    }
    println!("xtask setup: installing {}", missing.join(" "));
    run_ok(Command::new("apt-get").args(["update", "-qq"]))?;
    run_ok(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn tool_version_ok(bin: &str, version: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
        .unwrap_or(false)
}

fn install_cargo_tool(
    bin: &str,
    krate: &str,
    version: &str,
    extra: &[&str],
    path_prefix: &str,
) -> Result<()> {
    if tool_version_ok(bin, version) {
        return Ok(());
    }
    println!("xtask setup: cargo install {krate} {version}");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["install", "--locked", krate, "--version", version])
        .args(extra);
    if !path_prefix.is_empty() {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{path_prefix}:{path}"));
    }
    run_ok(&mut cmd)?;
    if !tool_version_ok(bin, version) {
        bail!("{bin} {version} was installed but is not on PATH (add ~/.cargo/bin to PATH)");
    }
    Ok(())
}

fn mount_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    if !is_root() || !Path::new("/sys/fs/bpf").is_dir() {
        println!("xtask setup: /sys/fs/bpf is not mounted (needs root); XDP tests may skip");
        return Ok(());
    }
    run_ok(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
