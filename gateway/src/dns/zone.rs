//! Local answers: the tailnet's names, reverse names of tailnet addresses and 4via6 names,
//! computed from a [`DnsView`]. Pure (no I/O), so every rule is unit-tested.
//!
//! The resolver is authoritative for these zones:
//!
//! - the tailnet domain (`<domain>`): `<host>.<domain>` and `<a-b-c-d>-via-<site>.<domain>`;
//!   any other name in it is NXDOMAIN;
//! - `64.100.in-addr.arpa` … `127.100.in-addr.arpa` (100.64.0.0/10);
//! - `0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa` (fd7a:115c:a1e0::/48, which holds the 4via6 range).
//!
//! Besides those, single-label queries that name a host (`laptop.`) or are a valid 4via6 label
//! (`10-1-1-5-via-7.`) are answered, so are Tailscale's older bare 4via6 forms
//! (`via-7.10.1.1.5.`, `10.1.1.5.via-7.`), `.onion` names are NXDOMAIN (RFC 7686), and
//! [`SERVICE_NAME`](super::SERVICE_NAME) resolves to the resolver's own addresses. Everything
//! else is [`Resolution::Forward`].
//!
//! For a name that exists: A/AAAA/ANY answer every address of that family; PTR answers the
//! name; NS, SOA, AXFR, IXFR and HINFO are NOTIMP (as in Tailscale); any other type is
//! NOERROR with no data. Negative answers inside a zone carry the zone's SOA so resolvers can
//! cache them for [`LOCAL_TTL`] seconds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::view::DnsView;
use super::{LOCAL_TTL, SERVICE_IPV4, SERVICE_IPV6, SERVICE_NAME};
use crate::nat::via6::{parse_via_dns_label, split_via_addr, via_dns_label};

/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// The labels of fd7a:115c:a1e0::/48 under ip6.arpa, most specific first.
const V6_ZONE_NIBBLES: [&[u8]; 12] = [
    b"0", b"e", b"1", b"a", b"c", b"5", b"1", b"1", b"a", b"7", b"d", b"f",
];

/// The compiled view: lookups by name and by address.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The tailnet domain, lowercase and fully qualified.
    domain: Option<Name>,
    /// Host label (lowercase) → addresses.
    hosts: HashMap<String, Vec<IpAddr>>,
    /// Address → the name PTR answers.
    reverse: HashMap<IpAddr, Name>,
    /// SOA serial of this version of the zones.
    serial: u32,
}

/// What the resolver does with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Answered from the view.
    Local(LocalAnswer),
    /// Not a MagicDNS name: forward it (split DNS or global nameservers).
    Forward,
}

/// A local answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAnswer {
    /// NOERROR (with or without data), NXDOMAIN, NOTIMP or REFUSED.
    pub rcode: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section: the zone's SOA for negative answers inside a zone.
    pub authority: Vec<Record>,
    /// The AA flag.
    pub authoritative: bool,
}

/// Where a name falls inside the reverse zones.
enum Reverse {
    /// The zone apex.
    Apex(Name),
    /// A well-formed name above full addresses (an empty non-terminal).
    Partial(Name),
    /// A full address.
    Addr(IpAddr, Name),
    /// Not a valid address name (cannot exist).
    Invalid(Name),
}

/// A DNS label of letters, digits, `-` or `_`, 1 to 63 bytes (lowercased).
fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `0` to `255` written canonically (no leading zeros).
fn canonical_octet(label: &[u8]) -> Option<u8> {
    if label.is_empty() || label.len() > 3 || !label.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if label.len() > 1 && label[0] == b'0' {
        return None;
    }
    std::str::from_utf8(label).ok()?.parse().ok()
}

/// A single hex digit.
fn nibble(label: &[u8]) -> Option<u8> {
    match label {
        [c] => (*c as char).to_digit(16).map(|d| d as u8),
        _ => None,
    }
}

/// Classifies `labels` (lowercase, most specific first) against the reverse zones.
fn reverse_zone(name: &Name, labels: &[&[u8]]) -> Option<Reverse> {
    let n = labels.len();
    if n >= 4
        && labels[n - 1] == b"arpa"
        && labels[n - 2] == b"in-addr"
        && labels[n - 3] == b"100"
        && canonical_octet(labels[n - 4]).is_some_and(|o| (64..=127).contains(&o))
    {
        let apex = fqdn(name.trim_to(4));
        let rest = &labels[..n - 4];
        let octets: Option<Vec<u8>> = rest.iter().map(|l| canonical_octet(l)).collect();
        return Some(match octets {
            _ if rest.is_empty() => Reverse::Apex(apex),
            Some(o) if o.len() == 2 => {
                let second = canonical_octet(labels[n - 4]).unwrap_or_default();
                let ip = IpAddr::from([100, second, o[1], o[0]]);
                Reverse::Addr(ip, apex)
            }
            Some(o) if o.len() < 2 => Reverse::Partial(apex),
            _ => Reverse::Invalid(apex),
        });
    }
    if n >= 14
        && labels[n - 1] == b"arpa"
        && labels[n - 2] == b"ip6"
        && labels[n - 14..n - 2] == V6_ZONE_NIBBLES
    {
        let apex = fqdn(name.trim_to(14));
        let rest = &labels[..n - 14];
        let nibbles: Option<Vec<u8>> = rest.iter().map(|l| nibble(l)).collect();
        return Some(match nibbles {
            _ if rest.is_empty() => Reverse::Apex(apex),
            Some(low) if low.len() == 20 => {
                // fd7a:115c:a1e0 are the top 12 nibbles; `low` holds the other 20, least
                // significant first.
                let mut all = [0u8; 32];
                for (i, l) in V6_ZONE_NIBBLES.iter().rev().enumerate() {
                    all[i] = nibble(l).unwrap_or_default();
                }
                for (i, v) in low.iter().rev().enumerate() {
                    all[12 + i] = *v;
                }
                let mut bytes = [0u8; 16];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = (all[2 * i] << 4) | all[2 * i + 1];
                }
                Reverse::Addr(IpAddr::V6(Ipv6Addr::from(bytes)), apex)
            }
            Some(low) if low.len() < 20 => Reverse::Partial(apex),
            _ => Reverse::Invalid(apex),
        });
    }
    None
}

fn fqdn(mut name: Name) -> Name {
    name.set_fqdn(true);
    name
}

/// The 4via6 address a label such as `10-1-1-5-via-7` names.
fn via_label(label: &[u8]) -> Option<Ipv6Addr> {
    let s = std::str::from_utf8(label).ok()?;
    if !s.contains("-via-") {
        return None;
    }
    parse_via_dns_label(s).ok()
}

/// The 4via6 address of Tailscale's older name forms, `via-<site>.<a>.<b>.<c>.<d>` and
/// `<a>.<b>.<c>.<d>.via-<site>` (bare names only, as Tailscale answers them).
fn legacy_via_name(labels: &[&[u8]]) -> Option<Ipv6Addr> {
    let text: Vec<&str> = labels
        .iter()
        .map(|l| std::str::from_utf8(l).ok())
        .collect::<Option<_>>()?;
    if text.len() != 5 {
        return None;
    }
    let (site, v4) = match text[0].strip_prefix("via-") {
        Some(site) => (site, &text[1..]),
        None => (text[4].strip_prefix("via-")?, &text[..4]),
    };
    parse_via_dns_label(&format!("{}-via-{site}", v4.join("-"))).ok()
}

fn address_records(owner: &Name, addrs: &[IpAddr], qtype: RecordType) -> Vec<Record> {
    addrs
        .iter()
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(owner.clone(), LOCAL_TTL, rdata))
        .collect()
}

/// Types Tailscale's resolver leaves unimplemented for its names.
fn not_implemented(qtype: RecordType) -> bool {
    matches!(
        qtype,
        RecordType::NS | RecordType::SOA | RecordType::AXFR | RecordType::IXFR | RecordType::HINFO
    )
}

impl Zone {
    /// Compiles a view. Host names that are not DNS labels are skipped with a warning; when two
    /// hosts share a name the first wins (the node itself, then peers in order).
    pub fn new(view: &DnsView, serial: u32) -> Zone {
        let domain = Self::parse_domain(&view.domain);
        let domain_text = domain
            .as_ref()
            .map(|d| d.to_ascii().trim_end_matches('.').to_string());
        let mut hosts: HashMap<String, Vec<IpAddr>> = HashMap::new();
        let mut reverse = HashMap::new();
        for host in view.hosts() {
            let mut label = host.name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(d) = &domain_text {
                if let Some(short) = label.strip_suffix(&format!(".{d}")) {
                    label = short.to_string();
                }
            }
            if !valid_label(&label) {
                log::warn!("dns: host name {:?} is not a DNS label; skipped", host.name);
                continue;
            }
            if hosts.contains_key(&label) {
                log::warn!("dns: duplicate host name {label:?}; keeping the first");
                continue;
            }
            let owner = match &domain_text {
                Some(d) => format!("{label}.{d}."),
                None => format!("{label}."),
            };
            let Ok(owner) = Name::from_ascii(&owner) else {
                log::warn!("dns: name {owner:?} is too long; skipped");
                continue;
            };
            for ip in &host.addrs {
                reverse.entry(*ip).or_insert_with(|| owner.clone());
            }
            hosts.insert(label, host.addrs.clone());
        }
        Zone {
            domain,
            hosts,
            reverse,
            serial,
        }
    }

    fn parse_domain(domain: &str) -> Option<Name> {
        let d = domain.trim().trim_end_matches('.');
        if d.is_empty() {
            return None;
        }
        match Name::from_ascii(d) {
            Ok(n) if !n.is_root() => Some(fqdn(n.to_lowercase())),
            _ => {
                log::warn!("dns: tailnet domain {domain:?} is not a domain name; ignored");
                None
            }
        }
    }

    /// The tailnet domain, if any.
    pub fn domain(&self) -> Option<&Name> {
        self.domain.as_ref()
    }

    /// Number of named hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Answers `qname`/`qtype`/`qclass` from the view, or says to forward it. Answers use
    /// `qname` as sent (case preserved) as their owner name.
    pub fn resolve(&self, qname: &Name, qtype: RecordType, qclass: DNSClass) -> Resolution {
        let res = self.resolve_in(qname, qtype);
        match res {
            Resolution::Local(_) if qclass != DNSClass::IN && qclass != DNSClass::ANY => {
                Resolution::Local(LocalAnswer {
                    rcode: ResponseCode::Refused,
                    answers: vec![],
                    authority: vec![],
                    authoritative: false,
                })
            }
            other => other,
        }
    }

    fn resolve_in(&self, qname: &Name, qtype: RecordType) -> Resolution {
        let lower = fqdn(qname.to_lowercase());
        let labels: Vec<&[u8]> = lower.iter().collect();
        let Some(&last) = labels.last() else {
            return Resolution::Forward; // the root
        };
        if last == b"onion" {
            return Resolution::Local(LocalAnswer {
                rcode: ResponseCode::NXDomain,
                answers: vec![],
                authority: vec![],
                authoritative: false,
            });
        }
        if Name::from_ascii(SERVICE_NAME).is_ok_and(|s| s == lower) {
            let addrs = [IpAddr::V4(SERVICE_IPV4), IpAddr::V6(SERVICE_IPV6)];
            return Resolution::Local(self.host_answer(qname, &addrs, qtype, None));
        }
        if let Some(rev) = reverse_zone(&lower, &labels) {
            return Resolution::Local(self.reverse_answer(qname, rev, qtype));
        }
        if let Some(domain) = self.domain.as_ref().filter(|d| d.zone_of(&lower)) {
            let depth = labels.len() - usize::from(domain.num_labels());
            return Resolution::Local(match depth {
                0 => self.apex_answer(qname, domain, qtype),
                1 => match self.lookup_label(labels[0]) {
                    Some(addrs) => self.host_answer(qname, &addrs, qtype, Some(domain)),
                    None => self.nxdomain(Some(domain)),
                },
                _ => self.nxdomain(Some(domain)),
            });
        }
        if labels.len() == 1 {
            if let Some(addrs) = self.lookup_label(labels[0]) {
                return Resolution::Local(self.host_answer(qname, &addrs, qtype, None));
            }
        }
        if let Some(v6) = legacy_via_name(&labels) {
            return Resolution::Local(self.host_answer(qname, &[IpAddr::V6(v6)], qtype, None));
        }
        Resolution::Forward
    }

    /// The addresses of a host label, or of a 4via6 label.
    fn lookup_label(&self, label: &[u8]) -> Option<Vec<IpAddr>> {
        if let Some(addrs) = std::str::from_utf8(label)
            .ok()
            .and_then(|l| self.hosts.get(l))
        {
            return Some(addrs.clone());
        }
        via_label(label).map(|v6| vec![IpAddr::V6(v6)])
    }

    fn reverse_answer(&self, qname: &Name, rev: Reverse, qtype: RecordType) -> LocalAnswer {
        match rev {
            Reverse::Apex(apex) => self.apex_answer(qname, &apex, qtype),
            Reverse::Partial(apex) => self.nodata(Some(&apex)),
            Reverse::Invalid(apex) => self.nxdomain(Some(&apex)),
            Reverse::Addr(ip, apex) => match self.ptr_target(ip) {
                Some(target) => self.ptr_answer(qname, target, qtype, &apex),
                None => self.nxdomain(Some(&apex)),
            },
        }
    }

    /// The name an address maps back to: the resolver itself, a host, or a 4via6 name.
    fn ptr_target(&self, ip: IpAddr) -> Option<Name> {
        if ip == IpAddr::V4(SERVICE_IPV4) || ip == IpAddr::V6(SERVICE_IPV6) {
            return Name::from_ascii(SERVICE_NAME).ok();
        }
        if let Some(name) = self.reverse.get(&ip) {
            return Some(name.clone());
        }
        let IpAddr::V6(v6) = ip else { return None };
        let (site, v4) = split_via_addr(&v6).ok()?;
        let label = via_dns_label(site, v4);
        let text = match &self.domain {
            Some(d) => format!("{label}.{}", d.to_ascii()),
            None => format!("{label}."),
        };
        Name::from_ascii(text).ok()
    }

    fn host_answer(
        &self,
        owner: &Name,
        addrs: &[IpAddr],
        qtype: RecordType,
        zone: Option<&Name>,
    ) -> LocalAnswer {
        if not_implemented(qtype) {
            return self.notimp();
        }
        let answers = address_records(owner, addrs, qtype);
        if answers.is_empty() {
            return self.nodata(zone);
        }
        self.positive(answers)
    }

    fn ptr_answer(
        &self,
        owner: &Name,
        target: Name,
        qtype: RecordType,
        zone: &Name,
    ) -> LocalAnswer {
        match qtype {
            RecordType::PTR | RecordType::ANY => self.positive(vec![Record::from_rdata(
                owner.clone(),
                LOCAL_TTL,
                RData::PTR(PTR(target)),
            )]),
            t if not_implemented(t) => self.notimp(),
            _ => self.nodata(Some(zone)),
        }
    }

    fn apex_answer(&self, owner: &Name, zone: &Name, qtype: RecordType) -> LocalAnswer {
        match qtype {
            RecordType::SOA | RecordType::ANY => {
                let mut soa = self.soa(zone);
                soa.name = owner.clone();
                self.positive(vec![soa])
            }
            t if not_implemented(t) => self.notimp(),
            _ => self.nodata(Some(zone)),
        }
    }

    fn positive(&self, answers: Vec<Record>) -> LocalAnswer {
        LocalAnswer {
            rcode: ResponseCode::NoError,
            answers,
            authority: vec![],
            authoritative: true,
        }
    }

    fn notimp(&self) -> LocalAnswer {
        LocalAnswer {
            rcode: ResponseCode::NotImp,
            answers: vec![],
            authority: vec![],
            authoritative: false,
        }
    }

    fn nodata(&self, zone: Option<&Name>) -> LocalAnswer {
        LocalAnswer {
            rcode: ResponseCode::NoError,
            answers: vec![],
            authority: zone.map(|z| self.soa(z)).into_iter().collect(),
            authoritative: true,
        }
    }

    fn nxdomain(&self, zone: Option<&Name>) -> LocalAnswer {
        LocalAnswer {
            rcode: ResponseCode::NXDomain,
            answers: vec![],
            authority: zone.map(|z| self.soa(z)).into_iter().collect(),
            authoritative: true,
        }
    }

    /// The zone's SOA: primary is the resolver itself, negative TTL [`LOCAL_TTL`].
    fn soa(&self, zone: &Name) -> Record {
        let mname = Name::from_ascii(SERVICE_NAME).unwrap_or_else(|_| Name::root());
        let rname = zone
            .prepend_label("hostmaster")
            .unwrap_or_else(|_| zone.clone());
        let soa = SOA::new(mname, rname, self.serial, 3600, 600, 86400, LOCAL_TTL);
        Record::from_rdata(zone.clone(), LOCAL_TTL, RData::SOA(soa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::view::Host;
    use std::net::Ipv4Addr;

    fn view() -> DnsView {
        DnsView {
            domain: "Tailnet.Example".into(),
            self_node: Some(Host {
                name: "gw".into(),
                addrs: vec![
                    "100.64.0.1".parse().unwrap(),
                    "fd7a:115c:a1e0::1".parse().unwrap(),
                ],
            }),
            peers: vec![
                Host {
                    name: "Laptop".into(),
                    addrs: vec![
                        "100.64.0.2".parse().unwrap(),
                        "fd7a:115c:a1e0::2".parse().unwrap(),
                    ],
                },
                Host {
                    name: "nas.tailnet.example".into(),
                    addrs: vec!["100.101.2.3".parse().unwrap()],
                },
                Host {
                    name: "v6only".into(),
                    addrs: vec!["fd7a:115c:a1e0::6".parse().unwrap()],
                },
                Host {
                    name: "laptop".into(),
                    addrs: vec!["100.64.0.99".parse().unwrap()],
                },
                Host {
                    name: "not a label".into(),
                    addrs: vec!["100.64.0.98".parse().unwrap()],
                },
            ],
            split: vec![],
            global: vec![],
        }
    }

    fn zone() -> Zone {
        Zone::new(&view(), 42)
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn local(z: &Zone, q: &str, t: RecordType) -> LocalAnswer {
        match z.resolve(&name(q), t, DNSClass::IN) {
            Resolution::Local(a) => a,
            Resolution::Forward => panic!("{q} {t} was forwarded"),
        }
    }

    fn ips(a: &LocalAnswer) -> Vec<IpAddr> {
        a.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    fn ptr(a: &LocalAnswer) -> String {
        match &a.answers[..] {
            [r] => match &r.data {
                RData::PTR(p) => p.0.to_ascii(),
                other => panic!("not a PTR: {other:?}"),
            },
            other => panic!("want one answer, got {other:?}"),
        }
    }

    fn soa_owner(a: &LocalAnswer) -> String {
        match &a.authority[..] {
            [r] => {
                assert!(matches!(r.data, RData::SOA(_)), "{r:?}");
                r.name.to_ascii()
            }
            other => panic!("want one SOA, got {other:?}"),
        }
    }

    #[test]
    fn names_answer_a_and_aaaa() {
        let z = zone();
        assert_eq!(z.host_count(), 4);
        let a = local(&z, "laptop.tailnet.example.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative);
        assert_eq!(ips(&a), ["100.64.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.answers[0].ttl, LOCAL_TTL);
        let a = local(&z, "LAPTOP.Tailnet.Example.", RecordType::AAAA);
        assert_eq!(ips(&a), ["fd7a:115c:a1e0::2".parse::<IpAddr>().unwrap()]);
        // The owner name echoes the question's case.
        assert_eq!(a.answers[0].name.to_ascii(), "LAPTOP.Tailnet.Example.");
        // The node's own name, and a name given as an FQDN in the view.
        assert_eq!(
            ips(&local(&z, "gw.tailnet.example.", RecordType::A)).len(),
            1
        );
        assert_eq!(
            ips(&local(&z, "nas.tailnet.example.", RecordType::A)),
            ["100.101.2.3".parse::<IpAddr>().unwrap()]
        );
        // ANY answers every address.
        assert_eq!(
            ips(&local(&z, "gw.tailnet.example.", RecordType::ANY)).len(),
            2
        );
    }

    #[test]
    fn nxdomain_versus_nodata() {
        let z = zone();
        // Unknown name in the zone: NXDOMAIN with the zone's SOA.
        let a = local(&z, "nobody.tailnet.example.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        assert!(a.answers.is_empty());
        assert_eq!(soa_owner(&a), "tailnet.example.");
        // Deeper names do not exist either.
        let a = local(&z, "x.laptop.tailnet.example.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        // Known name, no record of that type: NOERROR, no answers, SOA.
        for (q, t) in [
            ("v6only.tailnet.example.", RecordType::A),
            ("nas.tailnet.example.", RecordType::AAAA),
            ("laptop.tailnet.example.", RecordType::TXT),
            ("laptop.tailnet.example.", RecordType::MX),
            ("laptop.tailnet.example.", RecordType::PTR),
        ] {
            let a = local(&z, q, t);
            assert_eq!(a.rcode, ResponseCode::NoError, "{q} {t}");
            assert!(a.answers.is_empty(), "{q} {t}");
            assert_eq!(soa_owner(&a), "tailnet.example.", "{q} {t}");
        }
        // The SOA's serial and negative TTL.
        let a = local(&z, "nobody.tailnet.example.", RecordType::A);
        match &a.authority[0].data {
            RData::SOA(soa) => {
                assert_eq!(soa.serial, 42);
                assert_eq!(soa.minimum, LOCAL_TTL);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unimplemented_types_like_tailscale() {
        let z = zone();
        for t in [
            RecordType::NS,
            RecordType::SOA,
            RecordType::AXFR,
            RecordType::IXFR,
            RecordType::HINFO,
        ] {
            let a = local(&z, "laptop.tailnet.example.", t);
            assert_eq!(a.rcode, ResponseCode::NotImp, "{t}");
            assert!(a.answers.is_empty());
        }
        // Unknown names are NXDOMAIN whatever the type.
        let a = local(&z, "nobody.tailnet.example.", RecordType::NS);
        assert_eq!(a.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn zone_apex() {
        let z = zone();
        let a = local(&z, "tailnet.example.", RecordType::SOA);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(matches!(a.answers[0].data, RData::SOA(_)));
        assert_eq!(
            local(&z, "tailnet.example.", RecordType::NS).rcode,
            ResponseCode::NotImp
        );
        let a = local(&z, "tailnet.example.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.answers.is_empty());
        assert_eq!(soa_owner(&a), "tailnet.example.");
    }

    #[test]
    fn ptr_both_families() {
        let z = zone();
        let a = local(&z, "2.0.64.100.in-addr.arpa.", RecordType::PTR);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(ptr(&a), "laptop.tailnet.example.");
        assert_eq!(
            ptr(&local(&z, "3.2.101.100.in-addr.arpa.", RecordType::PTR)),
            "nas.tailnet.example."
        );
        let v6 = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.";
        assert_eq!(
            ptr(&local(&z, v6, RecordType::PTR)),
            "laptop.tailnet.example."
        );
        assert_eq!(
            ptr(&local(&z, &v6.to_ascii_uppercase(), RecordType::PTR)),
            "laptop.tailnet.example."
        );
        // The resolver's own addresses.
        assert_eq!(
            ptr(&local(&z, "100.100.100.100.in-addr.arpa.", RecordType::PTR)),
            SERVICE_NAME
        );
        let me6 = "3.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.";
        assert_eq!(ptr(&local(&z, me6, RecordType::PTR)), SERVICE_NAME);
        // Unknown tailnet addresses: NXDOMAIN with the reverse zone's SOA.
        let a = local(&z, "9.0.64.100.in-addr.arpa.", RecordType::PTR);
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        assert_eq!(soa_owner(&a), "64.100.in-addr.arpa.");
        let a = local(
            &z,
            "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.",
            RecordType::PTR,
        );
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        assert_eq!(soa_owner(&a), "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.");
        // A known reverse name with another type: NODATA.
        let a = local(&z, "2.0.64.100.in-addr.arpa.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.answers.is_empty());
        assert_eq!(
            local(&z, "2.0.64.100.in-addr.arpa.", RecordType::NS).rcode,
            ResponseCode::NotImp
        );
    }

    #[test]
    fn reverse_zone_edges() {
        let z = zone();
        // Outside 100.64.0.0/10 and fd7a:115c:a1e0::/48: not ours.
        for q in [
            "1.0.63.100.in-addr.arpa.",
            "1.0.128.100.in-addr.arpa.",
            "1.1.168.192.in-addr.arpa.",
            "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.",
            "in-addr.arpa.",
            "100.in-addr.arpa.",
        ] {
            assert_eq!(
                z.resolve(&name(q), RecordType::PTR, DNSClass::IN),
                Resolution::Forward,
                "{q}"
            );
        }
        // Malformed names inside the zones cannot exist.
        for q in [
            "x.0.64.100.in-addr.arpa.",
            "01.0.64.100.in-addr.arpa.",
            "256.0.64.100.in-addr.arpa.",
            "1.1.1.64.100.in-addr.arpa.",
            "10.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.",
            "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.",
        ] {
            assert_eq!(
                local(&z, q, RecordType::PTR).rcode,
                ResponseCode::NXDomain,
                "{q}"
            );
        }
        // Names above full addresses exist (empty non-terminals): NODATA.
        for q in [
            "0.64.100.in-addr.arpa.",
            "0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.",
        ] {
            let a = local(&z, q, RecordType::PTR);
            assert_eq!(a.rcode, ResponseCode::NoError, "{q}");
            assert!(a.answers.is_empty());
            assert_eq!(a.authority.len(), 1);
        }
        // Apexes.
        let a = local(&z, "127.100.in-addr.arpa.", RecordType::SOA);
        assert_eq!(a.answers.len(), 1);
        let a = local(&z, "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.", RecordType::SOA);
        assert_eq!(a.answers.len(), 1);
    }

    #[test]
    fn via_names() {
        let z = zone();
        let want: IpAddr = "fd7a:115c:a1e0:b1a:0:7:a01:105".parse().unwrap();
        for q in [
            "10-1-1-5-via-7.tailnet.example.",
            "10-1-1-5-via-7.",
            "10-1-1-5-VIA-0x7.tailnet.example.",
        ] {
            let a = local(&z, q, RecordType::AAAA);
            assert_eq!(a.rcode, ResponseCode::NoError, "{q}");
            assert_eq!(ips(&a), [want], "{q}");
        }
        // A: the name exists but has no IPv4 address.
        let a = local(&z, "10-1-1-5-via-7.tailnet.example.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.answers.is_empty());
        let a = local(&z, "10-1-1-5-via-7.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.answers.is_empty());
        assert!(a.authority.is_empty(), "no zone, no SOA");
        // PTR of a 4via6 address names it back.
        let rev = "5.0.1.0.1.0.a.0.7.0.0.0.0.0.0.0.a.1.b.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.";
        assert_eq!(
            ptr(&local(&z, rev, RecordType::PTR)),
            "10-1-1-5-via-7.tailnet.example."
        );
        // Bad 4via6 names in the tailnet domain do not exist.
        for bad in [
            "300-1-1-1-via-7.tailnet.example.",
            "10-1-1-5-via-65536.tailnet.example.",
            "10-1-1-5-via-70000.tailnet.example.",
            "127-0-0-1-via-7.tailnet.example.",
            "100-64-0-1-via-7.tailnet.example.",
            "10-1-1-via-7.tailnet.example.",
            "10-1-1-5-via-x.tailnet.example.",
            "10-1-1-5-via-7.x.tailnet.example.",
        ] {
            assert_eq!(
                local(&z, bad, RecordType::AAAA).rcode,
                ResponseCode::NXDomain,
                "{bad}"
            );
        }
        // Outside the tailnet domain, bad labels are not ours: forwarded.
        for bad in [
            "300-1-1-1-via-7.",
            "10-1-1-5-via-70000.",
            "10-1-1-5-via-7.example.org.",
        ] {
            assert_eq!(
                z.resolve(&name(bad), RecordType::AAAA, DNSClass::IN),
                Resolution::Forward,
                "{bad}"
            );
        }
        // The largest site, and the reverse of a reserved site is not named.
        // Tailscale's older forms, bare.
        for old in ["via-7.10.1.1.5.", "10.1.1.5.via-7.", "VIA-0x7.10.1.1.5."] {
            let a = local(&z, old, RecordType::AAAA);
            assert_eq!(a.rcode, ResponseCode::NoError, "{old}");
            assert_eq!(ips(&a), [want], "{old}");
        }
        for not_via in [
            "via-7.10.1.1.",
            "via-x.10.1.1.5.",
            "10.1.1.5.via-70000.",
            "1.2.3.4.5.",
        ] {
            assert!(
                matches!(
                    z.resolve(&name(not_via), RecordType::AAAA, DNSClass::IN),
                    Resolution::Forward
                ),
                "{not_via}"
            );
        }
        let a = local(&z, "192-168-1-1-via-65535.", RecordType::AAAA);
        assert_eq!(
            ips(&a),
            ["fd7a:115c:a1e0:b1a:0:ffff:c0a8:101"
                .parse::<IpAddr>()
                .unwrap()]
        );
        let reserved = "1.0.1.0.8.a.0.c.0.0.0.0.1.0.0.0.a.1.b.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.";
        assert_eq!(
            local(&z, reserved, RecordType::PTR).rcode,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn single_labels_and_forwarding() {
        let z = zone();
        // A bare host name answers as if the tailnet domain was appended.
        let a = local(&z, "laptop.", RecordType::A);
        assert_eq!(ips(&a), ["100.64.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.answers[0].name.to_ascii(), "laptop.");
        let a = local(&z, "v6only.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.answers.is_empty());
        // Unknown single labels and other names are forwarded.
        for q in [
            "printer.",
            "example.org.",
            "laptop.example.org.",
            ".",
            "com.",
        ] {
            assert_eq!(
                z.resolve(&name(q), RecordType::A, DNSClass::IN),
                Resolution::Forward,
                "{q}"
            );
        }
    }

    #[test]
    fn special_names_and_classes() {
        let z = zone();
        let a = local(&z, "hidden.onion.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        let a = local(&z, SERVICE_NAME, RecordType::A);
        assert_eq!(ips(&a), [IpAddr::V4(SERVICE_IPV4)]);
        let a = local(&z, SERVICE_NAME, RecordType::AAAA);
        assert_eq!(ips(&a), [IpAddr::V6(SERVICE_IPV6)]);
        // CHAOS-class questions about our names are refused; other names go upstream.
        match z.resolve(
            &name("laptop.tailnet.example."),
            RecordType::A,
            DNSClass::CH,
        ) {
            Resolution::Local(a) => assert_eq!(a.rcode, ResponseCode::Refused),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            z.resolve(&name("version.bind."), RecordType::TXT, DNSClass::CH),
            Resolution::Forward
        );
        // ANY class answers like IN.
        match z.resolve(
            &name("laptop.tailnet.example."),
            RecordType::A,
            DNSClass::ANY,
        ) {
            Resolution::Local(a) => assert_eq!(a.answers.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_domain() {
        let mut v = view();
        v.domain = String::new();
        v.peers.truncate(1);
        let z = Zone::new(&v, 1);
        assert!(z.domain().is_none());
        let a = local(&z, "laptop.", RecordType::A);
        assert_eq!(ips(&a), ["100.64.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            ptr(&local(&z, "2.0.64.100.in-addr.arpa.", RecordType::PTR)),
            "laptop."
        );
        assert_eq!(
            z.resolve(
                &name("laptop.tailnet.example."),
                RecordType::A,
                DNSClass::IN
            ),
            Resolution::Forward
        );
        // An invalid domain is ignored rather than matching odd names.
        v.domain = "bad..domain".into();
        assert!(Zone::new(&v, 1).domain().is_none());
    }

    #[test]
    fn renamed_view_changes_answers() {
        let mut v = view();
        v.peers.remove(3); // the duplicate "laptop"
        let z1 = Zone::new(&v, 1);
        v.peers[0].name = "desktop".into();
        let z2 = Zone::new(&v, 2);
        assert_eq!(
            ips(&local(&z1, "laptop.tailnet.example.", RecordType::A)).len(),
            1
        );
        assert_eq!(
            local(&z2, "laptop.tailnet.example.", RecordType::A).rcode,
            ResponseCode::NXDomain,
            "the old name is gone"
        );
        assert_eq!(
            ips(&local(&z2, "desktop.tailnet.example.", RecordType::A)),
            [IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2))]
        );
        assert_eq!(
            ptr(&local(&z2, "2.0.64.100.in-addr.arpa.", RecordType::PTR)),
            "desktop.tailnet.example."
        );
    }
}
