//! `cargo xtask …`: set-up, build, test and demo for tailgate.
//!
//! - `setup`: installs every tool the build and the tests need (idempotent, quick when done)
//! - `build`: builds the eBPF object and `target/release/tailgate` with it embedded
//! - `test`:  setup + build + fmt + clippy + every test (unit and network-namespace tests) +
//!   the package check (lintian, install into fresh Debian roots, the unit started there) +
//!   the image check (skopeo, umoci, podman, the image started in a lab)
//! - `demo`:  setup + build + a lab of namespaces with two tailgate nodes and one wireguard-go
//! - `bench tunnel [--quick] [--out PATH]`: setup + build + the tunnel benchmark (tailgate vs
//!   veth, wireguard-go and boringtun-cli), written to `docs/benchmarks.md` by default
//! - `bench forward [--quick] [--out PATH]`: setup + build + the forwarding benchmark (a subnet
//!   router's XDP path vs its nftables path, LPM tables with 1,000,000 prefixes), written to
//!   `docs/benchmarks-forward.md` by default
//! - `bench failover [--quick] [--trials N] [--out PATH]`: setup + build + the HA failover
//!   benchmark (kill -9, WAN link down, LAN probe failing; 20 trials each), written to
//!   `docs/benchmarks-failover.md` by default
//! - `bench dns [--quick] [--out PATH]`: setup + build + the MagicDNS benchmark (tailgate's
//!   resolver vs a dnsmasq forwarder, with dnsperf), written to `docs/benchmarks-dns.md`
//! - `bench acl [--quick] [--out PATH]`: setup + build + the access-control benchmark (a subnet
//!   router's XDP path with a 1,000-rule policy vs none), written to `docs/benchmarks-acl.md`
//! - `bench relay [--quick] [--out PATH]`: setup + build + the relay benchmark (`tailgate derp
//!   serve` over TLS, plain HTTP and a two-server mesh vs direct UDP), written to
//!   `docs/benchmarks-relay.md`
//! - `package deb`: setup + build + the Debian package in `target/deb/` (docs/packaging.md)
//! - `package oci`: setup + build + the container image `target/oci/tailgate-oci.tar`
//!   (docs/container.md)
//! - `package spk`: setup + build + the Synology DSM 7 package
//!   `target/spk/tailgate-x86_64-<version>.spk` (docs/synology.md)
//! - `package qpkg`: setup + build + the QNAP QTS package
//!   `target/qpkg/tailgate_<version>_x86_64.qpkg` (docs/qnap.md)
//! - `package image`: setup + build + the bootable appliance disk image
//!   `target/image/tailgate-appliance.img` (and `.qcow2`) (docs/appliance-image.md)
//! - `package cloud-init --deb-url URL --login-server URL --auth-key KEY --routes CIDRS`:
//!   `#cloud-config` user data in `target/cloud-init/` (docs/cloud-init.md)
//! - `package k8s --routes CIDRS [--image IMAGE] [--auth-key KEY --login-server URL]`:
//!   Kubernetes manifests in `target/k8s/` (docs/kubernetes.md)

mod ebpf;
mod package;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, set-up, test and demo tasks for tailgate"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build and tests need (Debian packages, bpf-linker, boringtun-cli).
    Setup,
    /// Build the eBPF object and target/release/tailgate with it embedded.
    Build,
    /// Run set-up, build, format and lint checks, and all tests (needs root for the lab tests).
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Build everything and run a demo lab: two tailgate nodes and a wireguard-go node.
    Demo,
    /// Build target/release/tailgate and package it into target/deb/ or target/oci/.
    Package {
        #[command(subcommand)]
        format: PackageFormat,
    },
    /// Build everything and run a benchmark (needs root).
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum PackageFormat {
    /// A Debian package: binary, hardened systemd unit, default config, man page.
    Deb,
    /// A container image (OCI archive, also docker-loadable) with the package installed.
    Oci,
    /// A Synology DSM 7 package (.spk): runs as a package user, with an install wizard for the
    /// login server and auth key.
    Spk,
    /// A QNAP QTS package (.qpkg), in QDK's self-extracting format, built without QDK.
    Qpkg,
    /// A bootable appliance disk image (raw and qcow2): Debian, cloud-init, the package.
    Image,
    /// #cloud-config user data for cloud VMs (subnet router, exit node, HA pair) with your
    /// package URL, login server, auth key and routes, in target/cloud-init/ (no build needed).
    CloudInit(package::CloudInitArgs),
    /// Kubernetes manifests (HA subnet-router pair, exit node, auth Secret) with your routes and
    /// image, in target/k8s/ (no build needed).
    K8s(package::K8sArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// Throughput, packet rate, CPU per GB and memory of tailgate vs plain veth, wireguard-go
    /// and boringtun-cli, each between two namespaces joined by a veth, tunnel MTU 1280.
    Tunnel {
        /// One run of 2 s per figure instead of the median of 3 runs of 5 s.
        #[arg(long)]
        quick: bool,
        /// Where to write the Markdown report [default: docs/benchmarks.md in the workspace].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Packets per second and TCP throughput through a subnet router with the XDP fast path
    /// vs the nftables path (same topology, same run, with the ratios), the router stage
    /// alone, and longest-prefix-match tables with 1,000,000 prefixes.
    Forward {
        /// One run of 2 s per end-to-end figure instead of the median of 3 runs of 5 s.
        #[arg(long)]
        quick: bool,
        /// Where to write the Markdown report [default: docs/benchmarks-forward.md in the
        /// workspace].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// HA failover: two routers for one prefix behind a control server, a client pinging a
    /// LAN host every 10 ms, the primary killed (-9), cut off (WAN link down) or with a failing
    /// LAN probe; median and worst gap per kind.
    Failover {
        /// 3 trials per failure kind instead of 20.
        #[arg(long)]
        quick: bool,
        /// Trials per failure kind [default: 20].
        #[arg(long, value_name = "N")]
        trials: Option<usize>,
        /// Where to write the Markdown report [default: docs/benchmarks-failover.md in the
        /// workspace].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// MagicDNS: queries per second of tailgate's resolver for tailnet and forwarded names vs
    /// a dnsmasq forwarder with the same names and upstream (dnsperf, same run, ratios).
    Dns {
        /// One run of 1 s per figure instead of the median of 3 runs of 5 s.
        #[arg(long)]
        quick: bool,
        /// Where to write the Markdown report [default: docs/benchmarks-dns.md in the
        /// workspace].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Access control: forwarding through a subnet router on its XDP path with a 1,000-rule
    /// policy vs no policy (same run, the ratio and the ≤ 10 % cost goal), and the packet
    /// filter's classifier with 10 to 10,000 rules.
    Acl {
        /// One run of 2 s per figure instead of the median of 3 runs of 5 s.
        #[arg(long)]
        quick: bool,
        /// Where to write the Markdown report [default: docs/benchmarks-acl.md in the
        /// workspace].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Relay: packets per second and throughput between two clients through `tailgate derp
    /// serve` (TLS, plain HTTP, a mesh of two servers) vs direct UDP, same run.
    Relay {
        /// One run of 2 s per figure instead of the median of 3 runs of 5 s.
        #[arg(long)]
        quick: bool,
        /// Where to write the Markdown report [default: docs/benchmarks-relay.md in the
        /// workspace].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

/// `--out` resolved against where the user ran xtask, else `default` in the workspace.
fn report_path(root: &Path, out: Option<PathBuf>, default: &str) -> Result<PathBuf> {
    Ok(match out {
        Some(p) if p.is_relative() => std::env::current_dir()?.join(p),
        Some(p) => p,
        None => root.join(default),
    })
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build(&root).map(drop)
        }
        Task::Test { filter } => {
            setup::run()?;
            let bin = build(&root)?;
            test(&root, &bin, filter.as_deref())
        }
        Task::Demo => {
            setup::run()?;
            let bin = build(&root)?;
            lab_binary(&root, "tailgate-demo")?.arg(&bin).status_ok()
        }
        // Rendering cloud-init files and Kubernetes manifests needs no tools and no build.
        Task::Package {
            format: PackageFormat::CloudInit(args),
        } => package::render_cloud_init(&root, &args).map(drop),
        Task::Package {
            format: PackageFormat::K8s(args),
        } => package::render_k8s(&root, &args).map(drop),
        Task::Package { format } => {
            setup::run()?;
            let bin = build(&root)?;
            match format {
                PackageFormat::Deb => package::build(&root, &bin).map(drop),
                PackageFormat::Oci => package::build_oci(&root, &bin).map(drop),
                PackageFormat::Spk => package::build_spk(&root, &bin).map(drop),
                PackageFormat::Qpkg => package::build_qpkg(&root, &bin).map(drop),
                PackageFormat::Image => package::build_image(&root, &bin).map(drop),
                PackageFormat::CloudInit(_) | PackageFormat::K8s(_) => {
                    unreachable!("rendered above, without a build")
                }
            }
        }
        Task::Bench { bench } => {
            let (name, default_out, quick, trials, out) = match bench {
                Bench::Tunnel { quick, out } => (
                    "tailgate-bench-tunnel",
                    "docs/benchmarks.md",
                    quick,
                    None,
                    out,
                ),
                Bench::Forward { quick, out } => (
                    "tailgate-bench-forward",
                    "docs/benchmarks-forward.md",
                    quick,
                    None,
                    out,
                ),
                Bench::Failover { quick, trials, out } => (
                    "tailgate-bench-failover",
                    "docs/benchmarks-failover.md",
                    quick,
                    trials,
                    out,
                ),
                Bench::Dns { quick, out } => (
                    "tailgate-bench-dns",
                    "docs/benchmarks-dns.md",
                    quick,
                    None,
                    out,
                ),
                Bench::Acl { quick, out } => (
                    "tailgate-bench-acl",
                    "docs/benchmarks-acl.md",
                    quick,
                    None,
                    out,
                ),
                Bench::Relay { quick, out } => (
                    "tailgate-bench-relay",
                    "docs/benchmarks-relay.md",
                    quick,
                    None,
                    out,
                ),
            };
            let out = report_path(&root, out, default_out)?;
            setup::run()?;
            let bin = build(&root)?;
            let mut cmd = lab_binary(&root, name)?;
            if quick {
                cmd.arg("--quick");
            }
            if let Some(n) = trials {
                cmd.arg("--trials").arg(n.to_string());
            }
            cmd.arg("--out").arg(&out).arg(&bin).status_ok()
        }
    }
}

/// `cargo run` of a binary of the lab crate. The lab links the tailgate library (and some
/// benchmarks load the XDP programs themselves), so it is built with the same eBPF object.
fn lab_binary(root: &Path, name: &str) -> Result<Command> {
    let mut cmd = cargo(
        root,
        &[
            "run",
            "--release",
            "--quiet",
            "-p",
            "tailgate-bench",
            "--bin",
            name,
            "--",
        ],
    );
    cmd.env("TAILGATE_EBPF_OBJ", ebpf::build_ebpf(root, true)?);
    Ok(cmd)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Builds the eBPF object, then the release binary that embeds it; returns the binary path.
fn build(root: &Path) -> Result<PathBuf> {
    let object = ebpf::build_ebpf(root, true)?;
    println!("xtask: eBPF object {}", object.display());
    cargo(root, &["build", "--release", "-p", "tailgate"])
        .env("TAILGATE_EBPF_OBJ", &object)
        .status_ok()?;
    let bin = root.join("target/release/tailgate");
    println!("xtask: built {}", bin.display());
    Ok(bin)
}

fn test(root: &Path, bin: &Path, filter: Option<&str>) -> Result<()> {
    let object = ebpf::build_ebpf(root, true)?;
    cargo(root, &["fmt", "--all", "--", "--check"]).status_ok()?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )
    .env("TAILGATE_EBPF_OBJ", &object)
    .status_ok()?;
    let mut cmd = cargo(root, &["test", "--workspace", "--release"]);
    cmd.env("TAILGATE_EBPF_OBJ", &object)
        .env("TAILGATE_BIN", bin);
    cmd.arg("--");
    if let Some(f) = filter {
        cmd.arg(f);
    }
    // The lab tests share two cores with the peers they start; run them one at a time.
    cmd.arg("--test-threads=1");
    cmd.status_ok()?;
    // The packages, checked as if they were tests named `package_<kind>`.
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f));
    let deb = wanted("package_deb");
    let oci = wanted("package_oci");
    if deb || oci {
        package::check(root, bin, deb, oci)?;
    }
    for (name, check) in package::MORE_CHECKS {
        if wanted(name) {
            check(root, bin).with_context(|| format!("check {name}"))?;
        }
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root).args(args);
    c
}

/// Runs a command and fails unless it exits 0.
trait StatusOk {
    fn status_ok(&mut self) -> Result<()>;
}

impl StatusOk for Command {
    fn status_ok(&mut self) -> Result<()> {
        let status = self.status().with_context(|| format!("running {self:?}"))?;
        if !status.success() {
            bail!("{self:?} failed: {status}");
        }
        Ok(())
    }
}
