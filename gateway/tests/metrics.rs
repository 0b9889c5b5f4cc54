//! `/metrics` and `/healthz` of a running daemon in a lab namespace, checked with Prometheus'
//! own `promtool check metrics`. Needs root; the lab removes everything on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tailgate_bench::lab::node::peer_spec;
use tailgate_bench::lab::{self, Keypair, Kind, Lab, Netns};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");
const METRICS: &str = "127.0.0.1:9002";

/// One HTTP request from inside `ns`; returns (status code, body).
fn http(ns: &Netns, request: &'static str) -> Result<(u16, String)> {
    ns.spawn_inside(move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect(METRICS).context("connecting to the metrics listener")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("no header end in {reply:?}"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
        Ok((code, body.to_string()))
    })?
    .join()
    .map_err(|_| anyhow!("request thread panicked"))?
}

/// The value of the first sample of `name` whose labels contain `label`.
fn sample(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_and_health_endpoints() {
    assert!(
        lab::is_root(),
        "network-namespace tests need root (run `cargo xtask test` as root)"
    );
    let mut lab = Lab::new().expect("lab");
    let (k1, k2) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    lab.start_with(
        Kind::tailgate(TAILGATE),
        1,
        k1.clone(),
        &[peer_spec(&k2, 2, None)],
        &format!("metrics_listen = \"{METRICS}\"\n"),
    )
    .expect("node 1");
    let first = lab.nodes[0].as_peer(true);
    let n2 = lab
        .start(Kind::tailgate(TAILGATE), 2, k2.clone(), &[first])
        .expect("node 2");
    lab.nodes[n2]
        .ping("100.64.0.1", 3)
        .expect("ping through the tunnel");
    let ns = &lab.nodes[0].host.ns;

    let (code, body) = http(ns, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    let (code, metrics) = http(ns, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(code, 200, "{metrics}");
    let rx = sample(&metrics, "tailgate_peer_receive_bytes_total", &k2.public)
        .unwrap_or_else(|| panic!("no receive counter for the peer:\n{metrics}"));
    assert!(rx > 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "tailgate_up", "interface"), Some(1.0));
    let handshakes = sample(&metrics, "tailgate_peer_handshakes_total", &k2.public);
    assert!(handshakes.unwrap_or(0.0) >= 1.0, "{metrics}");
    let packets = sample(&metrics, "tailgate_peer_receive_packets_total", &k2.public);
    assert!(packets.unwrap_or(0.0) >= 3.0, "{metrics}");
    // The MagicDNS resolver's counters (it runs by default).
    assert!(
        metrics.contains("tailgate_dns_total{counter=\"queries\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tailgate_drops_total{reason="),
        "{metrics}"
    );

    // Prometheus' own checker accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Anything else gets a clear refusal, and the listener keeps serving.
    assert_eq!(http(ns, "POST /metrics HTTP/1.1\r\n\r\n").unwrap().0, 405);
    assert_eq!(http(ns, "GET /nope HTTP/1.1\r\n\r\n").unwrap().0, 404);
    assert_eq!(http(ns, "garbage\r\n\r\n").unwrap().0, 400);
    assert_eq!(http(ns, "GET /healthz HTTP/1.0\r\n\r\n").unwrap().0, 200);
}
