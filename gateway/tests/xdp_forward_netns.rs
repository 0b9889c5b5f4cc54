//! Real packets through `tun_forward` and `lan_return` in network namespaces the test creates.
//!
//! ```text
//!  test process ──write/read──▶ tgtun0 (TUN, "the daemon's")      router ns
//!                               lan0 10.1.1.1/24 ══ veth ══ lanh 10.1.1.5/24   LAN host ns
//! ```
//!
//! The test plays the daemon: it writes decrypted-looking packets (tailnet → LAN, plain IPv4 and
//! 4via6) into the TUN and reads what the kernel routes back into it. A UDP socket, a TCP
//! listener and the kernel's ping responder in the LAN host namespace answer. The counters
//! show which packets XDP forwarded and which went through the kernel.
//!
//! Runs only as root with the eBPF object embedded; otherwise each test says why it is
//! skipped. Namespaces (and with them every link, the TUN and the XDP attachments) are removed
//! on drop; every wait is bounded.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tailgate::afxdp::{strip_ethernet, XdpSocket, XdpSocketConfig};
use tailgate::nat::checksum as ck;
use tailgate::nat::translate::{self, Addressing};
use tailgate::nat::via6::{via_addr, SiteId};
use tailgate::xdp::{
    ebpf_object_embedded, ForwardCounters, ForwardOptions, ForwardRoute, LanInterface, XdpForward,
};

fn skip_reason() -> Option<String> {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !ebpf_object_embedded() {
        return Some("eBPF object not embedded (build with `cargo xtask build`)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip` (iproute2) not available".into()),
    }
}

macro_rules! skip_unless_able {
    () => {
        if let Some(reason) = skip_reason() {
            let _ = writeln!(
                std::io::stderr(),
                "skipping XDP forwarding netns test: {reason}"
            );
            return;
        }
    };
}

const CLIENT4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 5);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 5);
const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 5);

fn host6() -> Ipv6Addr {
    via_addr(SiteId::new(7), HOST)
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_in(ns: &str, args: &str) {
    let mut full = vec!["-n", ns];
    full.extend(args.split_whitespace());
    run_ip(&full).unwrap_or_else(|e| panic!("{e}"));
}

fn sysctl(ns: &str, kv: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", kv])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sysctl {kv}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that entered network namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: `file` is an open namespace fd; `setns` only moves this test-owned thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn join<T>(h: std::thread::JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The router and LAN host namespaces; deleted on drop (with the TUN, the veth and the XDP
/// programs attached to them).
struct Lab {
    router: String,
    lan: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            router: format!("tgfw-{pid}-{tag}-r"),
            lan: format!("tgfw-{pid}-{tag}-l"),
        };
        for ns in [&lab.router, &lab.lan] {
            run_ip(&["netns", "add", ns]).unwrap_or_else(|e| panic!("{e}"));
        }
        let (r, l) = (lab.router.as_str(), lab.lan.as_str());
        ip_in(r, "link set lo up");
        ip_in(l, "link set lo up");
        run_ip(&[
            "link",
            "add",
            "lan0",
            "netns",
            r,
            "address",
            "02:00:00:00:01:01",
            "type",
            "veth",
            "peer",
            "name",
            "lanh",
            "netns",
            l,
            "address",
            "02:00:00:00:00:05",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        ip_in(r, "addr add 10.1.1.1/24 dev lan0");
        ip_in(r, "link set lan0 up");
        ip_in(l, "addr add 10.1.1.5/24 dev lanh");
        ip_in(l, "link set lanh up");
        // Replies to tailnet addresses (SNAT off) go back through the router.
        ip_in(l, "route add default via 10.1.1.1");
        for kv in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            // Strict reverse-path filtering, as on many distributions: the loader must cope.
            "net.ipv4.conf.all.rp_filter=1",
            "net.ipv4.conf.all.log_martians=1",
            "net.ipv4.conf.default.rp_filter=1",
        ] {
            sysctl(r, kv);
        }
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.router, &self.lan] {
            if let Err(e) = run_ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// The test's stand-in for the daemon's TUN device (IFF_TUN | IFF_NO_PI).
struct Tun {
    fd: OwnedFd,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

impl Tun {
    /// Creates `name` in the calling thread's network namespace.
    fn create(name: &str) -> Tun {
        // SAFETY: the path is NUL-terminated; plain open(2).
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        assert!(
            raw >= 0,
            "open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        );
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
        // SAFETY: `req` is a properly sized, initialised `struct ifreq` for TUNSETIFF.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) };
        assert!(rc == 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        Tun { fd }
    }

    fn write(&self, pkt: &[u8]) {
        // SAFETY: the buffer is valid for its length; `fd` is open.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
        assert_eq!(
            n,
            pkt.len() as isize,
            "TUN write: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Reads packets until one satisfies `want` or `timeout` passes.
    fn read_matching(&self, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if rc <= 0 {
                continue;
            }
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 && want(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Packets.

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ck::pseudo_header_v4(s.octets(), d.octets(), proto, len as u16)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ck::pseudo_header_v6(s.octets(), d.octets(), proto, len as u32)
        }
        _ => panic!("mixed families"),
    }
}

/// An IP packet with `l4` (whose checksum field at `csum_at` is computed here).
fn packet(src: IpAddr, dst: IpAddr, proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let p = if proto == 1 {
        0
    } else {
        pseudo(src, dst, proto, l4.len())
    };
    let c = ck::finish(ck::sum(&l4, p));
    let c = if proto == 17 { ck::udp_wire(c) } else { c };
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            out.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let c = ck::checksum(&out);
            out[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            out.extend_from_slice(&[proto, 64]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    out.extend_from_slice(&l4);
    out
}

fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    packet(src, dst, 17, l4, 6)
}

fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(&ack.to_be_bytes());
    l4.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    packet(src, dst, 6, l4, 16)
}

fn ping(src: IpAddr, dst: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    let (typ, proto) = if src.is_ipv6() { (128, 58) } else { (8, 1) };
    let mut l4 = vec![typ, 0, 0, 0];
    l4.extend_from_slice(&id.to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(b"tailgate xdp ping");
    packet(src, dst, proto, l4, 2)
}

/// Parses a packet read from the TUN (checksums verified by `translate::parse`'s callers
/// below).
fn flow(pkt: &[u8]) -> Option<translate::FlowTuple> {
    match translate::parse(pkt).ok()?.addressing {
        Addressing::Flow(t) => Some(t),
        _ => None,
    }
}

/// Verifies the IP header checksum (IPv4) and the transport checksum of a packet.
#[track_caller]
fn assert_checksums(pkt: &[u8]) {
    let v6 = pkt[0] >> 4 == 6;
    let (hl, src, dst, proto) = if v6 {
        let s: [u8; 16] = pkt[8..24].try_into().unwrap();
        let d: [u8; 16] = pkt[24..40].try_into().unwrap();
        (40, IpAddr::V6(s.into()), IpAddr::V6(d.into()), pkt[6])
    } else {
        assert!(ck::verify(&pkt[..20], 0), "IPv4 header checksum");
        let s: [u8; 4] = pkt[12..16].try_into().unwrap();
        let d: [u8; 4] = pkt[16..20].try_into().unwrap();
        (20, IpAddr::V4(s.into()), IpAddr::V4(d.into()), pkt[9])
    };
    let l4 = &pkt[hl..];
    let p = if proto == 1 {
        0
    } else {
        pseudo(src, dst, proto, l4.len())
    };
    assert!(ck::verify(l4, p), "transport checksum (proto {proto})");
}

fn counters(fwd: &XdpForward) -> ForwardCounters {
    fwd.counters().expect("counters")
}

/// The forwarding options of the lab.
fn options(snat: bool) -> ForwardOptions {
    ForwardOptions {
        lan: vec![LanInterface::new("lan0", ROUTER_LAN)],
        snat_subnet_routes: snat,
        ..ForwardOptions::default()
    }
}

fn routes() -> Vec<ForwardRoute> {
    ["10.1.1.0/24", "fd7a:115c:a1e0:b1a:0:7:a01:100/120"]
        .iter()
        .map(|s| ForwardRoute::from(s.parse::<IpNet>().unwrap()))
        .collect()
}

/// Sets up the router side: the TUN (MTU 1280, routes for the tailnet ranges), the programs
/// attached, the routes advertised. Runs in the router namespace.
fn router_setup(snat: bool) -> (Tun, XdpForward) {
    let tun = Tun::create("tgtun0");
    for args in [
        &["link", "set", "tgtun0", "mtu", "1280", "up"][..],
        // The node's own tailnet address, as the daemon assigns it (with strict or loose
        // rp_filter, the kernel refuses packets on an address-less interface whose source it
        // cannot verify — which includes the ones XDP has SNATed and passes on).
        &["addr", "add", "100.64.0.1/32", "dev", "tgtun0"],
        &["route", "add", "100.64.0.0/10", "dev", "tgtun0"],
        &["-6", "route", "add", "fd7a:115c:a1e0::/48", "dev", "tgtun0"],
    ] {
        run_ip(args).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut fwd = XdpForward::attach("tgtun0", &options(snat)).expect("attach forwarding");
    fwd.set_routes(&routes()).expect("routes");
    (tun, fwd)
}

/// A LAN host UDP service: answers each datagram with "re:" + payload, reports the peers.
fn lan_udp_echo(lab: &Lab, n: usize) -> (mpsc::Receiver<SocketAddr>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = in_ns(&lab.lan, move || {
        let s = UdpSocket::bind("10.1.1.5:5353").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let Ok((len, peer)) = s.recv_from(&mut buf) else {
                return;
            };
            let mut reply = b"re:".to_vec();
            reply.extend_from_slice(&buf[..len]);
            s.send_to(&reply, peer).unwrap();
            tx.send(peer).unwrap();
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("LAN UDP service ready");
    (rx, h)
}

fn is_udp_reply_to(pkt: &[u8], client: IpAddr, cport: u16) -> bool {
    flow(pkt)
        .is_some_and(|t| t.proto == translate::L4Proto::Udp && t.dst == client && t.dport == cport)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn snat_udp_tcp_ping_through_xdp() {
    skip_unless_able!();
    let lab = Lab::new("snat");
    let (rx, service) = lan_udp_echo(&lab, 3);
    let (tcp_tx, tcp_rx) = mpsc::channel();
    let listener = in_ns(&lab.lan, move || {
        let l = TcpListener::bind("10.1.1.5:8080").unwrap();
        l.set_nonblocking(true).unwrap();
        tcp_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match l.accept() {
                Ok((mut s, peer)) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut b = [0u8; 5];
                    let got = s.read_exact(&mut b).map(|_| b.to_vec()).unwrap_or_default();
                    return Some((peer, got));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => return None,
            }
        }
    });
    tcp_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let router = lab.router.clone();

    let (c_first, c_after, peers) = join(in_ns(&router, move || {
        let (tun, fwd) = router_setup(true);
        let c0 = counters(&fwd);
        let client = IpAddr::V4(CLIENT4);
        let host = IpAddr::V4(HOST);

        // 1. First packet: the router has no neighbour entry for the host yet. XDP SNATs it
        //    (so that the flow keeps one mapping) and hands it to the kernel, which resolves
        //    the neighbour and forwards it.
        tun.write(&udp(client, host, 40_000, 5353, b"one"));
        let r = tun
            .read_matching(Duration::from_secs(5), |p| {
                is_udp_reply_to(p, client, 40_000)
            })
            .expect("reply to the first datagram");
        assert_checksums(&r);
        assert_eq!(&r[28..], b"re:one");
        let c_first = counters(&fwd).delta(&c0);

        // 2. Neighbour known: forwarded by XDP (redirect to lan0), reply de-SNATed by XDP.
        for (i, payload) in [b"two".as_slice(), b"three".as_slice()].iter().enumerate() {
            tun.write(&udp(client, host, 40_000 + i as u16, 5353, payload));
            let r = tun
                .read_matching(Duration::from_secs(5), |p| {
                    is_udp_reply_to(p, client, 40_000 + i as u16)
                })
                .expect("UDP reply");
            assert_checksums(&r);
            assert_eq!(r[8], 63, "TTL: the kernel forwarded it once");
        }

        // 3. TCP: SYN → SYN-ACK (from the TUN), ACK + data → the listener accepts.
        tun.write(&tcp(client, host, 41_000, 8080, 1000, 0, 0x02));
        let synack = tun
            .read_matching(Duration::from_secs(5), |p| {
                flow(p).is_some_and(|t| t.proto == translate::L4Proto::Tcp && t.dport == 41_000)
            })
            .expect("SYN-ACK");
        assert_checksums(&synack);
        assert_eq!(synack[33] & 0x12, 0x12, "SYN-ACK flags");
        let their_seq = u32::from_be_bytes(synack[24..28].try_into().unwrap());
        tun.write(&tcp(client, host, 41_000, 8080, 1001, their_seq + 1, 0x10));
        let mut l4 = Vec::new();
        l4.extend_from_slice(&41_000u16.to_be_bytes());
        l4.extend_from_slice(&8080u16.to_be_bytes());
        l4.extend_from_slice(&1001u32.to_be_bytes());
        l4.extend_from_slice(&(their_seq + 1).to_be_bytes());
        l4.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        l4.extend_from_slice(b"hello");
        tun.write(&packet(client, host, 6, l4, 16));

        // 4. Ping.
        tun.write(&ping(client, host, 0x4242, 1));
        let echo = tun
            .read_matching(Duration::from_secs(5), |p| {
                p[0] >> 4 == 4 && p[9] == 1 && p[20] == 0
            })
            .expect("echo reply");
        assert_checksums(&echo);
        assert_eq!(&echo[24..26], &0x4242u16.to_be_bytes(), "echo ID restored");
        assert_eq!(&echo[16..20], &CLIENT4.octets());

        // 5. A closed port: the LAN host's "port unreachable" reaches the client, translated.
        tun.write(&udp(client, host, 40_100, 9, b"anyone?"));
        let err = tun
            .read_matching(Duration::from_secs(5), |p| {
                p[0] >> 4 == 4 && p[9] == 1 && p[20] == 3 && p[21] == 3
            })
            .expect("ICMP port unreachable");
        assert_checksums(&err);
        assert_eq!(&err[16..20], &CLIENT4.octets());
        assert_eq!(
            &err[28 + 12..28 + 16],
            &CLIENT4.octets(),
            "quoted source: the client"
        );
        assert_eq!(&err[48..50], &40_100u16.to_be_bytes(), "quoted source port");

        let c_after = counters(&fwd).delta(&c0);
        let mut peers = Vec::new();
        while let Ok(p) = rx.recv_timeout(Duration::from_millis(200)) {
            peers.push(p);
        }
        drop(fwd);
        (c_first, c_after, peers)
    }));
    join(service);
    let accepted = join(listener).expect("TCP connection accepted on the LAN host");

    // The LAN host saw the router's LAN address, never the tailnet address.
    assert_eq!(peers.len(), 3, "{peers:?}");
    for p in &peers {
        assert_eq!(p.ip(), IpAddr::V4(ROUTER_LAN), "{peers:?}");
    }
    assert_eq!(accepted.0.ip(), IpAddr::V4(ROUTER_LAN));
    assert_eq!(accepted.1, b"hello");

    eprintln!("first packet: {:?}", c_first.tun);
    eprintln!("after: tun {:?}\n       lan {:?}", c_after.tun, c_after.lan);
    assert_eq!(c_first.tun.passed_no_neigh, 1, "{c_first:?}");
    assert!(c_after.tun.forwarded_v4 >= 5, "{c_after:?}");
    assert!(c_after.lan.returned_v4 >= 4, "{c_after:?}");
    assert_eq!(c_after.lan.returned_icmp_error, 1, "{c_after:?}");
    assert_eq!(c_after.tun.dropped_error + c_after.lan.dropped_error, 0);
}

#[test]
fn via6_ping_udp_and_too_big() {
    skip_unless_able!();
    let lab = Lab::new("via6");
    let (rx, service) = lan_udp_echo(&lab, 2);
    let router = lab.router.clone();
    let (c, peers) = join(in_ns(&router, move || {
        let (tun, fwd) = router_setup(true);
        let c0 = counters(&fwd);
        let client = IpAddr::V6(CLIENT6);
        let host = IpAddr::V6(host6());

        // Ping the LAN host at its 4via6 address; the reply comes back as ICMPv6 from it.
        for seq in 1..=3u16 {
            tun.write(&ping(client, host, 0x77, seq));
            let r = tun
                .read_matching(Duration::from_secs(5), |p| {
                    p[0] >> 4 == 6 && p[6] == 58 && p[40] == 129 && p[46..48] == seq.to_be_bytes()
                })
                .unwrap_or_else(|| panic!("ICMPv6 echo reply {seq}"));
            assert_checksums(&r);
            assert_eq!(
                &r[8..24],
                &host6().octets(),
                "from the host's 4via6 address"
            );
            assert_eq!(&r[24..40], &CLIENT6.octets());
            assert_eq!(&r[44..46], &0x77u16.to_be_bytes(), "echo ID restored");
            assert_eq!(r[7], 63, "hop limit: forwarded once by the kernel");
        }

        // UDP.
        for i in 0..2u16 {
            tun.write(&udp(client, host, 50_000 + i, 5353, b"via six"));
            let r = tun
                .read_matching(Duration::from_secs(5), |p| {
                    is_udp_reply_to(p, client, 50_000 + i)
                })
                .expect("UDP reply over 4via6");
            assert_checksums(&r);
            assert_eq!(&r[48..], b"re:via six");
        }

        // A closed port: ICMPv6 port unreachable from the host's 4via6 address.
        tun.write(&udp(client, host, 50_100, 9, b"anyone?"));
        let err = tun
            .read_matching(Duration::from_secs(5), |p| {
                p[0] >> 4 == 6 && p[6] == 58 && p[40] == 1 && p[41] == 4
            })
            .expect("ICMPv6 port unreachable");
        assert_checksums(&err);
        assert_eq!(&err[8..24], &host6().octets());
        assert_eq!(
            &err[48 + 8..48 + 24],
            &CLIENT6.octets(),
            "quoted source: the client"
        );

        // Too big for the LAN (MTU 1000): ICMPv6 packet too big comes back out of the TUN.
        run_ip(&["link", "set", "lan0", "mtu", "1000"]).unwrap();
        tun.write(&udp(client, host, 50_010, 5353, &[7u8; 1300]));
        let ptb = tun
            .read_matching(Duration::from_secs(5), |p| {
                p[0] >> 4 == 6 && p[6] == 58 && p[40] == 2
            })
            .expect("ICMPv6 packet too big");
        assert_checksums(&ptb);
        assert_eq!(ptb.len(), 1280);
        assert_eq!(&ptb[44..48], &1280u32.to_be_bytes());
        let c = counters(&fwd).delta(&c0);
        let mut peers = Vec::new();
        while let Ok(p) = rx.recv_timeout(Duration::from_millis(200)) {
            peers.push(p);
        }
        (c, peers)
    }));
    join(service);
    eprintln!("tun {:?}\nlan {:?}", c.tun, c.lan);
    assert!(
        peers.iter().all(|p| p.ip() == IpAddr::V4(ROUTER_LAN)),
        "{peers:?}"
    );
    assert!(c.tun.forwarded_via6 >= 4, "{c:?}");
    assert_eq!(c.lan.returned_via6, 5, "{c:?}");
    assert_eq!(c.lan.returned_icmp_error, 1, "{c:?}");
    assert_eq!(c.tun.icmp_too_big, 1, "{c:?}");
    assert_eq!(c.tun.dropped_error + c.lan.dropped_error, 0);
}

#[test]
fn snat_off_keeps_tailnet_source_and_detaches() {
    skip_unless_able!();
    let lab = Lab::new("nosnat");
    let (rx, service) = lan_udp_echo(&lab, 3);
    let router = lab.router.clone();
    let (c, prog_ids) = join(in_ns(&router, move || {
        let (tun, fwd) = router_setup(false);
        let c0 = counters(&fwd);
        let client = IpAddr::V4(CLIENT4);
        for i in 0..3u16 {
            tun.write(&udp(client, IpAddr::V4(HOST), 45_000 + i, 5353, b"no snat"));
            tun.read_matching(Duration::from_secs(5), |p| {
                is_udp_reply_to(p, client, 45_000 + i)
            })
            .expect("reply routed back by the LAN host's default route");
        }
        let c = counters(&fwd).delta(&c0);
        let ids = [
            fwd.program_id(tailgate::xdp::ForwardProgram::TunForward)
                .unwrap(),
            fwd.program_id(tailgate::xdp::ForwardProgram::LanReturn)
                .unwrap(),
        ];
        assert_eq!(fwd.tun_attachment(), Some(("tgtun0", "generic")));
        eprintln!("lan_return attached: {:?}", fwd.lan_attachments());
        let read = |k: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/tgtun0/{k}")).unwrap()
        };
        assert_eq!(
            (read("accept_local").trim(), read("rp_filter").trim()),
            ("1", "2")
        );
        drop(fwd);
        assert_eq!(
            (read("accept_local").trim(), read("rp_filter").trim()),
            ("0", "1"),
            "restored"
        );
        // Detached: no XDP program on either interface any more.
        for dev in ["tgtun0", "lan0"] {
            let out = Command::new("ip")
                .args(["-d", "link", "show", "dev", dev])
                .output()
                .unwrap();
            let s = String::from_utf8_lossy(&out.stdout);
            assert!(!s.contains("prog/xdp"), "{dev} still has XDP: {s}");
        }
        (c, ids)
    }));
    join(service);
    let peers: Vec<SocketAddr> = rx.try_iter().collect();
    assert_eq!(peers.len(), 3);
    for p in &peers {
        assert_eq!(
            p.ip(),
            IpAddr::V4(CLIENT4),
            "SNAT off: the LAN host sees the tailnet address"
        );
    }
    assert!(c.tun.forwarded_v4 >= 2, "{c:?}");
    assert_eq!(c.tun.snat_new_conn, 0);
    assert_eq!(
        c.lan.returned_v4, 0,
        "replies are not ours: the kernel routes them"
    );
    assert!(c.lan.passed_no_match >= 3);
    let loaded: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    for id in prog_ids {
        assert!(
            !loaded.contains(&id),
            "program {id} still loaded after drop"
        );
    }
}

/// Turns transmit checksum offload of the LAN host's veth on or off.
fn lan_tx_checksum_offload(ns: &str, on: bool) {
    let state = if on { "on" } else { "off" };
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-K", "lanh", "tx", state])
        .output()
        .expect("running ethtool");
    assert!(
        out.status.success(),
        "ethtool -K lanh tx {state}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (bounded) for one frame on the AF_XDP socket and returns the IP packet inside it.
fn xsk_next_packet(xsk: &mut XdpSocket, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    for _ in 0..10_000 {
        let mut got = None;
        xsk.recv_batch(|frame| {
            if got.is_none() {
                got = strip_ethernet(frame).map(<[u8]>::to_vec);
            }
        })
        .expect("AF_XDP receive");
        if got.is_some() {
            return got;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        xsk.poll(left.min(Duration::from_millis(100)))
            .expect("AF_XDP poll");
    }
    None
}

#[test]
fn snat_udp_replies_to_an_af_xdp_socket() {
    skip_unless_able!();
    let lab = Lab::new("xsk");
    let (rx, service) = lan_udp_echo(&lab, 7);
    let router = lab.router.clone();
    let lan_ns = lab.lan.clone();
    let (sink_tx, sink_rx) = mpsc::channel();
    let sink = in_ns(&lab.lan, move || {
        let s = UdpSocket::bind("10.1.1.5:7777").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        sink_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        s.recv_from(&mut buf)
            .ok()
            .map(|(n, peer)| (buf[..n].to_vec(), peer))
    });
    sink_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("LAN UDP sink ready");
    let (c_socket, c_partial, c_after, peers) = join(in_ns(&router, move || {
        let (tun, mut fwd) = router_setup(true);
        let client = IpAddr::V4(CLIENT4);
        let host = IpAddr::V4(HOST);

        // 1. No socket: the reply goes to the kernel, which routes it into the TUN.
        tun.write(&udp(client, host, 42_000, 5353, b"kernel"));
        let r = tun
            .read_matching(Duration::from_secs(5), |p| {
                is_udp_reply_to(p, client, 42_000)
            })
            .expect("reply through the kernel");
        assert_checksums(&r);

        // 2. A socket on lan0's queue 0: de-NATed replies arrive on it, not in the TUN. The
        //    LAN host computes its checksums itself (as a host on a real LAN does): a local
        //    sender's partial checksums are left to the kernel (step 3).
        lan_tx_checksum_offload(&lan_ns, false);
        let lan0 = std::ffi::CString::new("lan0").unwrap();
        // SAFETY: NUL-terminated interface name.
        let ifindex = unsafe { libc::if_nametoindex(lan0.as_ptr()) };
        assert_ne!(ifindex, 0, "lan0 ifindex");
        let mut xsk = XdpSocket::bind(ifindex, 0, XdpSocketConfig::default())
            .expect("AF_XDP socket on lan0 queue 0");
        fwd.register_xsk(&xsk).expect("register the socket");
        assert_eq!(
            fwd.xsk_registrations(),
            Some(("lan0", vec![0])),
            "registration"
        );
        let c0 = counters(&fwd);
        for i in 0..4u16 {
            let payload = format!("xsk{i}");
            let cport = 42_100 + i;
            tun.write(&udp(client, host, cport, 5353, payload.as_bytes()));
            let p = xsk_next_packet(&mut xsk, Duration::from_secs(5))
                .unwrap_or_else(|| panic!("reply {i} on the AF_XDP socket"));
            assert_checksums(&p);
            let t = flow(&p).expect("a UDP packet");
            assert_eq!(t.src, host, "source: the LAN host");
            assert_eq!(t.dst, client, "destination: the tailnet client");
            assert_eq!((t.sport, t.dport), (5353, cport));
            assert_eq!(p[8], 64, "TTL untouched: the kernel did not forward it");
            assert_eq!(&p[28..], format!("re:{payload}").as_bytes());
        }
        assert!(
            tun.read_matching(Duration::from_millis(300), |p| {
                is_udp_reply_to(p, client, 42_100)
            })
            .is_none(),
            "a reply handed to the socket also reached the TUN"
        );
        let c_socket = counters(&fwd).delta(&c0);

        // 3. A reply with a partial checksum (checksum offload on the LAN host's veth): only
        //    the kernel completes it, so it goes into the TUN despite the socket.
        lan_tx_checksum_offload(&lan_ns, true);
        let c1 = counters(&fwd);
        tun.write(&udp(client, host, 42_150, 5353, b"partial"));
        let r = tun
            .read_matching(Duration::from_secs(5), |p| {
                is_udp_reply_to(p, client, 42_150)
            })
            .expect("partial-checksum reply through the kernel");
        assert_checksums(&r);
        let c_partial = counters(&fwd).delta(&c1);

        // 4. Socket unregistered: replies go to the kernel again.
        fwd.unregister_xsk(0).expect("unregister");
        assert_eq!(fwd.xsk_registrations(), None);
        let c1 = counters(&fwd);
        tun.write(&udp(client, host, 42_200, 5353, b"back"));
        let r = tun
            .read_matching(Duration::from_secs(5), |p| {
                is_udp_reply_to(p, client, 42_200)
            })
            .expect("reply through the kernel after unregistering");
        assert_checksums(&r);
        let c_after = counters(&fwd).delta(&c1);
        let stats = xsk.stats().expect("socket statistics");
        assert_eq!(stats.rx_invalid_descs, 0, "{stats:?}");

        // 5. The socket's transmit side: a whole Ethernet frame sent on lan0 reaches the host.
        let ip = udp(
            IpAddr::V4(ROUTER_LAN),
            IpAddr::V4(HOST),
            7000,
            7777,
            b"from AF_XDP",
        );
        let mut frame = vec![
            0x02, 0, 0, 0, 0, 0x05, 0x02, 0, 0, 0, 0x01, 0x01, 0x08, 0x00,
        ];
        frame.extend_from_slice(&ip);
        assert!(xsk.send(&frame).expect("AF_XDP send"), "a free TX frame");
        let mut completed = 0;
        for _ in 0..500 {
            completed += xsk.reclaim();
            if completed > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(completed, 1, "the sent frame completed");
        drop(xsk);
        drop(fwd);
        let mut peers = Vec::new();
        while let Ok(p) = rx.recv_timeout(Duration::from_millis(200)) {
            peers.push(p);
        }
        (c_socket, c_partial, c_after, peers)
    }));
    join(service);
    let (payload, from) = join(sink).expect("the frame sent on the AF_XDP socket arrived");
    assert_eq!(payload, b"from AF_XDP");
    assert_eq!(from, SocketAddr::from((ROUTER_LAN, 7000)));
    assert_eq!(peers.len(), 7, "{peers:?}");
    assert_eq!(c_partial.lan.redirected_xsk, 0, "{c_partial:?}");
    assert_eq!(c_partial.lan.returned_v4, 1, "{c_partial:?}");
    eprintln!("with the socket: lan {:?}", c_socket.lan);
    assert_eq!(c_socket.lan.redirected_xsk, 4, "{c_socket:?}");
    assert_eq!(c_socket.lan.returned_v4, 4, "{c_socket:?}");
    assert_eq!(c_after.lan.redirected_xsk, 0, "{c_after:?}");
    assert_eq!(c_after.lan.returned_v4, 1, "{c_after:?}");
}
