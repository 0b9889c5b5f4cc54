//! The check of the QNAP package (`cargo xtask test package_qpkg`): builds the .qpkg, splits
//! it at the offsets its header carries and checks the trailer (name, version, size checksum),
//! the control and data archives (qpkg.cfg fields, its service program in the data and its
//! port the default configuration's, scripts executable and `sh -n` clean), then
//! installs it the way App Center does, `sh tailgate_….qpkg` as root, in a QTS-like root
//! (busybox as the shell and tools, /etc/config/qpkg.conf, /share/CACHEDEV1_DATA) entered with
//! chroot inside a network namespace with a `tailgate control serve`: the service starts (in
//! userspace networking, there being no /dev/net/tun), registers with the given auth key,
//! honours qpkg.conf's Enable flag, stops, survives a reinstall, and `.uninstall.sh` removes
//! everything the installer made.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::qpkg::{self, PACKAGE};
use super::spk_check::{control_server, KillOnDrop, Netns};
use super::util::{self, stdout_of, ScratchDir};

/// Where the package lands in the QTS-like root.
const QPKG_DIR: &str = "share/CACHEDEV1_DATA/.qpkg/tailgate";
/// qpkg.cfg fields the installer and QTS need.
const CFG_FIELDS: &[&str] = &[
    "QPKG_NAME",
    "QPKG_VER",
    "QPKG_AUTHOR",
    "QPKG_SERVICE_PROGRAM",
    "QPKG_RC_NUM",
    "QTS_MINI_VERSION",
];

/// Builds the .qpkg from `bin` and checks it (see the module documentation).
pub fn check(root: &Path, bin: &Path) -> Result<()> {
    let started = Instant::now();
    let pkg = qpkg::build(root, bin)?;
    let scratch = ScratchDir::new(root.join(qpkg::OUT_DIR).join("check"))?;
    validate(&pkg.path, &pkg.version, scratch.path())?;
    let ns = Netns::create("tgqpkg")?;
    run_on_qts(bin, &pkg.path, scratch.path(), &ns)?;
    println!(
        "xtask: qpkg check passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn validate(path: &Path, version: &str, scratch: &Path) -> Result<()> {
    let data = fs::read(path)?;
    let layout = qpkg::parse(&data)?;
    ensure!(
        layout.name == PACKAGE && layout.version == version,
        "trailer: {layout:?}"
    );
    ensure!(
        layout.checksum == qpkg::size_checksum(data.len() as u64),
        "trailer checksum {} is not QTS's for {} bytes",
        layout.checksum,
        data.len()
    );
    let dir = scratch.join("split");
    let control = &data[layout.script_len..layout.script_len + layout.control_len];
    let data_gz = &data[layout.script_len + layout.control_len..][..layout.data_len];
    util::write(&dir.join("control.tar"), control, 0o644)?;
    util::write(&dir.join("data.tar.gz"), data_gz, 0o644)?;
    util::run(
        Command::new("tar")
            .arg("-xf")
            .arg(dir.join("control.tar"))
            .arg("-C")
            .arg(&dir),
    )?;
    let ctl = dir.join("control");
    let files = dir.join("data");
    util::mkdir(&ctl)?;
    util::mkdir(&files)?;
    util::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(dir.join("control.tar.gz"))
            .arg("-C")
            .arg(&ctl),
    )?;
    util::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(dir.join("data.tar.gz"))
            .arg("-C")
            .arg(&files),
    )?;
    let cfg = fs::read_to_string(ctl.join("qpkg.cfg")).context("no qpkg.cfg")?;
    for f in CFG_FIELDS {
        ensure!(
            cfg.lines()
                .any(|l| l.starts_with(&format!("{f}=\"")) && !l.ends_with("=\"\"")),
            "qpkg.cfg has no {f}"
        );
    }
    ensure!(
        cfg.contains(&format!("QPKG_VER=\"{version}\"")),
        "qpkg.cfg: wrong version"
    );
    let cfg_value = |key: &str| -> Result<String> {
        cfg.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=\"")))
            .and_then(|v| v.strip_suffix('"'))
            .map(str::to_string)
            .with_context(|| format!("qpkg.cfg has no {key}"))
    };
    let service = cfg_value("QPKG_SERVICE_PROGRAM")?;
    ensure!(
        files.join(&service).is_file(),
        "QPKG_SERVICE_PROGRAM {service} is not in the data archive"
    );
    let default_config = fs::read_to_string(files.join("share/tailgate.toml"))?;
    let port = default_config
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen_port = "))
        .context("the default configuration sets no listen_port")?;
    ensure!(
        cfg_value("QPKG_SERVICE_PORT")? == port,
        "QPKG_SERVICE_PORT is not the configuration's listen_port {port}"
    );
    for (d, f, exec) in [
        (&ctl, "qinstall.sh", true),
        (&ctl, "qpkg-functions", false),
        (&files, "tailgate.sh", true),
        (&files, ".uninstall.sh", true),
        (&files, "bin/tailgate", true),
        (&files, "share/tailgate.toml", false),
    ] {
        let p = d.join(f);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(&p)
                .with_context(|| format!("the package has no {f}"))?
                .permissions(),
        );
        ensure!(!exec || mode & 0o111 == 0o111, "{f} is not executable");
        if f.ends_with(".sh") || f == "qpkg-functions" {
            util::run(Command::new("sh").arg("-n").arg(&p))
                .with_context(|| format!("sh -n {f}"))?;
        }
    }
    util::write(&dir.join("header.sh"), &data[..layout.script_len], 0o644)?;
    util::run(Command::new("sh").arg("-n").arg(dir.join("header.sh")))
        .context("sh -n on the header")?;
    println!(
        "xtask: qpkg layout valid ({} + {} + {} + 100 bytes)",
        layout.script_len, layout.control_len, layout.data_len
    );
    Ok(())
}

/// Copies the shared libraries `file` loads into `root` at the same paths.
fn copy_libs(file: &Path, root: &Path) -> Result<()> {
    let ldd = stdout_of(Command::new("ldd").arg(file))?;
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let target = root.join(lib.trim_start_matches('/'));
        if !target.exists() {
            util::install(Path::new(lib), &target, 0o755)?;
        }
    }
    Ok(())
}

/// A QTS-like root: busybox for /bin/sh and every tool, /etc/config, the data volume.
fn qts_root(root: &Path) -> Result<()> {
    let busybox = stdout_of(Command::new("sh").args(["-c", "command -v busybox"]))
        .context("busybox is needed for the QTS-like root (cargo xtask setup installs it)")?;
    util::install(Path::new(&busybox), &root.join("bin/busybox"), 0o755)?;
    copy_libs(Path::new(&busybox), root)?;
    util::run(
        Command::new("chroot")
            .arg(root)
            .args(["/bin/busybox", "--install", "-s", "/bin"]),
    )?;
    for d in [
        "etc/config",
        "etc/init.d",
        "share/CACHEDEV1_DATA/Public",
        "tmp",
        "dev",
        "proc",
        "var/run",
    ] {
        util::mkdir(&root.join(d))?;
    }
    util::set_mode(&root.join("tmp"), 0o1777)?;
    util::write(&root.join("etc/config/qpkg.conf"), "", 0o644)?;
    util::run(
        Command::new("mknod")
            .args(["-m", "666"])
            .arg(root.join("dev/null"))
            .args(["c", "1", "3"]),
    )
}

fn run_on_qts(bin: &Path, pkg: &Path, scratch: &Path, ns: &Netns) -> Result<()> {
    let root = scratch.join("qts");
    qts_root(&root)?;
    // The libraries the package's binary loads (libc, libgcc_s, libm), as QTS has them.
    copy_libs(bin, &root)?;
    util::install(pkg, &root.join("tmp/tailgate.qpkg"), 0o644)?;
    let (server, url, key) = control_server(bin, ns, &scratch.join("server"))?;
    let qpkg_dir = root.join(QPKG_DIR);
    // Unmounted by ScratchDir's removal if a step fails.
    util::run(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(root.join("proc")),
    )?;
    let _proc = Unmount(root.join("proc"));
    let _daemon = KillOnDrop {
        pidfile: qpkg_dir.join("var/tailgate.pid"),
        tree: root.clone(),
    };

    let chroot = |args: &[&str], env: &[(&str, &str)]| -> Result<Output> {
        let mut c = ns.command(Path::new("chroot"));
        c.arg(&root)
            .args(["/bin/env", "-i", "PATH=/bin:/sbin"])
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .args(args)
            .stdin(Stdio::null());
        Ok(c.output()?)
    };
    let ok = |args: &[&str], env: &[(&str, &str)]| -> Result<String> {
        let out = chroot(args, env)?;
        ensure!(
            out.status.success(),
            "{args:?} failed ({}): {}{}\nlog: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(qpkg_dir.join("var/tailgate.log")).unwrap_or_default()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let status_code = |want: i32| -> Result<()> {
        let out = chroot(&["/etc/init.d/tailgate.sh", "status"], &[])?;
        ensure!(
            out.status.code() == Some(want),
            "status: {:?}, want {want}",
            out.status.code()
        );
        Ok(())
    };

    // A bad login server stops the installation with the reason.
    let bad = chroot(
        &["/bin/sh", "/tmp/tailgate.qpkg"],
        &[("TG_LOGIN_SERVER", "http://x")],
    )?;
    ensure!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("TG_LOGIN_SERVER"),
        "the installer accepted a bad login server"
    );

    // Install as App Center does: run the package with sh, as root.
    let env = [
        ("TG_LOGIN_SERVER", url.as_str()),
        ("TG_AUTH_KEY", key.as_str()),
    ];
    ok(&["/bin/sh", "/tmp/tailgate.qpkg"], &env)?;
    let conf = fs::read_to_string(root.join("etc/config/qpkg.conf"))?;
    for line in [
        "[tailgate]".to_string(),
        "Enable = TRUE".into(),
        format!("Install_Path = /{QPKG_DIR}"),
        format!("Shell = /{QPKG_DIR}/tailgate.sh"),
    ] {
        ensure!(
            conf.lines().any(|l| l == line),
            "qpkg.conf has no {line:?}:\n{conf}"
        );
    }
    for link in [
        "etc/init.d/tailgate.sh",
        "etc/rcS.d/QS101tailgate",
        "etc/rcK.d/QK899tailgate",
    ] {
        ensure!(
            fs::symlink_metadata(root.join(link)).is_ok(),
            "the installer made no {link}"
        );
    }
    let config = fs::read_to_string(qpkg_dir.join("var/tailgate.toml"))?;
    ensure!(
        config.contains(&format!("login_server = \"{url}\"")),
        "login server missing:\n{config}"
    );
    let log = fs::read_to_string(qpkg_dir.join("var/tailgate.log"))?;
    ensure!(
        log.contains("userspace networking"),
        "no mode in the log:\n{log}"
    );
    ensure!(
        log.contains("registered with the auth key"),
        "no registration:\n{log}"
    );
    let status = node_status(bin, &qpkg_dir)?;
    let addresses = status["control"]["addresses"].clone();
    ensure!(
        addresses.as_array().is_some_and(|a| !a.is_empty()),
        "no tailnet address: {status}"
    );
    status_code(0)?;

    // Stop, the Enable flag, restart.
    ok(&["/etc/init.d/tailgate.sh", "stop"], &[])?;
    status_code(3)?;
    ok(&["/bin/sh", "-c", ". /share/CACHEDEV1_DATA/.qpkg/tailgate/qpkg-functions && qpkg_setcfg tailgate Enable FALSE"], &[])?;
    let disabled = chroot(&["/etc/init.d/tailgate.sh", "start"], &[])?;
    ensure!(
        !disabled.status.success()
            && String::from_utf8_lossy(&disabled.stdout).contains("disabled"),
        "start ignored Enable = FALSE"
    );
    status_code(3)?;
    ok(&["/bin/sh", "-c", ". /share/CACHEDEV1_DATA/.qpkg/tailgate/qpkg-functions && qpkg_setcfg tailgate Enable TRUE"], &[])?;
    ok(&["/etc/init.d/tailgate.sh", "restart"], &[])?;
    status_code(0)?;

    // Reinstall (an upgrade): the running service restarts, the registration stays.
    ok(&["/bin/sh", "/tmp/tailgate.qpkg"], &[])?;
    status_code(0)?;
    ensure!(
        node_status(bin, &qpkg_dir)?["control"]["addresses"] == addresses,
        "registration lost on upgrade"
    );

    // Uninstall.
    ok(&[&format!("/{QPKG_DIR}/.uninstall.sh")], &[])?;
    ensure!(!qpkg_dir.exists(), "uninstall left {}", qpkg_dir.display());
    let conf = fs::read_to_string(root.join("etc/config/qpkg.conf"))?;
    ensure!(
        !conf.contains("[tailgate]"),
        "uninstall left qpkg.conf's section:\n{conf}"
    );
    for link in [
        "etc/init.d/tailgate.sh",
        "etc/rcS.d/QS101tailgate",
        "etc/rcK.d/QK899tailgate",
    ] {
        ensure!(
            fs::symlink_metadata(root.join(link)).is_err(),
            "uninstall left {link}"
        );
    }
    drop(server);
    println!(
        "xtask: qpkg: install, service start/status/stop, Enable flag, upgrade and uninstall work"
    );
    Ok(())
}

/// `tailgate status --json` through the package's socket.
fn node_status(bin: &Path, qpkg_dir: &Path) -> Result<serde_json::Value> {
    let out = stdout_of(
        Command::new(bin)
            .arg("--socket")
            .arg(qpkg_dir.join("var/tailgate.sock"))
            .args(["status", "--json"]),
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// Unmounts a path on drop.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}
