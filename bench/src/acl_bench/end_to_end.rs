//! End to end: a `tailgate control serve` server, a client node (user
//! [`BENCH_USER`], `--accept-routes`) and a subnet router (`tag:router`, on its XDP fast
//! path, advertising [`LAN_ROUTE`], approved by `autoApprovers`) with the LAN host
//! [`LAN_HOST`]. One lab for the whole run; the two policies of [`super::policy`] are set
//! with `tailgate control policy set` in turn. Each repetition runs every test twice, first
//! without `acls`, then with the 1,000 entries, so that the two runs of a pair are back to
//! back. After each switch the router's `tailgate status --json` must show the expected
//! filter (off, or the expected rule count with the allowing rule) and the LAN host must
//! answer a ping before anything is measured. The tests, iperf3 from the client to the LAN
//! host: UDP with 64-byte payloads (datagrams per second received), TCP one stream (Gbit/s),
//! and TCP from the LAN host (`-R`). Around every run the router's XDP counters and filter
//! counters are read.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use super::policy::{
    self, GeneratedPolicy, PolicyKind, BENCH_USER, IPERF_PORTS, LAN_HOST, LAN_ROUTE,
    ROUTER_LAN_CIDR, ROUTER_TAG,
};
use crate::forward_bench::{E2eTest, XdpDelta};
use crate::lab::control::{ControlServer, CtlNode, TempDir, SETTLE};
use crate::lab::{wait_for, Lab};
use crate::tunnel_bench::{
    finish_iperf, interrupted, iperf_client, median, one_line, run_iperf_client,
};

/// UDP payload of the packet-rate test, bytes (the forwarding benchmark's tests are run).
pub use crate::forward_bench::end_to_end::UDP_PAYLOAD;
/// Pause after a policy switch, before the run.
pub const SWITCH_SETTLE: Duration = Duration::from_millis(300);
/// The tests of each repetition, in order (each under both policies in turn).
pub const TESTS: [E2eTest; 3] = [E2eTest::UdpFwd, E2eTest::TcpFwd, E2eTest::TcpRev];

/// How long and how often to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durations {
    /// Seconds of each iperf3 run.
    pub iperf_seconds: u32,
    /// Repetitions (each: both policies, every test); the report gives the medians.
    pub repeats: usize,
}

impl Durations {
    /// The full run: 3 repetitions of 5 s runs.
    pub fn full() -> Durations {
        Durations {
            iperf_seconds: 5,
            repeats: 3,
        }
    }

    /// `--quick`: 1 repetition of 2 s runs.
    pub fn quick() -> Durations {
        Durations {
            iperf_seconds: 2,
            repeats: 1,
        }
    }
}

/// The router's packet filter as `tailgate status --json` shows it (`filter`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterState {
    /// Rules in force.
    pub enabled: bool,
    /// Rules.
    pub rules: u64,
    /// Classifier atoms.
    pub atoms: u64,
    /// Flows remembered.
    pub flows: u64,
    /// New flows accepted, over every rule.
    pub accepted_new: u64,
    /// New flows accepted by the allowing rule (the last `acls` entry).
    pub accepted_by_allow: u64,
    /// Packets of known flows let in.
    pub accepted_established: u64,
    /// Packets dropped, no rule.
    pub dropped_no_rule: u64,
}

impl FilterState {
    /// Reads the `filter` object of a status document; `allow` is the allowing rule's index.
    pub fn from_status(st: &Value, allow: Option<usize>) -> FilterState {
        let f = &st["filter"];
        let n = |k: &str| f[k].as_u64().unwrap_or(0);
        let by_acl = f["accepted_by_acl"].as_object();
        FilterState {
            enabled: f["enabled"].as_bool().unwrap_or(false),
            rules: n("rules"),
            atoms: n("atoms"),
            flows: n("flows"),
            accepted_new: by_acl
                .map(|o| o.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0),
            accepted_by_allow: allow
                .and_then(|i| by_acl.and_then(|o| o.get(&i.to_string())))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            accepted_established: n("accepted_established"),
            dropped_no_rule: n("dropped_no_rule"),
        }
    }

    /// The counters' growth since `earlier` (sizes as now).
    pub fn since(&self, earlier: &FilterState) -> FilterState {
        FilterState {
            accepted_new: self.accepted_new.saturating_sub(earlier.accepted_new),
            accepted_by_allow: self
                .accepted_by_allow
                .saturating_sub(earlier.accepted_by_allow),
            accepted_established: self
                .accepted_established
                .saturating_sub(earlier.accepted_established),
            dropped_no_rule: self.dropped_no_rule.saturating_sub(earlier.dropped_no_rule),
            ..self.clone()
        }
    }

    /// Field-wise sum of the counters (sizes from `other`).
    pub fn add(&mut self, other: &FilterState) {
        self.accepted_new += other.accepted_new;
        self.accepted_by_allow += other.accepted_by_allow;
        self.accepted_established += other.accepted_established;
        self.dropped_no_rule += other.dropped_no_rule;
        self.enabled = other.enabled;
        self.rules = other.rules;
        self.atoms = other.atoms;
        self.flows = other.flows;
    }
}

/// One iperf3 run.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// Repetition (0-based).
    pub rep: usize,
    /// The policy in force.
    pub policy: PolicyKind,
    /// The test.
    pub test: E2eTest,
    /// Gbit/s (TCP) or datagrams per second received (UDP), or why the run failed.
    pub value: Result<f64, String>,
    /// UDP loss, percent.
    pub loss_pct: Option<f64>,
    /// TCP retransmits.
    pub retransmits: Option<u64>,
    /// The router's XDP counters over the run.
    pub xdp: Option<XdpDelta>,
    /// The router's filter counters over the run.
    pub filter: Option<FilterState>,
}

/// One `policy set` and what the nodes showed afterwards.
#[derive(Clone, Debug)]
pub struct Switch {
    /// Repetition (0-based).
    pub rep: usize,
    /// The policy set.
    pub policy: PolicyKind,
    /// From `policy set` returning to the router's status showing the new filter.
    pub took: Duration,
    /// The router's filter then.
    pub router: FilterState,
    /// The client's filter then.
    pub client: FilterState,
    /// What `policy set` printed.
    pub set_output: String,
}

/// What the end-to-end part measured.
#[derive(Clone, Debug, Default)]
pub struct E2eReport {
    /// Every run, in order.
    pub runs: Vec<RunRecord>,
    /// Every policy switch, in order.
    pub switches: Vec<Switch>,
    /// Why the part stopped early or could not run.
    pub error: Option<String>,
    /// The router's forwarding path and the lab set-up.
    pub notes: Vec<String>,
    /// `acls` entries and expected router rules of the 1,000-rule policy.
    pub acl_entries: usize,
    /// Rules the router's filter should hold under the 1,000-rule policy.
    pub expected_router_rules: usize,
}

impl E2eReport {
    /// The successful values of `test` under `policy`.
    pub fn values(&self, policy: PolicyKind, test: E2eTest) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.policy == policy && r.test == test)
            .filter_map(|r| r.value.as_ref().ok().copied())
            .collect()
    }

    /// The failures of `test` under `policy`.
    pub fn failures(&self, policy: PolicyKind, test: E2eTest) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| r.policy == policy && r.test == test)
            .filter_map(|r| r.value.as_ref().err().cloned())
            .collect()
    }

    /// The median of `test` under `policy`.
    pub fn median(&self, policy: PolicyKind, test: E2eTest) -> Option<f64> {
        median(&self.values(policy, test))
    }

    /// Median with the 1,000-rule policy / median without.
    pub fn ratio(&self, test: E2eTest) -> Option<f64> {
        let a = self.median(PolicyKind::NoAcls, test)?;
        let b = self.median(PolicyKind::Acl1000, test)?;
        (a > 0.0).then(|| b / a)
    }

    /// with / without of each repetition where both runs of `test` succeeded.
    pub fn pair_ratios(&self, test: E2eTest) -> Vec<f64> {
        let value = |rep: usize, p: PolicyKind| {
            self.runs
                .iter()
                .find(|r| r.rep == rep && r.test == test && r.policy == p)
                .and_then(|r| r.value.as_ref().ok().copied())
        };
        let reps = self.runs.iter().map(|r| r.rep + 1).max().unwrap_or(0);
        (0..reps)
            .filter_map(|rep| {
                match (
                    value(rep, PolicyKind::NoAcls),
                    value(rep, PolicyKind::Acl1000),
                ) {
                    (Some(a), Some(b)) if a > 0.0 => Some(b / a),
                    _ => None,
                }
            })
            .collect()
    }

    /// The XDP counters over every run of `test` under `policy`.
    pub fn xdp(&self, policy: PolicyKind, test: E2eTest) -> Option<XdpDelta> {
        let mut total: Option<XdpDelta> = None;
        for r in &self.runs {
            if let (true, Some(d)) = (r.policy == policy && r.test == test, &r.xdp) {
                total.get_or_insert_with(XdpDelta::default).add(d);
            }
        }
        total
    }

    /// The filter counters over every run of `test` under `policy`.
    pub fn filter(&self, policy: PolicyKind, test: E2eTest) -> Option<FilterState> {
        let mut total: Option<FilterState> = None;
        for r in &self.runs {
            if let (true, Some(f)) = (r.policy == policy && r.test == test, &r.filter) {
                total.get_or_insert_with(FilterState::default).add(f);
            }
        }
        total
    }

    /// The router's filter after the last switch to `policy`.
    pub fn router_filter(&self, policy: PolicyKind) -> Option<&FilterState> {
        self.switches
            .iter()
            .rev()
            .find(|s| s.policy == policy)
            .map(|s| &s.router)
    }
}

/// The lab. Field order: nodes stop before the server, the server before its state
/// directory goes, everything before the namespaces.
struct AclLab {
    client: CtlNode,
    router: CtlNode,
    server: ControlServer,
    policies: Vec<(GeneratedPolicy, PathBuf)>,
    _dir: TempDir,
    _lab: Lab,
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl AclLab {
    fn build(bin: &Path) -> Result<AclLab> {
        let lab = Lab::new()?;
        let dir = TempDir::new("tgaclb")?;
        let server = ControlServer::start(&lab, bin, &dir).context("control server")?;
        let mut policies = Vec::new();
        for kind in PolicyKind::ALL {
            let g = policy::generate(kind);
            let path = dir.0.join(kind.file_name());
            std::fs::write(&path, &g.text)
                .with_context(|| format!("writing {}", path.display()))?;
            policies.push((g, path));
        }
        let path_str = |p: &Path| p.to_str().map(str::to_string).context("policy path");
        server.admin(&["policy", "set", &path_str(&policies[0].1)?])?;
        server.admin(&["users", "create", BENCH_USER])?;
        let router_key = server.authkey(&["--tags", ROUTER_TAG])?;
        let client_key = server.authkey(&["--user", BENCH_USER])?;
        // Both daemons as by default: the router on its XDP fast path.
        let mut router = CtlNode::start_with(&lab, bin, 2, "", &[]).context("router")?;
        router.lan_host("lan0", ROUTER_LAN_CIDR, &format!("{LAN_HOST}/24"))?;
        let client = CtlNode::start_with(&lab, bin, 1, "", &[]).context("client")?;
        router
            .up(
                &server,
                &router_key,
                &["--hostname", "router", "--advertise-routes", LAN_ROUTE],
            )
            .map_err(|e| anyhow!("tailgate up (router): {e}"))?;
        client
            .up(
                &server,
                &client_key,
                &["--hostname", "client", "--accept-routes"],
            )
            .map_err(|e| anyhow!("tailgate up (client): {e}"))?;
        let mut l = AclLab {
            client,
            router,
            server,
            policies,
            _dir: dir,
            _lab: lab,
        };
        let router = &mut l.router;
        wait_for(
            &format!("the router to serve {LAN_ROUTE} on its XDP fast path"),
            SETTLE,
            || {
                router.process.check_running()?;
                let st = router.status_json()?;
                Ok(st["routing"]["fast_path"]["routes"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == LAN_ROUTE))
                    .then_some(()))
            },
        )
        .map_err(|e| anyhow!("{e:#}\nrouter log:\n{}", tail(&router.process.log(), 20)))?;
        l.client.wait_ping(LAN_HOST)?;
        Ok(l)
    }

    fn policy(&self, kind: PolicyKind) -> Result<&(GeneratedPolicy, PathBuf)> {
        self.policies
            .iter()
            .find(|(g, _)| g.kind == kind)
            .ok_or_else(|| anyhow!("no generated policy {kind:?}"))
    }

    fn router_status(&self) -> Result<Value> {
        self.router.status_json()
    }

    fn check_running(&mut self) -> Result<()> {
        self.router.process.check_running().context("router")?;
        self.client.process.check_running().context("client")?;
        self.server
            .process
            .check_running()
            .context("control server")
    }

    /// Sets `kind` and waits until the router's and the client's filters show it and the LAN
    /// host answers a ping.
    fn apply(&mut self, kind: PolicyKind, rep: usize) -> Result<Switch> {
        let (g, path) = self.policy(kind)?.clone();
        let started = Instant::now();
        let set_output =
            self.server
                .admin(&["policy", "set", path.to_str().context("policy path")?])?;
        let mut last = Value::Null;
        let router = &mut self.router;
        let st = wait_for(
            &format!("the router's filter for the {}", kind.label()),
            SETTLE,
            || {
                router.process.check_running()?;
                let st = router.status_json()?;
                let f = &st["filter"];
                let ok = match (g.router_rules, g.allow_index) {
                    (Some(n), Some(allow)) => {
                        f["enabled"] == true
                            && f["rules"].as_u64() == Some(n as u64)
                            && f["accepted_by_acl"].get(allow.to_string()).is_some()
                    }
                    _ => f["enabled"] == false,
                };
                last = f.clone();
                Ok(ok.then_some(st))
            },
        )
        .map_err(|e| {
            anyhow!(
                "{e:#} (want {} rule(s) with acls[{}]; the router shows {last})",
                g.router_rules.unwrap_or(0),
                g.allow_index.map_or("–".into(), |i| i.to_string())
            )
        })?;
        let took = started.elapsed();
        let client = &mut self.client;
        let want_client = g.router_rules.is_some();
        let cst = wait_for("the client's filter", SETTLE, || {
            client.process.check_running()?;
            let st = client.status_json()?;
            Ok((st["filter"]["enabled"] == want_client).then_some(st))
        })?;
        self.client.wait_ping(LAN_HOST)?;
        Ok(Switch {
            rep,
            policy: kind,
            took,
            router: FilterState::from_status(&st, g.allow_index),
            client: FilterState::from_status(&cst, None),
            set_output: set_output.trim().to_string(),
        })
    }

    /// One iperf3 run with the router's counters around it.
    fn run(
        &mut self,
        rep: usize,
        kind: PolicyKind,
        test: E2eTest,
        secs: u32,
        port: u16,
    ) -> RunRecord {
        let allow = self.policy(kind).ok().and_then(|(g, _)| g.allow_index);
        let before = self.router_status().ok();
        let outcome = self.iperf(test, secs, port);
        let after = self.router_status().ok();
        let (xdp, filter) = match (&before, &after) {
            (Some(b), Some(a)) => (
                Some(
                    XdpDelta::from_counters(&a["routing"]["fast_path"]["counters"]).since(
                        &XdpDelta::from_counters(&b["routing"]["fast_path"]["counters"]),
                    ),
                ),
                Some(FilterState::from_status(a, allow).since(&FilterState::from_status(b, allow))),
            ),
            _ => (None, None),
        };
        let mut rec = RunRecord {
            rep,
            policy: kind,
            test,
            value: Err(String::new()),
            loss_pct: None,
            retransmits: None,
            xdp,
            filter,
        };
        match outcome {
            Ok(r) if test.is_udp() => match &r.udp {
                Some(u) if r.seconds > 0.0 => {
                    rec.value = Ok(u.packets.saturating_sub(u.lost_packets) as f64 / r.seconds);
                    rec.loss_pct = Some(u.lost_percent);
                }
                _ => rec.value = Err("iperf3 reported no UDP packet counts".into()),
            },
            Ok(r) => {
                rec.value = Ok(r.bits_per_second / 1e9);
                rec.retransmits = r.retransmits;
            }
            Err(e) => rec.value = Err(one_line(&format!("{e:#}"), 300)),
        }
        rec
    }

    fn iperf(
        &self,
        test: E2eTest,
        secs: u32,
        port: u16,
    ) -> Result<crate::tunnel_bench::IperfResult> {
        let lan = self
            .router
            .lan(0)
            .ok_or_else(|| anyhow!("the router has no LAN host"))?;
        let server = crate::lab::iperf3_server(lan, port)?;
        let mut client = iperf_client(&self.client.host.ns, LAN_HOST, port, secs);
        client.args(test.iperf_args());
        finish_iperf(&run_iperf_client(&mut client, secs)?, server)
    }

    fn describe(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Ok(st) = self.router_status() {
            let r = &st["routing"];
            let fast = &r["fast_path"];
            notes.push(format!(
                "router forwarding path: {}; tun_forward on {}; lan_return on {}",
                r["forwarding_path"].as_str().unwrap_or("unknown"),
                fast["tun"].as_str().unwrap_or("?"),
                fast["lan"]
                    .as_array()
                    .map(|l| l
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ));
        }
        notes
    }
}

/// Builds the lab, alternates the policies for `d.repeats` repetitions running every test
/// under each, and removes the lab. Prints a line per step.
pub fn measure(tailgate: &Path, d: &Durations) -> E2eReport {
    let g = policy::generate(PolicyKind::Acl1000);
    let mut report = E2eReport {
        acl_entries: g.acls,
        expected_router_rules: g.router_rules.unwrap_or(0),
        ..E2eReport::default()
    };
    let started = Instant::now();
    let mut lab = match AclLab::build(tailgate) {
        Ok(l) => l,
        Err(e) => {
            let e = format!("{e:#}");
            println!("   lab failed: {}", one_line(&e, 400));
            report.error = Some(e);
            return report;
        }
    };
    println!("   lab ready in {:.1} s", started.elapsed().as_secs_f64());
    report.notes = lab.describe();
    let ports: Vec<u16> = IPERF_PORTS.collect();
    let mut next_port = 0usize;
    'outer: for rep in 0..d.repeats.max(1) {
        for test in TESTS {
            for kind in PolicyKind::ALL {
                if interrupted() {
                    report.error = Some("interrupted".into());
                    break 'outer;
                }
                match lab.apply(kind, rep) {
                    Ok(s) => {
                        println!(
                            "   rep {}/{}: {} set; router filter {} ({} rule(s), {} atom(s)) \
                             after {:.0} ms",
                            rep + 1,
                            d.repeats,
                            kind.label(),
                            if s.router.enabled { "on" } else { "off" },
                            s.router.rules,
                            s.router.atoms,
                            s.took.as_secs_f64() * 1e3
                        );
                        report.switches.push(s);
                    }
                    Err(e) => {
                        let e = format!("setting the {}: {e:#}", kind.label());
                        println!("   {}", one_line(&e, 400));
                        report.error = Some(e);
                        break 'outer;
                    }
                }
                std::thread::sleep(SWITCH_SETTLE);
                let port = ports[next_port % ports.len()];
                next_port += 1;
                let rec = lab.run(rep, kind, test, d.iperf_seconds, port);
                let xdp = rec
                    .xdp
                    .map(|x| {
                        format!(
                            " (XDP: tun_forward redirected {}, passed GSO {}; lan_return {})",
                            x.tun_forwarded, x.tun_passed_gso, x.lan_returned
                        )
                    })
                    .unwrap_or_default();
                let line = match &rec.value {
                    Ok(v) if test.is_udp() => format!(
                        "{:.0} kpps received, {:.1} % lost{xdp}",
                        v / 1e3,
                        rec.loss_pct.unwrap_or(0.0)
                    ),
                    Ok(v) => format!("{v:.2} Gbit/s{xdp}"),
                    Err(e) => format!("failed: {e}"),
                };
                println!("   {:<22} {:<20} {line}", kind.label(), test.name());
                report.runs.push(rec);
                if let Err(e) = lab.check_running() {
                    report.error = Some(format!("a node stopped: {e:#}"));
                    break 'outer;
                }
            }
        }
    }
    if report.error.is_none() {
        // Everything went as planned: the daemons' logs are not needed.
        lab.client.process.discard_log_on_drop();
        lab.router.process.discard_log_on_drop();
        lab.server.process.discard_log_on_drop();
    }
    drop(lab);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_state_from_status_and_deltas() {
        let st: Value = serde_json::from_str(
            r#"{"filter":{"enabled":true,"rules":976,"atoms":3000,"flows":2,
                "accepted_by_acl":{"0":1,"999":2},"accepted_established":100,
                "dropped_no_rule":3,"dropped_malformed":0}}"#,
        )
        .unwrap();
        let a = FilterState::from_status(&st, Some(999));
        assert_eq!(
            (
                a.enabled,
                a.rules,
                a.atoms,
                a.accepted_new,
                a.accepted_by_allow
            ),
            (true, 976, 3000, 3, 2)
        );
        let mut b = a.clone();
        b.accepted_established = 150;
        assert_eq!(b.since(&a).accepted_established, 50);
        let off = FilterState::from_status(&serde_json::json!({"filter":{"enabled":false}}), None);
        assert!(!off.enabled && off.rules == 0);
    }
}
