//! One peer's WireGuard state machine: handshakes, sessions, queueing.
//!
//! # Driving a tunnel (the device layer's contract)
//!
//! * Outgoing IP packet: [`Tunnel::encapsulate`]. With a session it returns the data message
//!   to send. Without one it queues the packet (at most [`MAX_QUEUED_PACKETS`], oldest dropped
//!   first) and returns a handshake initiation to send, or `Done` while one is in flight.
//! * Incoming datagram for this peer: [`Tunnel::decapsulate`]. Send `WriteToNetwork` back to
//!   the datagram's source; hand `WriteToTunnelV4/V6` to the TUN after checking that the
//!   inner source address is in the peer's allowed IPs (cryptokey routing).
//! * **Queued packets**: after every `decapsulate` that did not return `Err` (a completed
//!   handshake as initiator, or the first data packet confirming a handshake as responder,
//!   releases the queue), call [`Tunnel::next_queued`] until it returns `Done`, sending each
//!   `WriteToNetwork` to the peer's endpoint. It is cheap when the queue is empty.
//!   `decapsulate(None, &[], dst, now)` is the same as `next_queued` (boringtun's convention).
//! * Every 100–250 ms: [`Tunnel::update_timers`], sending what it returns to the peer's
//!   endpoint. `Err(ConnectionExpired)` means the handshake gave up and queued packets were
//!   dropped. It performs at most one action per call; calling it in a loop until `Done` is
//!   also fine.
//! * Endpoint roaming: after any non-`Err` result of `decapsulate(Some(src), ..)`, `src` is
//!   an authenticated address of the peer ([`Tunnel::endpoint`] remembers the last one).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_core::OsRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroize;

use super::cookie::{verify_mac1, CookieState};
use super::crypto::tai64n;
use super::error::WgError;
use super::keys::Key;
use super::messages::{
    parse_packet, CookieReply, DataPacket, HandshakeInit, HandshakeResponse, Packet,
    HANDSHAKE_INIT_LEN, HANDSHAKE_RESPONSE_LEN,
};
use super::noise::{
    consume_response, create_initiation, create_response, decrypt_initiator_static,
    finish_initiation, InitiatorState, LocalStatic, PeerStatic,
};
use super::session::Session;
use super::timers::{
    Timers, KEEPALIVE_TIMEOUT, MIN_INITIATION_INTERVAL, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME, REKEY_TIMEOUT,
};

/// Packets queued per peer while no session exists; beyond this the oldest is dropped.
pub const MAX_QUEUED_PACKETS: usize = 256;

/// What the caller must do after a call into the state machine.
#[derive(Debug)]
pub enum TunnResult<'a> {
    /// Nothing to do.
    Done,
    /// The packet was dropped, or the operation failed.
    Err(WgError),
    /// Send these bytes to the network (the peer, or the source of the datagram).
    WriteToNetwork(&'a mut [u8]),
    /// Write this IPv4 packet to the TUN; the address is its inner source, for the
    /// allowed-IPs check.
    WriteToTunnelV4(&'a mut [u8], Ipv4Addr),
    /// Write this IPv6 packet to the TUN; the address is its inner source.
    WriteToTunnelV6(&'a mut [u8], Ipv6Addr),
}

impl TunnResult<'_> {
    /// True for `Done`.
    pub fn is_done(&self) -> bool {
        matches!(self, TunnResult::Done)
    }
}

impl From<WgError> for TunnResult<'_> {
    fn from(e: WgError) -> Self {
        TunnResult::Err(e)
    }
}

/// Counters of one tunnel, as `wg show` reports them (bytes are whole datagram sizes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes of all datagrams sent to the peer (data, keepalives, handshakes).
    pub tx_bytes: u64,
    /// Bytes of all authenticated datagrams received from the peer.
    pub rx_bytes: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Authenticated datagrams received.
    pub rx_packets: u64,
    /// Packets waiting for a session.
    pub queued: usize,
    /// Packets dropped from the queue (overflow, or handshake gave up).
    pub queue_drops: u64,
    /// Handshakes completed (either role).
    pub handshakes: u64,
    /// Whether a session is ready for sending.
    pub established: bool,
}

/// Which session slot a packet belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    Next,
}

/// The WireGuard protocol state for one peer. See the module docs for how to drive it.
pub struct Tunnel {
    pub(super) local: LocalStatic,
    pub(super) local_mac1_key: [u8; 32],
    pub(super) peer: PeerStatic,
    pub(super) psk: [u8; 32],
    pub(super) index_base: u32,
    pub(super) index_counter: u8,
    /// Our initiation in flight.
    pub(super) pending: Option<InitiatorState>,
    /// Session used for sending.
    pub(super) current: Option<Box<Session>>,
    /// The session before `current`, still accepted for receiving.
    pub(super) previous: Option<Box<Session>>,
    /// A session we derived as responder, unused until the peer sends on it.
    pub(super) next: Option<Box<Session>>,
    pub(super) cookie: CookieState,
    pub(super) timers: Timers,
    /// Greatest initiation timestamp accepted from the peer.
    pub(super) last_peer_timestamp: Option<[u8; 12]>,
    /// When we last accepted an initiation (flood protection).
    pub(super) last_initiation_consumed: Option<Instant>,
    /// Greatest timestamp we sent (ours are strictly increasing).
    pub(super) last_sent_timestamp: [u8; 12],
    pub(super) queue: VecDeque<Vec<u8>>,
    /// Maps `Instant`s to wall-clock time (for timestamps and `last_handshake`).
    pub(super) clock_base: (Instant, SystemTime),
    pub(super) stats: TunnelStats,
    pub(super) endpoint: Option<SocketAddr>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.psk.zeroize();
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("peer", &self.peer.public.short())
            .field("index_base", &format_args!("{:#x}", self.index_base))
            .field("current", &self.current)
            .field("previous", &self.previous)
            .field("next", &self.next)
            .field("handshake_in_flight", &self.pending.is_some())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// A tunnel to `peer_public`. `local_index_base`'s upper 24 bits are put in every session
    /// index this tunnel hands out (the device routes by them); its low 8 bits are ignored.
    /// With a persistent keepalive, the first [`Tunnel::update_timers`] starts a handshake.
    pub fn new(
        static_private: Key,
        peer_public: Key,
        preshared_key: Option<Key>,
        persistent_keepalive: Option<u16>,
        local_index_base: u32,
        now: Instant,
    ) -> Tunnel {
        let local = LocalStatic::new(&static_private);
        let peer = PeerStatic::new(&local, peer_public);
        let mut timers = Timers::default();
        timers.set_persistent_keepalive(persistent_keepalive, now);
        Tunnel {
            local_mac1_key: super::cookie::mac1_key(&local.public),
            local,
            peer,
            psk: preshared_key.map_or([0; 32], |k| *k.as_bytes()),
            index_base: local_index_base & !0xff,
            index_counter: random_u8(),
            pending: None,
            current: None,
            previous: None,
            next: None,
            cookie: CookieState::default(),
            timers,
            last_peer_timestamp: None,
            last_initiation_consumed: None,
            last_sent_timestamp: [0; 12],
            queue: VecDeque::new(),
            clock_base: (now, SystemTime::now()),
            stats: TunnelStats::default(),
            endpoint: None,
        }
    }

    /// Switches to a new local static key (node-key rotation) **keeping the established
    /// sessions**: their keys came from ephemeral exchanges and stay valid until they age out,
    /// which gives the peer time to learn the new public key. A handshake in flight (made with
    /// the old key) is abandoned; the next one uses the new key.
    pub fn set_local_static(&mut self, static_private: Key) {
        let local = LocalStatic::new(&static_private);
        self.peer = PeerStatic::new(&local, self.peer.public);
        self.local_mac1_key = super::cookie::mac1_key(&local.public);
        self.local = local;
        self.pending = None;
    }

    /// The peer's static public key.
    pub fn peer_public(&self) -> &Key {
        &self.peer.public
    }

    /// Our static public key.
    pub fn local_public(&self) -> &Key {
        &self.local.public
    }

    /// The upper 24 bits of our session indices (low 8 bits zero).
    pub fn local_index_base(&self) -> u32 {
        self.index_base
    }

    /// Replaces the pre-shared key; applies to the next handshake.
    pub fn set_preshared_key(&mut self, psk: Option<Key>) {
        self.psk.zeroize();
        self.psk = psk.map_or([0; 32], |k| *k.as_bytes());
    }

    /// Sets the persistent keepalive interval in seconds (`None` or 0 = off). Turning it on
    /// sends a keepalive (or starts a handshake) at the next timer tick, like the kernel.
    pub fn set_persistent_keepalive(&mut self, interval: Option<u16>, now: Instant) {
        self.timers.set_persistent_keepalive(interval, now);
    }

    /// The persistent keepalive interval in seconds.
    pub fn persistent_keepalive(&self) -> Option<u16> {
        self.timers
            .persistent_interval
            .and_then(|d| u16::try_from(d.as_secs()).ok())
    }

    /// Whether a session is ready to encrypt (it may still be rejected for age at send time).
    pub fn is_established(&self) -> bool {
        self.current.is_some()
    }

    /// Whether `index` is one of this tunnel's live session or handshake indices.
    pub fn owns_index(&self, index: u32) -> bool {
        self.index_in_use(index)
    }

    /// The last authenticated source address of the peer.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// How long ago the last handshake completed.
    pub fn time_since_last_handshake(&self, now: Instant) -> Option<Duration> {
        self.timers
            .last_handshake
            .map(|t| now.saturating_duration_since(t))
    }

    /// Counters and last handshake time.
    pub fn stats(&self) -> TunnelStats {
        let mut s = self.stats.clone();
        s.last_handshake = self.timers.last_handshake.map(|t| self.wall_clock(t));
        s.queued = self.queue.len();
        s.established = self.current.is_some();
        s
    }

    /// Packets waiting for a session.
    pub fn queued_packets(&self) -> usize {
        self.queue.len()
    }

    // ---------------------------------------------------------------- sending

    /// Encrypts an IP packet for the peer into `dst`, which needs room for
    /// `packet.len()` rounded up to 16, plus 32 bytes (and at least 148 bytes so a handshake
    /// initiation fits). See the module docs for what happens without a session.
    pub fn encapsulate<'a>(
        &mut self,
        packet: &[u8],
        dst: &'a mut [u8],
        now: Instant,
    ) -> TunnResult<'a> {
        if let Some(s) = self.current.as_mut().filter(|s| s.can_send(now)) {
            return match s.encrypt(packet, dst) {
                Ok(n) => {
                    self.after_send(n, !packet.is_empty(), now);
                    TunnResult::WriteToNetwork(&mut dst[..n])
                }
                Err(e) => TunnResult::Err(e),
            };
        }
        if !packet.is_empty() {
            self.enqueue(packet);
        }
        self.want_handshake(now);
        if self.can_initiate(now) {
            self.send_initiation(dst, now)
        } else {
            TunnResult::Done
        }
    }

    /// Encrypts the next queued packet if a session is ready; `Done` otherwise.
    pub fn next_queued<'a>(&mut self, dst: &'a mut [u8], now: Instant) -> TunnResult<'a> {
        if self.queue.is_empty() {
            return TunnResult::Done;
        }
        let Some(s) = self.current.as_mut().filter(|s| s.can_send(now)) else {
            return TunnResult::Done;
        };
        let Some(packet) = self.queue.pop_front() else {
            return TunnResult::Done;
        };
        match s.encrypt(&packet, dst) {
            Ok(n) => {
                self.after_send(n, !packet.is_empty(), now);
                TunnResult::WriteToNetwork(&mut dst[..n])
            }
            Err(e) => {
                self.queue.push_front(packet);
                TunnResult::Err(e)
            }
        }
    }

    /// Starts a handshake now unless one was sent less than REKEY_TIMEOUT ago.
    pub fn force_handshake<'a>(&mut self, dst: &'a mut [u8], now: Instant) -> TunnResult<'a> {
        self.want_handshake(now);
        if self.can_initiate(now) {
            self.send_initiation(dst, now)
        } else {
            TunnResult::Done
        }
    }

    fn enqueue(&mut self, packet: &[u8]) {
        if self.queue.len() >= MAX_QUEUED_PACKETS {
            self.queue.pop_front();
            self.stats.queue_drops += 1;
        }
        self.queue.push_back(packet.to_vec());
    }

    /// Bookkeeping after sending a data message (or keepalive) of `n` bytes.
    fn after_send(&mut self, n: usize, is_data: bool, now: Instant) {
        self.count_tx(n);
        self.timers.any_authenticated_packet_sent();
        self.timers.any_authenticated_packet_traversal(now);
        if is_data {
            self.timers.data_sent(now);
        }
        // Keep the key fresh (sender side): rekey after REKEY_AFTER_MESSAGES, or after
        // REKEY_AFTER_TIME if we were the initiator of the current session.
        let stale = self.current.as_ref().is_some_and(|s| {
            s.send_counter() > REKEY_AFTER_MESSAGES
                || (s.initiator && now.saturating_duration_since(s.created) >= REKEY_AFTER_TIME)
        });
        if stale {
            self.want_handshake(now);
        }
    }

    pub(super) fn count_tx(&mut self, n: usize) {
        self.stats.tx_bytes += n as u64;
        self.stats.tx_packets += 1;
    }

    fn count_rx(&mut self, n: usize, src: Option<SocketAddr>) {
        self.stats.rx_bytes += n as u64;
        self.stats.rx_packets += 1;
        if src.is_some() {
            self.endpoint = src;
        }
    }

    /// Sends a keepalive on the current session, or starts a handshake without one.
    pub(super) fn send_keepalive<'a>(&mut self, dst: &'a mut [u8], now: Instant) -> TunnResult<'a> {
        if let Some(s) = self.current.as_mut().filter(|s| s.can_send(now)) {
            return match s.encrypt(&[], dst) {
                Ok(n) => {
                    self.after_send(n, false, now);
                    TunnResult::WriteToNetwork(&mut dst[..n])
                }
                Err(e) => TunnResult::Err(e),
            };
        }
        self.force_handshake(dst, now)
    }

    /// Records that a handshake should happen (a fresh attempt series, like the kernel
    /// resetting its attempt counter).
    pub(super) fn want_handshake(&mut self, now: Instant) {
        self.timers.handshake_wanted = true;
        self.timers.attempt_started = Some(now);
    }

    /// Whether an initiation may be sent now: at most one per REKEY_TIMEOUT, and not while a
    /// fresh responder session waits for the peer's confirming first packet.
    pub(super) fn can_initiate(&self, now: Instant) -> bool {
        let rate_ok = self
            .timers
            .last_sent_handshake
            .is_none_or(|t| now.saturating_duration_since(t) >= REKEY_TIMEOUT);
        let awaiting_confirmation = self
            .next
            .as_ref()
            .is_some_and(|s| now.saturating_duration_since(s.created) < REKEY_TIMEOUT);
        rate_ok && !awaiting_confirmation
    }

    /// Writes a new handshake initiation into `dst` (replacing any in flight).
    pub(super) fn send_initiation<'a>(
        &mut self,
        dst: &'a mut [u8],
        now: Instant,
    ) -> TunnResult<'a> {
        let Some(out) = dst
            .get_mut(..HANDSHAKE_INIT_LEN)
            .and_then(|d| <&mut [u8; HANDSHAKE_INIT_LEN]>::try_from(d).ok())
        else {
            return TunnResult::Err(WgError::DestinationBufferTooSmall);
        };
        let index = self.alloc_index();
        let timestamp = self.next_timestamp(now);
        let ephemeral = StaticSecret::random_from_rng(OsRng);
        match create_initiation(&self.local, &self.peer, index, ephemeral, &timestamp, out) {
            Ok(state) => {
                self.cookie.stamp(&self.peer.mac1_key, out, now);
                self.pending = Some(state);
                self.timers.handshake_initiated(now);
                self.timers.any_authenticated_packet_sent();
                self.timers.any_authenticated_packet_traversal(now);
                self.count_tx(HANDSHAKE_INIT_LEN);
                TunnResult::WriteToNetwork(out)
            }
            Err(e) => TunnResult::Err(e),
        }
    }

    // ---------------------------------------------------------------- receiving

    /// Handles a datagram from the peer (any of the four message types) and writes the
    /// result into `dst` (which must hold the datagram's length, and at least 148 bytes).
    /// An empty `datagram` means [`Tunnel::next_queued`].
    pub fn decapsulate<'a>(
        &mut self,
        src: Option<SocketAddr>,
        datagram: &[u8],
        dst: &'a mut [u8],
        now: Instant,
    ) -> TunnResult<'a> {
        if datagram.is_empty() {
            return self.next_queued(dst, now);
        }
        match parse_packet(datagram) {
            Ok(p) => self.decapsulate_packet(src, p, dst, now),
            Err(e) => TunnResult::Err(e.into()),
        }
    }

    /// [`Tunnel::decapsulate`] for a datagram the caller already parsed.
    pub fn decapsulate_packet<'a>(
        &mut self,
        src: Option<SocketAddr>,
        packet: Packet<'_>,
        dst: &'a mut [u8],
        now: Instant,
    ) -> TunnResult<'a> {
        let r = match packet {
            Packet::HandshakeInit(m) => self.handle_initiation(src, &m, dst, now),
            Packet::HandshakeResponse(m) => self.handle_response(src, &m, dst, now),
            Packet::CookieReply(m) => self.handle_cookie_reply(&m, now),
            Packet::Data(m) => self.handle_data(src, &m, dst, now),
        };
        if let TunnResult::Err(e) = &r {
            log::trace!(
                "peer {}: dropped {:?}: {e}",
                self.peer.public.short(),
                packet.message_type()
            );
        }
        r
    }

    fn handle_initiation<'a>(
        &mut self,
        src: Option<SocketAddr>,
        msg: &HandshakeInit<'_>,
        dst: &'a mut [u8],
        now: Instant,
    ) -> TunnResult<'a> {
        if !verify_mac1(&self.local_mac1_key, msg.raw) {
            return WgError::InvalidMac1.into();
        }
        let Some(out) = dst
            .get_mut(..HANDSHAKE_RESPONSE_LEN)
            .and_then(|d| <&mut [u8; HANDSHAKE_RESPONSE_LEN]>::try_from(d).ok())
        else {
            return WgError::DestinationBufferTooSmall.into();
        };
        let consumed = match decrypt_initiator_static(&self.local, msg)
            .and_then(|half| finish_initiation(half, &self.peer, msg))
        {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        if self
            .last_peer_timestamp
            .is_some_and(|t| consumed.timestamp <= t)
        {
            return WgError::ReplayedInitiation.into();
        }
        if self
            .last_initiation_consumed
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INITIATION_INTERVAL)
        {
            return WgError::InitiationFlood.into();
        }
        let index = self.alloc_index();
        let ephemeral = StaticSecret::random_from_rng(OsRng);
        let keys = match create_response(&consumed, &self.peer, index, ephemeral, &self.psk, out) {
            Ok(k) => k,
            Err(e) => return e.into(),
        };
        self.cookie.stamp(&self.peer.mac1_key, out, now);
        self.last_peer_timestamp = Some(consumed.timestamp);
        self.last_initiation_consumed = Some(now);
        // As responder the new session waits in `next` until the peer uses it. Unlike the
        // kernel we keep `previous`: after simultaneous initiations it may be the session the
        // peer is still sending on.
        self.next = Some(Box::new(Session::new(index, &keys, false, now)));
        self.timers.session_derived(now);
        self.timers.any_authenticated_packet_received();
        self.timers.any_authenticated_packet_traversal(now);
        self.timers.any_authenticated_packet_sent();
        self.count_rx(msg.raw.len(), src);
        self.count_tx(HANDSHAKE_RESPONSE_LEN);
        TunnResult::WriteToNetwork(out)
    }

    fn handle_response<'a>(
        &mut self,
        src: Option<SocketAddr>,
        msg: &HandshakeResponse<'_>,
        dst: &'a mut [u8],
        now: Instant,
    ) -> TunnResult<'a> {
        if !verify_mac1(&self.local_mac1_key, msg.raw) {
            return WgError::InvalidMac1.into();
        }
        let Some(state) = self.pending.as_ref() else {
            return WgError::UnexpectedPacket.into();
        };
        let keys = match consume_response(state, &self.local, msg, &self.psk) {
            Ok(k) => k,
            Err(e) => return e.into(),
        };
        let session = Box::new(Session::new(state.local_index, &keys, true, now));
        self.pending = None;
        // The initiator may use the new session at once.
        if let Some(next) = self.next.take() {
            // An unconfirmed responder session becomes `previous` (the peer may send on it);
            // the old current goes.
            self.previous = Some(next);
        } else {
            self.previous = self.current.take();
        }
        self.current = Some(session);
        self.timers.session_derived(now);
        self.timers.handshake_complete(now);
        self.timers.any_authenticated_packet_received();
        self.timers.any_authenticated_packet_traversal(now);
        self.stats.handshakes += 1;
        self.count_rx(msg.raw.len(), src);
        // Confirm the session at once: with the first queued packet, or a keepalive.
        if !self.queue.is_empty() {
            if let r @ TunnResult::WriteToNetwork(_) = self.next_queued(dst, now) {
                return r;
            }
            return TunnResult::Done;
        }
        self.send_keepalive(dst, now)
    }

    fn handle_cookie_reply<'a>(&mut self, msg: &CookieReply<'_>, now: Instant) -> TunnResult<'a> {
        if !self.index_in_use(msg.receiver_index) {
            return WgError::UnexpectedPacket.into();
        }
        match self.cookie.consume_reply(&self.peer.cookie_key, msg, now) {
            Ok(()) => TunnResult::Done,
            Err(e) => e.into(),
        }
    }

    fn handle_data<'a>(
        &mut self,
        src: Option<SocketAddr>,
        msg: &DataPacket<'_>,
        dst: &'a mut [u8],
        now: Instant,
    ) -> TunnResult<'a> {
        let idx = msg.receiver_index;
        let slot = if self.current.as_ref().is_some_and(|s| s.local_index == idx) {
            Slot::Current
        } else if self.next.as_ref().is_some_and(|s| s.local_index == idx) {
            Slot::Next
        } else if self.previous.as_ref().is_some_and(|s| s.local_index == idx) {
            Slot::Previous
        } else {
            return WgError::NoSession.into();
        };
        let session = match slot {
            Slot::Current => self.current.as_mut(),
            Slot::Previous => self.previous.as_mut(),
            Slot::Next => self.next.as_mut(),
        };
        let Some(session) = session else {
            return WgError::NoSession.into();
        };
        if session.expired(now) {
            return WgError::SessionExpired.into();
        }
        let len = match session.decrypt(msg, dst) {
            Ok(p) => p.len(),
            Err(e) => return e.into(),
        };
        if slot == Slot::Next {
            // The peer confirmed the handshake it initiated: start sending on it.
            self.previous = self.current.take();
            self.current = self.next.take();
            self.timers.handshake_complete(now);
            self.stats.handshakes += 1;
        }
        // Keep the key fresh (receiver side): as initiator, rekey shortly before
        // REJECT_AFTER_TIME if we only receive.
        if !self.timers.sent_lastminute_handshake
            && self.current.as_ref().is_some_and(|s| {
                s.initiator
                    && now.saturating_duration_since(s.created)
                        >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
            })
        {
            self.timers.sent_lastminute_handshake = true;
            self.want_handshake(now);
        }
        self.timers.any_authenticated_packet_received();
        self.timers.any_authenticated_packet_traversal(now);
        self.count_rx(msg.encrypted.len() + super::messages::DATA_HEADER_LEN, src);
        if len == 0 {
            return TunnResult::Done; // keepalive
        }
        self.timers.data_received(now);
        let Some(plain) = dst.get_mut(..len) else {
            return WgError::DestinationBufferTooSmall.into();
        };
        inner_packet(plain)
    }

    // ---------------------------------------------------------------- helpers

    fn index_in_use(&self, index: u32) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.local_index == index)
            || [&self.current, &self.previous, &self.next]
                .into_iter()
                .flatten()
                .any(|s| s.local_index == index)
    }

    /// The next free session index: our 24-bit base and a rotating 8-bit counter.
    fn alloc_index(&mut self) -> u32 {
        for _ in 0..=u8::MAX {
            self.index_counter = self.index_counter.wrapping_add(1);
            let index = self.index_base | u32::from(self.index_counter);
            if !self.index_in_use(index) {
                return index;
            }
        }
        // At most four indices are ever in use, so the loop always returns.
        self.index_base | u32::from(self.index_counter)
    }

    /// Wall-clock time at `t`, derived from the `Instant` the tunnel was created with, so
    /// timestamps follow the caller's clock and never go backwards with the system clock.
    fn wall_clock(&self, t: Instant) -> SystemTime {
        let (base_instant, base_wall) = self.clock_base;
        match t.checked_duration_since(base_instant) {
            Some(d) => base_wall + d,
            None => base_wall - base_instant.saturating_duration_since(t),
        }
    }

    /// A TAI64N timestamp for a new initiation: the wall clock with its nanoseconds rounded
    /// down to 2^24 ns (as the kernel does, to leak less about our clock), but always greater
    /// than the last one we sent.
    pub(super) fn next_timestamp(&mut self, now: Instant) -> [u8; 12] {
        let since_epoch = self
            .wall_clock(now)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut ts = tai64n(
            since_epoch.as_secs(),
            since_epoch.subsec_nanos() & !0x00ff_ffff,
        );
        if ts <= self.last_sent_timestamp {
            ts = timestamp_plus_one(&self.last_sent_timestamp);
        }
        self.last_sent_timestamp = ts;
        ts
    }

    /// Drops every session, the handshake in flight and queued packets (key zeroing).
    pub(super) fn clear_all(&mut self) {
        self.current = None;
        self.previous = None;
        self.next = None;
        self.pending = None;
        self.stats.queue_drops += self.queue.len() as u64;
        self.queue.clear();
    }

    /// Drops sessions older than REJECT_AFTER_TIME.
    pub(super) fn expire_sessions(&mut self, now: Instant) {
        for slot in [&mut self.current, &mut self.previous, &mut self.next] {
            if slot.as_ref().is_some_and(|s| s.expired(now)) {
                *slot = None;
            }
        }
    }

    /// Drops the queue (handshake gave up).
    pub(super) fn drop_queue(&mut self) {
        self.stats.queue_drops += self.queue.len() as u64;
        self.queue.clear();
    }
}

/// One more nanosecond than a TAI64N timestamp.
fn timestamp_plus_one(ts: &[u8; 12]) -> [u8; 12] {
    let mut secs = [0u8; 8];
    let mut nanos = [0u8; 4];
    secs.copy_from_slice(&ts[..8]);
    nanos.copy_from_slice(&ts[8..]);
    let (mut s, mut n) = (u64::from_be_bytes(secs), u32::from_be_bytes(nanos) + 1);
    if n >= 1_000_000_000 {
        n = 0;
        s = s.wrapping_add(1);
    }
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&s.to_be_bytes());
    out[8..].copy_from_slice(&n.to_be_bytes());
    out
}

fn random_u8() -> u8 {
    use rand_core::RngCore;
    (OsRng.next_u32() & 0xff) as u8
}

/// Trims a decrypted (padded) plaintext to the IP packet it holds and reports its source.
fn inner_packet(plain: &mut [u8]) -> TunnResult<'_> {
    let version = plain.first().map(|b| b >> 4);
    match version {
        Some(4) if plain.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([plain[2], plain[3]]));
            if !(20..=plain.len()).contains(&total) {
                return WgError::InvalidInnerPacket.into();
            }
            let src = Ipv4Addr::new(plain[12], plain[13], plain[14], plain[15]);
            TunnResult::WriteToTunnelV4(&mut plain[..total], src)
        }
        Some(6) if plain.len() >= 40 => {
            let total = 40 + usize::from(u16::from_be_bytes([plain[4], plain[5]]));
            if total > plain.len() {
                return WgError::InvalidInnerPacket.into();
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&plain[8..24]);
            TunnResult::WriteToTunnelV6(&mut plain[..total], Ipv6Addr::from(a))
        }
        _ => WgError::InvalidInnerPacket.into(),
    }
}
