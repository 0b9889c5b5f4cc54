//! End-to-end test of the `wan_ingress` XDP program on a veth pair between two network
//! namespaces created (and deleted) by the test.
//!
//! Runs only as root in a binary built with the eBPF object (`cargo xtask build`, or the object
//! present under `gateway-ebpf/target`); otherwise each test prints why it is skipped and passes.
//! All traffic stays inside the two namespaces (10.x and ULA addresses only).

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use tailgate::xdp::{
    ebpf_object_embedded, xdp_unavailable_reason, AttachPreference, WanCounter, WanCounters,
    WanIngressOptions, XdpError, XdpWanIngress,
};

const PORT: u16 = 51820;
const OTHER_PORT: u16 = 51821;

fn skip_reason() -> Option<String> {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !ebpf_object_embedded() {
        return Some("eBPF object not embedded (build with `cargo xtask build`)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("`ip` (iproute2) not available".into()),
    }
    None
}

macro_rules! skip_unless_able {
    () => {
        if let Some(reason) = skip_reason() {
            // Written to the real stderr (not captured by the test harness) so that the skip is
            // visible in a normal `cargo test` run.
            let _ = writeln!(std::io::stderr(), "skipping XDP integration test: {reason}");
            return;
        }
    };
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// Two namespaces joined by a veth pair; deleted on drop (also when a test panics).
///
/// `a` (sender): `va`, 10.213.<n>.1/24, fdde:ad00:<n>::1/64;
/// `b` (receiver, XDP): `vb`, 10.213.<n>.2/24, fdde:ad00:<n>::2/64.
struct Netns {
    ns_a: String,
    ns_b: String,
    va: String,
    vb: String,
    a4: Ipv4Addr,
    b4: Ipv4Addr,
    a6: Ipv6Addr,
    b6: Ipv6Addr,
}

impl Netns {
    fn new(tag: u8) -> Netns {
        let pid = std::process::id();
        let ns = Netns {
            ns_a: format!("tailgate-wan-{pid}-{tag}-a"),
            ns_b: format!("tailgate-wan-{pid}-{tag}-b"),
            // IFNAMSIZ: at most 15 characters.
            va: format!("tgx{}{tag}a", pid % 10_000_000),
            vb: format!("tgx{}{tag}b", pid % 10_000_000),
            a4: Ipv4Addr::new(10, 213, tag, 1),
            b4: Ipv4Addr::new(10, 213, tag, 2),
            a6: Ipv6Addr::new(0xfdde, 0xad00, tag.into(), 0, 0, 0, 0, 1),
            b6: Ipv6Addr::new(0xfdde, 0xad00, tag.into(), 0, 0, 0, 0, 2),
        };
        // Construct the guard first so that a failure below still cleans up.
        ip_ok(&["netns", "add", &ns.ns_a]);
        ip_ok(&["netns", "add", &ns.ns_b]);
        ip_ok(&[
            "link", "add", &ns.va, "netns", &ns.ns_a, "type", "veth", "peer", "name", &ns.vb,
            "netns", &ns.ns_b,
        ]);
        for (netns, dev, v4, v6) in [
            (&ns.ns_a, &ns.va, ns.a4, ns.a6),
            (&ns.ns_b, &ns.vb, ns.b4, ns.b6),
        ] {
            ip_ok(&["-n", netns, "link", "set", "lo", "up"]);
            ip_ok(&["-n", netns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip_ok(&[
                "-n",
                netns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip_ok(&["-n", netns, "link", "set", dev, "up"]);
        }
        ns
    }

    /// Runs `f` on a thread that has entered network namespace `netns`.
    fn run_in<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{netns}");
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: `file` is an open namespace file descriptor; `setns` only changes the
            // network namespace of this (short-lived, test-owned) thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    fn in_a<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        Self::run_in(&self.ns_a, f)
    }

    fn in_b<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        Self::run_in(&self.ns_b, f)
    }

    /// Whether `ip link` shows an XDP program on `vb` ("xdp"/"xdpgeneric"/... followed by
    /// the program, e.g. `prog/xdp id 42` in the detailed output).
    fn xdp_attached_on_vb(&self) -> bool {
        let out = ip(&["-n", &self.ns_b, "-d", "link", "show", "dev", &self.vb])
            .unwrap_or_else(|e| panic!("{e}"));
        out.split_whitespace().any(|t| {
            t == "xdp"
                || t.starts_with("xdpgeneric")
                || t.starts_with("xdpdrv")
                || t.starts_with("xdpoffload")
                || t.starts_with("xdpmulti")
                || t.starts_with("prog/xdp")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end in it, and with it the pair.
        for ns in [&self.ns_a, &self.ns_b] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn bind_udp(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// A raw IPv4 socket that sends hand-made UDP headers (to forge inconsistent length fields).
fn raw_udp4() -> OwnedFd {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn raw_send4(fd: &OwnedFd, dst: Ipv4Addr, udp_header_and_payload: &[u8]) {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address are valid for the lengths given for the whole call.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            udp_header_and_payload.as_ptr().cast(),
            udp_header_and_payload.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert!(rc >= 0, "raw sendto: {}", std::io::Error::last_os_error());
}

/// A WireGuard-looking message: `header` then filler up to `len` bytes. The filler encodes
/// `tag` so that received datagrams can be told apart.
fn msg(header: [u8; 4], len: usize, tag: u16) -> Vec<u8> {
    let mut v: Vec<u8> = header.iter().copied().take(len).collect();
    let mut i = 0u16;
    while v.len() < len {
        let b = if v.len() < 6 {
            tag.to_be_bytes()[v.len() - 4]
        } else {
            (i as u8) ^ 0x5a
        };
        v.push(b);
        i = i.wrapping_add(1);
    }
    v
}

/// Receives datagrams on the sockets until `expected` of them arrived and then for a short
/// quiet period (to catch unexpected extras), or until a deadline.
fn receive_all(sockets: &[&UdpSocket], expected: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut quiet_until: Option<Instant> = None;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now > deadline || quiet_until.is_some_and(|q| now > q) {
            return got;
        }
        for s in sockets {
            match s.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
        if got.len() >= expected && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_millis(300));
        }
    }
}

/// Polls the counters until `want(counters)` holds or a deadline passes; returns the last value.
fn wait_counters(xdp: &XdpWanIngress, want: impl Fn(&WanCounters) -> bool) -> WanCounters {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let c = xdp.counters().expect("read counters");
        if want(&c) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn program_is_loaded(id: u32) -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.id() == id)
}

/// Sends one datagram each way (v4 and v6) to `OTHER_PORT` and waits for it, so that neighbour
/// resolution is done before the measured traffic.
fn warm_up(net: &Netns, recv4: &UdpSocket, recv6: &UdpSocket, s4: &UdpSocket, s6: &UdpSocket) {
    for (sock, dst, recv) in [
        (s4, SocketAddr::new(IpAddr::V4(net.b4), OTHER_PORT), recv4),
        (s6, SocketAddr::new(IpAddr::V6(net.b6), OTHER_PORT), recv6),
    ] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 64];
        loop {
            sock.send_to(b"warm-up", dst).unwrap();
            if matches!(recv.recv(&mut buf), Ok(7)) {
                break;
            }
            assert!(Instant::now() < deadline, "warm-up to {dst} timed out");
        }
        // Drain duplicates of the warm-up datagram.
        while recv.recv(&mut buf).is_ok() {}
    }
}

struct Case {
    name: &'static str,
    payload: Vec<u8>,
    expect: WanCounter,
}

fn cases() -> Vec<Case> {
    use WanCounter::*;
    let mut tag = 0u16;
    let mut c = |name, header, len, expect| {
        tag += 1;
        Case {
            name,
            payload: msg(header, len, tag),
            expect,
        }
    };
    vec![
        c("handshake initiation", [1, 0, 0, 0], 148, PassWgInit),
        c("handshake response", [2, 0, 0, 0], 92, PassWgResponse),
        c("cookie reply", [3, 0, 0, 0], 64, PassWgCookie),
        c("keepalive", [4, 0, 0, 0], 32, PassWgData),
        c("data 32+1024", [4, 0, 0, 0], 32 + 1024, PassWgData),
        c("data, unpadded (lenient)", [4, 0, 0, 0], 33, PassWgData),
        c("empty", [0, 0, 0, 0], 0, DropTooShort),
        c("3 bytes", [1, 0, 0, 0], 3, DropTooShort),
        c("data 31", [4, 0, 0, 0], 31, DropTooShort),
        c("truncated initiation", [1, 0, 0, 0], 100, DropBadLength),
        c("initiation + 1", [1, 0, 0, 0], 149, DropBadLength),
        c("response + 1", [2, 0, 0, 0], 93, DropBadLength),
        c(
            "cookie with initiation length",
            [3, 0, 0, 0],
            148,
            DropBadLength,
        ),
        c("type 0", [0, 0, 0, 0], 148, DropBadType),
        c("type 5", [5, 0, 0, 0], 64, DropBadType),
        c("type 0xff", [0xff, 0, 0, 0], 32, DropBadType),
        c("reserved byte 1", [1, 1, 0, 0], 148, DropBadReserved),
        c("reserved byte 3", [4, 0, 0, 1], 64, DropBadReserved),
    ]
}

#[test]
fn wan_ingress_filters_and_counts() {
    skip_unless_able!();
    if let Some(reason) = xdp_unavailable_reason() {
        panic!("running as root with the object embedded, but XDP is unavailable: {reason}");
    }

    let net = Netns::new(1);
    let (vb, port) = (net.vb.clone(), PORT);
    let xdp = net
        .in_b(move || XdpWanIngress::attach(&vb, port, AttachPreference::Auto))
        .expect("attach wan_ingress");
    assert_eq!(xdp.attach_mode(), "native", "veth supports native XDP");
    assert!(net.xdp_attached_on_vb());
    let prog_id = xdp.program_id().expect("program id");
    assert!(program_is_loaded(prog_id));

    let (b4, b6, a4, a6) = (net.b4, net.b6, net.a4, net.a6);
    let (recv4, recv6, other4, other6) = net.in_b(move || {
        (
            bind_udp(SocketAddr::new(b4.into(), PORT)),
            bind_udp(SocketAddr::new(b6.into(), PORT)),
            bind_udp(SocketAddr::new(b4.into(), OTHER_PORT)),
            bind_udp(SocketAddr::new(b6.into(), OTHER_PORT)),
        )
    });
    let (send4, send6, raw4) = net.in_a(move || {
        (
            bind_udp(SocketAddr::new(a4.into(), 0)),
            bind_udp(SocketAddr::new(a6.into(), 0)),
            raw_udp4(),
        )
    });
    warm_up(&net, &other4, &other6, &send4, &send6);
    let before = xdp.counters().unwrap();

    // 1. Every case over IPv4 and IPv6 to the listen port.
    let cases = cases();
    let mut expected: HashMap<WanCounter, u64> = HashMap::new();
    let mut expected_rx: Vec<Vec<u8>> = Vec::new();
    for case in &cases {
        for (sock, dst) in [
            (&send4, SocketAddr::new(b4.into(), PORT)),
            (&send6, SocketAddr::new(b6.into(), PORT)),
        ] {
            sock.send_to(&case.payload, dst)
                .unwrap_or_else(|e| panic!("send {}: {e}", case.name));
            *expected.entry(case.expect).or_default() += 1;
            if case.expect.is_pass() {
                expected_rx.push(case.payload.clone());
            }
        }
    }

    // 2. Inconsistent UDP length fields (raw socket): longer than the frame, shorter than 8.
    let mut forged = Vec::new();
    forged.extend_from_slice(&40000u16.to_be_bytes());
    forged.extend_from_slice(&PORT.to_be_bytes());
    forged.extend_from_slice(&200u16.to_be_bytes()); // UDP length > what is sent.
    forged.extend_from_slice(&[0, 0]); // No checksum.
    forged.extend_from_slice(&msg([1, 0, 0, 0], 40, 900));
    raw_send4(&raw4, b4, &forged);
    forged[4..6].copy_from_slice(&4u16.to_be_bytes()); // UDP length < header.
    raw_send4(&raw4, b4, &forged);
    *expected.entry(WanCounter::DropMalformed).or_default() += 2;

    // 3. Fragmented datagrams (MTU 1500): a valid 2000-byte data message is passed and
    //    reassembled; an invalid one is dropped at its first fragment and never delivered.
    //    The second fragments are not for "the port" as far as XDP can tell.
    let big_ok = msg([4, 0, 0, 0], 2000, 1000);
    let big_bad = msg([9, 0, 0, 0], 2000, 1001);
    for (sock, dst) in [
        (&send4, SocketAddr::new(b4.into(), PORT)),
        (&send6, SocketAddr::new(b6.into(), PORT)),
    ] {
        sock.send_to(&big_ok, dst).unwrap();
        sock.send_to(&big_bad, dst).unwrap();
        expected_rx.push(big_ok.clone());
        *expected.entry(WanCounter::PassFragment).or_default() += 1;
        *expected.entry(WanCounter::DropBadType).or_default() += 1;
    }
    let fragment_tails = 4;

    // 4. Traffic to another port, WireGuard-looking or not: passed untouched.
    let other_payloads = [b"hello".to_vec(), msg([9, 9, 9, 9], 40, 2000)];
    for p in &other_payloads {
        send4
            .send_to(p, SocketAddr::new(b4.into(), OTHER_PORT))
            .unwrap();
        send6
            .send_to(p, SocketAddr::new(b6.into(), OTHER_PORT))
            .unwrap();
    }
    let other_sent = 2 * other_payloads.len() as u64;

    // The listen-port sockets receive exactly the valid messages.
    let mut got = receive_all(&[&recv4, &recv6], expected_rx.len());
    let mut want = expected_rx.clone();
    got.sort();
    want.sort();
    assert_eq!(
        got.len(),
        want.len(),
        "received {} datagrams on the listen port, expected {}",
        got.len(),
        want.len()
    );
    assert!(got == want, "received datagrams differ from the valid ones");

    // The other port receives everything sent to it.
    let got_other = receive_all(&[&other4, &other6], other_sent as usize);
    assert_eq!(got_other.len() as u64, other_sent);

    // Counters rose by exactly the expected amount per reason; other_passed by at least the
    // datagrams to the other port plus the fragment tails (ARP/ND may add more).
    let min_other = other_sent + fragment_tails;
    let after = wait_counters(&xdp, |c| {
        let d = c.delta(&before);
        expected.iter().all(|(k, v)| d.get(*k) >= *v) && d.other_passed >= min_other
    });
    let delta = after.delta(&before);
    for counter in WanCounter::ALL {
        if counter == WanCounter::OtherPassed {
            assert!(
                delta.other_passed >= min_other,
                "other_passed rose by {}, expected at least {min_other}",
                delta.other_passed
            );
            continue;
        }
        let want = expected.get(&counter).copied().unwrap_or(0);
        assert_eq!(
            delta.get(counter),
            want,
            "counter {} rose by {}, expected {want} (delta: {delta:?})",
            counter.name(),
            delta.get(counter)
        );
    }
    let json = serde_json::to_value(after).unwrap();
    assert!(json["pass_wg_init"].as_u64().unwrap() >= 2);

    // 5. Strict padding, switched on at run time: unpadded data is now dropped.
    let mut xdp = xdp;
    xdp.reconfigure(
        PORT,
        WanIngressOptions {
            strict_data_padding: true,
        },
    )
    .unwrap();
    let before = xdp.counters().unwrap();
    let unpadded = msg([4, 0, 0, 0], 33, 3000);
    let padded = msg([4, 0, 0, 0], 48, 3001);
    send4
        .send_to(&unpadded, SocketAddr::new(b4.into(), PORT))
        .unwrap();
    send4
        .send_to(&padded, SocketAddr::new(b4.into(), PORT))
        .unwrap();
    let got = receive_all(&[&recv4], 1);
    assert_eq!(got, vec![padded]);
    let delta = wait_counters(&xdp, |c| {
        let d = c.delta(&before);
        d.drop_bad_length >= 1 && d.pass_wg_data >= 1
    })
    .delta(&before);
    assert_eq!((delta.drop_bad_length, delta.pass_wg_data), (1, 1));

    // 6. Detach on drop: no program left, nothing attached to the interface.
    drop(xdp);
    assert!(
        !program_is_loaded(prog_id),
        "program {prog_id} still loaded"
    );
    assert!(!net.xdp_attached_on_vb(), "XDP still attached to vb");
}

#[test]
fn wan_ingress_generic_mode_and_errors() {
    skip_unless_able!();
    let net = Netns::new(2);

    let err = net
        .in_b(|| XdpWanIngress::attach("tgx-nonexistent", PORT, AttachPreference::Auto))
        .unwrap_err();
    assert!(
        matches!(err, XdpError::UnknownInterface(ref n) if n == "tgx-nonexistent"),
        "{err}"
    );

    let vb = net.vb.clone();
    let xdp = net
        .in_b(move || XdpWanIngress::attach(&vb, PORT, AttachPreference::Generic))
        .expect("attach in generic mode");
    assert_eq!(xdp.attach_mode(), "generic");
    let prog_id = xdp.program_id().unwrap();

    // A second program on the same interface is refused with a descriptive error.
    let vb = net.vb.clone();
    let err = net
        .in_b(move || XdpWanIngress::attach(&vb, PORT, AttachPreference::Native))
        .unwrap_err();
    assert!(matches!(err, XdpError::Attach { .. }), "{err}");
    assert!(err.to_string().contains("native mode"), "{err}");

    let (b4, a4) = (net.b4, net.a4);
    let recv4 = net.in_b(move || bind_udp(SocketAddr::new(b4.into(), PORT)));
    let send4 = net.in_a(move || bind_udp(SocketAddr::new(a4.into(), 0)));
    let good = msg([1, 0, 0, 0], 148, 1);
    let bad = msg([1, 0, 0, 0], 147, 2);
    let before = xdp.counters().unwrap();
    send4
        .send_to(&bad, SocketAddr::new(b4.into(), PORT))
        .unwrap();
    send4
        .send_to(&good, SocketAddr::new(b4.into(), PORT))
        .unwrap();
    assert_eq!(receive_all(&[&recv4], 1), vec![good]);
    let delta = wait_counters(&xdp, |c| {
        let d = c.delta(&before);
        d.pass_wg_init >= 1 && d.drop_bad_length >= 1
    })
    .delta(&before);
    assert_eq!((delta.pass_wg_init, delta.drop_bad_length), (1, 1));

    drop(xdp);
    assert!(
        !program_is_loaded(prog_id),
        "program {prog_id} still loaded"
    );
    assert!(!net.xdp_attached_on_vb(), "XDP still attached to vb");
}
