//! Liveness probes: ICMP echo requests to a set of targets every [`ProbeTiming::interval`],
//! and the set of targets that went silent. Two users: a client probes, *through the tunnel*,
//! the routers that are primary for routes with a standby (so it can switch to the standby
//! before the coordination server notices), and a router probes its LAN health target.
//!
//! A target is **silent** when it has not answered for [`ProbeTiming::silence`] (counted from
//! when probing began if it never answered). A silent target becomes live again only after
//! answering without a miss for [`ProbeTiming::recovery`], so a flaky path does not flip
//! traffic back and forth.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often to probe and when to give up on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Time between probes.
    pub interval: Duration,
    /// No answer for this long: silent.
    pub silence: Duration,
    /// A silent target must answer for this long before it is live again.
    pub recovery: Duration,
}

impl ProbeTiming {
    /// Through the tunnel to primary routers: a dead primary is noticed within 300 ms.
    pub const TUNNEL: ProbeTiming = ProbeTiming {
        interval: Duration::from_millis(50),
        silence: Duration::from_millis(300),
        recovery: Duration::from_secs(2),
    };
    /// A router's LAN health target: a dead LAN is reported within 300 ms.
    pub const LAN_HEALTH: ProbeTiming = ProbeTiming {
        interval: Duration::from_millis(50),
        silence: Duration::from_millis(300),
        recovery: Duration::from_secs(1),
    };
}

#[derive(Debug, Clone)]
struct TargetState {
    addr: IpAddr,
    probing_since: Instant,
    last_reply: Option<Instant>,
    /// Set while silent; cleared after `recovery` of answers.
    silent: bool,
    /// Start of the current run of answers without a miss.
    answering_since: Option<Instant>,
}

/// The pure bookkeeping of probes and replies.
#[derive(Debug, Clone)]
pub struct Tracker<K: Ord> {
    timing: ProbeTiming,
    targets: BTreeMap<K, TargetState>,
}

impl<K: Ord + Clone> Tracker<K> {
    /// No targets yet.
    pub fn new(timing: ProbeTiming) -> Self {
        Tracker {
            timing,
            targets: BTreeMap::new(),
        }
    }

    /// Makes `targets` the probed set; targets that stay keep their history.
    pub fn set_targets(&mut self, targets: &[(K, IpAddr)], now: Instant) {
        let mut next = BTreeMap::new();
        for (k, addr) in targets {
            let state = match self.targets.remove(k) {
                Some(s) if s.addr == *addr => s,
                _ => TargetState {
                    addr: *addr,
                    probing_since: now,
                    last_reply: None,
                    silent: false,
                    answering_since: None,
                },
            };
            next.insert(k.clone(), state);
        }
        self.targets = next;
    }

    /// Addresses to probe.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.targets.values().map(|s| s.addr).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Records an echo reply from `from`.
    pub fn on_reply(&mut self, from: IpAddr, now: Instant) {
        for s in self.targets.values_mut().filter(|s| s.addr == from) {
            let missed = s
                .last_reply
                .is_none_or(|t| now.saturating_duration_since(t) >= self.timing.silence);
            if missed || s.answering_since.is_none() {
                s.answering_since = Some(now);
            }
            s.last_reply = Some(now);
        }
    }

    /// Updates every target's state at `now` and returns the silent ones.
    pub fn evaluate(&mut self, now: Instant) -> BTreeSet<K> {
        let t = self.timing;
        let mut out = BTreeSet::new();
        for (k, s) in &mut self.targets {
            let heard = s.last_reply.unwrap_or(s.probing_since);
            if now.saturating_duration_since(heard) >= t.silence {
                s.silent = true;
                s.answering_since = None;
            } else if s.silent
                && s.answering_since
                    .is_some_and(|a| now.saturating_duration_since(a) >= t.recovery)
            {
                s.silent = false;
            }
            if s.silent {
                out.insert(k.clone());
            }
        }
        out
    }
}

/// An ICMP echo request (IPv4, or ICMPv6 whose checksum the kernel fills in).
fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"tailgate-probe");
    if !v6 {
        let c = crate::nat::checksum::checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// If `pkt` (as a raw socket delivers it: with the IPv4 header, without the IPv6 one) is an
/// echo reply with our `id`, true.
fn is_our_reply(v6: bool, pkt: &[u8], id: u16) -> bool {
    let icmp = if v6 {
        pkt
    } else {
        let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
        if ihl < 20 || pkt.len() < ihl {
            return false;
        }
        &pkt[ihl..]
    };
    let reply_type = if v6 { 129 } else { 0 };
    icmp.len() >= 8 && icmp[0] == reply_type && icmp[1] == 0 && icmp[4..6] == id.to_be_bytes()
}

/// Raw ICMP sockets for both families (either may be missing, e.g. IPv6 disabled).
struct Sockets {
    v4: Option<Socket>,
    v6: Option<Socket>,
}

impl Sockets {
    fn open() -> io::Result<Sockets> {
        let open = |domain, proto| -> io::Result<Socket> {
            let s = Socket::new(domain, Type::RAW, Some(proto))?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let v4 = open(Domain::IPV4, Protocol::ICMPV4);
        let v6 = open(Domain::IPV6, Protocol::ICMPV6);
        match (v4, v6) {
            (Err(e), Err(_)) => Err(e),
            (v4, v6) => Ok(Sockets {
                v4: v4.ok(),
                v6: v6.ok(),
            }),
        }
    }

    fn send(&self, to: IpAddr, id: u16, seq: u16) {
        let (sock, v6) = match to {
            IpAddr::V4(_) => (&self.v4, false),
            IpAddr::V6(_) => (&self.v6, true),
        };
        if let Some(s) = sock {
            let addr = SockAddr::from(SocketAddr::new(to, 0));
            if let Err(e) = s.send_to(&echo_request(v6, id, seq), &addr) {
                log::trace!("probe to {to}: {e}");
            }
        }
    }

    /// Every pending echo reply with our `id`: its source.
    fn drain(&self, id: u16) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for (sock, v6) in [(&self.v4, false), (&self.v6, true)] {
            let Some(s) = sock else { continue };
            let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
            // Bounded: at most this many datagrams per drain.
            for _ in 0..4096 {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    break;
                };
                // SAFETY: `recv_from` initialised the first `n` bytes of `buf`.
                let pkt = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                if let Some(ip) = from.as_socket().map(|a| a.ip()) {
                    if is_our_reply(v6, pkt, id) {
                        out.push(ip);
                    }
                }
            }
        }
        out
    }
}

/// A running prober: set its targets, watch its silent set. Dropping it stops the probes.
pub struct Prober<K> {
    targets: watch::Sender<Vec<(K, IpAddr)>>,
    silent: watch::Receiver<BTreeSet<K>>,
    task: JoinHandle<()>,
}

impl<K> Prober<K>
where
    K: Ord + Clone + Send + Sync + Debug + 'static,
{
    /// Starts probing (no targets yet). Fails if no raw ICMP socket can be opened (needs
    /// CAP_NET_RAW).
    pub fn start(timing: ProbeTiming, what: &'static str) -> io::Result<Prober<K>> {
        let sockets = Sockets::open()?;
        let (targets_tx, mut targets) = watch::channel(Vec::new());
        let (tx, silent) = watch::channel(BTreeSet::new());
        // Tells our replies from those to other pingers on the host (raw sockets see them all).
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let id = (std::process::id() as u16) ^ (clock.subsec_nanos() as u16);
        log::info!(
            "{what}: every {:?}, silent after {:?}",
            timing.interval,
            timing.silence
        );
        let task = tokio::spawn(async move {
            let mut tracker = Tracker::new(timing);
            let mut tick = tokio::time::interval(timing.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u16;
            loop {
                tick.tick().await;
                let now = Instant::now();
                if targets.has_changed().unwrap_or(false) {
                    let t = targets.borrow_and_update().clone();
                    log::debug!("{what}: targets {t:?}");
                    tracker.set_targets(&t, now);
                }
                for from in sockets.drain(id) {
                    log::trace!("{what}: reply from {from}");
                    tracker.on_reply(from, now);
                }
                let now_silent = tracker.evaluate(now);
                tx.send_if_modified(|s| {
                    let changed = *s != now_silent;
                    if changed {
                        log::info!("{what}: silent now {now_silent:?}");
                        *s = now_silent;
                    }
                    changed
                });
                seq = seq.wrapping_add(1);
                for addr in tracker.addresses() {
                    sockets.send(addr, id, seq);
                }
            }
        });
        Ok(Prober {
            targets: targets_tx,
            silent,
            task,
        })
    }

    /// Makes `targets` the probed set (from the next probe on).
    pub fn set_targets(&self, targets: Vec<(K, IpAddr)>) {
        self.targets.send_if_modified(|t| {
            let changed = *t != targets;
            *t = targets;
            changed
        });
    }

    /// Waits until the silent set changes and returns it.
    pub async fn changed(&mut self) -> BTreeSet<K> {
        if self.silent.changed().await.is_err() {
            // The task ended (it does not, unless aborted): nothing changes any more.
            std::future::pending::<()>().await;
        }
        self.silent.borrow_and_update().clone()
    }
}

impl<K> Drop for Prober<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ProbeTiming = ProbeTiming {
        interval: Duration::from_millis(50),
        silence: Duration::from_millis(300),
        recovery: Duration::from_secs(2),
    };

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    #[test]
    fn silence_recovery_and_target_changes() {
        let t0 = Instant::now();
        let a: IpAddr = "100.64.0.1".parse().unwrap();
        let b: IpAddr = "100.64.0.2".parse().unwrap();
        let mut tr = Tracker::new(T);
        tr.set_targets(&[("a", a), ("b", b)], t0);
        // Both answer for a while.
        for i in 0..10 {
            tr.on_reply(a, ms(t0, i * 50));
            tr.on_reply(b, ms(t0, i * 50));
            assert!(tr.evaluate(ms(t0, i * 50)).is_empty());
        }
        // a stops answering at 450 ms: silent from 750 ms on.
        for i in 10..40 {
            tr.on_reply(b, ms(t0, i * 50));
            let silent = tr.evaluate(ms(t0, i * 50));
            assert_eq!(silent.contains("a"), i * 50 >= 750, "at {} ms", i * 50);
            assert!(!silent.contains("b"));
        }
        // a answers again from 2000 ms: still silent until 2 s of answers.
        for i in 40..90 {
            tr.on_reply(a, ms(t0, i * 50));
            let silent = tr.evaluate(ms(t0, i * 50));
            assert_eq!(silent.contains("a"), i * 50 < 4000, "at {} ms", i * 50);
        }
        // A target that never answers is silent `silence` after probing began.
        let c: IpAddr = "fd7a:115c:a1e0::3".parse().unwrap();
        tr.set_targets(&[("a", a), ("c", c)], ms(t0, 5000));
        assert!(!tr.evaluate(ms(t0, 5250)).contains("c"));
        assert!(tr.evaluate(ms(t0, 5300)).contains("c"));
        assert_eq!(tr.addresses(), vec![a, c]);
        // Dropped targets are forgotten; new ones start fresh.
        tr.set_targets(&[("b", b)], ms(t0, 5400));
        assert!(tr.evaluate(ms(t0, 5400)).is_empty());
    }

    #[test]
    fn flaky_answers_do_not_end_silence_early() {
        let t0 = Instant::now();
        let a: IpAddr = "100.64.0.1".parse().unwrap();
        let mut tr = Tracker::new(T);
        tr.set_targets(&[("a", a)], t0);
        assert!(tr.evaluate(ms(t0, 300)).contains("a"));
        // Answers with a 400 ms hole in the middle: the 2 s run restarts after it.
        tr.on_reply(a, ms(t0, 400));
        tr.on_reply(a, ms(t0, 1400));
        assert!(tr.evaluate(ms(t0, 1800)).contains("a"), "hole of 1 s");
        for i in 0..=40 {
            tr.on_reply(a, ms(t0, 1800 + i * 50));
        }
        assert!(tr.evaluate(ms(t0, 3700)).contains("a"));
        assert!(!tr.evaluate(ms(t0, 3800)).contains("a"));
    }

    #[test]
    fn echo_packets_round_trip_the_parser() {
        let req = echo_request(false, 0x1234, 7);
        assert_eq!(crate::nat::checksum::checksum(&req), 0);
        let mut reply = vec![0x45u8; 20];
        let mut icmp = req.clone();
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        assert!(is_our_reply(false, &reply, 0x1234));
        assert!(!is_our_reply(false, &reply, 0x1235));
        assert!(
            !is_our_reply(false, &req, 0x1234),
            "a request is not a reply"
        );
        let mut r6 = echo_request(true, 9, 1);
        r6[0] = 129;
        assert!(is_our_reply(true, &r6, 9));
        for junk in [&[][..], &[0x4f][..], &[0x45, 0, 0][..]] {
            assert!(!is_our_reply(false, junk, 0));
            assert!(!is_our_reply(true, junk, 0));
        }
    }
}
