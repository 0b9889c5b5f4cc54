//! The package check of `cargo xtask test`: builds the .deb, runs lintian on it, installs it
//! with apt into fresh Debian roots (mmdebstrap; one with systemd-resolved) and boots each
//! with systemd-nspawn, where `fresh_root_check.sh` verifies the unit, starts the daemon under
//! the unit's sandbox, goes through upgrade, removal, purge and reinstall, and does the
//! control-mode first run of docs/packaging.md. Then the container image built from the same
//! package is checked (see [`super::oci_check`]).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::deb::{self, Deb, OUT_DIR};
use super::util::{self, stdout_of, write, ScratchDir};

/// The script the booted root runs, and the unit that runs it.
const CHECK_SCRIPT: &str = include_str!("fresh_root_check.sh");
const CHECK_UNIT: &str = "\
[Unit]
Description=tailgate package check
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/tailgate-package-check
StandardOutput=append:/root/package-check.log
StandardError=inherit

[Install]
WantedBy=multi-user.target
";

/// A fresh root to check the package in.
struct RootKind {
    /// What distinguishes it (also its directory name).
    name: &'static str,
    /// Packages it gets besides the essential set.
    include: &'static str,
}

/// The roots: the daemon points the system at MagicDNS by rewriting /etc/resolv.conf, or
/// through systemd-resolved when that runs. Both get systemd to boot, man-db (for
/// `systemd-analyze verify`, which looks up the unit's man page) and the tools the check
/// script uses; apt adds nftables, which the package recommends, itself, except with
/// systemd-resolved, whose stub resolv.conf leaves the chroot unable to resolve the mirror.
const ROOTS: &[RootKind] = &[
    RootKind {
        name: "resolv-conf",
        include: "systemd,man-db,iproute2,wireguard-tools",
    },
    RootKind {
        name: "systemd-resolved",
        include: "systemd,systemd-resolved,dbus,man-db,iproute2,wireguard-tools,nftables",
    },
];
/// How long the booted root may take for all its steps.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Builds the package from `bin` and checks it (see the module documentation) if `deb`, and
/// the container image made from it if `oci`.
pub fn check(root: &Path, bin: &Path, deb: bool, oci: bool) -> Result<()> {
    let package = deb::build(root, bin)?;
    if deb {
        let started = Instant::now();
        lintian(&package.path)?;
        for kind in ROOTS {
            fresh_root(root, &package, kind)?;
        }
        println!(
            "xtask: package check passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    if oci {
        super::oci_check::check(root, &package)?;
    }
    Ok(())
}

/// lintian, failing on errors and warnings (overrides, with their reasons, are in
/// image/deb/lintian-overrides).
fn lintian(deb: &Path) -> Result<()> {
    println!("xtask: lintian {}", deb.display());
    let out = Command::new("lintian")
        .args([
            "--fail-on",
            "error,warning",
            "--display-info",
            "--tag-display-limit",
            "0",
        ])
        .arg(deb)
        .output()
        .context("running lintian (install it with `cargo xtask setup`)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    // lintian warns that it runs as root; nothing else is expected on stderr.
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if !line.contains("running with root privileges") {
            eprintln!("{line}");
        }
    }
    if !out.status.success() {
        bail!("lintian found errors or warnings in {}", deb.display());
    }
    println!("xtask: lintian: no errors or warnings");
    Ok(())
}

/// The host's codename and the apt sources for it, for mmdebstrap.
pub(super) fn host_suite_and_sources() -> Result<(String, String)> {
    let os_release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let suite = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME")?;
    let sources = ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]
        .into_iter()
        .find(|p| {
            fs::read_to_string(p).is_ok_and(|t| {
                t.lines()
                    .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            })
        })
        .context("no apt sources for the fresh root: neither /etc/apt/sources.list.d/debian.sources nor /etc/apt/sources.list lists any")?;
    Ok((suite, sources.to_string()))
}

/// Installs the package with apt into a fresh root and boots it (see the module docs).
fn fresh_root(root: &Path, deb: &Deb, kind: &RootKind) -> Result<()> {
    let (suite, sources) = host_suite_and_sources()?;
    let scratch = ScratchDir::new(root.join(OUT_DIR).join(format!("fresh-root-{}", kind.name)))?;
    let dir = scratch.path().join("root");
    let name = deb
        .path
        .file_name()
        .context("package path has no file name")?
        .to_string_lossy()
        .to_string();
    println!(
        "xtask: fresh {suite} root ({}) with {name} installed by apt (mmdebstrap)",
        kind.name
    );
    let t = Instant::now();
    util::run(
        Command::new("mmdebstrap")
            .args([
                "--quiet",
                "--mode=root",
                "--variant=minbase",
                "--format=directory",
            ])
            .arg(format!("--include={}", kind.include))
            .arg(format!(
                "--customize-hook=copy-in {} /srv",
                deb.path.display()
            ))
            .arg(format!(
                "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get \
                 install --yes --install-recommends /srv/{name}"
            ))
            .arg(&suite)
            .arg(&dir)
            .arg(&sources),
    )?;
    println!(
        "xtask: fresh root ready in {:.0} s",
        t.elapsed().as_secs_f64()
    );

    // Files as the package installed them, and the binary runs from the root.
    for f in [
        "usr/bin/tailgate",
        deb::UNIT_PATH,
        deb::CONFFILE,
        "usr/share/man/man1/tailgate.1.gz",
        "usr/share/doc/tailgate/copyright",
        "usr/share/doc/tailgate/changelog.gz",
    ] {
        if !dir.join(f).is_file() {
            bail!("the installed package has no /{f}");
        }
    }
    let version = stdout_of(
        Command::new("chroot")
            .arg(&dir)
            .args(["tailgate", "--version"]),
    )?;
    if !version.ends_with(&format!(" {}", deb.version.replace('~', "-"))) {
        bail!("tailgate --version in the fresh root says {version:?}");
    }

    // The check runs at boot, writes its log and a marker, and powers the container off.
    write(
        &dir.join("usr/local/sbin/tailgate-package-check"),
        CHECK_SCRIPT,
        0o755,
    )?;
    let unit = dir.join("etc/systemd/system/tailgate-package-check.service");
    write(&unit, CHECK_UNIT, 0o644)?;
    let wants = dir.join("etc/systemd/system/multi-user.target.wants");
    util::mkdir(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/tailgate-package-check.service",
        wants.join("tailgate-package-check.service"),
    )
    .context("enabling the check unit")?;

    println!("xtask: booting the fresh root (systemd-nspawn) to start and exercise the unit");
    let t = Instant::now();
    let console = scratch.path().join("console.log");
    let booted = boot(&dir, &console);
    let log = fs::read_to_string(dir.join("root/package-check.log")).unwrap_or_default();
    print!("{log}");
    let passed = dir.join("root/package-check.ok").exists();
    if booted.is_err() || !passed {
        let console = fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        eprintln!("xtask: last lines of the container's console:");
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
        booted?;
        bail!(
            "the package check in the booted fresh root ({}) failed (log above)",
            kind.name
        );
    }
    println!(
        "xtask: fresh-root checks ({}) passed in {:.0} s",
        kind.name,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Boots `dir` with systemd-nspawn (own network namespace; bpf(2) and the BPF capabilities
/// for the XDP program) until it powers itself off, with a time limit; the console goes to `console`.
fn boot(dir: &Path, console: &Path) -> Result<()> {
    let out =
        fs::File::create(console).with_context(|| format!("creating {}", console.display()))?;
    let mut child = Command::new("systemd-nspawn")
        .args([
            "--quiet",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--capability=CAP_BPF,CAP_PERFMON",
            // nspawn's own system call filter leaves bpf(2) out.
            "--system-call-filter=bpf",
            // The check script sets resolv.conf up itself.
            "--resolv-conf=off",
            "--timezone=off",
            "--console=pipe",
            "--machine=tailgate-check",
        ])
        .arg("--directory")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("running systemd-nspawn (install systemd-container with `cargo xtask setup`)")?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("systemd-nspawn failed: {status}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            // SIGTERM asks nspawn to shut the container down; SIGKILL if it does not.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now() + Duration::from_secs(15);
            while child.try_wait()?.is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the booted fresh root did not finish within {} s",
                BOOT_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
