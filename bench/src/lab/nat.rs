//! NAT boxes for the lab: a node's namespace is taken off the underlay and put behind a
//! namespace that masquerades its traffic onto the underlay, like a home router.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use super::{veth, Host, Lab, Netns};

/// How the NAT maps a node's UDP flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Linux masquerade: the source port is kept when it is free, so one socket keeps one
    /// public address and port whatever the destination (endpoint-independent mapping);
    /// inbound only for flows the inside started (address-and-port-dependent filtering),
    /// unsolicited packets dropped.
    EndpointIndependent,
    /// `masquerade random`: every new destination gets a random public port (a "symmetric"
    /// NAT), so the port a STUN server sees is useless to peers.
    Symmetric,
    /// [`NatKind::EndpointIndependent`], but packets the box itself DNATs (the port mappings
    /// miniupnpd adds, see [`super::upnp`]) are let in to the inside.
    Upnp,
}

/// A NAT namespace in front of a node. Dropping it removes the namespace.
pub struct NatBox {
    /// The NAT's lab host (its outside address is the host's underlay address).
    pub host: Host,
}

/// Puts the node in `inside` (a lab host namespace) behind a new NAT box at lab host
/// `index`: the node loses its underlay link and gets `192.168.<index>.2/24` with a default
/// route through the NAT.
pub fn put_behind_nat(lab: &Lab, inside: &Netns, index: u8, kind: NatKind) -> Result<NatBox> {
    let host = lab.host(index)?;
    inside.ip(&["link", "del", "eth0"])?;
    let net = format!("192.168.{index}");
    veth(
        inside,
        "eth0",
        &[&format!("{net}.2/24")],
        &host.ns,
        "lan0",
        &[&format!("{net}.1/24")],
    )?;
    inside.ip(&["route", "add", "default", "via", &format!("{net}.1")])?;
    host.ns.sysctl("net.ipv4.ip_forward", "1")?;
    let masquerade = match kind {
        NatKind::EndpointIndependent | NatKind::Upnp => "masquerade",
        NatKind::Symmetric => "masquerade random",
    };
    let let_mapped_in = if kind == NatKind::Upnp {
        "iifname \"eth0\" ct status dnat accept; "
    } else {
        ""
    };
    // Like a home router, the box drops unsolicited packets addressed to itself. That also
    // keeps such a packet from leaving a conntrack entry that would make the masquerade pick
    // another port for a later flow the other way (an unconfirmed entry is never inserted).
    let rules = format!(
        "table ip labnat {{\n\
           chain post {{ type nat hook postrouting priority srcnat; oifname \"eth0\" {masquerade}; }}\n\
           chain to_box {{ type filter hook input priority filter; iifname \"eth0\" ct state new drop; }}\n\
           chain through_box {{ type filter hook forward priority filter; {let_mapped_in}iifname \"eth0\" ct state new drop; }}\n\
         }}\n"
    );
    load_nft(&host.ns, &rules).context("the NAT rules")?;
    Ok(NatBox { host })
}

/// Loads an nftables ruleset into `ns` (through a temporary file).
fn load_nft(ns: &Netns, rules: &str) -> Result<()> {
    let file = std::env::temp_dir().join(format!("{}.nft", super::unique_name("labnft")));
    std::fs::write(&file, rules).context("writing nftables rules")?;
    let loaded = ns.exec("nft", &["-f", file.to_str().context("temp path")?]);
    let _ = std::fs::remove_file(&file);
    loaded.map(drop)
}

/// The nftables table of [`block_wireguard`].
const BLOCK_TABLE: &str = "labblock";

/// UDP to and from a peer's WireGuard port dropped in a namespace; deleted on drop.
pub struct Blocked {
    ns: String,
}

/// Drops UDP to and from port 51820 of the peer at `v4`/`v6` in `ns` while the returned
/// guard lives, so that only the relays connect the two nodes.
pub fn block_wireguard(ns: &Netns, (v4, v6): (Ipv4Addr, Ipv6Addr)) -> Result<Blocked> {
    let rules = format!(
        "table inet {BLOCK_TABLE} {{\n\
           chain in {{ type filter hook input priority 0;\n\
             ip saddr {v4} udp sport 51820 drop; ip6 saddr {v6} udp sport 51820 drop; }}\n\
           chain out {{ type filter hook output priority 0;\n\
             ip daddr {v4} udp dport 51820 drop; ip6 daddr {v6} udp dport 51820 drop; }}\n\
         }}\n"
    );
    load_nft(ns, &rules).context("the blocking rules")?;
    Ok(Blocked {
        ns: ns.name().to_string(),
    })
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "delete", "table", "inet"])
            .arg(BLOCK_TABLE)
            .status();
    }
}
