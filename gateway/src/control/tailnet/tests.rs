//! Unit tests of the control-plane core on a synthetic clock.

use super::*;
use crate::control::proto::RouteState;
use crate::derp::map::RelayMap;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "tg-tailnet-{tag}-{}-{}",
            std::process::id(),
            unix_now_ms() ^ u64::from(OsRng.next_u32())
        ));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HOLD: Duration = Duration::from_secs(30);

fn cfg() -> TailnetConfig {
    TailnetConfig {
        hold_down: HOLD,
        offline_grace: Duration::from_secs(5),
        ephemeral_grace: Duration::from_secs(10),
        startup_grace: Duration::from_secs(15),
        ..TailnetConfig::default()
    }
}

fn open(dir: &TempDir, cfg: TailnetConfig, now: Instant) -> Tailnet {
    Tailnet::new(Store::open(&dir.0).unwrap(), cfg, now).unwrap()
}

struct Machine {
    key: Key,
    node_key: Key,
}

fn machine() -> Machine {
    Machine {
        key: Key::generate_private().public_key(),
        node_key: Key::generate_private().public_key(),
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

fn register(
    t: &mut Tailnet,
    m: &Machine,
    key: Option<&str>,
    h: Hostinfo,
    now: Instant,
) -> RegisterResponse {
    t.register(
        &m.key,
        &RegisterRequest {
            auth_key: key.map(str::to_string),
            node_key: m.node_key,
            hostinfo: h,
        },
        now,
    )
}

fn ok(r: RegisterResponse) -> Registration {
    match r {
        RegisterResponse::Registered(r) => r,
        RegisterResponse::Refused(e) => panic!("refused: {e}"),
    }
}

fn refused(r: RegisterResponse) -> Refusal {
    match r {
        RegisterResponse::Refused(e) => e,
        RegisterResponse::Registered(r) => panic!("registered {r:?}"),
    }
}

fn key(t: &mut Tailnet, reusable: bool, ephemeral: bool, tags: &[&str]) -> String {
    let tags: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
    t.create_auth_key("default", reusable, ephemeral, &tags, None)
        .unwrap()
        .key
}

fn latest(t: &SessionTicket) -> Option<Arc<NetMap>> {
    match &*t.pushes.borrow() {
        Push::NetMap(nm) => Some(nm.clone()),
        _ => None,
    }
}

fn primary_of(t: &Tailnet, prefix: &str) -> Option<String> {
    let p: IpNet = prefix.parse().unwrap();
    t.primaries.get(&p).map(|id| t.nodes[id].rec.name.clone())
}

#[test]
fn auth_key_kinds_and_exact_refusals() {
    let dir = TempDir::new("keys");
    let now = Instant::now();
    let mut t = open(&dir, cfg(), now);
    let single = key(&mut t, false, false, &[]);
    let (a, b) = (machine(), machine());
    let reg = ok(register(
        &mut t,
        &a,
        Some(&single),
        hostinfo("a", &[], 0),
        now,
    ));
    assert!(reg.key_expiry.is_some(), "untagged nodes expire");
    // The same machine may retry with its key (lost answer); another may not.
    ok(register(
        &mut t,
        &a,
        Some(&single),
        hostinfo("a", &[], 0),
        now,
    ));
    let e = refused(register(
        &mut t,
        &b,
        Some(&single),
        hostinfo("b", &[], 0),
        now,
    ));
    assert_eq!(
        (e.code, e.message.as_str()),
        (RefusalCode::AuthKeyUsed, "auth key already used")
    );

    let reusable = key(&mut t, true, false, &["tag:router"]);
    let r1 = ok(register(
        &mut t,
        &b,
        Some(&reusable),
        hostinfo("b", &[], 0),
        now,
    ));
    let r2 = ok(register(
        &mut t,
        &machine(),
        Some(&reusable),
        hostinfo("c", &[], 0),
        now,
    ));
    assert_eq!(r1.tags, vec!["tag:router".to_string()]);
    assert_eq!(r1.key_expiry, None, "tagged nodes do not expire");
    assert_ne!(r1.node_id, r2.node_id);

    let e = refused(register(
        &mut t,
        &machine(),
        Some("tgkey-0000-0000"),
        hostinfo("x", &[], 0),
        now,
    ));
    assert_eq!(
        (e.code, e.message.as_str()),
        (RefusalCode::UnknownAuthKey, "unknown auth key")
    );
    let e = refused(register(
        &mut t,
        &machine(),
        Some("garbage"),
        hostinfo("x", &[], 0),
        now,
    ));
    assert_eq!(e.message, "unknown auth key");
    // The last character changed (to one it is not).
    let last = if single.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &single[..single.len() - 1]);
    let e = refused(register(
        &mut t,
        &machine(),
        Some(&tampered),
        hostinfo("x", &[], 0),
        now,
    ));
    assert_eq!(e.code, RefusalCode::UnknownAuthKey);

    // Expired: write one straight into the store.
    let user = t.store.user_by_name("default").unwrap().unwrap();
    t.store
        .insert_auth_key(
            "old",
            &sha256(b"s3cret"),
            &user,
            true,
            false,
            &[],
            Some(unix_now() - 1),
        )
        .unwrap();
    let e = refused(register(
        &mut t,
        &machine(),
        Some("tgkey-old-s3cret"),
        hostinfo("x", &[], 0),
        now,
    ));
    assert_eq!(
        (e.code, e.message.as_str()),
        (RefusalCode::AuthKeyExpired, "auth key expired")
    );

    // No key for an unknown machine.
    let e = refused(register(
        &mut t,
        &machine(),
        None,
        hostinfo("x", &[], 0),
        now,
    ));
    assert_eq!(e.code, RefusalCode::AuthKeyRequired);

    // Revoked.
    let k = key(&mut t, true, false, &[]);
    let id = k
        .trim_start_matches("tgkey-")
        .split('-')
        .next()
        .unwrap()
        .to_string();
    assert!(matches!(
        t.handle_admin(AdminRequest::AuthkeyRevoke { id }, now),
        AdminResponse::Ok(_)
    ));
    let e = refused(register(
        &mut t,
        &machine(),
        Some(&k),
        hostinfo("x", &[], 0),
        now,
    ));
    assert_eq!(e.code, RefusalCode::UnknownAuthKey);

    // Bad tags and unknown users are refused at creation.
    assert!(t
        .create_auth_key("default", false, false, &["router".into()], None)
        .is_err());
    assert!(t
        .create_auth_key("nobody", false, false, &[], None)
        .is_err());
}

#[test]
fn addresses_are_stable_and_hostnames_unique() {
    let dir = TempDir::new("addr");
    let now = Instant::now();
    let (m1, m2, m3) = (machine(), machine(), machine());
    let (r1, r2, r3);
    {
        let mut t = open(&dir, cfg(), now);
        let k = key(&mut t, true, false, &[]);
        r1 = ok(register(
            &mut t,
            &m1,
            Some(&k),
            hostinfo("Web.local", &[], 0),
            now,
        ));
        r2 = ok(register(
            &mut t,
            &m2,
            Some(&k),
            hostinfo("web", &[], 0),
            now,
        ));
        r3 = ok(register(
            &mut t,
            &m3,
            Some(&k),
            hostinfo("web", &[], 0),
            now,
        ));
        assert_eq!(
            (r1.name.as_str(), r2.name.as_str(), r3.name.as_str()),
            ("web", "web-1", "web-2")
        );
        assert_eq!(r1.ipv4, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(
            r1.ipv6,
            "fd7a:115c:a1e0::6440:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_ne!(r1.ipv4, r2.ipv4);
        assert_eq!(r1.fqdn, "web.tailnet.internal");
        // Re-registration keeps id, name and addresses.
        let again = ok(register(
            &mut t,
            &m2,
            Some(&k),
            hostinfo("web", &[], 0),
            now,
        ));
        assert_eq!(again, r2);
    }
    // …and so does a restart.
    let mut t = open(&dir, cfg(), now);
    let again = ok(register(&mut t, &m3, None, hostinfo("web", &[], 0), now));
    assert_eq!(again, r3);
    // Deleting frees the name, not the others' addresses.
    t.delete_node("web", now).unwrap();
    let k = key(&mut t, false, false, &[]);
    let new = ok(register(
        &mut t,
        &machine(),
        Some(&k),
        hostinfo("web", &[], 0),
        now,
    ));
    assert_eq!(new.name, "web");
    assert_ne!(new.ipv4, r2.ipv4);
    assert_ne!(new.ipv4, r3.ipv4);
}

#[test]
fn allocation_skips_reserved_addresses() {
    let mut used = HashSet::new();
    assert_eq!(allocate_ipv4(&used), Some(Ipv4Addr::new(100, 64, 0, 1)));
    for i in 1..=254 {
        used.insert(Ipv4Addr::new(100, 64, 0, i));
    }
    assert_eq!(allocate_ipv4(&used), Some(Ipv4Addr::new(100, 64, 1, 1)));
    // Fill everything below 100.100.100.100 and check it is skipped.
    let mut used = HashSet::new();
    let start = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    let quad = u32::from(QUAD100);
    for a in start..quad {
        used.insert(Ipv4Addr::from(a));
    }
    assert_eq!(
        allocate_ipv4(&used),
        Some(Ipv4Addr::new(100, 100, 100, 101))
    );
}

#[test]
fn netmaps_are_pushed_on_changes() {
    let dir = TempDir::new("push");
    let now = Instant::now();
    let mut t = open(&dir, cfg(), now);
    let k = key(&mut t, true, false, &[]);
    let (a, b) = (machine(), machine());
    ok(register(&mut t, &a, Some(&k), hostinfo("a", &[], 0), now));
    let rb = ok(register(&mut t, &b, Some(&k), hostinfo("b", &[], 0), now));
    let ta = t.attach(&a.key, &NodeUpdate::default(), now).unwrap();
    let nm1 = latest(&ta).unwrap();
    assert_eq!(nm1.self_node.name, "a");
    let pb = nm1.peer(rb.node_id).unwrap();
    assert!(!pb.online);
    assert_eq!(pb.node_key, b.node_key);
    assert_eq!(pb.allowed_ips.len(), 2);

    let ep: SocketAddr = "192.0.2.7:41641".parse().unwrap();
    let tb = t
        .attach(
            &b.key,
            &NodeUpdate {
                endpoints: Some(vec![ep]),
                ..NodeUpdate::default()
            },
            now,
        )
        .unwrap();
    let nm2 = latest(&ta).unwrap();
    assert!(nm2.version > nm1.version);
    let pb = nm2.peer(rb.node_id).unwrap();
    assert!(pb.online);
    assert_eq!(pb.endpoints, vec![ep]);

    // Nothing changed: no new version.
    t.tick(now + Duration::from_millis(1));
    assert_eq!(latest(&ta).unwrap().version, nm2.version);

    // b disconnects: still online during the grace, offline after it.
    t.detach(tb.node_id, tb.generation, now);
    assert!(latest(&ta).unwrap().peer(rb.node_id).unwrap().online);
    let d = t.next_deadline(now).unwrap();
    assert_eq!(d, now + Duration::from_secs(5));
    t.tick(d);
    let nm = latest(&ta).unwrap();
    assert!(!nm.peer(rb.node_id).unwrap().online);
    assert!(nm.peer(rb.node_id).unwrap().last_seen.is_some());
}

#[test]
fn ephemeral_nodes_vanish_after_the_grace() {
    let dir = TempDir::new("eph");
    let now = Instant::now();
    let mut t = open(&dir, cfg(), now);
    let k = key(&mut t, false, true, &[]);
    let m = machine();
    let r = ok(register(&mut t, &m, Some(&k), hostinfo("eph", &[], 0), now));
    assert!(r.ephemeral);
    let s = t.attach(&m.key, &NodeUpdate::default(), now).unwrap();
    t.detach(s.node_id, s.generation, now);
    t.tick(now + Duration::from_secs(9));
    assert!(t.nodes.contains_key(&r.node_id));
    // A reconnect within the grace keeps it.
    let s = t
        .attach(&m.key, &NodeUpdate::default(), now + Duration::from_secs(9))
        .unwrap();
    t.tick(now + Duration::from_secs(30));
    assert!(t.nodes.contains_key(&r.node_id));
    t.detach(s.node_id, s.generation, now + Duration::from_secs(30));
    assert!(t.next_deadline(now + Duration::from_secs(30)).is_some());
    t.tick(now + Duration::from_secs(40));
    assert!(!t.nodes.contains_key(&r.node_id));
    // Gone from the store too.
    let t2 = open(&dir, cfg(), now);
    assert!(t2.nodes.is_empty());
    let e = refused(register(&mut t, &m, None, hostinfo("eph", &[], 0), now));
    assert_eq!(e.code, RefusalCode::AuthKeyRequired);
}

struct Ha {
    _dir: TempDir,
    t: Tailnet,
    now: Instant,
    a: Machine,
    b: Machine,
}

/// Two routers for 192.168.1.0/24: `a` priority `pa`, `b` priority `pb`, both approved,
/// `a` registered first.
fn ha(pa: u32, pb: u32) -> Ha {
    let dir = TempDir::new("ha");
    let now = Instant::now();
    let mut t = open(&dir, cfg(), now);
    let k = key(&mut t, true, false, &[]);
    let (a, b) = (machine(), machine());
    ok(register(
        &mut t,
        &a,
        Some(&k),
        hostinfo("ra", &["192.168.1.0/24"], pa),
        now,
    ));
    ok(register(
        &mut t,
        &b,
        Some(&k),
        hostinfo("rb", &["192.168.1.0/24"], pb),
        now,
    ));
    assert_eq!(primary_of(&t, "192.168.1.0/24"), None, "not approved yet");
    for n in ["ra", "rb"] {
        t.set_approval(n, &["192.168.1.0/24".parse().unwrap()], true, now)
            .unwrap();
    }
    Ha {
        _dir: dir,
        t,
        now,
        a,
        b,
    }
}

#[test]
fn ha_priority_failover_and_hold_down() {
    let Ha {
        _dir,
        mut t,
        now,
        a,
        b,
    } = ha(10, 5);
    // Offline routers are not primary.
    assert_eq!(primary_of(&t, "192.168.1.0/24"), None);
    let sb = t.attach(&b.key, &NodeUpdate::default(), now).unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    // a (priority 10) arrives: b keeps the role through the hold-down.
    let t1 = now + Duration::from_secs(1);
    let sa = t.attach(&a.key, &NodeUpdate::default(), t1).unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    assert_eq!(t.recheck_at, Some(t1 + HOLD));
    t.tick(t1 + HOLD - Duration::from_millis(1));
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    t.tick(t1 + HOLD);
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("ra"));

    // The netmap b gets says a is primary, with the prefix in a's allowed IPs.
    let nm = latest(&sb).unwrap();
    let pa = nm.peer(sa.node_id).unwrap();
    assert!(pa.allowed_ips.contains(&"192.168.1.0/24".parse().unwrap()));
    assert_eq!(
        pa.routes,
        vec![RouteState {
            prefix: "192.168.1.0/24".parse().unwrap(),
            approved: true,
            primary: true
        }]
    );
    let self_routes = &nm.self_node.routes;
    assert!(!self_routes[0].primary);

    // a dies: b takes over at once.
    let t2 = t1 + HOLD + Duration::from_secs(5);
    t.detach(sa.node_id, sa.generation, t2);
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    // a returns; no flap-back until the hold-down has passed.
    let sa = t
        .attach(&a.key, &NodeUpdate::default(), t2 + Duration::from_secs(1))
        .unwrap();
    t.tick(t2 + Duration::from_secs(20));
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    t.tick(t2 + Duration::from_secs(1) + HOLD);
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("ra"));

    // a's LAN fails: b at once; a's LAN recovers: hold-down again.
    let t3 = t2 + Duration::from_secs(100);
    let down = NodeUpdate {
        health: Some(Health {
            lan_ok: false,
            detail: Some("ping 192.168.1.1: timeout".into()),
        }),
        ..NodeUpdate::default()
    };
    t.update(sa.node_id, sa.generation, &down, t3).unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    let up = NodeUpdate {
        health: Some(Health::default()),
        ..NodeUpdate::default()
    };
    t.update(sa.node_id, sa.generation, &up, t3 + Duration::from_secs(1))
        .unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    t.tick(t3 + Duration::from_secs(1) + HOLD);
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("ra"));
    drop(sb);
}

#[test]
fn ha_equal_priority_never_flaps_back() {
    let Ha {
        _dir,
        mut t,
        now,
        a,
        b,
    } = ha(0, 0);
    let sa = t.attach(&a.key, &NodeUpdate::default(), now).unwrap();
    let _sb = t.attach(&b.key, &NodeUpdate::default(), now).unwrap();
    assert_eq!(
        primary_of(&t, "192.168.1.0/24").as_deref(),
        Some("ra"),
        "earliest advertisement"
    );
    t.detach(sa.node_id, sa.generation, now);
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    let _sa = t
        .attach(&a.key, &NodeUpdate::default(), now + Duration::from_secs(1))
        .unwrap();
    t.tick(now + HOLD * 10);
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
}

#[test]
fn ha_priority_change_and_withdrawal() {
    let Ha {
        _dir,
        mut t,
        now,
        a,
        b,
    } = ha(1, 1);
    let sa = t.attach(&a.key, &NodeUpdate::default(), now).unwrap();
    let sb = t.attach(&b.key, &NodeUpdate::default(), now).unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("ra"));
    // b raises its priority (`tailgate set --route-priority`); it has been eligible for a
    // while, so once the hold-down since it became eligible has passed it takes over.
    let later = now + HOLD + Duration::from_secs(1);
    let h = NodeUpdate {
        hostinfo: Some(hostinfo("rb", &["192.168.1.0/24"], 50)),
        ..NodeUpdate::default()
    };
    t.update(sb.node_id, sb.generation, &h, later).unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    // b withdraws the route: a at once; the route stays approved for b.
    let h = NodeUpdate {
        hostinfo: Some(hostinfo("rb", &[], 50)),
        ..NodeUpdate::default()
    };
    t.update(sb.node_id, sb.generation, &h, later).unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("ra"));
    let rb = &t.nodes[&sb.node_id].rec.routes;
    assert_eq!(rb.len(), 1);
    assert!(rb[0].approved && !rb[0].advertised);
    // Unapproving a's route leaves no primary.
    t.set_approval("ra", &["192.168.1.0/24".parse().unwrap()], false, later)
        .unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24"), None);
    let nm = latest(&sb).unwrap();
    assert!(nm.peer(sa.node_id).unwrap().routes.is_empty());
}

#[test]
fn restart_keeps_primaries_through_the_startup_grace() {
    let Ha {
        _dir,
        mut t,
        now,
        a,
        b,
    } = ha(0, 0);
    let _sb = t.attach(&b.key, &NodeUpdate::default(), now).unwrap();
    let _sa = t.attach(&a.key, &NodeUpdate::default(), now).unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    drop(t);
    // Restart: a reconnects first, but b stays primary through the grace.
    let t0 = now + Duration::from_secs(60);
    let mut t = open(&_dir, cfg(), t0);
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    let sa = t.attach(&a.key, &NodeUpdate::default(), t0).unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    let nm = latest(&sa).unwrap();
    assert!(
        nm.peers[0].routes[0].primary,
        "netmap keeps the old primary"
    );
    let sb = t
        .attach(&b.key, &NodeUpdate::default(), t0 + Duration::from_secs(1))
        .unwrap();
    t.tick(t0 + Duration::from_secs(20));
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    // Without b reconnecting, a would have taken over at the end of the grace.
    t.detach(sb.node_id, sb.generation, t0 + Duration::from_secs(21));
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("ra"));
}

#[test]
fn restart_grace_expires_for_routers_that_stay_away() {
    let Ha {
        _dir,
        mut t,
        now,
        a,
        b,
    } = ha(0, 0);
    let _sb = t.attach(&b.key, &NodeUpdate::default(), now).unwrap();
    let _sa = t.attach(&a.key, &NodeUpdate::default(), now).unwrap();
    drop(t);
    let t0 = now + Duration::from_secs(60);
    let mut t = open(&_dir, cfg(), t0);
    let _sa = t.attach(&a.key, &NodeUpdate::default(), t0).unwrap();
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("rb"));
    assert_eq!(t.next_deadline(t0), Some(t0 + Duration::from_secs(15)));
    t.tick(t0 + Duration::from_secs(15));
    assert_eq!(primary_of(&t, "192.168.1.0/24").as_deref(), Some("ra"));
}

#[test]
fn auto_approvers_and_exit_nodes() {
    let dir = TempDir::new("auto");
    let now = Instant::now();
    let policy = Policy::parse(
        r#"{
            // routers may route the office LAN
            "autoApprovers": {
                "routes": {"192.168.0.0/16": ["tag:router"],},
                "exitNode": ["tag:exit"],
            },
        }"#,
        "test",
    )
    .unwrap();
    let mut t = open(&dir, TailnetConfig { policy, ..cfg() }, now);
    let router = key(&mut t, true, false, &["tag:router", "tag:exit"]);
    let plain = key(&mut t, true, false, &[]);
    let (r, p, c) = (machine(), machine(), machine());
    let mut h = hostinfo("r", &["192.168.1.0/24", "10.0.0.0/8"], 0);
    h.advertise_exit_node = true;
    ok(register(&mut t, &r, Some(&router), h, now));
    ok(register(
        &mut t,
        &p,
        Some(&plain),
        hostinfo("p", &["192.168.2.0/24"], 0),
        now,
    ));
    ok(register(
        &mut t,
        &c,
        Some(&plain),
        hostinfo("c", &[], 0),
        now,
    ));
    let routes = |t: &Tailnet, name: &str| -> Vec<(String, bool)> {
        t.nodes
            .values()
            .find(|n| n.rec.name == name)
            .unwrap()
            .rec
            .routes
            .iter()
            .map(|r| (r.prefix.to_string(), r.approved))
            .collect()
    };
    assert_eq!(
        routes(&t, "r"),
        vec![
            ("0.0.0.0/0".to_string(), true),
            ("10.0.0.0/8".to_string(), false),
            ("192.168.1.0/24".to_string(), true),
            ("::/0".to_string(), true),
        ]
    );
    assert_eq!(routes(&t, "p"), vec![("192.168.2.0/24".to_string(), false)]);

    let _sr = t.attach(&r.key, &NodeUpdate::default(), now).unwrap();
    let sc = t.attach(&c.key, &NodeUpdate::default(), now).unwrap();
    let nm = latest(&sc).unwrap();
    let rv = nm.peer_by_name("r").unwrap();
    assert!(rv.exit_node);
    let allowed: BTreeSet<String> = rv.allowed_ips.iter().map(|p| p.to_string()).collect();
    for want in ["0.0.0.0/0", "::/0", "192.168.1.0/24"] {
        assert!(allowed.contains(want), "{want} in {allowed:?}");
    }
    assert!(!allowed.contains("10.0.0.0/8"), "unapproved");
    assert_eq!(rv.routes.len(), 3, "peers see approved routes only");
    assert_eq!(
        nm.primary_for(&"192.168.1.0/24".parse().unwrap())
            .unwrap()
            .name,
        "r"
    );
    // The node itself sees its unapproved route too.
    let sr_nm = latest(&_sr).unwrap();
    assert_eq!(sr_nm.self_node.routes.len(), 4);
}

#[test]
fn rotation_expiry_and_admin_actions() {
    let dir = TempDir::new("rot");
    let now = Instant::now();
    let mut t = open(&dir, cfg(), now);
    let k = key(&mut t, false, false, &[]);
    let mut m = machine();
    let r = ok(register(&mut t, &m, Some(&k), hostinfo("n", &[], 0), now));
    // Rotation without an auth key keeps id and addresses.
    m.node_key = Key::generate_private().public_key();
    let r2 = ok(register(&mut t, &m, None, hostinfo("n", &[], 0), now));
    assert_eq!((r2.node_id, r2.ipv4), (r.node_id, r.ipv4));
    assert_eq!(t.nodes[&r.node_id].rec.node_key, m.node_key);

    let s = t.attach(&m.key, &NodeUpdate::default(), now).unwrap();
    t.expire_node("n", now).unwrap();
    assert!(matches!(&*s.pushes.borrow(), Push::Close(e) if e.code == ErrorCode::NodeExpired));
    let e = refused(register(&mut t, &m, None, hostinfo("n", &[], 0), now));
    assert_eq!(e.code, RefusalCode::AuthKeyRequired);
    assert!(t.attach(&m.key, &NodeUpdate::default(), now).is_err());
    // An expired node is not in other nodes' netmaps.
    let k2 = key(&mut t, true, false, &[]);
    let o = machine();
    ok(register(&mut t, &o, Some(&k2), hostinfo("o", &[], 0), now));
    let so = t.attach(&o.key, &NodeUpdate::default(), now).unwrap();
    assert!(latest(&so).unwrap().peers.is_empty());
    // Re-login with a (new) key revives it with the same address.
    let r3 = ok(register(&mut t, &m, Some(&k2), hostinfo("n", &[], 0), now));
    assert_eq!(r3.ipv4, r.ipv4);
    assert_eq!(latest(&so).unwrap().peers.len(), 1);
    // Deletion closes the session with NotRegistered.
    let s = t.attach(&m.key, &NodeUpdate::default(), now).unwrap();
    match t.handle_admin(AdminRequest::NodesDelete { node: "n".into() }, now) {
        AdminResponse::Ok(_) => {}
        AdminResponse::Error(e) => panic!("{e}"),
    }
    assert!(matches!(&*s.pushes.borrow(), Push::Close(e) if e.code == ErrorCode::NotRegistered));
    assert!(latest(&so).unwrap().peers.is_empty());
    match t.handle_admin(AdminRequest::NodesDelete { node: "n".into() }, now) {
        AdminResponse::Error(e) => assert!(e.contains("no node"), "{e}"),
        AdminResponse::Ok(v) => panic!("{v}"),
    }
}

#[test]
fn rename_reaches_peers_and_stays_unique() {
    let dir = TempDir::new("rename");
    let now = Instant::now();
    let mut t = open(&dir, cfg(), now);
    let k = key(&mut t, true, false, &[]);
    let (a, b) = (machine(), machine());
    ok(register(
        &mut t,
        &a,
        Some(&k),
        hostinfo("alpha", &[], 0),
        now,
    ));
    ok(register(
        &mut t,
        &b,
        Some(&k),
        hostinfo("bravo", &[], 0),
        now,
    ));
    let sb = t.attach(&b.key, &NodeUpdate::default(), now).unwrap();
    let rename = |t: &mut Tailnet, node: &str, name: &str| match t.handle_admin(
        AdminRequest::NodesRename {
            node: node.into(),
            name: name.into(),
        },
        now,
    ) {
        AdminResponse::Ok(v) => v["name"].as_str().unwrap().to_string(),
        AdminResponse::Error(e) => panic!("{e}"),
    };
    assert_eq!(rename(&mut t, "alpha", "Build Box"), "build-box");
    assert_eq!(latest(&sb).unwrap().peers[0].name, "build-box");
    // Taken names get a suffix, as at registration.
    assert_eq!(rename(&mut t, "build-box", "bravo"), "bravo-1");
    // The node reporting its unchanged hostname keeps the admin's name.
    let sa = t.attach(&a.key, &NodeUpdate::default(), now).unwrap();
    assert_eq!(latest(&sa).unwrap().self_node.name, "bravo-1");
    match t.handle_admin(
        AdminRequest::NodesRename {
            node: "nobody".into(),
            name: "x".into(),
        },
        now,
    ) {
        AdminResponse::Error(e) => assert!(e.contains("no node"), "{e}"),
        AdminResponse::Ok(v) => panic!("{v}"),
    }
}

#[test]
fn a_subnet_route_as_acl_source_connects_its_router_with_the_destination() {
    let dir = TempDir::new("subnet-src");
    let now = Instant::now();
    let mut t = open(&dir, cfg(), now);
    let policy = r#"{
        "tagOwners": { "tag:server": [], "tag:router": [] },
        "acls": [ { "action": "accept", "src": ["192.168.1.0/24"], "dst": ["tag:server:*"] } ],
        "autoApprovers": { "routes": { "192.168.1.0/24": ["tag:router"] } },
    }"#;
    t.set_policy(policy, now).unwrap();
    let (ks, kr, ko) = (
        key(&mut t, false, false, &["tag:server"]),
        key(&mut t, false, false, &["tag:router"]),
        key(&mut t, false, false, &[]),
    );
    let (srv, rtr, other) = (machine(), machine(), machine());
    ok(register(
        &mut t,
        &srv,
        Some(&ks),
        hostinfo("srv", &[], 0),
        now,
    ));
    ok(register(
        &mut t,
        &rtr,
        Some(&kr),
        hostinfo("rtr", &["192.168.1.0/24"], 0),
        now,
    ));
    ok(register(
        &mut t,
        &other,
        Some(&ko),
        hostinfo("other", &[], 0),
        now,
    ));
    let s_srv = t.attach(&srv.key, &NodeUpdate::default(), now).unwrap();
    let s_rtr = t.attach(&rtr.key, &NodeUpdate::default(), now).unwrap();
    let s_other = t.attach(&other.key, &NodeUpdate::default(), now).unwrap();
    let names = |s: &SessionTicket| -> Vec<String> {
        latest(s)
            .unwrap()
            .peers
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(
        names(&s_srv),
        ["rtr"],
        "the server sees the router of its source LAN"
    );
    assert_eq!(names(&s_rtr), ["srv"]);
    assert!(names(&s_other).is_empty(), "nobody else is connected");
    let f = latest(&s_srv).unwrap().packet_filter.clone().unwrap();
    assert_eq!(f[0].src, ["192.168.1.0/24".parse::<IpNet>().unwrap()]);
}

#[test]
fn replaced_sessions_are_closed_and_ignored() {
    let dir = TempDir::new("replace");
    let now = Instant::now();
    let mut t = open(&dir, cfg(), now);
    let k = key(&mut t, false, false, &[]);
    let m = machine();
    ok(register(&mut t, &m, Some(&k), hostinfo("n", &[], 0), now));
    let s1 = t.attach(&m.key, &NodeUpdate::default(), now).unwrap();
    let s2 = t.attach(&m.key, &NodeUpdate::default(), now).unwrap();
    assert!(matches!(&*s1.pushes.borrow(), Push::Close(e) if e.code == ErrorCode::Replaced));
    // The old session's late detach must not take the new one offline.
    t.detach(s1.node_id, s1.generation, now);
    assert!(t.nodes[&s2.node_id].live.session.is_some());
    assert!(t
        .update(s1.node_id, s1.generation, &NodeUpdate::default(), now)
        .is_err());
    // Oversized updates are refused without harm.
    let big = NodeUpdate {
        endpoints: Some(vec!["192.0.2.1:1".parse().unwrap(); MAX_ENDPOINTS + 1]),
        ..NodeUpdate::default()
    };
    let e = t.update(s2.node_id, s2.generation, &big, now).unwrap_err();
    assert_eq!(e.code, ErrorCode::Protocol);
}

#[test]
fn natural_key_expiry_closes_the_session() {
    let dir = TempDir::new("expiry");
    let now = Instant::now();
    let mut t = open(&dir, cfg(), now);
    let k = key(&mut t, true, false, &[]);
    let (m, o) = (machine(), machine());
    let r = ok(register(&mut t, &m, Some(&k), hostinfo("m", &[], 0), now));
    ok(register(&mut t, &o, Some(&k), hostinfo("o", &[], 0), now));
    let s = t.attach(&m.key, &NodeUpdate::default(), now).unwrap();
    let so = t.attach(&o.key, &NodeUpdate::default(), now).unwrap();
    assert_eq!(latest(&so).unwrap().peers.len(), 1);
    // The deadline of the expiry is scheduled.
    let exp = t.nodes[&r.node_id].rec.key_expiry.unwrap();
    assert!(exp > unix_now() + 179 * 86400);
    // Let it pass (in the record; the clock can't be wound forward).
    t.nodes.get_mut(&r.node_id).unwrap().rec.key_expiry = Some(unix_now());
    t.tick(now + Duration::from_secs(1));
    assert!(matches!(&*s.pushes.borrow(), Push::Close(e) if e.code == ErrorCode::NodeExpired));
    assert!(latest(&so).unwrap().peers.is_empty());
    assert!(t.nodes[&r.node_id].live.session.is_none());
}

#[test]
fn the_relay_map_reaches_nodes_and_the_policy_patches_it() {
    let dir = TempDir::new("relaymap");
    let now = Instant::now();
    let mut c = cfg();
    c.relay_map = RelayMap::from_json(
        r#"{"Regions": {"900": {"RegionID": 900, "RegionCode": "home", "Nodes": [
            {"Name": "900a", "RegionID": 900, "HostName": "relay.home.test"}]}}}"#,
    )
    .unwrap();
    let mut t = open(&dir, c, now);
    let k = key(&mut t, true, false, &[]);
    let a = machine();
    ok(register(&mut t, &a, Some(&k), hostinfo("a", &[], 0), now));
    let ta = t.attach(&a.key, &NodeUpdate::default(), now).unwrap();
    let regions = |t: &SessionTicket| -> Vec<u32> {
        latest(t)
            .unwrap()
            .relay_map
            .as_ref()
            .map(|m| m.regions.keys().copied().collect())
            .unwrap_or_default()
    };
    assert_eq!(regions(&ta), [900]);
    // The seed's example: disable region 900, add 901.
    t.set_policy(
        r#"{ "derpMap": { "Regions": { "900": null, "901": { "RegionID": 901,
            "Nodes": [{ "Name": "901a", "RegionID": 901, "HostName": "relay.cloud.test" }] } } } }"#,
        now,
    )
    .unwrap();
    assert_eq!(regions(&ta), [901]);
    // A patch that clashes with the base map (a node name used twice) is refused; the map
    // stays.
    let e = t
        .set_policy(
            r#"{ "derpMap": { "Regions": { "902": { "RegionID": 902,
            "Nodes": [{ "Name": "900a", "RegionID": 902, "HostName": "x.test" }] } } } }"#,
            now,
        )
        .unwrap_err();
    assert!(format!("{e:#}").contains("used twice"), "{e:#}");
    assert_eq!(regions(&ta), [901]);
    // Removing every region leaves nodes without a relay map.
    t.set_policy(r#"{ "derpMap": { "OmitDefaultRegions": true } }"#, now)
        .unwrap();
    assert!(latest(&ta).unwrap().relay_map.is_none());
}
