//! Relay and direct paths between control-mode nodes, in network namespaces (also behind NAT
//! boxes made with nftables masquerade): `tailgate derp
//! serve` and `tailgate control serve --derp-map` in lab hosts, two nodes (with their XDP
//! `wan_ingress`, which must let discovery messages through). The nodes start over the relay
//! while UDP between them is blocked, go direct when it is allowed, keep talking when the relay
//! dies, and are back on the relay within 2 s when the direct path is blocked mid-ping. Needs
//! root; every namespace, link, firewall table and process is removed on drop.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use tailgate_bench::lab::control::{longest_gap, ping_around, ControlServer, CtlNode, TempDir};
use tailgate_bench::lab::nat::{put_behind_nat, NatBox, NatKind};
use tailgate_bench::lab::relay::{RelayServer, LAB_REGION};
use tailgate_bench::lab::{self, wait_for, Lab, Netns};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");

fn bin() -> &'static Path {
    Path::new(TAILGATE)
}

/// Drops UDP to and from a peer's WireGuard port in a namespace (by name) while it lives.
struct Blocked {
    ns: String,
}

const BLOCK_TABLE: &str = "tgtest_block";

fn block(ns: &Netns, (v4, v6): (Ipv4Addr, Ipv6Addr)) -> Blocked {
    let rules = format!(
        "table inet {BLOCK_TABLE} {{\n\
           chain in {{ type filter hook input priority 0;\n\
             ip saddr {v4} udp sport 51820 drop; ip6 saddr {v6} udp sport 51820 drop; }}\n\
           chain out {{ type filter hook output priority 0;\n\
             ip daddr {v4} udp dport 51820 drop; ip6 daddr {v6} udp dport 51820 drop; }}\n\
         }}\n"
    );
    let file = std::env::temp_dir().join(format!("{}.nft", lab::unique_name("tgblock")));
    std::fs::write(&file, rules).unwrap();
    let r = ns.exec("nft", &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    r.expect("nft block rules");
    Blocked {
        ns: ns.name().to_string(),
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "delete", "table", "inet"])
            .arg(BLOCK_TABLE)
            .status();
    }
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
    let blocked = block(&a.host.ns, b_addrs);
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
        guard = Some(block(&a.host.ns, b_addrs));
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
    _nats: (NatBox, NatBox),
    _server: ControlServer,
    _relay: RelayServer,
    _dir: TempDir,
    lab: Lab,
}

fn nat_lab(kind_a: NatKind, kind_b: NatKind) -> NatLab {
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
    let key = server.authkey(&["--reusable"]).unwrap();
    a.up(&server, &key, &["--hostname", "alpha"]).expect("up a");
    b.up(&server, &key, &["--hostname", "bravo"]).expect("up b");
    NatLab {
        a,
        b,
        _nats: (nat_a, nat_b),
        _server: server,
        _relay: relay,
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
