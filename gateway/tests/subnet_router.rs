//! Subnet routers, 4via6 and exit nodes over real tunnels in network namespaces. Every test
//! runs twice: with the XDP fast path (`::xdp`, whose counters must show that XDP forwarded)
//! and with the fallback path (`::kernel`: `--no-xdp`, kernel forwarding + nftables
//! masquerade, 4via6 in userspace; one test without `nft`, masquerading with iptables, and one
//! restarting a router killed with SIGKILL). Needs root; every namespace, link, rule and
//! process is removed on drop.
//!
//! On the XDP path the LAN hosts send full transport checksums (`ethtool -K eth1 tx off`), so
//! `lan_return` hands the NATed replies to the daemon's AF_XDP sockets (replies with partial
//! checksums stay with the kernel); a separate test keeps the offload on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tailgate_bench::lab::node::{peer_spec, Node, PeerSpec, LISTEN_PORT};
use tailgate_bench::lab::{self, Keypair, Kind, Lab, Netns};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");
const TIMEOUT: Duration = Duration::from_secs(5);

fn require_root() {
    assert!(
        lab::is_root(),
        "network-namespace tests need root (run `cargo xtask test` as root)"
    );
}

/// Which forwarding path the routers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Xdp,
    Kernel,
}

impl Path {
    /// How to start a router on this path.
    fn router(self) -> Kind {
        Kind::Tailgate {
            bin: TAILGATE.into(),
            args: match self {
                Path::Xdp => Vec::new(),
                Path::Kernel => vec!["--no-xdp".into()],
            },
        }
    }
}

/// Runs a test body once per forwarding path.
macro_rules! on_both_paths {
    ($name:ident) => {
        mod $name {
            #[test]
            fn xdp() {
                super::$name(super::Path::Xdp)
            }
            #[test]
            fn kernel() {
                super::$name(super::Path::Kernel)
            }
        }
    };
}

fn status_json(node: &Node) -> serde_json::Value {
    let out = node.tailgate_status(true).expect("tailgate status --json");
    serde_json::from_str(&out).expect("status JSON")
}

/// Waits until `router` serves `route` on `path` (the fast path picks up LAN interfaces that
/// appear after start-up within a few seconds).
fn wait_for_path(router: &Node, path: Path, route: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = status_json(router);
        let fast = &st["routing"]["fast_path"];
        let ready = match path {
            Path::Xdp => fast["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == route)),
            Path::Kernel => {
                assert_eq!(fast["active"], false, "{st:#}");
                st["routing"]["forwarding_path"]
                    .as_str()
                    .is_some_and(|p| p.contains("off (--no-xdp given)"))
            }
        };
        if ready {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{route} not on the {path:?} path: {st:#}\n{}",
            router.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes a LAN host compute full transport checksums (no TX checksum offload on its veth):
/// only such replies go to the router's AF_XDP sockets.
fn full_checksums(lan: &Netns) {
    lan.exec("ethtool", &["-K", "eth1", "tx", "off"])
        .expect("ethtool -K eth1 tx off");
}

/// A LAN host behind node `node` (see [`Lab::lan_host`]); on the XDP path it sends full
/// checksums, so the replies take the AF_XDP return path.
fn lan_host(lab: &mut Lab, path: Path, node: usize, router: &str, host: &str) -> usize {
    let i = lab.lan_host(node, "lan0", router, host).expect("LAN host");
    if path == Path::Xdp {
        full_checksums(&lab.lan_hosts[i]);
    }
    i
}

/// On the XDP path, the router's counters must show packets forwarded to the LAN and, for
/// NATed flows (`snat`), replies returned by XDP and read by the daemon from its AF_XDP
/// sockets (replies of flows XDP did not NAT are ordinary routed packets the kernel
/// forwards).
fn assert_forwarded_by(router: &Node, path: Path, snat: bool) {
    assert_returned(router, path, snat, true);
}

/// Like [`assert_forwarded_by`]; `via_sockets` says whether the NATed replies must have gone
/// through the AF_XDP sockets (LAN hosts sending full checksums).
fn assert_returned(router: &Node, path: Path, snat: bool, via_sockets: bool) {
    let st = status_json(router);
    let c = &st["routing"]["fast_path"]["counters"];
    let n = |side: &str, key: &str| c[side][key].as_u64().unwrap_or(0);
    match path {
        Path::Xdp => {
            let out = n("tun", "forwarded_v4") + n("tun", "forwarded_via6");
            let back = n("lan", "returned_v4") + n("lan", "returned_via6");
            assert!(
                out > 0 && (back > 0 || !snat),
                "XDP did not forward: {st:#}"
            );
            let ret = st["routing"]["fast_path"]["return_path"]
                .as_str()
                .unwrap_or_default();
            assert!(ret.starts_with("AF_XDP sockets on lan0"), "{st:#}");
            let (to_sockets, read) = (
                n("lan", "redirected_xsk"),
                st["batching"]["xsk_read_packets"].as_u64().unwrap_or(0),
            );
            if snat && via_sockets {
                // Every reply XDP de-NATed went to a socket, and the daemon read it.
                assert!(
                    to_sockets > 0 && to_sockets >= back && read >= to_sockets,
                    "replies did not take the AF_XDP sockets: {st:#}\n{}",
                    router.log()
                );
            } else if snat {
                // Partial checksums (TCP, UDP) went to the kernel; ICMP replies may not.
                assert!(to_sockets < back, "{st:#}");
            }
        }
        Path::Kernel => assert!(c.is_null(), "{st:#}"),
    }
}

fn endpoint(index: u8) -> SocketAddr {
    format!("10.99.0.{index}:{LISTEN_PORT}").parse().unwrap()
}

/// A peer entry with extra tailgate settings (name, routes, exit_node).
fn peer_with(keys: &Keypair, index: u8, with_endpoint: bool, extra: &str) -> PeerSpec {
    let mut p = peer_spec(keys, index, with_endpoint.then(|| endpoint(index)));
    p.extra_toml = extra.to_string();
    p
}

/// Answers one TCP connection and one UDP datagram (on `port`) with `name` and the source
/// address it saw; runs inside `ns` until both were served or `TIMEOUT` passed.
fn whoami_server(
    ns: &Netns,
    name: &'static str,
    port: u16,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn_inside(move || -> Result<()> {
        let tcp = TcpListener::bind(("::", port))?;
        let udp = UdpSocket::bind(("::", port))?;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(20)))?;
        let _ = ready_tx.send(());
        let deadline = std::time::Instant::now() + TIMEOUT * 4;
        let (mut tcp_done, mut udp_done) = (false, false);
        while !(tcp_done && udp_done) && std::time::Instant::now() < deadline {
            if let Ok((mut s, from)) = tcp.accept() {
                s.write_all(format!("{name} {}", canonical(from).ip()).as_bytes())?;
                tcp_done = true;
            }
            let mut buf = [0u8; 64];
            if let Ok((_, from)) = udp.recv_from(&mut buf) {
                udp.send_to(format!("{name} {}", canonical(from).ip()).as_bytes(), from)?;
                udp_done = true;
            }
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(TIMEOUT)
        .map_err(|_| anyhow!("server did not start"))?;
    Ok(handle)
}

fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Asks the whoami server at `to` over TCP and over UDP from inside `ns`; returns both
/// answers.
fn ask_whoami(ns: &Netns, to: SocketAddr) -> Result<(String, String)> {
    ns.spawn_inside(move || -> Result<(String, String)> {
        let mut s =
            TcpStream::connect_timeout(&to, TIMEOUT).with_context(|| format!("TCP to {to}"))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let mut tcp = String::new();
        s.read_to_string(&mut tcp)?;
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let u = UdpSocket::bind(bind)?;
        u.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = [0u8; 128];
        for _ in 0..10 {
            u.send_to(b"who?", to)?;
            if let Ok((n, _)) = u.recv_from(&mut buf) {
                return Ok((tcp, String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
        Err(anyhow!("no UDP answer from {to}"))
    })?
    .join()
    .map_err(|_| anyhow!("client panicked"))?
}

fn ping(ns: &Netns, dst: &str) -> Result<String> {
    ns.exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", "-w", "8", dst])
}

/// What the LAN host's veth does with transport checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checksums {
    /// Computed in full (offload off): replies go to the router's AF_XDP sockets.
    Full,
    /// Left partial (offload on, the veth default): replies go through the kernel.
    Partial,
}

/// A client (node 1, accepts routes) and a subnet router (node 2) for 192.168.50.0/24 with
/// a LAN host 192.168.50.5 (sending full checksums on the XDP path).
fn router_lab(path: Path, snat: bool) -> Result<Lab> {
    router_lab_with(path, snat, Checksums::Full)
}

/// [`router_lab`] with the LAN host's checksum behaviour chosen.
fn router_lab_with(path: Path, snat: bool, checksums: Checksums) -> Result<Lab> {
    router_lab_running(path.router(), path, snat, checksums)
}

/// [`router_lab_with`] with the router started as `router` (a daemon on `path`).
fn router_lab_running(router: Kind, path: Path, snat: bool, checksums: Checksums) -> Result<Lab> {
    let mut lab = Lab::new()?;
    let (kc, kr) = (Keypair::generate()?, Keypair::generate()?);
    lab.start_with(
        router,
        2,
        kr.clone(),
        &[peer_with(&kc, 1, false, "")],
        &format!("advertise_routes = [\"192.168.50.0/24\"]\nsnat_subnet_routes = {snat}\n"),
    )?;
    let host = lab.lan_host(0, "lan0", "192.168.50.1/24", "192.168.50.5/24")?;
    if path == Path::Xdp && checksums == Checksums::Full {
        full_checksums(&lab.lan_hosts[host]);
    }
    lab.start_with(
        Kind::tailgate(TAILGATE),
        1,
        kc,
        &[peer_with(
            &kr,
            2,
            true,
            "name = \"router\"\nroutes = [\"192.168.50.0/24\"]\n",
        )],
        "accept_routes = true\n",
    )?;
    wait_for_path(&lab.nodes[0], path, "192.168.50.0/24");
    Ok(lab)
}

on_both_paths!(subnet_router_snat_on_lan_sees_router_address);
fn subnet_router_snat_on_lan_sees_router_address(path: Path) {
    require_root();
    let lab = router_lab(path, true).expect("lab");
    let client = &lab.nodes[1].host.ns;
    ping(client, "192.168.50.5").unwrap_or_else(|e| panic!("{e:#}\n{}", lab.nodes[0].log()));
    let server = whoami_server(&lab.lan_hosts[0], "lan", 7000).unwrap();
    let (tcp, udp) = ask_whoami(client, "192.168.50.5:7000".parse().unwrap()).unwrap();
    server.join().unwrap().unwrap();
    assert_eq!(tcp, "lan 192.168.50.1", "TCP source seen on the LAN");
    assert_eq!(udp, "lan 192.168.50.1", "UDP source seen on the LAN");
    let status = lab.nodes[0].tailgate_status(false).unwrap();
    assert!(
        status.contains("advertised routes: 192.168.50.0/24"),
        "{status}"
    );
    assert!(status.contains("subnet SNAT: on"), "{status}");
    assert_forwarded_by(&lab.nodes[0], path, true);
}

/// With the LAN host's checksum offload left on, its TCP and UDP replies carry partial
/// checksums: `lan_return` leaves them to the kernel (XDP_PASS into the TUN) even though the
/// AF_XDP sockets are registered, and everything still works.
#[test]
fn partial_checksum_replies_take_the_kernel_return_path() {
    require_root();
    let lab = router_lab_with(Path::Xdp, true, Checksums::Partial).expect("lab");
    let client = &lab.nodes[1].host.ns;
    ping(client, "192.168.50.5").unwrap_or_else(|e| panic!("{e:#}\n{}", lab.nodes[0].log()));
    let server = whoami_server(&lab.lan_hosts[0], "lan", 7003).unwrap();
    let (tcp, udp) = ask_whoami(client, "192.168.50.5:7003".parse().unwrap()).unwrap();
    server.join().unwrap().unwrap();
    assert_eq!(tcp, "lan 192.168.50.1");
    assert_eq!(udp, "lan 192.168.50.1");
    assert_returned(&lab.nodes[0], Path::Xdp, true, false);
}

/// A directory holding the iptables programs (the legacy ones, as on Synology DSM), `ip` and
/// `ping` but no `nft`, and a script starting tailgate with only that directory on `PATH`.
fn path_without_nft() -> Result<(lab::control::TempDir, std::path::PathBuf)> {
    let dir = lab::control::TempDir::new("nonft")?;
    let links = [
        ("iptables", "iptables-legacy"),
        ("iptables-restore", "iptables-legacy-restore"),
        ("ip6tables", "ip6tables-legacy"),
        ("ip6tables-restore", "ip6tables-legacy-restore"),
        ("ip", "ip"),
        ("ping", "ping"),
    ];
    for (name, target) in links {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(target))
            .find(|p| p.exists())
            .with_context(|| format!("{target} is not installed"))?;
        std::os::unix::fs::symlink(found, dir.0.join(name))?;
    }
    let script = dir.0.join("tailgate-without-nft");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nPATH={} exec {TAILGATE} \"$@\"\n",
            dir.0.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok((dir, script))
}

/// Where `nft` is missing (Synology DSM), the router masquerades with iptables: the LAN host
/// sees the router's LAN address, status names the backend, and the chain is gone once the
/// daemon stops.
#[test]
fn snat_with_iptables_when_nft_is_missing() {
    require_root();
    let (_dir, script) = path_without_nft().expect("PATH without nft");
    let router = Kind::Tailgate {
        bin: script,
        args: vec!["--no-xdp".into()],
    };
    let mut lab = router_lab_running(router, Path::Kernel, true, Checksums::Partial).expect("lab");
    let client = &lab.nodes[1].host.ns;
    ping(client, "192.168.50.5").unwrap_or_else(|e| panic!("{e:#}\n{}", lab.nodes[0].log()));
    let server = whoami_server(&lab.lan_hosts[0], "lan", 7004).unwrap();
    let (tcp, udp) = ask_whoami(client, "192.168.50.5:7004".parse().unwrap()).unwrap();
    server.join().unwrap().unwrap();
    assert_eq!(tcp, "lan 192.168.50.1", "TCP source seen on the LAN");
    assert_eq!(udp, "lan 192.168.50.1", "UDP source seen on the LAN");
    let st = status_json(&lab.nodes[0]);
    assert_eq!(st["routing"]["nat_backend"], "iptables", "{st:#}");
    let rules = st["routing"]["nat_rules"].to_string();
    assert!(
        rules.contains("iptables -t nat -A TAILGATE-") && rules.contains("ip6tables -t nat"),
        "{st:#}"
    );
    let text = lab.nodes[0].tailgate_status(false).unwrap();
    assert!(
        text.contains("kernel forwarding + iptables masquerade"),
        "{text}"
    );
    let router_ns = lab.nodes[0].host.ns.name().to_string();
    let chains = |tool: &str| {
        lab::run(
            std::process::Command::new("ip")
                .args(["netns", "exec", &router_ns, tool])
                .args(["-t", "nat", "-S"]),
        )
        .unwrap()
    };
    let chain = format!("-A POSTROUTING -j TAILGATE-{}", lab.nodes[0].ifname);
    assert!(
        chains("iptables-legacy").contains(&chain),
        "{}",
        chains("iptables-legacy")
    );
    assert!(chains("ip6tables-legacy").contains(&chain));
    assert!(
        lab.nodes[0].stop().unwrap(),
        "router did not exit cleanly:\n{}",
        lab.nodes[0].log()
    );
    for tool in ["iptables-legacy", "ip6tables-legacy"] {
        let left = chains(tool);
        assert!(!left.contains("TAILGATE-"), "{tool} after stop: {left}");
    }
}

on_both_paths!(subnet_router_snat_off_keeps_tailnet_source);
fn subnet_router_snat_off_keeps_tailnet_source(path: Path) {
    require_root();
    let lab = router_lab(path, false).expect("lab");
    // Without SNAT the LAN needs a route back to the tailnet: through the router.
    lab.lan_hosts[0]
        .ip(&["route", "add", "100.64.0.0/10", "via", "192.168.50.1"])
        .unwrap();
    let client = &lab.nodes[1].host.ns;
    ping(client, "192.168.50.5").unwrap();
    let server = whoami_server(&lab.lan_hosts[0], "lan", 7001).unwrap();
    let (tcp, udp) = ask_whoami(client, "192.168.50.5:7001".parse().unwrap()).unwrap();
    server.join().unwrap().unwrap();
    assert_eq!(tcp, "lan 100.64.0.1");
    assert_eq!(udp, "lan 100.64.0.1");
    assert_forwarded_by(&lab.nodes[0], path, false);
}

/// A router killed with SIGKILL leaves its masquerade table behind. Started again with SNAT
/// off, its first apply removes that table (no rule is needed any more), and the LAN host sees
/// the client's tailnet address.
#[test]
fn restart_after_kill_removes_leftover_masquerade() {
    require_root();
    let mut lab = router_lab(Path::Kernel, true).expect("lab");
    let table = format!("tailgate_{}", lab.nodes[0].ifname);
    let list_table = |router: &Node| router.exec("nft", &["list", "table", "inet", &table]);
    let rules = list_table(&lab.nodes[0]).expect("the router's masquerade table");
    assert!(rules.contains("masquerade"), "{rules}");

    lab.nodes[0]
        .kill_and_restart(|config| {
            let off = config.replace("snat_subnet_routes = true", "snat_subnet_routes = false");
            assert_ne!(off, config, "SNAT setting not found in:\n{config}");
            off
        })
        .expect("restarting the router");
    wait_for_path(&lab.nodes[0], Path::Kernel, "192.168.50.0/24");
    let status = lab.nodes[0].tailgate_status(false).unwrap();
    assert!(status.contains("subnet SNAT: off"), "{status}");
    assert!(
        list_table(&lab.nodes[0]).is_err(),
        "the killed daemon's table is still there\n{}",
        lab.nodes[0].log()
    );

    lab.lan_hosts[0]
        .ip(&["route", "add", "100.64.0.0/10", "via", "192.168.50.1"])
        .unwrap();
    // The client still holds a session the restarted router has forgotten; it hands-shakes
    // again once its data goes unanswered (WireGuard's keepalive + rekey timeouts, ~15 s).
    let client = &lab.nodes[1].host.ns;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while ping(client, "192.168.50.5").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client never reached the LAN through the restarted router\n{}",
            lab.nodes[0].log()
        );
    }
    let server = whoami_server(&lab.lan_hosts[0], "lan", 7005).unwrap();
    let (tcp, udp) = ask_whoami(client, "192.168.50.5:7005".parse().unwrap()).unwrap();
    server.join().unwrap().unwrap();
    assert_eq!(tcp, "lan 100.64.0.1");
    assert_eq!(udp, "lan 100.64.0.1");
}

on_both_paths!(tailgate_set_changes_snat_at_runtime);
fn tailgate_set_changes_snat_at_runtime(path: Path) {
    require_root();
    let lab = router_lab(path, true).expect("lab");
    lab.lan_hosts[0]
        .ip(&["route", "add", "100.64.0.0/10", "via", "192.168.50.1"])
        .unwrap();
    let socket = lab.nodes[0].control_socket.clone().unwrap();
    lab::run(
        std::process::Command::new(TAILGATE)
            .arg("--socket")
            .arg(&socket)
            .args(["set", "--snat-subnet-routes=false"]),
    )
    .unwrap();
    let server = whoami_server(&lab.lan_hosts[0], "lan", 7002).unwrap();
    let (tcp, _) = ask_whoami(&lab.nodes[1].host.ns, "192.168.50.5:7002".parse().unwrap()).unwrap();
    server.join().unwrap().unwrap();
    assert_eq!(tcp, "lan 100.64.0.1");
    assert_forwarded_by(&lab.nodes[0], path, false);
    // A bad exit node is refused with a clear error and changes nothing.
    let out = std::process::Command::new(TAILGATE)
        .arg("--socket")
        .arg(&socket)
        .args(["set", "--exit-node=nobody"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no peer named or addressed \"nobody\""));
}

on_both_paths!(four_via_six_reaches_overlapping_sites);
/// Two sites both using 10.1.1.0/24 behind routers for site 7 and site 8; the client reaches
/// each site's 10.1.1.5 through its 4via6 address.
fn four_via_six_reaches_overlapping_sites(path: Path) {
    require_root();
    let mut lab = Lab::new().unwrap();
    let (kc, k7, k8) = (
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    for (keys, index, site) in [(&k7, 2u8, 7u16), (&k8, 3, 8)] {
        let i = lab
            .start_with(
                path.router(),
                index,
                keys.clone(),
                &[peer_with(&kc, 1, false, "")],
                &format!("\n[[via]]\nsite = {site}\nroutes = [\"10.1.1.0/24\"]\n"),
            )
            .unwrap();
        lan_host(&mut lab, path, i, "10.1.1.1/24", "10.1.1.5/24");
    }
    let route = |site: u16| format!("routes = [\"fd7a:115c:a1e0:b1a:0:{site:x}:a01:100/120\"]\n");
    lab.start_with(
        Kind::tailgate(TAILGATE),
        1,
        kc,
        &[
            peer_with(&k7, 2, true, &route(7)),
            peer_with(&k8, 3, true, &route(8)),
        ],
        "accept_routes = true\n",
    )
    .unwrap();
    for (router, site) in [(0, 7u16), (1, 8)] {
        wait_for_path(
            &lab.nodes[router],
            path,
            &format!("fd7a:115c:a1e0:b1a:0:{site:x}:a01:100/120"),
        );
    }
    let client = &lab.nodes[2].host.ns;
    for (site, lan, name) in [(7, 0, "site7"), (8, 1, "site8")] {
        let via = format!("fd7a:115c:a1e0:b1a:0:{site:x}:a01:105");
        ping(client, &via).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.nodes[lan].log()));
        let server = whoami_server(&lab.lan_hosts[lan], name, 7100).unwrap();
        let (tcp, udp) = ask_whoami(client, format!("[{via}]:7100").parse().unwrap()).unwrap();
        server.join().unwrap().unwrap();
        // The site's host answers, seeing its router's LAN address (4via6 always SNATs).
        assert_eq!(tcp, format!("{name} 10.1.1.1"));
        assert_eq!(udp, format!("{name} 10.1.1.1"));
        assert_forwarded_by(&lab.nodes[lan], path, true);
    }
}

on_both_paths!(longest_prefix_wins_across_routers);
/// The seed's example: router A advertises 10.0.0.0/16, router B 10.0.1.0/24; 10.0.1.5 goes
/// via B and 10.0.2.5 via A.
fn longest_prefix_wins_across_routers(path: Path) {
    require_root();
    let mut lab = Lab::new().unwrap();
    let (kc, ka, kb) = (
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    let a = lab
        .start_with(
            path.router(),
            2,
            ka.clone(),
            &[peer_with(&kc, 1, false, "")],
            "advertise_routes = [\"10.0.0.0/16\"]\n",
        )
        .unwrap();
    lan_host(&mut lab, path, a, "10.0.0.1/16", "10.0.2.5/16");
    let b = lab
        .start_with(
            path.router(),
            3,
            kb.clone(),
            &[peer_with(&kc, 1, false, "")],
            "advertise_routes = [\"10.0.1.0/24\"]\n",
        )
        .unwrap();
    lan_host(&mut lab, path, b, "10.0.1.1/24", "10.0.1.5/24");
    lab.start_with(
        Kind::tailgate(TAILGATE),
        1,
        kc,
        &[
            peer_with(&ka, 2, true, "routes = [\"10.0.0.0/16\"]\n"),
            peer_with(&kb, 3, true, "routes = [\"10.0.1.0/24\"]\n"),
        ],
        "accept_routes = true\n",
    )
    .unwrap();
    wait_for_path(&lab.nodes[a], path, "10.0.0.0/16");
    wait_for_path(&lab.nodes[b], path, "10.0.1.0/24");
    let client = &lab.nodes[2].host.ns;
    for (dst, lan, name, router_lan) in [
        ("10.0.1.5", 1, "b", "10.0.1.1"),
        ("10.0.2.5", 0, "a", "10.0.0.1"),
    ] {
        let server = whoami_server(&lab.lan_hosts[lan], name, 7200).unwrap();
        let (tcp, _) = ask_whoami(client, format!("{dst}:7200").parse().unwrap()).unwrap();
        server.join().unwrap().unwrap();
        assert_eq!(
            tcp,
            format!("{name} {router_lan}"),
            "{dst} must go via router {name}"
        );
        assert_forwarded_by(&lab.nodes[lan], path, true);
    }
}

on_both_paths!(exit_node_carries_internet_traffic_and_lan_access_is_optional);
/// An exit node with an "internet" host behind it; the client's own LAN stays direct only
/// with `exit_node_allow_lan_access`.
fn exit_node_carries_internet_traffic_and_lan_access_is_optional(path: Path) {
    require_root();
    let mut lab = Lab::new().unwrap();
    let (kc, ke) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    let e = lab
        .start_with(
            path.router(),
            2,
            ke.clone(),
            &[peer_with(&kc, 1, false, "")],
            "advertise_exit_node = true\n",
        )
        .unwrap();
    lab.lan_host(e, "wan1", "203.0.113.254/24", "203.0.113.1/24")
        .unwrap();
    let c = lab
        .start_with(
            Kind::tailgate(TAILGATE),
            1,
            kc,
            &[peer_with(
                &ke,
                2,
                true,
                "name = \"exit1\"\nexit_node = true\n",
            )],
            "exit_node = \"exit1\"\n",
        )
        .unwrap();
    lab.lan_host(c, "lan1", "192.168.77.1/24", "192.168.77.7/24")
        .unwrap();
    let client = lab.nodes[c].host.ns.name().to_string();
    let client_ns = &lab.nodes[c].host.ns;
    ping(client_ns, "203.0.113.1").unwrap_or_else(|e| panic!("{e:#}\n{}", lab.nodes[c].log()));
    let server = whoami_server(&lab.lan_hosts[0], "internet", 7300).unwrap();
    let (tcp, udp) = ask_whoami(client_ns, "203.0.113.1:7300".parse().unwrap()).unwrap();
    server.join().unwrap().unwrap();
    assert_eq!(
        tcp, "internet 203.0.113.254",
        "exit traffic leaves with the exit node's address"
    );
    assert_eq!(udp, "internet 203.0.113.254");
    // The client's LAN goes to the exit node too (and dies there) unless allowed.
    assert!(
        ping(client_ns, "192.168.77.7").is_err(),
        "LAN reachable without allow-LAN in {client}"
    );
    let socket = lab.nodes[c].control_socket.clone().unwrap();
    let set = |arg: &str| {
        lab::run(
            std::process::Command::new(TAILGATE)
                .arg("--socket")
                .arg(&socket)
                .args(["set", arg]),
        )
        .unwrap()
    };
    set("--exit-node-allow-lan-access=true");
    ping(client_ns, "192.168.77.7").expect("LAN direct with allow-LAN");
    ping(client_ns, "203.0.113.1").expect("internet still via the exit node");
    let list = lab::run(
        std::process::Command::new(TAILGATE)
            .arg("--socket")
            .arg(&socket)
            .args(["exit-node", "list"]),
    )
    .unwrap();
    assert!(list.starts_with("IP"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.contains("100.64.0.2") && l.contains("exit1") && l.ends_with("selected")),
        "{list}"
    );
    let suggest = lab::run(
        std::process::Command::new("ip")
            .args(["netns", "exec", &client, TAILGATE, "--socket"])
            .arg(&socket)
            .args(["exit-node", "suggest"]),
    )
    .unwrap();
    assert!(
        suggest.contains("Suggested exit node: exit1 (100.64.0.2"),
        "{suggest}"
    );
    // Turning the exit node off removes the policy routing.
    set("--exit-node=");
    assert!(
        ping(client_ns, "203.0.113.1").is_err(),
        "internet must not be reachable without the exit node"
    );
    let rules = client_ns.ip(&["rule", "show"]).unwrap();
    assert!(!rules.contains("lookup 52"), "{rules}");
}
