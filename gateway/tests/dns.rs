//! MagicDNS end to end, queried with the real `dig`.
//!
//! Each test creates two network namespaces (deleted on drop, also when the test fails):
//!
//! - `r` (resolver): `lo` holds 100.100.100.100/32 and fd7a:115c:a1e0::53/128, where a
//!   [`DnsServer`] listens on port 53 (UDP and TCP); a veth with 10.77.0.1/24 leads to `u`;
//!   `dig` and `dnsperf` run here.
//! - `u` (upstreams): 10.77.0.2 runs dnsmasq (split DNS for `internal.company.com`),
//!   10.77.0.3:53 a small authority written below (many records, TC over UDP), 10.77.0.4:8053 a
//!   small DNS-over-HTTP server (RFC 8484 POST).
//!
//! Needs root, `ip`, `dig` (bind9-dnsutils) and, for forwarding, `dnsmasq` (dnsmasq-base); a
//! test prints why it is skipped when something is missing. All traffic stays inside the two
//! namespaces. Every wait is bounded.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tailgate::dns::{DnsServer, DnsStatsSnapshot, DnsView, Host, MagicDns, SplitRoute, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

const DOMAIN: &str = "tailnet.example";
const RESOLVER4: &str = "100.100.100.100";
const RESOLVER6: &str = "fd7a:115c:a1e0::53";
const DNSMASQ: &str = "10.77.0.2";
const AUTHORITY: &str = "10.77.0.3";
const DOH: &str = "10.77.0.4:8053";
/// Records in the "big" answers (over 1232 bytes: truncated over UDP).
const BIG: usize = 100;

/// True when `tool` cannot be run at all.
fn missing_tool(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
}

fn skip_reason(need_dnsmasq: bool) -> Option<String> {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if missing_tool("ip", "-V") {
        return Some("`ip` (iproute2) not available".into());
    }
    if missing_tool("dig", "-v") {
        return Some("`dig` not available (Debian package bind9-dnsutils)".into());
    }
    if need_dnsmasq && missing_tool("dnsmasq", "--version") {
        return Some("`dnsmasq` not available (Debian package dnsmasq-base)".into());
    }
    None
}

macro_rules! skip_unless_able {
    ($need_dnsmasq:expr) => {
        if let Some(reason) = skip_reason($need_dnsmasq) {
            let _ = writeln!(std::io::stderr(), "skipping DNS integration test: {reason}");
            return;
        }
    };
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// The two namespaces; deleted on drop.
struct Lab {
    r: String,
    u: String,
}

impl Lab {
    fn new(tag: char) -> Lab {
        let pid = std::process::id();
        // The guard exists before the first namespace, so a failure below still cleans up.
        let lab = Lab {
            r: format!("tgdns-{pid}-{tag}-r"),
            u: format!("tgdns-{pid}-{tag}-u"),
        };
        let (vr, vu) = (
            format!("tgd{}{tag}r", pid % 100_000),
            format!("tgd{}{tag}u", pid % 100_000),
        );
        ip_ok(&["netns", "add", &lab.r]);
        ip_ok(&["netns", "add", &lab.u]);
        ip_ok(&[
            "link", "add", &vr, "netns", &lab.r, "type", "veth", "peer", "name", &vu, "netns",
            &lab.u,
        ]);
        for ns in [&lab.r, &lab.u] {
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip_ok(&[
            "-n",
            &lab.r,
            "addr",
            "add",
            &format!("{RESOLVER4}/32"),
            "dev",
            "lo",
        ]);
        ip_ok(&[
            "-n",
            &lab.r,
            "addr",
            "add",
            &format!("{RESOLVER6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
        ip_ok(&["-n", &lab.r, "addr", "add", "10.77.0.1/24", "dev", &vr]);
        ip_ok(&["-n", &lab.r, "link", "set", &vr, "up"]);
        for a in ["10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24"] {
            ip_ok(&["-n", &lab.u, "addr", "add", a, "dev", &vu]);
        }
        ip_ok(&["-n", &lab.u, "link", "set", &vu, "up"]);
        lab
    }

    /// Runs `f` on a new thread inside namespace `ns`; threads it creates stay there too.
    fn spawn_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: `file` is an open network-namespace descriptor; `setns` only moves this
            // test-owned thread (and the threads it creates later) into that namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        Self::spawn_in(ns, f)
            .join()
            .expect("namespace thread panicked")
    }

    /// `dig` in the resolver namespace (bounded by its own timeout and by `timeout`).
    fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.r, "timeout", "20", "dig", "+time=5", "+tries=1",
            ])
            .args(args)
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dig +short` answers, one per line.
    fn short(&self, args: &[&str]) -> Vec<String> {
        let mut a = vec!["+short"];
        a.extend_from_slice(args);
        self.dig(&a)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(";;"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace removes the veth end in it, and with it the pair.
        for ns in [&self.r, &self.u] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// The `status:` of a full `dig` output.
fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no response)")
}

/// The header flags (`qr aa rd ra`, …) of a full `dig` output.
fn flags(out: &str) -> Vec<&str> {
    out.lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|l| l.split(';').next())
        .map(|f| f.split_whitespace().collect())
        .unwrap_or_default()
}

/// The count of a section (`ANSWER`, `AUTHORITY`) in a full `dig` output.
fn count(out: &str, section: &str) -> usize {
    out.split(&format!("{section}: "))
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

/// A [`DnsServer`] on 100.100.100.100:53 and [fd7a:115c:a1e0::53]:53 in namespace `r`.
struct Resolver {
    view: watch::Sender<DnsView>,
    handler: Arc<MagicDns>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    fn start(lab: &Lab, view: DnsView) -> Resolver {
        let (view_tx, view_rx) = watch::channel(view);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = Lab::spawn_in(&lab.r, move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listen: Vec<SocketAddr> = vec![
                    SocketAddr::new(RESOLVER4.parse().unwrap(), 53),
                    SocketAddr::new(RESOLVER6.parse().unwrap(), 53),
                ];
                match DnsServer::start(&listen, view_rx) {
                    Ok(server) => {
                        let _ = ready_tx.send(Ok(server.handler().clone()));
                        let _ = stop_rx.await;
                        server.stop().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        let handler = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("resolver did not start in 10 s")
            .unwrap_or_else(|e| panic!("resolver: {e}"));
        Resolver {
            view: view_tx,
            handler,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn stats(&self) -> DnsStatsSnapshot {
        self.handler.stats().snapshot()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn host(name: &str, addrs: &[&str]) -> Host {
    Host {
        name: name.into(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn tailnet_view() -> DnsView {
    let big: Vec<IpAddr> = (0..BIG as u16)
        .map(|i| {
            IpAddr::V6(std::net::Ipv6Addr::new(
                0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 1, i,
            ))
        })
        .collect();
    DnsView {
        domain: DOMAIN.into(),
        self_node: Some(host("gw", &["100.64.0.1", "fd7a:115c:a1e0::1"])),
        peers: vec![
            host("peer", &["100.64.0.2", "fd7a:115c:a1e0::2"]),
            Host {
                name: "big".into(),
                addrs: big,
            },
        ],
        split: vec![],
        global: vec![],
    }
}

#[test]
fn magicdns_names_with_dig() {
    skip_unless_able!(false);
    let lab = Lab::new('a');
    let resolver = Resolver::start(&lab, tailnet_view());
    let at4 = format!("@{RESOLVER4}");
    let at6 = format!("@{RESOLVER6}");
    let at = at4.as_str();

    // A and AAAA of a peer and of the node itself, over both listeners.
    assert_eq!(
        lab.short(&[at, "peer.tailnet.example", "A"]),
        ["100.64.0.2"]
    );
    assert_eq!(
        lab.short(&[&at6, "peer.tailnet.example", "AAAA"]),
        ["fd7a:115c:a1e0::2"]
    );
    assert_eq!(lab.short(&[at, "GW.Tailnet.Example", "A"]), ["100.64.0.1"]);
    let out = lab.dig(&[at, "peer.tailnet.example", "A"]);
    assert_eq!(status(&out), "NOERROR");
    assert!(flags(&out).contains(&"aa"), "{out}");
    assert!(out.contains("\t5\tIN\tA\t100.64.0.2"), "TTL 5: {out}");

    // PTR for both families, and the resolver's own address.
    assert_eq!(
        lab.short(&[at, "-x", "100.64.0.2"]),
        ["peer.tailnet.example."]
    );
    assert_eq!(
        lab.short(&[&at6, "-x", "fd7a:115c:a1e0::2"]),
        ["peer.tailnet.example."]
    );
    assert_eq!(
        lab.short(&[at, "-x", RESOLVER4]),
        ["magicdns.localhost-tailgate-daemon."]
    );
    let out = lab.dig(&[at, "-x", "100.64.0.99"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");

    // 4via6 names: AAAA answers, A is NODATA, bad names are NXDOMAIN in the zone.
    let via = "fd7a:115c:a1e0:b1a:0:7:a01:105";
    assert_eq!(
        lab.short(&[at, "10-1-1-5-via-7.tailnet.example", "AAAA"]),
        [via]
    );
    assert_eq!(lab.short(&[at, "10-1-1-5-via-7", "AAAA"]), [via]);
    let out = lab.dig(&[at, "10-1-1-5-via-7.tailnet.example", "A"]);
    assert_eq!(
        (status(&out), count(&out, "ANSWER")),
        ("NOERROR", 0),
        "{out}"
    );
    for bad in [
        "300-1-1-1-via-7.tailnet.example",
        "10-1-1-5-via-70000.tailnet.example",
    ] {
        let out = lab.dig(&[at, bad, "AAAA"]);
        assert_eq!(status(&out), "NXDOMAIN", "{bad}: {out}");
    }
    assert_eq!(
        lab.short(&[at, "-x", via]),
        ["10-1-1-5-via-7.tailnet.example."]
    );

    // NXDOMAIN vs NODATA (both with the zone's SOA), NOTIMP like Tailscale.
    let out = lab.dig(&[at, "nobody.tailnet.example", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(count(&out, "AUTHORITY"), 1, "{out}");
    assert!(out.contains("SOA"), "{out}");
    let out = lab.dig(&[at, "peer.tailnet.example", "TXT"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(
        (count(&out, "ANSWER"), count(&out, "AUTHORITY")),
        (0, 1),
        "{out}"
    );
    let out = lab.dig(&[at, "peer.tailnet.example", "NS"]);
    assert_eq!(status(&out), "NOTIMP", "{out}");

    // Short names: through the search domain, and bare single labels.
    assert_eq!(
        lab.short(&[at, "+search", "+domain=tailnet.example", "peer", "A"]),
        ["100.64.0.2"]
    );
    assert_eq!(lab.short(&[at, "peer", "A"]), ["100.64.0.2"]);
    // No upstream for other names: SERVFAIL.
    let out = lab.dig(&[at, "example.org", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");

    // TCP.
    assert_eq!(
        lab.short(&[at, "+tcp", "peer.tailnet.example", "A"]),
        ["100.64.0.2"]
    );

    // A large answer: truncated over UDP (512 without EDNS, 1232 with), complete over TCP,
    // and dig's automatic retry over TCP gets every record.
    let out = lab.dig(&[at, "+ignore", "+noedns", "big.tailnet.example", "AAAA"]);
    assert!(flags(&out).contains(&"tc"), "{out}");
    let out = lab.dig(&[at, "+ignore", "big.tailnet.example", "AAAA"]);
    assert!(flags(&out).contains(&"tc"), "{out}");
    assert_eq!(lab.short(&[at, "big.tailnet.example", "AAAA"]).len(), BIG);
    assert_eq!(
        lab.short(&[at, "+tcp", "big.tailnet.example", "AAAA"])
            .len(),
        BIG
    );
    let s = resolver.stats();
    assert!(s.truncated >= 3, "{s:?}");
    assert!(s.tcp_queries >= 3, "{s:?}");

    // Malformed datagrams: too short (dropped), header but bad body (FORMERR), and the
    // resolver still answers afterwards.
    let (short_reply, formerr) = Lab::run_in(&lab.r, || {
        let sock = std::net::UdpSocket::bind("100.100.100.100:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let dst: SocketAddr = "100.100.100.100:53".parse().unwrap();
        let mut buf = [0u8; 1500];
        sock.send_to(&[0xde, 0xad, 0xbe], dst).unwrap();
        let short_reply = sock.recv_from(&mut buf).is_ok();
        // ID 0x4242, RD, QDCOUNT 1, then a label that runs past the end.
        let bad = [
            0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'p', b'e',
        ];
        sock.send_to(&bad, dst).unwrap();
        let formerr = match sock.recv_from(&mut buf) {
            Ok((n, _)) => Message::from_vec(&buf[..n]).ok(),
            Err(_) => None,
        };
        (short_reply, formerr)
    });
    assert!(!short_reply, "a 3-byte datagram got an answer");
    let formerr = formerr.expect("no FORMERR for a bad body");
    assert_eq!(formerr.metadata.id, 0x4242);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(
        lab.short(&[at, "peer.tailnet.example", "A"]),
        ["100.64.0.2"]
    );
    let s = resolver.stats();
    assert!(s.dropped >= 1 && s.formerr >= 1, "{s:?}");

    // A rename is answered within 1 s of the new view.
    resolver
        .view
        .send_modify(|v| v.peers[0].name = "renamed".into());
    let start = Instant::now();
    loop {
        if lab.short(&[at, "renamed.tailnet.example", "A"]) == ["100.64.0.2"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "rename not visible after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let visible = start.elapsed();
    let out = lab.dig(&[at, "peer.tailnet.example", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "old name still answered: {out}");
    assert_eq!(
        lab.short(&[at, "-x", "100.64.0.2"]),
        ["renamed.tailnet.example."]
    );
    eprintln!("rename visible after {visible:?}");

    // Load: dnsperf against the local names, when installed.
    if !missing_tool("dnsperf", "-h") {
        let file = std::env::temp_dir().join(format!("tgdns-{}.queries", std::process::id()));
        std::fs::write(
            &file,
            "renamed.tailnet.example A\ngw.tailnet.example AAAA\n10-1-1-5-via-7 AAAA\n\
             nobody.tailnet.example A\n",
        )
        .unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.r, "timeout", "30", "dnsperf"])
            .args(["-s", RESOLVER4, "-d"])
            .arg(&file)
            .args(["-l", "2", "-q", "50"])
            .output()
            .expect("run dnsperf");
        let _ = std::fs::remove_file(&file);
        let text = String::from_utf8_lossy(&out.stdout);
        let pct = |key: &str| -> Option<f64> {
            let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
            let inner = line.split('(').nth(1)?.split('%').next()?;
            inner.trim().parse().ok()
        };
        let qps = text
            .lines()
            .find(|l| l.contains("Queries per second"))
            .unwrap_or("Queries per second: ?");
        eprintln!("dnsperf: {}", qps.trim());
        let completed = pct("Queries completed:").unwrap_or(0.0);
        assert!(completed >= 99.0, "dnsperf completed {completed}%:\n{text}");
    } else {
        eprintln!("dnsperf not installed; load check skipped");
    }
    eprintln!("resolver stats: {:?}", resolver.stats());
}

/// Counters of the test upstreams.
#[derive(Default)]
struct Counts {
    udp: AtomicUsize,
    tcp: AtomicUsize,
    doh: AtomicUsize,
}

/// dnsmasq plus the small authority and DoH server, in namespace `u`.
struct Upstreams {
    counts: Arc<Counts>,
    dnsmasq: Option<Child>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstreams {
    fn start(lab: &Lab) -> Upstreams {
        let dnsmasq = Command::new("ip")
            .args(["netns", "exec", &lab.u, "dnsmasq", "--keep-in-foreground"])
            .args(["--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
            .args([
                "--bind-interfaces",
                "--listen-address",
                DNSMASQ,
                "--port=53",
            ])
            .args(["--pid-file=", "--user=root"])
            .args(["--address=/internal.company.com/10.9.9.9"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        // The guard owns dnsmasq from here on, so a failure below still stops it.
        let mut up = Upstreams {
            counts: Arc::new(Counts::default()),
            dnsmasq: Some(dnsmasq),
            stop: None,
            thread: None,
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let c = up.counts.clone();
        let thread = Lab::spawn_in(&lab.u, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let auth: SocketAddr = SocketAddr::new(AUTHORITY.parse().unwrap(), 53);
                let udp = tokio::net::UdpSocket::bind(auth)
                    .await
                    .expect("bind authority udp");
                let tcp = tokio::net::TcpListener::bind(auth)
                    .await
                    .expect("bind authority tcp");
                let doh = tokio::net::TcpListener::bind(DOH).await.expect("bind doh");
                let _ = ready_tx.send(());
                tokio::select! {
                    _ = authority_udp(udp, c.clone()) => {}
                    _ = authority_tcp(tcp, c.clone()) => {}
                    _ = doh_server(doh, c) => {}
                    _ = stop_rx => {}
                }
            });
        });
        up.stop = Some(stop_tx);
        up.thread = Some(thread);
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("test upstreams did not start");
        // dnsmasq is ready when it answers (from the resolver namespace, over the veth).
        let start = Instant::now();
        while lab.short(&[&format!("@{DNSMASQ}"), "+time=1", "x.internal.company.com"])
            != ["10.9.9.9"]
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "dnsmasq not answering"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        up
    }

    fn stop_dnsmasq(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        self.stop_dnsmasq();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The test authority's answer: `nx.*` is NXDOMAIN, `big.*` has [`BIG`] A records, any other A
/// query gets `addr`.
fn authority_answer(query: &Message, addr: Ipv4Addr) -> Message {
    let mut r = Message::response(query.metadata.id, OpCode::Query);
    r.metadata.recursion_desired = query.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(query.queries.clone());
    let Some(q) = query.queries.first() else {
        r.metadata.response_code = ResponseCode::FormErr;
        return r;
    };
    let name = q.name().to_ascii().to_ascii_lowercase();
    if name.starts_with("nx.") {
        r.metadata.response_code = ResponseCode::NXDomain;
    } else if q.query_type() == RecordType::A {
        let n = if name.starts_with("big.") { BIG } else { 1 };
        for i in 0..n {
            let ip = if n == 1 {
                addr
            } else {
                Ipv4Addr::new(10, 8, (i / 250) as u8, (i % 250) as u8 + 1)
            };
            r.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(ip))));
        }
    }
    if let Some(e) = &query.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(e.max_payload());
        r.set_edns(edns);
    }
    r
}

async fn authority_udp(sock: tokio::net::UdpSocket, counts: Arc<Counts>) {
    let mut buf = vec![0u8; 4096];
    while let Ok((n, from)) = sock.recv_from(&mut buf).await {
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        counts.udp.fetch_add(1, Ordering::Relaxed);
        let full = authority_answer(&q, Ipv4Addr::new(10, 8, 8, 8));
        let limit = q.edns.as_ref().map_or(512, |e| e.max_payload().max(512));
        let mut bytes = full.to_vec().unwrap();
        if bytes.len() > usize::from(limit) {
            let mut tc = Message::response(q.metadata.id, OpCode::Query);
            tc.metadata.truncation = true;
            tc.add_queries(q.queries.clone());
            bytes = tc.to_vec().unwrap();
        }
        let _ = sock.send_to(&bytes, from).await;
    }
}

async fn authority_tcp(listener: tokio::net::TcpListener, counts: Arc<Counts>) {
    while let Ok((mut s, _)) = listener.accept().await {
        let counts = counts.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if s.read_exact(&mut msg).await.is_err() {
                    return;
                }
                let Ok(q) = Message::from_vec(&msg) else {
                    return;
                };
                counts.tcp.fetch_add(1, Ordering::Relaxed);
                let bytes = authority_answer(&q, Ipv4Addr::new(10, 8, 8, 8))
                    .to_vec()
                    .unwrap();
                let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&bytes);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A minimal HTTP/1.1 DoH server: `POST /dns-query` with `application/dns-message` and DNS
/// ID 0 (RFC 8484) answers A queries with 10.7.7.7; anything else is an HTTP error.
async fn doh_server(listener: tokio::net::TcpListener, counts: Arc<Counts>) {
    while let Ok((s, _)) = listener.accept().await {
        tokio::spawn(doh_connection(s, counts.clone()));
    }
}

async fn doh_connection(mut s: tokio::net::TcpStream, counts: Arc<Counts>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            if buf.len() > 16 * 1024 {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_string();
        let (mut length, mut ctype) = (0usize, String::new());
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "content-type" => ctype = v.trim().to_ascii_lowercase(),
                    _ => {}
                }
            }
        }
        let body_start = head_end + 4;
        while buf.len() < body_start + length {
            if length > 65535 {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let body = buf[body_start..body_start + length].to_vec();
        buf.drain(..body_start + length);
        let (code, reply) = if !request_line.starts_with("POST /dns-query ") {
            ("404 Not Found", Vec::new())
        } else if ctype != "application/dns-message" {
            ("415 Unsupported Media Type", Vec::new())
        } else {
            match Message::from_vec(&body) {
                Ok(q) if q.metadata.id == 0 => {
                    counts.doh.fetch_add(1, Ordering::Relaxed);
                    let r = authority_answer(&q, Ipv4Addr::new(10, 7, 7, 7));
                    ("200 OK", r.to_vec().unwrap())
                }
                _ => ("400 Bad Request", Vec::new()),
            }
        };
        let mut out = format!(
            "HTTP/1.1 {code}\r\ncontent-type: application/dns-message\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        )
        .into_bytes();
        out.extend_from_slice(&reply);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn up(s: &str) -> Upstream {
    s.parse().unwrap()
}

#[test]
fn forwarding_split_global_and_doh() {
    skip_unless_able!(true);
    let lab = Lab::new('b');
    let mut upstreams = Upstreams::start(&lab);
    let doh_url = format!("http://{DOH}/dns-query");
    let mut view = tailnet_view();
    view.split = vec![
        SplitRoute {
            suffix: "internal.company.com".into(),
            upstreams: vec![up(DNSMASQ)],
        },
        SplitRoute {
            suffix: "company.com".into(),
            upstreams: vec![up(AUTHORITY)],
        },
        SplitRoute {
            suffix: "doh.example".into(),
            upstreams: vec![up(&doh_url)],
        },
    ];
    view.global = vec![up(AUTHORITY)];
    let resolver = Resolver::start(&lab, view);
    let at = format!("@{RESOLVER4}");
    let at = at.as_str();

    // Split DNS: the most specific suffix wins.
    assert_eq!(
        lab.short(&[at, "db.internal.company.com", "A"]),
        ["10.9.9.9"],
        "dnsmasq for internal.company.com"
    );
    assert_eq!(
        lab.short(&[at, "www.company.com", "A"]),
        ["10.8.8.8"],
        "the authority for company.com"
    );
    // Global nameservers for everything else; their NXDOMAIN passes through.
    assert_eq!(lab.short(&[at, "example.org", "A"]), ["10.8.8.8"]);
    let out = lab.dig(&[at, "nx.example.org", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    // MagicDNS names are still answered locally.
    assert_eq!(
        lab.short(&[at, "peer.tailnet.example", "A"]),
        ["100.64.0.2"]
    );

    // A split route to a DoH server.
    assert_eq!(lab.short(&[at, "host.doh.example", "A"]), ["10.7.7.7"]);
    assert!(upstreams.counts.doh.load(Ordering::Relaxed) >= 1);

    // An upstream answer too large for UDP: the resolver retries the upstream over TCP, then
    // truncates its own UDP answer to dig, which retries over TCP and gets every record.
    let tcp_before = upstreams.counts.tcp.load(Ordering::Relaxed);
    let out = lab.dig(&[at, "+ignore", "big.example.org", "A"]);
    assert!(flags(&out).contains(&"tc"), "{out}");
    assert_eq!(lab.short(&[at, "big.example.org", "A"]).len(), BIG);
    assert!(upstreams.counts.tcp.load(Ordering::Relaxed) > tcp_before);
    let s = resolver.stats();
    assert!(s.upstream_tcp_retries >= 2, "{s:?}");
    assert!(s.forwarded >= 6, "{s:?}");

    // Global DoH, applied within 1 s of the new view.
    let doh_before = upstreams.counts.doh.load(Ordering::Relaxed);
    resolver.view.send_modify(|v| v.global = vec![up(&doh_url)]);
    let start = Instant::now();
    while lab.short(&[at, "example.net", "A"]) != ["10.7.7.7"] {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "global DoH not used after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(upstreams.counts.doh.load(Ordering::Relaxed) > doh_before);
    let out = lab.dig(&[at, "nx.example.net", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");

    // An upstream that is down: SERVFAIL (quickly: the port is closed), local names still work.
    upstreams.stop_dnsmasq();
    let start = Instant::now();
    let out = lab.dig(&[at, "db.internal.company.com", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(lab.short(&[at, "gw.tailnet.example", "A"]), ["100.64.0.1"]);

    // No nameserver at all: SERVFAIL.
    resolver.view.send_modify(|v| {
        v.split.clear();
        v.global.clear();
    });
    let out = lab.dig(&[at, "example.org", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    let s = resolver.stats();
    assert!(s.servfail >= 2 && s.upstream_failures >= 1, "{s:?}");
    eprintln!("resolver stats: {s:?}");
}
