//! STUN: the `stun_responder` XDP program and the userspace STUN server.
//!
//! - The program's answers (run with `BPF_PROG_TEST_RUN` on IPv4 and IPv6 request frames) are
//!   byte for byte the frames built here from the pure codec's answer for the same request,
//!   and what it must not answer is passed untouched.
//! - In two network namespaces joined by a veth pair: with the program attached to the server's
//!   veth (native mode; GRO on the client's end) and the userspace server on the same port,
//!   clients learn their own addresses (IPv4 and IPv6) from XDP answers; requests the program
//!   does not handle and junk reach the userspace server, which answers or counts them; with
//!   the program detached the userspace server answers.
//!
//! Needs root and a binary built with the eBPF object; otherwise each test prints why it is
//! skipped and passes. Namespaces, links, the program and the server thread are removed on
//! drop, also when a test fails.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tailgate::stun::codec::{self, TxId};
use tailgate::stun::server::StunSnapshot;
use tailgate::xdp::{ebpf_object_embedded, xdp_action, XdpStunCounters, XdpStunResponder};
use tailgate_bench::stun_bench::{self, StunBenchOptions, StunLab, UserspaceServer, LAB_PORT};

fn skip_reason() -> Option<String> {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !ebpf_object_embedded() {
        return Some("eBPF object not embedded (build with `cargo xtask build`)".into());
    }
    None
}

macro_rules! skip_unless_able {
    () => {
        if let Some(reason) = skip_reason() {
            let _ = writeln!(std::io::stderr(), "skipping STUN test: {reason}");
            return;
        }
    };
}

// ----------------------------------------------------------------------------------------
// Frames, built independently of the XDP program (checksums included).

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::new();
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let pseudo = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(&d.octets(), sum(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum(&d.octets(), sum(&s.octets(), 0)),
        _ => panic!("mixed families"),
    } + 17
        + u32::from(len);
    let c = finish(sum(&u, pseudo));
    let c = if c == 0 { 0xffff } else { c };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An Ethernet frame from `src` to `dst` carrying `payload` over UDP, with TTL / hop limit
/// `ttl` (IPv4: id 0x1234, DF, TOS 0x10; IPv6: flow label 0x12345).
fn frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let u = udp(src, dst, payload);
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0x10];
            ip.extend_from_slice(&((20 + u.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = finish(sum(&ip, 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0x01, 0x23, 0x45]);
            f.extend_from_slice(&(u.len() as u16).to_be_bytes());
            f.extend_from_slice(&[17, ttl]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&u);
    f
}

/// A binding request with no attribute.
fn bare_request(txid: &TxId) -> Vec<u8> {
    let mut r = codec::binding_request(txid)[..20].to_vec();
    r[3] = 0;
    r
}

/// A binding request like Tailscale's clients send: SOFTWARE "tailnode", then FINGERPRINT.
fn software_request(txid: &TxId) -> Vec<u8> {
    let mut r = codec::binding_request(txid)[..20].to_vec();
    r[3] = 20;
    r.extend_from_slice(&[0x80, 0x22, 0x00, 0x08]);
    r.extend_from_slice(b"tailnode");
    let fp = codec::fingerprint(&r);
    r.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
    r.extend_from_slice(&fp.to_be_bytes());
    r
}

/// Picks one counter out of the program's counters.
type CounterOf = fn(&XdpStunCounters) -> u64;

fn random_txid() -> TxId {
    let mut t = [0u8; 12];
    OsRng.fill_bytes(&mut t);
    t
}

#[test]
fn xdp_answers_match_the_codec() {
    skip_unless_able!();
    let xdp = XdpStunResponder::load(LAB_PORT).expect("loading stun_responder");
    let clients: [SocketAddr; 4] = [
        "198.51.100.7:40000".parse().unwrap(),
        "10.0.0.1:1".parse().unwrap(),
        "[2001:db8::7]:40000".parse().unwrap(),
        "[fd00::1:2:3:4]:65535".parse().unwrap(),
    ];
    let mut answered = (0, 0);
    for client in clients {
        let server = match client.ip() {
            IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::new(203, 0, 113, 1).into(), LAB_PORT),
            IpAddr::V6(_) => SocketAddr::new(
                "2001:db8:ffff::1".parse::<Ipv6Addr>().unwrap().into(),
                LAB_PORT,
            ),
        };
        for with_fingerprint in [false, true] {
            for padding in [0usize, 9] {
                let txid = random_txid();
                let payload = if with_fingerprint {
                    codec::binding_request(&txid).to_vec()
                } else {
                    bare_request(&txid)
                };
                let mut request = frame(MAC_A, MAC_B, client, server, 17, &payload);
                // Trailing Ethernet padding is cut from the answer.
                request.extend(std::iter::repeat_n(0, padding));
                let run = xdp.test_run(&request).expect("test run");
                let want = frame(
                    MAC_B,
                    MAC_A,
                    server,
                    client,
                    64,
                    &codec::binding_response(&txid, client),
                );
                assert_eq!(run.action, xdp_action::TX, "{client} fp={with_fingerprint}");
                assert_eq!(
                    hex::encode(&run.data),
                    hex::encode(&want),
                    "{client} fp={with_fingerprint} padding={padding}"
                );
                if client.is_ipv4() {
                    answered.0 += 1;
                } else {
                    answered.1 += 1;
                }
            }
        }
    }

    // Passed untouched: requests with other attributes, a wrong FINGERPRINT, junk, other
    // ports, IPv4 options.
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let server: SocketAddr = SocketAddr::new(Ipv4Addr::new(203, 0, 113, 1).into(), LAB_PORT);
    let txid = random_txid();
    let mut bad_fp = codec::binding_request(&txid).to_vec();
    bad_fp[27] ^= 1;
    let mut wrong_cookie = bare_request(&txid);
    wrong_cookie[4] = 0;
    let mut response = codec::binding_response(&txid, client);
    response.truncate(20);
    response[3] = 0;
    let cases: Vec<(&str, Vec<u8>, CounterOf)> = vec![
        (
            "SOFTWARE + FINGERPRINT",
            frame(MAC_A, MAC_B, client, server, 64, &software_request(&txid)),
            |c| c.passed_attributes,
        ),
        (
            "wrong FINGERPRINT",
            frame(MAC_A, MAC_B, client, server, 64, &bad_fp),
            |c| c.passed_attributes,
        ),
        (
            "wrong cookie",
            frame(MAC_A, MAC_B, client, server, 64, &wrong_cookie),
            |c| c.passed_not_binding,
        ),
        (
            "a binding response",
            frame(MAC_A, MAC_B, client, server, 64, &response),
            |c| c.passed_not_binding,
        ),
        (
            "truncated header",
            frame(MAC_A, MAC_B, client, server, 64, &bare_request(&txid)[..12]),
            |c| c.passed_not_binding,
        ),
        (
            "junk",
            frame(
                MAC_A,
                MAC_B,
                client,
                server,
                64,
                b"0123456789abcdefghijklmnopqrstuv",
            ),
            |c| c.passed_not_binding,
        ),
        (
            "other port",
            frame(
                MAC_A,
                MAC_B,
                client,
                SocketAddr::new(server.ip(), LAB_PORT + 1),
                64,
                &bare_request(&txid),
            ),
            |c| c.passed_other,
        ),
        (
            "IPv4 options",
            {
                let mut f = frame(MAC_A, MAC_B, client, server, 64, &bare_request(&txid));
                // IHL 6 with a 4-byte NOP option: total length grows by 4; checksum is not
                // checked by the program.
                f[14] = 0x46;
                let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
                f[16..18].copy_from_slice(&tot.to_be_bytes());
                f.splice(34..34, [1u8, 1, 1, 1]);
                f
            },
            |c| c.passed_unsupported,
        ),
    ];
    for (what, packet, counter) in cases {
        let before = xdp.counters().unwrap();
        let run = xdp.test_run(&packet).expect("test run");
        assert_eq!(run.action, xdp_action::PASS, "{what}");
        assert_eq!(run.data, packet, "{what}: passed frames are untouched");
        let after = xdp.counters().unwrap();
        assert_eq!(counter(&after) - counter(&before), 1, "{what}: {after:?}");
    }
    let c = xdp.counters().unwrap();
    assert_eq!((c.answered_v4, c.answered_v6), answered);
}

// ----------------------------------------------------------------------------------------
// The lab.

/// Runs `f` on a thread inside the client namespace with a tokio runtime.
fn in_client<T: Send + 'static>(
    lab: &StunLab,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> T {
    lab.client_ns
        .spawn_inside(f)
        .expect("client thread")
        .join()
        .expect("client thread panicked")
        .expect("client")
}

/// Asks the lab server (IPv4 or IPv6) with the STUN client; returns (socket address, answer).
fn ask(lab: &StunLab, v6: bool) -> (SocketAddr, SocketAddr) {
    in_client(lab, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let local: IpAddr = if v6 {
                StunLab::CLIENT_V6.into()
            } else {
                StunLab::CLIENT_V4.into()
            };
            let socket = tokio::net::UdpSocket::bind(SocketAddr::new(local, 0)).await?;
            let got = tailgate::stun::binding(
                &socket,
                StunLab::server_addr(v6, LAB_PORT),
                Duration::from_secs(3),
            )
            .await?;
            Ok((socket.local_addr()?, got))
        })
    })
}

/// Sends `payloads` to the server (each family) from one socket, and the Tailscale-style
/// request; returns the address the server reported for the latter, per family.
fn send_junk_and_software_requests(lab: &StunLab, payloads: Vec<Vec<u8>>) -> Vec<SocketAddr> {
    in_client(lab, move || {
        let mut seen = Vec::new();
        for v6 in [false, true] {
            let local: IpAddr = if v6 {
                StunLab::CLIENT_V6.into()
            } else {
                StunLab::CLIENT_V4.into()
            };
            let s = std::net::UdpSocket::bind(SocketAddr::new(local, 0))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let server = StunLab::server_addr(v6, LAB_PORT);
            for p in &payloads {
                s.send_to(p, server)?;
            }
            let txid = random_txid();
            s.send_to(&software_request(&txid), server)?;
            let mut buf = [0u8; 256];
            let (n, _) = s.recv_from(&mut buf)?;
            let addr = codec::parse_binding_response(&buf[..n], &txid)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(
                addr == s.local_addr()?,
                "answer {addr} for {}",
                s.local_addr()?
            );
            seen.push(addr);
        }
        Ok(seen)
    })
}

/// Waits (at most 5 s) until the server's counters satisfy `ok`.
fn wait_counters(server: &UserspaceServer, ok: impl Fn(&StunSnapshot) -> bool) -> StunSnapshot {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = server.snapshot();
        if ok(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lab_xdp_answers_userspace_falls_back_and_junk_is_counted() {
    skip_unless_able!();
    let lab = StunLab::new().expect("STUN lab");
    let server = UserspaceServer::start(&lab.server_ns, LAB_PORT).expect("userspace server");
    let xdp = lab.attach_xdp(LAB_PORT).expect("attach stun_responder");
    let _ = writeln!(
        std::io::stderr(),
        "stun_responder attached in {} mode",
        xdp.attach_mode().unwrap_or("?")
    );

    // 1. XDP answers: the clients learn their own addresses, the userspace server sees nothing.
    for v6 in [false, true] {
        let (local, got) = ask(&lab, v6);
        assert_eq!(got, local, "v6={v6}");
    }
    let c = xdp.counters().unwrap();
    assert!(c.answered_v4 >= 1 && c.answered_v6 >= 1, "{c:?}");
    assert_eq!(
        server.snapshot().answered(),
        0,
        "XDP answered, not userspace"
    );

    // 2. Junk and requests the program does not handle reach the userspace server.
    let txid = random_txid();
    let mut random = vec![0u8; 64];
    OsRng.fill_bytes(&mut random);
    random[0] |= 0x80; // never a STUN type
    let mut wrong_cookie = codec::binding_request(&txid).to_vec();
    wrong_cookie[6] ^= 0xff;
    let mut oversized = codec::binding_request(&txid).to_vec();
    oversized[2..4].copy_from_slice(&0x0400u16.to_be_bytes());
    let truncated = codec::binding_request(&txid)[..11].to_vec();
    let seen =
        send_junk_and_software_requests(&lab, vec![random, truncated, wrong_cookie, oversized]);
    assert_eq!(seen.len(), 2);
    let s = wait_counters(&server, |s| s.dropped() >= 8 && s.answered() >= 2);
    assert_eq!(s.dropped_not_stun, 4, "{s:?}");
    assert_eq!(s.dropped_too_short, 2, "{s:?}");
    assert_eq!(s.dropped_bad_length, 2, "{s:?}");
    assert_eq!((s.answered_v4, s.answered_v6), (1, 1), "{s:?}");
    let c = xdp.counters().unwrap();
    assert_eq!(c.passed_not_binding, 8, "{c:?}");
    assert_eq!(c.passed_attributes, 2, "{c:?}");

    // 3. Without the program the userspace server answers (and is still alive after junk).
    drop(xdp);
    for v6 in [false, true] {
        let (local, got) = ask(&lab, v6);
        assert_eq!(got, local, "v6={v6}");
    }
    let s = wait_counters(&server, |s| s.answered() >= 4);
    assert_eq!((s.answered_v4, s.answered_v6), (2, 2), "{s:?}");
}

/// The benchmark's measuring function, briefly: both phases answer, the XDP phase's answers
/// all came from the program, and the report has its table.
#[test]
fn bench_smoke() {
    skip_unless_able!();
    let r = stun_bench::run(StunBenchOptions {
        duration: Duration::from_millis(300),
        ..StunBenchOptions::quick()
    })
    .expect("STUN benchmark");
    let md = r.markdown();
    let _ = writeln!(std::io::stderr(), "{md}");
    assert!(r.xdp.received > 0 && r.userspace.received > 0, "{md}");
    assert!(r.xdp_counters.answered() >= r.xdp.received, "{md}");
    assert_eq!(r.server_answered_during_xdp, 0, "{md}");
    assert!(r.server_counters.answered() >= r.userspace.received, "{md}");
    assert!(r.ratio().is_some());
    assert!(md.contains("| userspace server |") && md.contains("XDP / userspace"));
}
