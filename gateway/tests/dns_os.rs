//! `accept_dns`: the daemon points the system at MagicDNS and gives the original back.
//!
//! The daemon runs in a namespace that has its own `/etc/resolv.conf` (`ip netns exec`
//! bind-mounts `/etc/netns/<ns>/resolv.conf` over it, as a container runtime does), so it
//! manages the default path for real while the host's file is never touched. A dnsmasq on
//! 127.0.0.53 in the namespace is the system's original nameserver. Real `dig` checks what the
//! system resolver now answers. Needs root, `dig` and `dnsmasq`; everything is removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tailgate_bench::lab::{self, wait_for, Netns, Process};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");

/// The system's resolv.conf before the daemon starts (kept byte for byte).
const ORIGINAL: &str = "# written by the DHCP client\nnameserver 127.0.0.53\nsearch corp.example\noptions edns0 timeout:2\n";

/// `/etc/netns/<ns>/` and a scratch directory, removed on drop.
struct Files {
    etc: PathBuf,
    scratch: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// One daemon run; `accept` is the `--accept-dns` flag, or `None` to set `TS_ACCEPT_DNS=false`.
fn daemon(ns: &Netns, files: &Files, accept: Option<bool>) -> Process {
    let mut cmd = ns.command(TAILGATE);
    cmd.arg("daemon")
        .arg("--no-xdp")
        .arg("--config")
        .arg(files.scratch.join("tg.toml"))
        .arg("--socket")
        .arg(files.scratch.join("tg.sock"))
        .env("RUST_LOG", "info");
    match accept {
        Some(a) => {
            cmd.arg(format!("--accept-dns={a}"));
        }
        None => {
            cmd.env("TS_ACCEPT_DNS", "false");
        }
    }
    let mut p = Process::spawn("tailgate", cmd).expect("spawn daemon");
    let sock = files.scratch.join("tg.sock");
    wait_for("the daemon's socket", Duration::from_secs(10), || {
        p.check_running()?;
        Ok(sock.exists().then_some(()))
    })
    .expect("daemon up");
    p
}

fn cli(files: &Files, args: &[&str]) -> String {
    lab::run(
        Command::new(TAILGATE)
            .arg("--socket")
            .arg(files.scratch.join("tg.sock"))
            .args(args),
    )
    .unwrap_or_else(|e| panic!("tailgate {args:?}: {e:#}"))
}

/// What the processes in the namespace see at /etc/resolv.conf.
fn system_resolv_conf(ns: &Netns) -> String {
    ns.exec("cat", &["/etc/resolv.conf"]).expect("cat")
}

fn wait_managed(ns: &Netns, managed: bool) -> String {
    wait_for("resolv.conf to change", Duration::from_secs(5), || {
        let text = system_resolv_conf(ns);
        Ok((text.contains("written by tailgate") == managed).then_some(text))
    })
    .expect("resolv.conf")
}

#[test]
fn accept_dns_manages_resolv_conf_and_restores_it_after_stop_and_crash() {
    assert!(
        lab::is_root(),
        "needs root (run `cargo xtask test` as root)"
    );
    let ns = Netns::new("tgdos").expect("netns");
    let files = Files {
        etc: Path::new("/etc/netns").join(ns.name()),
        scratch: std::env::temp_dir().join(format!("tg-dns-os-{}", ns.name())),
    };
    std::fs::create_dir_all(&files.etc).unwrap();
    std::fs::create_dir_all(&files.scratch).unwrap();
    std::fs::write(files.etc.join("resolv.conf"), ORIGINAL).unwrap();
    // The bind mount works: the namespace sees its own file, so the host's is never written.
    assert_eq!(system_resolv_conf(&ns), ORIGINAL);

    let key = lab::run(Command::new(TAILGATE).arg("genkey")).unwrap();
    let backup = files.scratch.join("state/resolv.conf.pre-tailgate");
    std::fs::write(
        files.scratch.join("tg.toml"),
        format!(
            "[interface]\nname = \"{}\"\nprivate_key = \"{}\"\naddress = [\"100.64.0.1/32\"]\n\n\
             [dns]\nhostname = \"alpha\"\nresolv_conf_backup = \"{}\"\n",
            lab::unique_name("tgd"),
            key.trim(),
            backup.display()
        ),
    )
    .unwrap();
    let mut upstream = Process::spawn("dnsmasq", {
        let mut c = ns.command("dnsmasq");
        c.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
        ])
        .args([
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.53",
        ])
        .args(["--port=53", "--pid-file=", "--user=root"])
        .args(["--address=/outside.example/192.0.2.7"]);
        c
    })
    .expect("dnsmasq");

    // 1. Accept DNS: the system resolver is MagicDNS, with the tailnet domain searched first.
    let mut run = daemon(&ns, &files, Some(true));
    let managed = wait_managed(&ns, true);
    assert!(managed.contains("nameserver 100.100.100.100"), "{managed}");
    assert!(
        managed.contains("search tailnet.internal corp.example"),
        "{managed}"
    );
    assert!(managed.contains("options edns0 timeout:2"), "{managed}");
    assert!(!managed.contains("127.0.0.53"), "{managed}");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), ORIGINAL);
    // Short names through the search domain, and other names through the original nameserver
    // ("override local DNS" is off), all via the system's resolv.conf.
    let dig = |args: &[&str]| {
        let mut a = vec!["+short", "+time=2", "+tries=2"];
        a.extend_from_slice(args);
        ns.exec("dig", &a).expect("dig").trim().to_string()
    };
    assert_eq!(dig(&["+search", "alpha", "A"]), "100.64.0.1");
    assert_eq!(dig(&["outside.example", "A"]), "192.0.2.7");
    let status = cli(&files, &["dns", "status"]);
    assert!(
        status.contains("system DNS: /etc/resolv.conf (the original is kept in"),
        "{status}"
    );
    assert!(status.contains("nameservers: 127.0.0.53:53"), "{status}");
    // 2. A clean stop gives the original back, byte for byte.
    assert!(run.stop().expect("stop"), "clean exit:\n{}", run.log());
    assert_eq!(system_resolv_conf(&ns), ORIGINAL);
    assert!(!backup.exists());

    // 3. kill -9 leaves the managed file and the backup …
    let run = daemon(&ns, &files, Some(true));
    wait_managed(&ns, true);
    run.signal(libc::SIGKILL);
    drop(run);
    assert!(backup.exists());
    assert!(system_resolv_conf(&ns).contains("written by tailgate"));
    // … and the next start puts the original back even with TS_ACCEPT_DNS=false, then leaves
    // the system's DNS alone.
    let mut run = daemon(&ns, &files, None);
    assert_eq!(wait_managed(&ns, false), ORIGINAL);
    assert!(!backup.exists());
    let status = cli(&files, &["dns", "status"]);
    assert!(
        status.contains("system DNS: off: accept_dns is off"),
        "{status}"
    );
    assert!(run.stop().expect("stop"), "clean exit:\n{}", run.log());
    assert_eq!(system_resolv_conf(&ns), ORIGINAL);
    upstream.check_running().expect("dnsmasq still running");
}
