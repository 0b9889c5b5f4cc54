//! The relay benchmark: packets per second and throughput between two relay clients through
//! `tailgate derp serve` (over TLS, over plain HTTP, and across the mesh of two servers of a
//! region), and the same traffic sent directly over UDP (what the relay stands in for), all
//! in one run inside a network namespace of its own, with the relay/direct ratio.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rand_core::OsRng;
use tailgate::derp::client::{self, ConnectOptions, Received};
use tailgate::derp::map::RelayNode;
use tailgate::derp::tls::ServerCert;
use tailgate::io::mmsg::{send_many, DatagramBatch, Outgoing};
use tailgate::io::udp_offload::{enable_gro, MAX_GSO_BYTES};
use tailgate::peer_relay::server::PeerRelayServer;
use tailgate::traversal::disco::{self, Message};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::lab::control::TempDir;
use crate::lab::netns::Netns;
use crate::lab::process::{wait_for, Process};
use crate::tunnel_bench::{median, Machine};

/// How long each figure is measured and how often.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    /// One run.
    pub run: Duration,
    /// Runs per figure (the median is reported).
    pub runs: usize,
}

impl Durations {
    /// 3 runs of 5 s.
    pub fn full() -> Durations {
        Durations {
            run: Duration::from_secs(5),
            runs: 3,
        }
    }

    /// 1 run of 2 s.
    pub fn quick() -> Durations {
        Durations {
            run: Duration::from_secs(2),
            runs: 1,
        }
    }
}

/// Packet sizes measured: a small WireGuard datagram (a 64-byte packet inside the tunnel)
/// for the packet rate, a full one (MTU 1280 + WireGuard's 32 bytes) for throughput.
pub const SIZES: [usize; 2] = [96, 1312];

/// The CPU the endpoints (senders and receivers) run on.
const ENDPOINT_CPU: usize = 0;
/// The CPU the relay (server process or peer relay thread) runs on: the endpoints and the
/// relay do not compete for a core, as if the relay ran on a host of its own.
const RELAY_CPU: usize = 1;

/// Whether the machine has the two CPUs the benchmark pins to.
fn can_pin() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() > RELAY_CPU)
}

/// The paths compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path_ {
    /// Both clients on one relay server over TLS.
    RelayTls,
    /// Both clients on one relay server over plain HTTP.
    RelayPlain,
    /// Each client on its own server of one region; packets cross the mesh link (TLS).
    RelayMesh,
    /// A peer relay session (`tailgate set --advertise-peer-relay`): UDP in, UDP out.
    PeerRelay,
    /// No relay: UDP between two sockets.
    DirectUdp,
    /// [`Path_::PeerRelay`] with endpoints that work as a node's data path does: bursts of
    /// datagrams per send (UDP GSO), runs of datagrams per receive (UDP GRO).
    PeerRelayGso,
    /// [`Path_::DirectUdp`] with the same endpoints.
    DirectUdpGso,
}

impl Path_ {
    /// Every path, in report order.
    pub const ALL: [Path_; 7] = [
        Path_::RelayTls,
        Path_::RelayPlain,
        Path_::RelayMesh,
        Path_::PeerRelay,
        Path_::DirectUdp,
        Path_::PeerRelayGso,
        Path_::DirectUdpGso,
    ];

    /// Name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Path_::RelayTls => "relay, TLS",
            Path_::RelayPlain => "relay, plain HTTP",
            Path_::RelayMesh => "relay mesh (2 servers), TLS",
            Path_::PeerRelay => "peer relay (UDP session)",
            Path_::DirectUdp => "direct UDP (no relay)",
            Path_::PeerRelayGso => "peer relay, endpoints with UDP GSO/GRO",
            Path_::DirectUdpGso => "direct UDP, endpoints with UDP GSO/GRO",
        }
    }

    /// Whether the sender hands the kernel 64 datagrams per call (UDP GSO).
    fn gso(self) -> bool {
        matches!(self, Path_::PeerRelayGso | Path_::DirectUdpGso)
    }

    /// Whether a peer relay thread carries the packets.
    fn peer_relay(self) -> bool {
        matches!(self, Path_::PeerRelay | Path_::PeerRelayGso)
    }

    /// Whether the packets go over plain UDP (no relay server).
    fn udp(self) -> bool {
        matches!(
            self,
            Path_::PeerRelay | Path_::DirectUdp | Path_::PeerRelayGso | Path_::DirectUdpGso
        )
    }

    /// The direct path with the same sender, which the ratio columns compare with.
    fn baseline(self) -> Path_ {
        if self.gso() {
            Path_::DirectUdpGso
        } else {
            Path_::DirectUdp
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    /// Packets the sender queued.
    pub sent: u64,
    /// Packets the receiver got.
    pub received: u64,
    /// Bytes the receiver got.
    pub bytes: u64,
    /// How long the sender sent.
    pub secs: f64,
    /// CPU time the relay server processes used, seconds.
    pub relay_cpu_secs: f64,
}

impl Run {
    /// Received packets per second.
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.secs
    }

    /// Received payload, Gbit/s.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }

    /// Share of the sent packets that did not arrive, percent.
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }

    /// Relay CPU microseconds per received packet.
    pub fn cpu_us_per_packet(&self) -> Option<f64> {
        (self.relay_cpu_secs > 0.0 && self.received > 0)
            .then(|| self.relay_cpu_secs * 1e6 / self.received as f64)
    }
}

/// Everything the report shows.
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The durations used.
    pub durations: Durations,
    /// Runs by path and size.
    pub runs: Vec<(Path_, usize, Vec<Run>)>,
    /// Paths that could not be measured, with the reason.
    pub failures: Vec<(Path_, String)>,
    /// Extra Markdown sections (the STUN figures).
    pub extra: Vec<String>,
    /// Wall time of the whole benchmark.
    pub elapsed: Duration,
    /// Whether the endpoints and the relay ran on CPUs of their own.
    pub pinned: bool,
}

impl Report {
    /// The median of a figure over the runs of `path` at `size`.
    pub fn median(&self, path: Path_, size: usize, f: fn(&Run) -> f64) -> Option<f64> {
        let runs = self
            .runs
            .iter()
            .find(|(p, s, _)| *p == path && *s == size)?;
        median(&runs.2.iter().map(f).collect::<Vec<_>>())
    }
}

/// A relay server process in the namespace and how to reach it.
struct RelayProc {
    process: Process,
    node: RelayNode,
}

/// A relay server's state directory with its self-signed certificate made in advance, so
/// that mesh peers can pin it before the server starts.
fn relay_state(tag: &str) -> Result<(TempDir, String)> {
    let dir = TempDir::new(tag)?;
    let cert = ServerCert::self_signed(&dir.0, "relay.bench")?;
    Ok((dir, cert.fingerprint()))
}

fn start_relay(
    ns: &Netns,
    tailgate: &Path,
    port: u16,
    plain: bool,
    mesh: Option<(&Path, &str)>,
    state: &TempDir,
) -> Result<RelayProc> {
    let mut cmd = if can_pin() {
        let mut c = ns.command("taskset");
        c.args(["-c", &RELAY_CPU.to_string()]).arg(tailgate);
        c
    } else {
        ns.command(&tailgate.to_string_lossy())
    };
    cmd.args([
        "derp",
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--hostname",
        "relay.bench",
        "--stun-port",
        "0",
        "--state-dir",
    ])
    .arg(&state.0);
    if plain {
        cmd.arg("--plain-http");
    }
    if let Some((psk, peer)) = mesh {
        cmd.arg("--mesh-psk-file")
            .arg(psk)
            .args(["--mesh-with", peer]);
    }
    let mut process = Process::spawn("relay-bench-derp", cmd)?;
    let node = wait_for("the relay to start", Duration::from_secs(10), || {
        process.check_running()?;
        Ok(process
            .log()
            .lines()
            .find_map(|l| l.strip_prefix("relay map node: "))
            .and_then(|j| serde_json::from_str::<RelayNode>(j).ok()))
    })?;
    Ok(RelayProc { process, node })
}

fn cpu_secs(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds from a `/proc/…/stat` file (0 when it cannot be read).
fn stat_cpu_secs(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime is the 14th field.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

/// Sends `size`-byte packets from a relay client on `a` to one on `b` for `dur`.
fn relay_run(a: &ConnectOptions, b: &ConnectOptions, size: usize, dur: Duration) -> Result<Run> {
    crate::lab::pin_current_thread(ENDPOINT_CPU);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| crate::lab::pin_current_thread(ENDPOINT_CPU))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (ka, kb) = (
            StaticSecret::random_from_rng(OsRng),
            StaticSecret::random_from_rng(OsRng),
        );
        let b_pub = PublicKey::from(&kb).to_bytes();
        let ca = client::connect(a, &ka).await?;
        let mut cb = client::connect(b, &kb).await?;
        // Wait until b is reachable from a (through the mesh, that takes a moment).
        let probe_deadline = Instant::now() + Duration::from_secs(10);
        loop {
            ca.sender.send(b_pub, vec![0; size]).await?;
            match tokio::time::timeout(Duration::from_millis(200), cb.receiver.recv()).await {
                Ok(Ok(Received::Packet { .. })) => break,
                Ok(Err(e)) => bail!("receiver: {e}"),
                _ if Instant::now() > probe_deadline => bail!("b never became reachable"),
                _ => {}
            }
        }
        let received = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let counting = Arc::new(AtomicBool::new(false));
        let (r2, b2, c2) = (received.clone(), bytes.clone(), counting.clone());
        let rx = tokio::spawn(async move {
            while let Ok(m) = cb.receiver.recv().await {
                if let Received::Packet { data, .. } = m {
                    if c2.load(Relaxed) {
                        r2.fetch_add(1, Relaxed);
                        b2.fetch_add(data.len() as u64, Relaxed);
                    }
                }
            }
        });
        counting.store(true, Relaxed);
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < dur {
            for _ in 0..64 {
                ca.sender.send(b_pub, vec![0x5a; size]).await?;
                sent += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        // Let what is in flight arrive, then stop counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        counting.store(false, Relaxed);
        rx.abort();
        Ok(Run {
            sent,
            received: received.load(Relaxed),
            bytes: bytes.load(Relaxed),
            secs,
            relay_cpu_secs: 0.0,
        })
    })
}

/// How many datagrams the GSO sender hands the kernel per call, at most (and at most
/// [`MAX_GSO_BYTES`] in all).
const GSO_BURST: usize = 64;

/// Sends `size`-byte UDP datagrams from `tx` to `to` for `dur`, one syscall each, and counts
/// what `rx` receives, one syscall each. With `gso` the endpoints work as a node's data path
/// does: up to [`GSO_BURST`] datagrams per send (UDP GSO), and `rx` takes runs of datagrams
/// the kernel coalesced (UDP GRO) with `recvmmsg`.
fn udp_run(
    tx: UdpSocket,
    to: SocketAddr,
    rx: UdpSocket,
    size: usize,
    gso: bool,
    dur: Duration,
) -> Result<Run> {
    rx.set_read_timeout(Some(Duration::from_millis(100)))?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r2, s2) = (received.clone(), stop.clone());
    crate::lab::pin_current_thread(ENDPOINT_CPU);
    if gso && !enable_gro(rx.as_raw_fd()) {
        bail!("the kernel refuses UDP GRO");
    }
    let reader = std::thread::spawn(move || {
        crate::lab::pin_current_thread(ENDPOINT_CPU);
        let mut buf = [0u8; 2048];
        let mut batch = DatagramBatch::new(if gso { 64 } else { 1 });
        while !s2.load(Relaxed) {
            if !gso {
                if rx.recv(&mut buf).is_ok() {
                    r2.fetch_add(1, Relaxed);
                }
                continue;
            }
            // Blocks up to the read timeout, then takes everything queued (GRO runs).
            let mut peek = [0u8; 1];
            if rx.peek(&mut peek).is_ok() {
                if let Ok(n) = batch.recv(rx.as_raw_fd()) {
                    let datagrams: usize = (0..n).map(|i| batch.datagrams(i)).sum();
                    r2.fetch_add(datagrams as u64, Relaxed);
                }
            }
        }
    });
    let packet = vec![0x5a; size];
    let per_burst = GSO_BURST.min(MAX_GSO_BYTES / size).max(1);
    let burst = vec![0x5a; size * per_burst];
    tx.connect(to)?;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur {
        for _ in 0..64 {
            if gso {
                let run = Outgoing {
                    data: &burst,
                    to: None,
                    segment: Some(size),
                };
                if matches!(send_many(tx.as_raw_fd(), &[run]), Ok(1)) {
                    sent += per_burst as u64;
                }
            } else if tx.send(&packet).is_ok() {
                sent += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Relaxed);
    let _ = reader.join();
    let received = received.load(Relaxed);
    Ok(Run {
        sent,
        received,
        bytes: received * size as u64,
        secs,
        relay_cpu_secs: 0.0,
    })
}

/// Sends `size`-byte UDP datagrams between two loopback sockets for `dur`.
fn direct_run(size: usize, gso: bool, dur: Duration) -> Result<Run> {
    let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let to = rx.local_addr()?;
    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    udp_run(tx, to, rx, size, gso, dur)
}

/// Sessions of the benchmark's peer relay: one per run, with room to spare.
const PEER_RELAY_SESSIONS: u16 = 32;

/// A peer relay serving on loopback from a thread of its own, as a node's daemon runs it.
struct PeerRelayThread {
    port: u16,
    key: [u8; 32],
    /// The serving thread's id, for its CPU time.
    tid: i32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerRelayThread {
    fn start() -> Result<PeerRelayThread> {
        let secret = StaticSecret::random_from_rng(OsRng);
        let key = PublicKey::from(&secret).to_bytes();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            crate::lab::pin_current_thread(RELAY_CPU);
            let started = (|| -> Result<_> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                // Every run allocates a session for a new pair of keys.
                let server = rt.block_on(PeerRelayServer::start(
                    0,
                    PEER_RELAY_SESSIONS,
                    secret,
                    Box::new(|_| true),
                ))?;
                Ok((rt, server))
            })();
            match started {
                Ok((rt, server)) => {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    let _ = ready_tx.send(Ok((server.port(), tid)));
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                    drop(server);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        let (port, tid) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the peer relay did not start"))??;
        Ok(PeerRelayThread {
            port,
            key,
            tid,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// CPU time (user + system) of the serving thread so far, seconds.
    fn cpu_secs(&self) -> f64 {
        stat_cpu_secs(&format!("/proc/self/task/{}/stat", self.tid))
    }
}

impl Drop for PeerRelayThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Receives one sealed disco message on `sock` within half a second.
fn recv_disco(sock: &UdpSocket, own: &StaticSecret) -> Result<(Message, SocketAddr)> {
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf)?;
    let (_, msg) = disco::open(own, &buf[..n]).map_err(|e| anyhow!("disco: {e}"))?;
    Ok((msg, from))
}

/// Allocates the session between `own` and `peer` at the peer relay on `relay` and binds
/// `sock` to it, as a node does; returns the session address.
fn join_peer_relay(
    sock: &UdpSocket,
    own: &StaticSecret,
    relay: SocketAddr,
    relay_key: &[u8; 32],
    peer: [u8; 32],
) -> Result<SocketAddr> {
    let send = |to: SocketAddr, msg: &Message| -> Result<()> {
        let sealed = disco::seal(own, relay_key, msg).map_err(|e| anyhow!("disco: {e}"))?;
        sock.send_to(&sealed, to)?;
        Ok(())
    };
    send(relay, &Message::RelayAllocate { peer })?;
    let Message::RelayAllocated { port, .. } = recv_disco(sock, own)?.0 else {
        bail!("the peer relay did not allocate a session");
    };
    let session = SocketAddr::new(relay.ip(), port);
    send(session, &Message::RelayBind { cookie: None })?;
    let Message::RelayChallenge { cookie } = recv_disco(sock, own)?.0 else {
        bail!("the peer relay sent no challenge");
    };
    send(
        session,
        &Message::RelayBind {
            cookie: Some(cookie),
        },
    )?;
    match recv_disco(sock, own)?.0 {
        Message::RelayBound => Ok(session),
        other => bail!("the peer relay answered the bind with {other:?}"),
    }
}

/// Sends `size`-byte datagrams from one loopback socket to another through a session of
/// `relay` for `dur`; the relay thread's CPU time is the run's relay CPU.
fn peer_relay_run(relay: &PeerRelayThread, size: usize, gso: bool, dur: Duration) -> Result<Run> {
    let (ka, kb) = (
        StaticSecret::random_from_rng(OsRng),
        StaticSecret::random_from_rng(OsRng),
    );
    let (pa, pb) = (
        PublicKey::from(&ka).to_bytes(),
        PublicKey::from(&kb).to_bytes(),
    );
    let relay_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, relay.port));
    let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let session = join_peer_relay(&a, &ka, relay_addr, &relay.key, pb)?;
    join_peer_relay(&b, &kb, relay_addr, &relay.key, pa)?;
    let cpu0 = relay.cpu_secs();
    let mut run = udp_run(a, session, b, size, gso, dur)?;
    run.relay_cpu_secs = relay.cpu_secs() - cpu0;
    Ok(run)
}

/// The servers of one configuration and the client options for the two ends. Field order:
/// the servers stop before their state directories go.
struct Setup {
    servers: Vec<RelayProc>,
    a: ConnectOptions,
    b: ConnectOptions,
    _state: Vec<TempDir>,
}

fn client_options(node: &RelayNode) -> ConnectOptions {
    node.connect_options(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn setup(ns: &Netns, tailgate: &Path, path: Path_, psk: &Path) -> Result<Setup> {
    Ok(match path {
        Path_::RelayTls | Path_::RelayPlain => {
            let (state, _) = relay_state("relay-bench")?;
            let s = start_relay(ns, tailgate, 18443, path == Path_::RelayPlain, None, &state)?;
            let o = client_options(&s.node);
            Setup {
                servers: vec![s],
                a: o.clone(),
                b: o,
                _state: vec![state],
            }
        }
        Path_::RelayMesh => {
            let (state1, fp1) = relay_state("relay-bench-1")?;
            let (state2, fp2) = relay_state("relay-bench-2")?;
            let peer = |port: u16, fp: &str| format!("https://127.0.0.1:{port}#sha256={fp}");
            let s1 = start_relay(
                ns,
                tailgate,
                18444,
                false,
                Some((psk, &peer(18445, &fp2))),
                &state1,
            )?;
            let s2 = start_relay(
                ns,
                tailgate,
                18445,
                false,
                Some((psk, &peer(18444, &fp1))),
                &state2,
            )?;
            let (a, b) = (client_options(&s1.node), client_options(&s2.node));
            Setup {
                servers: vec![s1, s2],
                a,
                b,
                _state: vec![state1, state2],
            }
        }
        other => bail!("{} needs no relay server", other.label()),
    })
}

/// Runs the benchmark with `tailgate` (the binary), writing nothing; `extra` adds sections.
pub fn run(tailgate: &Path, durations: Durations, extra: Vec<String>) -> Result<Report> {
    let started = Instant::now();
    let machine = Machine::describe(tailgate);
    let ns = Netns::new("tgrb")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let psk_dir = TempDir::new("relay-bench-psk")?;
    let psk = psk_dir.0.join("mesh.psk");
    std::fs::write(&psk, "bench-region-mesh-secret")?;
    let mut report = Report {
        machine,
        durations,
        runs: Vec::new(),
        failures: Vec::new(),
        extra,
        elapsed: Duration::ZERO,
        pinned: can_pin(),
    };
    for path in Path_::ALL {
        println!("== {}", path.label());
        let measured = (|| -> Result<Vec<(usize, Vec<Run>)>> {
            let setup = match path.udp() {
                true => None,
                false => Some(setup(&ns, tailgate, path, &psk)?),
            };
            let peer_relay = match path.peer_relay() {
                true => Some(Arc::new(
                    ns.spawn_inside(PeerRelayThread::start)?
                        .join()
                        .map_err(|_| anyhow!("the peer relay thread panicked"))??,
                )),
                false => None,
            };
            let gso = path.gso();
            let mut out = Vec::new();
            for size in SIZES {
                let mut runs = Vec::new();
                for _ in 0..durations.runs {
                    let pids: Vec<Option<u32>> = setup
                        .as_ref()
                        .map(|s| s.servers.iter().map(|p| p.process.pid()).collect())
                        .unwrap_or_default();
                    let cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
                    let dur = durations.run;
                    let measuring = match (&setup, &peer_relay) {
                        (Some(s), _) => {
                            let (a, b) = (s.a.clone(), s.b.clone());
                            ns.spawn_inside(move || relay_run(&a, &b, size, dur))?
                        }
                        (None, Some(relay)) => {
                            let relay = relay.clone();
                            ns.spawn_inside(move || peer_relay_run(&relay, size, gso, dur))?
                        }
                        (None, None) => ns.spawn_inside(move || direct_run(size, gso, dur))?,
                    };
                    let mut r = measuring
                        .join()
                        .map_err(|_| anyhow!("the measuring thread panicked"))??;
                    if setup.is_some() {
                        r.relay_cpu_secs = pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - cpu0;
                    }
                    println!(
                        "   {size} B: {:.0} kpps, {:.2} Gbit/s ({} sent, {} received)",
                        r.pps() / 1e3,
                        r.gbps(),
                        r.sent,
                        r.received
                    );
                    runs.push(r);
                }
                out.push((size, runs));
            }
            Ok(out)
        })();
        match measured {
            Ok(v) => report
                .runs
                .extend(v.into_iter().map(|(size, runs)| (path, size, runs))),
            Err(e) => {
                println!("   failed: {e:#}");
                report.failures.push((path, format!("{e:#}")));
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

/// The Markdown report.
pub fn render_markdown(r: &Report) -> String {
    let mut s = String::new();
    let d = r.durations;
    let _ = writeln!(
        s,
        "# Relay benchmark: `tailgate derp serve`\n\n\
         Written by `cargo xtask bench relay`. Each figure is the median of {} run(s) of {} s. \
         Figures are as measured on a shared machine.\n",
        d.runs,
        d.run.as_secs()
    );
    s.push_str(&r.machine.markdown(&[]));
    let _ = writeln!(
        s,
        "\n## Relay throughput and packet rate\n\n\
         One network namespace; `tailgate derp serve` on loopback (self-signed certificate, \
         pinned by the clients), two relay clients (the library's client, as nodes use it) in \
         this process: one sends packets to the other's key as fast as the relay takes them \
         (the client waits when its queue is full, so nothing is dropped at the sender), the \
         other counts what arrives. {} B is a small WireGuard datagram (a 64-byte packet in \
         the tunnel), {} B a full one (MTU 1280). The mesh row puts the two clients on two \
         servers of one region, so every packet crosses the servers' mesh link. The peer \
         relay row runs a peer relay (what `tailgate set --advertise-peer-relay` starts) on \
         a thread of this process; two UDP sockets allocate and bind a session as nodes do, \
         then one sends to the session port, one syscall per datagram, and the relay \
         forwards to the other with `recvmmsg`/`sendmmsg` batches (a run of datagrams GRO \
         coalesced goes on as one GSO send). The GSO/GRO rows repeat the peer relay and \
         direct rows with endpoints that work as a node's data path does: the sender hands \
         the kernel up to 64 datagrams per call (UDP GSO), the receiver takes runs of \
         datagrams the kernel coalesced (UDP GRO) with `recvmmsg`; each \"vs direct\" ratio \
         compares with the direct row of the same endpoints. The direct row sends the \
         same datagrams over UDP between two loopback sockets, one syscall each: the path \
         both relays stand in for when peers cannot reach each other. Relay CPU is the \
         server processes' (or the peer relay thread's) user + system time per received \
         packet.\n",
        SIZES[0], SIZES[1]
    );
    if r.pinned {
        let _ = writeln!(
            s,
            "The endpoints (sender, receiver, relay clients) run on CPU {ENDPOINT_CPU} and the \
             relay (server processes, peer relay thread) on CPU {RELAY_CPU}, as if the relay \
             ran on a host of its own; the direct row's two sockets share CPU {ENDPOINT_CPU} \
             the same way. On loopback a sender also pays for delivering into the receiving \
             socket.\n"
        );
    } else {
        let _ = writeln!(
            s,
            "The endpoints and the relay share the machine's one CPU.\n"
        );
    }
    let _ = writeln!(
        s,
        "| path | {a} B kpps | loss % | relay CPU µs/packet | {b} B Gbit/s | {b} B kpps | loss % | relay CPU µs/packet | {a} B kpps vs direct | {b} B Gbit/s vs direct |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        a = SIZES[0],
        b = SIZES[1]
    );
    for path in Path_::ALL {
        if r.failures.iter().any(|(p, _)| *p == path) {
            continue;
        }
        let cpu = |size| {
            r.median(path, size, |x| x.cpu_us_per_packet().unwrap_or(f64::NAN))
                .filter(|v| v.is_finite())
        };
        let small = r.median(path, SIZES[0], Run::pps);
        let large = r.median(path, SIZES[1], Run::gbps);
        let vs_direct = |v: Option<f64>, size, f: fn(&Run) -> f64| match (
            v,
            r.median(path.baseline(), size, f),
        ) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        let loss = |size| fmt_opt(r.median(path, size, Run::loss_pct), |v| format!("{v:.1}"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            path.label(),
            fmt_opt(small, |v| format!("{:.0}", v / 1e3)),
            loss(SIZES[0]),
            fmt_opt(cpu(SIZES[0]), |v| format!("{v:.1}")),
            fmt_opt(large, |v| format!("{v:.2}")),
            fmt_opt(r.median(path, SIZES[1], Run::pps), |v| format!(
                "{:.0}",
                v / 1e3
            )),
            loss(SIZES[1]),
            fmt_opt(cpu(SIZES[1]), |v| format!("{v:.1}")),
            vs_direct(small, SIZES[0], Run::pps),
            vs_direct(large, SIZES[1], Run::gbps),
        );
    }
    for (path, why) in &r.failures {
        let _ = writeln!(s, "\n{} could not be measured: {why}", path.label());
    }
    for e in &r.extra {
        s.push('\n');
        s.push_str(e);
    }
    let _ = writeln!(s, "\nThe whole run took {:.0} s.", r.elapsed.as_secs_f64());
    s
}
