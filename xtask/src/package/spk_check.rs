//! The check of the Synology package (`cargo xtask test package_spk`): builds the .spk,
//! unpacks it as DSM does (tar), validates its layout (INFO fields, package.tgz checksum,
//! scripts executable and `sh -n` clean, JSON files, conf/resource naming files package.tgz has
//! and the configuration's port, icon sizes), then installs it into a
//! DSM-like tree (`/var/packages/tailgate/{target,var}` under a scratch directory) and runs its
//! scripts as an unprivileged package user with the SYNOPKG_* and wizard variables, inside a
//! network namespace with a `tailgate control serve`: start brings the daemon up in userspace
//! networking and registers with the wizard's auth key, status says 0 / 3, stop stops it, an
//! upgrade keeps the registration, `tailgate configure-host` lets the package user's daemon
//! create a kernel TUN device, and uninstall removes what install created.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::spk::{self, ICONS, PACKAGE, SCRIPTS};
use super::spk_archive::{md5_hex, png_size};
use super::util::{self, stdout_of, ScratchDir};

/// How long the control server may take to print its login URL.
const SERVER_START: Duration = Duration::from_secs(20);

/// Builds the .spk from `bin` and checks it (see the module documentation).
pub fn check(root: &Path, bin: &Path) -> Result<()> {
    let started = Instant::now();
    let pkg = spk::build(root, bin)?;
    let scratch = ScratchDir::new(root.join(spk::OUT_DIR).join("check"))?;
    let unpacked = scratch.path().join("spk");
    util::mkdir(&unpacked)?;
    util::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&pkg.path)
            .arg("-C")
            .arg(&unpacked),
    )?;
    let info = validate_layout(&unpacked, &pkg.version)?;
    println!("xtask: spk layout valid ({} INFO fields)", info.len());
    let user = PackageUser::create()?;
    let ns = Netns::create("tgspk")?;
    run_on_dsm(bin, &unpacked, scratch.path(), &user, &ns, &pkg.version)?;
    println!(
        "xtask: spk check passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `key="value"` lines of INFO.
fn parse_info(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let (k, v) = line
            .split_once('=')
            .with_context(|| format!("INFO line {}: no '=': {line:?}", n + 1))?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .with_context(|| format!("INFO line {}: value not quoted: {line:?}", n + 1))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn validate_layout(dir: &Path, version: &str) -> Result<BTreeMap<String, String>> {
    for f in [
        "INFO",
        "package.tgz",
        "conf/privilege",
        "conf/resource",
        "WIZARD_UIFILES/install_uifile",
        "scripts/common",
    ] {
        ensure!(dir.join(f).is_file(), "the .spk has no {f}");
    }
    let info = parse_info(&fs::read_to_string(dir.join("INFO"))?)?;
    for key in [
        "package",
        "version",
        "os_min_ver",
        "description",
        "displayname",
        "maintainer",
        "arch",
        "thirdparty",
        "startable",
        "ctl_stop",
        "checksum",
        "extractsize",
        "create_time",
    ] {
        ensure!(
            info.get(key).is_some_and(|v| !v.is_empty()),
            "INFO has no {key}"
        );
    }
    ensure!(
        info["package"] == PACKAGE && info["version"] == version,
        "INFO: {info:?}"
    );
    ensure!(
        info["os_min_ver"].starts_with("7."),
        "os_min_ver must be DSM 7"
    );
    ensure!(info["arch"] == spk::ARCH, "INFO arch {}", info["arch"]);
    ensure!(
        info["extractsize"].parse::<u64>().is_ok_and(|kib| kib > 0),
        "INFO extractsize {:?} is not a size in KiB",
        info["extractsize"]
    );
    let md5 = md5_hex(&dir.join("package.tgz"))?;
    ensure!(
        info["checksum"] == md5,
        "INFO checksum {} but package.tgz has MD5 {md5}",
        info["checksum"]
    );
    let listing = stdout_of(Command::new("tar").arg("-tzf").arg(dir.join("package.tgz")))?;
    for f in ["bin/tailgate", "share/tailgate.toml", "conf/tailgate.sc"] {
        ensure!(
            listing.lines().any(|l| l == f),
            "package.tgz has no {f}: {listing}"
        );
    }
    for f in [
        "conf/privilege",
        "conf/resource",
        "WIZARD_UIFILES/install_uifile",
    ] {
        serde_json::from_str::<serde_json::Value>(&fs::read_to_string(dir.join(f))?)
            .with_context(|| format!("{f} is not valid JSON"))?;
    }
    let privilege: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("conf/privilege"))?)?;
    ensure!(
        privilege["defaults"]["run-as"] == "package",
        "conf/privilege must run as the package user: {privilege}"
    );
    // conf/resource: DSM's firewall port definition and the /usr/local/bin link name files of
    // package.tgz; the port definition names the port the default configuration listens on.
    let resource: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("conf/resource"))?)?;
    let protocol_file = resource["port-config"]["protocol-file"]
        .as_str()
        .context("conf/resource has no port-config protocol-file")?;
    let linked = resource["usr-local-linker"]["bin"]
        .as_array()
        .context("conf/resource has no usr-local-linker bin list")?;
    ensure!(!linked.is_empty(), "conf/resource links no binary");
    for f in linked
        .iter()
        .map(|v| v.as_str().context("usr-local-linker: not a string"))
        .chain([Ok(protocol_file)])
    {
        let f = f?;
        ensure!(
            listing.lines().any(|l| l == f),
            "conf/resource names {f}, which package.tgz does not have"
        );
    }
    let sc = stdout_of(
        Command::new("tar")
            .arg("-xzOf")
            .arg(dir.join("package.tgz"))
            .arg(protocol_file),
    )?;
    let config = stdout_of(
        Command::new("tar")
            .arg("-xzOf")
            .arg(dir.join("package.tgz"))
            .arg("share/tailgate.toml"),
    )?;
    let port = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen_port = "))
        .context("the default configuration sets no listen_port")?;
    for key in ["src.ports", "dst.ports"] {
        ensure!(
            sc.lines().any(|l| l == format!("{key}=\"{port}/udp\"")),
            "{protocol_file}: {key} is not the configuration's port {port}/udp:\n{sc}"
        );
    }
    let wizard = fs::read_to_string(dir.join("WIZARD_UIFILES/install_uifile"))?;
    for key in ["wizard_login_server", "wizard_auth_key"] {
        ensure!(
            wizard.contains(&format!("\"{key}\"")),
            "the wizard has no {key} field"
        );
    }
    for s in SCRIPTS {
        let path = dir.join("scripts").join(s);
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path)?.permissions());
        ensure!(
            mode & 0o111 == 0o111,
            "scripts/{s} is not executable ({mode:o})"
        );
        util::run(Command::new("sh").arg("-n").arg(&path))
            .with_context(|| format!("sh -n scripts/{s}"))?;
    }
    util::run(Command::new("sh").arg("-n").arg(dir.join("scripts/common")))?;
    for (name, size) in ICONS {
        let data = fs::read(dir.join(name)).with_context(|| format!("the .spk has no {name}"))?;
        ensure!(
            png_size(&data) == Some((*size, *size)),
            "{name} is not a {size}×{size} PNG"
        );
    }
    Ok(info)
}

/// An unprivileged system user for the package, removed on drop.
struct PackageUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl PackageUser {
    fn create() -> Result<PackageUser> {
        let name = format!("tgspk{}", std::process::id() % 100_000);
        let _ = Command::new("userdel")
            .arg(&name)
            .stderr(Stdio::null())
            .status();
        util::run(
            Command::new("useradd")
                .args(["--system", "--no-create-home", "--user-group"])
                .args(["--shell", "/usr/sbin/nologin"])
                .arg(&name),
        )?;
        let mut user = PackageUser {
            uid: 0,
            gid: 0,
            name,
        };
        user.uid = stdout_of(Command::new("id").arg("-u").arg(&user.name))?.parse()?;
        user.gid = stdout_of(Command::new("id").arg("-g").arg(&user.name))?.parse()?;
        Ok(user)
    }
}

impl Drop for PackageUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// Kills, on drop, the daemon named by a pid file (a failed step can leave it running), if
/// that process still runs a binary below `tree` (a stale pid file never kills anything else).
pub(super) struct KillOnDrop {
    /// The pid file the package's service script writes.
    pub(super) pidfile: PathBuf,
    /// The directory the package is installed in.
    pub(super) tree: PathBuf,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(pid) = fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return;
        };
        let ours =
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(&self.tree));
        if ours {
            // SAFETY: kill(2) on the daemon the package's script started, checked above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A network namespace with loopback up, deleted on drop.
pub(super) struct Netns(String);

impl Netns {
    /// `<prefix>-<pid>`, made afresh.
    pub(super) fn create(prefix: &str) -> Result<Netns> {
        let ns = Netns(format!("{prefix}-{}", std::process::id()));
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.0])
            .stderr(Stdio::null())
            .status();
        util::run(Command::new("ip").args(["netns", "add", &ns.0]))?;
        util::run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// `program` run inside the namespace.
    pub(super) fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed on drop.
pub(super) struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The DSM-like tree: /var/packages/tailgate/{target,var,scripts} with target and var in
/// /volume1/@appstore and /volume1/@appdata, as DSM 7 lays them out.
struct Dsm {
    root: PathBuf,
    target: PathBuf,
    var: PathBuf,
    scripts: PathBuf,
}

fn run_on_dsm(
    bin: &Path,
    unpacked: &Path,
    scratch: &Path,
    user: &PackageUser,
    ns: &Netns,
    version: &str,
) -> Result<()> {
    let root = scratch.join("dsm");
    let dsm = Dsm {
        target: root.join("volume1/@appstore").join(PACKAGE),
        var: root.join("volume1/@appdata").join(PACKAGE),
        scripts: root.join("var/packages").join(PACKAGE).join("scripts"),
        root,
    };
    let pkgdir = dsm.root.join("var/packages").join(PACKAGE);
    util::mkdir(&dsm.scripts)?;
    std::os::unix::fs::symlink(&dsm.target, pkgdir.join("target"))?;
    std::os::unix::fs::symlink(&dsm.var, pkgdir.join("var"))?;
    for entry in fs::read_dir(unpacked.join("scripts"))? {
        let p = entry?.path();
        fs::copy(&p, dsm.scripts.join(p.file_name().context("name")?))?;
    }
    // DSM hands the scripts a writable file for messages to show in Package Center.
    let tmplog = dsm.root.join("synopkg.log");
    util::write(&tmplog, "", 0o666)?;

    let (_server, url, key) = control_server(bin, ns, &scratch.join("server"))?;
    let _daemon = KillOnDrop {
        pidfile: dsm.var.join("tailgate.pid"),
        tree: dsm.root.clone(),
    };

    let script = |name: &str, status: &str, wizard: &[(&str, &str)]| -> Result<Output> {
        let mut c = ns.command(Path::new("setpriv"));
        c.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--clear-groups")
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .arg(format!("SYNOPKG_PKGNAME={PACKAGE}"))
            .arg(format!("SYNOPKG_PKGVER={version}"))
            .arg(format!(
                "SYNOPKG_PKGDEST={}",
                pkgdir.join("target").display()
            ))
            .arg(format!("SYNOPKG_PKGVAR={}", pkgdir.join("var").display()))
            .arg(format!("SYNOPKG_PKG_STATUS={status}"))
            .arg(format!("SYNOPKG_TEMP_LOGFILE={}", tmplog.display()))
            .args(["SYNOPKG_DSM_VERSION_MAJOR=7", "SYNOPKG_DSM_VERSION_MINOR=2"])
            .args(wizard.iter().map(|(k, v)| format!("{k}={v}")))
            .stdin(Stdio::null());
        // "start-stop-status start": the script and its argument.
        let (file, action) = name.split_once(' ').unwrap_or((name, ""));
        c.arg(dsm.scripts.join(file));
        if !action.is_empty() {
            c.arg(action);
        }
        c.output().with_context(|| format!("running {name}"))
    };
    let ok = |name: &str, status: &str, wizard: &[(&str, &str)]| -> Result<()> {
        let out = script(name, status, wizard)?;
        ensure!(
            out.status.success(),
            "{name} failed ({}): {}{}\nlog: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(dsm.var.join("tailgate.log")).unwrap_or_default()
        );
        Ok(())
    };
    let wizard = [
        ("wizard_login_server", url.as_str()),
        ("wizard_auth_key", key.as_str()),
    ];

    // A bad wizard value stops the installation before anything is unpacked.
    let bad = script(
        "preinst",
        "INSTALL",
        &[("wizard_login_server", "http://x\"; rm -rf /")],
    )?;
    ensure!(!bad.status.success(), "preinst accepted a bad login server");
    ensure!(
        fs::read_to_string(&tmplog)
            .unwrap_or_default()
            .contains("login server"),
        "preinst gave Package Center no reason"
    );

    // Install: preinst, unpack package.tgz into target (as DSM does, owned by the package
    // user), postinst.
    ok("preinst", "INSTALL", &wizard)?;
    unpack_target(unpacked, &dsm, user)?;
    ok("postinst", "INSTALL", &wizard)?;
    let config = fs::read_to_string(dsm.var.join("tailgate.toml"))?;
    ensure!(
        config.contains(&format!("login_server = \"{url}\"")),
        "the wizard's login server is not in the config:\n{config}"
    );
    ensure!(
        fs::read_to_string(dsm.var.join("authkey"))?.trim() == key,
        "the wizard's auth key was not saved"
    );

    // Start: userspace networking (no capabilities), registered with the wizard's key.
    ok("start-stop-status start", "", &[])?;
    let log = fs::read_to_string(dsm.var.join("tailgate.log"))?;
    ensure!(
        log.contains("userspace networking"),
        "the start script did not say which mode:\n{log}"
    );
    ensure!(
        log.contains("registered with the auth key"),
        "no registration:\n{log}"
    );
    ensure!(
        !dsm.var.join("authkey").exists(),
        "the auth key file was kept after use"
    );
    let status = node_status(bin, &dsm)?;
    ensure!(
        status["control"]["addresses"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "the node has no tailnet address: {status}"
    );
    let pid: u32 = fs::read_to_string(dsm.var.join("tailgate.pid"))?
        .trim()
        .parse()?;
    let owner = stdout_of(Command::new("ps").args(["-o", "uid=", "-p", &pid.to_string()]))?;
    ensure!(
        owner.trim() == user.uid.to_string(),
        "the daemon runs as uid {owner}, not the package user"
    );
    expect_status(&script, 0)?;

    // Stop.
    ok("start-stop-status stop", "", &[])?;
    expect_status(&script, 3)?;
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon still runs after stop"
    );

    // Upgrade: the var directory and the registration survive; no auth key needed.
    ok("preupgrade", "UPGRADE", &[])?;
    ok("preuninst", "UPGRADE", &[])?;
    util::remove_tree(&dsm.target)?;
    ok("postuninst", "UPGRADE", &[])?;
    ok("preinst", "UPGRADE", &[])?;
    unpack_target(unpacked, &dsm, user)?;
    ok("postinst", "UPGRADE", &[])?;
    ok("postupgrade", "UPGRADE", &[])?;
    ok("start-stop-status start", "", &[])?;
    let again = node_status(bin, &dsm)?;
    ensure!(
        again["control"]["addresses"] == status["control"]["addresses"],
        "the registration did not survive the upgrade: {again}"
    );
    ok("start-stop-status stop", "", &[])?;
    kernel_mode(ns, &dsm, user, &ok)?;

    // Uninstall: everything postinst and the daemon made in var is gone.
    ok("preuninst", "UNINSTALL", &[])?;
    util::remove_tree(&dsm.target)?;
    ok("postuninst", "UNINSTALL", &[])?;
    let left: Vec<_> = fs::read_dir(&dsm.var)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    ensure!(
        left.is_empty(),
        "uninstall left {left:?} in the var directory"
    );
    println!(
        "xtask: spk scripts: install, wizard, start, status, stop, upgrade and uninstall work"
    );
    Ok(())
}

fn expect_status<F>(script: &F, want: i32) -> Result<()>
where
    F: Fn(&str, &str, &[(&str, &str)]) -> Result<Output>,
{
    let out = script("start-stop-status status", "", &[])?;
    ensure!(
        out.status.code() == Some(want),
        "status: exit {:?}, want {want}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

fn unpack_target(unpacked: &Path, dsm: &Dsm, user: &PackageUser) -> Result<()> {
    util::mkdir(&dsm.target)?;
    util::mkdir(&dsm.var)?;
    util::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(unpacked.join("package.tgz"))
            .arg("-C")
            .arg(&dsm.target),
    )?;
    let owner = format!("{}:{}", user.uid, user.gid);
    util::run(
        Command::new("chown")
            .arg("-R")
            .arg(&owner)
            .arg(&dsm.target)
            .arg(&dsm.var),
    )
}

/// `tailgate configure-host` run as root (in the namespace, so the forwarding sysctls are the
/// namespace's) on the installed binary; the next start then creates a kernel TUN device as
/// the package user. Skipped where /dev/net/tun is not already mode 0666, so that the host's
/// device is not changed.
fn kernel_mode<F>(ns: &Netns, dsm: &Dsm, user: &PackageUser, ok: &F) -> Result<()>
where
    F: Fn(&str, &str, &[(&str, &str)]) -> Result<()>,
{
    use std::os::unix::fs::PermissionsExt;
    let tun_mode = fs::metadata("/dev/net/tun").map(|m| m.permissions().mode() & 0o777);
    if tun_mode.ok() != Some(0o666) {
        println!("xtask: spk kernel TUN mode skipped: /dev/net/tun is not mode 0666 on this host");
        return Ok(());
    }
    let bin = dsm.target.join("bin/tailgate");
    let out = ns
        .command(&bin)
        .arg("configure-host")
        .arg("--binary")
        .arg(&bin)
        .output()?;
    ensure!(
        out.status.success(),
        "configure-host: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok("start-stop-status start", "", &[])?;
    let log = fs::read_to_string(dsm.var.join("tailgate.log"))?;
    ensure!(
        log.contains("kernel TUN mode:"),
        "the start script did not pick kernel TUN mode:\n{log}"
    );
    // MagicDNS binds port 53 as the package user, with CAP_NET_BIND_SERVICE.
    ensure!(
        log.contains("MagicDNS resolver listening on 100.100.100.100:53"),
        "MagicDNS did not start in kernel TUN mode:\n{log}"
    );
    let links =
        stdout_of(Command::new("ip").args(["-n", &ns.0, "-o", "link", "show", "tailgate0"]));
    ensure!(
        links.is_ok(),
        "no TUN device tailgate0 in kernel TUN mode:\n{log}"
    );
    let pid = fs::read_to_string(dsm.var.join("tailgate.pid"))?;
    let owner = stdout_of(Command::new("ps").args(["-o", "uid=", "-p", pid.trim()]))?;
    ensure!(
        owner.trim() == user.uid.to_string(),
        "the daemon runs as uid {owner}"
    );
    let status = node_status(&bin, dsm)?;
    ensure!(
        status["control"]["addresses"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "no tailnet address in kernel TUN mode: {status}"
    );
    ok("start-stop-status stop", "", &[])?;
    let links = Command::new("ip")
        .args(["-n", &ns.0, "link", "show", "tailgate0"])
        .output()?;
    ensure!(!links.status.success(), "tailgate0 left behind after stop");
    println!(
        "xtask: spk kernel TUN mode: configure-host, then the package user's daemon made tailgate0"
    );
    subnet_router_without_nft(ns, dsm, ok)
}

/// The package user's daemon as a subnet router where, as on DSM, `PATH` has iptables (the
/// legacy one) but no `nft`: it advertises the route, masquerades with iptables (which gets
/// the binary's capabilities as ambient ones), stays up, and removes its chain at stop.
fn subnet_router_without_nft<F>(ns: &Netns, dsm: &Dsm, ok: &F) -> Result<()>
where
    F: Fn(&str, &str, &[(&str, &str)]) -> Result<()>,
{
    const ROUTE: &str = "192.168.77.0/24";
    let tools = dsm.root.join("no-nft-bin");
    util::mkdir(&tools)?;
    for (name, target) in [
        ("iptables", "iptables-legacy"),
        ("iptables-restore", "iptables-legacy-restore"),
        ("ip6tables", "ip6tables-legacy"),
        ("ip6tables-restore", "ip6tables-legacy-restore"),
    ] {
        std::os::unix::fs::symlink(Path::new("/usr/sbin").join(target), tools.join(name))?;
    }
    // /usr/bin and /bin hold no nft (it is in /usr/sbin).
    let path = format!("{}:/usr/bin:/bin", tools.display());
    let config_file = dsm.var.join("tailgate.toml");
    let config = fs::read_to_string(&config_file)?;
    let routed = config.replacen(
        "[interface]\n",
        &format!("[interface]\nadvertise_routes = [\"{ROUTE}\"]\n"),
        1,
    );
    ensure!(
        routed != config,
        "no [interface] table in the package config"
    );
    fs::write(&config_file, &routed)?;
    let chains = || {
        stdout_of(Command::new("ip").args([
            "netns",
            "exec",
            &ns.0,
            "iptables-legacy",
            "-w",
            "-t",
            "nat",
            "-S",
        ]))
    };
    let checked = (|| -> Result<()> {
        ok("start-stop-status start", "", &[("PATH", &path)])?;
        let bin = dsm.target.join("bin/tailgate");
        let status = node_status(&bin, dsm)?;
        let log = || fs::read_to_string(dsm.var.join("tailgate.log")).unwrap_or_default();
        ensure!(
            status["routing"]["advertised"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r == ROUTE)),
            "{ROUTE} not advertised: {status}\n{}",
            log()
        );
        ensure!(
            status["routing"]["nat_backend"] == "iptables",
            "not masquerading with iptables: {status}"
        );
        ensure!(
            chains()?.contains("-A POSTROUTING -j TAILGATE-tailgate0"),
            "no iptables chain: {}",
            chains()?
        );
        std::thread::sleep(Duration::from_secs(2));
        let pid = fs::read_to_string(dsm.var.join("tailgate.pid"))?;
        ensure!(
            Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "the routing daemon did not stay up:\n{}",
            log()
        );
        ok("start-stop-status stop", "", &[])?;
        ensure!(
            !chains()?.contains("TAILGATE-"),
            "iptables chain left behind after stop: {}",
            chains()?
        );
        Ok(())
    })();
    fs::write(&config_file, &config)?;
    util::remove_tree(&tools)?;
    checked?;
    println!(
        "xtask: spk subnet router without nft: {ROUTE} advertised, masqueraded with iptables as \
         the package user, chain removed at stop"
    );
    Ok(())
}

/// A `tailgate control serve` on 127.0.0.1:7443 in `ns` with its state in `state`: the
/// process, its login URL and a new auth key.
pub(super) fn control_server(
    bin: &Path,
    ns: &Netns,
    state: &Path,
) -> Result<(Guard, String, String)> {
    let mut cmd = ns.command(bin);
    cmd.args(["control", "--state-dir"])
        .arg(state)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:7443",
            "--public-addr",
            "127.0.0.1:7443",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = Guard(cmd.spawn().context("starting tailgate control serve")?);
    let url = login_url(&mut server.0)?;
    let key_json = stdout_of(
        Command::new(bin)
            .args(["control", "--state-dir"])
            .arg(state)
            .args(["authkey", "create", "--json"]),
    )?;
    let key: serde_json::Value = serde_json::from_str(&key_json)?;
    let key = key["key"]
        .as_str()
        .context("no key in authkey output")?
        .to_string();
    Ok((server, url, key))
}

/// `tailgate status --json` through the package's socket.
fn node_status(bin: &Path, dsm: &Dsm) -> Result<serde_json::Value> {
    let out = stdout_of(
        Command::new(bin)
            .arg("--socket")
            .arg(dsm.var.join("tailgate.sock"))
            .args(["status", "--json"]),
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// The `login URL: …` line the control server prints.
fn login_url(server: &mut Child) -> Result<String> {
    let stdout = server.stdout.take().context("server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(u) = line.strip_prefix("login URL: ") {
                let _ = tx.send(u.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(SERVER_START) {
        Ok(url) => Ok(url),
        Err(_) => bail!("tailgate control serve printed no login URL within {SERVER_START:?}"),
    }
}
