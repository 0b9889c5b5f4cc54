//! `tailgate dns query NAME [TYPE]`: a query built here, answered by the daemon's resolver
//! in-process (exactly as a client on 100.100.100.100 would be answered), and the answer
//! rendered as text.

use std::net::SocketAddr;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use hickory_server::net::xfer::Protocol;
use serde::{Deserialize, Serialize};

use super::MagicDns;

/// The answer to one query, as `tailgate dns query` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryAnswer {
    /// The response code as dig prints it (`NOERROR`, `NXDOMAIN`, …).
    pub rcode: String,
    /// Answer records, one per line in zone-file form.
    pub answers: Vec<String>,
    /// Authority records (the SOA of a negative answer).
    pub authority: Vec<String>,
}

/// Builds the wire form of a recursive query for `name` (made absolute) and `rtype` (`A`,
/// `AAAA`, `PTR`, …; an IP address as `name` with type `PTR` is turned into its reverse name).
pub fn build(name: &str, rtype: &str) -> Result<Vec<u8>, String> {
    let rtype: RecordType = rtype
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("unknown record type {rtype:?}"))?;
    let qname = match (rtype, name.parse::<std::net::IpAddr>()) {
        (RecordType::PTR, Ok(ip)) => Name::from(ip),
        _ => {
            let absolute = if name.ends_with('.') {
                name.to_string()
            } else {
                format!("{name}.")
            };
            Name::from_ascii(&absolute).map_err(|e| format!("bad name {name:?}: {e}"))?
        }
    };
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname, rtype));
    m.to_vec().map_err(|e| format!("encoding the query: {e}"))
}

/// Asks `resolver` in-process and renders the answer.
pub async fn ask(resolver: &MagicDns, name: &str, rtype: &str) -> Result<QueryAnswer, String> {
    let raw = build(name, rtype)?;
    let src = SocketAddr::from(([127, 0, 0, 1], 0));
    let reply = resolver
        .answer(&raw, src, Protocol::Tcp)
        .await
        .ok_or("the resolver dropped the query")?;
    let m = Message::from_vec(&reply).map_err(|e| format!("decoding the answer: {e}"))?;
    Ok(QueryAnswer {
        // As dig spells them: NoError → NOERROR, NXDomain → NXDOMAIN, ServFail → SERVFAIL.
        rcode: format!("{:?}", m.metadata.response_code).to_ascii_uppercase(),
        answers: m.answers.iter().map(ToString::to_string).collect(),
        authority: m.authorities.iter().map(ToString::to_string).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_well_formed() {
        let q = Message::from_vec(&build("peer.tailnet.internal", "aaaa").unwrap()).unwrap();
        assert_eq!(q.queries[0].name().to_ascii(), "peer.tailnet.internal.");
        assert_eq!(q.queries[0].query_type(), RecordType::AAAA);
        let ptr = Message::from_vec(&build("100.64.0.1", "PTR").unwrap()).unwrap();
        assert_eq!(ptr.queries[0].name().to_ascii(), "1.0.64.100.in-addr.arpa.");
        assert!(build("x", "NOPE")
            .unwrap_err()
            .contains("unknown record type"));
        assert!(build("a..b", "A").is_err());
    }
}
