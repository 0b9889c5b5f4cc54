//! Relay and direct paths between control-mode nodes, in network namespaces (also behind NAT
//! boxes made with nftables masquerade): `tailgate derp
//! serve` and `tailgate control serve --derp-map` in lab hosts, two nodes (with their XDP
//! `wan_ingress`, which must let discovery messages through). The nodes start over the relay
//! while UDP between them is blocked, go direct when it is allowed, keep talking when the relay
//! dies, and are back on the relay within 2 s when the direct path is blocked mid-ping. Needs
//! root; every namespace, link, firewall table and process is removed on drop.

use std::path::Path;
use std::time::Duration;

use tailgate_bench::lab::control::{longest_gap, ping_around, ControlServer, CtlNode, TempDir};
use tailgate_bench::lab::nat::{block_wireguard, put_behind_nat, NatBox, NatKind};
use tailgate_bench::lab::relay::{RelayServer, LAB_REGION};
use tailgate_bench::lab::upnp::{route_to_public, Miniupnpd};
use tailgate_bench::lab::{self, wait_for, Lab};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");

fn bin() -> &'static Path {
    Path::new(TAILGATE)
}

/// The path `node` shows for the peer named `name`.
fn path_to(node: &CtlNode, name: &str) -> String {
    let st = node.status_json().unwrap_or_default();
    st["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["name"] == name))
        .and_then(|p| p["path"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The path `node` shows for its only peer (`direct IP:PORT`, `relay N`, `none`).
fn path_of(node: &CtlNode) -> String {
    node.status_json()
        .ok()
        .and_then(|s| s["peers"][0]["path"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn wait_path(node: &CtlNode, want: &str, within: Duration) {
    wait_for(&format!("path {want}"), within, || {
        Ok(path_of(node).starts_with(want).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}; path is {:?}", path_of(node)));
}

#[test]
fn peers_start_on_the_relay_go_direct_and_fall_back_within_two_seconds() {
    assert!(lab::is_root(), "network-namespace tests need root");
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgrelay").unwrap();
    let mut relay = RelayServer::start(&lab, bin(), 101).expect("relay");
    let map = relay.write_derp_map().unwrap();
    let server =
        ControlServer::start_with(&lab, bin(), &dir, &["--derp-map", map.to_str().unwrap()])
            .expect("control server");
    // wan_ingress on the underlay (native XDP; `auto` leaves veths alone).
    let xdp = ["--xdp", "native"];
    let mut a = CtlNode::start_with(&lab, bin(), 1, "", &xdp).expect("node a");
    let mut b = CtlNode::start_with(&lab, bin(), 2, "", &xdp).expect("node b");
    let b_addrs = (b.host.underlay_v4(), b.host.underlay_v6());
    let b_underlay = b_addrs.0.to_string();

    // No direct UDP between the two: only the relay connects them.
    let blocked = block_wireguard(&a.host.ns, b_addrs).expect("block");
    let key = server.authkey(&["--reusable"]).unwrap();
    a.up(&server, &key, &["--hostname", "alpha"]).expect("up a");
    b.up(&server, &key, &["--hostname", "bravo"]).expect("up b");
    a.wait_peers(1).unwrap();
    b.wait_peers(1).unwrap();
    let b_ip = b.tailnet_v4().unwrap();
    wait_path(&a, &format!("relay {LAB_REGION}"), Duration::from_secs(10));
    a.wait_ping(&b_ip).expect("ping over the relay");
    let st = a.status_json().unwrap();
    assert_eq!(st["relays"][0]["region"], LAB_REGION, "{st}");
    assert_eq!(st["relays"][0]["connected"], true, "{st}");
    assert_eq!(path_of(&a), format!("relay {LAB_REGION}"), "{st}");

    // `tailgate ping` shows the relay; --until-direct (the default) fails while UDP is
    // blocked.
    let out = a
        .cli(&["ping", "--until-direct=false", "-c", "2", "bravo"])
        .expect("ping over the relay");
    assert_eq!(
        out.matches(&format!("via relay {LAB_REGION} in")).count(),
        2,
        "{out}"
    );
    let e = a.cli(&["ping", "-c", "3", "bravo"]).unwrap_err();
    assert!(e.contains("direct connection not established"), "{e}");

    // UDP allowed: `tailgate ping` ends with a direct pong, and both move to the direct path
    // (the XDP program passes the discovery messages: they are counted).
    drop(blocked);
    let out = a
        .cli(&["ping", "-c", "20", "bravo"])
        .expect("ping until direct");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pong from bravo") && last.contains(":51820 in "),
        "{out}"
    );
    wait_path(&a, "direct ", Duration::from_secs(10));
    wait_path(&b, "direct ", Duration::from_secs(10));
    let direct = path_of(&a);
    assert!(
        direct == format!("direct {b_underlay}:51820")
            || direct == format!("direct [{}]:51820", b_addrs.1),
        "the direct path is one of b's underlay addresses: {direct}"
    );
    let st = a.status_json().unwrap();
    let disco = st["xdp"]["counters"]["pass_disco"].as_u64().unwrap_or(0);
    assert!(disco > 0, "wan_ingress passed discovery messages: {st}");

    // The relay dies while they talk directly: not one ping is lost.
    let run = ping_around(&a.host.ns, &b_ip, 5, || relay.kill()).expect("ping");
    assert_eq!(run.lost(), 0, "pings lost when the relay died: {run:?}");
    assert!(run.replies_after() > 100, "{run:?}");
    relay.restart().expect("relay restart");
    wait_for("the relay connection", Duration::from_secs(15), || {
        let st = a.status_json()?;
        Ok((st["relays"][0]["connected"] == true).then_some(()))
    })
    .expect("a reconnects to the relay");
    wait_for("b's relay connection", Duration::from_secs(15), || {
        let st = b.status_json()?;
        Ok((st["relays"][0]["connected"] == true).then_some(()))
    })
    .expect("b reconnects to the relay");

    // The direct path is blocked mid-ping: traffic continues over the relay within 2 s.
    let mut guard = None;
    let run = ping_around(&a.host.ns, &b_ip, 8, || {
        guard = Some(block_wireguard(&a.host.ns, b_addrs).expect("block"));
        Ok(())
    })
    .expect("ping");
    let gap = longest_gap(&run.times);
    assert!(
        gap < 2.0,
        "longest gap between replies {gap:.2} s when the direct path was blocked: {run:?}"
    );
    assert!(run.replies_after() > 200, "{run:?}");
    assert_eq!(path_of(&a), format!("relay {LAB_REGION}"));
    drop(guard);
}

/// Two nodes, each behind its own NAT box of the given kinds, with a relay and a control
/// server on the underlay ("the internet").
struct NatLab {
    a: CtlNode,
    b: CtlNode,
    /// miniupnpd on b's NAT box (stops before the box goes).
    upnpd: Option<Miniupnpd>,
    _nats: (NatBox, NatBox),
    server: ControlServer,
    relay: RelayServer,
    _dir: TempDir,
    lab: Lab,
}

fn nat_lab(kind_a: NatKind, kind_b: NatKind) -> NatLab {
    nat_lab_with(kind_a, kind_b, false)
}

/// [`nat_lab`], with miniupnpd on b's NAT box when `upnp_at_b` (b's NAT then also has a
/// public address, reachable from a's NAT box; miniupnpd refuses to map to the lab's private
/// underlay addresses).
fn nat_lab_with(kind_a: NatKind, kind_b: NatKind, upnp_at_b: bool) -> NatLab {
    assert!(lab::is_root(), "network-namespace tests need root");
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgnat").unwrap();
    let relay = RelayServer::start(&lab, bin(), 101).expect("relay");
    let map = relay.write_derp_map().unwrap();
    let server =
        ControlServer::start_with(&lab, bin(), &dir, &["--derp-map", map.to_str().unwrap()])
            .expect("control server");
    let a = CtlNode::start(&lab, bin(), 1, "").expect("node a");
    let b = CtlNode::start(&lab, bin(), 2, "").expect("node b");
    let nat_a = put_behind_nat(&lab, &a.host.ns, 11, kind_a).expect("NAT a");
    let nat_b = put_behind_nat(&lab, &b.host.ns, 12, kind_b).expect("NAT b");
    let upnpd = upnp_at_b.then(|| {
        route_to_public(&nat_a.host).expect("route to the public addresses");
        Miniupnpd::start(&nat_b).expect("miniupnpd")
    });
    let key = server.authkey(&["--reusable"]).unwrap();
    a.up(&server, &key, &["--hostname", "alpha"]).expect("up a");
    b.up(&server, &key, &["--hostname", "bravo"]).expect("up b");
    NatLab {
        a,
        b,
        upnpd,
        _nats: (nat_a, nat_b),
        server,
        relay,
        _dir: dir,
        lab,
    }
}

#[test]
fn nodes_behind_endpoint_independent_nats_find_a_direct_path_with_stun() {
    let mut l = nat_lab(NatKind::EndpointIndependent, NatKind::EndpointIndependent);
    l.a.wait_peers(1).unwrap();
    l.b.wait_peers(1).unwrap();
    let b_ip = l.b.tailnet_v4().unwrap();
    l.a.wait_ping(&b_ip).expect("ping through the tunnel");
    // Each learns its public address from the relay's STUN server and reports it; the
    // peers punch through both NATs and go direct to b's NAT (lab host 12).
    let out =
        l.a.cli(&["ping", "-c", "40", "bravo"])
            .expect("ping until direct");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("via 10.99.0.12:"), "{out}");
    wait_path(&l.a, "direct 10.99.0.12:", Duration::from_secs(10));
    wait_path(&l.b, "direct 10.99.0.11:", Duration::from_secs(10));
    l.a.wait_ping(&b_ip).expect("ping over the direct path");
    let _ = &l.lab;
}

#[test]
fn a_node_behind_a_symmetric_nat_stays_on_the_relay() {
    let mut l = nat_lab(NatKind::Symmetric, NatKind::EndpointIndependent);
    l.a.wait_peers(1).unwrap();
    l.b.wait_peers(1).unwrap();
    let b_ip = l.b.tailnet_v4().unwrap();
    l.a.wait_ping(&b_ip).expect("ping through the relay");
    let e = l.a.cli(&["ping", "-c", "8", "bravo"]).unwrap_err();
    assert!(e.contains("direct connection not established"), "{e}");
    assert_eq!(path_of(&l.a), format!("relay {LAB_REGION}"));
    l.a.wait_ping(&b_ip)
        .expect("still pinging through the relay");
}

#[test]
fn a_node_behind_a_symmetric_nat_goes_through_a_peer_relay_when_one_is_advertised() {
    let mut l = nat_lab(NatKind::Symmetric, NatKind::EndpointIndependent);
    // A third node on the underlay ("a cloud VM") relays for the others.
    let r = CtlNode::start(&l.lab, bin(), 3, "").expect("node r");
    let key = l.server.authkey(&["--reusable"]).unwrap();
    r.up(&l.server, &key, &["--hostname", "relayer"])
        .expect("up r");
    let set = r.cli(&["set", "--advertise-peer-relay"]).expect("set");
    assert!(set.contains("peer relay: UDP port 41642"), "{set}");
    l.a.wait_peers(2).unwrap();
    l.b.wait_peers(2).unwrap();
    let b_ip = l.b.tailnet_v4().unwrap();
    l.a.wait_ping(&b_ip).expect("ping (relay server first)");
    // Direct fails (symmetric NAT); after a few seconds both use a session at r.
    let r_underlay = r.host.underlay_v4().to_string();
    let want = format!("peer-relay {r_underlay}:");
    wait_for(
        "a's path to bravo through the peer relay",
        Duration::from_secs(20),
        || Ok(path_to(&l.a, "bravo").starts_with(&want).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}; path is {:?}", path_to(&l.a, "bravo")));
    wait_for(
        "b's path to alpha through the peer relay",
        Duration::from_secs(20),
        || Ok(path_to(&l.b, "alpha").starts_with(&want).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}; path is {:?}", path_to(&l.b, "alpha")));
    let out =
        l.a.cli(&["ping", "--until-direct=false", "-c", "3", "bravo"])
            .expect("tailgate ping");
    assert_eq!(out.matches(&format!("via {want}")).count(), 3, "{out}");
    // The relay server dies: nothing is lost, the traffic does not need it.
    let run = ping_around(&l.a.host.ns, &b_ip, 4, || l.relay.kill()).expect("ping");
    assert_eq!(
        run.lost(),
        0,
        "pings lost when the relay server died: {run:?}"
    );
    assert!(run.replies_after() > 100, "{run:?}");
    let st = r.status_json().unwrap();
    let forwarded = st["peer_relay"]["forwarded_packets"].as_u64().unwrap_or(0);
    assert!(forwarded > 200, "the peer relay forwarded the pings: {st}");
    assert!(path_to(&l.a, "bravo").starts_with(&want));
    // Turned off, it leaves the netmap and the peers go back to the relay server.
    l.relay.restart().expect("relay restart");
    r.cli(&["set", "--advertise-peer-relay=false"])
        .expect("set off");
    wait_for(
        "a back on the relay server",
        Duration::from_secs(20),
        || Ok((path_to(&l.a, "bravo") == format!("relay {LAB_REGION}")).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}; path is {:?}", path_to(&l.a, "bravo")));
    l.a.wait_ping(&b_ip)
        .expect("ping through the relay server again");
}

#[test]
fn a_node_behind_a_nat_with_port_mapping_is_reached_directly_even_from_a_symmetric_nat() {
    let mut l = nat_lab_with(NatKind::Symmetric, NatKind::Upnp, true);
    let public = l.upnpd.as_ref().unwrap().public_ip();
    l.a.wait_peers(1).unwrap();
    l.b.wait_peers(1).unwrap();
    let b_ip = l.b.tailnet_v4().unwrap();
    l.a.wait_ping(&b_ip).expect("ping (relay first)");
    // b maps its WireGuard port at its gateway and offers the mapping.
    let mapped = format!("{public}:51820");
    wait_for(
        "b's mapping among its endpoints",
        Duration::from_secs(20),
        || {
            let v: serde_json::Value =
                serde_json::from_str(&l.server.admin(&["nodes", "list", "--json"])?)?;
            let bravo = v
                .as_array()
                .and_then(|n| n.iter().find(|n| n["name"] == "bravo").cloned())
                .unwrap_or_default();
            let offered = bravo["endpoints"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e == mapped.as_str()));
            Ok(offered.then_some(()))
        },
    )
    .expect("the mapping among b's endpoints");
    let rules = l.upnpd.as_ref().unwrap().dnat_rules().unwrap();
    assert!(
        rules.contains("51820"),
        "a DNAT rule to b's WireGuard port: {rules}"
    );
    // a reaches b's NAT from behind its symmetric NAT (the mapping takes packets to b's
    // port at either of the NAT's addresses); b answers a at the address a's pings come from.
    wait_for("a direct to b", Duration::from_secs(30), || {
        let p = path_to(&l.a, "bravo");
        Ok((p == format!("direct {mapped}") || p == "direct 10.99.0.12:51820").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}; path is {:?}", path_to(&l.a, "bravo")));
    wait_for("b direct to a", Duration::from_secs(20), || {
        Ok(path_to(&l.b, "alpha")
            .starts_with("direct 10.99.0.11:")
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}; path is {:?}", path_to(&l.b, "alpha")));
    l.a.wait_ping(&b_ip).expect("ping over the direct path");
    // netcheck on b sees the three protocols at its gateway; on a (plain NAT) none.
    let text = l.b.cli(&["netcheck"]).expect("netcheck on b");
    assert!(
        text.contains("\t* PortMapping: UPnP, NAT-PMP, PCP\n"),
        "{text}"
    );
    let text = l.a.cli(&["netcheck"]).expect("netcheck on a");
    assert!(text.contains("\t* PortMapping: none\n"), "{text}");
}

/// The value of a Prometheus sample line starting with `name` (labels included).
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[test]
fn junk_at_the_relay_and_stun_ports_is_counted_and_the_relay_keeps_relaying() {
    let mut l = nat_lab(NatKind::Symmetric, NatKind::EndpointIndependent);
    l.a.wait_peers(1).unwrap();
    let b_ip = l.b.tailnet_v4().unwrap();
    l.a.wait_ping(&b_ip).expect("ping through the relay");
    let relay = l.relay.host().underlay_v4();
    // From b's namespace (behind its NAT): garbage instead of TLS, a TLS-looking record
    // that is not one, a bare HTTP request, and junk datagrams at the STUN port.
    l.b.host
        .ns
        .spawn_inside(move || -> anyhow::Result<()> {
            use std::io::{Read, Write};
            let to = |p| std::net::SocketAddr::from((relay, p));
            let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
            for first in [&junk[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3][..]] {
                let mut s = std::net::TcpStream::connect_timeout(
                    &to(tailgate_bench::lab::relay::LAB_RELAY_PORT),
                    Duration::from_secs(2),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                let _ = s.write_all(first);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = s.read(&mut [0u8; 64]);
            }
            let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for i in 0..100usize {
                u.send_to(
                    &junk[..(i * 37) % 600],
                    to(tailgate_bench::lab::relay::LAB_STUN_PORT),
                )?;
            }
            // A binding request with a wrong length field and one that is only a header.
            let mut bad = vec![0x00, 0x01, 0x00, 0x40, 0x21, 0x12, 0xa4, 0x42];
            bad.extend_from_slice(&[7; 12]);
            u.send_to(&bad, to(tailgate_bench::lab::relay::LAB_STUN_PORT))?;
            Ok(())
        })
        .unwrap()
        .join()
        .unwrap()
        .expect("sending junk");
    let m = wait_for("the relay counts the junk", Duration::from_secs(10), || {
        let m = l.relay.metrics()?;
        let stun_dropped: u64 = m
            .lines()
            .filter(|s| s.starts_with("tailgate_stun_packets_total{outcome=\"dropped"))
            .filter_map(|s| s.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum();
        let ok = sample(&m, "tailgate_derp_handshake_failures_total") >= 2 && stun_dropped >= 101;
        Ok(ok.then_some(m))
    })
    .expect("junk counted");
    // Still relaying, still answering STUN (netcheck from a sees its public address).
    l.a.wait_ping(&b_ip)
        .expect("ping through the relay after the junk");
    assert_eq!(path_of(&l.a), format!("relay {LAB_REGION}"), "{m}");
    let report: serde_json::Value =
        serde_json::from_str(&l.a.cli(&["netcheck", "--json"]).expect("netcheck")).unwrap();
    assert_eq!(report["udp_v4"], true, "{report}");
    let _ = &l.lab;
}
