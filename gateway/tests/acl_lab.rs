//! Access control end to end: a control server with a HuJSON policy, users, a group and tagged
//! nodes in network namespaces, and real TCP (nc), UDP (nc) and ping between them and to a LAN
//! behind a subnet router — once with the router on its XDP fast path, once on the kernel path.
//! Needs root, `nc` (netcat-openbsd) and `ping`; the lab removes everything on drop.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tailgate_bench::lab::control::{ping_around, ControlServer, CtlNode, TempDir, SETTLE};
use tailgate_bench::lab::{self, wait_for, Lab, Netns, Process};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");

const POLICY: &str = r#"{
  // alice is an engineer; servers and routers are tagged.
  "groups": { "group:eng": ["alice@example.com"] },
  "tagOwners": { "tag:server": ["group:eng"], "tag:router": [] },
  "hosts": { "lan": "192.168.50.0/24" },
  "acls": [
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:server:22", "lan:*"] },
    { "action": "accept", "src": ["bob@example.com"], "proto": "udp", "dst": ["tag:server:5353"] },
    { "action": "accept", "src": ["alice@example.com"], "dst": ["autogroup:internet:*"] },
  ],
  "autoApprovers": {
    "routes": { "192.168.50.0/24": ["tag:router"] },
    "exitNode": ["tag:router"],
  },
  "tests": [
    { "src": "alice@example.com", "accept": ["tag:server:22", "192.168.50.5:80"], "deny": ["tag:server:80"] },
  ],
}"#;

fn bin() -> &'static Path {
    Path::new(TAILGATE)
}

/// A TCP listener on `port` in `ns` (keeps accepting).
fn tcp_listener(ns: &Netns, port: u16) -> Process {
    let mut c = ns.command("nc");
    c.args(["-lk", &port.to_string()]).stdout(Stdio::null());
    Process::spawn("nc-tcp", c).expect("nc -l")
}

/// Whether a TCP connection from `ns` to `ip:port` opens within 2 s.
fn tcp_connects(ns: &Netns, ip: &str, port: u16) -> bool {
    ns.exec("nc", &["-z", "-w", "2", ip, &port.to_string()])
        .is_ok()
}

/// Whether a UDP datagram from `from` reaches a listener on `port` in `to` (at `ip`).
fn udp_delivers(from: &Netns, to: &Netns, ip: &str, port: u16) -> bool {
    let mut l = to.command("nc");
    l.args(["-u", "-l", "-W", "1", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut listener = l.spawn().expect("nc -u -l");
    std::thread::sleep(Duration::from_millis(200));
    let mut send = from.command("sh");
    send.args([
        "-c",
        &format!("for i in 1 2 3; do echo udp-probe; sleep 0.2; done | nc -u -w 1 {ip} {port}"),
    ]);
    let _ = lab::run(&mut send);
    let deadline = Instant::now() + Duration::from_secs(2);
    let delivered = loop {
        if let Ok(Some(_)) = listener.try_wait() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = listener.kill();
    let _ = listener.wait();
    delivered
}

fn pings(ns: &Netns, ip: &str) -> bool {
    ns.exec("ping", &["-c", "1", "-W", "1", ip]).is_ok()
}

fn peer_names(n: &CtlNode) -> Vec<String> {
    let st = n.status_json().expect("status");
    let mut names: Vec<String> = st["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn write_policy(dir: &TempDir, name: &str, text: &str) -> String {
    let p = dir.0.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn acl_lab(router_args: &[&str]) {
    assert!(
        lab::is_root(),
        "needs root (run `cargo xtask test` as root)"
    );
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgacl").unwrap();
    let server = ControlServer::start(&lab, bin(), &dir).expect("control server");

    // A bad policy is refused with the line and reason; one whose tests fail too.
    let broken = write_policy(&dir, "broken.hujson", "{\n  \"acls\": [\n    { \"action\": \"accept\", \"src\": [\"group:nope\"], \"dst\": [\"*:*\"] },\n  ],\n}\n");
    let e = server
        .admin(&["policy", "set", &broken])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 3") && e.contains("group:nope is not defined"),
        "{e}"
    );
    let failing = write_policy(
        &dir,
        "failing.hujson",
        &POLICY.replace(
            r#""deny": ["tag:server:80"]"#,
            r#""deny": ["tag:server:22"]"#,
        ),
    );
    let e = server
        .admin(&["policy", "set", &failing])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("policy tests fail") && e.contains("tag:server:22 is accepted"),
        "{e}"
    );
    let good = write_policy(&dir, "policy.hujson", POLICY);
    let out = server.admin(&["policy", "set", &good]).expect("policy set");
    assert!(out.contains("3 acls, 1 tests passed"), "{out}");
    let e = server
        .admin(&["policy", "set", &broken])
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3"), "{e}");
    assert_eq!(
        server.admin(&["policy", "get"]).unwrap(),
        POLICY,
        "the old policy stays"
    );

    for user in ["alice@example.com", "bob@example.com"] {
        server.admin(&["users", "create", user]).expect("user");
    }
    let key = |flags: &[&str]| server.authkey(flags).expect("auth key");
    let mut alice = CtlNode::start(&lab, bin(), 1, "").expect("alice");
    let mut bob = CtlNode::start(&lab, bin(), 2, "").expect("bob");
    let mut srv = CtlNode::start(&lab, bin(), 3, "").expect("server node");
    let mut router = CtlNode::start_with(&lab, bin(), 4, "", router_args).expect("router");
    router
        .lan_host("lan0", "192.168.50.1/24", "192.168.50.5/24")
        .expect("LAN host");
    let up = |n: &CtlNode, k: String, extra: &[&str]| {
        n.up(&server, &k, extra)
            .unwrap_or_else(|e| panic!("up {extra:?}: {e}"))
    };
    up(
        &alice,
        key(&["--user", "alice@example.com"]),
        &["--hostname", "alice", "--accept-routes"],
    );
    up(
        &bob,
        key(&["--user", "bob@example.com"]),
        &["--hostname", "bob", "--accept-routes"],
    );
    up(&srv, key(&["--tags", "tag:server"]), &["--hostname", "srv"]);
    up(
        &router,
        key(&["--tags", "tag:router"]),
        &[
            "--hostname",
            "router",
            "--advertise-routes",
            "192.168.50.0/24",
        ],
    );
    // An exit node with an "internet" host behind it.
    let mut exit = CtlNode::start(&lab, bin(), 5, "").expect("exit node");
    exit.lan_host("inet0", "203.0.113.254/24", "203.0.113.1/24")
        .expect("internet host");
    up(
        &exit,
        key(&["--tags", "tag:router"]),
        &["--hostname", "exit", "--advertise-exit-node"],
    );

    // Each node sees only who it may reach or who may reach it.
    alice.wait_peers(3).expect("alice: srv, router and exit");
    assert_eq!(peer_names(&alice), ["exit", "router", "srv"]);
    bob.wait_peers(1).expect("bob: srv only");
    assert_eq!(peer_names(&bob), ["srv"]);
    srv.wait_peers(2).expect("srv: alice and bob");
    assert_eq!(peer_names(&srv), ["alice", "bob"]);
    router.wait_peers(1).expect("router: alice");

    let (va, vs) = (alice.tailnet_v4().unwrap(), srv.tailnet_v4().unwrap());
    let lan = router.lan(0).expect("LAN namespace");
    let _ssh = tcp_listener(&srv.host.ns, 22);
    let _http = tcp_listener(&srv.host.ns, 80);
    let _lan_http = tcp_listener(lan, 80);

    // alice → srv: TCP 22 and ping yes, TCP 80 and UDP no.
    alice.wait_ping(&vs).expect("alice pings srv");
    assert!(tcp_connects(&alice.host.ns, &vs, 22), "alice → srv:22");
    assert!(
        !tcp_connects(&alice.host.ns, &vs, 80),
        "alice → srv:80 must be dropped"
    );
    assert!(
        !udp_delivers(&alice.host.ns, &srv.host.ns, &vs, 5353),
        "alice → srv udp"
    );
    // bob → srv: UDP 5353 yes; TCP 22 and ping no.
    assert!(
        udp_delivers(&bob.host.ns, &srv.host.ns, &vs, 5353),
        "bob → srv udp 5353"
    );
    assert!(
        !tcp_connects(&bob.host.ns, &vs, 22),
        "bob → srv:22 must be dropped"
    );
    assert!(!pings(&bob.host.ns, &vs), "bob → srv ping must be dropped");
    // srv → alice: nothing lets srv in at alice (only replies to alice's flows pass).
    assert!(
        !pings(&srv.host.ns, &va),
        "srv → alice ping must be dropped"
    );
    // alice → the LAN behind the router: everything (`lan:*`); bob has no route there.
    alice.wait_ping("192.168.50.5").expect("alice → LAN host");
    assert!(
        tcp_connects(&alice.host.ns, "192.168.50.5", 80),
        "alice → LAN:80"
    );
    assert!(!pings(&bob.host.ns, "192.168.50.5"), "bob → LAN");
    // alice may use the exit node (autogroup:internet); bob does not even see it.
    alice
        .cli(&["set", "--exit-node=exit"])
        .expect("alice uses the exit node");
    alice
        .wait_ping("203.0.113.1")
        .expect("alice → internet via exit");
    assert!(
        bob.cli(&["set", "--exit-node=exit"]).is_err(),
        "bob has no exit node in his netmap"
    );
    alice.cli(&["set", "--exit-node="]).expect("exit node off");

    // Counters: the server node counted drops; the router counted accepted flows.
    let st = srv.status_json().unwrap();
    assert!(
        st["filter"]["dropped_no_rule"].as_u64().unwrap_or(0) > 0,
        "{}",
        st["filter"]
    );
    let st = router.status_json().unwrap();
    assert!(
        st["filter"]["enabled"].as_bool().unwrap(),
        "{}",
        st["filter"]
    );
    if router_args.is_empty() {
        // The allowed LAN traffic really went through the XDP fast path.
        let tun = &st["routing"]["fast_path"]["counters"]["tun"];
        let forwarded: u64 = tun
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("forwarded"))
            .filter_map(|(_, v)| v.as_u64())
            .sum();
        assert!(forwarded > 0, "tun_forward counters: {tun}");
    }

    // A policy update applies at once and keeps allowed flows going: alice pings srv all
    // along while bob is granted TCP 22.
    let wider = write_policy(
        &dir,
        "wider.hujson",
        &POLICY.replace(
            r#""dst": ["tag:server:5353"]"#,
            r#""dst": ["tag:server:5353"] },
    { "action": "accept", "src": ["bob@example.com"], "dst": ["tag:server:22"]"#,
        ),
    );
    let mut granted_after = None;
    let run = ping_around(&alice.host.ns, &vs, 4, || {
        let t = Instant::now();
        server.admin(&["policy", "set", &wider])?;
        wait_for("bob's TCP 22 to srv", SETTLE, || {
            Ok(tcp_connects(&bob.host.ns, &vs, 22).then_some(()))
        })?;
        granted_after = Some(t.elapsed());
        Ok(())
    })
    .expect("policy update");
    println!(
        "policy update: bob's first connection {} ms after `policy set` returned (2 s connect timeout per try); alice's ping: {} sent, {} lost",
        granted_after.unwrap().as_millis(),
        run.transmitted,
        run.lost()
    );
    assert_eq!(
        run.lost(),
        0,
        "allowed flows keep going across a policy update"
    );
    let _ = (&mut alice, &mut bob, &mut srv, &mut router, &mut exit);
}

#[test]
fn acl_policy_enforced_with_router_on_xdp() {
    acl_lab(&[]);
}

#[test]
fn acl_policy_enforced_with_router_on_kernel_path() {
    acl_lab(&["--no-xdp"]);
}
