//! `/metrics` (Prometheus text format 0.0.4) and `/healthz` for the daemon, on a small HTTP/1.1
//! listener (`interface.metrics_listen` / `--metrics-listen`, like Tailscale's
//! `TS_LOCAL_ADDR_PORT` with `TS_ENABLE_METRICS` and `TS_ENABLE_HEALTH_CHECK`).
//!
//! Both are rendered from the same [`Status`] that `tailgate status --json` shows, so the two
//! never disagree. Rendering is pure; the listener reads one request per connection (bounded
//! in size and time) and closes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::api::status::PeerStatus;
use crate::api::Status;

/// Longest request head read.
const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the node is healthy, and if not why: the interface is up and, in control mode, the
/// session with the coordination server runs.
pub fn health(st: &Status) -> Result<(), String> {
    match &st.control {
        None => Ok(()),
        Some(c) if c.state == "running" => Ok(()),
        Some(c) => Err(match &c.error {
            Some(e) => format!("control session {}: {e}", c.state),
            None => format!("control session {}", c.state),
        }),
    }
}

/// A metric family being written: `# HELP`/`# TYPE` once, then samples.
pub(crate) struct Family<'a> {
    out: &'a mut String,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl<'a> Family<'a> {
    /// Starts the family `name` of `kind` (counter, gauge) in `out`.
    pub(crate) fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    /// Writes one sample of the family.
    pub(crate) fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Numeric fields of a JSON object (counter snapshots serialize as flat objects).
fn numbers(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

/// Renders the node's metrics in the Prometheus text format.
pub fn render(st: &Status) -> String {
    let mut out = String::new();
    let iface = st.interface.as_str();

    let up = u8::from(health(st).is_ok());
    Family::new(
        &mut out,
        "tailgate_up",
        "gauge",
        "1 when the node is up and (in control mode) connected to its coordination server.",
    )
    .sample("tailgate_up", &[("interface", iface)], up);

    let peers = &st.peers;
    let name_of = |p: &PeerStatus| p.name.clone().unwrap_or_default();
    type PeerValue = fn(&PeerStatus) -> Option<u64>;
    let per_peer: [(&str, &str, &str, PeerValue); 6] = [
        (
            "tailgate_peer_receive_bytes_total",
            "counter",
            "Bytes received from each peer (WireGuard datagrams).",
            |p| Some(p.rx_bytes),
        ),
        (
            "tailgate_peer_transmit_bytes_total",
            "counter",
            "Bytes sent to each peer (WireGuard datagrams).",
            |p| Some(p.tx_bytes),
        ),
        (
            "tailgate_peer_receive_packets_total",
            "counter",
            "Authenticated WireGuard datagrams received from each peer.",
            |p| Some(p.rx_packets),
        ),
        (
            "tailgate_peer_transmit_packets_total",
            "counter",
            "WireGuard datagrams sent to each peer.",
            |p| Some(p.tx_packets),
        ),
        (
            "tailgate_peer_handshakes_total",
            "counter",
            "Handshakes completed with each peer (either role).",
            |p| Some(p.handshakes),
        ),
        (
            "tailgate_peer_last_handshake_age_seconds",
            "gauge",
            "Seconds since the latest completed handshake with each peer (absent: never).",
            |p| p.latest_handshake_secs_ago,
        ),
    ];
    for (name, kind, help, value) in per_peer {
        let mut f = Family::new(&mut out, name, kind, help);
        for p in peers {
            if let Some(v) = value(p) {
                let n = name_of(p);
                f.sample(name, &[("peer", &p.public_key), ("name", &n)], v);
            }
        }
    }

    let drops = serde_json::to_value(&st.drops).unwrap_or_default();
    let mut f = Family::new(
        &mut out,
        "tailgate_drops_total",
        "counter",
        "Packets the userspace data path dropped, by reason.",
    );
    for (reason, n) in numbers(&drops) {
        let reason = reason.strip_prefix("drop_").unwrap_or(&reason).to_string();
        f.sample("tailgate_drops_total", &[("reason", &reason)], n);
    }

    if let Some(dns) = &st.dns {
        let v = serde_json::to_value(dns).unwrap_or_default();
        let mut f = Family::new(
            &mut out,
            "tailgate_dns_total",
            "counter",
            "MagicDNS resolver counters: queries, how they were answered, upstream trouble.",
        );
        for (what, n) in numbers(&v) {
            f.sample("tailgate_dns_total", &[("counter", &what)], n);
        }
    }

    let filter = &st.filter;
    let mut f = Family::new(
        &mut out,
        "tailgate_filter_dropped_packets_total",
        "counter",
        "Inbound tunnel packets the policy's packet filter dropped, by reason.",
    );
    for (reason, n) in [
        ("no_rule", filter.dropped_no_rule),
        ("malformed", filter.dropped_malformed),
    ] {
        f.sample(
            "tailgate_filter_dropped_packets_total",
            &[("reason", reason)],
            n,
        );
    }
    let mut f = Family::new(
        &mut out,
        "tailgate_filter_accepted_flows_total",
        "counter",
        "New inbound flows the packet filter accepted, by the policy's acls index.",
    );
    for (acl, n) in &filter.accepted_by_acl {
        f.sample(
            "tailgate_filter_accepted_flows_total",
            &[("acl", &acl.to_string())],
            *n,
        );
    }
    Family::new(
        &mut out,
        "tailgate_filter_rules",
        "gauge",
        "Packet-filter rules in force (0 with the filter off: everything passes).",
    )
    .sample("tailgate_filter_rules", &[], filter.rules as u64);

    if let Some(c) = &st.xdp.counters {
        let mut f = Family::new(
            &mut out,
            "tailgate_xdp_wan_packets_total",
            "counter",
            "Packets wan_ingress (XDP) looked at on the tunnel's interface, by outcome.",
        );
        for (outcome, n) in numbers(&serde_json::Value::Object(c.clone())) {
            f.sample(
                "tailgate_xdp_wan_packets_total",
                &[("outcome", &outcome)],
                n,
            );
        }
    }
    if let Some(c) = &st.routing.fast_path.counters {
        let mut f = Family::new(
            &mut out,
            "tailgate_xdp_forward_packets_total",
            "counter",
            "Packets the XDP forwarding programs handled, by program and outcome.",
        );
        for (program, side) in [("tun_forward", "tun"), ("lan_return", "lan")] {
            for (outcome, n) in numbers(&c[side]) {
                f.sample(
                    "tailgate_xdp_forward_packets_total",
                    &[("program", program), ("outcome", &outcome)],
                    n,
                );
            }
        }
        Family::new(
            &mut out,
            "tailgate_xdp_forward_connections",
            "gauge",
            "Connections tracked by the XDP forwarding path.",
        )
        .sample(
            "tailgate_xdp_forward_connections",
            &[],
            st.routing.fast_path.connections,
        );
    }

    let mut f = Family::new(
        &mut out,
        "tailgate_route_primary",
        "gauge",
        "1 for each subnet route and the peer that is primary for it (control mode).",
    );
    for p in peers {
        for r in p.primary_routes.iter().flatten() {
            let n = name_of(p);
            f.sample(
                "tailgate_route_primary",
                &[("route", r), ("peer", &p.public_key), ("name", &n)],
                1,
            );
        }
    }
    if let Some(c) = &st.control {
        Family::new(
            &mut out,
            "tailgate_failovers_total",
            "counter",
            "Times this client moved a subnet route to a standby because the primary went silent.",
        )
        .sample("tailgate_failovers_total", &[], c.failovers);
    }
    out
}

/// The daemon's response for `path`.
fn respond(path: &str, st: Option<&Status>) -> Reply {
    match (path, st) {
        ("/metrics", Some(st)) => (200, "text/plain; version=0.0.4", render(st)),
        ("/healthz", Some(st)) => match health(st) {
            Ok(()) => (200, "text/plain", "ok\n".into()),
            Err(why) => (503, "text/plain", format!("{why}\n")),
        },
        ("/metrics" | "/healthz", None) => {
            (503, "text/plain", "daemon status unavailable\n".into())
        }
        _ => (
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

/// The path of a `GET` request head, or the status to refuse it with.
fn request_path(head: &str) -> Result<&str, u16> {
    let line = head.lines().next().ok_or(400u16)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(400);
    }
    if method != "GET" && method != "HEAD" {
        return Err(405);
    }
    Ok(target.split('?').next().unwrap_or(target))
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}

/// An HTTP response: status code, content type, body.
pub type Reply = (u16, &'static str, String);

async fn serve_one<F, Fut>(mut conn: TcpStream, answer: F) -> std::io::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Reply>,
{
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok::<bool, std::io::Error>(true);
            }
            if buf.len() >= MAX_REQUEST {
                return Ok(false);
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(!buf.is_empty());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timeout"))??;
    let text = String::from_utf8_lossy(&buf);
    let (code, ctype, body) = if !head {
        (431, "text/plain", "request too large\n".to_string())
    } else {
        match request_path(&text) {
            Ok(path) => answer(path.to_string()).await,
            Err(code) => (code, "text/plain", format!("{}\n", reason(code))),
        }
    };
    let is_head = text.starts_with("HEAD ");
    let mut reply = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    );
    if !is_head {
        reply.push_str(&body);
    }
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

/// Binds `addr` (fails with a clear error if it cannot).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("metrics listener on {addr}: {e}")))
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped; `status` yields
/// the current node status.
pub async fn serve<F, Fut>(listener: TcpListener, status: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<Status>> + Send,
{
    serve_with(listener, move |path: String| {
        let status = status.clone();
        async move { respond(&path, status().await.as_ref()) }
    })
    .await
}

/// Serves `GET` requests on `listener` until the task is dropped, one per connection:
/// `answer` maps the request path to the response.
pub async fn serve_with<F, Fut>(listener: TcpListener, answer: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(conn, answer).await {
                log::debug!("metrics request from {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::{ControlStatus, PeerStatus, XdpStatus};

    fn status() -> Status {
        Status {
            interface: "tg0".into(),
            public_key: "k".into(),
            listen_port: 51820,
            mtu: 1280,
            datapath: "userspace".into(),
            xdp: XdpStatus {
                attached: true,
                interface: Some("eth0".into()),
                mode: Some("native".into()),
                reason: None,
                counters: serde_json::json!({"pass_wg_data": 7, "drop_malformed": 2})
                    .as_object()
                    .cloned(),
            },
            drops: Default::default(),
            batching: Default::default(),
            filter: Default::default(),
            dns: None,
            routing: Default::default(),
            peers: vec![PeerStatus {
                public_key: "AAAA\"quoted\"".into(),
                endpoint: None,
                allowed_ips: vec![],
                latest_handshake_secs_ago: Some(3),
                rx_bytes: 10,
                tx_bytes: 20,
                rx_packets: 1,
                tx_packets: 2,
                handshakes: 1,
                persistent_keepalive: 0,
                name: Some("r1".into()),
                addresses: None,
                online: Some(true),
                primary_routes: Some(vec!["10.0.50.0/24".into()]),
                standby_routes: None,
                os: None,
                path: None,
                direct_rtt_ms: None,
            }],
            control: None,
            relays: vec![],
            peer_relay: None,
        }
    }

    #[test]
    fn renders_families_with_escaped_labels() {
        let m = render(&status());
        assert!(m.contains("# TYPE tailgate_up gauge\ntailgate_up{interface=\"tg0\"} 1\n"));
        assert!(m.contains(
            "tailgate_peer_receive_bytes_total{peer=\"AAAA\\\"quoted\\\"\",name=\"r1\"} 10\n"
        ));
        assert!(m.contains("tailgate_xdp_wan_packets_total{outcome=\"pass_wg_data\"} 7\n"));
        assert!(m.contains("tailgate_route_primary{route=\"10.0.50.0/24\""));
        assert!(m.contains("tailgate_drops_total{reason=\"malformed\"} 0\n"));
        assert!(m.contains("tailgate_peer_handshakes_total{"), "{m}");
        assert!(m.contains("tailgate_peer_receive_packets_total{"), "{m}");
        // Every sample line belongs to a family announced before it.
        let mut announced = std::collections::HashSet::new();
        for line in m.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(announced.contains(name), "{line}");
            }
        }
    }

    #[test]
    fn health_follows_the_control_session() {
        let mut st = status();
        assert_eq!(health(&st), Ok(()));
        st.control = Some(ControlStatus {
            state: "reconnecting".into(),
            error: Some("connection refused".into()),
            ..ControlStatus::default()
        });
        assert_eq!(
            health(&st),
            Err("control session reconnecting: connection refused".into())
        );
        assert!(render(&st).contains("tailgate_up{interface=\"tg0\"} 0\n"));
        st.control.as_mut().unwrap().state = "running".into();
        assert_eq!(health(&st), Ok(()));
    }

    #[test]
    fn requests_are_parsed_strictly() {
        assert_eq!(
            request_path("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok("/metrics")
        );
        assert_eq!(
            request_path("GET /healthz?x=1 HTTP/1.0\r\n\r\n"),
            Ok("/healthz")
        );
        assert_eq!(request_path("POST /metrics HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(request_path("GET /metrics\r\n\r\n"), Err(400));
        assert_eq!(request_path(""), Err(400));
        assert_eq!(respond("/nope", None).0, 404);
        assert_eq!(respond("/healthz", None).0, 503);
    }

    proptest::proptest! {
        #[test]
        fn junk_requests_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(path) = request_path(&text) {
                let _ = respond(path, None);
            }
        }
    }
}
