//! `tailgate set`, `tailgate exit-node list|suggest` and `tailgate debug via`.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use ipnet::IpNet;

use crate::api::{self, ExitNode, Request, Response};
use crate::forwarding::RoutingChange;
use crate::nat::via6;

/// `tailgate set`: change routing preferences of the running daemon; unset flags keep
/// their value. Flags keep Tailscale's names.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Subnet routes to advertise, comma-separated (4via6 prefixes accepted); "" clears.
    #[arg(long, value_name = "ROUTES")]
    pub advertise_routes: Option<String>,
    /// Masquerade tailnet sources to the LAN address (false keeps the tailnet source; the LAN
    /// then needs a route back to 100.64.0.0/10).
    #[arg(long, value_name = "BOOL")]
    pub snat_subnet_routes: Option<bool>,
    /// Offer this node as an exit node (advertises 0.0.0.0/0 and ::/0).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub advertise_exit_node: Option<bool>,
    /// Install the subnet routes peers advertise.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub accept_routes: Option<bool>,
    /// Send internet traffic through this peer (tailnet IP or name); "" stops using one.
    #[arg(long, value_name = "IP|NAME")]
    pub exit_node: Option<String>,
    /// While using an exit node, keep the local LAN reachable directly.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub exit_node_allow_lan_access: Option<bool>,
    /// HA priority among routers for the same prefix, sent to the coordination server:
    /// higher is preferred (control mode only).
    #[arg(long, value_name = "N")]
    pub route_priority: Option<u32>,
    /// Relay UDP between other nodes of the tailnet that cannot reach each other directly
    /// (control mode). Peers use it in preference to the relay servers; it needs UDP from
    /// anywhere to --peer-relay-port and the ports of its sessions just above it.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub advertise_peer_relay: Option<bool>,
    /// UDP port of the peer relay (default 41642; given alone it turns the relay on);
    /// sessions take the 256 ports above it.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..65280))]
    pub peer_relay_port: Option<u16>,
    /// Print the resulting preferences as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tailgate exit-node …`.
#[derive(Debug, Subcommand)]
pub enum ExitNodeCommand {
    /// List peers offering exit-node service.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Suggest the online exit node with the lowest measured latency (pings each over the
    /// tunnel).
    Suggest {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tailgate debug …`.
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Convert between a site ID + IPv4 prefix and its 4via6 IPv6 prefix:
    /// `via 7 10.1.1.0/24` or `via fd7a:115c:a1e0:b1a:0:7:a01:100/120`.
    Via {
        /// SITE-ID IPV4-PREFIX, or a 4via6 IPV6-PREFIX.
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
}

fn parse_routes(s: &str) -> Result<Vec<IpNet>> {
    s.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| crate::config::parse_cidr(r).map_err(|e| anyhow!("--advertise-routes: {e}")))
        .collect()
}

async fn ask(socket: &Path, req: Request) -> Result<Response> {
    match api::request(socket, &req).await? {
        Response::Error(e) => Err(anyhow!("daemon: {e}")),
        other => Ok(other),
    }
}

/// Runs `tailgate set`.
pub async fn set(socket: &Path, args: SetArgs) -> Result<()> {
    let change = RoutingChange {
        advertise_routes: args
            .advertise_routes
            .as_deref()
            .map(parse_routes)
            .transpose()?,
        snat_subnet_routes: args.snat_subnet_routes,
        advertise_exit_node: args.advertise_exit_node,
        accept_routes: args.accept_routes,
        exit_node: args.exit_node,
        exit_node_allow_lan_access: args.exit_node_allow_lan_access,
        route_priority: args.route_priority,
        advertise_peer_relay: args.advertise_peer_relay,
        peer_relay_port: args.peer_relay_port,
    };
    if change == RoutingChange::default() {
        bail!("nothing to change: give at least one flag (see `tailgate set --help`)");
    }
    match ask(socket, Request::Set { change }).await? {
        Response::Set(prefs) if args.json => println!("{}", serde_json::to_string_pretty(&prefs)?),
        Response::Set(prefs) => {
            let adv: Vec<String> = prefs.advertised().iter().map(ToString::to_string).collect();
            println!(
                "advertised routes: {}",
                if adv.is_empty() {
                    "none".into()
                } else {
                    adv.join(", ")
                }
            );
            println!("snat subnet routes: {}", prefs.snat_subnet_routes);
            println!("accept routes: {}", prefs.accept_routes);
            println!(
                "exit node: {}",
                prefs.exit_node.as_deref().unwrap_or("none")
            );
            match prefs.peer_relay_port {
                Some(port) => println!("peer relay: UDP port {port}"),
                None => println!("peer relay: off"),
            }
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
    Ok(())
}

async fn exit_nodes(socket: &Path) -> Result<Vec<ExitNode>> {
    match ask(socket, Request::ExitNodes).await? {
        Response::ExitNodes(list) => Ok(list),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// Runs `tailgate exit-node list|suggest`.
pub async fn exit_node(socket: &Path, cmd: ExitNodeCommand) -> Result<()> {
    let list = exit_nodes(socket).await?;
    match cmd {
        ExitNodeCommand::List { json: true } => {
            println!("{}", serde_json::to_string_pretty(&list)?)
        }
        ExitNodeCommand::List { json: false } => print!("{}", exit_node_table(&list)),
        ExitNodeCommand::Suggest { json } => {
            let mut best: Option<(f64, &ExitNode)> = None;
            for node in &list {
                if let Some(ms) = ping_ms(&node.ip) {
                    if best.is_none_or(|(b, _)| ms < b) {
                        best = Some((ms, node));
                    }
                }
            }
            let Some((ms, node)) = best else {
                bail!("no exit node answered a ping ({} offered)", list.len());
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"hostname": node.hostname, "ip": node.ip, "latency_ms": ms})
                );
            } else {
                println!(
                    "Suggested exit node: {} ({}, {ms:.2} ms)",
                    node.hostname, node.ip
                );
                println!(
                    "To accept this suggestion, use `tailgate set --exit-node={}`.",
                    node.hostname
                );
            }
        }
    }
    Ok(())
}

/// The `exit-node list` table, with Tailscale's columns.
pub fn exit_node_table(list: &[ExitNode]) -> String {
    let mut out = format!(
        "{:<16} {:<24} {:<10} {:<10} {}\n",
        "IP", "HOSTNAME", "COUNTRY", "CITY", "STATUS"
    );
    for n in list {
        out.push_str(&format!(
            "{:<16} {:<24} {:<10} {:<10} {}\n",
            n.ip,
            n.hostname,
            n.country.as_deref().unwrap_or("-"),
            n.city.as_deref().unwrap_or("-"),
            n.status
        ));
    }
    out
}

/// Average round trip of three pings over the tunnel, in milliseconds.
fn ping_ms(ip: &str) -> Option<f64> {
    let out = Command::new("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "1", "-q", ip])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    line.split('=')
        .nth(1)?
        .trim()
        .split('/')
        .nth(1)?
        .parse()
        .ok()
}

/// Runs `tailgate debug …`.
pub fn debug(cmd: DebugCommand) -> Result<()> {
    match cmd {
        DebugCommand::Via { args } => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            println!("{}", via6::debug_via(&args).context("debug via")?);
        }
    }
    Ok(())
}
