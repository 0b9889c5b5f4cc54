//! `tailgate netcheck` and the home relay region, in network namespaces: relays (`tailgate
//! derp serve`, each with its STUN server) and a control server on the underlay, control-mode
//! nodes on it or behind NAT boxes. Checks what netcheck reports (UDP, the public address,
//! whether the NAT mapping varies by destination, latencies and the nearest region), and that
//! a node whose home relay dies moves its home to the other region within a few seconds while
//! its traffic keeps flowing. Needs root; every namespace, firewall table and process is
//! removed on drop.

use std::path::Path;
use std::time::{Duration, Instant};

use tailgate_bench::lab::control::{ControlServer, CtlNode, TempDir};
use tailgate_bench::lab::nat::{block_wireguard, put_behind_nat, NatKind};
use tailgate_bench::lab::relay::{region_map, RelayServer, LAB_REGION};
use tailgate_bench::lab::{self, wait_for, Lab};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");
/// The second region of the two-region labs.
const OTHER_REGION: u32 = 901;

fn bin() -> &'static Path {
    Path::new(TAILGATE)
}

/// `tailgate netcheck --json` once it succeeds (the node needs its netmap first), parsed.
fn netcheck(node: &CtlNode) -> serde_json::Value {
    let mut last = String::new();
    wait_for("tailgate netcheck", Duration::from_secs(20), || match node
        .cli(&["netcheck", "--json"])
    {
        Ok(out) => Ok(Some(serde_json::from_str(&out)?)),
        Err(e) => {
            last = e;
            Ok(None)
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}: {last}"))
}

/// The measured latency of `region` in a netcheck report.
fn latency_of(report: &serde_json::Value, region: u32) -> Option<f64> {
    report["regions"]
        .as_array()?
        .iter()
        .find(|r| r["region_id"] == region)?["latency_ms"]
        .as_f64()
}

/// The node's home relay region and whether its connection is up, from `tailgate status`.
fn home_of(node: &CtlNode) -> Option<(u64, bool)> {
    let st = node.status_json().ok()?;
    st["relays"]
        .as_array()?
        .iter()
        .find(|r| r["home"] == true)
        .and_then(|r| Some((r["region"].as_u64()?, r["connected"] == true)))
}

/// The path `node` shows for its only peer (`direct IP:PORT`, `relay N`, `none`).
fn path_of(node: &CtlNode) -> String {
    node.status_json()
        .ok()
        .and_then(|s| s["peers"][0]["path"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One relay (host 101, region [`LAB_REGION`]), a control server handing out its map, and
/// node 1 (not logged in). Field order: the node stops first, the lab goes last.
struct OneRelay {
    a: CtlNode,
    server: ControlServer,
    _relay: RelayServer,
    _dir: TempDir,
    _lab: Lab,
}

fn one_relay(dual_stack: bool) -> OneRelay {
    assert!(lab::is_root(), "network-namespace tests need root");
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgnc1").unwrap();
    let relay = if dual_stack {
        RelayServer::start_dual_stack(&lab, bin(), 101)
    } else {
        RelayServer::start(&lab, bin(), 101)
    }
    .expect("relay");
    let map = relay.write_derp_map().unwrap();
    let server =
        ControlServer::start_with(&lab, bin(), &dir, &["--derp-map", map.to_str().unwrap()])
            .expect("control server");
    let a = CtlNode::start(&lab, bin(), 1, "").expect("node");
    OneRelay {
        a,
        server,
        _relay: relay,
        _dir: dir,
        _lab: lab,
    }
}

#[test]
fn netcheck_reports_udp_the_underlay_address_and_the_nearest_region() {
    let OneRelay { a, server, .. } = &one_relay(false);

    // Not logged in: no relay map to check.
    let e = a.cli(&["netcheck"]).unwrap_err();
    assert!(e.contains("no relay map"), "{e}");

    let key = server.authkey(&[]).unwrap();
    a.up(server, &key, &["--hostname", "alpha"]).expect("up");
    let r = netcheck(a);
    assert_eq!(r["udp_v4"], true, "{r}");
    let global: std::net::SocketAddr = r["global_v4"].as_str().unwrap().parse().unwrap();
    assert_eq!(global.ip(), a.host.underlay_v4(), "{r}");
    assert_ne!(global.port(), 0, "{r}");
    assert!(
        latency_of(&r, LAB_REGION).is_some_and(|ms| ms > 0.0 && ms < 1000.0),
        "{r}"
    );
    assert_eq!(r["preferred_region"], LAB_REGION, "{r}");
    // One STUN server: whether the mapping varies cannot be told.
    assert!(r["mapping_varies_by_dest_ip"].is_null(), "{r}");
    // No gateway on the underlay: no port-mapping protocol answers.
    assert_eq!(
        r["portmap"],
        serde_json::json!({"upnp": false, "pmp": false, "pcp": false}),
        "{r}"
    );

    let text = a.cli(&["netcheck"]).expect("netcheck");
    assert!(text.starts_with("Report:\n\t* UDP: true\n"), "{text}");
    assert!(
        text.contains(&format!("\t* IPv4: yes, {}:", a.host.underlay_v4())),
        "{text}"
    );
    assert!(
        text.contains(&format!("\t* Nearest relay: Lab relay ({LAB_REGION})\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("\t\t- {LAB_REGION} lab: ")),
        "{text}"
    );
    // The daemon measured too: its home is the region, connected.
    wait_for("the home relay connection", Duration::from_secs(10), || {
        Ok((home_of(a) == Some((u64::from(LAB_REGION), true))).then_some(()))
    })
    .expect("home region");
}

#[test]
fn netcheck_reports_ipv6_when_the_relay_has_an_ipv6_address() {
    let OneRelay { a, server, .. } = &one_relay(true);
    let key = server.authkey(&[]).unwrap();
    a.up(server, &key, &["--hostname", "alpha"]).expect("up");

    // The STUN server answers over both families; each answer carries the underlay address
    // of its own family.
    let r = netcheck(a);
    assert_eq!(
        (r["udp_v4"].clone(), r["udp_v6"].clone()),
        (true.into(), true.into()),
        "{r}"
    );
    let global: std::net::SocketAddr = r["global_v6"].as_str().unwrap().parse().unwrap();
    assert_eq!(global.ip(), a.host.underlay_v6(), "{r}");
    assert_ne!(global.port(), 0, "{r}");
    let global: std::net::SocketAddr = r["global_v4"].as_str().unwrap().parse().unwrap();
    assert_eq!(global.ip(), a.host.underlay_v4(), "{r}");

    let text = a.cli(&["netcheck"]).expect("netcheck");
    assert!(
        text.contains(&format!("\t* IPv6: yes, [{}]:", a.host.underlay_v6())),
        "{text}"
    );

    // With IPv6 cut at the node, netcheck says so and still reports IPv4.
    a.host
        .ns
        .ip(&["-6", "addr", "flush", "dev", "eth0"])
        .expect("flush IPv6");
    let r = netcheck(a);
    assert_eq!(
        (r["udp_v4"].clone(), r["udp_v6"].clone()),
        (true.into(), false.into()),
        "{r}"
    );
    assert!(r["global_v6"].is_null(), "{r}");
    let text = a.cli(&["netcheck"]).expect("netcheck");
    assert!(
        text.contains("\t* IPv6: no, but OS has support\n"),
        "{text}"
    );
}

/// A relay per region (hosts 101 and 102) and a control server whose relay map has both.
struct TwoRegions {
    server: ControlServer,
    relays: [RelayServer; 2],
    _dir: TempDir,
    lab: Lab,
}

fn two_regions() -> TwoRegions {
    assert!(lab::is_root(), "network-namespace tests need root");
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgnc2").unwrap();
    let r1 = RelayServer::start_region(&lab, bin(), 101, LAB_REGION).expect("relay 900");
    let r2 = RelayServer::start_region(&lab, bin(), 102, OTHER_REGION).expect("relay 901");
    let map = dir.0.join("derp-map.json");
    std::fs::write(&map, region_map(&[&r1, &r2])).unwrap();
    let server =
        ControlServer::start_with(&lab, bin(), &dir, &["--derp-map", map.to_str().unwrap()])
            .expect("control server");
    TwoRegions {
        server,
        relays: [r1, r2],
        _dir: dir,
        lab,
    }
}

#[test]
fn mapping_varies_behind_a_symmetric_nat_and_not_behind_an_endpoint_independent_one() {
    let l = two_regions();
    let a = CtlNode::start(&l.lab, bin(), 1, "").expect("node a");
    let b = CtlNode::start(&l.lab, bin(), 2, "").expect("node b");
    let _nat_a = put_behind_nat(&l.lab, &a.host.ns, 11, NatKind::Symmetric).expect("NAT a");
    let _nat_b =
        put_behind_nat(&l.lab, &b.host.ns, 12, NatKind::EndpointIndependent).expect("NAT b");
    let key = l.server.authkey(&["--reusable"]).unwrap();
    a.up(&l.server, &key, &["--hostname", "alpha"])
        .expect("up a");
    b.up(&l.server, &key, &["--hostname", "bravo"])
        .expect("up b");

    let ra = netcheck(&a);
    let rb = netcheck(&b);
    for (r, nat) in [(&ra, "10.99.0.11"), (&rb, "10.99.0.12")] {
        assert_eq!(r["udp_v4"], true, "{r}");
        let global: std::net::SocketAddr = r["global_v4"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            global.ip().to_string(),
            nat,
            "the NAT's outside address: {r}"
        );
        assert!(latency_of(r, LAB_REGION).is_some(), "{r}");
        assert!(latency_of(r, OTHER_REGION).is_some(), "{r}");
    }
    assert_eq!(ra["mapping_varies_by_dest_ip"], true, "symmetric NAT: {ra}");
    assert_eq!(
        rb["mapping_varies_by_dest_ip"], false,
        "endpoint-independent NAT: {rb}"
    );
    let text = a.cli(&["netcheck"]).expect("netcheck");
    assert!(text.contains("\t* MappingVariesByDestIP: true\n"), "{text}");
    let _ = &l.relays;
}

#[test]
fn the_home_region_moves_to_the_other_region_when_its_relay_dies() {
    let mut l = two_regions();
    let mut a = CtlNode::start(&l.lab, bin(), 1, "").expect("node a");
    let mut b = CtlNode::start(&l.lab, bin(), 2, "").expect("node b");
    // No direct UDP between the two: only the relays connect them.
    let _blocked =
        block_wireguard(&a.host.ns, (b.host.underlay_v4(), b.host.underlay_v6())).expect("block");
    let key = l.server.authkey(&["--reusable"]).unwrap();
    a.up(&l.server, &key, &["--hostname", "alpha"])
        .expect("up a");
    b.up(&l.server, &key, &["--hostname", "bravo"])
        .expect("up b");
    a.wait_peers(1).unwrap();
    b.wait_peers(1).unwrap();
    let b_ip = b.tailnet_v4().unwrap();
    a.wait_ping(&b_ip).expect("ping over the relays");

    // Both regions measured, a's home connected.
    let (home, _) = wait_for("a's home relay connection", Duration::from_secs(20), || {
        let r = a.cli(&["netcheck", "--json"]).map_err(anyhow::Error::msg)?;
        let r: serde_json::Value = serde_json::from_str(&r)?;
        let both = latency_of(&r, LAB_REGION).is_some() && latency_of(&r, OTHER_REGION).is_some();
        Ok(home_of(&a).filter(|(_, up)| *up && both))
    })
    .expect("home");
    let (dead, other) = if home == u64::from(LAB_REGION) {
        (0, u64::from(OTHER_REGION))
    } else {
        (1, u64::from(LAB_REGION))
    };

    l.relays[dead].kill().expect("kill the home relay");
    let killed = Instant::now();
    wait_for("a's home to move", Duration::from_secs(8), || {
        Ok((home_of(&a) == Some((other, true))).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}; home is {:?}", home_of(&a)));
    let took = killed.elapsed();
    eprintln!("home moved from region {home} to {other} {took:?} after its relay died");
    assert!(
        took < Duration::from_secs(6),
        "the home moved {took:?} after its relay died"
    );
    // The new home reached the control server: b reaches a through it.
    wait_for(
        "b's path to a through the new home",
        Duration::from_secs(10),
        || Ok((path_of(&b) == format!("relay {other}")).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}; b's path is {:?}", path_of(&b)));
    // Traffic keeps flowing, through the remaining region only.
    let a_ip = a.tailnet_v4().unwrap();
    a.wait_ping(&b_ip).expect("a pings b after the failover");
    b.wait_ping(&a_ip).expect("b pings a after the failover");
    let out = a
        .host
        .ns
        .exec("ping", &["-c", "5", "-i", "0.2", "-W", "1", &b_ip])
        .expect("5 pings in a row");
    assert!(out.contains(" 0% packet loss"), "{out}");
    assert_eq!(home_of(&a), Some((other, true)));
    let st = a.status_json().unwrap();
    assert!(
        path_of(&a).starts_with("relay "),
        "direct UDP is blocked: {st}"
    );
    a.process.check_running().unwrap();
    b.process.check_running().unwrap();
}
