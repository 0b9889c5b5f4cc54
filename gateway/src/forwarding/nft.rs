//! The nftables fallback path: masquerade of tailnet sources leaving through other interfaces,
//! in a table of our own that is replaced atomically and deleted on shutdown. Packets the XDP
//! fast path has NATed already carry the router's LAN address, so these rules never touch
//! them; TCP/UDP ports stay below the fast path's range.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;

use crate::prefs::RoutingPrefs;

/// The tailnet's IPv4 range.
pub const TAILNET_V4: &str = "100.64.0.0/10";
/// The tailnet's IPv6 range.
pub const TAILNET_V6: &str = "fd7a:115c:a1e0::/48";

/// Name of the nftables table for interface `ifname`.
pub fn table_name(ifname: &str) -> String {
    format!(
        "tailgate_{}",
        ifname.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

/// Ports (and ICMP echo IDs) the kernel's masquerade may use: below the XDP fast path's SNAT
/// range (61000–65535), so the two never hand out the same source port on a LAN address.
pub const MASQUERADE_PORTS: &str = "1024-60999";

/// The masquerade rules for packets matching `cond`: TCP and UDP with their ports kept clear
/// of the XDP range, then everything else (NAT statements end the chain walk).
fn masquerade(cond: String) -> [String; 2] {
    [
        format!("{cond} meta l4proto {{ tcp, udp }} masquerade to :{MASQUERADE_PORTS}"),
        format!("{cond} masquerade"),
    ]
}

fn set_of(nets: &[String]) -> String {
    format!("{{ {} }}", nets.join(", "))
}

/// The ruleset for `prefs` on TUN `ifname`: masquerade everything from the tailnet when SNAT
/// is on; with SNAT off, only 4via6 traffic (always SNATed) and exit traffic (to anything but
/// the advertised routes). Empty when nothing needs NAT.
pub fn ruleset(ifname: &str, prefs: &RoutingPrefs) -> Vec<String> {
    let out = format!("oifname != \"{ifname}\"");
    let mut rules = Vec::new();
    if !prefs.is_router() {
        return rules;
    }
    if prefs.snat_subnet_routes {
        rules.extend(masquerade(format!("{out} ip saddr {TAILNET_V4}")));
        rules.extend(masquerade(format!("{out} ip6 saddr {TAILNET_V6}")));
        return rules;
    }
    let via_lans: Vec<String> = prefs
        .via
        .iter()
        .flat_map(|v| v.routes.iter().map(|r| r.to_string()))
        .collect();
    if !via_lans.is_empty() {
        rules.extend(masquerade(format!(
            "{out} ip saddr {TAILNET_V4} ip daddr {}",
            set_of(&via_lans)
        )));
    }
    if prefs.advertise_exit_node {
        let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = prefs
            .advertise_routes
            .iter()
            .partition(|n| matches!(n, IpNet::V4(_)));
        let not_in = |nets: &[IpNet]| -> String {
            if nets.is_empty() {
                String::new()
            } else {
                let s: Vec<String> = nets.iter().map(ToString::to_string).collect();
                format!(" daddr != {}", set_of(&s))
            }
        };
        let v4_cond = not_in(&v4).replace(" daddr", " ip daddr");
        let v6_cond = not_in(&v6).replace(" daddr", " ip6 daddr");
        rules.extend(masquerade(format!("{out} ip saddr {TAILNET_V4}{v4_cond}")));
        rules.extend(masquerade(format!("{out} ip6 saddr {TAILNET_V6}{v6_cond}")));
    }
    rules
}

/// The `nft -f` script that replaces our table with `rules` (or just deletes it).
pub fn script(table: &str, rules: &[String]) -> String {
    let mut s = format!("add table inet {table}\ndelete table inet {table}\n");
    if !rules.is_empty() {
        s.push_str(&format!(
            "table inet {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n"
        ));
        for r in rules {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n}\n");
    }
    s
}

/// Runs an `nft -f -` script.
fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install the nftables package)")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("nft stdin"))?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Installs (atomically replacing) the NAT rules for `prefs`; returns the rules in force.
pub fn apply(ifname: &str, prefs: &RoutingPrefs) -> Result<Vec<String>> {
    let rules = ruleset(ifname, prefs);
    nft(&script(&table_name(ifname), &rules))?;
    Ok(rules)
}

/// Deletes our table.
pub fn remove(ifname: &str) -> Result<()> {
    nft(&script(&table_name(ifname), &[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefs::ViaSite;

    #[test]
    fn snat_on_masquerades_the_tailnet() {
        let p = RoutingPrefs {
            advertise_routes: vec!["192.168.1.0/24".parse().unwrap()],
            ..RoutingPrefs::default()
        };
        assert_eq!(
            ruleset("tg0", &p),
            vec![
                "oifname != \"tg0\" ip saddr 100.64.0.0/10 meta l4proto { tcp, udp } masquerade to :1024-60999",
                "oifname != \"tg0\" ip saddr 100.64.0.0/10 masquerade",
                "oifname != \"tg0\" ip6 saddr fd7a:115c:a1e0::/48 meta l4proto { tcp, udp } masquerade to :1024-60999",
                "oifname != \"tg0\" ip6 saddr fd7a:115c:a1e0::/48 masquerade"
            ]
        );
        assert!(ruleset("tg0", &RoutingPrefs::default()).is_empty());
    }

    #[test]
    fn snat_off_still_masquerades_via_and_exit_traffic() {
        let p = RoutingPrefs {
            advertise_routes: vec!["192.168.1.0/24".parse().unwrap()],
            via: vec![ViaSite {
                site: 7,
                routes: vec!["10.1.1.0/24".parse().unwrap()],
            }],
            snat_subnet_routes: false,
            advertise_exit_node: true,
            ..RoutingPrefs::default()
        };
        let r = ruleset("tg0", &p);
        assert_eq!(r.len(), 6);
        assert_eq!(
            r[1],
            "oifname != \"tg0\" ip saddr 100.64.0.0/10 ip daddr { 10.1.1.0/24 } masquerade"
        );
        assert_eq!(
            r[2],
            "oifname != \"tg0\" ip saddr 100.64.0.0/10 ip daddr != { 192.168.1.0/24 } meta l4proto { tcp, udp } masquerade to :1024-60999"
        );
        assert_eq!(
            r[5],
            "oifname != \"tg0\" ip6 saddr fd7a:115c:a1e0::/48 masquerade"
        );
        let s = script("tailgate_tg0", &r);
        assert!(s.starts_with("add table inet tailgate_tg0\ndelete table inet tailgate_tg0\ntable inet tailgate_tg0 {"));
    }
}
