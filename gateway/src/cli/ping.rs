//! `tailgate ping PEER`: discovery pings to a peer through the daemon, each answer showing
//! whether it came directly or through a relay, like `tailscale ping`.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{ArgAction, Args};

use crate::api::{self, PongInfo, Request, Response};

/// `tailgate ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// Stop at the first pong that came over a direct path, and fail if none did within
    /// --c pings (`--until-direct=false`: send all of them).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub until_direct: bool,
    /// How many pings to send at most.
    #[arg(short = 'c', long = "c", default_value_t = 10, value_name = "N")]
    pub count: u32,
    /// Print each pong as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// The peer: its name, tailnet address or public key.
    pub peer: String,
}

/// Time between pings that came back through a relay (to give the direct probes they start a
/// chance).
const PAUSE: Duration = Duration::from_millis(250);

/// The line `tailgate ping` prints for a pong.
pub fn describe(p: &PongInfo) -> String {
    let via = p.via.strip_prefix("direct ").unwrap_or(&p.via);
    format!(
        "pong from {} ({}) via {via} in {:.1}ms",
        p.name, p.ip, p.rtt_ms
    )
}

/// Runs `tailgate ping`.
pub async fn run(socket: &Path, args: PingArgs) -> Result<()> {
    if args.count == 0 {
        bail!("-c must be at least 1");
    }
    for i in 0..args.count {
        let req = Request::Ping {
            peer: args.peer.clone(),
        };
        match api::request(socket, &req).await? {
            Response::Pong(p) => {
                if args.json {
                    println!("{}", serde_json::to_string(&*p)?);
                } else {
                    println!("{}", describe(&p));
                }
                if p.direct && args.until_direct {
                    return Ok(());
                }
                if !p.direct && i + 1 < args.count {
                    tokio::time::sleep(PAUSE).await;
                }
            }
            Response::Error(e) if e.starts_with("no pong") => println!("timeout: {e}"),
            Response::Error(e) => return Err(anyhow!("{e}")),
            other => return Err(anyhow!("unexpected answer from the daemon: {other:?}")),
        }
    }
    if args.until_direct {
        bail!(
            "direct connection not established after {} pings",
            args.count
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pongs_read_like_tailscale_ping() {
        let p = PongInfo {
            name: "bravo".into(),
            ip: "100.64.0.2".into(),
            via: "direct 10.99.0.2:51820".into(),
            direct: true,
            rtt_ms: 0.42,
        };
        assert_eq!(
            describe(&p),
            "pong from bravo (100.64.0.2) via 10.99.0.2:51820 in 0.4ms"
        );
        let r = PongInfo {
            via: "relay 900".into(),
            direct: false,
            ..p
        };
        assert!(describe(&r).contains("via relay 900 in"));
    }
}
