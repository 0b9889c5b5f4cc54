//! Control mode over real tunnels in network namespaces: `tailgate control serve` runs in a lab
//! host, node daemons run with a `[control]` config and are brought up with `tailgate up`;
//! peers, addresses and routes come from the netmap. Needs root; every namespace, link and
//! process is removed on drop (also when a test fails).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tailgate::api::Status;
use tailgate_bench::lab::{self, unique_name, veth, wait_for, Host, Lab, Netns, Process};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");
/// Bound for a node to get its netmap and its peers to answer.
const SETTLE: Duration = Duration::from_secs(20);
/// The control server's lab host index (underlay 10.99.0.100).
const SERVER_INDEX: u8 = 100;

fn require_root() {
    assert!(
        lab::is_root(),
        "network-namespace tests need root (run `cargo xtask test` as root)"
    );
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&d).expect("creating a temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tailgate control serve` in a lab host. Field order: the process stops before its
/// namespace goes away.
struct Server {
    process: Process,
    _host: Host,
    state: PathBuf,
    url: String,
}

impl Server {
    fn start(lab: &Lab, dir: &TempDir) -> Result<Server> {
        let host = lab.host(SERVER_INDEX)?;
        let state = dir.0.join("server");
        let listen = format!("{}:7443", host.underlay_v4());
        let mut cmd = host.ns.command(TAILGATE);
        cmd.args(["control", "--state-dir"])
            .arg(&state)
            .args(["serve", "--listen", &listen, "--public-addr", &listen])
            .args(["--offline-grace", "1s", "--keepalive", "1s"])
            .env("RUST_LOG", "info");
        let mut process = Process::spawn("tgctl", cmd)?;
        let url = wait_for("the control server's login URL", SETTLE, || {
            process.check_running()?;
            Ok(process
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("login URL: ").map(|u| u.trim().to_string())))
        })?;
        Ok(Server {
            process,
            _host: host,
            state,
            url,
        })
    }

    /// Runs an admin command; returns stdout or fails with stderr.
    fn admin(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(TAILGATE)
            .args(["control", "--state-dir"])
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(anyhow!(
                "tailgate control {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A new auth key (single use unless `flags` says otherwise).
    fn authkey(&self, flags: &[&str]) -> Result<String> {
        let mut a = vec!["authkey", "create", "--json"];
        a.extend_from_slice(flags);
        let v: serde_json::Value = serde_json::from_str(&self.admin(&a)?)?;
        v["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no key in {v}"))
    }
}

/// A node daemon in control mode. Field order: the process stops before its namespace and
/// LAN hosts go away.
struct CtlNode {
    process: Process,
    socket: PathBuf,
    config: PathBuf,
    lans: Vec<Netns>,
    host: Host,
    _state: TempDir,
}

impl CtlNode {
    fn start(lab: &Lab, index: u8, control_toml: &str) -> Result<CtlNode> {
        let host = lab.host(index)?;
        let ifname = unique_name("tgc");
        let state = TempDir::new("tgc-state");
        let config = std::env::temp_dir().join(format!("{ifname}.toml"));
        std::fs::write(
            &config,
            format!(
                "[interface]\nname = \"{ifname}\"\nlisten_port = 51820\n\n[control]\nstate_dir = \"{}\"\n{control_toml}",
                state.0.display()
            ),
        )?;
        let socket = PathBuf::from(format!("/run/tailgate/{ifname}.sock"));
        let mut cmd = host.ns.command(TAILGATE);
        cmd.arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--no-xdp")
            .env("RUST_LOG", "info");
        let mut process = Process::spawn(&ifname, cmd)?;
        wait_for("the daemon's control socket", SETTLE, || {
            process.check_running()?;
            Ok(socket.exists().then_some(()))
        })?;
        Ok(CtlNode {
            process,
            socket,
            config,
            lans: Vec::new(),
            host,
            _state: state,
        })
    }

    /// Runs `tailgate <args>` against this daemon; stdout, or the error output.
    fn cli(&self, args: &[&str]) -> std::result::Result<String, String> {
        let out = Command::new(TAILGATE)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn up(
        &self,
        server: &Server,
        key: &str,
        extra: &[&str],
    ) -> std::result::Result<String, String> {
        let mut a = vec!["up", "--login-server", &server.url, "--auth-key", key];
        a.extend_from_slice(extra);
        self.cli(&a)
    }

    fn status(&self) -> Result<Status> {
        let s = self.cli(&["status", "--json"]).map_err(|e| anyhow!(e))?;
        Ok(serde_json::from_str(&s)?)
    }

    /// This node's tailnet IPv4 address.
    fn tailnet_v4(&self) -> Result<String> {
        let st = self.status()?;
        st.control
            .and_then(|c| c.addresses.into_iter().find(|a| !a.contains(':')))
            .ok_or_else(|| anyhow!("no tailnet address yet"))
    }

    /// Waits until `n` peers are configured.
    fn wait_peers(&mut self, n: usize) -> Result<Status> {
        let process = &mut self.process;
        let socket = self.socket.clone();
        wait_for(&format!("{n} peers from the netmap"), SETTLE, || {
            process.check_running()?;
            let out = Command::new(TAILGATE)
                .arg("--socket")
                .arg(&socket)
                .args(["status", "--json"])
                .output()?;
            let st: Status = serde_json::from_slice(&out.stdout)?;
            Ok((st.peers.len() == n).then_some(st))
        })
    }

    /// A LAN host behind this node: `router_cidr` on the node's `lan_if`, `host_cidr` on the
    /// host, default route via the node.
    fn lan_host(&mut self, lan_if: &str, router_cidr: &str, host_cidr: &str) -> Result<()> {
        let ns = Netns::new("tglan")?;
        veth(
            &self.host.ns,
            lan_if,
            &[router_cidr],
            &ns,
            "eth1",
            &[host_cidr],
        )?;
        let gw = router_cidr.split('/').next().unwrap_or(router_cidr);
        ns.ip(&["route", "add", "default", "via", gw])?;
        self.lans.push(ns);
        Ok(())
    }

    fn ping(&self, dst: &str) -> Result<String> {
        ping_from(&self.host.ns, dst)
    }
}

impl Drop for CtlNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ----\n{}",
                self.config.display(),
                self.process.log()
            );
        }
        let _ = std::fs::remove_file(&self.config);
        // A daemon killed with -9 leaves its sockets behind.
        let _ = self.process.stop();
        let _ = std::fs::remove_file(&self.socket);
        if let Some(name) = self.config.file_stem() {
            let uapi = PathBuf::from("/var/run/wireguard")
                .join(name)
                .with_extension("sock");
            let _ = std::fs::remove_file(uapi);
        }
    }
}

fn ping_from(ns: &Netns, dst: &str) -> Result<String> {
    ns.exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", "-w", "8", dst])
}

/// Pings until it answers (a new peer needs a netmap and a handshake first).
fn wait_ping(node: &CtlNode, dst: &str) -> Result<()> {
    let ns = &node.host.ns;
    wait_for(&format!("ping {dst}"), SETTLE, || {
        Ok(ns
            .exec("ping", &["-c", "1", "-W", "1", dst])
            .ok()
            .map(|_| ()))
    })
}

#[test]
fn control_mode_nodes_register_get_addresses_and_ping() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgctl");
    let server = Server::start(&lab, &dir).expect("control server");
    let mut a = CtlNode::start(&lab, 1, "").expect("node a");
    let mut b = CtlNode::start(&lab, 2, "").expect("node b");
    let c = CtlNode::start(&lab, 3, "").expect("node c");
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

    let st = a.wait_peers(2).expect("a sees b and c");
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
    wait_ping(&a, &vb).expect("a → b");
    wait_ping(&b, &vc).expect("b → c");
    wait_ping(&c, &va).expect("c → a");
    a.ping(&vb).expect("a → b again");
    let text = a.cli(&["status"]).unwrap();
    assert!(text.contains("name: bravo (online)"), "{text}");

    // Down: the session stops and peers go; the interface stays; up again (registered, no
    // key needed) brings them back.
    b.cli(&["down"]).expect("down");
    let st = b.wait_peers(0).expect("no peers after down");
    assert_eq!(st.control.map(|c| c.state), Some("stopped".to_string()));
    let addrs = b
        .host
        .ns
        .ip(&["-o", "addr", "show", "dev", &st.interface])
        .unwrap();
    assert!(
        !addrs.contains("100.64.") && !addrs.contains("fd7a:115c:a1e0"),
        "tailnet addresses left after down: {addrs}"
    );
    b.cli(&["up", "--login-server", &server.url, "--hostname", "bravo"])
        .expect("up again without a key");
    b.wait_peers(2).expect("peers back");
    wait_ping(&b, &va).expect("b → a after up");

    // The data plane keeps running on the last netmap while the server is down.
    let server = server;
    server.process.signal(libc::SIGKILL);
    wait_for("the nodes to notice the outage", SETTLE, || {
        let st = a.status()?;
        Ok((st.control.map(|c| c.state) == Some("reconnecting".into())).then_some(()))
    })
    .expect("a notices the outage");
    a.ping(&vb).expect("a → b with the server down");
    c.ping(&va).expect("c → a with the server down");
    assert_eq!(a.status().unwrap().peers.len(), 2);
}

#[test]
fn control_mode_routes_from_the_netmap_use_longest_prefix_match() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgctl");
    let server = Server::start(&lab, &dir).expect("control server");
    let key = server.authkey(&["--reusable"]).unwrap();
    let mut ra = CtlNode::start(&lab, 1, "").expect("router a");
    let mut rb = CtlNode::start(&lab, 2, "").expect("router b");
    let mut client = CtlNode::start(&lab, 3, "").expect("client");
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
    wait_ping(&client, "10.0.1.5").expect("10.0.1.5 via rb (the /24)");
    wait_ping(&client, "10.0.2.5").expect("10.0.2.5 via ra (the /16)");
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

/// Parses `ping -D` output: timestamps of replies.
fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?;
            ts.parse().ok()
        })
        .collect()
}

#[test]
fn node_key_rotation_keeps_the_tunnel_up() {
    require_root();
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgctl");
    let server = Server::start(&lab, &dir).expect("control server");
    let key = server.authkey(&["--reusable"]).unwrap();
    let mut a = CtlNode::start(&lab, 1, "").expect("node a");
    let mut b = CtlNode::start(&lab, 2, "").expect("node b");
    a.up(&server, &key, &["--hostname", "alpha"]).expect("up a");
    b.up(&server, &key, &["--hostname", "bravo"]).expect("up b");
    a.wait_peers(1).unwrap();
    b.wait_peers(1).unwrap();
    let va = a.tailnet_v4().unwrap();
    wait_ping(&b, &va).expect("b → a");
    let old_key = a.status().unwrap().public_key;

    let (times, rotated_at) = ping_around(&b.host.ns, &va, 6, || {
        a.cli(&["up", "--login-server", &server.url, "--rotate-key"])
            .expect("up --rotate-key");
    });
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
    let after = times.iter().filter(|t| **t > rotated_at + 1.0).count();
    let gap = longest_gap(&times);
    println!(
        "node-key rotation: {} replies ({after} more than 1 s after it), longest gap {:.0} ms",
        times.len(),
        gap * 1000.0
    );
    assert!(after > 100, "traffic stopped after the rotation");
    assert!(gap <= 1.0, "longest gap {gap:.3} s during the rotation");
    let _ = (&mut a, &mut b);
}

/// Pings `dst` from `ns` every 10 ms for `secs` seconds and runs `event` after 2 s. Returns
/// the reply timestamps (`ping -D`, Unix seconds) and when the event ran.
fn ping_around(ns: &Netns, dst: &str, secs: u32, event: impl FnOnce()) -> (Vec<f64>, f64) {
    let mut ping = ns
        .command("ping")
        .args([
            "-D",
            "-n",
            "-i",
            "0.01",
            "-W",
            "1",
            "-w",
            &secs.to_string(),
            dst,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    let stdout = ping.stdout.take().expect("ping stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            out.push_str(&l);
            out.push('\n');
        }
        out
    });
    std::thread::sleep(Duration::from_secs(2));
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    event();
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs) + 10);
    while ping.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = ping.kill();
    let _ = ping.wait();
    (reply_times(&reader.join().unwrap_or_default()), at)
}

/// The longest time between consecutive replies, seconds.
fn longest_gap(times: &[f64]) -> f64 {
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max)
}

/// How the primary router fails in an HA test.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// `kill -9` of its daemon.
    Kill9,
    /// Its WAN link (the underlay `eth0`) goes down.
    WanDown,
    /// Its LAN stops answering (the LAN host drops everything), so its LAN health probe
    /// fails while the router itself stays up.
    LanProbe,
}

/// Two routers for 10.0.50.0/24 (r1 preferred), a client pinging a LAN host every 10 ms;
/// after 2 s the primary fails as `failure` says. Returns the longest gap between replies and
/// checks that traffic resumed through r2 within 3 s.
fn ha_failover(failure: Failure) -> Duration {
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgctl");
    let server = Server::start(&lab, &dir).expect("control server");
    let key = server.authkey(&["--reusable"]).unwrap();
    let probe = "health_probe = \"10.0.50.5\"\n";
    let mut r1 = CtlNode::start(&lab, 1, probe).expect("router 1");
    let mut r2 = CtlNode::start(&lab, 2, probe).expect("router 2");
    let mut client = CtlNode::start(&lab, 3, "").expect("client");
    // The same LAN address answers behind both routers.
    r1.lan_host("lan0", "10.0.50.1/24", "10.0.50.5/24").unwrap();
    r2.lan_host("lan0", "10.0.50.1/24", "10.0.50.5/24").unwrap();
    let adv = ["--advertise-routes", "10.0.50.0/24"];
    r1.up(
        &server,
        &key,
        &[&["--hostname", "r1", "--route-priority", "10"][..], &adv].concat(),
    )
    .expect("up r1");
    r2.up(&server, &key, &[&["--hostname", "r2"][..], &adv].concat())
        .expect("up r2");
    client
        .up(&server, &key, &["--hostname", "cl", "--accept-routes"])
        .expect("up client");
    server
        .admin(&["routes", "approve", "r1", "10.0.50.0/24"])
        .unwrap();
    server
        .admin(&["routes", "approve", "r2", "10.0.50.0/24"])
        .unwrap();
    client.wait_peers(2).unwrap();
    wait_ping(&client, "10.0.50.5").expect("LAN host via the primary");
    let primary_of = |client: &CtlNode| -> Result<Option<String>> {
        let st = client.status()?;
        Ok(st
            .peers
            .iter()
            .find(|p| p.primary_routes.as_ref().is_some_and(|r| !r.is_empty()))
            .and_then(|p| p.name.clone()))
    };
    let primary = wait_for("r1 as primary", SETTLE, || primary_of(&client)).unwrap();
    assert_eq!(primary, "r1", "the higher priority wins");

    // Ping every 10 ms for 10 s; the primary fails after 2 s.
    let (times, failed_at) = ping_around(&client.host.ns, "10.0.50.5", 10, || match failure {
        Failure::Kill9 => r1.process.signal(libc::SIGKILL),
        Failure::WanDown => {
            r1.host.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
        }
        Failure::LanProbe => {
            let lan = &r1.lans[0];
            lan.exec("nft", &["add", "table", "inet", "dead"]).unwrap();
            lan.exec(
                "nft",
                &[
                    "add", "chain", "inet", "dead", "input", "{", "type", "filter", "hook",
                    "input", "priority", "0", ";", "policy", "drop", ";", "}",
                ],
            )
            .unwrap();
        }
    });
    let after = times.iter().filter(|t| **t > failed_at).count();
    let gap = longest_gap(&times);
    println!(
        "HA failover, {failure:?}: {} replies ({after} after the failure), longest gap {:.0} ms",
        times.len(),
        gap * 1000.0
    );
    assert!(
        after > 100,
        "traffic did not resume via the standby:\n{}",
        r2.process.log()
    );
    assert!(gap <= 3.0, "longest gap {gap:.3} s exceeds 3 s");
    // The server confirms the switch.
    let now_primary = wait_for("r2 as primary in the netmap", SETTLE, || {
        Ok(primary_of(&client)?.filter(|n| n == "r2"))
    });
    assert!(now_primary.is_ok(), "{now_primary:?}");
    let _ = (&mut r1, &mut r2);
    Duration::from_secs_f64(gap)
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
    let dir = TempDir::new("tgcfg");
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
