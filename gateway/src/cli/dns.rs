//! `tailgate dns status` and `tailgate dns query`.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;

use crate::api::{self, Request, Response};

/// `tailgate dns …`.
#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// The MagicDNS resolver: listen addresses, the names it answers, split-DNS routes,
    /// global nameservers and query counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the daemon's resolver, exactly as a client of 100.100.100.100 would be answered
    /// (tailnet names, split DNS and forwarding included).
    Query {
        /// A name (`peer`, `peer.tailnet.internal`, `10-1-1-5-via-7`) or, with PTR, an address.
        name: String,
        /// Record type.
        #[arg(default_value = "A")]
        rtype: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

async fn ask(socket: &Path, req: Request) -> Result<Response> {
    match api::request(socket, &req).await? {
        Response::Error(e) => Err(anyhow!("daemon: {e}")),
        other => Ok(other),
    }
}

/// Runs a `tailgate dns` command.
pub async fn run(socket: &Path, cmd: DnsCommand) -> Result<()> {
    match cmd {
        DnsCommand::Status { json } => match ask(socket, Request::DnsStatus).await? {
            Response::DnsStatus(st) if json => println!("{}", serde_json::to_string_pretty(&st)?),
            Response::DnsStatus(st) => {
                if !st.running {
                    println!(
                        "MagicDNS: off ({})",
                        st.reason.as_deref().unwrap_or("not started")
                    );
                    return Ok(());
                }
                let listen: Vec<String> = st.listen.iter().map(ToString::to_string).collect();
                println!("MagicDNS: listening on {}", listen.join(", "));
                println!(
                    "domain: {}",
                    if st.domain.is_empty() {
                        "(none yet)"
                    } else {
                        &st.domain
                    }
                );
                println!("names: {}", st.names.join(", "));
                for r in &st.split {
                    println!("split DNS: {r}");
                }
                if !st.global.is_empty() {
                    println!("nameservers: {}", st.global.join(", "));
                }
                println!("system DNS: {}", st.os);
                if let Some(s) = &st.stats {
                    println!("counters: {}", serde_json::to_string(s)?);
                }
            }
            other => bail!("unexpected answer from the daemon: {other:?}"),
        },
        DnsCommand::Query { name, rtype, json } => {
            let req = Request::DnsQuery { name, rtype };
            match ask(socket, req).await? {
                Response::DnsAnswer(a) if json => {
                    println!("{}", serde_json::to_string_pretty(&a)?)
                }
                Response::DnsAnswer(a) => {
                    println!("status: {}", a.rcode);
                    for r in a.answers.iter().chain(&a.authority) {
                        println!("{r}");
                    }
                }
                other => bail!("unexpected answer from the daemon: {other:?}"),
            }
        }
    }
    Ok(())
}
