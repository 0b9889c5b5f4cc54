//! End-to-end tests of `tailgate control`: the real binary serves on 127.0.0.1 with a temp
//! state dir, admin commands run through the real CLI, and nodes use the client library.
//!
//! Timing assertions are generous bounds (a change must reach a node within 3 s; the design
//! target is well under 1 s) so they hold on a loaded 2-core CI machine. Every test removes its
//! processes and directories on drop, also when it fails.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tailgate::control::admin::{CreatedAuthKey, NodeInfo, RouteInfo, ServerInfo};
use tailgate::control::client::{ClientError, ClientEvent, ClientOptions, ControlClient};
use tailgate::control::login_url::LoginServer;
use tailgate::control::proto::{Health, Hostinfo, NetMap, RefusalCode};
use tailgate::wg::Key;
use tokio::sync::mpsc::UnboundedReceiver;

const BIN: &str = env!("CARGO_BIN_EXE_tailgate");
/// Bound for "a change reaches the other nodes" (target: < 1 s).
const PUSH_BOUND: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Harness

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!("tg-ctl-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn sub(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `tailgate control serve`, killed on drop.
struct Server {
    child: Option<Child>,
    state: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    url: LoginServer,
}

impl Server {
    fn start(dir: &TempDir, listen: &str, extra: &[&str]) -> Server {
        let state = dir.sub("server");
        let log = dir.sub("server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["control", "--state-dir"])
            .arg(&state)
            .args(["serve", "--listen", listen, "--offline-grace", "1s"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawning tailgate control serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut server = Server {
            child: Some(child),
            state,
            log,
            addr: "0.0.0.0:0".parse().unwrap(),
            url: "tg://x:1".parse().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.url.server_key.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("tailgate control server listening on ") {
                        server.addr = a.trim().parse().unwrap();
                    }
                    if let Some(u) = line.strip_prefix("login URL: ") {
                        server.url = u.trim().parse().unwrap();
                    }
                }
                Err(_) => panic!(
                    "server did not start within 30 s; log:\n{}",
                    server.log_text()
                ),
            }
        }
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending SIGTERM to our own child process, whose pid we hold.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(status.success(), "server exited with {status}");
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("server ignored SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Runs an admin command through the CLI and returns its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["control", "--state-dir"])
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tailgate control {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs an admin command expected to fail; returns its stderr.
    fn cli_err(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["control", "--state-dir"])
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "tailgate control {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }

    fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.cli(&a)).unwrap()
    }

    fn authkey(&self, flags: &[&str]) -> String {
        let mut a = vec!["authkey", "create"];
        a.extend_from_slice(flags);
        self.json::<CreatedAuthKey>(&a).key
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.json(&["nodes", "list"])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log_text());
        }
    }
}

fn hostinfo(name: &str, routes: &[&str], prio: u32) -> Hostinfo {
    Hostinfo {
        hostname: name.into(),
        os: "linux".into(),
        advertised_routes: routes.iter().map(|r| r.parse().unwrap()).collect(),
        advertise_exit_node: false,
        route_priority: prio,
        peer_relay_port: None,
    }
}

fn client(server: &Server, dir: &TempDir, name: &str, h: Hostinfo) -> ControlClient {
    let mut opts = ClientOptions::new(server.url.clone(), dir.sub(&format!("node-{name}")), h);
    opts.backoff_initial = Duration::from_millis(100);
    opts.backoff_max = Duration::from_secs(1);
    ControlClient::new(opts).unwrap()
}

/// Waits (bounded) for a netmap satisfying `pred`; returns it.
async fn wait_netmap(
    events: &mut UnboundedReceiver<ClientEvent>,
    bound: Duration,
    what: &str,
    mut pred: impl FnMut(&NetMap) -> bool,
) -> Arc<NetMap> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ClientEvent::NetMap(nm))) if pred(&nm) => return nm,
            Ok(Some(ClientEvent::NeedsLogin(e))) => {
                panic!("needs login while waiting for {what}: {e}")
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended while waiting for {what}"),
            Err(_) => panic!("no netmap with {what} within {bound:?}"),
        }
    }
}

fn primary_name(nm: &NetMap, prefix: &str) -> Option<String> {
    let p = prefix.parse().unwrap();
    if nm
        .self_node
        .routes
        .iter()
        .any(|r| r.primary && r.prefix == p)
    {
        return Some(nm.self_node.name.clone());
    }
    nm.primary_for(&p).map(|n| n.name.clone())
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_with_every_kind_of_auth_key() {
    let dir = TempDir::new("keys");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);

    // Single use: the first machine registers, a second one is refused with the exact error.
    let single = server.authkey(&[]);
    let mut a = client(&server, &dir, "a", hostinfo("web", &[], 0));
    let ra = a.register(Some(&single)).await.unwrap();
    assert!(ra.ipv4.octets()[0] == 100 && (64..128).contains(&ra.ipv4.octets()[1]));
    assert_ne!(
        ra.ipv4,
        "100.100.100.100".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert!(ra.ipv6.to_string().starts_with("fd7a:115c:a1e0:"));
    assert!(ra.key_expiry.is_some());
    let mut b = client(&server, &dir, "b", hostinfo("web", &[], 0));
    match b.register(Some(&single)).await {
        Err(ClientError::Refused(r)) => {
            assert_eq!(r.code, RefusalCode::AuthKeyUsed);
            assert_eq!(r.message, "auth key already used");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Reusable + tagged: several machines; hostname collisions get -1, -2.
    let tagged = server.authkey(&["--reusable", "--tags", "tag:router,tag:lab"]);
    let rb = b.register(Some(&tagged)).await.unwrap();
    let mut c = client(&server, &dir, "c", hostinfo("web", &[], 0));
    let rc = c.register(Some(&tagged)).await.unwrap();
    assert_eq!(
        (ra.name.as_str(), rb.name.as_str(), rc.name.as_str()),
        ("web", "web-1", "web-2")
    );
    assert_eq!(
        rb.tags,
        vec!["tag:router".to_string(), "tag:lab".to_string()]
    );
    assert_eq!(rb.key_expiry, None);
    let ips: BTreeSet<_> = [ra.ipv4, rb.ipv4, rc.ipv4].into_iter().collect();
    assert_eq!(ips.len(), 3);

    // Re-registration keeps the addresses.
    let again = b.register(Some(&tagged)).await.unwrap();
    assert_eq!(again, rb);

    // Unknown and expired keys.
    let mut d = client(&server, &dir, "d", hostinfo("d", &[], 0));
    match d.register(Some("tgkey-000000000000-nope")).await {
        Err(ClientError::Refused(r)) => assert_eq!(r.message, "unknown auth key"),
        other => panic!("{other:?}"),
    }
    let short = server.authkey(&["--expiry", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    match d.register(Some(&short)).await {
        Err(ClientError::Refused(r)) => {
            assert_eq!(r.code, RefusalCode::AuthKeyExpired);
            assert_eq!(r.message, "auth key expired");
        }
        other => panic!("{other:?}"),
    }
    assert!(d.registration().is_none());

    // Ephemeral keys mark the node.
    let eph = server.authkey(&["--ephemeral"]);
    let rd = d.register(Some(&eph)).await.unwrap();
    assert!(rd.ephemeral);

    // The state on disk is 0600 and holds the registration.
    use std::os::unix::fs::PermissionsExt;
    let state = dir.sub("node-a").join("control-node.json");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains(&ra.ipv4.to_string()));

    // The admin views agree.
    let nodes = server.nodes();
    assert_eq!(nodes.len(), 4);
    let keys = server.cli(&["authkey", "list"]);
    assert!(keys.contains("used by"), "{keys}");
    assert!(keys.contains("expired"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netmap_changes_reach_peers_quickly() {
    let dir = TempDir::new("push");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let key = server.authkey(&["--reusable"]);
    let mut a = client(&server, &dir, "a", hostinfo("alpha", &[], 0));
    let mut b = client(&server, &dir, "b", hostinfo("beta", &[], 0));
    a.register(Some(&key)).await.unwrap();
    let rb = b.register(Some(&key)).await.unwrap();
    let b_key = b.node_private_key().public_key();

    let (ha, mut ea) = a.start();
    let nm = wait_netmap(&mut ea, PUSH_BOUND, "beta offline", |nm| {
        nm.peer(rb.node_id).is_some_and(|p| !p.online)
    })
    .await;
    assert_eq!(nm.self_node.name, "alpha");
    assert_eq!(nm.dns.domain, "tailnet.internal");
    assert_eq!(nm.peers[0].node_key, b_key);

    // beta comes online with an endpoint: alpha hears of it.
    let (hb, mut eb) = b.start();
    let ep: SocketAddr = "192.0.2.10:41641".parse().unwrap();
    let t0 = Instant::now();
    hb.set_endpoints(vec![ep]);
    wait_netmap(&mut ea, PUSH_BOUND, "beta online with endpoint", |nm| {
        nm.peer(rb.node_id)
            .is_some_and(|p| p.online && p.endpoints == vec![ep])
    })
    .await;
    eprintln!("endpoint change reached the peer in {:?}", t0.elapsed());
    wait_netmap(&mut eb, PUSH_BOUND, "alpha online", |nm| {
        nm.peers.iter().any(|p| p.name == "alpha" && p.online)
    })
    .await;

    // Endpoint change while online.
    let ep2: SocketAddr = "[2001:db8::1]:41641".parse().unwrap();
    let t0 = Instant::now();
    hb.set_endpoints(vec![ep, ep2]);
    wait_netmap(&mut ea, PUSH_BOUND, "two endpoints", |nm| {
        nm.peer(rb.node_id).is_some_and(|p| p.endpoints.len() == 2)
    })
    .await;
    eprintln!(
        "second endpoint change reached the peer in {:?}",
        t0.elapsed()
    );

    // beta leaves: offline after the 1 s grace.
    let t0 = Instant::now();
    hb.shutdown().await;
    wait_netmap(
        &mut ea,
        PUSH_BOUND + Duration::from_secs(1),
        "beta offline again",
        |nm| {
            nm.peer(rb.node_id)
                .is_some_and(|p| !p.online && p.last_seen.is_some())
        },
    )
    .await;
    eprintln!("offline (1 s grace) reached the peer in {:?}", t0.elapsed());
    ha.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_node_disappears_after_going_offline() {
    let dir = TempDir::new("eph");
    let server = Server::start(&dir, "127.0.0.1:0", &["--ephemeral-grace", "1s"]);
    let mut keep = client(&server, &dir, "keep", hostinfo("keeper", &[], 0));
    keep.register(Some(&server.authkey(&[]))).await.unwrap();
    let mut eph = client(&server, &dir, "eph", hostinfo("temp", &[], 0));
    let r = eph
        .register(Some(&server.authkey(&["--ephemeral"])))
        .await
        .unwrap();
    let (hk, mut ek) = keep.start();
    let (he, _ee) = eph.start();
    wait_netmap(&mut ek, PUSH_BOUND, "temp online", |nm| {
        nm.peer(r.node_id).is_some_and(|p| p.online && p.ephemeral)
    })
    .await;
    he.shutdown().await;
    wait_netmap(&mut ek, Duration::from_secs(6), "temp gone", |nm| {
        nm.peer(r.node_id).is_none()
    })
    .await;
    assert!(server.nodes().iter().all(|n| n.id != r.node_id));
    // It cannot come back without a new key.
    let mut eph = client(&server, &dir, "eph", hostinfo("temp", &[], 0));
    match eph.register(None).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, RefusalCode::AuthKeyRequired),
        other => panic!("{other:?}"),
    }
    hk.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_primary_election_failover_and_hold_down() {
    const LAN: &str = "192.168.1.0/24";
    let dir = TempDir::new("ha");
    let server = Server::start(&dir, "127.0.0.1:0", &["--hold-down", "4s"]);
    let key = server.authkey(&["--reusable"]);
    let mut ra = client(&server, &dir, "ra", hostinfo("router-a", &[LAN], 10));
    let mut rb = client(&server, &dir, "rb", hostinfo("router-b", &[LAN], 5));
    let mut obs = client(&server, &dir, "obs", hostinfo("laptop", &[], 0));
    for c in [&mut ra, &mut rb, &mut obs] {
        c.register(Some(&key)).await.unwrap();
    }
    let out = server.cli(&["routes", "list"]);
    assert!(out.contains("router-a") && out.contains(LAN), "{out}");
    for r in ["router-a", "router-b"] {
        let routes: Vec<RouteInfo> = server.json(&["routes", "approve", r, LAN]);
        assert!(routes.iter().all(|x| x.approved));
    }
    let ra_id = ra.registration().unwrap().node_id;

    let (ho, mut eo) = obs.start();
    let (hb, _eb) = rb.start();
    let (ha, _ea) = ra.start();
    // Both online: router-a (priority 10) ends up primary. router-b connected first and took
    // the prefix, so router-a takes over once it has been eligible for the 4 s hold-down.
    let nm = wait_netmap(&mut eo, Duration::from_secs(8), "router-a primary", |nm| {
        primary_name(nm, LAN).as_deref() == Some("router-a")
    })
    .await;
    let pa = nm.peer(ra_id).unwrap();
    assert!(pa.allowed_ips.contains(&LAN.parse().unwrap()));
    assert_eq!(pa.route_priority, 10);

    // Kill router-a's session: router-b immediately.
    let t0 = Instant::now();
    ha.shutdown().await;
    let nm = wait_netmap(&mut eo, PUSH_BOUND, "router-b primary after a left", |nm| {
        primary_name(nm, LAN).as_deref() == Some("router-b")
    })
    .await;
    eprintln!(
        "failover on disconnect seen by the client after {:?}",
        t0.elapsed()
    );
    assert!(!nm
        .peer(ra_id)
        .unwrap()
        .allowed_ips
        .contains(&LAN.parse().unwrap()));
    wait_netmap(
        &mut eo,
        PUSH_BOUND + Duration::from_secs(1),
        "router-a offline",
        |nm| nm.peer(ra_id).is_some_and(|p| !p.online),
    )
    .await;

    // router-a returns: no flap-back inside the 4 s hold-down, switch-back after it.
    let (ha, _ea) = ra_restart(&server, &dir).start();
    let back = Instant::now();
    let nm = wait_netmap(&mut eo, PUSH_BOUND, "router-a online again", |nm| {
        nm.peer(ra_id)
            .is_some_and(|p| p.online && p.routes.iter().any(|r| r.approved))
    })
    .await;
    assert_eq!(primary_name(&nm, LAN).as_deref(), Some("router-b"));
    let mut seen_flap = false;
    let nm = wait_netmap(
        &mut eo,
        Duration::from_secs(4) + PUSH_BOUND + Duration::from_secs(2),
        "switch back",
        |nm| {
            let p = primary_name(nm, LAN);
            if p.as_deref() == Some("router-a") && back.elapsed() < Duration::from_millis(3500) {
                seen_flap = true;
            }
            p.as_deref() == Some("router-a")
        },
    )
    .await;
    assert!(!seen_flap, "switched back inside the hold-down");
    eprintln!("switch-back after {:?} (hold-down 4 s)", back.elapsed());
    assert!(nm
        .peer(ra_id)
        .unwrap()
        .allowed_ips
        .contains(&LAN.parse().unwrap()));

    // router-a's LAN probe fails: router-b at once.
    let t0 = Instant::now();
    ha.set_health(Health {
        lan_ok: false,
        detail: Some("ping 192.168.1.1: timeout".into()),
    });
    wait_netmap(
        &mut eo,
        PUSH_BOUND,
        "router-b primary after LAN failure",
        |nm| {
            primary_name(nm, LAN).as_deref() == Some("router-b")
                && nm.peer(ra_id).is_some_and(|p| !p.lan_ok)
        },
    )
    .await;
    eprintln!(
        "failover on LAN health seen by the client after {:?}",
        t0.elapsed()
    );
    let routes: Vec<RouteInfo> = server.json(&["routes", "list"]);
    let a_route = routes.iter().find(|r| r.node == "router-a").unwrap();
    assert!(!a_route.lan_ok && !a_route.primary);

    // Unapproving router-b's route leaves router-a (unhealthy) out: no primary at all.
    server.cli(&["routes", "unapprove", "router-b", LAN]);
    wait_netmap(&mut eo, PUSH_BOUND, "no primary", |nm| {
        primary_name(nm, LAN).is_none()
    })
    .await;
    // LAN recovers: router-a is the only candidate and takes over without hold-down.
    ha.set_health(Health::default());
    wait_netmap(&mut eo, PUSH_BOUND, "router-a primary again", |nm| {
        primary_name(nm, LAN).as_deref() == Some("router-a")
    })
    .await;
    ha.shutdown().await;
    hb.shutdown().await;
    ho.shutdown().await;
}

/// A fresh client object for router-a's existing state dir (as after a daemon restart).
fn ra_restart(server: &Server, dir: &TempDir) -> ControlClient {
    client(
        server,
        dir,
        "ra",
        hostinfo("router-a", &["192.168.1.0/24"], 10),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_approvers_from_a_hujson_policy() {
    let dir = TempDir::new("policy");
    let policy = dir.sub("policy.hujson");
    std::fs::write(
        &policy,
        r#"{
            // Routers tagged tag:router may serve the office LANs without an admin.
            "groups": {"group:ops": ["ops@example.com",],},
            "autoApprovers": {
                "routes": {
                    "10.10.0.0/16": ["tag:router", "group:ops"], /* both sites */
                },
                "exitNode": ["tag:exit",],
            },
        }"#,
    )
    .unwrap();
    let server = Server::start(&dir, "127.0.0.1:0", &["--policy", policy.to_str().unwrap()]);
    let router_key = server.authkey(&["--tags", "tag:router"]);
    let exit_key = server.authkey(&["--tags", "tag:exit"]);
    let plain_key = server.authkey(&["--reusable"]);
    let mut r = client(
        &server,
        &dir,
        "r",
        hostinfo("site-router", &["10.10.1.0/24", "172.16.0.0/12"], 0),
    );
    r.register(Some(&router_key)).await.unwrap();
    let mut eh = hostinfo("exit", &[], 0);
    eh.advertise_exit_node = true;
    let mut e = client(&server, &dir, "e", eh);
    e.register(Some(&exit_key)).await.unwrap();
    let mut u = client(
        &server,
        &dir,
        "u",
        hostinfo("user-box", &["10.10.2.0/24"], 0),
    );
    u.register(Some(&plain_key)).await.unwrap();

    let routes: Vec<RouteInfo> = server.json(&["routes", "list"]);
    let approved = |node: &str, prefix: &str| {
        routes
            .iter()
            .find(|x| x.node == node && x.prefix.to_string() == prefix)
            .map(|x| x.approved)
    };
    assert_eq!(approved("site-router", "10.10.1.0/24"), Some(true));
    assert_eq!(approved("site-router", "172.16.0.0/12"), Some(false));
    assert_eq!(approved("exit", "0.0.0.0/0"), Some(true));
    assert_eq!(approved("exit", "::/0"), Some(true));
    assert_eq!(approved("user-box", "10.10.2.0/24"), Some(false));

    let (hr, _er) = r.start();
    let (he, _ee) = e.start();
    let (hu, mut eu) = u.start();
    let nm = wait_netmap(&mut eu, PUSH_BOUND, "routes from the policy", |nm| {
        nm.peer_by_name("site-router").is_some_and(|p| p.online)
            && nm.peer_by_name("exit").is_some_and(|p| p.online)
    })
    .await;
    let router = nm.peer_by_name("site-router").unwrap();
    assert!(router
        .allowed_ips
        .contains(&"10.10.1.0/24".parse().unwrap()));
    assert!(!router
        .allowed_ips
        .contains(&"172.16.0.0/12".parse().unwrap()));
    let exit = nm.peer_by_name("exit").unwrap();
    assert!(exit.exit_node);
    assert!(exit.allowed_ips.contains(&"0.0.0.0/0".parse().unwrap()));
    // The policy never approves wider than it says.
    assert!(nm.self_node.routes.iter().all(|r| !r.approved));
    hr.shutdown().await;
    he.shutdown().await;
    hu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_and_kill9_and_clients_reconnect() {
    const LAN: &str = "10.1.0.0/24";
    let dir = TempDir::new("restart");
    let mut server = Server::start(&dir, "127.0.0.1:0", &["--startup-grace", "5s"]);
    let listen = server.addr.to_string();
    let url_before = server.url.clone();
    let key = server.authkey(&["--reusable", "--tags", "tag:router"]);
    let mut a = client(&server, &dir, "a", hostinfo("router-a", &[LAN], 0));
    let mut b = client(&server, &dir, "b", hostinfo("router-b", &[LAN], 0));
    let ra = a.register(Some(&key)).await.unwrap();
    let rb = b.register(Some(&key)).await.unwrap();
    server.cli(&["routes", "approve", "router-a", LAN]);
    server.cli(&["routes", "approve", "router-b", LAN]);
    let (ha, mut ea) = a.start();
    wait_netmap(&mut ea, PUSH_BOUND, "router-a primary", |nm| {
        primary_name(nm, LAN).as_deref() == Some("router-a")
    })
    .await;
    let (hb, mut eb) = b.start();
    wait_netmap(&mut eb, PUSH_BOUND, "router-a online", |nm| {
        nm.peer(ra.node_id).is_some_and(|p| p.online)
    })
    .await;
    let before = server.nodes();

    for (round, hard) in [(1, true), (2, false)] {
        // Down: kill -9 (round 1) or SIGTERM (round 2).
        if hard {
            server.kill9();
        } else {
            server.terminate();
        }
        // Clients notice and back off (bounded by the 1 s cap, ±20 % jitter).
        let mut retries = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, ea.recv()).await {
            if let ClientEvent::Disconnected { retry_in, .. } = ev {
                retries.push(retry_in);
            }
        }
        assert!(retries.len() >= 3, "round {round}: retries {retries:?}");
        assert!(
            retries.iter().all(|d| *d <= Duration::from_millis(1200)),
            "{retries:?}"
        );
        assert!(
            retries.last() > retries.first(),
            "backoff grows: {retries:?}"
        );

        // Up again on the same port and state.
        server = Server::start(&dir, &listen, &["--startup-grace", "5s"]);
        assert_eq!(server.url, url_before, "round {round}: server key kept");
        let t0 = Instant::now();
        let nm = wait_netmap(&mut ea, Duration::from_secs(10), "reconnected", |nm| {
            nm.peer(rb.node_id).is_some_and(|p| p.online)
        })
        .await;
        eprintln!("round {round}: both clients back after {:?}", t0.elapsed());
        // The persisted primary kept its role through the restart.
        assert_eq!(
            primary_name(&nm, LAN).as_deref(),
            Some("router-a"),
            "round {round}"
        );
        assert_eq!(nm.self_node.ipv4(), Some(ra.ipv4));
        let after = server.nodes();
        assert_eq!(after.len(), before.len());
        for (x, y) in before.iter().zip(&after) {
            assert_eq!(
                (x.id, &x.name, x.ipv4, x.ipv6, &x.node_key),
                (y.id, &y.name, y.ipv4, y.ipv6, &y.node_key)
            );
            assert_eq!(
                x.routes
                    .iter()
                    .map(|r| (r.prefix, r.approved))
                    .collect::<Vec<_>>(),
                y.routes
                    .iter()
                    .map(|r| (r.prefix, r.approved))
                    .collect::<Vec<_>>()
            );
        }
        // Registration still valid without an auth key.
        let mut again = client(&server, &dir, "c", hostinfo("c", &[], 0));
        again.register(Some(&key)).await.unwrap();
        server.cli(&["nodes", "delete", "c"]);
    }
    ha.shutdown().await;
    hb.shutdown().await;
    let info: ServerInfo = server.json(&["info"]);
    assert_eq!(info.nodes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_never_crashes_the_server() {
    let dir = TempDir::new("fuzz");
    let mut server = Server::start(&dir, "127.0.0.1:0", &["--keepalive", "1s"]);
    let addr = server.addr;
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        sink
    };
    // Garbage, a web browser, truncated preludes, absurd lengths, junk handshakes.
    let http = send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(String::from_utf8_lossy(&http).contains("tailgate coordination server"));
    for case in [
        &b""[..],
        b"\x00",
        b"TGC1",
        b"TGC1X",
        b"TGC1N",
        b"TGC1N\x00\x00",
        b"TGC1N\xff\xff",
        b"TGC1N\x00\x05hello",
        b"TGC1N\x00\x30AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        send(case);
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..40 {
        let mut buf = b"TGC1N".to_vec();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 300) as usize;
        for i in 0..len {
            buf.push((seed >> (i % 56)) as u8 ^ i as u8);
        }
        send(&buf);
    }
    // A proper handshake followed by frames that do not decrypt or break the framing: the
    // server closes the connection.
    use tailgate::control::transport::client_handshake;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server_key = server.url.server_key.unwrap();
    for junk in [
        &b"\x00\x20aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
        b"\x00\x01a",
        b"\x00\x00",
        b"\xff\xff\x00",
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        client_handshake(&mut stream, &Key::generate_private(), &server_key)
            .await
            .unwrap();
        stream.write_all(junk).await.unwrap();
        let mut sink = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "server kept a connection open after junk {junk:?}"
        );
    }
    // Valid encryption, invalid messages: the server answers with an error and closes.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut conn, _) = client_handshake(stream, &Key::generate_private(), &server_key)
        .await
        .unwrap();
    conn.writer
        .send_raw(b"{\"type\":\"update\"}")
        .await
        .unwrap();
    let answer = conn
        .reader
        .recv(tailgate::control::proto::decode_server_message)
        .await
        .unwrap();
    assert!(
        matches!(answer, tailgate::control::proto::ServerMessage::Error(_)),
        "{answer:?}"
    );
    // A raw junk frame after the handshake (the writer's framing bypassed).
    {
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"TGC1N\x00\x60").await.unwrap();
        raw.write_all(&[7u8; 0x60]).await.unwrap();
        raw.write_all(&[0xff; 64]).await.unwrap();
    }
    // Session without registration.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut conn, _) = client_handshake(stream, &Key::generate_private(), &server_key)
        .await
        .unwrap();
    conn.writer
        .send(&tailgate::control::proto::ClientMessage::StartSession(
            Default::default(),
        ))
        .await
        .unwrap();
    match conn
        .reader
        .recv(tailgate::control::proto::decode_server_message)
        .await
        .unwrap()
    {
        tailgate::control::proto::ServerMessage::Error(e) => {
            assert_eq!(e.code, tailgate::control::proto::ErrorCode::NotRegistered)
        }
        other => panic!("{other:?}"),
    }

    // A wrong pinned key fails the handshake with a clear error.
    let mut opts = ClientOptions::new(
        server.url.with_key(Key::generate_private().public_key()),
        dir.sub("node-wrong2"),
        hostinfo("w", &[], 0),
    );
    opts.backoff_max = Duration::from_secs(1);
    let mut wrong = ControlClient::new(opts).unwrap();
    let e = wrong.register(Some("tgkey-x-y")).await.unwrap_err();
    assert!(e.to_string().contains("handshake failed"), "{e}");

    // Still alive and serving.
    assert!(server.alive(), "server died; log:\n{}", server.log_text());
    let mut ok = client(&server, &dir, "ok", hostinfo("fine", &[], 0));
    ok.register(Some(&server.authkey(&[]))).await.unwrap();
    assert!(server.alive());
    assert!(server.pid() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_and_admin_cli() {
    let dir = TempDir::new("cli");
    let server = Server::start(&dir, "127.0.0.1:0", &["--domain", "corp.internal"]);
    // TOFU: no key in the URL; the client fetches and pins it.
    let bare: LoginServer = format!("tg://{}", server.addr).parse().unwrap();
    let mut c = ControlClient::new(ClientOptions::new(
        bare.clone(),
        dir.sub("node-tofu"),
        hostinfo("tofu", &["10.9.0.0/16"], 3),
    ))
    .unwrap();
    let reg = c.register(Some(&server.authkey(&[]))).await.unwrap();
    assert_eq!(reg.fqdn, "tofu.corp.internal");
    assert_eq!(c.state().server_key, server.url.server_key);
    // A different key for the same server is refused against the pin.
    let other = bare.with_key(Key::generate_private().public_key());
    let err = ControlClient::new(ClientOptions::new(
        other,
        dir.sub("node-tofu"),
        hostinfo("tofu", &[], 0),
    ))
    .err()
    .unwrap();
    assert!(err.to_string().contains("differs"), "{err}");

    // Human tables and JSON.
    let info = server.cli(&["info"]);
    assert!(info.contains(&server.url.to_string()), "{info}");
    let users = server.cli(&["users", "create", "alice@example.com"]);
    assert!(users.contains("created user alice@example.com"), "{users}");
    let users = server.cli(&["users", "list"]);
    assert!(
        users.starts_with("ID") && users.contains("alice@example.com") && users.contains("default"),
        "{users}"
    );
    let err = server.cli_err(&["users", "create", "alice@example.com"]);
    assert!(err.contains("already exists"), "{err}");
    let alice_key = server.authkey(&["--user", "alice@example.com"]);
    assert!(alice_key.starts_with("tgkey-"));
    let err = server.cli_err(&["authkey", "create", "--user", "bob"]);
    assert!(err.contains("unknown user"), "{err}");
    let err = server.cli_err(&["authkey", "create", "--tags", "router"]);
    assert!(err.contains("tag:NAME"), "{err}");
    let nodes = server.cli(&["nodes", "list"]);
    assert!(
        nodes.starts_with("ID") && nodes.contains("tofu") && nodes.contains("100.64."),
        "{nodes}"
    );
    let routes = server.cli(&["routes", "list", "--node", "tofu"]);
    assert!(
        routes.contains("10.9.0.0/16") && routes.contains("no"),
        "{routes}"
    );
    let routes: Vec<RouteInfo> = server.json(&["routes", "approve", "tofu", "10.9.0.0/16"]);
    assert!(routes[0].approved && routes[0].priority == 3);
    let err = server.cli_err(&["nodes", "expire", "ghost"]);
    assert!(err.contains("no node"), "{err}");
    let expired: NodeInfo = server.json(&["nodes", "expire", "tofu"]);
    assert!(expired.expired);
    match c.register(None).await {
        Err(ClientError::Refused(r)) => assert!(r.message.contains("expired"), "{}", r.message),
        other => panic!("{other:?}"),
    }
    server.cli(&["nodes", "delete", &expired.id.to_string()]);
    assert!(server.nodes().is_empty());

    // Help texts explain.
    let help = Command::new(BIN)
        .args(["control", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("serve") && help.contains("authkey") && help.contains("routes"),
        "{help}"
    );
    let help = Command::new(BIN)
        .args(["control", "serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--hold-down") && help.contains("priority"),
        "{help}"
    );

    // Admin commands without a server say so.
    let out = Command::new(BIN)
        .args(["control", "--state-dir"])
        .arg(dir.sub("nothing-here"))
        .args(["nodes", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tailgate control serve"));
}
