//! The same packets through both implementations of subnet forwarding: the XDP programs
//! `tun_forward` / `lan_return` (run with `BPF_PROG_TEST_RUN`) and the userspace reference
//! `tailgate::nat` (engine + translate), comparing output bytes.
//!
//! Fields that legitimately differ are reconciled, not ignored: the IPv4 identification of
//! 4via6-translated packets (the engine counts, XDP draws a random one) is copied over with its
//! header checksum recomputed, and when the two allocate different SNAT ports (both keep an
//! in-range original port; otherwise each hashes with its own function) the expected packet is
//! rebuilt with the engine's pure `translate` function and the XDP program's port. XDP also
//! forwards (TTL − 1, Ethernet header from the FIB), which the engine leaves to the kernel:
//! the expected packet gets `translate::decrement_ttl` and the FIB's header.
//!
//! The FIB lookups happen in a network namespace the test creates: a TUN device (ingress), a
//! veth `lan0` with 10.1.1.1/24 and permanent neighbours, 10.1.2.0/24 through a gateway with
//! route MTU 1000, and a host 10.1.1.6 without a neighbour entry.
//!
//! Runs only as root with the eBPF object embedded; otherwise each test says why it is skipped.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tailgate::afxdp::{XdpSocket, XdpSocketConfig};
use tailgate::nat::checksum as ck;
use tailgate::nat::conntrack::ConnConfig;
use tailgate::nat::engine::{Nat, NatConfig, Verdict};
use tailgate::nat::translate::{self, Addressing, FlowTuple};
use tailgate::xdp::{
    ebpf_object_embedded, xdp_action, ForwardCounters, ForwardOptions, ForwardProgram,
    ForwardRoute, LanInterface, TestRun, XdpForward,
};

// ---------------------------------------------------------------------------------------------
// Environment.

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
            let _ = writeln!(std::io::stderr(), "skipping XDP forward vectors: {reason}");
            return;
        }
    };
}

fn ip_cmd(ns: &str, args: &str) {
    let mut full = vec!["-n", ns];
    full.extend(args.split_whitespace());
    let out = Command::new("ip").args(&full).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        full.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

const LAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 5];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// A namespace with the router's interfaces; deleted on drop.
struct Router {
    ns: String,
}

impl Router {
    fn new(tag: &str) -> Router {
        let ns = format!("tgfv-{}-{tag}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &ns])
            .output()
            .unwrap();
        assert!(out.status.success(), "netns add: {:?}", out);
        let r = Router { ns };
        let ns = r.ns.as_str();
        ip_cmd(ns, "link set lo up");
        ip_cmd(ns, "tuntap add dev tgtun0 mode tun");
        ip_cmd(ns, "link set tgtun0 up");
        ip_cmd(
            ns,
            "link add lan0 address 02:00:00:00:01:01 type veth peer name lanp address 02:00:00:00:01:02",
        );
        ip_cmd(ns, "addr add 10.1.1.1/24 dev lan0");
        ip_cmd(ns, "link set lan0 up");
        ip_cmd(ns, "link set lanp up");
        ip_cmd(
            ns,
            "neigh add 10.1.1.5 lladdr 02:00:00:00:00:05 nud permanent dev lan0",
        );
        ip_cmd(
            ns,
            "neigh add 10.1.1.254 lladdr 02:00:00:00:00:fe nud permanent dev lan0",
        );
        ip_cmd(
            ns,
            "route add 10.1.2.0/24 via 10.1.1.254 dev lan0 mtu lock 1000",
        );
        r.sysctl("net.ipv4.conf.all.forwarding", "1");
        r.sysctl("net.ipv6.conf.all.forwarding", "1");
        r
    }

    fn sysctl(&self, key: &str, value: &str) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "sysctl {key}: {:?}", out);
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: `file` is an open namespace fd; `setns` only moves this test thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

// ---------------------------------------------------------------------------------------------
// Packets (built independently of the code under test: full checksums).

const CLIENT4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 5);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 5);
const SNAT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 5);
const HOST_NO_NEIGH: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 6);
const FAR: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 9);
const PORTS: std::ops::RangeInclusive<u16> = 61_000..=65_535;

fn via(site: u16, v4: Ipv4Addr) -> Ipv6Addr {
    tailgate::nat::via6::via_addr(tailgate::nat::via6::SiteId::new(site), v4)
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        no_csum: bool,
    },
    Echo {
        request: bool,
        id: u16,
        seq: u16,
        payload: Vec<u8>,
    },
}

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

fn l4_bytes(src: IpAddr, dst: IpAddr, l4: &L4) -> (u8, Vec<u8>) {
    let v6 = src.is_ipv6();
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            payload,
        } => {
            let mut b = Vec::new();
            b.extend_from_slice(&sport.to_be_bytes());
            b.extend_from_slice(&dport.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, *flags, 0xff, 0xff, 0, 0, 0, 0]);
            b.extend_from_slice(payload);
            let c = ck::finish(ck::sum(&b, pseudo(src, dst, 6, b.len())));
            b[16..18].copy_from_slice(&c.to_be_bytes());
            (6, b)
        }
        L4::Udp {
            sport,
            dport,
            payload,
            no_csum,
        } => {
            let mut b = Vec::new();
            b.extend_from_slice(&sport.to_be_bytes());
            b.extend_from_slice(&dport.to_be_bytes());
            b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(payload);
            if !no_csum {
                let c = ck::udp_wire(ck::finish(ck::sum(&b, pseudo(src, dst, 17, b.len()))));
                b[6..8].copy_from_slice(&c.to_be_bytes());
            }
            (17, b)
        }
        L4::Echo {
            request,
            id,
            seq,
            payload,
        } => {
            let typ = match (v6, request) {
                (false, true) => 8,
                (false, false) => 0,
                (true, true) => 128,
                (true, false) => 129,
            };
            let mut b = vec![typ, 0, 0, 0];
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&seq.to_be_bytes());
            b.extend_from_slice(payload);
            let proto = if v6 { 58 } else { 1 };
            let p = if v6 {
                pseudo(src, dst, proto, b.len())
            } else {
                0
            };
            let c = ck::finish(ck::sum(&b, p));
            b[2..4].copy_from_slice(&c.to_be_bytes());
            (proto, b)
        }
    }
}

#[derive(Clone, Copy)]
struct Hdr {
    ttl: u8,
    df: bool,
    tos: u8,
}

const H: Hdr = Hdr {
    ttl: 64,
    df: false,
    tos: 0,
};

fn packet(src: IpAddr, dst: IpAddr, l4: &L4, h: Hdr) -> Vec<u8> {
    let (proto, b) = l4_bytes(src, dst, l4);
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&[0x45, h.tos]);
            p.extend_from_slice(&((20 + b.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[
                0x12,
                0x34,
                if h.df { 0x40 } else { 0 },
                0,
                h.ttl,
                proto,
                0,
                0,
            ]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let c = ck::checksum(&p);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60 | (h.tos >> 4), h.tos << 4, 0, 0]);
            p.extend_from_slice(&(b.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, h.ttl]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    p.extend_from_slice(&b);
    p
}

fn eth(dst: [u8; 6], src: [u8; 6], proto: u16, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&proto.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
        payload: b"hello".to_vec(),
    }
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    L4::Udp {
        sport,
        dport,
        payload: payload.to_vec(),
        no_csum: false,
    }
}

fn echo(request: bool, id: u16) -> L4 {
    L4::Echo {
        request,
        id,
        seq: 7,
        payload: b"ping payload".to_vec(),
    }
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Flow tuple (ports / echo ID) of an IP packet.
fn flow(pkt: &[u8]) -> FlowTuple {
    match translate::parse(pkt).expect("parse").addressing {
        Addressing::Flow(t) => t,
        other => panic!("not a flow: {other:?}"),
    }
}

/// The source port (or echo request ID) of a translated packet.
fn sport_of(pkt: &[u8]) -> u16 {
    flow(pkt).sport
}

/// Copies the IPv4 identification of `from` into `to` and recomputes `to`'s header checksum.
fn copy_ipv4_id(to: &mut [u8], from: &[u8]) {
    to[4..6].copy_from_slice(&from[4..6]);
    to[10..12].copy_from_slice(&[0, 0]);
    let c = ck::checksum(&to[..20]);
    to[10..12].copy_from_slice(&c.to_be_bytes());
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: packets differ (lengths {} / {}, first difference at byte {first})\n got  {}\n want {}",
            got.len(),
            want.len(),
            hex(got),
            hex(want)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The two implementations side by side.

struct Both {
    xdp: XdpForward,
    nat: Nat,
    tun_if: u32,
    lan_if: u32,
    now: Instant,
}

impl Both {
    /// Must be called inside the router namespace.
    fn new(snat: bool) -> Both {
        let opts = ForwardOptions {
            lan: vec![LanInterface::new("lan0", SNAT)],
            snat_subnet_routes: snat,
            port_range: PORTS,
            tun_mtu: Some(1280),
            seed: Some(1),
            ..ForwardOptions::default()
        };
        let mut xdp = XdpForward::load(&opts).expect("load the XDP programs");
        let via7: IpNet = "fd7a:115c:a1e0:b1a:0:7:a01:100/120".parse().unwrap();
        let via7far: IpNet = "fd7a:115c:a1e0:b1a:0:7:a01:200/120".parse().unwrap();
        let routes: Vec<ForwardRoute> = ["10.1.1.0/24", "10.1.2.0/24"]
            .iter()
            .map(|s| s.parse::<IpNet>().unwrap())
            .chain([via7, via7far])
            .map(ForwardRoute::from)
            .collect();
        xdp.set_routes(&routes).expect("routes");
        let via_prefixes = [via7, via7far]
            .iter()
            .map(|n| match n {
                IpNet::V6(n) => *n,
                IpNet::V4(_) => unreachable!(),
            })
            .collect();
        let nat = Nat::new(NatConfig {
            lan_v4: Some(SNAT),
            lan_v6: None,
            snat_subnet_routes: snat,
            via_prefixes,
            conntrack: ConnConfig {
                port_range: PORTS,
                ..ConnConfig::default()
            },
        });
        Both {
            xdp,
            nat,
            tun_if: ifindex("tgtun0"),
            lan_if: ifindex("lan0"),
            now: Instant::now(),
        }
    }

    fn tun(&self, pkt: &[u8]) -> TestRun {
        self.xdp
            .test_run(ForwardProgram::TunForward, pkt, self.tun_if)
            .expect("test run tun_forward")
    }

    fn lan(&self, frame: &[u8]) -> TestRun {
        self.xdp
            .test_run(ForwardProgram::LanReturn, frame, self.lan_if)
            .expect("test run lan_return")
    }

    fn engine_out(&mut self, pkt: &[u8]) -> (Verdict, Vec<u8>) {
        let mut out = Vec::new();
        let v = self
            .nat
            .outbound(pkt, self.now, &mut out)
            .expect("engine outbound");
        (v, out)
    }

    fn engine_in(&mut self, pkt: &[u8]) -> (Verdict, Vec<u8>) {
        let mut out = Vec::new();
        let v = self
            .nat
            .inbound(pkt, self.now, &mut out)
            .expect("engine inbound");
        (v, out)
    }

    fn counters(&self) -> ForwardCounters {
        self.xdp.counters().expect("counters")
    }

    /// A packet from the tailnet both NAT: the XDP result (redirected frame, or passed IP
    /// packet) must equal the engine's translation. Returns the IP packet XDP produced.
    #[track_caller]
    fn forward(&mut self, what: &str, pkt: &[u8], redirect: bool) -> Vec<u8> {
        let r = self.tun(pkt);
        let (verdict, mut want) = self.engine_out(pkt);
        if verdict == Verdict::Unchanged {
            want = pkt.to_vec();
        }
        assert_ne!(verdict, Verdict::NotOurs, "{what}");
        let ip = if redirect {
            assert_eq!(r.action, xdp_action::REDIRECT, "{what}: action");
            let dmac = if translate::parse(&r.data[14..]).is_ok_and(
                |p| matches!(p.addressing, Addressing::Flow(t) if t.dst == IpAddr::V4(FAR)),
            ) {
                GW_MAC
            } else {
                HOST_MAC
            };
            assert_bytes(
                &r.data[..14],
                &eth(dmac, LAN_MAC, 0x0800, &[]),
                &format!("{what}: Ethernet header"),
            );
            assert!(translate::decrement_ttl(&mut want).unwrap(), "{what}: TTL");
            r.data[14..].to_vec()
        } else {
            assert_eq!(r.action, xdp_action::PASS, "{what}: action");
            r.data.clone()
        };
        // Reconcile what may legitimately differ.
        if pkt[0] >> 4 == 6 {
            copy_ipv4_id(&mut want, &ip);
        }
        let (xport, eport) = (sport_of(&ip), sport_of(&want));
        if xport != eport {
            assert!(
                PORTS.contains(&xport),
                "{what}: XDP port {xport} out of range"
            );
            let mut t = flow(&want);
            t.sport = xport;
            let mut rebuilt = Vec::new();
            let id = u16::from_be_bytes([ip[4], ip[5]]);
            translate::translate(pkt, &Addressing::Flow(t), id, &mut rebuilt).expect("translate");
            if redirect {
                translate::decrement_ttl(&mut rebuilt).unwrap();
            }
            want = rebuilt;
        }
        assert_bytes(&ip, &want, what);
        ip
    }

    /// A LAN reply to each side's translated packet (`xdp_out` / the engine's): both must
    /// produce the same packet toward the tunnel. `reply` builds the reply IP packet for a
    /// given SNAT port.
    #[track_caller]
    fn reply(
        &mut self,
        what: &str,
        xdp_port: u16,
        engine_port: u16,
        reply: impl Fn(u16) -> Vec<u8>,
    ) -> Vec<u8> {
        let frame = eth(LAN_MAC, HOST_MAC, 0x0800, &reply(xdp_port));
        let r = self.lan(&frame);
        assert_eq!(r.action, xdp_action::PASS, "{what}: action");
        let (verdict, want) = self.engine_in(&reply(engine_port));
        assert_eq!(verdict, Verdict::Translated, "{what}: engine");
        let proto = if want[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
        assert_bytes(
            &r.data[..14],
            &eth(LAN_MAC, HOST_MAC, proto, &[]),
            &format!("{what}: Ethernet"),
        );
        assert_bytes(&r.data[14..], &want, what);
        r.data[14..].to_vec()
    }
}

impl Both {
    /// An ICMP error from the LAN about one of our translated packets: both must turn it into
    /// the same packet for the client.
    #[track_caller]
    fn icmp_error(&mut self, what: &str, err: &[u8]) -> Vec<u8> {
        let r = self.lan(&eth(LAN_MAC, HOST_MAC, 0x0800, err));
        assert_eq!(r.action, xdp_action::PASS, "{what}: action");
        let (verdict, want) = self.engine_in(err);
        assert_eq!(verdict, Verdict::Translated, "{what}: engine");
        let proto = if want[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
        assert_bytes(
            &r.data[..14],
            &eth(LAN_MAC, HOST_MAC, proto, &[]),
            &format!("{what}: Ethernet"),
        );
        assert_bytes(&r.data[14..], &want, what);
        r.data[14..].to_vec()
    }
}

/// An ICMP error from `from` about `pkt` (as a LAN host or router would send it).
fn icmp_err(pkt: &[u8], from: Ipv4Addr, typ: u8, code: u8, rest: [u8; 4]) -> Vec<u8> {
    let mut e = Vec::new();
    translate::icmp_error(pkt, v4(from), typ, code, rest, &mut e).expect("icmp_error");
    e
}

/// The engine's SNAT port for the flow last translated (from its connection table).
fn engine_port(nat: &Nat, orig: &FlowTuple) -> u16 {
    nat.conntrack()
        .iter()
        .find(|c| c.orig == *orig)
        .map(|c| c.reply.dport)
        .expect("engine connection")
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn snat_vectors_match_the_engine() {
    skip_unless_able!();
    let router = Router::new("snat");
    router.run(|| {
        let mut b = Both::new(true);
        let c0 = b.counters();

        // TCP with an in-range source port: kept by both, byte-identical.
        let syn = packet(v4(CLIENT4), v4(HOST), &tcp(61_234, 22, SYN), H);
        let out = b.forward("SNAT TCP SYN, port kept", &syn, true);
        assert_eq!(sport_of(&out), 61_234);
        assert_eq!(&out[12..16], &SNAT.octets());
        let synack = |port| packet(v4(HOST), v4(SNAT), &tcp(22, port, SYN | ACK), H);
        let back = b.reply("SNAT TCP SYN-ACK", 61_234, 61_234, synack);
        assert_eq!(&back[16..20], &CLIENT4.octets());
        // The next packet of the connection reuses the mapping.
        let ack = packet(v4(CLIENT4), v4(HOST), &tcp(61_234, 22, ACK), H);
        assert_eq!(sport_of(&b.forward("SNAT TCP ACK", &ack, true)), 61_234);

        // TCP with an out-of-range port: each allocates in range.
        let syn = packet(v4(CLIENT4), v4(HOST), &tcp(40_000, 80, SYN), H);
        let out = b.forward("SNAT TCP SYN, port allocated", &syn, true);
        let orig = flow(&syn);
        let ep = engine_port(&b.nat, &orig);
        b.reply(
            "SNAT TCP reply to allocated port",
            sport_of(&out),
            ep,
            |p| packet(v4(HOST), v4(SNAT), &tcp(80, p, SYN | ACK), H),
        );

        // UDP, with and without a checksum (IPv4 allows none; both keep it 0).
        let q = packet(v4(CLIENT4), v4(HOST), &udp(61_500, 53, b"query"), H);
        let out = b.forward("SNAT UDP", &q, true);
        b.reply("SNAT UDP reply", sport_of(&out), 61_500, |p| {
            packet(v4(HOST), v4(SNAT), &udp(53, p, b"answer"), H)
        });
        let q0 = packet(
            v4(CLIENT4),
            v4(HOST),
            &L4::Udp {
                sport: 5000,
                dport: 9,
                payload: b"no checksum".to_vec(),
                no_csum: true,
            },
            H,
        );
        let out = b.forward("SNAT UDP without checksum", &q0, true);
        assert_eq!(&out[26..28], &[0, 0]);
        let ep = engine_port(&b.nat, &flow(&q0));
        b.reply("SNAT UDP reply without checksum", sport_of(&out), ep, |p| {
            packet(
                v4(HOST),
                v4(SNAT),
                &L4::Udp {
                    sport: 9,
                    dport: p,
                    payload: b"r".to_vec(),
                    no_csum: true,
                },
                H,
            )
        });

        // Ping: echo ID allocated (0x1234 is below the range), replies back to the ID.
        let req = packet(
            v4(CLIENT4),
            v4(HOST),
            &echo(true, 0x1234),
            Hdr { tos: 0x10, ..H },
        );
        let out = b.forward("SNAT ping", &req, true);
        let ep = engine_port(&b.nat, &flow(&req));
        let back = b.reply("SNAT echo reply", sport_of(&out), ep, |id| {
            packet(v4(HOST), v4(SNAT), &echo(false, id), H)
        });
        assert_eq!(flow(&back).dport, 0x1234);

        // A route through a gateway: its MAC.
        let far = packet(v4(CLIENT4), v4(FAR), &udp(61_501, 123, b"ntp"), H);
        b.forward("SNAT via gateway", &far, true);

        // ICMP errors from the LAN about our packets, back to the client (same family).
        let q = packet(v4(CLIENT4), v4(HOST), &udp(61_502, 9, b"closed port"), H);
        let out = b.forward("SNAT UDP to a closed port", &q, true);
        let back = b.icmp_error("port unreachable", &icmp_err(&out, HOST, 3, 3, [0; 4]));
        assert_eq!(&back[16..20], &CLIENT4.octets());
        assert_eq!(&back[28 + 12..28 + 16], &CLIENT4.octets(), "quoted source");
        let syn = packet(v4(CLIENT4), v4(FAR), &tcp(61_503, 443, SYN), H);
        let out = b.forward("SNAT TCP SYN far", &syn, true);
        let gw = Ipv4Addr::new(10, 1, 1, 254);
        b.icmp_error("time exceeded", &icmp_err(&out, gw, 11, 0, [0; 4]));
        b.icmp_error(
            "fragmentation needed",
            &icmp_err(&out, gw, 3, 4, [0, 0, 0x05, 0x00]),
        );
        let req = packet(v4(CLIENT4), v4(HOST), &echo(true, 62_222), H);
        let out = b.forward("SNAT ping, ID kept", &req, true);
        b.icmp_error(
            "host unreachable about a ping",
            &icmp_err(&out, gw, 3, 1, [0; 4]),
        );

        let d = b.counters().delta(&c0);
        assert_eq!(d.tun.forwarded_v4, 10, "{d:?}");
        assert_eq!(d.tun.snat_new_conn, 9, "{d:?}");
        assert_eq!(d.lan.returned_v4, 5, "{d:?}");
        assert_eq!(d.lan.returned_icmp_error, 4, "{d:?}");
        assert_eq!(b.xdp.connection_count().unwrap(), 9);
    });
}

#[test]
fn via6_vectors_match_the_engine() {
    skip_unless_able!();
    let router = Router::new("via6");
    router.run(|| {
        let mut b = Both::new(true);
        let c0 = b.counters();
        let host6 = via(7, HOST);

        let syn = packet(
            v6(CLIENT6),
            v6(host6),
            &tcp(62_000, 443, SYN),
            Hdr { tos: 0xb8, ..H },
        );
        let out = b.forward("4via6 TCP SYN", &syn, true);
        assert_eq!(&out[12..16], &SNAT.octets());
        assert_eq!(&out[16..20], &HOST.octets());
        assert_eq!(out[1], 0xb8, "traffic class → TOS");
        let back = b.reply("4via6 TCP SYN-ACK", 62_000, 62_000, |p| {
            packet(
                v4(HOST),
                v4(SNAT),
                &tcp(443, p, SYN | ACK),
                Hdr { tos: 0x20, ..H },
            )
        });
        assert_eq!(
            &back[8..24],
            &host6.octets(),
            "source: the host's 4via6 address"
        );
        assert_eq!(&back[24..40], &CLIENT6.octets());

        // UDP with an allocated port, and a LAN reply without a UDP checksum (IPv6 needs one:
        // computed in full on both sides).
        let q = packet(
            v6(CLIENT6),
            v6(host6),
            &udp(40_000, 53, b"query for site 7"),
            H,
        );
        let out = b.forward("4via6 UDP", &q, true);
        let ep = engine_port(&b.nat, &flow(&q));
        b.reply("4via6 UDP reply", sport_of(&out), ep, |p| {
            packet(v4(HOST), v4(SNAT), &udp(53, p, b"answer from site 7"), H)
        });
        let back = b.reply(
            "4via6 UDP reply without checksum",
            sport_of(&out),
            ep,
            |p| {
                packet(
                    v4(HOST),
                    v4(SNAT),
                    &L4::Udp {
                        sport: 53,
                        dport: p,
                        payload: b"odd length!".to_vec(),
                        no_csum: true,
                    },
                    H,
                )
            },
        );
        assert_ne!(&back[46..48], &[0, 0]);

        // Ping (ICMPv6 echo ↔ ICMP echo).
        let req = packet(v6(CLIENT6), v6(host6), &echo(true, 0x77), H);
        let out = b.forward("4via6 ping", &req, true);
        assert_eq!(out[20], 8, "ICMP echo request");
        let ep = engine_port(&b.nat, &flow(&req));
        let back = b.reply("4via6 echo reply", sport_of(&out), ep, |id| {
            packet(v4(HOST), v4(SNAT), &echo(false, id), H)
        });
        assert_eq!(back[40], 129, "ICMPv6 echo reply");

        // ICMP errors from the LAN become ICMPv6 from the reporter's 4via6 address, quoting
        // the client's packet as it sent it.
        let q = packet(v6(CLIENT6), v6(host6), &udp(62_010, 9, b"closed"), H);
        let out = b.forward("4via6 UDP to a closed port", &q, true);
        let back = b.icmp_error(
            "4via6 port unreachable",
            &icmp_err(&out, HOST, 3, 3, [0; 4]),
        );
        assert_eq!((back[40], back[41]), (1, 4), "ICMPv6 port unreachable");
        // (but for the hop limit, which forwarding decremented)
        assert_eq!(&back[48..55], &q[..7], "quotes the client's packet");
        assert_eq!(&back[56..], &q[8..], "quotes the client's packet");
        let gw = Ipv4Addr::new(10, 1, 1, 254);
        let back = b.icmp_error(
            "4via6 fragmentation needed",
            &icmp_err(&out, gw, 3, 4, [0, 0, 0x04, 0xd8]),
        );
        assert_eq!(&back[8..24], &via(7, gw).octets());
        assert_eq!(
            (back[40], &back[44..48]),
            (2, &1260u32.to_be_bytes()[..]),
            "packet too big, MTU + 20"
        );
        let syn = packet(v6(CLIENT6), v6(via(7, FAR)), &tcp(62_011, 443, SYN), H);
        let out = b.forward("4via6 TCP SYN far", &syn, true);
        b.icmp_error("4via6 time exceeded", &icmp_err(&out, gw, 11, 0, [0; 4]));
        let req = packet(v6(CLIENT6), v6(host6), &echo(true, 62_012), H);
        let out = b.forward("4via6 ping, ID kept", &req, true);
        b.icmp_error(
            "4via6 protocol unreachable",
            &icmp_err(&out, HOST, 3, 2, [0; 4]),
        );

        // A large packet (> 1260 bytes after translation: DF set) that fits the LAN MTU.
        let big = packet(v6(CLIENT6), v6(host6), &udp(62_001, 9, &[0x5a; 1300]), H);
        let out = b.forward("4via6 large UDP", &big, true);
        assert_eq!(out[6] & 0x40, 0x40, "DF");

        let d = b.counters().delta(&c0);
        assert_eq!(d.tun.forwarded_via6, 7, "{d:?}");
        assert_eq!(d.tun.snat_new_conn, 7, "{d:?}");
        assert_eq!(d.lan.returned_via6, 4, "{d:?}");
        assert_eq!(d.lan.returned_icmp_error, 4, "{d:?}");
        let conns = b.xdp.connections().unwrap();
        assert_eq!(conns.len(), 7);
        assert!(conns
            .iter()
            .all(|c| c.via6 && c.snat == SNAT && (c.lan_dst == HOST || c.lan_dst == FAR)));
    });
}

#[test]
fn kernel_takes_over_consistently() {
    skip_unless_able!();
    let router = Router::new("pass");
    router.run(|| {
        let mut b = Both::new(true);
        let c0 = b.counters();

        // No neighbour entry: NATed (one mapping per flow) and passed for the kernel.
        let q = packet(v4(CLIENT4), v4(HOST_NO_NEIGH), &udp(61_600, 53, b"q"), H);
        let out = b.forward("SNAT, no neighbour", &q, false);
        assert_eq!(out[8], 64, "the kernel decrements the TTL");
        let q6 = packet(
            v6(CLIENT6),
            v6(via(7, HOST_NO_NEIGH)),
            &udp(61_601, 53, b"q"),
            H,
        );
        b.forward("4via6, no neighbour", &q6, false);

        // Too big for the route MTU (1000): IPv4 with DF untouched (the kernel answers),
        // without DF NATed and passed (the kernel fragments), 4via6 answered with ICMPv6.
        let big_df = packet(
            v4(CLIENT4),
            v4(FAR),
            &udp(61_602, 9, &[1; 1200]),
            Hdr { df: true, ..H },
        );
        let r = b.tun(&big_df);
        assert_eq!(
            (r.action, r.data.as_slice()),
            (xdp_action::PASS, big_df.as_slice())
        );
        let big = packet(v4(CLIENT4), v4(FAR), &udp(61_603, 9, &[1; 1200]), H);
        b.forward("SNAT too big without DF", &big, false);
        let big6 = packet(v6(CLIENT6), v6(via(7, FAR)), &udp(61_604, 9, &[2; 1400]), H);
        let r = b.tun(&big6);
        assert_eq!(r.action, xdp_action::TX, "ICMPv6 back into the TUN");
        let mut want = Vec::new();
        translate::icmp_error(
            &big6,
            v6(via(7, FAR)),
            2,
            0,
            1280u32.to_be_bytes(),
            &mut want,
        )
        .unwrap();
        assert_bytes(&r.data, &want, "ICMPv6 packet too big");

        // A GSO super-packet (partial checksum: the pseudo-header sum) is SNATed with the
        // checksum kept partial, and passed.
        let mut gso = packet(v4(CLIENT4), v4(HOST), &tcp(61_605, 22, SYN), H);
        let part = ck::fold(pseudo(v4(CLIENT4), v4(HOST), 6, gso.len() - 20));
        gso[36..38].copy_from_slice(&part.to_be_bytes());
        let r = b.tun(&gso);
        assert_eq!(r.action, xdp_action::PASS);
        assert_eq!(&r.data[12..16], &SNAT.octets());
        let want = ck::fold(pseudo(v4(SNAT), v4(HOST), 6, gso.len() - 20));
        assert_eq!(
            u16::from_be_bytes([r.data[36], r.data[37]]),
            want,
            "partial checksum"
        );

        // Untouched: not from the tailnet, not advertised, fragments, TTL 1, mid-stream TCP
        // without a connection, an echo reply, plain IPv6, a 4via6 site not advertised.
        let untouched = [
            packet(
                v4(Ipv4Addr::new(192, 0, 2, 1)),
                v4(HOST),
                &udp(1, 2, b"x"),
                H,
            ),
            packet(
                v4(CLIENT4),
                v4(Ipv4Addr::new(10, 9, 9, 9)),
                &udp(1, 2, b"x"),
                H,
            ),
            {
                let mut f = packet(v4(CLIENT4), v4(HOST), &udp(1, 2, b"x"), H);
                f[6] = 0x20; // MF
                f[10..12].copy_from_slice(&[0, 0]);
                let c = ck::checksum(&f[..20]);
                f[10..12].copy_from_slice(&c.to_be_bytes());
                f
            },
            packet(v4(CLIENT4), v4(HOST), &udp(1, 2, b"x"), Hdr { ttl: 1, ..H }),
            packet(v4(CLIENT4), v4(HOST), &tcp(41_000, 22, ACK), H),
            packet(v4(CLIENT4), v4(HOST), &echo(false, 9), H),
            packet(
                v6(CLIENT6),
                v6("fd00::1".parse().unwrap()),
                &udp(1, 2, b"x"),
                H,
            ),
            packet(v6(CLIENT6), v6(via(8, HOST)), &udp(1, 2, b"x"), H),
        ];
        for (i, p) in untouched.iter().enumerate() {
            let r = b.tun(p);
            assert_eq!(r.action, xdp_action::PASS, "untouched #{i}");
            assert_bytes(&r.data, p, &format!("untouched #{i}"));
        }
        // Unrelated LAN traffic passes untouched.
        let other = eth(
            LAN_MAC,
            HOST_MAC,
            0x0800,
            &packet(v4(HOST), v4(SNAT), &udp(53, 9, b"x"), H),
        );
        let r = b.lan(&other);
        assert_eq!(
            (r.action, r.data.as_slice()),
            (xdp_action::PASS, other.as_slice())
        );

        // A reply with a partial checksum (a LAN host on a local veth/tap): only the
        // pseudo-header part changes; the stack completes it over the data later.
        let q = packet(v4(CLIENT4), v4(HOST), &udp(61_607, 53, b"q"), H);
        let out = b.forward("SNAT query", &q, true);
        let mut partial = packet(v4(HOST), v4(SNAT), &udp(53, sport_of(&out), b"partial"), H);
        let plen = partial.len() - 20;
        let seed = ck::fold(pseudo(v4(HOST), v4(SNAT), 17, plen));
        partial[26..28].copy_from_slice(&seed.to_be_bytes());
        let r = b.lan(&eth(LAN_MAC, HOST_MAC, 0x0800, &partial));
        assert_eq!(r.action, xdp_action::PASS);
        let want = ck::fold(pseudo(v4(HOST), v4(CLIENT4), 17, plen));
        assert_eq!(
            u16::from_be_bytes([r.data[40], r.data[41]]),
            want,
            "partial checksum kept partial"
        );
        assert_eq!(&r.data[36..38], &61_607u16.to_be_bytes());

        // A 4via6 reply too big for the tunnel (1280) with DF: ICMP back to the LAN host.
        let q = packet(v6(CLIENT6), v6(via(7, HOST)), &udp(61_606, 7, b"?"), H);
        let out = b.forward("4via6 query", &q, true);
        let big_reply = packet(
            v4(HOST),
            v4(SNAT),
            &udp(7, sport_of(&out), &[3; 1300]),
            Hdr { df: true, ..H },
        );
        let r = b.lan(&eth(LAN_MAC, HOST_MAC, 0x0800, &big_reply));
        assert_eq!(r.action, xdp_action::TX);
        let mut want = Vec::new();
        translate::icmp_error(&big_reply, v4(SNAT), 3, 4, [0, 0, 0x04, 0xec], &mut want).unwrap();
        assert_bytes(
            &r.data,
            &eth(HOST_MAC, LAN_MAC, 0x0800, &want),
            "ICMP fragmentation needed",
        );

        let d = b.counters().delta(&c0);
        assert_eq!(d.tun.passed_no_neigh, 2, "{d:?}");
        assert_eq!(d.tun.passed_too_big, 1, "{d:?}");
        assert_eq!(d.tun.passed_fragment, 1, "{d:?}");
        assert_eq!(d.tun.icmp_too_big, 1, "{d:?}");
        assert_eq!(d.tun.passed_gso, 1, "{d:?}");
        assert_eq!(d.tun.passed_no_match, 6, "{d:?}");
        assert_eq!(d.tun.passed_unsupported, 1, "{d:?}");
        assert_eq!(d.tun.passed_ttl, 1, "{d:?}");
        assert_eq!(d.tun.forwarded_via6, 1, "{d:?}");
        assert_eq!(d.tun.forwarded_v4, 1, "{d:?}");
        assert_eq!(d.lan.returned_v4, 1, "{d:?}");
        assert_eq!(d.tun.dropped_error, 0, "{d:?}");
        assert_eq!(d.lan.icmp_too_big, 1, "{d:?}");
        assert_eq!(d.lan.passed_no_match, 1, "{d:?}");
    });
}

#[test]
fn snat_off_keeps_the_tailnet_source() {
    skip_unless_able!();
    let router = Router::new("nosnat");
    router.run(|| {
        let mut b = Both::new(false);
        for (what, p) in [
            (
                "TCP",
                packet(v4(CLIENT4), v4(HOST), &tcp(40_000, 22, SYN), H),
            ),
            (
                "UDP",
                packet(v4(CLIENT4), v4(HOST), &udp(40_001, 53, b"q"), H),
            ),
            ("ping", packet(v4(CLIENT4), v4(HOST), &echo(true, 5), H)),
        ] {
            let out = b.forward(&format!("no SNAT {what}"), &p, true);
            assert_eq!(&out[12..16], &CLIENT4.octets());
        }
        // 4via6 is SNATed regardless.
        let q = packet(v6(CLIENT6), v6(via(7, HOST)), &udp(61_700, 53, b"q"), H);
        let out = b.forward("4via6 with SNAT off", &q, true);
        assert_eq!(&out[12..16], &SNAT.octets());
        // No neighbour: nothing to rewrite, passed as it is.
        let q = packet(v4(CLIENT4), v4(HOST_NO_NEIGH), &udp(1, 2, b"x"), H);
        let r = b.tun(&q);
        assert_eq!(
            (r.action, r.data.as_slice()),
            (xdp_action::PASS, q.as_slice())
        );
        let d = b.counters();
        assert_eq!(d.tun.forwarded_v4, 3);
        assert_eq!(d.tun.snat_new_conn, 1);
        assert_eq!(b.xdp.connection_count().unwrap(), 1);
    });
}

/// The seed's example in the BPF LPM trie: router A's 10.0.0.0/16 and router B's
/// 10.0.1.0/24 (told apart by their routing tables) — 10.0.1.5 matches B, 10.0.2.5 matches A.
#[test]
fn longest_prefix_wins_in_the_bpf_map() {
    skip_unless_able!();
    let mut xdp = XdpForward::load(&ForwardOptions::default()).expect("load");
    let a = ForwardRoute {
        prefix: "10.0.0.0/16".parse().unwrap(),
        table: 100,
    };
    let b = ForwardRoute {
        prefix: "10.0.1.0/24".parse().unwrap(),
        table: 200,
    };
    xdp.set_routes(&[a, b]).unwrap();
    let at = |s: &str| xdp.lookup_v4(s.parse().unwrap()).unwrap();
    assert_eq!(at("10.0.1.5"), Some(200), "the /24 wins");
    assert_eq!(at("10.0.2.5"), Some(100), "the /16 covers the rest");
    assert_eq!(at("10.1.0.1"), None);
    // Withdrawing B hands its addresses back to A.
    xdp.set_routes(&[a]).unwrap();
    assert_eq!(
        xdp.lookup_v4("10.0.1.5".parse().unwrap()).unwrap(),
        Some(100)
    );
}

/// A UDP flow through freshly loaded programs whose UDP timeouts are 1 s: the query from the
/// client (already forwarded once) and the LAN host's reply frame, in the router namespace.
struct ShortUdpFlow {
    xdp: XdpForward,
    tun_if: u32,
    lan_if: u32,
    query: Vec<u8>,
    reply: Vec<u8>,
}

impl ShortUdpFlow {
    /// Loads the programs, serves 10.1.1.0/24 and forwards the client's query from `port`
    /// (kept as the SNAT port) to the LAN host's DNS port.
    fn start(port: u16) -> ShortUdpFlow {
        let opts = ForwardOptions {
            lan: vec![LanInterface::new("lan0", SNAT)],
            port_range: PORTS,
            tun_mtu: Some(1280),
            timeouts: tailgate::nat::conntrack::Timeouts {
                udp_unreplied: Duration::from_secs(1),
                udp: Duration::from_secs(1),
                ..Default::default()
            },
            ..ForwardOptions::default()
        };
        let mut xdp = XdpForward::load(&opts).unwrap();
        xdp.set_routes(&[ForwardRoute::from("10.1.1.0/24".parse::<IpNet>().unwrap())])
            .unwrap();
        let (tun_if, lan_if) = (ifindex("tgtun0"), ifindex("lan0"));
        let query = packet(v4(CLIENT4), v4(HOST), &udp(port, 53, b"q"), H);
        let r = xdp
            .test_run(ForwardProgram::TunForward, &query, tun_if)
            .unwrap();
        assert_eq!(r.action, xdp_action::REDIRECT);
        let reply = eth(
            LAN_MAC,
            HOST_MAC,
            0x0800,
            &packet(v4(HOST), v4(SNAT), &udp(53, port, b"a"), H),
        );
        ShortUdpFlow {
            xdp,
            tun_if,
            lan_if,
            query,
            reply,
        }
    }
}

#[test]
fn connections_expire() {
    skip_unless_able!();
    let router = Router::new("expire");
    router.run(|| {
        let ShortUdpFlow {
            mut xdp,
            tun_if,
            lan_if,
            query: q,
            reply,
        } = ShortUdpFlow::start(61_800);
        let r = xdp
            .test_run(ForwardProgram::LanReturn, &reply, lan_if)
            .unwrap();
        assert_eq!(r.action, xdp_action::PASS);
        assert_eq!(&r.data[30..34], &CLIENT4.octets());
        let conns = xdp.connections().unwrap();
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].state, "udp_replied");
        assert_eq!(xdp.expire().unwrap().expired, 0);

        std::thread::sleep(Duration::from_millis(1100));
        // Idle entries are ignored by the programs before userspace removes them.
        let r = xdp
            .test_run(ForwardProgram::LanReturn, &reply, lan_if)
            .unwrap();
        assert_eq!(
            (r.action, r.data.as_slice()),
            (xdp_action::PASS, reply.as_slice())
        );
        assert_eq!(xdp.counters().unwrap().lan.passed_expired, 1);
        let s = xdp.expire().unwrap();
        assert_eq!((s.expired, s.remaining), (1, 0));
        assert_eq!(xdp.connection_count().unwrap(), 0);
        let r = xdp
            .test_run(ForwardProgram::LanReturn, &reply, lan_if)
            .unwrap();
        assert_eq!(r.data, reply);
        assert_eq!(xdp.counters().unwrap().lan.passed_no_match, 1);
        // The flow starts over with the same port.
        let r = xdp
            .test_run(ForwardProgram::TunForward, &q, tun_if)
            .unwrap();
        assert_eq!(sport_of(&r.data[14..]), 61_800);
        // Removing the route stops the fast path for it.
        xdp.remove_route("10.1.1.0/24".parse().unwrap()).unwrap();
        let r = xdp
            .test_run(ForwardProgram::TunForward, &q, tun_if)
            .unwrap();
        assert_eq!(
            (r.action, r.data.as_slice()),
            (xdp_action::PASS, q.as_slice())
        );
    });
}

/// Replies refresh the reply entry (most of them with one map lookup); the connection stays
/// alive for the programs and for userspace expiry as long as replies keep coming, with no
/// packet toward the LAN for longer than the timeout.
#[test]
fn replies_alone_keep_a_connection_alive() {
    skip_unless_able!();
    let router = Router::new("replyalive");
    router.run(|| {
        let ShortUdpFlow {
            mut xdp,
            tun_if,
            lan_if,
            query: q,
            reply,
        } = ShortUdpFlow::start(61_900);
        // 1.6 s of replies, 0.4 s apart: past the 1 s timeout since the only query.
        for i in 0..5 {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(400));
            }
            let r = xdp
                .test_run(ForwardProgram::LanReturn, &reply, lan_if)
                .unwrap();
            assert_eq!(r.action, xdp_action::PASS, "reply {i}");
            assert_eq!(&r.data[30..34], &CLIENT4.octets(), "reply {i} de-NATed");
        }
        assert_eq!(xdp.counters().unwrap().lan.passed_expired, 0);
        let conns = xdp.connections().unwrap();
        assert_eq!(conns.len(), 1);
        assert!(!conns[0].expired, "{conns:?}");
        assert!(conns[0].idle < Duration::from_secs(1), "{conns:?}");
        let s = xdp.expire().unwrap();
        assert_eq!((s.expired, s.remaining), (0, 1));
        // A query now continues the connection (still replied) instead of starting over.
        let r = xdp
            .test_run(ForwardProgram::TunForward, &q, tun_if)
            .unwrap();
        assert_eq!(r.action, xdp_action::REDIRECT);
        assert_eq!(sport_of(&r.data[14..]), 61_900);
        assert_eq!(xdp.connections().unwrap()[0].state, "udp_replied");

        // Once neither side has been seen for the timeout, it has idled out for both.
        std::thread::sleep(Duration::from_millis(1100));
        let r = xdp
            .test_run(ForwardProgram::LanReturn, &reply, lan_if)
            .unwrap();
        assert_eq!(r.data, reply);
        assert_eq!(xdp.counters().unwrap().lan.passed_expired, 1);
        let s = xdp.expire().unwrap();
        assert_eq!((s.expired, s.remaining), (1, 0));
    });
}

#[test]
fn verifier_budget() {
    skip_unless_able!();
    // Far below the kernel's 1M-instruction verification limit, so that other kernels (with
    // other pruning) load the programs too. Both are near 100k today.
    let xdp = XdpForward::load(&ForwardOptions::default()).expect("load");
    for p in [ForwardProgram::TunForward, ForwardProgram::LanReturn] {
        let id = xdp.program_id(p).expect("program id");
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|i| i.id() == id)
            .expect("loaded program");
        let n = info
            .verified_instruction_count()
            .expect("verified_insns (kernel 5.16+)");
        eprintln!("{}: {n} instructions verified", p.name());
        assert!(n < 300_000, "{}: {n} verified instructions", p.name());
    }
}

/// With an AF_XDP socket registered for `lan0` queue 0, a reply `lan_return` de-NATs is
/// redirected (same bytes as when passed), everything else is still passed, and after the
/// socket is unregistered replies are passed again.
#[test]
fn returned_packets_go_to_a_registered_af_xdp_socket() {
    skip_unless_able!();
    let router = Router::new("xsk");
    router.run(|| {
        let mut b = Both::new(true);
        let q = packet(v4(CLIENT4), v4(HOST), &udp(61_600, 53, b"query"), H);
        let out = b.forward("SNAT UDP", &q, true);
        let reply = eth(
            LAN_MAC,
            HOST_MAC,
            0x0800,
            &packet(v4(HOST), v4(SNAT), &udp(53, sport_of(&out), b"answer"), H),
        );
        let passed = b.lan(&reply);
        assert_eq!(passed.action, xdp_action::PASS, "without a socket");

        let xsk = XdpSocket::bind(b.lan_if, 0, XdpSocketConfig::default())
            .expect("AF_XDP socket on lan0 queue 0");
        b.xdp.register_xsk(&xsk).expect("register the socket");
        let c0 = b.counters();
        let redirected = b.lan(&reply);
        assert_eq!(redirected.action, xdp_action::REDIRECT, "with a socket");
        assert_bytes(&redirected.data, &passed.data, "redirected reply");
        assert_eq!(&redirected.data[14 + 16..14 + 20], &CLIENT4.octets());
        let stranger = eth(
            LAN_MAC,
            HOST_MAC,
            0x0800,
            &packet(v4(HOST), v4(SNAT), &udp(53, 1234, b"?"), H),
        );
        assert_eq!(b.lan(&stranger).action, xdp_action::PASS, "no connection");
        let d = b.counters().delta(&c0);
        assert_eq!(d.lan.redirected_xsk, 1, "{d:?}");
        assert_eq!(d.lan.returned_v4, 1, "{d:?}");
        assert_eq!(d.lan.passed_no_match, 1, "{d:?}");

        b.xdp.unregister_xsk(0).expect("unregister");
        assert_eq!(
            b.lan(&reply).action,
            xdp_action::PASS,
            "after unregistering"
        );
        drop(xsk);
    });
}
