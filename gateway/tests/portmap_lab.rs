//! Port mapping against a real server: a node behind a lab NAT box running miniupnpd (UPnP
//! IGD, NAT-PMP and PCP), and an "internet" host on the underlay. For each protocol the node
//! gets a UDP mapping, a datagram from the internet host to the mapped public address and
//! port reaches a socket on the local port, and after the mapping is deleted (its DNAT rule
//! gone) new datagrams no longer arrive. `probe` sees all three protocols behind miniupnpd and
//! none behind a plain NAT box, within its timeout. Needs root; every namespace, process,
//! table and file is removed on drop, also when an assertion fails.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tailgate::portmap::{self, Mapping, PortMapper, Probe, Protocol};
use tailgate_bench::lab::nat::{put_behind_nat, NatBox, NatKind};
use tailgate_bench::lab::upnp::{route_to_public, Miniupnpd};
use tailgate_bench::lab::{self, Host, Lab, Netns};

/// The NAT box's lab index: the node's LAN is 192.168.5.0/24.
const NAT_INDEX: u8 = 5;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 1);

/// A node behind a NAT box (with miniupnpd if asked) and an internet host. Field order is
/// drop order: miniupnpd stops before its box goes, the namespaces before the lab's hub.
struct Setup {
    upnpd: Option<Miniupnpd>,
    _nat: NatBox,
    node: Host,
    internet: Host,
    _lab: Lab,
}

fn setup(with_miniupnpd: bool) -> Setup {
    assert!(lab::is_root(), "network-namespace tests need root");
    let lab = Lab::new().expect("lab");
    let node = lab.host(1).expect("node host");
    let internet = lab.host(9).expect("internet host");
    route_to_public(&internet).expect("route to the public range");
    let kind = if with_miniupnpd {
        NatKind::Upnp
    } else {
        NatKind::EndpointIndependent
    };
    let nat = put_behind_nat(&lab, &node.ns, NAT_INDEX, kind).expect("NAT box");
    let upnpd = with_miniupnpd.then(|| Miniupnpd::start(&nat).expect("miniupnpd"));
    Setup {
        upnpd,
        _nat: nat,
        node,
        internet,
        _lab: lab,
    }
}

impl Setup {
    fn upnpd(&self) -> &Miniupnpd {
        self.upnpd.as_ref().expect("miniupnpd runs")
    }
}

/// Runs `f` on a tokio runtime in a thread inside `ns` (its sockets live there).
fn in_ns<T, F, Fut>(ns: &Netns, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    ns.spawn_inside(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(rt.block_on(f()))
    })
    .expect("thread in the namespace")
    .join()
    .expect("namespace thread panicked")
    .expect("runtime in the namespace")
}

/// A UDP socket bound in `ns` to `0.0.0.0:port`.
fn udp_in(ns: &Netns, port: u16) -> UdpSocket {
    ns.spawn_inside(move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(s)
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap()
}

/// Whether a datagram from the internet host to `to` reaches `receiver` within 3 s. Every
/// try comes from a fresh socket (a new flow), so an old conntrack entry cannot DNAT it.
fn delivered(s: &Setup, receiver: &UdpSocket, to: SocketAddr) -> bool {
    let token = format!("tgportmap {}", rand_token());
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 128];
    while Instant::now() < deadline {
        let sender = udp_in(&s.internet.ns, 0);
        sender.send_to(token.as_bytes(), to).expect("send");
        while let Ok((n, _)) = receiver.recv_from(&mut buf) {
            if &buf[..n] == token.as_bytes() {
                return true;
            }
        }
    }
    false
}

/// A random number (std's hasher keys are random per `RandomState`).
fn rand_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Maps `port` with `protocol`, checks the mapping carries traffic, deletes it and checks
/// that it no longer does.
fn map_deliver_delete(protocol: Protocol, port: u16) {
    let s = setup(true);
    let receiver = udp_in(&s.node.ns, port);
    let m: Mapping = in_ns(&s.node.ns, move || async move {
        portmap::map_udp(protocol, GATEWAY, port, Duration::from_secs(5)).await
    })
    .unwrap_or_else(|e| panic!("{protocol} mapping: {e:#}\n{}", s.upnpd().log()));
    assert_eq!(m.protocol, protocol);
    assert_eq!(m.internal_port, port);
    assert_eq!(m.local, Ipv4Addr::new(192, 168, 5, 2));
    assert_eq!(
        m.external.ip(),
        std::net::IpAddr::V4(s.upnpd().public_ip()),
        "{m:?}"
    );
    assert!(m.lifetime >= Duration::from_secs(60), "{m:?}");
    assert!(
        s.upnpd().maps_udp_port(m.external.port()).unwrap(),
        "no DNAT rule for {m:?}:\n{}",
        s.upnpd().dnat_rules().unwrap_or_default()
    );
    assert!(
        delivered(&s, &receiver, m.external),
        "a datagram to {} did not arrive on port {port}",
        m.external
    );

    // Renewal keeps the same public port.
    let old = m.clone();
    let renewed = in_ns(&s.node.ns, move || async move {
        old.renew(Duration::from_secs(5)).await
    })
    .unwrap_or_else(|e| panic!("{protocol} renewal: {e:#}\n{}", s.upnpd().log()));
    assert_eq!(
        (renewed.protocol, renewed.external),
        (protocol, m.external),
        "{renewed:?}"
    );
    assert!(s.upnpd().maps_udp_port(m.external.port()).unwrap());

    let del = renewed.clone();
    in_ns(&s.node.ns, move || async move {
        del.delete(Duration::from_secs(5)).await
    })
    .unwrap_or_else(|e| panic!("{protocol} deletion: {e:#}\n{}", s.upnpd().log()));
    assert!(
        !s.upnpd().maps_udp_port(m.external.port()).unwrap(),
        "DNAT rule left after deleting {m:?}:\n{}",
        s.upnpd().dnat_rules().unwrap_or_default()
    );
    assert!(
        !delivered(&s, &receiver, m.external),
        "a datagram to {} still arrived after the deletion",
        m.external
    );
}

#[test]
fn pcp_mapping_carries_traffic_until_deleted() {
    map_deliver_delete(Protocol::Pcp, 41001);
}

#[test]
fn natpmp_mapping_carries_traffic_until_deleted() {
    map_deliver_delete(Protocol::Pmp, 41002);
}

#[test]
fn upnp_mapping_carries_traffic_until_deleted() {
    map_deliver_delete(Protocol::Upnp, 41003);
}

#[test]
fn upnp_lease_is_recorded_and_removed() {
    let s = setup(true);
    let port = 41004;
    let m = in_ns(&s.node.ns, move || async move {
        portmap::upnp::map_udp(GATEWAY, port, Duration::from_secs(5)).await
    })
    .expect("UPnP mapping");
    let leases = s.upnpd().leases();
    assert!(
        leases.contains(&format!("UDP:{}:192.168.5.2:{port}", m.external.port()))
            && leases.contains("tailgate"),
        "lease file: {leases:?}"
    );
    in_ns(&s.node.ns, move || async move {
        portmap::upnp::unmap(&m, Duration::from_secs(5)).await
    })
    .expect("UPnP deletion");
    let leases = s.upnpd().leases();
    assert!(!leases.contains("tailgate"), "lease file: {leases:?}");
}

#[test]
fn port_mapper_prefers_pcp_keeps_the_mapping_and_deletes_it_on_stop() {
    let s = setup(true);
    let port = 41005;
    let receiver = udp_in(&s.node.ns, port);
    // The mapper runs on a runtime in the node's namespace, with the default gateway read
    // from the routing table there.
    let (tx, rx) = std::sync::mpsc::channel::<Mapping>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = s
        .node
        .ns
        .spawn_inside(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mapper = PortMapper::start(port, None);
                let deadline = Instant::now() + Duration::from_secs(10);
                let m = loop {
                    if let Some(m) = mapper.current() {
                        break m;
                    }
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "no mapping within 10 s: {:?}",
                        mapper.last_error()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                tx.send(m)?;
                // Wait (bounded) for the test to have checked the traffic, then stop.
                let _ = tokio::task::spawn_blocking(move || {
                    done_rx.recv_timeout(Duration::from_secs(20))
                })
                .await;
                tokio::time::timeout(Duration::from_secs(10), mapper.shutdown()).await?;
                anyhow::ensure!(mapper.current().is_none(), "a mapping after shutdown");
                Ok(())
            })
        })
        .unwrap();
    let m = rx.recv_timeout(Duration::from_secs(15));
    let delivered_ok = m
        .as_ref()
        .ok()
        .map(|m| delivered(&s, &receiver, m.external));
    let _ = done_tx.send(());
    let result = worker.join().expect("mapper thread panicked");
    let m = m.unwrap_or_else(|_| panic!("no mapping: {result:?}\n{}", s.upnpd().log()));
    result.expect("mapper");
    assert_eq!(m.protocol, Protocol::Pcp, "PCP is tried first: {m:?}");
    assert_eq!(delivered_ok, Some(true), "traffic through {m:?}");
    assert!(
        !s.upnpd().maps_udp_port(m.external.port()).unwrap(),
        "DNAT rule left after stop:\n{}",
        s.upnpd().dnat_rules().unwrap_or_default()
    );
    assert!(!delivered(&s, &receiver, m.external));
}

#[test]
fn probe_sees_all_three_behind_miniupnpd() {
    let s = setup(true);
    let started = Instant::now();
    let p = in_ns(&s.node.ns, || portmap::probe(None, Duration::from_secs(3)));
    assert_eq!(
        p,
        Probe {
            upnp: true,
            pmp: true,
            pcp: true
        },
        "{}",
        s.upnpd().log()
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn probe_sees_nothing_behind_a_plain_nat_within_its_timeout() {
    let s = setup(false);
    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let p = in_ns(&s.node.ns, move || portmap::probe(Some(GATEWAY), timeout));
    let took = started.elapsed();
    assert_eq!(p, Probe::default());
    assert!(took >= timeout, "gave up early, after {took:?}");
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
    // And mapping fails cleanly with each protocol.
    for protocol in [Protocol::Pcp, Protocol::Pmp, Protocol::Upnp] {
        let r = in_ns(&s.node.ns, move || async move {
            portmap::map_udp(protocol, GATEWAY, 41006, Duration::from_millis(800)).await
        });
        assert!(r.is_err(), "{protocol}: {r:?}");
    }
}
