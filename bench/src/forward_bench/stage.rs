//! The router stage alone, without tunnels: a router namespace with a TUN device (`tgtun0`,
//! written to by this process as the daemon would write decrypted packets) and a LAN veth
//! (`lan0`, `10.1.1.1/24`) to a LAN host namespace (`lanh`, `10.1.1.5/24`).
//!
//! * [`forward_tun_to_lan`]: 64-byte UDP packets (46-byte IPv4 packets) written into the TUN
//!   by one thread, forwarded to the LAN host: kernel forwarding without and with the nftables
//!   masquerade, against `tun_forward` without and with SNAT. A TUN write runs the receive path
//!   synchronously, so writes per second measure the per-packet cost of each path; the LAN
//!   host's `rx_packets` counts what arrived.
//! * [`return_lan_to_tun`]: the LAN host floods small UDP replies to a SNATed flow (from an
//!   XDP traffic generator, [`super::flood`], so the router, not the sender, sets the rate); packets
//!   read back from the TUN per second: kernel conntrack de-NAT against `lan_return` (native
//!   and generic mode), which de-NATs and passes to the kernel; and packets per second
//!   received on an AF_XDP socket on `lan0`, to which native `lan_return` redirects the
//!   de-NATed replies instead (the kernel and the TUN are left out). Three of these paths run
//!   twice: with the router's receive path in the generator's softirq (a veth's default) and
//!   with the router on one core (threaded NAPI pinned to the reader's CPU).
//!
//! Numbers vary with the machine (sender, router and reader share its cores).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use tailgate::afxdp::{strip_ethernet, XdpSocket, XdpSocketConfig};
use tailgate::nat::checksum as ck;
use tailgate::xdp::{
    AttachPreference, ForwardCounters, ForwardOptions, ForwardProgram, ForwardRoute, LanInterface,
    XdpForward,
};

use super::flood::{ethernet_ipv4, parse_mac, XdpFlood};
use super::{interrupted, one_line, Durations};
use crate::lab::{veth, Netns};
use crate::tunnel_bench::median;

/// The tailnet client the packets come from.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 5);
/// The router's LAN address (the SNAT source).
pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
/// The LAN host.
pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 5);
/// The LAN route the router serves.
pub const LAN_ROUTE: &str = "10.1.1.0/24";
/// Name of the TUN device in the router namespace.
pub const TUN_NAME: &str = "tgtun0";
/// UDP payload of the stage packets: 18 bytes make 46-byte IPv4 packets (a 64-byte Ethernet
/// frame on the LAN).
const PAYLOAD: usize = 18;
/// How long a namespace thread may run beyond its measuring time before it is given up.
const THREAD_SLACK: Duration = Duration::from_secs(20);
/// After the measured phase, how long the XDP rows run on with `kernel.bpf_stats_enabled` for
/// the program's run time per packet. Statistics cost two clock reads per program run, so the
/// rates are measured without them.
const COST_PHASE: Duration = Duration::from_millis(200);
/// The CPU of the LAN host's generator (and so of the router's receive path, which runs in the
/// generator's softirq unless the variant threads it, see [`ReturnVariant`]), and the CPU of
/// the thread that reads the TUN or the AF_XDP socket.
const SENDER_CPU: usize = 0;
/// See [`SENDER_CPU`].
const READER_CPU: usize = 1;
/// After the LAN sender stopped, how long the TUN reader keeps reading.
const READ_GRACE: Duration = Duration::from_millis(300);

/// A router namespace and a LAN host namespace joined by `lan0` ↔ `lanh`; removed on drop
/// (with the links, TUN devices, nftables rules and XDP attachments inside).
pub struct StageLab {
    /// The router namespace (`lan0`, and the TUN once created by [`tun_setup`]).
    pub router: Netns,
    /// The LAN host namespace (`lanh`).
    pub lan: Netns,
}

impl StageLab {
    /// Creates both namespaces, the veth, addresses, the host's default route and IPv4
    /// forwarding in the router.
    pub fn new() -> Result<StageLab> {
        let router = Netns::new("tgfr")?;
        let lan = Netns::new("tgfl")?;
        veth(
            &router,
            "lan0",
            &[&format!("{ROUTER_LAN}/24")],
            &lan,
            "lanh",
            &[&format!("{HOST}/24")],
        )?;
        lan.ip(&["route", "add", "default", "via", &ROUTER_LAN.to_string()])?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(StageLab { router, lan })
    }

    /// The kernel path's NAT: masquerade of tailnet sources leaving on `lan0`, as the
    /// daemon's nftables fallback does.
    pub fn masquerade(&self) -> Result<()> {
        let r = &self.router;
        r.exec("nft", &["add", "table", "ip", "tgbench"])?;
        r.exec(
            "nft",
            &[
                "add",
                "chain",
                "ip",
                "tgbench",
                "post",
                "{",
                "type",
                "nat",
                "hook",
                "postrouting",
                "priority",
                "100",
                ";",
                "}",
            ],
        )?;
        r.exec(
            "nft",
            &[
                "add",
                "rule",
                "ip",
                "tgbench",
                "post",
                "ip",
                "saddr",
                "100.64.0.0/10",
                "oifname",
                "lan0",
                "masquerade",
            ],
        )?;
        Ok(())
    }

    /// A counter of `dev` in `ns` (`/sys/class/net/<dev>/statistics/<name>`).
    pub fn stat(ns: &Netns, dev: &str, name: &str) -> Result<u64> {
        let path = format!("/sys/class/net/{dev}/statistics/{name}");
        let v = ns.exec("cat", &[&path])?;
        v.trim()
            .parse()
            .with_context(|| format!("{path} in {}: {:?}", ns.name(), v.trim()))
    }

    /// The LAN host's MAC address.
    pub fn host_mac(&self) -> Result<String> {
        Ok(self
            .lan
            .exec("cat", &["/sys/class/net/lanh/address"])?
            .trim()
            .to_string())
    }
}

/// A TUN device (no packet information header), removed when dropped.
pub struct Tun {
    fd: OwnedFd,
}

impl Tun {
    /// Opens `/dev/net/tun` and creates (or attaches to) the device `name`, non-blocking.
    pub fn create(name: &str) -> Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            bail!("bad TUN name {name:?}");
        }
        // SAFETY: a NUL-terminated path and plain flags; open(2) has no other preconditions.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("opening /dev/net/tun");
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        const IFF_TUN: libc::c_short = 0x0001;
        const IFF_NO_PI: libc::c_short = 0x1000;
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `req` is a properly sized, initialised `struct ifreq` for TUNSETIFF and
        // outlives the call; the descriptor is open.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
        }
        Ok(Tun { fd })
    }

    /// Writes one packet; true if all of it was taken.
    pub fn write(&self, pkt: &[u8]) -> bool {
        // SAFETY: the buffer is valid for its length; the descriptor is open.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
        n == pkt.len() as isize
    }

    /// Reads and counts IPv4 UDP packets until `stop` is set (then for [`READ_GRACE`]) or
    /// `deadline` passes.
    fn count_until(&self, stop: &AtomicBool, deadline: Instant) -> u64 {
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        let mut clock = ReadClock::new(stop, deadline);
        while clock.keep_reading() {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                continue;
            }
            // At most one buffer's worth of reads before the clocks are checked again.
            for _ in 0..4096 {
                // SAFETY: `buf` is valid for writes of its length.
                let r =
                    unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if r <= 0 {
                    break;
                }
                if buf[0] >> 4 == 4 && buf[9] == 17 {
                    n += 1;
                }
            }
        }
        n
    }
}

/// When a reader stops: [`READ_GRACE`] after `stop` is set (packets still in flight are
/// counted), or at `deadline`.
struct ReadClock<'a> {
    stop: &'a AtomicBool,
    deadline: Instant,
    grace_end: Option<Instant>,
}

impl<'a> ReadClock<'a> {
    fn new(stop: &'a AtomicBool, deadline: Instant) -> ReadClock<'a> {
        ReadClock {
            stop,
            deadline,
            grace_end: None,
        }
    }

    /// Whether to read on; checked before every burst of reads.
    fn keep_reading(&mut self) -> bool {
        let now = Instant::now();
        if self.grace_end.is_none() && self.stop.load(Ordering::Relaxed) {
            self.grace_end = Some(now + READ_GRACE);
        }
        now < self.deadline && self.grace_end.is_none_or(|g| now <= g)
    }
}

/// An IPv4/UDP packet with correct checksums.
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    let p = ck::pseudo_header_v4(src.octets(), dst.octets(), 17, l4.len() as u16);
    let c = ck::udp_wire(ck::finish(ck::sum(&l4, p)));
    l4[6..8].copy_from_slice(&c.to_be_bytes());
    let mut out = vec![0x45, 0];
    out.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let c = ck::checksum(&out);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&l4);
    out
}

/// Creates the TUN `tgtun0` in the calling thread's namespace, MTU 1280, with the router's
/// tailnet address and the tailnet route.
pub fn tun_setup() -> Result<Tun> {
    let tun = Tun::create(TUN_NAME)?;
    for args in [
        &["link", "set", TUN_NAME, "mtu", "1280", "up"][..],
        &["addr", "add", "100.64.0.1/32", "dev", TUN_NAME],
        &["route", "add", "100.64.0.0/10", "dev", TUN_NAME],
    ] {
        // The thread is inside the router namespace: a plain `ip` child inherits it.
        crate::lab::ip(args)?;
    }
    Ok(tun)
}

/// Loads and attaches both programs (TUN and `lan0`) in the calling thread's namespace and
/// serves the LAN route.
fn attach(snat: bool, lan_mode: AttachPreference) -> Result<XdpForward> {
    let opts = ForwardOptions {
        lan: vec![LanInterface::new("lan0", ROUTER_LAN)],
        snat_subnet_routes: snat,
        lan_attach: lan_mode,
        ..ForwardOptions::default()
    };
    let mut fwd = XdpForward::attach(TUN_NAME, &opts).context("attaching the XDP programs")?;
    let route: IpNet = LAN_ROUTE.parse().context("the LAN route")?;
    fwd.set_routes(&[ForwardRoute::from(route)])
        .context("serving the LAN route")?;
    Ok(fwd)
}

/// Turns on `kernel.bpf_stats_enabled` (run time per program) for its lifetime, restoring
/// the previous value on drop.
pub struct BpfStats(Option<String>);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    /// Enables the statistics if the sysctl exists; a no-op otherwise.
    pub fn enable() -> BpfStats {
        match std::fs::read_to_string(Self::PATH) {
            Ok(old) => {
                let _ = std::fs::write(Self::PATH, "1");
                BpfStats(Some(old.trim().to_string()))
            }
            Err(_) => BpfStats(None),
        }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(Self::PATH, old);
        }
    }
}

/// Average run time of a loaded program, ns per invocation (`None` without statistics).
fn ns_per_run(fwd: &XdpForward, program: ForwardProgram) -> Option<f64> {
    let id = fwd.program_id(program)?;
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .filter(|p| p.run_count() > 0)
        .map(|p| p.run_time().as_nanos() as f64 / p.run_count() as f64)
}

/// Joins a namespace thread, giving up (and leaving it to finish on its own bounded clock)
/// after `timeout`.
pub(crate) fn join_bounded<T>(
    h: std::thread::JoinHandle<Result<T>>,
    timeout: Duration,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    while !h.is_finished() {
        if Instant::now() > deadline {
            bail!("a namespace thread did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    h.join()
        .map_err(|_| anyhow!("a namespace thread panicked"))?
}

/// A path from the TUN to the LAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardVariant {
    /// Kernel forwarding, no NAT.
    KernelNoNat,
    /// Kernel forwarding with the nftables masquerade (the daemon's `--no-xdp` path).
    KernelMasquerade,
    /// `tun_forward` without SNAT.
    XdpNoNat,
    /// `tun_forward` with SNAT (the daemon's XDP path).
    XdpSnat,
}

impl ForwardVariant {
    /// Every variant, in table order.
    pub const ALL: [ForwardVariant; 4] = [
        ForwardVariant::KernelNoNat,
        ForwardVariant::KernelMasquerade,
        ForwardVariant::XdpNoNat,
        ForwardVariant::XdpSnat,
    ];

    /// Whether the variant runs XDP.
    pub fn is_xdp(self) -> bool {
        matches!(self, ForwardVariant::XdpNoNat | ForwardVariant::XdpSnat)
    }
}

impl fmt::Display for ForwardVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForwardVariant::KernelNoNat => "kernel, no NAT",
            ForwardVariant::KernelMasquerade => "kernel + nftables masquerade",
            ForwardVariant::XdpNoNat => "XDP tun_forward, no NAT",
            ForwardVariant::XdpSnat => "XDP tun_forward + SNAT",
        })
    }
}

/// A path from the LAN back into the TUN, and where the router's receive path runs.
///
/// In the first four variants the router's receive path (the NAPI poll of `lan0`) runs in the
/// LAN host generator's softirq on [`SENDER_CPU`], as a veth does by default, and only the
/// reader has [`READER_CPU`]. The `…OneCore` variants move that NAPI poll into a kernel thread
/// (threaded NAPI) pinned to [`READER_CPU`]: the whole router, receive path and reader, on one
/// core, and the generator alone on the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnVariant {
    /// Kernel conntrack de-NAT of the nftables masquerade.
    KernelConntrack,
    /// `lan_return` in native mode (the daemon's choice on a veth LAN).
    XdpNative,
    /// `lan_return` in generic mode.
    XdpGeneric,
    /// `lan_return` in native mode, redirecting to an AF_XDP socket on `lan0` queue 0.
    XdpNativeAfXdp,
    /// [`ReturnVariant::KernelConntrack`] with the router on one core.
    KernelConntrackOneCore,
    /// [`ReturnVariant::XdpNative`] with the router on one core.
    XdpNativeOneCore,
    /// [`ReturnVariant::XdpNativeAfXdp`] with the router on one core.
    XdpNativeAfXdpOneCore,
}

impl ReturnVariant {
    /// Every variant, in table order.
    pub const ALL: [ReturnVariant; 7] = [
        ReturnVariant::KernelConntrack,
        ReturnVariant::XdpNative,
        ReturnVariant::XdpGeneric,
        ReturnVariant::XdpNativeAfXdp,
        ReturnVariant::KernelConntrackOneCore,
        ReturnVariant::XdpNativeOneCore,
        ReturnVariant::XdpNativeAfXdpOneCore,
    ];

    /// The forwarding path, whatever the placement: the `…OneCore` variants map to the
    /// variant of the same path whose receive path runs on the generator's CPU.
    pub fn path(self) -> ReturnVariant {
        match self {
            ReturnVariant::KernelConntrackOneCore => ReturnVariant::KernelConntrack,
            ReturnVariant::XdpNativeOneCore => ReturnVariant::XdpNative,
            ReturnVariant::XdpNativeAfXdpOneCore => ReturnVariant::XdpNativeAfXdp,
            v => v,
        }
    }

    /// Whether the router's receive path runs in a NAPI thread on the reader's CPU.
    pub fn one_core(self) -> bool {
        self.path() != self
    }

    /// Whether the variant runs XDP.
    pub fn is_xdp(self) -> bool {
        self.path() != ReturnVariant::KernelConntrack
    }
}

impl fmt::Display for ReturnVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.path() {
            ReturnVariant::KernelConntrack => "kernel conntrack (nftables masquerade)",
            ReturnVariant::XdpNative => "XDP lan_return, native",
            ReturnVariant::XdpGeneric => "XDP lan_return, generic",
            _ => "XDP lan_return → AF_XDP socket, native",
        })?;
        if self.one_core() {
            f.write_str(", router on one core")?;
        }
        Ok(())
    }
}

/// One measured run of a variant.
#[derive(Clone, Debug, PartialEq)]
pub struct StageRun {
    /// Packets offered per second: TUN writes (TUN → LAN) or datagrams the LAN host sent
    /// (LAN → TUN).
    pub offered_pps: f64,
    /// Packets that arrived per second: at the LAN host, or read from the TUN.
    pub delivered_pps: f64,
    /// XDP program run time per packet (ns), from `kernel.bpf_stats_enabled`.
    pub ns_per_pkt: Option<f64>,
    /// The XDP counters after the run (XDP variants).
    pub counters: Option<ForwardCounters>,
    /// Remarks (e.g. the SNATed peer the LAN host saw).
    pub note: Option<String>,
}

/// The runs of one variant.
#[derive(Clone, Debug)]
pub struct StageRow<V> {
    /// The variant.
    pub variant: V,
    /// The runs that succeeded.
    pub runs: Vec<StageRun>,
    /// Why the others failed.
    pub failures: Vec<String>,
}

impl<V> StageRow<V> {
    /// Median packets offered per second.
    pub fn offered_pps(&self) -> Option<f64> {
        median(&self.runs.iter().map(|r| r.offered_pps).collect::<Vec<_>>())
    }

    /// Median packets delivered per second.
    pub fn delivered_pps(&self) -> Option<f64> {
        median(
            &self
                .runs
                .iter()
                .map(|r| r.delivered_pps)
                .collect::<Vec<_>>(),
        )
    }

    /// Median XDP run time per packet.
    pub fn ns_per_pkt(&self) -> Option<f64> {
        let v: Vec<f64> = self.runs.iter().filter_map(|r| r.ns_per_pkt).collect();
        median(&v)
    }

    /// XDP counters summed over the runs.
    pub fn xdp_total(&self, pick: fn(&ForwardCounters) -> u64) -> Option<u64> {
        let all: Vec<u64> = self
            .runs
            .iter()
            .filter_map(|r| r.counters.as_ref().map(pick))
            .collect();
        (!all.is_empty()).then(|| all.iter().sum())
    }
}

/// The rows of one stage benchmark, in [`ForwardVariant::ALL`] / [`ReturnVariant::ALL`]
/// order.
#[derive(Clone, Debug)]
pub struct StageReport<V> {
    /// One row per variant.
    pub rows: Vec<StageRow<V>>,
}

impl<V: Copy + PartialEq> StageReport<V> {
    /// The row of `variant`.
    pub fn row(&self, variant: V) -> Option<&StageRow<V>> {
        self.rows.iter().find(|r| r.variant == variant)
    }
}

fn run_variants<V: Copy + fmt::Display>(
    variants: &[V],
    repeats: usize,
    mut once: impl FnMut(V) -> Result<StageRun>,
) -> StageReport<V> {
    let mut rows: Vec<StageRow<V>> = variants
        .iter()
        .map(|&variant| StageRow {
            variant,
            runs: Vec::new(),
            failures: Vec::new(),
        })
        .collect();
    // Runs alternate between the variants so that a slow phase of the machine hits all.
    for rep in 0..repeats.max(1) {
        for row in &mut rows {
            if interrupted() {
                row.failures.push("interrupted".into());
                continue;
            }
            match once(row.variant) {
                Ok(r) => {
                    println!(
                        "   {:<40} run {}/{}: {:.0} offered/s, {:.0} delivered/s{}",
                        row.variant.to_string(),
                        rep + 1,
                        repeats.max(1),
                        r.offered_pps,
                        r.delivered_pps,
                        r.ns_per_pkt
                            .map(|n| format!(", {n:.0} ns/pkt in XDP"))
                            .unwrap_or_default()
                    );
                    row.runs.push(r);
                }
                Err(e) => {
                    let e = one_line(&format!("{e:#}"), 300);
                    println!(
                        "   {:<40} run {}: failed: {e}",
                        row.variant.to_string(),
                        rep + 1
                    );
                    row.failures.push(e);
                }
            }
        }
    }
    StageReport { rows }
}

/// TUN → LAN: every [`ForwardVariant`], `d.stage_repeats` runs of `d.stage` each, each run in
/// fresh namespaces.
pub fn forward_tun_to_lan(d: &Durations) -> StageReport<ForwardVariant> {
    run_variants(&ForwardVariant::ALL, d.stage_repeats, |v| {
        forward_once(v, d.stage)
    })
}

fn forward_once(variant: ForwardVariant, seconds: Duration) -> Result<StageRun> {
    let lab = StageLab::new()?;
    if variant == ForwardVariant::KernelMasquerade {
        lab.masquerade()?;
    }
    let rx0 = StageLab::stat(&lab.lan, "lanh", "rx_packets")?;
    // The router thread says when its measured phase ended; the LAN host's counter is read
    // before it goes on with the cost phase.
    let (measured_tx, measured_rx) = mpsc::channel();
    let (counted_tx, counted_rx) = mpsc::channel();
    let handle = lab.router.spawn_inside(move || {
        let tun = tun_setup()?;
        let fwd = match variant {
            ForwardVariant::XdpNoNat => Some(attach(false, AttachPreference::Auto)?),
            ForwardVariant::XdpSnat => Some(attach(true, AttachPreference::Auto)?),
            _ => None,
        };
        let pkt = udp4(CLIENT4, HOST, 61_000, 9, &[0u8; PAYLOAD]);
        // Resolve the neighbour first.
        tun.write(&pkt);
        std::thread::sleep(Duration::from_millis(300));
        let write_for = |time: Duration| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < time {
                for _ in 0..1000 {
                    if tun.write(&pkt) {
                        n += 1;
                    }
                }
            }
            (n, start.elapsed().as_secs_f64())
        };
        let (n, secs) = write_for(seconds);
        let _ = measured_tx.send(());
        let cost = match &fwd {
            Some(f) => {
                counted_rx
                    .recv_timeout(THREAD_SLACK)
                    .map_err(|_| anyhow!("the LAN host's counter was not read"))?;
                let _stats = BpfStats::enable();
                write_for(COST_PHASE);
                ns_per_run(f, ForwardProgram::TunForward)
            }
            None => None,
        };
        let counters = fwd.as_ref().map(XdpForward::counters).transpose()?;
        Ok((n, secs, cost, counters))
    })?;
    let measured = measured_rx.recv_timeout(seconds + THREAD_SLACK);
    std::thread::sleep(Duration::from_millis(200));
    let delivered = StageLab::stat(&lab.lan, "lanh", "rx_packets")?.saturating_sub(rx0);
    let _ = counted_tx.send(());
    let (writes, secs, ns_per_pkt, counters) = join_bounded(handle, seconds + THREAD_SLACK)?;
    measured.map_err(|_| anyhow!("the router's measured phase did not end"))?;
    if secs <= 0.0 {
        bail!("no time measured");
    }
    Ok(StageRun {
        offered_pps: writes as f64 / secs,
        delivered_pps: delivered as f64 / secs,
        ns_per_pkt,
        counters,
        note: None,
    })
}

/// LAN → TUN: every [`ReturnVariant`], `d.stage_repeats` runs of `d.stage` each, each run in
/// fresh namespaces.
pub fn return_lan_to_tun(d: &Durations) -> StageReport<ReturnVariant> {
    run_variants(&ReturnVariant::ALL, d.stage_repeats, |v| {
        return_once(v, d.stage)
    })
}

/// Binds an AF_XDP socket to `lan0` queue 0 (the veth's only queue) in the calling thread's
/// namespace and registers it with `lan_return`.
fn lan_socket(fwd: &mut XdpForward) -> Result<XdpSocket> {
    let xsk = XdpSocket::bind(ifindex("lan0")?, 0, XdpSocketConfig::default())
        .context("binding an AF_XDP socket to lan0 queue 0")?;
    fwd.register_xsk(&xsk)
        .context("registering the AF_XDP socket")?;
    Ok(xsk)
}

/// The index of interface `name` in the calling thread's namespace.
pub(super) fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| anyhow!("bad interface name {name:?}"))?;
    // SAFETY: `c` is NUL-terminated; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface {name}: {}", std::io::Error::last_os_error());
    }
    Ok(index)
}

/// Counts IPv4 UDP packets received on the AF_XDP socket until `stop` is set (then for
/// [`READ_GRACE`]) or `deadline` passes, as [`Tun::count_until`] does for the TUN.
fn count_socket_until(xsk: &mut XdpSocket, stop: &AtomicBool, deadline: Instant) -> Result<u64> {
    let mut n = 0u64;
    let mut clock = ReadClock::new(stop, deadline);
    while clock.keep_reading() {
        let mut got = 0;
        // At most this many batches before the clocks are checked again.
        for _ in 0..64 {
            let batch = xsk.recv_batch(|frame| {
                if strip_ethernet(frame).is_some_and(|p| p[0] >> 4 == 4 && p.get(9) == Some(&17)) {
                    n += 1;
                }
            })?;
            if batch == 0 {
                break;
            }
            got += batch;
        }
        if got == 0 {
            xsk.poll(Duration::from_millis(50))?;
        }
    }
    Ok(n)
}

/// Sets the flag when dropped (also when the thread holding it fails early).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The prefix of the name of the kernel thread that runs the NAPI poll of `dev` once its
/// NAPI is threaded (`napi/<dev>-<napi id>`).
fn napi_thread_prefix(dev: &str) -> String {
    format!("napi/{dev}-")
}

/// The kernel threads whose name starts with `prefix`.
fn kernel_threads(prefix: &str) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .collect()
}

/// Runs the NAPI poll of the router's `lan0` in a kernel thread (threaded NAPI) pinned to
/// `cpu`, and returns that thread. Names repeat across namespaces, so the thread must be the
/// only one of its name (every run builds its own namespaces, one at a time).
fn pin_lan_napi(lab: &StageLab, cpu: usize) -> Result<libc::pid_t> {
    lab.router
        .exec("sh", &["-c", "echo 1 > /sys/class/net/lan0/threaded"])
        .context("threading the NAPI of the router's lan0")?;
    let threads = kernel_threads(&napi_thread_prefix("lan0"));
    let [thread] = threads[..] else {
        bail!("expected one NAPI thread of lan0, found {threads:?}");
    };
    if !crate::lab::pin_thread(thread, cpu) {
        bail!("could not pin the NAPI thread {thread} of lan0 to CPU {cpu}");
    }
    Ok(thread)
}

fn return_once(variant: ReturnVariant, seconds: Duration) -> Result<StageRun> {
    let lab = StageLab::new()?;
    if variant.path() == ReturnVariant::KernelConntrack {
        lab.masquerade()?;
    }
    // Frames sent with XDP reach a veth only while its NAPI runs: with an XDP program
    // attached, or with GRO on. On for every path alike (it merges no forwarded UDP).
    lab.router
        .exec("ethtool", &["-K", "lan0", "gro", "on"])
        .context("turning on GRO on the router's lan0")?;
    let napi_thread = if variant.one_core() {
        Some(pin_lan_napi(&lab, READER_CPU)?)
    } else {
        None
    };
    let router_mac = parse_mac(&lab.router.exec("cat", &["/sys/class/net/lan0/address"])?)?;
    let host_mac = parse_mac(&lab.host_mac()?)?;
    let wait = Duration::from_secs(5);
    // The LAN host learns the SNATed peer from the first datagram, then floods it with the
    // XDP generator: replies with full checksums, as a host on a real LAN sends them.
    let (peer_tx, peer_rx) = mpsc::channel::<SocketAddr>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent2, stop2) = (sent.clone(), stop.clone());
    let (cost_done_tx, cost_done_rx) = mpsc::channel();
    let sender = lab.lan.spawn_inside(move || {
        let stop_reader = SetOnDrop(stop2);
        crate::lab::pin_current_thread(SENDER_CPU);
        let s = UdpSocket::bind((HOST, 5353)).context("binding the LAN host's socket")?;
        s.set_read_timeout(Some(wait))?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 2048];
        let (_, peer) = s
            .recv_from(&mut buf)
            .context("waiting for the first datagram from the tunnel side")?;
        let _ = peer_tx.send(peer);
        let IpAddr::V4(peer_ip) = peer.ip() else {
            bail!("the SNATed peer {peer} is not IPv4");
        };
        let reply = udp4(HOST, peer_ip, 5353, peer.port(), &[0u8; PAYLOAD]);
        let flood = XdpFlood::load(&ethernet_ipv4(router_mac, host_mac, &reply))?;
        let ifindex = ifindex("lanh")?;
        let (n, secs) = flood.flood(ifindex, seconds)?;
        sent2.store(n, Ordering::Relaxed);
        drop(stop_reader);
        if variant.is_xdp() {
            // After the reader stopped counting: the cost phase, read by the router thread.
            std::thread::sleep(READ_GRACE + Duration::from_millis(100));
            let _stats = BpfStats::enable();
            flood.flood(ifindex, COST_PHASE)?;
            let _ = cost_done_tx.send(());
        }
        Ok(secs)
    })?;
    ready_rx
        .recv_timeout(wait)
        .map_err(|_| anyhow!("the LAN host's socket did not open"))?;
    let stop_r = stop.clone();
    let router = lab.router.spawn_inside(move || {
        crate::lab::pin_current_thread(READER_CPU);
        let tun = tun_setup()?;
        let mut fwd = match variant.path() {
            ReturnVariant::XdpNative | ReturnVariant::XdpNativeAfXdp => {
                Some(attach(true, AttachPreference::Native)?)
            }
            ReturnVariant::XdpGeneric => Some(attach(true, AttachPreference::Generic)?),
            _ => None,
        };
        let mut xsk = match (variant.path(), fwd.as_mut()) {
            (ReturnVariant::XdpNativeAfXdp, Some(fwd)) => Some(lan_socket(fwd)?),
            _ => None,
        };
        tun.write(&udp4(CLIENT4, HOST, 40_000, 5353, b"start"));
        let peer = peer_rx
            .recv_timeout(wait)
            .map_err(|_| anyhow!("the LAN host never saw the first datagram"))?;
        let start = Instant::now();
        let deadline = start + seconds + wait;
        let read = match xsk.as_mut() {
            Some(xsk) => count_socket_until(xsk, &stop_r, deadline)?,
            None => tun.count_until(&stop_r, deadline),
        };
        let secs = start.elapsed().as_secs_f64() - READ_GRACE.as_secs_f64();
        let cost = match &fwd {
            Some(f) => {
                cost_done_rx
                    .recv_timeout(THREAD_SLACK)
                    .map_err(|_| anyhow!("the LAN host's cost phase did not end"))?;
                ns_per_run(f, ForwardProgram::LanReturn)
            }
            None => None,
        };
        let counters = fwd.as_ref().map(XdpForward::counters).transpose()?;
        Ok((peer, read, secs, cost, counters))
    });
    let router = match router {
        Ok(h) => h,
        Err(e) => {
            // The sender times out on its own (bounded); wait for it before the namespaces go.
            let _ = join_bounded(sender, seconds + THREAD_SLACK);
            return Err(e);
        }
    };
    let sender_result = join_bounded(sender, seconds + THREAD_SLACK);
    let (peer, read, secs, ns_per_pkt, counters) =
        join_bounded(router, seconds + THREAD_SLACK + wait)?;
    let send_secs = sender_result?;
    if let Some(thread) = napi_thread {
        // Attaching XDP or binding the socket must not have made a new, unpinned thread.
        if kernel_threads(&napi_thread_prefix("lan0")) != [thread] {
            bail!("the NAPI thread of lan0 changed during the run");
        }
    }
    let sent = sent.load(Ordering::Relaxed);
    if secs <= 0.0 || send_secs <= 0.0 {
        bail!("no time measured");
    }
    Ok(StageRun {
        offered_pps: sent as f64 / send_secs,
        delivered_pps: read as f64 / secs,
        ns_per_pkt,
        counters,
        note: Some(format!("SNAT peer seen by the LAN host: {peer}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_packet_checksums_verify() {
        let p = udp4(CLIENT4, HOST, 61_000, 9, &[0u8; PAYLOAD]);
        assert_eq!(p.len(), 20 + 8 + PAYLOAD);
        assert!(ck::verify(&p[..20], 0));
        let pseudo = ck::pseudo_header_v4(CLIENT4.octets(), HOST.octets(), 17, 8 + PAYLOAD as u16);
        assert!(ck::verify(&p[20..], pseudo));
    }

    #[test]
    fn readers_stop_a_grace_after_the_flag_or_at_the_deadline() {
        let stop = AtomicBool::new(false);
        let mut clock = ReadClock::new(&stop, Instant::now() + Duration::from_secs(10));
        assert!(clock.keep_reading());
        stop.store(true, Ordering::Relaxed);
        assert!(clock.keep_reading(), "packets in flight are still read");
        std::thread::sleep(READ_GRACE + Duration::from_millis(20));
        assert!(!clock.keep_reading());
        let running = AtomicBool::new(false);
        assert!(!ReadClock::new(&running, Instant::now()).keep_reading());
    }

    #[test]
    fn medians_of_rows() {
        let run = |o: f64, d: f64| StageRun {
            offered_pps: o,
            delivered_pps: d,
            ns_per_pkt: None,
            counters: None,
            note: None,
        };
        let row = StageRow {
            variant: ForwardVariant::XdpSnat,
            runs: vec![run(1.0, 3.0), run(2.0, 1.0), run(3.0, 2.0)],
            failures: vec![],
        };
        assert_eq!(row.offered_pps(), Some(2.0));
        assert_eq!(row.delivered_pps(), Some(2.0));
        assert_eq!(row.ns_per_pkt(), None);
        assert_eq!(row.xdp_total(|c| c.tun.forwarded()), None);
    }
}
