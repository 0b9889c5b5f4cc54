//! The appliance image's check in `cargo xtask test` (`package_image`): builds the image, makes
//! a cloud-init NoCloud seed (an ISO 9660 volume labelled `cidata`) whose user-data is
//! `image/appliance/user-data.yaml`, boots the image under qemu (KVM when it works, else TCG;
//! user-mode networking restricted to the guest; `-snapshot`, so the image is not changed) and
//! watches the serial console until `tailgate-appliance-ready` reports the daemon up with the
//! configuration the seed wrote. The virtual machine and the scratch files go in every case.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::image::{self, ASSETS, OUT_DIR};
use super::util::{self, ScratchDir};

/// The seed's user-data, in [`ASSETS`].
pub const USER_DATA: &str = "user-data.yaml";
/// What the user-data configures, as the check expects the booted appliance to report it.
const EXPECT_INTERFACE: &str = "tg0";
const EXPECT_ADDRESS: &str = "100.64.0.1/32";
const EXPECT_PEERS: u64 = 1;
/// The address qemu's user networking hands the first guest by DHCP: proof that cloud-init
/// configured systemd-networkd. (With `restrict=on` its DHCP gives no router, so the peer's
/// endpoint has no route and the XDP program stays detached; the check does not ask for it.)
const EXPECT_DHCP_ADDRESS: &str = "10.0.2.15/24";
/// The lines `tailgate-appliance-ready` prints.
const READY: &str = "tailgate-appliance: ready ";
const NOT_READY: &str = "tailgate-appliance: not ready";
/// How long the kernel may take to print its first line under KVM before KVM is taken to be
/// unusable here (some nested set-ups stall the guest) and the boot starts again under TCG.
const KVM_PROBE: Duration = Duration::from_secs(20);
/// How long the boot may take until the daemon is up, and then until cloud-init finishes.
const READY_TIMEOUT_KVM: Duration = Duration::from_secs(120);
const READY_TIMEOUT_TCG: Duration = Duration::from_secs(300);
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the console is read.
const POLL: Duration = Duration::from_millis(500);

/// Builds the image from `bin` and boots it with a NoCloud seed (see the module docs).
pub fn check(root: &Path, bin: &Path) -> Result<()> {
    let started = Instant::now();
    let image = image::build(root, bin)?;
    let build_time = started.elapsed();
    util::run(
        Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
            .arg(&image.raw)
            .arg(&image.qcow2),
    )
    .context("the qcow2 image differs from the raw one")?;

    let scratch = ScratchDir::new(root.join(OUT_DIR).join("check"))?;
    let seed = make_seed(root, scratch.path())?;
    let console = scratch.path().join("console.log");
    let vm_files = VmFiles {
        disk: image.raw.clone(),
        seed,
        console: console.clone(),
    };

    let (accel, mut vm) = start(&vm_files)?;
    let timeout = match accel {
        Accel::Kvm => READY_TIMEOUT_KVM,
        Accel::Tcg => READY_TIMEOUT_TCG,
    };
    let boot = vm.started;
    let line = wait_for(&mut vm, &console, boot + timeout, |text| {
        if let Some(l) = text.lines().find(|l| l.contains(NOT_READY)) {
            return Err(anyhow::anyhow!("the appliance reported: {}", clean(l)));
        }
        if text.contains("Kernel panic") {
            bail!("the guest kernel panicked");
        }
        Ok(text
            .lines()
            .find_map(|l| l.split_once(READY).map(|(_, rest)| rest.to_string())))
    })
    .with_context(|| {
        format!(
            "waiting {} s ({}) for \"{READY}…\" on the console",
            timeout.as_secs(),
            accel.name()
        )
    })
    .map_err(|e| with_console_tail(e, &console))?;
    let ready_time = boot.elapsed();
    verify_summary(&line).map_err(|e| with_console_tail(e, &console))?;

    // cloud-init's last line names the data source it used; its warnings go to the console.
    let finished = wait_for(&mut vm, &console, Instant::now() + FINISH_TIMEOUT, |text| {
        Ok(text
            .lines()
            .find(|l| l.contains("Cloud-init v.") && l.contains(" finished at "))
            .map(clean))
    })
    .context("waiting for cloud-init to finish")
    .map_err(|e| with_console_tail(e, &console))?;
    if !finished.contains("DataSourceNoCloud") {
        return Err(with_console_tail(
            anyhow::anyhow!("cloud-init did not use the NoCloud seed: {finished}"),
            &console,
        ));
    }
    let text = read_console(&console);
    if let Some(w) = text.lines().find(|l| l.contains("[WARNING]")) {
        return Err(with_console_tail(
            anyhow::anyhow!("cloud-init warned: {}", clean(w)),
            &console,
        ));
    }
    drop(vm);
    println!("xtask: appliance: {}", clean(&format!("{READY}{line}")));
    println!(
        "xtask: appliance image check passed: image built in {:.0} s, booted ({}) to the daemon \
         up in {:.0} s, {:.0} s in all",
        build_time.as_secs_f64(),
        accel.name(),
        ready_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The NoCloud seed: `user-data` from [`USER_DATA`] and a `meta-data` with a fresh instance id
/// (cloud-init runs its once-per-instance modules for it), on an ISO volume labelled `cidata`.
fn make_seed(root: &Path, dir: &Path) -> Result<PathBuf> {
    let src = root.join(ASSETS).join(USER_DATA);
    let user_data =
        fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    if !user_data.starts_with("#cloud-config\n") {
        bail!("{} does not start with #cloud-config", src.display());
    }
    let files = dir.join("seed");
    util::write(&files.join("user-data"), user_data, 0o644)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    util::write(
        &files.join("meta-data"),
        format!("instance-id: tailgate-check-{now}\nlocal-hostname: tailgate-check\n"),
        0o644,
    )?;
    let iso = dir.join("seed.iso");
    util::run(
        Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(&iso)
            .arg(files.join("user-data"))
            .arg(files.join("meta-data")),
    )
    .context("making the NoCloud seed (install genisoimage with `cargo xtask setup`)")?;
    Ok(iso)
}

/// The virtualisation qemu uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }
}

/// What the virtual machine boots from and where its console goes.
struct VmFiles {
    disk: PathBuf,
    seed: PathBuf,
    console: PathBuf,
}

/// A running qemu, killed when dropped.
struct Vm {
    child: Child,
    /// When it was started.
    started: Instant,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the virtual machine: under KVM if `/dev/kvm` opens and the kernel prints its first
/// line within [`KVM_PROBE`], else under TCG. `TAILGATE_QEMU_ACCEL=kvm|tcg` chooses instead.
fn start(files: &VmFiles) -> Result<(Accel, Vm)> {
    let forced = match std::env::var("TAILGATE_QEMU_ACCEL") {
        Ok(v) if v == "kvm" => Some(Accel::Kvm),
        Ok(v) if v == "tcg" => Some(Accel::Tcg),
        Ok(v) => bail!("TAILGATE_QEMU_ACCEL={v:?}: use kvm or tcg"),
        Err(_) => None,
    };
    if let Some(accel) = forced {
        println!(
            "xtask: booting the appliance image under qemu ({}, as TAILGATE_QEMU_ACCEL says)",
            accel.name()
        );
        return Ok((accel, qemu(files, accel)?));
    }
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        println!("xtask: booting the appliance image under qemu (TCG: /dev/kvm: {e})");
        return Ok((Accel::Tcg, qemu(files, Accel::Tcg)?));
    }
    println!("xtask: booting the appliance image under qemu (KVM)");
    let mut vm = qemu(files, Accel::Kvm)?;
    let probe = wait_for(
        &mut vm,
        &files.console,
        Instant::now() + KVM_PROBE,
        |text| Ok(text.contains("Linux version").then_some(())),
    );
    match probe {
        Ok(()) => Ok((Accel::Kvm, vm)),
        Err(e) => {
            drop(vm);
            println!("xtask: KVM is not usable here ({e:#}); booting again under TCG");
            Ok((Accel::Tcg, qemu(files, Accel::Tcg)?))
        }
    }
}

/// Starts qemu with the image (`-snapshot`: writes go to a temporary overlay), the seed, a NIC
/// on user-mode networking that reaches nothing outside the guest (`restrict=on`; its DHCP
/// server still answers) and the serial console in `files.console` (emptied first).
fn qemu(files: &VmFiles, accel: Accel) -> Result<Vm> {
    fs::write(&files.console, "")
        .with_context(|| format!("creating {}", files.console.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"]);
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg"]),
    };
    cmd.args(["-m", "1024", "-smp", "2", "-snapshot", "-no-reboot"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            files.disk.display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            files.seed.display()
        ))
        .args(["-netdev", "user,id=net0,restrict=on"])
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .arg("-serial")
        .arg(format!("file:{}", files.console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .context("running qemu-system-x86_64 (install qemu-system-x86 with `cargo xtask setup`)")?;
    Ok(Vm {
        child,
        started: Instant::now(),
    })
}

/// Reads the console every [`POLL`] until `found` returns a value, fails or `deadline` passes,
/// or qemu exits (then its standard error is in the error).
fn wait_for<T>(
    vm: &mut Vm,
    console: &Path,
    deadline: Instant,
    mut found: impl FnMut(&str) -> Result<Option<T>>,
) -> Result<T> {
    loop {
        if let Some(v) = found(&read_console(console))? {
            return Ok(v);
        }
        if let Some(status) = vm.child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = vm.child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!("qemu exited ({status}): {}", err.trim());
        }
        if Instant::now() >= deadline {
            bail!("timed out");
        }
        std::thread::sleep(POLL);
    }
}

/// The console so far (lossy: it holds terminal escapes and may end mid-character).
fn read_console(console: &Path) -> String {
    String::from_utf8_lossy(&fs::read(console).unwrap_or_default()).into_owned()
}

/// A console line without terminal escapes and carriage returns.
fn clean(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters final-byte (0x40..=0x7e).
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Adds the console's last 40 lines to `err`.
fn with_console_tail(err: anyhow::Error, console: &Path) -> anyhow::Error {
    let text = read_console(console);
    let lines: Vec<String> = text.lines().map(clean).collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n  ");
    err.context(format!(
        "last lines of the appliance's serial console:\n  {tail}"
    ))
}

/// Checks the JSON `tailgate-appliance-ready` printed after [`READY`] against what the seed's
/// user-data configures.
fn verify_summary(line: &str) -> Result<()> {
    let json = match (line.find('{'), line.rfind('}')) {
        (Some(a), Some(b)) if a < b => &line[a..=b],
        _ => bail!("no JSON after \"{READY}\": {line:?}"),
    };
    let s: Value = serde_json::from_str(json)
        .with_context(|| format!("the appliance's status is not JSON: {json}"))?;
    let want = |ok: bool, what: &str| -> Result<()> {
        if !ok {
            bail!("the appliance's status {what}: {s}");
        }
        Ok(())
    };
    want(
        s["active"] == "active",
        "says tailgate.service is not active",
    )?;
    want(
        s["interface"] == EXPECT_INTERFACE,
        &format!("names another interface than {EXPECT_INTERFACE}"),
    )?;
    want(s["up"] == true, "says the interface is not up")?;
    want(
        s["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == EXPECT_ADDRESS)),
        &format!("lacks the address {EXPECT_ADDRESS}"),
    )?;
    want(
        s["public_key"].as_str().is_some_and(is_wireguard_key),
        "has no WireGuard public key",
    )?;
    want(
        s["peers"].as_u64() == Some(EXPECT_PEERS),
        &format!("does not have {EXPECT_PEERS} peer"),
    )?;
    want(s["ip_forward"] == true, "says IPv4 forwarding is off")?;
    want(
        s["host_addresses"].as_array().is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|x| x.ends_with(&format!(" {EXPECT_DHCP_ADDRESS}")))
        }),
        &format!("shows no NIC with the DHCP address {EXPECT_DHCP_ADDRESS}"),
    )?;
    Ok(())
}

/// Whether `key` is the base64 form of 32 bytes.
fn is_wireguard_key(key: &str) -> bool {
    key.len() == 44
        && key.ends_with('=')
        && key[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_configures_what_the_check_expects() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = fs::read_to_string(root.join(ASSETS).join(USER_DATA)).unwrap();
        assert!(text.starts_with("#cloud-config\n"));
        assert!(text.contains(&format!("name = \"{EXPECT_INTERFACE}\"")));
        assert!(text.contains(&format!("address = [\"{EXPECT_ADDRESS}\"]")));
        assert_eq!(text.matches("[[peer]]").count() as u64, EXPECT_PEERS);
        assert!(text.contains("tailgate-appliance-ready"));
    }

    #[test]
    fn summary_verification() {
        let good = r#"{"active": "active", "addresses": ["100.64.0.1/32"], "host_addresses": ["ens2 10.0.2.15/24"], "interface": "tg0", "ip_forward": true, "peers": 1, "public_key": "bXgk7ZAJO6T43FnATV02Lr+AsmewyKjHxvLGqoBXKUk=", "up": true}"#;
        verify_summary(good).unwrap();
        verify_summary(&format!("{good}\u{1b}[0m\r")).unwrap();
        for (from, to) in [
            ("\"up\": true", "\"up\": false"),
            ("\"active\": \"active\"", "\"active\": \"failed\""),
            ("100.64.0.1/32", "100.64.0.9/32"),
            ("\"peers\": 1", "\"peers\": 0"),
            ("\"ip_forward\": true", "\"ip_forward\": false"),
            ("ens2 10.0.2.15/24", "ens2 10.0.2.16/24"),
            ("KUk=\"", "KUk\""),
        ] {
            assert!(verify_summary(&good.replace(from, to)).is_err(), "{to}");
        }
        assert!(verify_summary("no json").is_err());
        assert!(verify_summary("{not json}").is_err());
    }

    #[test]
    fn console_lines_lose_escapes() {
        assert_eq!(
            clean("\u{1b}[0;32m  OK  \u{1b}[0m] Started x.\r"),
            "  OK  ] Started x."
        );
    }
}
