//! Measurements behind the choices of the XDP forwarding path (run explicitly, as root:
//! `cargo test --release -p tailgate --test xdp_forward_bench -- --ignored --nocapture
//! --test-threads=1`). Same topology as `xdp_forward_netns`: the test writes packets into a TUN
//! in a router namespace (as the daemon would) and a LAN host namespace behind a veth answers.
//!
//! * `forward_tun_to_lan`: 64-byte UDP written into the TUN by one thread, forwarded to the
//!   LAN: kernel forwarding (+ nftables masquerade) vs `tun_forward`. A TUN write runs the
//!   receive path synchronously, so writes per second measure the per-packet cost of each path.
//! * `return_lan_to_tun`: the LAN host floods 64-byte UDP replies to a SNATed flow; packets
//!   read back from the TUN per second: kernel conntrack de-NAT vs `lan_return` (native and
//!   generic) with `XDP_PASS`.
//!
//! Numbers vary with the machine (these share 2 vCPUs between sender, router and reader).

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tailgate::nat::checksum as ck;
use tailgate::xdp::{
    ebpf_object_embedded, AttachPreference, ForwardOptions, ForwardRoute, LanInterface, XdpForward,
};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 5);
const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 5);
const SECONDS: Duration = Duration::from_secs(2);

fn skip_reason() -> Option<String> {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !ebpf_object_embedded() {
        return Some("eBPF object not embedded".into());
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("`{tool}` not available"));
        }
    }
    None
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn ns_exec(ns: &str, cmd: &str) -> String {
    let mut args = vec!["netns", "exec", ns];
    args.extend(cmd.split_whitespace());
    let out = Command::new("ip").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        // SAFETY: `file` is an open namespace fd; `setns` only moves this test-owned thread.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
}

fn join<T>(h: std::thread::JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

struct Lab {
    router: String,
    lan: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            router: format!("tgfb-{pid}-{tag}-r"),
            lan: format!("tgfb-{pid}-{tag}-l"),
        };
        for ns in [&lab.router, &lab.lan] {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        let (r, l) = (lab.router.as_str(), lab.lan.as_str());
        run(
            "ip",
            &[
                "link", "add", "lan0", "netns", r, "type", "veth", "peer", "name", "lanh", "netns",
                l,
            ],
        );
        run(
            "ip",
            &["-n", r, "addr", "add", "10.1.1.1/24", "dev", "lan0"],
        );
        run("ip", &["-n", r, "link", "set", "lan0", "up"]);
        run(
            "ip",
            &["-n", l, "addr", "add", "10.1.1.5/24", "dev", "lanh"],
        );
        run("ip", &["-n", l, "link", "set", "lanh", "up"]);
        run(
            "ip",
            &["-n", l, "route", "add", "default", "via", "10.1.1.1"],
        );
        ns_exec(r, "sysctl -qw net.ipv4.ip_forward=1");
        lab
    }

    fn masquerade(&self) {
        let r = self.router.as_str();
        ns_exec(r, "nft add table ip tgbench");
        ns_exec(
            r,
            "nft add chain ip tgbench post { type nat hook postrouting priority 100 ; }",
        );
        ns_exec(
            r,
            "nft add rule ip tgbench post ip saddr 100.64.0.0/10 oifname lan0 masquerade",
        );
    }

    fn rx_packets(&self, ns: &str, dev: &str) -> u64 {
        ns_exec(
            ns,
            &format!("cat /sys/class/net/{dev}/statistics/rx_packets"),
        )
        .trim()
        .parse()
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.router, &self.lan] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Tun {
    fd: OwnedFd,
}

impl Tun {
    fn create(name: &str) -> Tun {
        // SAFETY: NUL-terminated path; plain open(2).
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0x0001 | 0x1000,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: a properly sized, initialised `struct ifreq` for TUNSETIFF.
        assert_eq!(
            unsafe { libc::ioctl(fd.as_raw_fd(), 0x4004_54ca, &mut req) },
            0
        );
        Tun { fd }
    }

    fn write(&self, pkt: &[u8]) -> bool {
        // SAFETY: the buffer is valid for its length.
        unsafe {
            libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) == pkt.len() as isize
        }
    }

    /// Reads (and counts) packets until `stop` is set, then for a short grace period.
    fn count_until(&self, stop: &AtomicBool) -> u64 {
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        let mut grace: Option<Instant> = None;
        loop {
            if grace.is_none() && stop.load(Ordering::Relaxed) {
                grace = Some(Instant::now() + Duration::from_millis(300));
            }
            if grace.is_some_and(|g| Instant::now() > g) {
                return n;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                continue;
            }
            loop {
                // SAFETY: `buf` is valid for its length.
                let r =
                    unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if r <= 0 {
                    break;
                }
                if buf[0] >> 4 == 4 && buf[9] == 17 {
                    n += 1;
                }
            }
        }
    }
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    let p = ck::pseudo_header_v4(src.octets(), dst.octets(), 17, l4.len() as u16);
    let c = ck::udp_wire(ck::finish(ck::sum(&l4, p)));
    l4[6..8].copy_from_slice(&c.to_be_bytes());
    let mut out = vec![0x45, 0];
    out.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let c = ck::checksum(&out);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&l4);
    out
}

fn tun_setup() -> Tun {
    let tun = Tun::create("tgtun0");
    for args in [
        &["link", "set", "tgtun0", "mtu", "1280", "up"][..],
        &["addr", "add", "100.64.0.1/32", "dev", "tgtun0"],
        &["route", "add", "100.64.0.0/10", "dev", "tgtun0"],
    ] {
        run("ip", args);
    }
    tun
}

fn attach(snat: bool, lan_mode: AttachPreference) -> XdpForward {
    let opts = ForwardOptions {
        lan: vec![LanInterface::new("lan0", ROUTER_LAN)],
        snat_subnet_routes: snat,
        lan_attach: lan_mode,
        ..ForwardOptions::default()
    };
    let mut fwd = XdpForward::attach("tgtun0", &opts).unwrap();
    fwd.set_routes(&[ForwardRoute::from("10.1.1.0/24".parse::<IpNet>().unwrap())])
        .unwrap();
    fwd
}

/// Turns on `kernel.bpf_stats_enabled` (run time per program) for its lifetime, restoring the
/// previous value.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> BpfStats {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(path).unwrap_or_else(|_| "0".into());
        let _ = std::fs::write(path, "1");
        BpfStats(old.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// Average run time of a loaded program, ns per invocation.
fn ns_per_run(fwd: &XdpForward, program: tailgate::xdp::ForwardProgram) -> f64 {
    let Some(id) = fwd.program_id(program) else {
        return f64::NAN;
    };
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.run_time().as_nanos() as f64 / p.run_count().max(1) as f64)
        .unwrap_or(f64::NAN)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    KernelNoNat,
    KernelMasquerade,
    XdpNoNat,
    XdpSnat,
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn forward_tun_to_lan() {
    if let Some(r) = skip_reason() {
        let _ = writeln!(std::io::stderr(), "skipping: {r}");
        return;
    }
    let _stats = BpfStats::enable();
    let mut rows = Vec::new();
    for path in [
        Path::KernelNoNat,
        Path::KernelMasquerade,
        Path::XdpNoNat,
        Path::XdpSnat,
    ] {
        let lab = Lab::new("fwd");
        if path == Path::KernelMasquerade {
            lab.masquerade();
        }
        let rx0 = lab.rx_packets(&lab.lan, "lanh");
        let (writes, secs, counters) = join(in_ns(&lab.router, move || {
            let tun = tun_setup();
            let fwd = match path {
                Path::XdpNoNat => Some(attach(false, AttachPreference::Auto)),
                Path::XdpSnat => Some(attach(true, AttachPreference::Auto)),
                _ => None,
            };
            let pkt = udp4(CLIENT4, HOST, 61_000, 9, &[0u8; 18]);
            // Resolve the neighbour first.
            tun.write(&pkt);
            std::thread::sleep(Duration::from_millis(300));
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < SECONDS {
                for _ in 0..1000 {
                    if tun.write(&pkt) {
                        n += 1;
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let cost = fwd
                .as_ref()
                .map(|f| ns_per_run(f, tailgate::xdp::ForwardProgram::TunForward));
            (n, secs, fwd.map(|f| (f.counters().unwrap(), cost)))
        }));
        std::thread::sleep(Duration::from_millis(200));
        let delivered = lab.rx_packets(&lab.lan, "lanh") - rx0;
        rows.push((
            path,
            writes as f64 / secs,
            delivered as f64 / secs,
            counters,
        ));
    }
    eprintln!("\nTUN → LAN, 64-byte UDP, one writer thread");
    eprintln!(
        "{:<22} {:>14} {:>16} {:>18}",
        "path", "writes/s", "delivered/s", "tun_forward ns/pkt"
    );
    for (path, w, d, c) in &rows {
        let cost = c.and_then(|(_, cost)| cost).map(|n| format!("{n:.0}"));
        eprintln!(
            "{:<22} {:>14.0} {:>16.0} {:>18}",
            format!("{path:?}"),
            w,
            d,
            cost.unwrap_or_else(|| "-".into())
        );
        if let Some((c, _)) = c {
            assert!(c.tun.forwarded() > 0, "{c:?}");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Return {
    KernelConntrack,
    XdpPassNative,
    XdpPassGeneric,
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn return_lan_to_tun() {
    if let Some(r) = skip_reason() {
        let _ = writeln!(std::io::stderr(), "skipping: {r}");
        return;
    }
    let _stats = BpfStats::enable();
    let mut rows = Vec::new();
    for variant in [
        Return::KernelConntrack,
        Return::XdpPassNative,
        Return::XdpPassGeneric,
    ] {
        let lab = Lab::new("ret");
        if variant == Return::KernelConntrack {
            lab.masquerade();
        }
        // The LAN host learns the SNATed peer from the first datagram, then floods it.
        let (peer_tx, peer_rx) = mpsc::channel::<SocketAddr>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (sent2, stop2) = (sent.clone(), stop.clone());
        let sender = in_ns(&lab.lan, move || {
            let s = UdpSocket::bind("10.1.1.5:5353").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            let (_, peer) = s.recv_from(&mut buf).expect("first datagram");
            peer_tx.send(peer).unwrap();
            s.connect(peer).unwrap();
            let payload = [0u8; 18];
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < SECONDS {
                for _ in 0..100 {
                    if s.send(&payload).is_ok() {
                        n += 1;
                    }
                }
            }
            sent2.store(n, Ordering::Relaxed);
            stop2.store(true, Ordering::Relaxed);
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let router = in_ns(&lab.router, move || {
            let tun = tun_setup();
            let fwd = match variant {
                Return::XdpPassNative => Some(attach(true, AttachPreference::Native)),
                Return::XdpPassGeneric => Some(attach(true, AttachPreference::Generic)),
                Return::KernelConntrack => None,
            };
            tun.write(&udp4(CLIENT4, HOST, 40_000, 5353, b"start"));
            let peer = peer_rx.recv_timeout(Duration::from_secs(5)).expect("peer");
            let start = Instant::now();
            let read = tun.count_until(&stop);
            let secs = start.elapsed().as_secs_f64() - 0.3;
            let cost = fwd
                .as_ref()
                .map(|f| ns_per_run(f, tailgate::xdp::ForwardProgram::LanReturn));
            (peer, read, secs, fwd.map(|f| (f.counters().unwrap(), cost)))
        });
        join(sender);
        let (peer, read, secs, counters) = join(router);
        let rx = lab.rx_packets(&lab.router, "lan0");
        let sent = sent.load(Ordering::Relaxed);
        rows.push((
            variant,
            sent as f64 / secs,
            read as f64 / secs,
            rx,
            peer,
            counters,
        ));
    }
    eprintln!("\nLAN → TUN, 64-byte UDP replies to a SNATed flow, one sender, one TUN reader");
    eprintln!(
        "{:<18} {:>12} {:>16} {:>9} {:>17}",
        "path", "sent/s", "read from TUN/s", "read/sent", "lan_return ns/pkt"
    );
    for (v, s, r, _, peer, c) in &rows {
        let cost = c.and_then(|(_, cost)| cost).map(|n| format!("{n:.0}"));
        eprintln!(
            "{:<18} {:>12.0} {:>16.0} {:>8.0}% {:>17}   (SNAT peer {peer})",
            format!("{v:?}"),
            s,
            r,
            100.0 * r / s,
            cost.unwrap_or_else(|| "-".into())
        );
        if let Some((c, _)) = c {
            assert!(c.lan.returned_v4 > 0, "{c:?}");
        }
    }
}
