//! `tailgate netcheck`: the daemon's STUN checks against the relay map's servers, like
//! `tailscale netcheck`.

use std::path::Path;

use anyhow::{anyhow, Result};
use clap::Args;

use crate::api::{self, Request, Response};

/// `tailgate netcheck`.
#[derive(Debug, Args)]
#[command(
    about = "Check the network toward the relay servers: UDP, public address, NAT kind, \
             relay latencies",
    long_about = "Check the network toward the relay servers, like `tailscale netcheck`.\n\n\
        The daemon sends STUN binding requests from one fresh UDP socket per address family \
        to the STUN server of every node in the relay map it got from the coordination \
        server (at most 3 s). The report's lines:\n\n  \
        UDP: whether any STUN server answered (UDP gets out).\n  \
        IPv4 / IPv6: the public address and port the servers saw; for IPv6, whether the OS \
        has it at all.\n  \
        MappingVariesByDestIP: true when two STUN servers saw the same socket as different \
        addresses or ports (a \"hard\", symmetric NAT: peers cannot reach this node \
        directly, traffic stays on the relay); unknown with fewer than two answers.\n  \
        PortMapping: which of UPnP, NAT-PMP and PCP the gateway answers (\"not checked\" \
        when not probed).\n  \
        Nearest relay: the region with the lowest latency, not marked Avoid (the daemon \
        uses the same measurements to choose its home region).\n  \
        Relay latency: each region's best STUN round-trip time, fastest first.\n\n\
        Needs the daemon in control mode, logged in to a server with a relay map."
)]
pub struct NetcheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tailgate netcheck`.
pub async fn run(socket: &Path, args: NetcheckArgs) -> Result<()> {
    match api::request(socket, &Request::Netcheck).await? {
        Response::Netcheck(r) if args.json => {
            println!("{}", serde_json::to_string_pretty(&*r)?);
            Ok(())
        }
        Response::Netcheck(r) => {
            print!("{}", r.to_text());
            Ok(())
        }
        Response::Error(e) => Err(anyhow!("{e}")),
        other => Err(anyhow!("unexpected answer from the daemon: {other:?}")),
    }
}
