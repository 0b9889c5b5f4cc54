//! Control mode over real tunnels in network namespaces: `tailgate control serve` runs in a lab
//! host, node daemons run with a `[control]` config and are brought up with `tailgate up`;
//! peers, addresses and routes come from the netmap. Needs root; every namespace, link and
//! process is removed on drop (also when a test fails).

use std::path::Path;

use anyhow::{anyhow, Result};
use tailgate::api::Status;
use tailgate_bench::lab::control::{
    ha_failover_trial, longest_gap, ping_around, ControlServer, CtlNode, Failure, TempDir, SETTLE,
};
use tailgate_bench::lab::{self, wait_for, Lab};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");

fn require_root() {
    assert!(
        lab::is_root(),
        "network-namespace tests need root (run `cargo xtask test` as root)"
    );
}

/// Typed views of a node's status (the harness returns JSON values).
trait NodeExt {
    fn status(&self) -> Result<Status>;
    /// This node's tailnet IPv4 address.
    fn ping(&self, dst: &str) -> Result<String>;
}

impl NodeExt for CtlNode {
    fn status(&self) -> Result<Status> {
        let s = self.cli(&["status", "--json"]).map_err(|e| anyhow!(e))?;
        Ok(serde_json::from_str(&s)?)
    }

    fn ping(&self, dst: &str) -> Result<String> {
        self.host
            .ns
            .exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", "-w", "8", dst])
    }
}

fn bin() -> &'static Path {
    Path::new(TAILGATE)
}

#[test]
fn control_mode_nodes_register_get_addresses_and_ping() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgctl").unwrap();
    let server = ControlServer::start(&lab, bin(), &dir).expect("control server");
    let mut a = CtlNode::start(&lab, bin(), 1, "").expect("node a");
    let mut b = CtlNode::start(&lab, bin(), 2, "").expect("node b");
    let c = CtlNode::start(&lab, bin(), 3, "").expect("node c");
    let ka = server.authkey(&[]).unwrap();
    let kb = server.authkey(&[]).unwrap();

    // Not up yet: status says so.
    let st = a.status().unwrap();
    assert_eq!(
        st.control.as_ref().map(|c| c.state.as_str()),
        Some("stopped")
    );

    let out = a.up(&server, &ka, &["--hostname", "alpha"]).expect("up a");
    assert!(out.contains("alpha"), "{out}");
    b.up(&server, &kb, &["--hostname", "bravo"]).expect("up b");

    // A used single-use key and an unknown key are refused with the server's words.
    let e = c.up(&server, &ka, &["--hostname", "charlie"]).unwrap_err();
    assert!(e.contains("auth key already used"), "{e}");
    let e = c
        .up(
            &server,
            "tgkey-doesnotexist-0000",
            &["--hostname", "charlie"],
        )
        .unwrap_err();
    assert!(e.contains("unknown auth key"), "{e}");
    let kc = server.authkey(&[]).unwrap();
    c.up(&server, &kc, &["--hostname", "charlie"])
        .expect("up c");

    a.wait_peers(2).expect("a sees b and c");
    // MagicDNS answers the netmap's names.
    let vb = b.tailnet_v4().unwrap();
    let answer = wait_for("bravo's name in a's resolver", SETTLE, || {
        let q = a
            .cli(&["dns", "query", "bravo.tailnet.internal"])
            .map_err(|e| anyhow!(e))?;
        Ok(q.contains(&vb).then_some(q))
    })
    .unwrap();
    assert!(answer.contains("status: NOERROR"), "{answer}");
    let st = a.status().unwrap();
    let ctl = st.control.clone().expect("control status");
    assert_eq!(ctl.name.as_deref(), Some("alpha"));
    assert!(
        ctl.addresses.iter().any(|x| x.starts_with("100.")),
        "{ctl:?}"
    );
    let bravo = st
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some("bravo"))
        .expect("bravo in status");
    assert_eq!(bravo.online, Some(true));
    b.wait_peers(2).expect("b sees a and c");

    let (va, vb, vc) = (
        a.tailnet_v4().unwrap(),
        b.tailnet_v4().unwrap(),
        c.tailnet_v4().unwrap(),
    );
    a.wait_ping(&vb).expect("a → b");
    b.wait_ping(&vc).expect("b → c");
    c.wait_ping(&va).expect("c → a");
    a.ping(&vb).expect("a → b again");
    let text = a.cli(&["status"]).unwrap();
    assert!(text.contains("name: bravo (online)"), "{text}");

    // An admin rename reaches the other nodes' resolvers with the next netmap.
    let renamed_at = std::time::Instant::now();
    let out = server
        .admin(&["nodes", "rename", "bravo", "Build Box"])
        .unwrap();
    assert!(out.contains("is now build-box"), "{out}");
    wait_for("the new name in a's resolver", SETTLE, || {
        let ans = a.host.ns.exec(
            "dig",
            &[
                "@100.100.100.100",
                "+short",
                "+time=1",
                "+tries=1",
                "build-box.tailnet.internal",
            ],
        )?;
        Ok((ans.trim() == vb).then_some(()))
    })
    .expect("renamed peer resolves");
    println!(
        "rename visible to a peer's resolver (dig) {} ms after the admin command returned",
        renamed_at.elapsed().as_millis()
    );
    let q = a.cli(&["dns", "query", "bravo.tailnet.internal"]).unwrap();
    assert!(q.contains("NXDOMAIN"), "the old name is gone: {q}");

    // Down: the session stops and peers go; the interface stays; up again (registered, no
    // key needed) brings them back.
    let b_addrs = b.status().unwrap().control.unwrap().addresses;
    assert_eq!(b_addrs.len(), 2, "{b_addrs:?}");
    b.cli(&["down"]).expect("down");
    b.wait_peers(0).expect("no peers after down");
    let st = b.status().unwrap();
    assert_eq!(st.control.map(|c| c.state), Some("stopped".to_string()));
    let addrs = b
        .host
        .ns
        .ip(&["-o", "addr", "show", "dev", &st.interface])
        .unwrap();
    assert!(
        !b_addrs.iter().any(|a| addrs.contains(&format!(" {a}/"))),
        "tailnet addresses left after down: {addrs}"
    );
    b.cli(&["up", "--login-server", &server.url, "--hostname", "bravo"])
        .expect("up again without a key");
    b.wait_peers(2).expect("peers back");
    b.wait_ping(&va).expect("b → a after up");

    // The data plane keeps running on the last netmap while the server is down.
    let server = server;
    server.process.signal(libc::SIGKILL);
    wait_for("the nodes to notice the outage", SETTLE, || {
        let st = a.status()?;
        Ok((st.control.map(|c| c.state) == Some("reconnecting".into())).then_some(()))
    })
    .expect("a notices the outage");
    a.ping(&vb).expect("a → b with the server down");
    let q = a
        .cli(&["dns", "query", "build-box.tailnet.internal"])
        .unwrap();
    assert!(
        q.contains(&vb),
        "MagicDNS answers with the server down: {q}"
    );
    c.ping(&va).expect("c → a with the server down");
    assert_eq!(a.status().unwrap().peers.len(), 2);
}

#[test]
fn control_mode_routes_from_the_netmap_use_longest_prefix_match() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgctl").unwrap();
    let server = ControlServer::start(&lab, bin(), &dir).expect("control server");
    let key = server.authkey(&["--reusable"]).unwrap();
    let mut ra = CtlNode::start(&lab, bin(), 1, "").expect("router a");
    let mut rb = CtlNode::start(&lab, bin(), 2, "").expect("router b");
    let mut client = CtlNode::start(&lab, bin(), 3, "").expect("client");
    ra.lan_host("lan0", "10.0.0.1/16", "10.0.2.5/16").unwrap();
    rb.lan_host("lan0", "10.0.1.1/24", "10.0.1.5/24").unwrap();
    ra.up(
        &server,
        &key,
        &["--hostname", "ra", "--advertise-routes", "10.0.0.0/16"],
    )
    .expect("up ra");
    rb.up(
        &server,
        &key,
        &["--hostname", "rb", "--advertise-routes", "10.0.1.0/24"],
    )
    .expect("up rb");
    client
        .up(&server, &key, &["--hostname", "cl", "--accept-routes"])
        .expect("up client");
    server
        .admin(&["routes", "approve", "ra", "10.0.0.0/16"])
        .unwrap();
    server
        .admin(&["routes", "approve", "rb", "10.0.1.0/24"])
        .unwrap();
    client.wait_peers(2).unwrap();
    ra.wait_peers(2).unwrap();
    rb.wait_peers(2).unwrap();

    // 10.0.1.5 exists only behind rb, 10.0.2.5 only behind ra.
    client
        .wait_ping("10.0.1.5")
        .expect("10.0.1.5 via rb (the /24)");
    client
        .wait_ping("10.0.2.5")
        .expect("10.0.2.5 via ra (the /16)");
    let st = client.status().unwrap();
    let routes_of = |name: &str| {
        st.peers
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| p.primary_routes.clone())
            .unwrap_or_default()
    };
    assert_eq!(routes_of("ra"), vec!["10.0.0.0/16".to_string()]);
    assert_eq!(routes_of("rb"), vec!["10.0.1.0/24".to_string()]);

    // `tailgate set` in control mode reaches the server: a new route (pending approval until
    // approved, then in the client's netmap) and a new HA priority.
    rb.cli(&[
        "set",
        "--advertise-routes=10.0.1.0/24,10.0.3.0/24",
        "--route-priority=7",
    ])
    .expect("set on rb");
    let listed = wait_for("rb's new route at the server", SETTLE, || {
        let v: serde_json::Value =
            serde_json::from_str(&server.admin(&["routes", "list", "--json"])?)?;
        let rows = v.as_array().cloned().unwrap_or_default();
        let new = rows
            .iter()
            .find(|r| r["node"] == "rb" && r["prefix"] == "10.0.3.0/24")
            .cloned();
        Ok(new.filter(|r| r["priority"] == 7))
    })
    .unwrap();
    assert_eq!(listed["approved"], false, "{listed}");
    server
        .admin(&["routes", "approve", "rb", "10.0.3.0/24"])
        .unwrap();
    wait_for("10.0.3.0/24 in the client's netmap", SETTLE, || {
        let st = client.status()?;
        Ok(st
            .peers
            .iter()
            .any(|p| {
                p.name.as_deref() == Some("rb")
                    && p.primary_routes
                        .as_ref()
                        .is_some_and(|r| r.contains(&"10.0.3.0/24".to_string()))
            })
            .then_some(()))
    })
    .unwrap();
    // Without accept_routes nothing is routed.
    client
        .cli(&["set", "--accept-routes=false"])
        .expect("set accept-routes off");
    assert!(
        client
            .host
            .ns
            .exec("ping", &["-c", "1", "-W", "1", "10.0.1.5"])
            .is_err(),
        "reached 10.0.1.5 without accept_routes"
    );
}

/// A control server and two nodes, alpha and bravo, that reach each other; returns alpha's
/// tailnet IPv4 address too.
fn two_nodes(lab: &Lab, dir: &TempDir) -> (ControlServer, CtlNode, CtlNode, String) {
    let server = ControlServer::start(lab, bin(), dir).expect("control server");
    let key = server.authkey(&["--reusable"]).unwrap();
    let mut a = CtlNode::start(lab, bin(), 1, "").expect("node a");
    let mut b = CtlNode::start(lab, bin(), 2, "").expect("node b");
    a.up(&server, &key, &["--hostname", "alpha"]).expect("up a");
    b.up(&server, &key, &["--hostname", "bravo"]).expect("up b");
    a.wait_peers(1).unwrap();
    b.wait_peers(1).unwrap();
    let va = a.tailnet_v4().unwrap();
    b.wait_ping(&va).expect("b → a");
    (server, a, b, va)
}

#[test]
fn control_server_restarts_lose_no_ping() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgctl").unwrap();
    let (mut server, mut a, mut b, va) = two_nodes(&lab, &dir);
    for kill9 in [true, false] {
        let run = ping_around(&b.host.ns, &va, 6, || server.restart(kill9)).unwrap();
        println!(
            "control server restart (kill -9: {kill9}): {} sent, {} lost, longest gap {:.0} ms",
            run.transmitted,
            run.lost(),
            longest_gap(&run.times) * 1000.0
        );
        assert!(run.transmitted > 300, "ping ran: {run:?}");
        assert_eq!(run.lost(), 0, "pings lost across the server restart");
        // The nodes reconnect and the state is intact: same names and addresses.
        wait_for("both sessions running again", SETTLE, || {
            let ok = [&a, &b].iter().all(|n| {
                n.status()
                    .ok()
                    .and_then(|s| s.control)
                    .is_some_and(|c| c.state == "running")
            });
            Ok(ok.then_some(()))
        })
        .expect("sessions back");
        assert_eq!(a.tailnet_v4().unwrap(), va);
        let names = server.admin(&["nodes", "list", "--json"]).unwrap();
        assert!(
            names.contains("alpha") && names.contains("bravo"),
            "{names}"
        );
    }
    let _ = (&mut a, &mut b);
}

#[test]
fn node_key_rotation_keeps_the_tunnel_up() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgctl").unwrap();
    let (server, mut a, mut b, va) = two_nodes(&lab, &dir);
    let old_key = a.status().unwrap().public_key;

    let run = ping_around(&b.host.ns, &va, 6, || {
        a.cli(&["up", "--login-server", &server.url, "--rotate-key"])
            .map(drop)
            .map_err(|e| anyhow!("up --rotate-key: {e}"))
    })
    .unwrap();
    let new_key = a.status().unwrap().public_key;
    assert_ne!(new_key, old_key, "the key did not change");
    let seen_by_b = wait_for("b to learn a's new key", SETTLE, || {
        let st = b.status()?;
        Ok(st
            .peers
            .iter()
            .any(|p| p.public_key == new_key)
            .then_some(()))
    });
    assert!(seen_by_b.is_ok(), "{seen_by_b:?}");
    let after = run
        .times
        .iter()
        .filter(|t| **t > run.event_at + 1.0)
        .count();
    let gap = longest_gap(&run.times);
    println!(
        "node-key rotation: {} replies ({after} more than 1 s after it), {} lost, longest gap {:.0} ms",
        run.times.len(),
        run.lost(),
        gap * 1000.0
    );
    assert!(after > 100, "traffic stopped after the rotation");
    assert!(gap <= 1.0, "longest gap {gap:.3} s during the rotation");
    let _ = (&mut a, &mut b);
}

/// Two routers for 10.0.50.0/24, a client pinging a LAN host every 10 ms, the primary fails:
/// traffic must resume through the standby within 3 s (`cargo xtask bench failover` reports
/// the real figures) and the server must confirm the standby as primary.
fn ha_failover(failure: Failure) {
    let t = ha_failover_trial(bin(), failure).expect("HA trial");
    println!(
        "HA failover, {}: {} replies after the failure, longest gap {:.0} ms",
        failure.label(),
        t.replies_after,
        t.gap * 1000.0
    );
    assert!(
        t.replies_after > 100,
        "traffic did not resume via the standby:\n{}",
        t.standby_log
    );
    assert!(t.gap <= 3.0, "longest gap {:.3} s exceeds 3 s", t.gap);
    assert_eq!(
        t.primary_after.as_deref(),
        Some("r2"),
        "the server did not confirm r2"
    );
}

#[test]
fn control_mode_ha_failover_after_kill9_of_the_primary() {
    require_root();
    ha_failover(Failure::Kill9);
}

#[test]
fn control_mode_ha_failover_when_the_primary_wan_link_goes_down() {
    require_root();
    ha_failover(Failure::WanDown);
}

#[test]
fn control_mode_ha_failover_when_the_primary_lan_probe_fails() {
    require_root();
    ha_failover(Failure::LanProbe);
}

#[test]
fn control_config_refuses_static_keys() {
    let dir = TempDir::new("tgcfg").unwrap();
    let cfg = dir.0.join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "[interface]\nname = \"tgx\"\naddress = [\"100.64.0.1/32\"]\n\n[control]\nstate_dir = \"{}\"\n",
            dir.0.join("state").display()
        ),
    )
    .unwrap();
    let e = tailgate::config::Config::load(&cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("interface.address") && e.contains("[control]"),
        "{e}"
    );
    std::fs::write(
        &cfg,
        format!(
            "[interface]\nname = \"tgx\"\n\n[control]\nstate_dir = \"{}\"\nlogin_server = \"tg://10.99.0.100:7443\"\nhealth_probe = \"10.0.50.5\"\n",
            dir.0.join("state").display()
        ),
    )
    .unwrap();
    let c = tailgate::config::Config::load(&cfg).expect("control config");
    let ctl = c.control.expect("control table");
    assert_eq!(ctl.health_probe, Some("10.0.50.5".parse().unwrap()));
    // The key comes from the state dir and stays the same across loads.
    let again = tailgate::config::Config::load(&cfg).unwrap();
    assert_eq!(c.interface.private_key, again.interface.private_key);
}
