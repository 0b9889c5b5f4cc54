//! The pure state of a peer relay: which pair of nodes owns which session port
//! ([`Allocations`]), and within one session who is bound at which address ([`Session`]).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::traversal::disco::{Cookie, COOKIE_LEN};
use crate::wg::crypto::hash;

/// A node's public key.
pub type NodeKey = [u8; 32];

/// Why an allocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// A node asked for a session with itself.
    #[error("a session needs two different nodes")]
    SameNode,
    /// Every session port is in use.
    #[error("every session port is in use")]
    Full,
}

/// Session ports by pair of nodes. A pair has at most one session, whichever side asks
/// first, so both sides asking at once end up in the same session.
#[derive(Debug)]
pub struct Allocations {
    base: u16,
    max: u16,
    by_pair: HashMap<(NodeKey, NodeKey), u16>,
    by_port: HashMap<u16, (NodeKey, NodeKey)>,
}

fn pair(a: NodeKey, b: NodeKey) -> (NodeKey, NodeKey) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl Allocations {
    /// Session ports `base + 1 ..= base + max` (capped at 65535).
    pub fn new(base: u16, max: u16) -> Allocations {
        Allocations {
            base,
            max,
            by_pair: HashMap::new(),
            by_port: HashMap::new(),
        }
    }

    /// The session port of the pair, and whether it is new. `usable` says whether a free
    /// port can be bound (a port taken by another program is skipped).
    pub fn allocate(
        &mut self,
        a: NodeKey,
        b: NodeKey,
        mut usable: impl FnMut(u16) -> bool,
    ) -> Result<(u16, bool), AllocError> {
        if a == b {
            return Err(AllocError::SameNode);
        }
        let key = pair(a, b);
        if let Some(port) = self.by_pair.get(&key) {
            return Ok((*port, false));
        }
        let free = (1..=self.max)
            .filter_map(|i| self.base.checked_add(i))
            .find(|p| !self.by_port.contains_key(p) && usable(*p))
            .ok_or(AllocError::Full)?;
        self.by_pair.insert(key, free);
        self.by_port.insert(free, key);
        Ok((free, true))
    }

    /// The two nodes of the session at `port`.
    pub fn members(&self, port: u16) -> Option<(NodeKey, NodeKey)> {
        self.by_port.get(&port).copied()
    }

    /// Ends the session at `port`.
    pub fn release(&mut self, port: u16) {
        if let Some(key) = self.by_port.remove(&port) {
            self.by_pair.remove(&key);
        }
    }

    /// Sessions in use.
    pub fn len(&self) -> usize {
        self.by_port.len()
    }

    /// Whether no session is in use.
    pub fn is_empty(&self) -> bool {
        self.by_port.is_empty()
    }
}

/// How long a cookie is good for: it names the minute it was made in, and the current and
/// the previous minute are accepted, so a captured bind replays for two minutes at most.
pub const COOKIE_EPOCH_SECS: u64 = 60;

/// What a bind message leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    /// Answer with this cookie (the bind came without one, with an expired one, or with one
    /// for another address).
    Challenge(Cookie),
    /// The sender is now bound at the address.
    Bound,
    /// The sender is not one of the session's two nodes.
    NotMember,
}

/// One session: its two nodes and the addresses they are bound at.
#[derive(Debug, Clone)]
pub struct Session {
    port: u16,
    members: [NodeKey; 2],
    bound: [Option<SocketAddr>; 2],
    secret: [u8; 32],
}

impl Session {
    /// A session at `port` between `members`, with a random `secret` for its cookies.
    pub fn new(port: u16, members: (NodeKey, NodeKey), secret: [u8; 32]) -> Session {
        Session {
            port,
            members: [members.0, members.1],
            bound: [None, None],
            secret,
        }
    }

    /// Where a datagram from `src` goes: the other node's address when `src` is a bound
    /// node and the other one is bound too. `Err(true)` when `src` is bound but the other
    /// node is not yet, `Err(false)` when `src` is not bound.
    pub fn forward(&self, src: SocketAddr) -> Result<SocketAddr, bool> {
        let side = self
            .bound
            .iter()
            .position(|b| *b == Some(src))
            .ok_or(false)?;
        self.bound[1 - side].ok_or(true)
    }

    /// The cookie proving that `key` binds from `addr`, made in cookie epoch `epoch`
    /// (Unix time / [`COOKIE_EPOCH_SECS`]).
    pub fn cookie(&self, key: &NodeKey, addr: SocketAddr, epoch: u64) -> Cookie {
        let addr = addr.to_string();
        let h = hash(&[
            b"tailgate peer relay bind",
            &self.secret,
            &epoch.to_be_bytes(),
            &self.port.to_be_bytes(),
            key,
            addr.as_bytes(),
        ]);
        let mut c = [0u8; COOKIE_LEN];
        c.copy_from_slice(&h[..COOKIE_LEN]);
        c
    }

    /// Whether `key` is one of the session's two nodes.
    pub fn is_member(&self, key: &NodeKey) -> bool {
        self.members.contains(key)
    }

    /// A bind from node `key` at `addr` in cookie epoch `epoch`: a challenge unless the
    /// cookie proves the address (made this epoch or the one before). A node binding again
    /// (its NAT mapping changed) replaces its old address.
    pub fn bind(
        &mut self,
        key: &NodeKey,
        addr: SocketAddr,
        cookie: Option<Cookie>,
        epoch: u64,
    ) -> BindOutcome {
        let Some(side) = self.members.iter().position(|m| m == key) else {
            return BindOutcome::NotMember;
        };
        let fresh = self.cookie(key, addr, epoch);
        // A mismatch only yields a challenge, so a timing difference tells nothing useful.
        let valid = cookie
            .is_some_and(|c| c == fresh || (epoch > 0 && c == self.cookie(key, addr, epoch - 1)));
        if !valid {
            return BindOutcome::Challenge(fresh);
        }
        self.bound[side] = Some(addr);
        BindOutcome::Bound
    }

    /// Whether both nodes are bound.
    pub fn is_complete(&self) -> bool {
        self.bound.iter().all(Option::is_some)
    }

    /// The two nodes' bound addresses.
    pub fn bound(&self) -> [Option<SocketAddr>; 2] {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_session_per_pair_whoever_asks() {
        let mut a = Allocations::new(41642, 2);
        assert_eq!(a.allocate([1; 32], [2; 32], |_| true), Ok((41643, true)));
        assert_eq!(a.allocate([2; 32], [1; 32], |_| true), Ok((41643, false)));
        assert_eq!(
            a.allocate([1; 32], [1; 32], |_| true),
            Err(AllocError::SameNode)
        );
        // A port another program holds is skipped; when all are taken the relay is full.
        assert_eq!(
            a.allocate([1; 32], [3; 32], |p| p != 41644),
            Err(AllocError::Full)
        );
        assert_eq!(a.allocate([1; 32], [3; 32], |_| true), Ok((41644, true)));
        assert_eq!(a.members(41644), Some(([1; 32], [3; 32])));
        assert_eq!(a.len(), 2);
        a.release(41643);
        assert_eq!(a.allocate([4; 32], [3; 32], |_| true), Ok((41643, true)));
        // Ports never wrap past 65535.
        let mut top = Allocations::new(65534, 5);
        assert_eq!(top.allocate([1; 32], [2; 32], |_| true), Ok((65535, true)));
        assert_eq!(
            top.allocate([1; 32], [3; 32], |_| true),
            Err(AllocError::Full)
        );
    }

    #[test]
    fn binding_needs_a_fresh_cookie_of_the_same_address_and_key() {
        let (ka, kb, kc) = ([1; 32], [2; 32], [3; 32]);
        let mut s = Session::new(41643, (ka, kb), [9; 32]);
        let (a1, a2, b1) = (
            addr("192.0.2.1:1000"),
            addr("192.0.2.1:1001"),
            addr("[2001:db8::2]:7"),
        );
        let e = 29_000_000;
        let challenged = |o: BindOutcome| matches!(o, BindOutcome::Challenge(_));
        assert!(!s.is_member(&kc));
        assert_eq!(s.bind(&kc, a1, None, e), BindOutcome::NotMember);
        let BindOutcome::Challenge(c) = s.bind(&ka, a1, None, e) else {
            panic!("want a challenge")
        };
        // The cookie is for that address and key only, and for this epoch and the next.
        assert!(challenged(s.bind(&ka, a2, Some(c), e)));
        assert!(challenged(s.bind(&kb, a1, Some(c), e)));
        assert!(
            challenged(s.bind(&ka, a1, Some(c), e + 2)),
            "a replay after two epochs"
        );
        assert_eq!(s.forward(a1), Err(false));
        assert!(!s.is_complete());
        assert_eq!(s.bind(&ka, a1, Some(c), e + 1), BindOutcome::Bound);
        assert_eq!(s.forward(a1), Err(true), "b is not bound yet");
        let cb = s.cookie(&kb, b1, e);
        assert_eq!(s.bind(&kb, b1, Some(cb), e), BindOutcome::Bound);
        assert!(s.is_complete());
        assert_eq!(s.forward(a1), Ok(b1));
        assert_eq!(s.forward(b1), Ok(a1));
        assert_eq!(s.forward(a2), Err(false), "strangers are not forwarded");
        // a's NAT mapping changes: it binds again and replaces its old address.
        let c2 = s.cookie(&ka, a2, e);
        assert_eq!(s.bind(&ka, a2, Some(c2), e), BindOutcome::Bound);
        assert_eq!(s.forward(b1), Ok(a2));
        assert_eq!(s.forward(a1), Err(false));
        // Another relay (another secret) makes other cookies.
        let other = Session::new(41643, (ka, kb), [8; 32]);
        assert_ne!(other.cookie(&ka, a1, e), s.cookie(&ka, a1, e));
    }
}
