//! tailgate against real WireGuard peers (tailgate, wireguard-go, boringtun-cli) in network
//! namespaces: handshakes from either side, pings over IPv4 and IPv6 both ways, a 100 MB TCP
//! transfer with a checksum, `wg show` / `wg set`, junk and replays at the port, and clean
//! teardown. Needs root; every namespace, link, process and XDP program is removed on drop.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};
use tailgate_bench::lab::capture::capture_udp;
use tailgate_bench::lab::node::{peer_spec, LISTEN_PORT};
use tailgate_bench::lab::{self, wait_for, Keypair, Kind, Lab};
use tailgate_bench::transfer::tcp_transfer;

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");
/// Size of the bulk transfer each interop test makes.
const TRANSFER_BYTES: u64 = 100 * 1024 * 1024;

fn require_root() {
    assert!(
        lab::is_root(),
        "network-namespace tests need root (run `cargo xtask test` as root)"
    );
}

/// Starts a two-node lab: node 1 is tailgate, node 2 is `peer`. Only the initiator knows
/// the other's endpoint, so the handshake must start on that side.
fn pair((peer, tailgate_args): (Kind, Vec<String>), tailgate_initiates: bool) -> Result<Lab> {
    let me = Kind::Tailgate {
        bin: TAILGATE.into(),
        args: tailgate_args,
    };
    let mut lab = Lab::new()?;
    let (k1, k2) = (Keypair::generate()?, Keypair::generate()?);
    let ep = |i: u8| -> SocketAddr { format!("10.99.0.{i}:{LISTEN_PORT}").parse().unwrap() };
    let to_2 = peer_spec(&k2, 2, tailgate_initiates.then(|| ep(2)));
    let to_1 = peer_spec(&k1, 1, (!tailgate_initiates).then(|| ep(1)));
    // The responder must be up before the initiator's first packet matters: start it first.
    if tailgate_initiates {
        lab.start(peer, 2, k2, &[to_1])?;
        lab.start(me, 1, k1, &[to_2])?;
        lab.nodes.swap(0, 1);
    } else {
        lab.start(me, 1, k1, &[to_2])?;
        lab.start(peer, 2, k2, &[to_1])?;
    }
    Ok(lab)
}

/// Pings both ways over IPv4 and IPv6 (initiator first), then moves 100 MB over TCP
/// from the initiator to the responder and checks the digest.
fn exercise(lab: &mut Lab, tailgate_initiates: bool) -> Result<()> {
    let (a, b) = if tailgate_initiates { (0, 1) } else { (1, 0) };
    for (from, to) in [(a, b), (b, a)] {
        let v4 = lab.nodes[to].tunnel_v4().to_string();
        let v6 = lab.nodes[to].tunnel_v6().to_string();
        lab.nodes[from].ping(&v4, 3).with_context(|| {
            format!("ping {v4} from node {}:\n{}", from + 1, lab.nodes[0].log())
        })?;
        lab.nodes[from]
            .ping(&v6, 3)
            .with_context(|| format!("ping {v6}"))?;
    }
    let listen = SocketAddr::new(lab.nodes[b].tunnel_v4().into(), 5201);
    let report = tcp_transfer(
        &lab.nodes[a].host.ns,
        &lab.nodes[b].host.ns,
        listen,
        TRANSFER_BYTES,
        Duration::from_secs(120),
    )?;
    println!(
        "{} -> {}: {} bytes in {:.2?} ({:.2} Gbit/s)",
        lab.nodes[a].kind.label(),
        lab.nodes[b].kind.label(),
        report.bytes,
        report.elapsed,
        report.gbit_per_s()
    );
    assert!(
        report.checksum_matches,
        "transfer corrupted or short: {report:?}"
    );
    for n in lab.nodes.iter_mut() {
        n.check_running()?;
    }
    Ok(())
}

fn interop(peer: (Kind, Vec<String>), tailgate_initiates: bool) {
    require_root();
    let mut lab = pair(peer, tailgate_initiates).expect("lab");
    exercise(&mut lab, tailgate_initiates).unwrap_or_else(|e| {
        panic!("{e:#}\n--- tailgate log ---\n{}", lab.nodes[0].log());
    });
}

fn tailgate(args: &[&str]) -> Kind {
    Kind::Tailgate {
        bin: TAILGATE.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// The interop suite, once with offloads (TSO/USO, UDP GSO/GRO) and once with them forced off.
macro_rules! interop_suite {
    ($($name:ident: $peer:expr, $tailgate_initiates:expr;)*) => {
        mod offloads_on {
            use super::*;
            $(#[test] fn $name() { interop(with_args($peer, &[]), $tailgate_initiates); })*
        }
        mod offloads_off {
            use super::*;
            $(#[test] fn $name() { interop(with_args($peer, &["--no-offload"]), $tailgate_initiates); })*
        }
    };
}

/// Adds daemon arguments to tailgate peers; the node under test gets them through `pair`.
fn with_args(peer: Kind, args: &[&str]) -> (Kind, Vec<String>) {
    let peer = match peer {
        Kind::Tailgate { bin, args: mut a } => {
            a.extend(args.iter().map(|s| s.to_string()));
            Kind::Tailgate { bin, args: a }
        }
        other => other,
    };
    (peer, args.iter().map(|s| s.to_string()).collect())
}

interop_suite! {
    tailgate_initiates_to_tailgate: tailgate(&[]), true;
    tailgate_responds_to_tailgate_without_xdp: tailgate(&["--no-xdp"]), false;
    tailgate_initiates_to_wireguard_go: Kind::WireguardGo, true;
    wireguard_go_initiates_to_tailgate: Kind::WireguardGo, false;
    tailgate_initiates_to_boringtun: Kind::Boringtun, true;
    boringtun_initiates_to_tailgate: Kind::Boringtun, false;
}

/// `wg show` lists the peer with a recent handshake; `wg set` adds a second peer at runtime
/// and traffic to it works.
#[test]
fn wg_tool_shows_and_adds_peers() {
    require_root();
    let mut lab = pair(with_args(tailgate(&[]), &[]), true).expect("lab");
    let peer_v4 = lab.nodes[1].tunnel_v4().to_string();
    lab.nodes[0].ping(&peer_v4, 1).expect("first ping");
    let ifname = lab.nodes[0].ifname.clone();
    let dump = lab.nodes[0]
        .wg(&["show", &ifname, "dump"])
        .expect("wg show dump");
    let peer_line = dump
        .lines()
        .find(|l| l.starts_with(&lab.nodes[1].keys.public))
        .unwrap_or_else(|| panic!("peer missing from wg show:\n{dump}"));
    let fields: Vec<&str> = peer_line.split('\t').collect();
    let handshake: u64 = fields[4].parse().expect("handshake time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(handshake) < 60,
        "handshake not recent: {peer_line}"
    );
    assert!(fields[5].parse::<u64>().unwrap() > 0 && fields[6].parse::<u64>().unwrap() > 0);
    let show = lab.nodes[0].wg(&["show", &ifname]).expect("wg show");
    assert!(show.contains("latest handshake:"), "{show}");

    // A third node (wireguard-go) that knows node 1; node 1 learns of it through `wg set`.
    let k3 = Keypair::generate().unwrap();
    let to_1 = peer_spec(&lab.nodes[0].keys, 1, Some(lab.nodes[0].endpoint()));
    let idx = lab
        .start(Kind::WireguardGo, 3, k3.clone(), &[to_1])
        .expect("node 3");
    lab.nodes[0]
        .add_peer_with_wg(&peer_spec(&k3, 3, Some(lab.nodes[idx].endpoint())))
        .expect("wg set");
    let conf = lab.nodes[0].wg(&["showconf", &ifname]).expect("showconf");
    assert!(conf.contains(&k3.public), "{conf}");
    lab.nodes[0]
        .ping(&lab.nodes[idx].tunnel_v4().to_string(), 3)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.nodes[0].log()));
    lab.nodes[0]
        .ping(&lab.nodes[idx].tunnel_v6().to_string(), 3)
        .expect("ping v6 to runtime peer");

    // Removing it again with `wg set … remove` takes its route away.
    lab.nodes[0]
        .wg(&["set", &ifname, "peer", &k3.public, "remove"])
        .unwrap();
    let conf = lab.nodes[0].wg(&["showconf", &ifname]).unwrap();
    assert!(!conf.contains(&k3.public), "{conf}");
    let routes = lab.nodes[0]
        .exec("ip", &["route", "show", "dev", &ifname])
        .unwrap();
    assert!(!routes.contains("100.64.0.3"), "{routes}");
}

fn status_json(lab: &Lab, i: usize) -> serde_json::Value {
    serde_json::from_str(&lab.nodes[i].tailgate_status(true).expect("status")).expect("status json")
}

fn counter(v: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {v}"))
}

/// Junk, truncated and replayed datagrams at the listen port: the tunnel keeps working and
/// the XDP and userspace counters rise.
#[test]
fn junk_truncated_and_replayed_packets_are_dropped_and_counted() {
    require_root();
    let mut lab = pair(with_args(tailgate(&[]), &[]), true).expect("lab");
    let (a_v4, b_v4) = (
        lab.nodes[0].tunnel_v4().to_string(),
        lab.nodes[1].tunnel_v4().to_string(),
    );
    lab.nodes[0].ping(&b_v4, 1).expect("ping");
    let before = status_json(&lab, 1);
    assert_eq!(before["xdp"]["attached"], true, "{before}");

    // Record one real data packet arriving at node 2, to replay it later.
    let port = LISTEN_PORT;
    let capture = capture_udp(
        &lab.nodes[1].host.ns,
        "eth0",
        Duration::from_secs(10),
        move |d| d.dst.port() == port && d.payload.first() == Some(&4) && d.payload.len() > 32,
    )
    .expect("capture");
    lab.nodes[0].ping(&b_v4, 2).expect("ping during capture");
    let data_packet = capture.join().unwrap().expect("captured data packet");

    let target: SocketAddr = lab.nodes[1].endpoint();
    let junk: Vec<Vec<u8>> = vec![
        b"hello, not wireguard".to_vec(),
        vec![1u8; 3],                                // truncated
        vec![1, 0, 0, 0, 9, 9],                      // truncated initiation
        vec![9u8; 148],                              // bad type
        [&[1u8, 1, 0, 0][..], &[0u8; 144]].concat(), // bad reserved bytes
        [&[2u8, 0, 0, 0][..], &[0u8; 50]].concat(),  // response of wrong length
        [&[4u8, 0, 0, 0][..], &[7u8; 45]].concat(),  // data not a multiple of 16
    ];
    let sender = lab.nodes[0]
        .host
        .ns
        .spawn_inside(move || -> Result<()> {
            let s = UdpSocket::bind("10.99.0.1:40000")?;
            for _ in 0..5 {
                for j in &junk {
                    s.send_to(j, target)?;
                }
            }
            // Replays of a packet the receiver already accepted: must be rejected.
            for _ in 0..5 {
                s.send_to(&data_packet.payload, target)?;
            }
            Ok(())
        })
        .unwrap();
    sender.join().unwrap().expect("send junk");

    // The tunnel still works, in both directions, and the endpoint did not move to the replayer.
    lab.nodes[0].ping(&b_v4, 2).expect("ping after junk");
    lab.nodes[1].ping(&a_v4, 2).expect("ping back after junk");
    let after = wait_for("counters", Duration::from_secs(5), || {
        let s = status_json(&lab, 1);
        Ok((counter(&s, &["drops", "drop_rejected"]) >= 5).then_some(s))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", status_json(&lab, 1)));
    let xdp_before = &before["xdp"]["counters"];
    let xdp_after = &after["xdp"]["counters"];
    let dropped = |v: &serde_json::Value| -> u64 {
        v.as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("drop"))
            .map(|(_, v)| v.as_u64().unwrap_or(0))
            .sum()
    };
    assert!(
        dropped(xdp_after) >= dropped(xdp_before) + 30,
        "XDP drop counters did not rise by the 30 bad datagrams: before {xdp_before} after {xdp_after}"
    );
    assert_eq!(
        after["peers"][0]["endpoint"],
        serde_json::Value::String(lab.nodes[0].endpoint().to_string()),
        "a replayed packet moved the peer's endpoint: {after}"
    );
    for n in lab.nodes.iter_mut() {
        n.check_running().unwrap();
    }
}

/// SIGTERM removes the interface, its routes, the `wg` socket, the control socket and the XDP
/// program, and the daemon exits 0.
#[test]
fn sigterm_removes_everything() {
    require_root();
    let mut lab = pair(with_args(tailgate(&[]), &[]), true).expect("lab");
    let node = &mut lab.nodes[0];
    let ifname = node.ifname.clone();
    let socket = node.control_socket.clone().unwrap();
    let progs_before =
        lab::run(std::process::Command::new("bpftool").args(["prog", "show"])).unwrap();
    assert!(progs_before.contains("wan_ingress"), "{progs_before}");
    assert!(node.host.ns.ip(&["link", "show", &ifname]).is_ok());
    assert!(
        node.stop().expect("clean exit"),
        "daemon exited non-zero:\n{}",
        node.log()
    );
    assert!(
        node.host.ns.ip(&["link", "show", &ifname]).is_err(),
        "TUN device left behind"
    );
    let routes = node.host.ns.ip(&["route", "show"]).unwrap();
    assert!(!routes.contains("100.64.0.2"), "{routes}");
    assert!(!socket.exists(), "control socket left behind");
    assert!(!std::path::Path::new(&format!("/var/run/wireguard/{ifname}.sock")).exists());
    let xdp = node.host.ns.ip(&["link", "show", "eth0"]).unwrap();
    assert!(!xdp.contains("xdp"), "XDP program still attached: {xdp}");
}
