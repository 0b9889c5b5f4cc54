//! Running `dnsperf` (Debian package `dnsperf`) and reading its statistics.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::lab::Netns;
use crate::tunnel_bench::run_bounded;

/// Extra time a dnsperf run gets beyond its time limit before it is killed.
const SLACK: Duration = Duration::from_secs(20);
/// dnsperf's per-query timeout, seconds: a query without an answer after it counts as lost.
pub const QUERY_TIMEOUT_S: u32 = 2;

/// What one dnsperf run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsperfRun {
    /// Queries sent.
    pub sent: u64,
    /// Queries answered.
    pub completed: u64,
    /// Queries without an answer within the timeout (or still in flight at the end).
    pub lost: u64,
    /// Answers with RCODE NOERROR.
    pub noerror: u64,
    /// Every response code with its count, as dnsperf lists them (`NOERROR 100, …`).
    pub rcodes: Vec<(String, u64)>,
    /// The run's length, seconds.
    pub run_time_s: f64,
    /// Answered queries per second.
    pub qps: f64,
    /// Mean latency, seconds.
    pub avg_latency_s: f64,
    /// Smallest latency, seconds.
    pub min_latency_s: f64,
    /// Largest latency, seconds.
    pub max_latency_s: f64,
    /// Standard deviation of the latency, seconds.
    pub latency_stddev_s: f64,
}

impl DnsperfRun {
    /// Lost queries in percent of those sent.
    pub fn lost_pct(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.sent as f64
        }
    }

    /// NOERROR answers in percent of the answered queries.
    pub fn noerror_pct(&self) -> f64 {
        if self.completed == 0 {
            0.0
        } else {
            self.noerror as f64 * 100.0 / self.completed as f64
        }
    }
}

/// How to load a resolver.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// The resolver's address (port 53, UDP).
    pub server: String,
    /// How long to send, seconds (`-l`).
    pub seconds: f64,
    /// Simulated clients, each with its own socket (`-c`).
    pub clients: u32,
    /// Queries in flight at most (`-q`).
    pub outstanding: u32,
    /// Queries per second at most (`-Q`); `None`: as fast as answers come back.
    pub max_qps: Option<u32>,
}

impl Load {
    /// The dnsperf arguments for the query file `data`.
    pub fn args(&self, data: &Path) -> Vec<String> {
        let mut a = vec![
            "-s".to_string(),
            self.server.clone(),
            "-d".into(),
            data.to_string_lossy().into_owned(),
            "-l".into(),
            format!("{}", self.seconds),
            "-c".into(),
            self.clients.to_string(),
            "-q".into(),
            self.outstanding.to_string(),
            "-t".into(),
            QUERY_TIMEOUT_S.to_string(),
        ];
        if let Some(q) = self.max_qps {
            a.push("-Q".into());
            a.push(q.to_string());
        }
        a
    }
}

/// Runs dnsperf in `ns` with the queries in `data`, bounded to the time limit plus a margin.
pub fn run(ns: &Netns, data: &Path, load: &Load) -> Result<DnsperfRun> {
    let args = load.args(data);
    let mut cmd = ns.command("dnsperf");
    cmd.args(&args);
    let timeout = Duration::from_secs_f64(load.seconds.max(0.0)) + SLACK;
    let out = run_bounded(&mut cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "dnsperf {} failed ({}): {} {}",
            args.join(" "),
            out.status,
            out.stderr.trim(),
            out.stdout.trim()
        );
    }
    parse(&out.stdout).map_err(|e| anyhow!("{e}; dnsperf said:\n{}", out.stdout.trim()))
}

/// The value after `key` on the first line that starts with it (after indentation).
fn field<'a>(text: &'a str, key: &str) -> Result<&'a str> {
    text.lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .ok_or_else(|| anyhow!("no {key:?} in dnsperf's output"))
}

/// The first whitespace-separated word of `s`, parsed.
fn first<T: std::str::FromStr>(s: &str, key: &str) -> Result<T> {
    s.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow!("cannot read {key} {s:?}"))
}

/// The number after `name` inside `(min 0.1, max 0.2)`.
fn inner(s: &str, name: &str) -> Result<f64> {
    s.split(['(', ',', ')'])
        .map(str::trim)
        .find_map(|p| p.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {name} in {s:?}"))
}

/// Reads the statistics dnsperf prints at the end of a run.
pub fn parse(text: &str) -> Result<DnsperfRun> {
    let sent = first(field(text, "Queries sent:")?, "queries sent")?;
    let completed = first(field(text, "Queries completed:")?, "queries completed")?;
    let lost = first(field(text, "Queries lost:")?, "queries lost")?;
    let mut rcodes = Vec::new();
    // Absent when nothing was answered.
    if let Ok(codes) = field(text, "Response codes:") {
        for part in codes.split(',') {
            let mut words = part.split_whitespace();
            if let (Some(name), Some(n)) = (words.next(), words.next()) {
                let n = n
                    .parse()
                    .map_err(|_| anyhow!("cannot read response code count {part:?}"))?;
                rcodes.push((name.to_string(), n));
            }
        }
    }
    let noerror = rcodes
        .iter()
        .filter(|(n, _)| n == "NOERROR")
        .map(|(_, c)| c)
        .sum();
    let run_time_s = first(field(text, "Run time (s):")?, "run time")?;
    let qps = first(field(text, "Queries per second:")?, "queries per second")?;
    let (avg_latency_s, min_latency_s, max_latency_s, latency_stddev_s) = if completed > 0 {
        let lat = field(text, "Average Latency (s):")?;
        (
            first(lat, "average latency")?,
            inner(lat, "min")?,
            inner(lat, "max")?,
            first(field(text, "Latency StdDev (s):")?, "latency stddev")?,
        )
    } else {
        (f64::NAN, f64::NAN, f64::NAN, f64::NAN)
    };
    Ok(DnsperfRun {
        sent,
        completed,
        lost,
        noerror,
        rcodes,
        run_time_s,
        qps,
        avg_latency_s,
        min_latency_s,
        max_latency_s,
        latency_stddev_s,
    })
}

/// `dnsperf`'s version (`Version 2.10.0`), or why it is not known.
pub fn version() -> String {
    match run_bounded(Command::new("dnsperf").arg("-H"), Duration::from_secs(10)) {
        Ok(out) => format!("{}\n{}", out.stdout, out.stderr)
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("Version"))
            .map(|l| format!("dnsperf {}", l.trim_start_matches("Version").trim()))
            .unwrap_or_else(|| "unknown".into()),
        Err(e) => format!("not found ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.2 -d /tmp/q -l 3
[Status] Sending queries (to 127.0.0.2:53)
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         693285
  Queries completed:    693280 (100.00%)
  Queries lost:         5 (0.00%)

  Response codes:       NOERROR 693000 (99.96%), SERVFAIL 280 (0.04%)
  Average packet size:  request 41, response 62
  Run time (s):         3.000334
  Queries per second:   231069.274287

  Average Latency (s):  0.000384 (min 0.000010, max 0.029699)
  Latency StdDev (s):   0.000389

";

    #[test]
    fn reads_the_statistics() {
        let r = parse(OUTPUT).unwrap();
        assert_eq!((r.sent, r.completed, r.lost), (693285, 693280, 5));
        assert_eq!(r.noerror, 693000);
        assert_eq!(
            r.rcodes,
            vec![("NOERROR".into(), 693000), ("SERVFAIL".into(), 280)]
        );
        assert!((r.qps - 231069.274287).abs() < 1e-6);
        assert!((r.run_time_s - 3.000334).abs() < 1e-9);
        assert!((r.avg_latency_s - 0.000384).abs() < 1e-12);
        assert!((r.min_latency_s - 0.000010).abs() < 1e-12);
        assert!((r.max_latency_s - 0.029699).abs() < 1e-12);
        assert!((r.latency_stddev_s - 0.000389).abs() < 1e-12);
        assert!(r.noerror_pct() > 99.9 && r.noerror_pct() < 100.0);
        assert!(r.lost_pct() < 0.01);
    }

    #[test]
    fn nothing_answered_is_not_an_error() {
        let text =
            "Statistics:\n\n  Queries sent:         10\n  Queries completed:    0 (0.00%)\n  \
                    Queries lost:         10 (100.00%)\n\n  Run time (s):         1.000\n  \
                    Queries per second:   0.000000\n";
        let r = parse(text).unwrap();
        assert_eq!((r.sent, r.completed, r.lost, r.noerror), (10, 0, 10, 0));
        assert!(r.avg_latency_s.is_nan());
        assert_eq!(r.lost_pct(), 100.0);
        assert_eq!(r.noerror_pct(), 0.0);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("Queries sent: many\n").is_err());
        let cut = OUTPUT.replace("  Queries per second:   231069.274287\n", "");
        assert!(parse(&cut).is_err());
    }

    #[test]
    fn load_arguments() {
        let l = Load {
            server: "100.100.100.100".into(),
            seconds: 0.5,
            clients: 4,
            outstanding: 100,
            max_qps: Some(1000),
        };
        assert_eq!(
            l.args(Path::new("/tmp/q")).join(" "),
            "-s 100.100.100.100 -d /tmp/q -l 0.5 -c 4 -q 100 -t 2 -Q 1000"
        );
    }
}
