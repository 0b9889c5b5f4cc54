//! 4via6: IPv4 subnets behind a site ID, addressed through the tailnet's IPv6 range.
//!
//! Layout of a 4via6 address (DESIGN.md §4, identical to Tailscale's `tsaddr.MapVia`):
//!
//! ```text
//! bytes 0..8    fd7a:115c:a1e0:0b1a   the 4via6 range (/64)
//! bytes 8..12   site ID               big-endian u32; 0..=65535 accepted, larger reserved
//! bytes 12..16  IPv4 address
//! ```
//!
//! An IPv4 prefix `/n` maps to an IPv6 prefix `/(n + 96)`: site 7, `10.1.1.0/24` is
//! `fd7a:115c:a1e0:b1a:0:7:a01:100/120`. Targets in loopback, multicast, link-local,
//! "this network" (0.0.0.0/8), the tailnet's CGNAT range (100.64.0.0/10) and the broadcast
//! address are never translated.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The first 8 bytes of every 4via6 address.
pub const VIA_RANGE_BYTES: [u8; 8] = [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0x0b, 0x1a];

/// The 4via6 range, `fd7a:115c:a1e0:b1a::/64`.
pub const VIA_RANGE: Ipv6Net = Ipv6Net::new_assert(
    Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0x0b1a, 0, 0, 0, 0),
    64,
);

/// Largest site ID accepted; larger values are reserved.
pub const MAX_SITE_ID: u32 = 0xffff;

/// IPv4 ranges that are never 4via6 targets, with a name for error messages.
pub const FORBIDDEN_TARGETS: [(Ipv4Net, &str); 6] = [
    (
        Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
        "\"this network\"",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
        "loopback",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
        "link-local",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
        "the tailnet's CGNAT range",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
        "multicast",
    ),
    (Ipv4Net::new_assert(Ipv4Addr::BROADCAST, 32), "broadcast"),
];

/// Why a 4via6 mapping, prefix, site ID or DNS name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViaError {
    /// The site ID is not a number.
    #[error("invalid site-id {0:?}; must be decimal or hex with 0x prefix")]
    InvalidSiteId(String),
    /// The site ID is above [`MAX_SITE_ID`].
    #[error("site-id {0} is reserved: site-id values over 65535 are currently reserved")]
    ReservedSiteId(u32),
    /// An IPv6 prefix or address outside [`VIA_RANGE`].
    #[error("{0} is not a via route: 4via6 routes are inside fd7a:115c:a1e0:b1a::/64")]
    NotVia(IpNet),
    /// A 4via6 prefix shorter than /96 (it would not name a single site).
    #[error("{0}: short length, want /96 or more")]
    ShortPrefix(Ipv6Net),
    /// The IPv4 target overlaps a range that is never translated.
    #[error("4via6 target {target} overlaps {range} ({kind}), which is never translated")]
    ForbiddenTarget {
        /// The rejected IPv4 prefix (a /32 for single addresses).
        target: Ipv4Net,
        /// The forbidden range it overlaps.
        range: Ipv4Net,
        /// What the forbidden range is.
        kind: &'static str,
    },
    /// A 4via6 mapping was asked for an IPv6 prefix.
    #[error("{0}: want an IPv4 CIDR with a site ID")]
    WantIpv4(IpNet),
    /// `debug via` with one argument that is not an IPv6 prefix.
    #[error("with one argument, expect an IPv6 CIDR (got {0})")]
    WantIpv6(IpNet),
    /// Text that is not a CIDR prefix.
    #[error("invalid CIDR {0:?}: want an address and a prefix length such as 10.1.1.0/24")]
    InvalidCidr(String),
    /// `debug via` with the wrong number of arguments.
    #[error("expect either <site-id> <v4-cidr> or <v6-route>")]
    Usage,
    /// A DNS label that is not `<a-b-c-d>-via-<site>`.
    #[error("{0:?} is not a 4via6 DNS label: want <a-b-c-d>-via-<site>, e.g. 10-1-1-5-via-7")]
    InvalidLabel(String),
}

/// A 4via6 site ID (0..=65535).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SiteId(u16);

impl SiteId {
    /// The site ID `id`.
    pub const fn new(id: u16) -> Self {
        SiteId(id)
    }

    /// The site ID `id`, rejecting reserved values (> 65535).
    pub fn from_u32(id: u32) -> Result<Self, ViaError> {
        u16::try_from(id)
            .map(SiteId)
            .map_err(|_| ViaError::ReservedSiteId(id))
    }

    /// The numeric value.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SiteId {
    type Err = ViaError;

    /// Parses a site ID the way Tailscale's CLI does (Go's `strconv.ParseUint(s, 0, 32)`):
    /// decimal, `0x` hex, `0o`/leading-`0` octal or `0b` binary.
    fn from_str(s: &str) -> Result<Self, ViaError> {
        let invalid = || ViaError::InvalidSiteId(s.to_string());
        let lower = s.to_ascii_lowercase();
        let (digits, radix) = if let Some(rest) = lower.strip_prefix("0x") {
            (rest, 16)
        } else if let Some(rest) = lower.strip_prefix("0b") {
            (rest, 2)
        } else if let Some(rest) = lower.strip_prefix("0o") {
            (rest, 8)
        } else if lower.len() > 1 && lower.starts_with('0') {
            (&lower[1..], 8)
        } else {
            (lower.as_str(), 10)
        };
        // from_str_radix accepts a leading '+'; Go does not.
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return Err(invalid());
        }
        let id = u32::from_str_radix(digits, radix).map_err(|_| invalid())?;
        SiteId::from_u32(id)
    }
}

/// The 4via6 address for `v4` at `site` (no target check).
pub fn via_addr(site: SiteId, v4: Ipv4Addr) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&VIA_RANGE_BYTES);
    a[8..12].copy_from_slice(&u32::from(site.0).to_be_bytes());
    a[12..].copy_from_slice(&v4.octets());
    Ipv6Addr::from(a)
}

/// True if `addr` is inside the 4via6 range.
pub fn is_via(addr: &Ipv6Addr) -> bool {
    addr.octets()[..8] == VIA_RANGE_BYTES
}

/// The raw site ID and IPv4 address inside a 4via6 address, or `None` outside the range.
/// The site ID is not checked against [`MAX_SITE_ID`].
pub fn unmap_via_addr(addr: &Ipv6Addr) -> Option<(u32, Ipv4Addr)> {
    let o = addr.octets();
    if o[..8] != VIA_RANGE_BYTES {
        return None;
    }
    let site = u32::from_be_bytes([o[8], o[9], o[10], o[11]]);
    Some((site, Ipv4Addr::new(o[12], o[13], o[14], o[15])))
}

/// The site and IPv4 target of a 4via6 address, checking the site ID and the target.
pub fn split_via_addr(addr: &Ipv6Addr) -> Result<(SiteId, Ipv4Addr), ViaError> {
    let (site, v4) =
        unmap_via_addr(addr).ok_or(ViaError::NotVia(IpNet::V6(Ipv6Net::from(*addr))))?;
    let site = SiteId::from_u32(site)?;
    check_target(v4)?;
    Ok((site, v4))
}

/// Refuses an IPv4 address that must never be a 4via6 target.
pub fn check_target(v4: Ipv4Addr) -> Result<(), ViaError> {
    check_target_net(Ipv4Net::from(v4))
}

/// Refuses an IPv4 prefix that overlaps any of [`FORBIDDEN_TARGETS`].
pub fn check_target_net(net: Ipv4Net) -> Result<(), ViaError> {
    let t = net.trunc();
    for (range, kind) in FORBIDDEN_TARGETS {
        if range.contains(&t.network()) || t.contains(&range.network()) {
            return Err(ViaError::ForbiddenTarget {
                target: net,
                range,
                kind,
            });
        }
    }
    Ok(())
}

/// Maps an IPv4 prefix at `site` to its 4via6 prefix (`/n` → `/(n+96)`).
///
/// Like Tailscale, host bits are kept as given (`10.1.1.5/24` → `…:a01:105/120`); truncate
/// first if a canonical route is wanted.
pub fn map_via(site: SiteId, v4: Ipv4Net) -> Result<Ipv6Net, ViaError> {
    check_target_net(v4)?;
    Ok(Ipv6Net::new_assert(
        via_addr(site, v4.addr()),
        v4.prefix_len() + 96,
    ))
}

/// Maps any prefix: IPv6 prefixes are rejected with [`ViaError::WantIpv4`].
pub fn map_via_net(site: SiteId, net: IpNet) -> Result<Ipv6Net, ViaError> {
    match net {
        IpNet::V4(v4) => map_via(site, v4),
        IpNet::V6(_) => Err(ViaError::WantIpv4(net)),
    }
}

/// Splits a 4via6 prefix into its site and IPv4 prefix (`/(n+96)` → `/n`).
pub fn parse_via(net: Ipv6Net) -> Result<(SiteId, Ipv4Net), ViaError> {
    let (site, v4) = unmap_via_addr(&net.addr()).ok_or(ViaError::NotVia(IpNet::V6(net)))?;
    if net.prefix_len() < 96 {
        return Err(ViaError::ShortPrefix(net));
    }
    let site = SiteId::from_u32(site)?;
    let v4 = Ipv4Net::new_assert(v4, net.prefix_len() - 96);
    check_target_net(v4)?;
    Ok((site, v4))
}

fn parse_cidr(s: &str) -> Result<IpNet, ViaError> {
    s.parse::<IpNet>()
        .map_err(|_| ViaError::InvalidCidr(s.to_string()))
}

/// The line `tailgate debug via` prints (without the newline), same as `tailscale debug via`:
/// `[site, v4-cidr]` → the 4via6 prefix; `[v6-route]` → `site 7 (0x7), 10.1.1.0/24`.
pub fn debug_via(args: &[&str]) -> Result<String, ViaError> {
    match args {
        [route] => {
            let net = match parse_cidr(route)? {
                IpNet::V6(n) => n,
                other => return Err(ViaError::WantIpv6(other)),
            };
            let (site, v4) = parse_via(net)?;
            Ok(format!("site {site} ({:#x}), {v4}", site.get()))
        }
        [site, cidr] => {
            let site: SiteId = site.parse()?;
            Ok(map_via_net(site, parse_cidr(cidr)?)?.to_string())
        }
        _ => Err(ViaError::Usage),
    }
}

/// The MagicDNS label for `v4` at `site`: `10-1-1-5-via-7`.
pub fn via_dns_label(site: SiteId, v4: Ipv4Addr) -> String {
    let [a, b, c, d] = v4.octets();
    format!("{a}-{b}-{c}-{d}-via-{site}")
}

/// The AAAA answer for a MagicDNS label `<a-b-c-d>-via-<site>` (the first label of the name;
/// the DNS layer checks the rest of the name). The site may be decimal or `0x` hex.
pub fn parse_via_dns_label(label: &str) -> Result<Ipv6Addr, ViaError> {
    let invalid = || ViaError::InvalidLabel(label.to_string());
    let lower = label.to_ascii_lowercase();
    if lower.contains('.') {
        return Err(invalid());
    }
    let (v4, site) = lower.split_once("-via-").ok_or_else(invalid)?;
    let v4: Ipv4Addr = v4.replace('-', ".").parse().map_err(|_| invalid())?;
    let site: SiteId = site.parse()?;
    check_target(v4)?;
    Ok(via_addr(site, v4))
}

/// Parses a 4via6 address (not prefix) back into site and IPv4, for callers holding an
/// [`IpAddr`]; IPv4 addresses are [`ViaError::NotVia`].
pub fn split_via_ip(addr: IpAddr) -> Result<(SiteId, Ipv4Addr), ViaError> {
    match addr {
        IpAddr::V6(a) => split_via_addr(&a),
        IpAddr::V4(_) => Err(ViaError::NotVia(IpNet::from(addr))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn design_example() {
        let via = map_via(SiteId::new(7), v4net("10.1.1.0/24")).unwrap();
        assert_eq!(via.to_string(), "fd7a:115c:a1e0:b1a:0:7:a01:100/120");
        assert_eq!(
            parse_via(via).unwrap(),
            (SiteId::new(7), v4net("10.1.1.0/24"))
        );
    }

    #[test]
    fn debug_via_matches_tailscale_output() {
        assert_eq!(
            debug_via(&["7", "10.1.1.0/24"]).unwrap(),
            "fd7a:115c:a1e0:b1a:0:7:a01:100/120"
        );
        assert_eq!(
            debug_via(&["fd7a:115c:a1e0:b1a:0:7:a01:100/120"]).unwrap(),
            "site 7 (0x7), 10.1.1.0/24"
        );
        // Hex site IDs, host bits kept, site 0 (zero run compressed as in Go).
        assert_eq!(
            debug_via(&["0x1F", "192.168.1.5/24"]).unwrap(),
            "fd7a:115c:a1e0:b1a:0:1f:c0a8:105/120"
        );
        assert_eq!(
            debug_via(&["0", "10.0.0.0/8"]).unwrap(),
            "fd7a:115c:a1e0:b1a::a00:0/104"
        );
        assert_eq!(
            debug_via(&["fd7a:115c:a1e0:b1a:0:ffff:c0a8:100/120"]).unwrap(),
            "site 65535 (0xffff), 192.168.1.0/24"
        );
        // A /96 names every IPv4 address of a site, which includes forbidden targets.
        assert!(matches!(
            debug_via(&["fd7a:115c:a1e0:b1a::a00:0/96"]),
            Err(ViaError::ForbiddenTarget { .. })
        ));
    }

    #[test]
    fn debug_via_errors() {
        assert_eq!(debug_via(&[]), Err(ViaError::Usage));
        assert_eq!(debug_via(&["1", "2", "3"]), Err(ViaError::Usage));
        assert_eq!(
            debug_via(&["65536", "10.1.1.0/24"]),
            Err(ViaError::ReservedSiteId(65536))
        );
        assert!(matches!(
            debug_via(&["seven", "10.1.1.0/24"]),
            Err(ViaError::InvalidSiteId(_))
        ));
        assert!(matches!(
            debug_via(&["99999999999", "10.1.1.0/24"]),
            Err(ViaError::InvalidSiteId(_))
        ));
        assert!(matches!(
            debug_via(&["7", "fd00::/64"]),
            Err(ViaError::WantIpv4(_))
        ));
        assert!(matches!(
            debug_via(&["10.1.1.0/24"]),
            Err(ViaError::WantIpv6(_))
        ));
        assert!(matches!(
            debug_via(&["fd00::/120"]),
            Err(ViaError::NotVia(_))
        ));
        assert!(matches!(
            debug_via(&["fd7a:115c:a1e0:b1a:0:7::/80"]),
            Err(ViaError::ShortPrefix(_))
        ));
        assert!(matches!(
            debug_via(&["7", "10.1.1.0"]),
            Err(ViaError::InvalidCidr(_))
        ));
        assert_eq!(
            debug_via(&["fd7a:115c:a1e0:b1a:1:0:a01:100/120"]),
            Err(ViaError::ReservedSiteId(65536))
        );
        // Messages are readable.
        let msg = debug_via(&["70000", "10.1.1.0/24"])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("over 65535"), "{msg}");
    }

    #[test]
    fn site_id_syntax() {
        for (s, want) in [
            ("7", 7),
            ("0", 0),
            ("0x7", 7),
            ("0XfF", 255),
            ("010", 8),
            ("0o17", 15),
            ("0b101", 5),
            ("65535", 65535),
        ] {
            assert_eq!(s.parse::<SiteId>(), Ok(SiteId::new(want)), "{s}");
        }
        for s in ["", "+7", "-1", "0x", "7a", "08", " 7", "0x-1"] {
            assert!(
                matches!(s.parse::<SiteId>(), Err(ViaError::InvalidSiteId(_))),
                "{s}"
            );
        }
        assert_eq!(
            "0x10000".parse::<SiteId>(),
            Err(ViaError::ReservedSiteId(0x10000))
        );
        assert_eq!(
            SiteId::from_u32(4_000_000_000),
            Err(ViaError::ReservedSiteId(4_000_000_000))
        );
    }

    #[test]
    fn forbidden_targets_are_refused() {
        for net in [
            "127.0.0.0/8",
            "127.0.0.1/32",
            "224.0.0.0/24",
            "239.1.2.3/32",
            "169.254.0.0/16",
            "169.254.7.0/24",
            "100.64.0.0/10",
            "100.100.100.100/32",
            "100.127.255.0/24",
            "0.0.0.0/8",
            "0.0.0.0/0",
            "96.0.0.0/3",
            "255.255.255.255/32",
        ] {
            let err = map_via(SiteId::new(1), v4net(net)).unwrap_err();
            assert!(
                matches!(err, ViaError::ForbiddenTarget { .. }),
                "{net}: {err}"
            );
        }
        for net in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.128.0.0/9",
            "8.8.8.8/32",
        ] {
            map_via(SiteId::new(1), v4net(net)).unwrap();
        }
        let err = map_via(SiteId::new(1), v4net("127.0.0.0/8"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
        // The reverse direction refuses them too.
        let via: Ipv6Net = "fd7a:115c:a1e0:b1a:0:7:7f00:1/128".parse().unwrap();
        assert!(matches!(
            parse_via(via),
            Err(ViaError::ForbiddenTarget { .. })
        ));
        assert!(split_via_addr(&via.addr()).is_err());
    }

    #[test]
    fn address_helpers() {
        let a = via_addr(SiteId::new(8), Ipv4Addr::new(10, 1, 1, 5));
        assert_eq!(a.to_string(), "fd7a:115c:a1e0:b1a:0:8:a01:105");
        assert!(is_via(&a));
        assert!(!is_via(&"fd7a:115c:a1e0::1".parse().unwrap()));
        assert_eq!(unmap_via_addr(&a), Some((8, Ipv4Addr::new(10, 1, 1, 5))));
        assert_eq!(
            split_via_addr(&a),
            Ok((SiteId::new(8), Ipv4Addr::new(10, 1, 1, 5)))
        );
        assert_eq!(
            split_via_ip(IpAddr::V6(a)),
            Ok((SiteId::new(8), Ipv4Addr::new(10, 1, 1, 5)))
        );
        assert!(split_via_ip("10.1.1.5".parse().unwrap()).is_err());
        assert!(VIA_RANGE.contains(&a));
    }

    #[test]
    fn dns_labels() {
        let a = parse_via_dns_label("10-1-1-5-via-7").unwrap();
        assert_eq!(a.to_string(), "fd7a:115c:a1e0:b1a:0:7:a01:105");
        assert_eq!(parse_via_dns_label("10-1-1-5-VIA-0x7").unwrap(), a);
        assert_eq!(
            via_dns_label(SiteId::new(7), Ipv4Addr::new(10, 1, 1, 5)),
            "10-1-1-5-via-7"
        );
        for bad in [
            "10-1-1-via-7",
            "10-1-1-5-via-",
            "10-1-1-5",
            "via-7",
            "10-1-1-5-via-7.ts.net",
            "010-1-1-5-via-7",
            "10-1-1-256-via-7",
            "x",
        ] {
            assert!(parse_via_dns_label(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_via_dns_label("10-1-1-5-via-65536"),
            Err(ViaError::ReservedSiteId(65536))
        );
        assert!(matches!(
            parse_via_dns_label("127-0-0-1-via-7"),
            Err(ViaError::ForbiddenTarget { .. })
        ));
    }

    proptest! {
        /// map_via and parse_via are inverse for every accepted site and target.
        #[test]
        fn map_parse_round_trip(site in 0u16.., addr in any::<u32>(), len in 0u8..=32) {
            let v4 = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap();
            let site = SiteId::new(site);
            match map_via(site, v4) {
                Ok(v6) => {
                    prop_assert_eq!(v6.prefix_len(), len + 96);
                    prop_assert!(VIA_RANGE.contains(&v6.addr()));
                    prop_assert_eq!(parse_via(v6), Ok((site, v4)));
                    let text = debug_via(&[&site.to_string(), &v4.to_string()]).unwrap();
                    prop_assert_eq!(&text, &v6.to_string());
                    let back = debug_via(&[&text]).unwrap();
                    prop_assert_eq!(back, format!("site {} ({:#x}), {}", site, site.get(), v4));
                }
                Err(e) => {
                    let forbidden = matches!(e, ViaError::ForbiddenTarget { .. });
                    prop_assert!(forbidden, "unexpected error {}", e);
                }
            }
        }

        /// Arbitrary text never panics the parsers.
        #[test]
        fn parsers_never_panic(a in ".{0,40}", b in ".{0,40}") {
            let _ = debug_via(&[&a]);
            let _ = debug_via(&[&a, &b]);
            let _ = parse_via_dns_label(&a);
            let _ = a.parse::<SiteId>();
        }
    }
}
