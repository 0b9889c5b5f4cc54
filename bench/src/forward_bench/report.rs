//! The Markdown report of a forwarding benchmark run, and checks of its completeness.

use std::fmt::Write as _;

use super::end_to_end::{
    E2eTest, PathFigures, PathResult, RouterPath, LAN_HOST, LAN_ROUTE, UDP_PAYLOAD, UDP_RATE,
};
use super::lpm::{per_sec, BpfLpm, Timing, UserspaceLpm, MISS_ADDR, SMALL_ROUTES};
use super::stage::{ForwardVariant, ReturnVariant, StageReport, StageRow, HOST};
use super::{one_line, Mode, Report};

/// The packet-rate goal of the fast path: XDP at least this many times the nftables path.
pub const GOAL_RATIO: f64 = 3.0;

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
}

/// Thousands separators for counts (1000000 → 1,000,000).
pub fn grouped(n: u64) -> String {
    let digits: Vec<char> = n.to_string().chars().rev().collect();
    let mut out: Vec<char> = Vec::with_capacity(digits.len() * 4 / 3 + 1);
    for (i, chunk) in digits.chunks(3).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.extend(chunk);
    }
    out.iter().rev().collect()
}

impl Report {
    /// The end-to-end figures of `path`, if it was measured.
    pub fn path(&self, path: RouterPath) -> Option<&PathFigures> {
        self.end_to_end
            .iter()
            .find(|p| p.path == path)
            .and_then(|p| p.outcome.as_ref().ok())
    }

    /// Median of an end-to-end figure on `path`.
    pub fn e2e(&self, path: RouterPath, test: E2eTest) -> Option<f64> {
        self.path(path)?.median(test)
    }

    /// XDP (default) / nftables ratio of an end-to-end figure.
    pub fn e2e_ratio(&self, test: E2eTest) -> Option<f64> {
        self.e2e_ratio_of(RouterPath::Xdp, test)
    }

    /// `path` / nftables ratio of an end-to-end figure.
    pub fn e2e_ratio_of(&self, path: RouterPath, test: E2eTest) -> Option<f64> {
        ratio(self.e2e(path, test), self.e2e(RouterPath::Nftables, test))
    }

    /// Router stage TUN → LAN: (XDP + SNAT, kernel + masquerade) delivered packets/s.
    pub fn stage_forward_pair(&self) -> (Option<f64>, Option<f64>) {
        let pick = |v| self.stage_forward.row(v).and_then(StageRow::delivered_pps);
        (
            pick(ForwardVariant::XdpSnat),
            pick(ForwardVariant::KernelMasquerade),
        )
    }

    /// Router stage LAN → TUN: (XDP native, kernel conntrack) packets/s read from the TUN.
    pub fn stage_return_pair(&self) -> (Option<f64>, Option<f64>) {
        let pick = |v| self.stage_return.row(v).and_then(StageRow::delivered_pps);
        (
            pick(ReturnVariant::XdpNative),
            pick(ReturnVariant::KernelConntrack),
        )
    }

    /// Every figure of the report that has no number, by name (empty when complete).
    pub fn missing_figures(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for path in RouterPath::ALL {
            match self.end_to_end.iter().find(|p| p.path == path) {
                Some(PathResult { outcome: Ok(f), .. }) => {
                    for t in E2eTest::ALL {
                        if f.median(t).is_none() {
                            missing.push(format!("end to end, {path}, {}", t.name()));
                        }
                        if t.is_udp() && f.test(t).and_then(|x| x.loss_pct.median()).is_none() {
                            missing.push(format!("end to end, {path}, {} loss", t.name()));
                        }
                    }
                }
                Some(PathResult {
                    outcome: Err(e), ..
                }) => missing.push(format!("end to end, {path}: {}", one_line(e, 200))),
                None => missing.push(format!("end to end, {path}: not run")),
            }
        }
        for row in &self.stage_forward.rows {
            // A row through which nothing arrived has no figure either.
            if row.offered_pps().is_none() || row.delivered_pps().is_none_or(|p| p <= 0.0) {
                missing.push(format!("router stage TUN → LAN, {}", row.variant));
            }
            if row.variant.is_xdp() && row.ns_per_pkt().is_none() {
                missing.push(format!(
                    "router stage TUN → LAN, {}, ns/packet",
                    row.variant
                ));
            }
        }
        for row in &self.stage_return.rows {
            // A row through which nothing arrived has no figure either.
            if row.offered_pps().is_none() || row.delivered_pps().is_none_or(|p| p <= 0.0) {
                missing.push(format!("router stage LAN → TUN, {}", row.variant));
            }
            if row.variant.is_xdp() && row.ns_per_pkt().is_none() {
                missing.push(format!(
                    "router stage LAN → TUN, {}, ns/packet",
                    row.variant
                ));
            }
        }
        match &self.lpm.userspace {
            Ok(u) => {
                if u.lookups == 0 || u.lookup.is_zero() || u.insert.is_zero() {
                    missing.push("LPM userspace: no timing".into());
                }
            }
            Err(e) => missing.push(format!("LPM userspace: {}", one_line(e, 200))),
        }
        match &self.lpm.bpf {
            Ok(b) => {
                for (name, t) in bpf_timings(b) {
                    if t.ns().is_none() {
                        missing.push(format!("LPM BPF {name}: no timing"));
                    }
                }
                if b.insert_error.is_some() || b.routes < b.requested + 1 {
                    missing.push(format!(
                        "LPM BPF: {} of {} routes inserted",
                        b.routes,
                        b.requested + 1
                    ));
                }
            }
            Err(e) => missing.push(format!("LPM BPF: {}", one_line(e, 200))),
        }
        missing
    }

    /// XDP rows whose counters do not show XDP forwarding (empty when every XDP row does).
    pub fn xdp_counter_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for path in RouterPath::ALL.into_iter().filter(|p| p.is_xdp()) {
            let Some(f) = self.path(path) else { continue };
            for t in &f.tests {
                let Some(d) = &t.xdp else {
                    problems.push(format!(
                        "end to end {path}, {}: no XDP counters",
                        t.test.name()
                    ));
                    continue;
                };
                let n = if t.test.is_reverse() {
                    d.lan_returned
                } else {
                    d.tun_forwarded
                };
                if n == 0 {
                    problems.push(format!(
                        "end to end {path}, {}: XDP {} nothing ({d:?})",
                        t.test.name(),
                        if t.test.is_reverse() {
                            "returned"
                        } else {
                            "forwarded"
                        }
                    ));
                }
            }
        }
        for row in &self.stage_forward.rows {
            if row.variant.is_xdp() && row.xdp_total(|c| c.tun.forwarded()).unwrap_or(0) == 0 {
                problems.push(format!(
                    "router stage {}: XDP forwarded nothing",
                    row.variant
                ));
            }
        }
        for row in &self.stage_return.rows {
            if row.variant.is_xdp() && row.xdp_total(|c| c.lan.returned()).unwrap_or(0) == 0 {
                problems.push(format!(
                    "router stage {}: XDP returned nothing",
                    row.variant
                ));
            }
        }
        if let Ok(b) = &self.lpm.bpf {
            for (name, t, want, counter) in [
                (
                    "forwarded, 10 routes",
                    &b.hit_small,
                    "XDP_REDIRECT",
                    "forwarded_v4",
                ),
                (
                    "forwarded, full trie",
                    &b.hit_full,
                    "XDP_REDIRECT",
                    "forwarded_v4",
                ),
                (
                    "LPM hit + TTL 1, 10 routes",
                    &b.lookup_small,
                    "XDP_PASS",
                    "passed_ttl",
                ),
                (
                    "LPM hit + TTL 1, full trie",
                    &b.lookup_full,
                    "XDP_PASS",
                    "passed_ttl",
                ),
                (
                    "no route, 10 routes",
                    &b.miss_small,
                    "XDP_PASS",
                    "passed_no_match",
                ),
                (
                    "no route, full trie",
                    &b.miss_full,
                    "XDP_PASS",
                    "passed_no_match",
                ),
            ] {
                if t.action_name() != want || t.counter != counter {
                    problems.push(format!(
                        "LPM BPF {name}: {} ({}) instead of {want} ({counter})",
                        t.action_name(),
                        t.counter
                    ));
                }
            }
        }
        problems
    }
}

/// The Markdown report.
pub fn render_markdown(r: &Report) -> String {
    let mut s = String::new();
    let d = &r.settings.durations;
    let _ = writeln!(s, "# Forwarding benchmark: XDP fast path vs nftables\n");
    let cmd = match r.settings.mode {
        Mode::Full => "`cargo xtask bench forward`",
        Mode::Quick => "`cargo xtask bench forward --quick`",
        Mode::Smoke => "the forwarding benchmark's smoke test",
    };
    let how = if d.repeats > 1 {
        format!(
            "Each end-to-end figure is the median of {} runs of {} s, each router-stage figure \
             the median of {} runs of {:.1} s.",
            d.repeats,
            d.iperf_seconds,
            d.stage_repeats,
            d.stage.as_secs_f64()
        )
    } else {
        format!(
            "{} mode: one run of {} s per end-to-end figure and of {:.1} s per router-stage \
             figure, so the figures are only indicative.",
            if r.settings.mode == Mode::Quick {
                "Quick"
            } else {
                "Smoke"
            },
            d.iperf_seconds,
            d.stage.as_secs_f64()
        )
    };
    let _ = writeln!(
        s,
        "Written by {cmd}. {how} The LPM tables hold {} random prefixes{}. The whole run took \
         {:.0} s. Figures are as measured on a shared machine; nothing is tuned per path.\n",
        grouped(d.prefixes as u64),
        if d.prefixes < 1_000_000 {
            " (fewer than the 1,000,000 of a full run)"
        } else {
            ""
        },
        r.elapsed.as_secs_f64()
    );

    let m = &r.machine;
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    for (k, v) in [
        ("CPU", m.cpu.clone()),
        ("cores", m.cores.to_string()),
        ("kernel", m.kernel.clone()),
        ("date", m.date.clone()),
        ("tailgate commit", m.commit.clone()),
        ("iperf3", m.iperf3.clone()),
        ("load average at start", m.loadavg.clone()),
    ] {
        let _ = writeln!(s, "| {k} | {} |", one_line(&v, 200));
    }

    summary(&mut s, r);
    end_to_end(&mut s, r);
    stage(&mut s, r);
    lpm(&mut s, r);
    notes(&mut s, r);
    every_run(&mut s, r);
    s
}

fn summary(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\n## Summary\n");
    let _ = writeln!(
        s,
        "The XDP path's figure divided by the nftables path's, both measured in this run on \
         the same topology. The goal for the fast path is at least {GOAL_RATIO:.0}× the \
         nftables path in packets per second.\n"
    );
    let _ = writeln!(
        s,
        "| figure | XDP | nftables | XDP / nftables | ≥ {GOAL_RATIO:.0}× |\n|---|---:|---:|---:|---|"
    );
    let mut row =
        |name: &str, unit_scale: f64, digits: usize, a: Option<f64>, b: Option<f64>, goal: bool| {
            let q = ratio(a, b);
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                fmt(a.map(|v| v * unit_scale), digits),
                fmt(b.map(|v| v * unit_scale), digits),
                fmt_ratio(q),
                match (goal, q) {
                    (false, _) => "",
                    (true, Some(q)) if q >= GOAL_RATIO => "yes",
                    (true, Some(_)) => "no",
                    (true, None) => "–",
                }
            );
        };
    for test in [E2eTest::UdpFwd, E2eTest::UdpRev] {
        row(
            &format!("end to end, {}, kpps received", test.name()),
            1e-3,
            0,
            r.e2e(RouterPath::Xdp, test),
            r.e2e(RouterPath::Nftables, test),
            true,
        );
    }
    for test in [E2eTest::TcpFwd, E2eTest::TcpRev] {
        row(
            &format!("end to end, {}, Gbit/s", test.name()),
            1.0,
            2,
            r.e2e(RouterPath::Xdp, test),
            r.e2e(RouterPath::Nftables, test),
            false,
        );
    }
    let (a, b) = r.stage_forward_pair();
    row(
        "router stage, TUN → LAN, kpps delivered (tun_forward + SNAT vs kernel + masquerade)",
        1e-3,
        0,
        a,
        b,
        true,
    );
    let (a, b) = r.stage_return_pair();
    row(
        "router stage, LAN → TUN, kpps read from the TUN (lan_return native vs conntrack)",
        1e-3,
        0,
        a,
        b,
        true,
    );
    let pick = |v| r.stage_return.row(v).and_then(StageRow::delivered_pps);
    row(
        "router stage, LAN → tunnel path, kpps received (lan_return → AF_XDP socket vs conntrack → TUN)",
        1e-3,
        0,
        pick(ReturnVariant::XdpNativeAfXdp),
        pick(ReturnVariant::KernelConntrack),
        true,
    );
    row(
        "router stage, LAN → tunnel path, router on one core, kpps received (lan_return → AF_XDP socket vs conntrack → TUN)",
        1e-3,
        0,
        pick(ReturnVariant::XdpNativeAfXdpOneCore),
        pick(ReturnVariant::KernelConntrackOneCore),
        true,
    );
    let generic: Vec<String> = E2eTest::ALL
        .iter()
        .map(|&t| {
            format!(
                "{} {}",
                t.name(),
                fmt_ratio(r.e2e_ratio_of(RouterPath::XdpGeneric, t))
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\nThe XDP column is the daemon's default (`--xdp auto`, which attaches `lan_return` \
         in native mode on the veth LAN). With `--xdp generic` (`lan_return` in generic mode, \
         after GRO) the end-to-end ratios to nftables are: {}.",
        generic.join(", ")
    );
    let _ = writeln!(
        s,
        "\nEnd to end, every packet also crosses the WireGuard tunnel (decrypted and encrypted \
         in userspace by the client's and the router's daemons), and the client, the router, \
         the LAN host and iperf3 share the same cores, so the end-to-end figures include the \
         tunnel's cost on both paths. The router-stage rows isolate the forwarding step (no \
         tunnel, no encryption)."
    );
}

fn end_to_end(s: &mut String, r: &Report) {
    let d = &r.settings.durations;
    let _ = writeln!(s, "\n## 1. End to end through the router\n");
    let _ = writeln!(
        s,
        "Three labs side by side, each with its own namespaces: a tailgate client (node 1, \
         `accept_routes = true`) and a tailgate subnet router (node 2, advertising \
         `{LAN_ROUTE}`, SNAT on) joined by a bridged veth underlay and a WireGuard tunnel (MTU \
         1280), and a LAN host `{LAN_HOST}` behind the router's `lan0` veth. The routers \
         differ only in their forwarding path: the XDP path as the daemon runs it by default \
         (`tailgate daemon --xdp auto`: `tun_forward` on its TUN in generic mode, \
         `lan_return` in native mode on `lan0`, no `wan_ingress` on the veth underlay), the \
         XDP path with `--xdp generic` (`lan_return` in generic mode, after GRO; \
         `wan_ingress` in generic mode on the underlay), and the nftables path (`--no-xdp`: \
         kernel forwarding and masquerade). The clients are the same (`--xdp auto`). Each \
         test runs on one lab after the other, repetition by repetition.\n"
    );
    let _ = writeln!(
        s,
        "- TCP: `iperf3 -c {LAN_HOST} -t {t}`, one stream, client → LAN host (→) and LAN host \
         → client (←, `-R`); rates as the receiver measured them.\n\
         - UDP: `iperf3 -u -b {UDP_RATE} -l {UDP_PAYLOAD} -t {t}` ({}-byte IPv4 packets, far \
         more offered than either path carries), both directions; datagrams per second the \
         receiver got, and the loss iperf3 reports.\n\
         - XDP counters: the router's `routing.fast_path.counters` from `tailgate status \
         --json` before and after each run, summed over the runs.\n\
         - Return path: the XDP routers hand the replies `lan_return` de-NATs to AF_XDP \
         sockets on `lan0` that the daemon reads and encrypts like packets from its TUN; \
         replies with partial transport checksums (a sender on this machine with checksum \
         offload, as the LAN host's veth has by default) go through the kernel into the TUN \
         instead. For UDP ← LAN the LAN host's TX checksum offload is off (`ethtool -K eth1 \
         tx off`, on every path alike), so the XDP routers' replies take the sockets; the TCP \
         tests keep the offload (and TSO) on, so their replies take the kernel.\n",
        UDP_PAYLOAD + 28,
        t = d.iperf_seconds
    );
    let _ = writeln!(
        s,
        "| path | TCP → LAN Gbit/s | TCP ← LAN Gbit/s | UDP 64 B → LAN kpps | loss % | UDP 64 B \
         ← LAN kpps | loss % | packets XDP forwarded + returned |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for p in &r.end_to_end {
        let _ = write!(s, "| {} |", p.path);
        match &p.outcome {
            Ok(f) => {
                let loss = |t: E2eTest| f.test(t).and_then(|x| x.loss_pct.median());
                let _ = writeln!(
                    s,
                    " {} | {} | {} | {} | {} | {} | {} |",
                    fmt(f.median(E2eTest::TcpFwd), 2),
                    fmt(f.median(E2eTest::TcpRev), 2),
                    fmt(f.median(E2eTest::UdpFwd).map(|v| v / 1e3), 0),
                    fmt(loss(E2eTest::UdpFwd), 1),
                    fmt(f.median(E2eTest::UdpRev).map(|v| v / 1e3), 0),
                    fmt(loss(E2eTest::UdpRev), 1),
                    f.xdp_total()
                        .map_or_else(|| "– (no XDP)".into(), |x| grouped(x.xdp_packets()))
                );
            }
            Err(e) => {
                let _ = writeln!(s, " – | – | – | – | – | – | failed: {} |", one_line(e, 200));
            }
        }
    }
    for path in RouterPath::ALL.into_iter().filter(|p| p.is_xdp()) {
        let _ = writeln!(
            s,
            "| **{path} / nftables** | {} | {} | {} | | {} | | |",
            fmt_ratio(r.e2e_ratio_of(path, E2eTest::TcpFwd)),
            fmt_ratio(r.e2e_ratio_of(path, E2eTest::TcpRev)),
            fmt_ratio(r.e2e_ratio_of(path, E2eTest::UdpFwd)),
            fmt_ratio(r.e2e_ratio_of(path, E2eTest::UdpRev)),
        );
    }
    let xdp_paths: Vec<(RouterPath, &PathFigures)> = RouterPath::ALL
        .into_iter()
        .filter(|p| p.is_xdp())
        .filter_map(|p| r.path(p).map(|f| (p, f)))
        .collect();
    if !xdp_paths.is_empty() {
        let _ = writeln!(
            s,
            "\nThe XDP router's counters over the runs of each test (packets). \
             `tun_forward` sees what the router's daemon writes into its TUN (client → LAN); \
             GSO super-packets (TCP segments the daemon coalesced) are NATed and passed for the \
             kernel to segment and route. `lan_return` sees what arrives on `lan0` (LAN → \
             client) and hands de-NATed replies to the daemon's AF_XDP sockets (full \
             checksums; counted again under \"to AF_XDP sockets\") or to the kernel, which \
             routes them into the TUN (partial checksums). In generic mode `lan_return` runs after GRO, so one packet it counts can be \
             several merged TCP segments; in native mode it runs before GRO and counts every \
             segment.\n"
        );
        let _ = writeln!(
            s,
            "| router | test | tun_forward redirected | tun_forward passed GSO | tun_forward \
             passed, other | lan_return returned | to AF_XDP sockets | lan_return passed \
             |\n|---|---|---:|---:|---:|---:|---:|---:|"
        );
        for (path, f) in &xdp_paths {
            for t in &f.tests {
                match &t.xdp {
                    Some(x) => {
                        let _ = writeln!(
                            s,
                            "| {path} | {} | {} | {} | {} | {} | {} | {} |",
                            t.test.name(),
                            grouped(x.tun_forwarded),
                            grouped(x.tun_passed_gso),
                            grouped(x.tun_passed_other),
                            grouped(x.lan_returned),
                            grouped(x.lan_to_sockets),
                            grouped(x.lan_passed)
                        );
                    }
                    None => {
                        let _ =
                            writeln!(s, "| {path} | {} | – | – | – | – | – | – |", t.test.name());
                    }
                }
            }
        }
    }
}

fn stage_table<V: Copy + std::fmt::Display>(
    s: &mut String,
    report: &StageReport<V>,
    headers: &str,
    xdp_count: fn(&tailgate::xdp::ForwardCounters) -> u64,
) {
    let _ = writeln!(s, "{headers}");
    for row in &report.rows {
        let ratio_read = ratio(row.delivered_pps(), row.offered_pps()).map(|r| r * 100.0);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            row.variant,
            fmt(row.offered_pps().map(|v| v / 1e3), 0),
            fmt(row.delivered_pps().map(|v| v / 1e3), 0),
            fmt(ratio_read, 0),
            fmt(row.ns_per_pkt(), 0),
            row.xdp_total(xdp_count)
                .map_or_else(|| "– (no XDP)".into(), grouped)
                + &if row.failures.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} run(s) failed: {}",
                        row.failures.len(),
                        one_line(&row.failures[0], 200)
                    )
                }
        );
    }
}

/// The per-write costs of the TUN → LAN rows with NAT, from which the best ratio a free
/// forwarding step could give follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardBound {
    /// ns per TUN write on the XDP path (`tun_forward` + SNAT).
    pub xdp_ns: f64,
    /// `tun_forward`'s own run time per packet.
    pub program_ns: f64,
    /// ns per TUN write on the nftables path (kernel + masquerade).
    pub kernel_ns: f64,
}

impl ForwardBound {
    /// nftables cost / (XDP cost without the program): the XDP / nftables ratio if
    /// `tun_forward` cost nothing.
    pub fn ceiling(&self) -> f64 {
        self.kernel_ns / (self.xdp_ns - self.program_ns)
    }
}

/// The [`ForwardBound`] of a TUN → LAN report, when both NAT rows and the program's cost were
/// measured.
pub fn forward_bound(report: &StageReport<ForwardVariant>) -> Option<ForwardBound> {
    let ns_per_write = |v| {
        let pps = report.row(v)?.offered_pps()?;
        (pps > 0.0).then(|| 1e9 / pps)
    };
    let xdp_ns = ns_per_write(ForwardVariant::XdpSnat)?;
    let program_ns = report.row(ForwardVariant::XdpSnat)?.ns_per_pkt()?;
    let kernel_ns = ns_per_write(ForwardVariant::KernelMasquerade)?;
    (program_ns < xdp_ns).then_some(ForwardBound {
        xdp_ns,
        program_ns,
        kernel_ns,
    })
}

fn stage(s: &mut String, r: &Report) {
    let d = &r.settings.durations;
    let _ = writeln!(s, "\n## 2. Router stage only\n");
    let _ = writeln!(
        s,
        "No tunnel: a router namespace with a TUN device (`tgtun0`, MTU 1280) that this \
         process writes to and reads from as the daemon would, and a LAN veth (`lan0`, \
         `10.1.1.1/24`) to a LAN host namespace (`{HOST}`). Every run builds fresh namespaces; \
         {} run(s) of {:.1} s per row. Packets are 46-byte IPv4 UDP packets (a 64-byte frame \
         on the LAN). \"XDP ns/packet\" is the program's own run time per invocation \
         (`kernel.bpf_stats_enabled`), taken in a further 0.2 s the XDP rows run after the \
         measured phase: statistics add two clock reads to every program run, so the rates \
         are measured with them off.\n",
        d.stage_repeats,
        d.stage.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "### TUN → LAN\n\nOne thread writes packets from a tailnet client (`100.64.0.5`) to \
         the LAN host into the TUN; a TUN write runs the receive path (XDP, or the kernel's \
         forwarding and nftables) synchronously, so writes per second measure the per-packet \
         cost of the path. Delivered: the LAN host's `rx_packets`.\n"
    );
    stage_table(
        s,
        &r.stage_forward,
        "| path | TUN writes kpps | delivered to the LAN host kpps | delivered % | XDP \
         ns/packet | redirected by XDP |\n|---|---:|---:|---:|---:|---:|",
        |c| c.tun.forwarded(),
    );
    let pick = |v| r.stage_forward.row(v).and_then(StageRow::delivered_pps);
    let _ = writeln!(
        s,
        "\nXDP / kernel, delivered: with NAT (the daemon's paths) {}, without NAT {}.",
        fmt_ratio(ratio(
            pick(ForwardVariant::XdpSnat),
            pick(ForwardVariant::KernelMasquerade)
        )),
        fmt_ratio(ratio(
            pick(ForwardVariant::XdpNoNat),
            pick(ForwardVariant::KernelNoNat)
        )),
    );
    if let Some(b) = forward_bound(&r.stage_forward) {
        let _ = writeln!(
            s,
            "\nWhere the time goes: a write through the XDP path took {:.0} ns, of which \
             `tun_forward` itself ran {:.0} ns (with statistics on, so a little more than without); \
             the rest (the system call, the skb, generic XDP's setup, the veth and the LAN host's \
             receive) is work the nftables path does too, which took {:.0} ns per write. A \
             forwarding step that cost nothing would make the XDP path at most {} the nftables \
             path in this direction: a daemon that writes each packet into a TUN cannot reach \
             {GOAL_RATIO:.0}× here on either path.",
            b.xdp_ns,
            b.program_ns,
            b.kernel_ns,
            fmt_ratio(Some(b.ceiling())),
        );
    }
    let _ = writeln!(
        s,
        "\n### LAN → TUN\n\nThe LAN host floods replies to a flow the router SNATed (UDP from \
         `{HOST}:5353` to the router's LAN address, full checksums, as a host on a real LAN \
         sends them). They are made by an XDP traffic generator on the LAN host's veth: a \
         program that writes the frame and returns `XDP_TX`, run in the kernel's live-frames \
         `BPF_PROG_RUN` mode (as `xdp-trafficgen` does). Making a frame costs tens of \
         nanoseconds, and the router's receive path runs on the same CPU right after each \
         batch of 64 (the veth hands the frames to the router's NAPI there), so the rate is \
         set by the router's per-packet cost, not by a sender's system calls; \"sent\" counts \
         the frames made, of which the veth drops those its ring has no room for. GRO is on \
         on the router's `lan0` in every row (a veth takes frames sent with XDP only while its \
         NAPI runs; GRO merges no forwarded UDP). One thread reads the TUN. The generator is \
         pinned to CPU 0 and the reader to CPU 1. In the first four rows the router's receive \
         path (the NAPI poll of `lan0`) runs on CPU 0 in the generator's softirq, as a veth \
         does by default, so the router has the reader's core and a share of the generator's. \
         In the rows \"router on one core\" that NAPI poll runs in a kernel thread (threaded \
         NAPI, `/sys/class/net/lan0/threaded`) pinned to CPU 1 with the reader: the router's \
         whole work for a packet, receive path and read, is on one core, and the generator \
         alone on the other, as a LAN host on another machine would be; the NAPI thread and \
         the reader then take turns on that core (the TUN reader with a `read` system call \
         per packet, the socket reader with one pass over its ring per batch), what the reader \
         cannot take in time is dropped at the TUN's queue or the socket's ring, and \
         `lan_return`'s own time is higher, as the two share one core's caches. The kernel path \
         de-NATs with conntrack (nftables masquerade); `lan_return` de-NATs in XDP and passes \
         the packet to the kernel, which routes it into the TUN. In the AF_XDP row, \
         `lan_return` (native) redirects the de-NATed packets to an AF_XDP socket on `lan0` \
         (copy mode, the veth's only queue) and the thread reads the socket instead of the \
         TUN: the packets the daemon would encrypt, without the kernel's routing and the \
         TUN. That is the return path the daemon itself uses (§1): its readers take these \
         packets off one socket per receive queue and encrypt them like packets from the \
         TUN.\n"
    );
    stage_table(
        s,
        &r.stage_return,
        "| path | made by the LAN host's generator kpps | read from the TUN (AF_XDP rows: from the socket) \
         kpps | read % | XDP ns/packet | returned by XDP |\n|---|---:|---:|---:|---:|---:|",
        |c| c.lan.returned(),
    );
    let pick = |v| r.stage_return.row(v).and_then(StageRow::delivered_pps);
    let _ = writeln!(
        s,
        "\nXDP / kernel, read from the TUN: native {}, generic {}. Received on the AF_XDP \
         socket / read from the TUN with kernel conntrack: {}. With the router on one core: \
         native {}, AF_XDP socket {}.",
        fmt_ratio(ratio(
            pick(ReturnVariant::XdpNative),
            pick(ReturnVariant::KernelConntrack)
        )),
        fmt_ratio(ratio(
            pick(ReturnVariant::XdpGeneric),
            pick(ReturnVariant::KernelConntrack)
        )),
        fmt_ratio(ratio(
            pick(ReturnVariant::XdpNativeAfXdp),
            pick(ReturnVariant::KernelConntrack)
        )),
        fmt_ratio(ratio(
            pick(ReturnVariant::XdpNativeOneCore),
            pick(ReturnVariant::KernelConntrackOneCore)
        )),
        fmt_ratio(ratio(
            pick(ReturnVariant::XdpNativeAfXdpOneCore),
            pick(ReturnVariant::KernelConntrackOneCore)
        )),
    );
    if let Some(row) = r.stage_return.row(ReturnVariant::XdpNativeAfXdp) {
        if let Some(n) = row.xdp_total(|c| c.lan.redirected_xsk) {
            let _ = writeln!(
                s,
                "\nIn the AF_XDP row `lan_return` redirected {} packets to the socket \
                 (`redirected_xsk`).",
                grouped(n)
            );
        }
    }
}

fn userspace_table(s: &mut String, u: &UserspaceLpm) {
    let _ = writeln!(
        s,
        "| prefixes | insert all, s | inserts/s | lookups/s (random addresses) | ns/lookup | \
         lookups that matched | updates/s (remove + insert) |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    let lookups = per_sec(u.lookups, u.lookup);
    let _ = writeln!(
        s,
        "| {} | {:.2} | {} | {} | {} | {:.1} % | {} |",
        grouped(u.prefixes as u64),
        u.insert.as_secs_f64(),
        grouped(per_sec(u.prefixes, u.insert) as u64),
        grouped(lookups as u64),
        fmt((lookups > 0.0).then(|| 1e9 / lookups), 0),
        if u.lookups > 0 {
            u.matched as f64 * 100.0 / u.lookups as f64
        } else {
            0.0
        },
        grouped(per_sec(u.updates, u.update) as u64),
    );
}

fn bpf_table(s: &mut String, b: &BpfLpm) {
    let _ = writeln!(
        s,
        "| routes in the trie | max_routes | bulk insert, s | inserts/s | updates/s (remove + \
         insert) |\n|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        s,
        "| {} | {} | {:.2} | {} | {} |",
        grouped(b.routes as u64),
        grouped(u64::from(b.max_routes)),
        b.insert.as_secs_f64(),
        grouped(per_sec(b.inserted, b.insert) as u64),
        grouped(per_sec(b.updates, b.update) as u64),
    );
    let _ = writeln!(
        s,
        "\n`tun_forward` per packet (`BPF_PROG_TEST_RUN`, median of 5 batches). The forwarded \
         packet is rewritten by the program, so it is timed as single runs ({} per batch, each \
         on a fresh copy; the kernel's per-run time includes its clock reads); the other two \
         stay unmodified and are timed over {} repetitions per call. The TTL-1 packet matches \
         the LAN route and is then passed untouched (the kernel must answer it): parse + LPM \
         hit, without the connection and FIB lookups.\n",
        grouped(u64::from(b.single_runs)),
        grouped(u64::from(b.repeat))
    );
    let _ = writeln!(
        s,
        "| packet | ns/packet, {SMALL_ROUTES} routes | ns/packet, {} routes | full / small | \
         verdict (counter) |\n|---|---:|---:|---:|---|",
        grouped(b.routes as u64)
    );
    for (name, small, full) in [
        (
            format!("to `{HOST}` (matches `10.1.1.0/24`), forwarded"),
            &b.hit_small,
            &b.hit_full,
        ),
        (
            format!("to `{HOST}`, TTL 1: LPM hit only"),
            &b.lookup_small,
            &b.lookup_full,
        ),
        (
            format!("to `{MISS_ADDR}`: no route (LPM miss)"),
            &b.miss_small,
            &b.miss_full,
        ),
    ] {
        let verdict = |t: &Timing| format!("{} ({})", t.action_name(), t.counter);
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            fmt(small.ns(), 0),
            fmt(full.ns(), 0),
            fmt_ratio(ratio(full.ns(), small.ns())),
            if verdict(small) == verdict(full) {
                verdict(full)
            } else {
                format!("{} / {}", verdict(small), verdict(full))
            }
        );
    }
    for (what, e) in [
        ("bulk insert", &b.insert_error),
        ("updates", &b.update_error),
    ] {
        if let Some(e) = e {
            let _ = writeln!(s, "\n**The {what} stopped early:** {}", one_line(e, 400));
        }
    }
}

fn lpm(s: &mut String, r: &Report) {
    let l = &r.lpm;
    let _ = writeln!(
        s,
        "\n## 3. Longest-prefix match with {} prefixes\n",
        grouped(l.requested as u64)
    );
    let _ = writeln!(
        s,
        "{} distinct random IPv4 prefixes from a fixed-seed generator (lengths 8–32 \
         uniformly, none inside `10.0.0.0/8`), plus the lab's LAN route `10.1.1.0/24`, in the \
         userspace `PrefixTable` (one hash map per prefix length, probed longest first) and in \
         the BPF LPM trie `tun_forward` uses (`XdpForward::add_route`, one `bpf` syscall per \
         route). Updates remove existing prefixes and insert them again on the full table.{}\n",
        grouped(l.generated as u64),
        if l.generated < l.requested {
            format!(
                " The generator gave only {} of the {} prefixes asked for.",
                l.generated, l.requested
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "### Userspace `PrefixTable`\n");
    match &l.userspace {
        Ok(u) => userspace_table(s, u),
        Err(e) => {
            let _ = writeln!(s, "Failed: {}", one_line(e, 400));
        }
    }
    let _ = writeln!(s, "\n### BPF LPM trie (`tun_forward`)\n");
    match &l.bpf {
        Ok(b) => bpf_table(s, b),
        Err(e) => {
            let _ = writeln!(s, "Failed: {}", one_line(e, 400));
        }
    }
}

fn notes(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\n## Notes\n");
    let mut any = false;
    let mut note = |s: &mut String, n: String| {
        let _ = writeln!(s, "- {n}");
        any = true;
    };
    for p in &r.end_to_end {
        for n in &p.notes {
            note(s, format!("{}: {}", p.path, one_line(n, 400)));
        }
    }
    for row in &r.stage_return.rows {
        if let Some(n) = row.runs.first().and_then(|x| x.note.as_ref()) {
            note(s, format!("router stage {}: {n}", row.variant));
        }
    }
    if let Ok(b) = &r.lpm.bpf {
        for n in &b.notes {
            note(s, format!("BPF LPM trie: {}", one_line(n, 400)));
        }
    }
    for p in r.xdp_counter_problems() {
        note(s, format!("XDP counters: {p}"));
    }
    if !any {
        let _ = writeln!(s, "- none");
    }
}

fn every_run(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\n## Every run\n");
    let _ = writeln!(s, "| path | figure | runs |\n|---|---|---|");
    for p in &r.end_to_end {
        let Ok(f) = &p.outcome else { continue };
        for t in &f.tests {
            let (scale, digits, unit) = if t.test.is_udp() {
                (1e-3, 0, "kpps")
            } else {
                (1.0, 2, "Gbit/s")
            };
            let mut runs: Vec<String> = t
                .value
                .runs
                .iter()
                .map(|v| format!("{:.digits$}", v * scale))
                .collect();
            runs.extend(t.value.failures.iter().map(|_| "failed".to_string()));
            let _ = writeln!(
                s,
                "| {} | {} {unit} | {} |",
                p.path,
                t.test.name(),
                runs.join(", ")
            );
            if t.test.is_udp() && !t.loss_pct.runs.is_empty() {
                let loss: Vec<String> = t.loss_pct.runs.iter().map(|v| format!("{v:.1}")).collect();
                let _ = writeln!(
                    s,
                    "| {} | {} loss % | {} |",
                    p.path,
                    t.test.name(),
                    loss.join(", ")
                );
            }
            if !t.retransmits.runs.is_empty() {
                let re: Vec<String> = t
                    .retransmits
                    .runs
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "| {} | {} retransmits | {} |",
                    p.path,
                    t.test.name(),
                    re.join(", ")
                );
            }
        }
    }
    let stage_runs = |s: &mut String, name: &str, label: String, runs: Vec<(f64, f64)>| {
        let v: Vec<String> = runs
            .iter()
            .map(|(o, d)| format!("{:.0}/{:.0}", o / 1e3, d / 1e3))
            .collect();
        let _ = writeln!(
            s,
            "| {label} | {name} kpps offered/delivered | {} |",
            v.join(", ")
        );
    };
    for row in &r.stage_forward.rows {
        stage_runs(
            s,
            "TUN → LAN",
            row.variant.to_string(),
            row.runs
                .iter()
                .map(|x| (x.offered_pps, x.delivered_pps))
                .collect(),
        );
    }
    for row in &r.stage_return.rows {
        stage_runs(
            s,
            "LAN → TUN",
            row.variant.to_string(),
            row.runs
                .iter()
                .map(|x| (x.offered_pps, x.delivered_pps))
                .collect(),
        );
    }
    if let Ok(b) = &r.lpm.bpf {
        for (name, t) in bpf_timings(b) {
            let v: Vec<String> = t.runs.iter().map(|x| format!("{x:.0}")).collect();
            let _ = writeln!(
                s,
                "| BPF LPM | tun_forward ns/packet, {name} | {} |",
                v.join(", ")
            );
        }
    }
}

/// The six `tun_forward` timings with their names.
fn bpf_timings(b: &BpfLpm) -> [(&'static str, &Timing); 6] {
    [
        ("forwarded, small trie", &b.hit_small),
        ("forwarded, full trie", &b.hit_full),
        ("LPM hit + TTL 1, small trie", &b.lookup_small),
        ("LPM hit + TTL 1, full trie", &b.lookup_full),
        ("no route, small trie", &b.miss_small),
        ("no route, full trie", &b.miss_full),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward_bench::stage::StageRun;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_000_000), "1,000,000");
        assert_eq!(grouped(12_345_678), "12,345,678");
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(fmt_ratio(Some(3.456)), "3.46×");
        assert_eq!(fmt(None, 1), "–");
        assert_eq!(fmt(Some(f64::NAN), 1), "–");
    }

    fn forward_row(variant: ForwardVariant, pps: f64, ns: Option<f64>) -> StageRow<ForwardVariant> {
        StageRow {
            variant,
            runs: vec![StageRun {
                offered_pps: pps,
                delivered_pps: pps,
                ns_per_pkt: ns,
                counters: None,
                note: None,
            }],
            failures: Vec::new(),
        }
    }

    #[test]
    fn forward_ceiling_leaves_out_the_program() {
        // 1,000 kpps = 1,000 ns per write, of which the program 200 ns; nftables 1,250 ns.
        let report = StageReport {
            rows: vec![
                forward_row(ForwardVariant::KernelMasquerade, 800_000.0, None),
                forward_row(ForwardVariant::XdpSnat, 1_000_000.0, Some(200.0)),
            ],
        };
        let b = forward_bound(&report).unwrap();
        assert_eq!(
            (b.xdp_ns, b.program_ns, b.kernel_ns),
            (1000.0, 200.0, 1250.0)
        );
        assert!((b.ceiling() - 1250.0 / 800.0).abs() < 1e-9);
        // Without the program's cost, or with a cost beyond the write's, there is no bound.
        let mut no_cost = report.clone();
        no_cost.rows[1] = forward_row(ForwardVariant::XdpSnat, 1_000_000.0, None);
        assert_eq!(forward_bound(&no_cost), None);
        let mut too_big = report;
        too_big.rows[1] = forward_row(ForwardVariant::XdpSnat, 1_000_000.0, Some(1000.0));
        assert_eq!(forward_bound(&too_big), None);
    }
}
