//! The policy's access rules: `acls`, `hosts`, `tagOwners` and `tests`, with Tailscale's
//! syntax and meaning.
//!
//! ```jsonc
//! {
//!   "groups":    { "group:eng": ["alice@example.com"] },
//!   "tagOwners": { "tag:server": ["group:eng"] },
//!   "hosts":     { "db": "100.64.0.10", "office": "192.168.1.0/24" },
//!   "acls": [
//!     { "action": "accept", "src": ["group:eng"], "dst": ["tag:server:22,443", "office:*"] },
//!     { "action": "accept", "src": ["tag:server"], "proto": "udp", "dst": ["db:5432-5433"] },
//!     { "action": "accept", "src": ["alice@example.com"], "dst": ["autogroup:internet:*"] },
//!   ],
//!   "tests": [ { "src": "alice@example.com", "accept": ["tag:server:22"], "deny": ["db:5432"] } ],
//! }
//! ```
//!
//! - Sources and destinations: `*`, a user, `group:…`, `tag:…` (must be in `tagOwners`), a
//!   `hosts` alias, an IP address or CIDR (subnet routes and 4via6 prefixes included),
//!   `autogroup:member` (untagged nodes), `autogroup:tagged`, and as a destination only
//!   `autogroup:internet` (traffic through an exit node). A tagged node is matched by its tags
//!   only, an untagged one by its user and the groups holding that user.
//! - Destinations carry ports after the last `:`: `*`, `22`, `80,443`, `1000-2000`.
//! - `proto`: a name (`tcp`, `udp`, `icmp`, `ipv6-icmp`, `sctp`, …) or a number; without it a
//!   rule covers TCP, UDP, ICMP and ICMPv6. Ports only restrict TCP, UDP and SCTP; an ICMP echo
//!   is allowed by any rule that allows its addresses.
//! - No `acls` key at all: every node may reach every other (the tailnet default without a
//!   policy). An `acls` list, even empty: default deny, only what a rule accepts.
//!
//! Each node receives the rules for traffic *to* it (its addresses, the routes it is approved
//! for — primary or standby — and the internet if it is an approved exit node) as a
//! [`FilterRule`] list, and sees in its netmap only the peers it may reach or that may reach
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::proto::{DstPorts, FilterRule};

/// IP protocol numbers a rule without `proto` covers.
pub const DEFAULT_PROTOS: [u8; 4] = [PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6];
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const PROTO_SCTP: u8 = 132;

/// Whether ports mean anything for this protocol.
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
}

/// One `acls` entry as written (`users`/`ports` are the older names of `src`/`dst`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAclRule {
    /// Only `accept`.
    pub action: String,
    /// Sources.
    #[serde(alias = "users")]
    pub src: Vec<String>,
    /// Destinations, `target:ports`.
    #[serde(alias = "ports")]
    pub dst: Vec<String>,
    /// IP protocol (name or number).
    #[serde(default)]
    pub proto: Option<String>,
}

/// One `tests` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAclTest {
    /// The source: a user, `tag:…`, a host alias or an IP address.
    pub src: String,
    /// Protocol of the tested connections (default `tcp`).
    #[serde(default)]
    pub proto: Option<String>,
    /// Destinations (`target:port`) the source must reach.
    #[serde(default)]
    pub accept: Vec<String>,
    /// Destinations the source must not reach.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A source or destination of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `*`.
    Any,
    /// A user name.
    User(String),
    /// `group:NAME`.
    Group(String),
    /// `tag:NAME`.
    Tag(String),
    /// An address or CIDR, written as such or through a `hosts` alias.
    Prefix(IpNet),
    /// `autogroup:member`: untagged nodes.
    Members,
    /// `autogroup:tagged`: tagged nodes.
    Tagged,
    /// `autogroup:internet`: anything through an exit node.
    Internet,
}

/// A destination: a target and its port ranges (inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dst {
    /// What is reached.
    pub target: Target,
    /// Port ranges.
    pub ports: Vec<(u16, u16)>,
}

/// A validated `acls` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// Sources.
    pub src: Vec<Target>,
    /// Destinations.
    pub dst: Vec<Dst>,
    /// IP protocols; empty for [`DEFAULT_PROTOS`].
    pub protos: Vec<u8>,
}

/// The validated access part of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// `None`: no `acls` key, everything is allowed.
    pub rules: Option<Vec<AclRule>>,
    /// `groups`.
    pub groups: BTreeMap<String, Vec<String>>,
    /// `tests`, validated.
    pub tests: Vec<AclTest>,
}

/// A validated `tests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclTest {
    /// The source as written.
    pub src_text: String,
    /// The source.
    pub src: Principal,
    /// IP protocol.
    pub proto: u8,
    /// Must be reachable: (as written, who, port).
    pub accept: Vec<(String, Principal, u16)>,
    /// Must not be reachable.
    pub deny: Vec<(String, Principal, u16)>,
}

/// Who a policy test speaks of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An untagged node of this user.
    User(String),
    /// A node with this tag.
    Tag(String),
    /// An address.
    Ip(IpAddr),
}

/// What the compiler needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclNode {
    /// Node id.
    pub id: u64,
    /// Owner.
    pub user: String,
    /// Tags (tagged nodes match by these only).
    pub tags: Vec<String>,
    /// Tailnet addresses.
    pub addresses: Vec<IpNet>,
    /// Approved subnet routes (and 4via6 prefixes) of the node, primary or standby.
    pub routes: Vec<IpNet>,
    /// Approved and primary for the exit routes.
    pub exit: bool,
}

/// The section of the policy text a problem is in, and what is wrong.
type Problem = String;

/// Parses a protocol name or number.
pub fn parse_proto(s: &str) -> Result<u8, Problem> {
    let known = [
        ("icmp", PROTO_ICMP),
        ("igmp", 2),
        ("tcp", PROTO_TCP),
        ("egp", 8),
        ("igp", 9),
        ("udp", PROTO_UDP),
        ("gre", 47),
        ("esp", 50),
        ("ah", 51),
        ("ipv6-icmp", PROTO_ICMPV6),
        ("icmpv6", PROTO_ICMPV6),
        ("sctp", PROTO_SCTP),
    ];
    let lower = s.trim().to_ascii_lowercase();
    if let Some((_, n)) = known.iter().find(|(name, _)| *name == lower) {
        return Ok(*n);
    }
    lower
        .parse::<u8>()
        .map_err(|_| format!("unknown protocol {s:?} (a name such as tcp, udp, icmp, or 0–255)"))
}

fn parse_ports(s: &str) -> Result<Vec<(u16, u16)>, Problem> {
    if s == "*" {
        return Ok(vec![(0, u16::MAX)]);
    }
    s.split(',')
        .map(|part| {
            let bad = || format!("bad port {part:?} (want *, 22, 80,443 or 1000-2000)");
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u16 = a.trim().parse().map_err(|_| bad())?;
            let b: u16 = b.trim().parse().map_err(|_| bad())?;
            if a > b {
                return Err(bad());
            }
            Ok((a, b))
        })
        .collect()
}

/// Names and aliases known to the policy, for resolving targets.
pub struct Names<'a> {
    /// `groups`.
    pub groups: &'a BTreeMap<String, Vec<String>>,
    /// `tagOwners`.
    pub tag_owners: &'a BTreeMap<String, Vec<String>>,
    /// `hosts`.
    pub hosts: &'a BTreeMap<String, IpNet>,
}

impl Names<'_> {
    /// Parses a source or destination target (without ports).
    pub fn target(&self, s: &str, dst: bool) -> Result<Target, Problem> {
        match s {
            "*" => return Ok(Target::Any),
            "autogroup:member" => return Ok(Target::Members),
            "autogroup:tagged" => return Ok(Target::Tagged),
            "autogroup:internet" if dst => return Ok(Target::Internet),
            "autogroup:internet" => {
                return Err("autogroup:internet is only allowed as a destination".into())
            }
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("autogroup:") {
            return Err(format!("unknown autogroup:{rest}"));
        }
        if s.starts_with("group:") {
            return match self.groups.contains_key(s) {
                true => Ok(Target::Group(s.into())),
                false => Err(format!("{s} is not defined in groups")),
            };
        }
        if s.starts_with("tag:") {
            return match self.tag_owners.contains_key(s) {
                true => Ok(Target::Tag(s.into())),
                false => Err(format!("{s} is not defined in tagOwners")),
            };
        }
        if let Some(net) = self.hosts.get(s) {
            return Ok(Target::Prefix(*net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Target::Prefix(IpNet::from(ip)));
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Target::Prefix(net.trunc()));
        }
        if s.contains('@') {
            return Ok(Target::User(s.into()));
        }
        Err(format!(
            "{s:?} is not a user (name@domain), group:, tag:, host alias, IP or CIDR"
        ))
    }

    /// Parses `target:ports` (the last `:` separates the ports, so IPv6 works unbracketed).
    pub fn dst(&self, s: &str) -> Result<Dst, Problem> {
        let (target, ports) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("destination {s:?} has no :ports (use {s}:*)"))?;
        let ports = parse_ports(ports).map_err(|e| format!("destination {s:?}: {e}"))?;
        let target = target.trim_start_matches('[').trim_end_matches(']');
        Ok(Dst {
            target: self.target(target, true)?,
            ports,
        })
    }

    fn principal(&self, s: &str) -> Result<Principal, Problem> {
        match self.target(s, false)? {
            Target::User(u) => Ok(Principal::User(u)),
            Target::Tag(t) => Ok(Principal::Tag(t)),
            Target::Prefix(p) if p.prefix_len() == p.max_prefix_len() => {
                Ok(Principal::Ip(p.addr()))
            }
            _ => Err(format!(
                "test {s:?}: want a user, tag:, host alias or single IP address"
            )),
        }
    }

    /// Validates the `acls` entries.
    pub fn rules(&self, raw: &[RawAclRule]) -> Result<Vec<AclRule>, (usize, Problem)> {
        raw.iter()
            .enumerate()
            .map(|(i, r)| {
                let e = |p: Problem| (i, p);
                if r.action != "accept" {
                    return Err(e(format!(
                        "action {:?}: only \"accept\" exists (everything else is denied)",
                        r.action
                    )));
                }
                let src = r
                    .src
                    .iter()
                    .map(|s| self.target(s, false))
                    .collect::<Result<_, _>>()
                    .map_err(e)?;
                let dst = r
                    .dst
                    .iter()
                    .map(|d| self.dst(d))
                    .collect::<Result<_, _>>()
                    .map_err(e)?;
                let protos = match &r.proto {
                    Some(p) => vec![parse_proto(p).map_err(e)?],
                    None => Vec::new(),
                };
                Ok(AclRule { src, dst, protos })
            })
            .collect()
    }

    /// Validates the `tests` entries.
    pub fn tests(&self, raw: &[RawAclTest]) -> Result<Vec<AclTest>, (usize, Problem)> {
        raw.iter()
            .enumerate()
            .map(|(i, t)| {
                let e = |p: Problem| (i, p);
                let dsts = |list: &[String]| -> Result<Vec<(String, Principal, u16)>, Problem> {
                    list.iter()
                        .map(|d| {
                            let (who, port) = d
                                .rsplit_once(':')
                                .ok_or_else(|| format!("test destination {d:?} has no :port"))?;
                            let port = port
                                .parse::<u16>()
                                .map_err(|_| format!("test destination {d:?}: want one port"))?;
                            let who = who.trim_start_matches('[').trim_end_matches(']');
                            Ok((d.clone(), self.principal(who)?, port))
                        })
                        .collect()
                };
                Ok(AclTest {
                    src_text: t.src.clone(),
                    src: self.principal(&t.src).map_err(e)?,
                    proto: match &t.proto {
                        Some(p) => parse_proto(p).map_err(e)?,
                        None => PROTO_TCP,
                    },
                    accept: dsts(&t.accept).map_err(e)?,
                    deny: dsts(&t.deny).map_err(e)?,
                })
            })
            .collect()
    }
}

/// IPv4 ranges that are never "the internet" an exit node serves: the tailnet's own, private,
/// shared, loopback, link-local, multicast and reserved space.
const NOT_INTERNET_V4: [&str; 8] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/3",
];

/// The IPv6 internet: global unicast space (the tailnet's ULA range is outside it).
const INTERNET_V6: &str = "2000::/3";

fn not_internet_v4() -> impl Iterator<Item = IpNet> {
    NOT_INTERNET_V4.iter().map(|s| s.parse().expect("valid"))
}

/// Whether `ip` is on the internet.
fn is_internet(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => !not_internet_v4().any(|n| n.contains(&ip)),
        IpAddr::V6(_) => INTERNET_V6.parse::<IpNet>().expect("valid").contains(&ip),
    }
}

/// `autogroup:internet`: the public address space, as prefixes.
pub fn internet() -> Vec<IpNet> {
    let holes: Vec<IpNet> = not_internet_v4().collect();
    let mut all = subtract("0.0.0.0/0".parse().expect("valid"), &holes);
    all.push(INTERNET_V6.parse().expect("valid"));
    all
}

/// `universe` without the `holes`, as the fewest prefixes.
fn subtract(universe: IpNet, holes: &[IpNet]) -> Vec<IpNet> {
    if holes.iter().any(|h| h.contains(&universe)) {
        return Vec::new();
    }
    if !holes.iter().any(|h| universe.contains(h)) {
        return vec![universe];
    }
    match universe.subnets(universe.prefix_len() + 1) {
        Ok(halves) => halves.flat_map(|half| subtract(half, holes)).collect(),
        Err(_) => Vec::new(),
    }
}

fn everything() -> [IpNet; 2] {
    [
        "0.0.0.0/0".parse().expect("valid"),
        "::/0".parse().expect("valid"),
    ]
}

impl Acl {
    /// Whether a node with this owner and tags is matched by `target` (identity targets only).
    fn owns(&self, target: &Target, user: &str, tags: &[String]) -> bool {
        match target {
            Target::Any => true,
            Target::Tag(t) => tags.contains(t),
            Target::Tagged => !tags.is_empty(),
            _ if !tags.is_empty() => false,
            Target::User(u) => u == user,
            Target::Group(g) => self
                .groups
                .get(g)
                .is_some_and(|m| m.iter().any(|x| x == user)),
            Target::Members => true,
            Target::Prefix(_) | Target::Internet => false,
        }
    }

    /// The source prefixes `target` stands for.
    fn src_prefixes(&self, target: &Target, nodes: &[AclNode]) -> Vec<IpNet> {
        match target {
            Target::Any => everything().to_vec(),
            Target::Prefix(p) => vec![*p],
            Target::Internet => Vec::new(),
            t => nodes
                .iter()
                .filter(|n| self.owns(t, &n.user, &n.tags))
                .flat_map(|n| n.addresses.iter().copied())
                .collect(),
        }
    }

    /// The parts of `node`'s served prefixes that `target` names.
    fn dst_prefixes(&self, target: &Target, node: &AclNode) -> Vec<IpNet> {
        // What the node serves: itself and its routes, and through an exit node the internet.
        let served = || {
            let mut all: Vec<IpNet> = node.addresses.iter().chain(&node.routes).copied().collect();
            if node.exit {
                all.extend(internet());
            }
            all
        };
        match target {
            // `*` covers exit-node use too, as in Tailscale.
            Target::Any => served(),
            Target::Internet if node.exit => internet(),
            Target::Internet => Vec::new(),
            Target::Prefix(p) => served().iter().filter_map(|s| intersect(p, s)).collect(),
            t if self.owns(t, &node.user, &node.tags) => node.addresses.clone(),
            _ => Vec::new(),
        }
    }

    /// The packet filter of `node`: `None` when the policy has no `acls` (allow all).
    pub fn filter_for(&self, node: &AclNode, nodes: &[AclNode]) -> Option<Vec<FilterRule>> {
        let rules = self.rules.as_ref()?;
        let mut out = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let mut dst = Vec::new();
            for d in &rule.dst {
                for net in self.dst_prefixes(&d.target, node) {
                    for &(first, last) in &d.ports {
                        dst.push(DstPorts { net, first, last });
                    }
                }
            }
            if dst.is_empty() {
                continue;
            }
            let src: BTreeSet<IpNet> = rule
                .src
                .iter()
                .flat_map(|s| self.src_prefixes(s, nodes))
                .collect();
            if src.is_empty() {
                continue;
            }
            dst.sort();
            dst.dedup();
            out.push(FilterRule {
                acl: i as u32,
                src: src.into_iter().collect(),
                dst,
                protos: rule.protos.clone(),
            });
        }
        Some(out)
    }

    /// Whether `test` passes; the failing destinations otherwise.
    pub fn run_test(&self, test: &AclTest) -> Vec<String> {
        let mut failures = Vec::new();
        for (text, who, port) in &test.accept {
            if !self.allows(&test.src, who, *port, test.proto) {
                failures.push(format!(
                    "{} → {text} is denied, want accepted",
                    test.src_text
                ));
            }
        }
        for (text, who, port) in &test.deny {
            if self.allows(&test.src, who, *port, test.proto) {
                failures.push(format!(
                    "{} → {text} is accepted, want denied",
                    test.src_text
                ));
            }
        }
        failures
    }

    /// Identity-level check used by policy tests.
    fn allows(&self, src: &Principal, dst: &Principal, port: u16, proto: u8) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        let matches = |t: &Target, p: &Principal, as_dst: bool| match (t, p) {
            (Target::Internet, Principal::Ip(ip)) => as_dst && is_internet(*ip),
            (Target::Internet, _) => false,
            (Target::Prefix(net), Principal::Ip(ip)) => net.contains(ip),
            (Target::Any, _) => true,
            (_, Principal::Ip(_)) | (Target::Prefix(_), _) => false,
            (t, Principal::User(u)) => self.owns(t, u, &[]),
            (t, Principal::Tag(tag)) => self.owns(t, "", std::slice::from_ref(tag)),
        };
        rules.iter().any(|r| {
            let proto_ok = if r.protos.is_empty() {
                DEFAULT_PROTOS.contains(&proto)
            } else {
                r.protos.contains(&proto)
            };
            proto_ok
                && r.src.iter().any(|s| matches(s, src, false))
                && r.dst.iter().any(|d| {
                    matches(&d.target, dst, true)
                        && (!has_ports(proto)
                            || d.ports.iter().any(|&(a, b)| a <= port && port <= b))
                })
        })
    }
}

/// The overlap of two prefixes (the narrower one), if they overlap.
fn intersect(a: &IpNet, b: &IpNet) -> Option<IpNet> {
    if a.contains(b) {
        Some(*b)
    } else if b.contains(a) {
        Some(*a)
    } else {
        None
    }
}

/// Whether `filter` lets any address of `from` in.
pub fn admits(filter: &Option<Vec<FilterRule>>, from: &[IpNet]) -> bool {
    match filter {
        None => true,
        Some(rules) => rules.iter().any(|r| {
            r.src
                .iter()
                .any(|s| from.iter().any(|f| intersect(s, f).is_some()))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::policy::Policy;

    const POLICY: &str = r#"{
  // who is who
  "groups": { "group:eng": ["alice@example.com"], },
  "tagOwners": { "tag:server": ["group:eng"], "tag:router": [] },
  "hosts": { "db": "100.64.0.10", "office": "192.168.1.0/24" },
  "acls": [
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:server:22,443", "office:*"] },
    { "action": "accept", "src": ["tag:server"], "proto": "udp", "dst": ["db:5432-5433"] },
    { "action": "accept", "users": ["bob@example.com"], "ports": ["autogroup:internet:*"] },
  ],
  "tests": [
    { "src": "alice@example.com", "accept": ["tag:server:22", "192.168.1.7:80"], "deny": ["tag:server:80"] },
    { "src": "tag:server", "proto": "udp", "accept": ["db:5432"], "deny": ["db:5434"] },
  ],
}"#;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn node(id: u64, user: &str, tags: &[&str], v4: &str) -> AclNode {
        AclNode {
            id,
            user: user.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            addresses: vec![net(&format!("{v4}/32"))],
            routes: Vec::new(),
            exit: false,
        }
    }

    #[test]
    fn compiles_the_filter_of_each_node() {
        let p = Policy::parse(POLICY, "p").unwrap();
        let alice = node(1, "alice@example.com", &[], "100.64.0.1");
        let server = node(2, "alice@example.com", &["tag:server"], "100.64.0.2");
        let db = node(3, "carol@example.com", &[], "100.64.0.10");
        let mut router = node(4, "x@example.com", &["tag:router"], "100.64.0.4");
        router.routes = vec![net("192.168.0.0/16")];
        let mut exit = node(5, "x@example.com", &["tag:router"], "100.64.0.5");
        exit.exit = true;
        let nodes = [
            alice.clone(),
            server.clone(),
            db.clone(),
            router.clone(),
            exit.clone(),
        ];
        let f = |n: &AclNode| p.acl.filter_for(n, &nodes).unwrap();

        // The server accepts alice's (untagged) node on 22 and 443 only.
        let fs = f(&server);
        assert_eq!(fs.len(), 1);
        assert_eq!(fs[0].acl, 0);
        assert_eq!(
            fs[0].src,
            vec![net("100.64.0.1/32")],
            "tagged nodes are not alice's"
        );
        let ports: Vec<(u16, u16)> = fs[0].dst.iter().map(|d| (d.first, d.last)).collect();
        assert_eq!(ports, vec![(22, 22), (443, 443)]);
        // The db accepts UDP 5432-5433 from the server.
        let fd = f(&db);
        assert_eq!(fd.len(), 1);
        assert_eq!(fd[0].protos, vec![17]);
        assert_eq!(fd[0].src, vec![net("100.64.0.2/32")]);
        assert_eq!((fd[0].dst[0].first, fd[0].dst[0].last), (5432, 5433));
        // The router serves the office part of its route.
        let fr = f(&router);
        assert_eq!(fr.len(), 1);
        assert_eq!(fr[0].dst[0].net, net("192.168.1.0/24"));
        // The exit node serves the internet to bob only; bob has no node: no source, no rule.
        // The exit node serves the office prefix too (an explicit CIDR, through it); the
        // internet rule has no source yet.
        assert!(f(&exit).iter().all(|r| r.acl == 0), "{:?}", f(&exit));
        let bob = node(6, "bob@example.com", &[], "100.64.0.6");
        let with_bob = [exit.clone(), bob.clone()];
        let fe = p.acl.filter_for(&exit, &with_bob).unwrap();
        let fe: Vec<_> = fe.into_iter().filter(|r| r.acl == 2).collect();
        assert_eq!(fe[0].src, vec![net("100.64.0.6/32")]);
        // The internet: public space only, never the exit node itself, its LANs or the tailnet.
        let covers = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            fe[0].dst.iter().any(|d| d.net.contains(&ip))
        };
        for public in ["8.8.8.8", "203.0.113.1", "2001:4860::8888", "1.0.0.1"] {
            assert!(covers(public), "{public}");
        }
        for private in [
            "100.64.0.5",
            "192.168.1.1",
            "10.1.2.3",
            "127.0.0.1",
            "fd7a:115c:a1e0::5",
            "fe80::1",
            "224.0.0.1",
        ] {
            assert!(!covers(private), "{private}");
        }
        assert!(fe[0].dst.len() < 80, "{}", fe[0].dst.len());
        // Alice's node accepts nothing.
        assert!(f(&alice).is_empty());
        // Visibility: alice sees the server (she may reach it); the db sees the server.
        assert!(admits(&Some(fs.clone()), &alice.addresses));
        assert!(!admits(&Some(fs), &db.addresses));
        assert!(admits(&None, &db.addresses), "no acls: everyone");
    }

    #[test]
    fn no_acls_key_allows_all_and_empty_list_denies_all() {
        let open = Policy::parse("{}", "p").unwrap();
        let n = node(1, "a@x", &[], "100.64.0.1");
        assert_eq!(open.acl.filter_for(&n, std::slice::from_ref(&n)), None);
        let closed = Policy::parse(r#"{"acls": []}"#, "p").unwrap();
        assert_eq!(
            closed.acl.filter_for(&n, std::slice::from_ref(&n)),
            Some(vec![])
        );
    }

    #[test]
    fn failing_tests_and_bad_entries_are_refused_with_the_line() {
        let failing = POLICY.replace(
            r#""deny": ["tag:server:80"]"#,
            r#""deny": ["tag:server:443"]"#,
        );
        let e = Policy::parse(&failing, "p").unwrap_err().to_string();
        assert!(
            e.contains("alice@example.com → tag:server:443 is accepted, want denied"),
            "{e}"
        );
        let cases = [
            (
                POLICY.replace("group:eng\"], \"dst\"", "group:nope\"], \"dst\""),
                "line 7",
                "group:nope is not defined",
            ),
            (
                POLICY.replace("\"proto\": \"udp\"", "\"proto\": \"bogus\""),
                "line 8",
                "unknown protocol",
            ),
            (
                POLICY.replace("db:5432-5433", "db:5433-5432"),
                "line 8",
                "bad port",
            ),
            (
                POLICY.replace(
                    "\"action\": \"accept\", \"users\"",
                    "\"action\": \"drop\", \"users\"",
                ),
                "line 9",
                "only \"accept\"",
            ),
            (
                POLICY.replace("autogroup:internet:*", "autogroup:internet"),
                "line 9",
                "bad port",
            ),
            (
                POLICY.replace("\"office\": \"192.168.1.0/24\"", "\"office\": \"nowhere\""),
                "line 5",
                "not an IP",
            ),
            (
                POLICY.replace("\"tag:router\": []", "\"tag:router\": [], \"router\": []"),
                "line 4",
                "must start with",
            ),
            (
                POLICY.replace("\"tag:server:22,443\"", "\"tag:nobody:22\""),
                "line 7",
                "tag:nobody is not defined in tagOwners",
            ),
            (
                POLICY.replace("{ \"src\": \"tag:server\"", "{ \"src\": \"group:eng\""),
                "line 13",
                "want a user",
            ),
            (
                POLICY.replace("\"hosts\"", "\"hostz\""),
                "line 5",
                "unknown field",
            ),
        ];
        for (text, line, why) in cases {
            let e = Policy::parse(&text, "p").unwrap_err().to_string();
            assert!(
                e.contains(line) && e.contains(why),
                "want {line}: {why}, got {e}"
            );
        }
    }

    #[test]
    fn targets_parse_like_tailscale() {
        let groups = BTreeMap::new();
        let tags = BTreeMap::from([("tag:a".to_string(), vec![])]);
        let hosts = BTreeMap::from([("h".to_string(), net("10.0.0.0/8"))]);
        let n = Names {
            groups: &groups,
            tag_owners: &tags,
            hosts: &hosts,
        };
        let d = n.dst("fd7a:115c:a1e0::1:22").unwrap();
        assert_eq!(d.target, Target::Prefix(net("fd7a:115c:a1e0::1/128")));
        assert_eq!(d.ports, vec![(22, 22)]);
        let d = n.dst("[fd7a:115c:a1e0::/48]:1-1024,8080").unwrap();
        assert_eq!(d.target, Target::Prefix(net("fd7a:115c:a1e0::/48")));
        assert_eq!(d.ports, vec![(1, 1024), (8080, 8080)]);
        assert_eq!(
            n.dst("h:*").unwrap().target,
            Target::Prefix(net("10.0.0.0/8"))
        );
        assert_eq!(
            n.dst("tag:a:*").unwrap().target,
            Target::Tag("tag:a".into())
        );
        assert_eq!(n.dst("*:*").unwrap().target, Target::Any);
        assert!(n.target("autogroup:internet", false).is_err());
        assert!(n.target("nobody", false).is_err());
        assert_eq!(parse_proto("ipv6-icmp"), Ok(58));
        assert_eq!(parse_proto("47"), Ok(47));
    }

    proptest::proptest! {
        #[test]
        fn parse_and_compile_never_panic(text in "(?s).{0,300}") {
            if let Ok(p) = Policy::parse(&text, "p") {
                let n = node(1, "a@x", &[], "100.64.0.1");
                let _ = p.acl.filter_for(&n, std::slice::from_ref(&n));
            }
        }

        #[test]
        fn generated_policies_compile(
            rules in proptest::collection::vec(
                (0usize..4, 0usize..5, proptest::option::of(0usize..3)), 0..8)
        ) {
            let srcs = ["*", "group:eng", "tag:server", "alice@example.com"];
            let dsts = ["*:*", "tag:server:22", "office:80-90", "100.64.0.0/10:443", "autogroup:internet:*"];
            let protos = ["tcp", "udp", "icmp"];
            let acls: Vec<String> = rules.iter().map(|(s, d, p)| format!(
                r#"{{"action":"accept","src":["{}"],"dst":["{}"]{}}}"#,
                srcs[*s], dsts[*d],
                p.map(|p| format!(r#","proto":"{}""#, protos[p])).unwrap_or_default()
            )).collect();
            let text = format!(
                r#"{{"groups":{{"group:eng":["alice@example.com"]}},"tagOwners":{{"tag:server":[]}},"hosts":{{"office":"192.168.1.0/24"}},"acls":[{}]}}"#,
                acls.join(",")
            );
            let p = Policy::parse(&text, "p").unwrap();
            let mut n = node(1, "alice@example.com", &["tag:server"], "100.64.0.1");
            n.routes = vec![net("192.168.0.0/16")];
            n.exit = true;
            let f = p.acl.filter_for(&n, std::slice::from_ref(&n)).unwrap();
            proptest::prop_assert!(f.len() <= rules.len());
        }
    }
}
