//! Resolver counters, shown by `tailgate dns status` and exported as metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Live counters; every field only grows.
#[derive(Debug, Default)]
pub struct DnsStats {
    queries: AtomicU64,
    tcp_queries: AtomicU64,
    answered_local: AtomicU64,
    forwarded: AtomicU64,
    nxdomain: AtomicU64,
    formerr: AtomicU64,
    servfail: AtomicU64,
    notimp: AtomicU64,
    refused: AtomicU64,
    upstream_failures: AtomicU64,
    upstream_tcp_retries: AtomicU64,
    truncated: AtomicU64,
    dropped: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatsSnapshot {
    /// Messages received (UDP datagrams and TCP messages), malformed ones included.
    pub queries: u64,
    /// Of those, received over TCP.
    pub tcp_queries: u64,
    /// Queries answered from the view (MagicDNS names, PTR, 4via6, NXDOMAIN in the zones).
    pub answered_local: u64,
    /// Queries answered with an upstream's response.
    pub forwarded: u64,
    /// Responses with NXDOMAIN (local or from upstream).
    pub nxdomain: u64,
    /// FORMERR responses (unparseable messages with a readable header, or not exactly one
    /// question).
    pub formerr: u64,
    /// SERVFAIL responses (no upstream for the name, or every upstream failed).
    pub servfail: u64,
    /// NOTIMP responses (unsupported opcode or query type).
    pub notimp: u64,
    /// REFUSED responses.
    pub refused: u64,
    /// Upstream exchanges that failed (timeout, network error, bad response).
    pub upstream_failures: u64,
    /// Upstream UDP answers that were truncated and retried over TCP.
    pub upstream_tcp_retries: u64,
    /// UDP responses sent with TC set because they exceeded the client's size limit.
    pub truncated: u64,
    /// Messages dropped without an answer (shorter than a header, responses, overload).
    pub dropped: u64,
}

impl DnsStats {
    /// A fresh set of counters.
    pub fn new() -> DnsStats {
        DnsStats::default()
    }

    /// The current values.
    pub fn snapshot(&self) -> DnsStatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsStatsSnapshot {
            queries: g(&self.queries),
            tcp_queries: g(&self.tcp_queries),
            answered_local: g(&self.answered_local),
            forwarded: g(&self.forwarded),
            nxdomain: g(&self.nxdomain),
            formerr: g(&self.formerr),
            servfail: g(&self.servfail),
            notimp: g(&self.notimp),
            refused: g(&self.refused),
            upstream_failures: g(&self.upstream_failures),
            upstream_tcp_retries: g(&self.upstream_tcp_retries),
            truncated: g(&self.truncated),
            dropped: g(&self.dropped),
        }
    }

    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A message arrived (over TCP when `tcp`).
    pub fn query(&self, tcp: bool) {
        Self::inc(&self.queries);
        if tcp {
            Self::inc(&self.tcp_queries);
        }
    }

    /// A query was answered locally.
    pub fn answered_local(&self) {
        Self::inc(&self.answered_local);
    }

    /// A query was answered with an upstream's response.
    pub fn forwarded(&self) {
        Self::inc(&self.forwarded);
    }

    /// Counts a response code sent to a client.
    pub fn rcode(&self, rcode: hickory_proto::op::ResponseCode) {
        use hickory_proto::op::ResponseCode as R;
        match rcode {
            R::NXDomain => Self::inc(&self.nxdomain),
            R::FormErr => Self::inc(&self.formerr),
            R::ServFail => Self::inc(&self.servfail),
            R::NotImp => Self::inc(&self.notimp),
            R::Refused => Self::inc(&self.refused),
            _ => {}
        }
    }

    /// An upstream exchange failed.
    pub fn upstream_failure(&self) {
        Self::inc(&self.upstream_failures);
    }

    /// An upstream's truncated UDP answer was retried over TCP.
    pub fn upstream_tcp_retry(&self) {
        Self::inc(&self.upstream_tcp_retries);
    }

    /// A UDP response went out truncated.
    pub fn truncated(&self) {
        Self::inc(&self.truncated);
    }

    /// A message was dropped without an answer.
    pub fn dropped(&self) {
        Self::inc(&self.dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::ResponseCode;

    #[test]
    fn counters_add_up() {
        let s = DnsStats::new();
        s.query(false);
        s.query(true);
        s.answered_local();
        s.forwarded();
        for r in [
            ResponseCode::NXDomain,
            ResponseCode::FormErr,
            ResponseCode::ServFail,
            ResponseCode::NotImp,
            ResponseCode::Refused,
            ResponseCode::NoError,
        ] {
            s.rcode(r);
        }
        s.upstream_failure();
        s.upstream_tcp_retry();
        s.truncated();
        s.dropped();
        let snap = s.snapshot();
        assert_eq!(
            snap,
            DnsStatsSnapshot {
                queries: 2,
                tcp_queries: 1,
                answered_local: 1,
                forwarded: 1,
                nxdomain: 1,
                formerr: 1,
                servfail: 1,
                notimp: 1,
                refused: 1,
                upstream_failures: 1,
                upstream_tcp_retries: 1,
                truncated: 1,
                dropped: 1,
            }
        );
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains("\"answered_local\":1"));
    }
}
