//! The demo lab: two tailgate nodes and one wireguard-go node in network namespaces, full
//! mesh. Shows pings and short iperf3 runs through the tunnels, one node's `tailgate status`,
//! then tears everything down.
//!
//! Usage: `tailgate-demo PATH/TO/tailgate` (as root; `cargo xtask demo` does all of it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tailgate_bench::lab::{self, Keypair, Kind, Lab, PeerSpec};

/// Seconds each iperf3 run lasts.
const IPERF_SECONDS: &str = "3";

fn main() -> Result<()> {
    let bin = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow!("usage: tailgate-demo PATH/TO/tailgate"))?,
    );
    if !lab::is_root() {
        bail!("the demo creates network namespaces: run it as root (cargo xtask demo)");
    }
    let mut lab = Lab::new()?;
    let kinds = [
        Kind::tailgate(&bin),
        Kind::tailgate(&bin),
        Kind::WireguardGo,
    ];
    let keys: Vec<Keypair> = kinds
        .iter()
        .map(|_| Keypair::generate())
        .collect::<Result<_>>()?;
    println!("== starting lab: node 1 = tailgate, node 2 = tailgate, node 3 = wireguard-go");
    for (i, kind) in kinds.iter().enumerate() {
        let index = i as u8 + 1;
        let peers: Vec<PeerSpec> = (0..kinds.len())
            .filter(|&j| j != i)
            .map(|j| {
                let peer_index = j as u8 + 1;
                let endpoint = format!("10.99.0.{peer_index}:{}", lab::node::LISTEN_PORT);
                lab::node::peer_spec(
                    &keys[j],
                    peer_index,
                    Some(endpoint.parse().expect("valid endpoint")),
                )
            })
            .collect();
        lab.start(kind.clone(), index, keys[i].clone(), &peers)
            .with_context(|| format!("starting node {index} ({})", kind.label()))?;
        println!(
            "   node {index}: {:<12} {} tunnel {} / {}",
            kind.label(),
            lab.nodes[i].ifname,
            lab.nodes[i].tunnel_v4(),
            lab.nodes[i].tunnel_v6()
        );
    }

    for (from, to, v6) in [(0, 1, false), (0, 1, true), (0, 2, false), (1, 2, true)] {
        let dst = if v6 {
            lab.nodes[to].tunnel_v6().to_string()
        } else {
            lab.nodes[to].tunnel_v4().to_string()
        };
        println!(
            "\n== ping node {} ({}) -> node {} ({}) {dst}",
            from + 1,
            lab.nodes[from].kind.label(),
            to + 1,
            lab.nodes[to].kind.label()
        );
        let out = lab.nodes[from].ping(&dst, 3)?;
        for line in out
            .lines()
            .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt"))
        {
            println!("   {line}");
        }
    }

    for (from, to) in [(0, 1), (0, 2)] {
        println!(
            "\n== iperf3 {IPERF_SECONDS}s TCP node {} ({}) -> node {} ({})",
            from + 1,
            lab.nodes[from].kind.label(),
            to + 1,
            lab.nodes[to].kind.label()
        );
        let server = lab::Process::spawn("iperf3", {
            let mut c = lab.nodes[to].host.ns.command("iperf3");
            c.args(["-s", "-1"]);
            c
        })?;
        std::thread::sleep(Duration::from_millis(300));
        let dst = lab.nodes[to].tunnel_v4().to_string();
        let out = lab.nodes[from].exec("iperf3", &["-c", &dst, "-t", IPERF_SECONDS, "-f", "m"])?;
        for line in out
            .lines()
            .filter(|l| l.contains("sender") || l.contains("receiver"))
        {
            println!("   {line}");
        }
        drop(server);
    }

    println!("\n== tailgate status (node 1)");
    print!("{}", lab.nodes[0].tailgate_status(false)?);
    println!(
        "\n== wg show {} (node 1, the standard wg tool)",
        lab.nodes[0].ifname
    );
    print!(
        "{}",
        lab.nodes[0].wg(&["show", &lab.nodes[0].ifname.clone()])?
    );

    for node in lab.nodes.iter_mut() {
        node.check_running()?;
    }
    drop(lab);
    println!("\n== lab torn down (namespaces, links, XDP programs and processes removed)");
    Ok(())
}
