//! NAT: SNAT / de-SNAT with a connection table, and 4via6 translation.
//!
//! Everything here is I/O-free: pure functions over packet buffers plus the connection
//! table, with time passed in. The XDP programs implement the same semantics; the same test
//! vectors run through both.
//!
//! * [`via6`] — the 4via6 address mapping, `tailgate debug via` output, MagicDNS labels;
//! * [`checksum`] — Internet checksum, RFC 1624 incremental updates, pseudo-headers;
//! * [`translate`] — header rewriting: SNAT, de-SNAT, IPv6 ↔ IPv4, ICMP errors;
//! * [`conntrack`] — the SNAT connection table: port allocation, expiry, LRU eviction;
//! * [`engine`] — both combined per direction: what the userspace forwarding path calls.

pub mod checksum;
pub mod conntrack;
pub mod engine;
pub mod translate;
pub mod via6;
