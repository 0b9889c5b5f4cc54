//! The STUN benchmark: binding answers per second from the `stun_responder` XDP program vs
//! from the userspace STUN server alone, in one run, in two network namespaces of its own
//! joined by a veth pair.
//!
//! A load generator in the client namespace sends binding requests in `sendmmsg` batches from
//! several connected UDP sockets and counts the answers it reads back with `recvmmsg`, keeping
//! a bounded number of requests in flight. The userspace server runs in both phases (it is the
//! fallback); in the XDP phase the program answers in front of it.
//!
//! [`StunLab`] and [`UserspaceServer`] are also what the STUN lab test is built on.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tailgate::io::mmsg::{send_many, DatagramBatch, Outgoing};
use tailgate::stun::codec::{binding_request, BINDING_SUCCESS, MAGIC_COOKIE};
use tailgate::stun::server::{StunCounters, StunServer, StunSnapshot};
use tailgate::xdp::{AttachPreference, XdpStunCounters, XdpStunResponder};

use crate::lab::netns::{unique_name, veth, Netns};

/// The STUN port used in the lab.
pub const LAB_PORT: u16 = 3478;

/// A server namespace and a client namespace joined by a veth pair:
/// server `10.97.0.1/24`, `fd97::1/64`; client `10.97.0.2/24`, `fd97::2/64`.
///
/// A veth delivers frames that the peer's native-mode XDP program sends back with `XDP_TX`
/// only if its own receive side runs NAPI, i.e. it has an XDP program or GRO on. Toggling GRO
/// was not enough on every kernel tried, so the client's end also gets `stun_responder` for a
/// port nobody uses ([`PASS_THROUGH_PORT`]): it passes every frame. Both namespaces (and the
/// link and programs) are deleted on drop.
pub struct StunLab {
    /// The namespace of the STUN server (and XDP program).
    pub server_ns: Netns,
    /// The namespace of the clients.
    pub client_ns: Netns,
    /// The server's interface (in `server_ns`).
    pub server_if: String,
    /// The client's interface (in `client_ns`).
    pub client_if: String,
    /// The pass-through program on the client's interface.
    client_xdp: Option<XdpStunResponder>,
}

/// The port the client side's pass-through `stun_responder` answers (the discard port: no
/// STUN traffic goes there, so every frame is passed).
pub const PASS_THROUGH_PORT: u16 = 9;

impl StunLab {
    /// Server IPv4 address.
    pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
    /// Client IPv4 address.
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);
    /// Server IPv6 address.
    pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd97, 0, 0, 0, 0, 0, 0, 1);
    /// Client IPv6 address.
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd97, 0, 0, 0, 0, 0, 0, 2);

    /// Creates the namespaces and the link.
    pub fn new() -> Result<StunLab> {
        let server_ns = Netns::new("tgstuns")?;
        let client_ns = Netns::new("tgstunc")?;
        let mut lab = StunLab {
            server_ns,
            client_ns,
            server_if: unique_name("tgsv"),
            client_if: unique_name("tgcl"),
            client_xdp: None,
        };
        veth(
            &lab.server_ns,
            &lab.server_if,
            &[
                &format!("{}/24", Self::SERVER_V4),
                &format!("{}/64", Self::SERVER_V6),
            ],
            &lab.client_ns,
            &lab.client_if,
            &[
                &format!("{}/24", Self::CLIENT_V4),
                &format!("{}/64", Self::CLIENT_V6),
            ],
        )?;
        lab.client_ns
            .exec("ethtool", &["-K", &lab.client_if, "gro", "on"])
            .context("enabling GRO on the client's veth (XDP_TX from the peer needs it)")?;
        let ifname = lab.client_if.clone();
        let pass = lab
            .client_ns
            .spawn_inside(move || {
                XdpStunResponder::attach(&ifname, PASS_THROUGH_PORT, AttachPreference::Native)
                    .map_err(|e| anyhow!("pass-through XDP program on the client's veth: {e}"))
            })?
            .join()
            .map_err(|_| anyhow!("XDP attach thread panicked"))??;
        lab.client_xdp = Some(pass);
        // Resolve neighbours once so the first measured packets are not held for ARP/ND.
        for dst in [Self::SERVER_V4.to_string(), Self::SERVER_V6.to_string()] {
            lab.client_ns
                .exec("ping", &["-c", "1", "-W", "2", &dst])
                .with_context(|| format!("ping {dst} in the STUN lab"))?;
        }
        Ok(lab)
    }

    /// The server's address on `port` for the family of `v6`.
    pub fn server_addr(v6: bool, port: u16) -> SocketAddr {
        let ip: IpAddr = if v6 {
            Self::SERVER_V6.into()
        } else {
            Self::SERVER_V4.into()
        };
        SocketAddr::new(ip, port)
    }

    /// Loads `stun_responder` for `port` and attaches it to the server's interface (native
    /// mode, falling back to generic; the responder says which).
    pub fn attach_xdp(&self, port: u16) -> Result<XdpStunResponder> {
        let ifname = self.server_if.clone();
        self.server_ns
            .spawn_inside(move || {
                XdpStunResponder::attach(&ifname, port, AttachPreference::Auto)
                    .map_err(|e| anyhow!("attaching stun_responder: {e}"))
            })?
            .join()
            .map_err(|_| anyhow!("XDP attach thread panicked"))?
    }
}

impl Drop for StunLab {
    fn drop(&mut self) {
        // Detach the pass-through program before the namespaces (and the link) go away.
        self.client_xdp.take();
    }
}

/// The userspace STUN server ([`StunServer`] on `[::]:port`) on a thread of its own inside a
/// namespace; stopped and joined on drop.
pub struct UserspaceServer {
    counters: Arc<StunCounters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl UserspaceServer {
    /// Starts the server in `ns` on UDP `port` (IPv4 and IPv6).
    pub fn start(ns: &Netns, port: u16) -> Result<UserspaceServer> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = ns.spawn_inside(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let server =
                    match StunServer::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
                        .await
                    {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("binding the STUN server: {e}")));
                            return Ok(());
                        }
                    };
                let _ = ready_tx.send(Ok(server.counters()));
                let _ = stop_rx.await;
                drop(server);
                Ok(())
            })
        })?;
        let mut me = UserspaceServer {
            counters: Arc::new(StunCounters::default()),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(counters)) => me.counters = counters,
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("the STUN server thread did not start within 10 s"),
        }
        Ok(me)
    }

    /// The server's counters now.
    pub fn snapshot(&self) -> StunSnapshot {
        self.counters.snapshot()
    }
}

impl Drop for UserspaceServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long and how hard to load the server.
#[derive(Debug, Clone, Copy)]
pub struct StunBenchOptions {
    /// Measuring time per phase.
    pub duration: Duration,
    /// Client sockets (each has its own source port).
    pub sockets: usize,
    /// Requests per `sendmmsg`.
    pub batch: usize,
    /// Requests in flight per socket at most.
    pub window: usize,
}

impl StunBenchOptions {
    /// 5 s per phase, 4 sockets, batches of 32, 128 in flight per socket.
    pub fn full() -> Self {
        StunBenchOptions {
            duration: Duration::from_secs(5),
            sockets: 4,
            batch: 32,
            window: 128,
        }
    }

    /// 1 s per phase.
    pub fn quick() -> Self {
        StunBenchOptions {
            duration: Duration::from_secs(1),
            ..Self::full()
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    /// Requests sent.
    pub sent: u64,
    /// Valid binding answers received.
    pub received: u64,
    /// Measuring time.
    pub elapsed: Duration,
}

impl Phase {
    /// Answers received per second.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.received as f64 / s
        } else {
            0.0
        }
    }

    /// Requests without an answer, in percent of those sent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }
}

/// The benchmark's result.
#[derive(Debug, Clone)]
pub struct StunBenchReport {
    /// The options used.
    pub options: StunBenchOptions,
    /// XDP attach mode (`native` or `generic`).
    pub xdp_mode: &'static str,
    /// Answers from `stun_responder`.
    pub xdp: Phase,
    /// Answers from the userspace server alone.
    pub userspace: Phase,
    /// The program's counters after the XDP phase.
    pub xdp_counters: XdpStunCounters,
    /// Requests the userspace server (running behind the program) answered during the XDP
    /// phase.
    pub server_answered_during_xdp: u64,
    /// The userspace server's counters after the userspace phase.
    pub server_counters: StunSnapshot,
}

impl StunBenchReport {
    /// XDP rate / userspace rate.
    pub fn ratio(&self) -> Option<f64> {
        let u = self.userspace.rate();
        (u > 0.0).then(|| self.xdp.rate() / u)
    }

    /// A Markdown section (heading, table, notes).
    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(s, "## STUN binding answers per second\n");
        let _ = writeln!(
            s,
            "One load generator ({} UDP sockets, `sendmmsg` batches of {}, at most {} requests \
             in flight per socket, {:.1} s per phase) sends binding requests over a veth pair \
             to port {LAB_PORT}; answers read back with `recvmmsg` are counted.\n",
            o.sockets,
            o.batch,
            o.window,
            o.duration.as_secs_f64()
        );
        let _ = writeln!(s, "| server | answers/s | sent | answered | loss |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for (name, p) in [
            (
                format!("`stun_responder` XDP ({} mode)", self.xdp_mode),
                self.xdp,
            ),
            ("userspace server".to_string(), self.userspace),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {:.0} | {} | {} | {:.2} % |",
                p.rate(),
                p.sent,
                p.received,
                p.loss_percent()
            );
        }
        match self.ratio() {
            Some(r) => {
                let _ = writeln!(s, "\nXDP / userspace: **{r:.2}×**.");
            }
            None => {
                let _ = writeln!(s, "\nXDP / userspace: n/a (no userspace answers).");
            }
        }
        let _ = writeln!(
            s,
            "\nDuring the XDP phase the program answered {} requests and the userspace server, \
             running behind it on the same port, {}.",
            self.xdp_counters.answered(),
            self.server_answered_during_xdp
        );
        s
    }
}

/// Runs both phases (XDP first, then the program detached) with `options`. Needs root and the
/// eBPF object embedded in the `tailgate` library.
pub fn run(options: StunBenchOptions) -> Result<StunBenchReport> {
    if options.sockets == 0 || options.batch == 0 || options.window < options.batch {
        bail!("STUN benchmark: need at least one socket, a batch ≥ 1 and a window ≥ the batch");
    }
    let lab = StunLab::new()?;
    let server = UserspaceServer::start(&lab.server_ns, LAB_PORT)?;
    let xdp = lab.attach_xdp(LAB_PORT)?;
    let xdp_mode = xdp.attach_mode().unwrap_or("unknown");
    let xdp_phase = load(&lab, options)?;
    let xdp_counters = xdp.counters()?;
    drop(xdp);
    let before = server.snapshot();
    let userspace_phase = load(&lab, options)?;
    let after = server.snapshot();
    let server_counters = StunSnapshot {
        answered_v4: after.answered_v4 - before.answered_v4,
        answered_v6: after.answered_v6 - before.answered_v6,
        ..after
    };
    Ok(StunBenchReport {
        options,
        xdp_mode,
        xdp: xdp_phase,
        userspace: userspace_phase,
        xdp_counters,
        server_answered_during_xdp: before.answered(),
        server_counters,
    })
}

/// Loads the server from the client namespace for `options.duration`.
fn load(lab: &StunLab, options: StunBenchOptions) -> Result<Phase> {
    lab.client_ns
        .spawn_inside(move || generate(options))?
        .join()
        .map_err(|_| anyhow!("load generator thread panicked"))?
}

/// The load generator proper (runs in the client namespace).
fn generate(o: StunBenchOptions) -> Result<Phase> {
    let server = StunLab::server_addr(false, LAB_PORT);
    let mut sockets = Vec::with_capacity(o.sockets);
    for _ in 0..o.sockets {
        let s = UdpSocket::bind((StunLab::CLIENT_V4, 0))?;
        s.connect(server)?;
        s.set_nonblocking(true)?;
        sockets.push(s);
    }
    // One request per slot of a batch; the transaction ids differ only per slot (the answers
    // are counted, not matched).
    let requests: Vec<[u8; 28]> = (0..o.batch)
        .map(|i| {
            let mut tx = [0x5au8; 12];
            tx[..8].copy_from_slice(&(i as u64).to_be_bytes());
            binding_request(&tx)
        })
        .collect();
    let mut recv_bufs = DatagramBatch::new(o.batch);
    let mut in_flight = vec![0usize; o.sockets];
    let mut last_answer = vec![Instant::now(); o.sockets];
    let mut phase = Phase::default();
    let started = Instant::now();
    let deadline = started + o.duration;
    while Instant::now() < deadline {
        for (i, s) in sockets.iter().enumerate() {
            // Requests lost on the way would hold the window forever: forget them after a
            // quiet 50 ms.
            if in_flight[i] > 0 && last_answer[i].elapsed() > Duration::from_millis(50) {
                in_flight[i] = 0;
                last_answer[i] = Instant::now();
            }
            if in_flight[i] + o.batch <= o.window {
                let n = send_batch(s, &requests)?;
                in_flight[i] += n;
                phase.sent += n as u64;
            }
            let got = recv_batch(s, &mut recv_bufs)?;
            if got > 0 {
                in_flight[i] = in_flight[i].saturating_sub(got);
                last_answer[i] = Instant::now();
                phase.received += got as u64;
            }
        }
    }
    phase.elapsed = started.elapsed();
    Ok(phase)
}

/// `sendmmsg` of every request on the connected socket `s`; returns how many were sent (0 when
/// the socket buffer is full).
fn send_batch(s: &UdpSocket, requests: &[[u8; 28]]) -> Result<usize> {
    let datagrams: Vec<Outgoing> = requests
        .iter()
        .map(|r| Outgoing {
            data: r,
            to: None,
            segment: None,
        })
        .collect();
    match send_many(s.as_raw_fd(), &datagrams) {
        Ok(n) => Ok(n),
        Err(e) if quiet(&e) => Ok(0),
        Err(e) => Err(anyhow!("sendmmsg: {e}")),
    }
}

/// `recvmmsg` of what is queued on `s` (non-blocking); returns how many valid binding success
/// answers were read.
fn recv_batch(s: &UdpSocket, batch: &mut DatagramBatch) -> Result<usize> {
    let n = match batch.recv(s.as_raw_fd()) {
        Ok(n) => n,
        Err(e) if quiet(&e) => return Ok(0),
        Err(e) => return Err(anyhow!("recvmmsg: {e}")),
    };
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let success = BINDING_SUCCESS.to_be_bytes();
    Ok((0..n)
        .filter_map(|i| batch.get(i))
        .filter(|(b, _)| b.len() >= 20 && b[0..2] == success && b[4..8] == cookie)
        .count())
}

/// Errors that only mean "nothing now": a full or empty socket buffer, or an ICMP error
/// reported on the connected socket.
fn quiet(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_rates() {
        let p = Phase {
            sent: 200,
            received: 150,
            elapsed: Duration::from_millis(500),
        };
        assert_eq!(p.rate(), 300.0);
        assert_eq!(p.loss_percent(), 25.0);
        assert_eq!(Phase::default().rate(), 0.0);
    }

    #[test]
    fn bad_options_are_refused() {
        let o = StunBenchOptions {
            window: 1,
            ..StunBenchOptions::quick()
        };
        assert!(run(o).is_err());
    }
}
