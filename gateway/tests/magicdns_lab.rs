//! MagicDNS in a running daemon (static peers): `dig @100.100.100.100` from the node's own
//! namespace and from a plain WireGuard peer through the tunnel, and `tailgate dns
//! query|status`. Needs root; the lab removes everything on drop.

use tailgate_bench::lab::node::peer_spec;
use tailgate_bench::lab::{self, Keypair, Kind, Lab, Netns};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");

fn dig(ns: &Netns, args: &[&str]) -> String {
    let mut a = vec!["@100.100.100.100", "+short", "+time=2", "+tries=2"];
    a.extend_from_slice(args);
    ns.exec("dig", &a)
        .unwrap_or_else(|e| panic!("dig {args:?}: {e:#}"))
        .trim()
        .to_string()
}

#[test]
fn magicdns_answers_peer_names_in_the_daemon() {
    assert!(
        lab::is_root(),
        "network-namespace tests need root (run `cargo xtask test` as root)"
    );
    let mut lab = Lab::new().expect("lab");
    let (k1, k2) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    let mut bravo = peer_spec(&k2, 2, None);
    bravo.extra_toml = "name = \"Bravo\"\n".into();
    lab.start_with(
        Kind::tailgate(TAILGATE),
        1,
        k1.clone(),
        &[bravo],
        "\n[dns]\nhostname = \"alpha\"\n",
    )
    .expect("node 1");
    // Bravo is a plain WireGuard peer (wireguard-go, like a phone with a wg config) that uses
    // the gateway's resolver through the tunnel: 100.100.100.100 is in its allowed IPs.
    let alpha_endpoint = std::net::SocketAddr::new(
        lab.nodes[0].host.underlay_v4().into(),
        tailgate_bench::lab::node::LISTEN_PORT,
    );
    let mut alpha = peer_spec(&k1, 1, Some(alpha_endpoint));
    alpha.allowed_ips.push("100.100.100.100/32".into());
    lab.start(Kind::WireguardGo, 2, k2, &[alpha])
        .expect("node 2");
    assert_eq!(
        dig(&lab.nodes[1].host.ns, &["alpha.tailnet.internal", "A"]),
        "100.64.0.1",
        "the resolver answers a peer through the tunnel"
    );
    let node = &lab.nodes[0];
    let ns = &node.host.ns;

    assert_eq!(dig(ns, &["bravo.tailnet.internal", "A"]), "100.64.0.2");
    assert_eq!(
        dig(ns, &["bravo.tailnet.internal", "AAAA"]),
        "fd7a:115c:a1e0::2"
    );
    assert_eq!(dig(ns, &["alpha.tailnet.internal", "A"]), "100.64.0.1");
    assert_eq!(dig(ns, &["-x", "100.64.0.2"]), "bravo.tailnet.internal.");
    assert_eq!(
        dig(ns, &["10-1-1-5-via-7.tailnet.internal", "AAAA"]),
        "fd7a:115c:a1e0:b1a:0:7:a01:105"
    );
    let nx = ns
        .exec(
            "dig",
            &[
                "@100.100.100.100",
                "+time=2",
                "nobody.tailnet.internal",
                "A",
            ],
        )
        .unwrap();
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    // Over TCP too, and on the IPv6 service address.
    assert_eq!(
        dig(ns, &["+tcp", "bravo.tailnet.internal", "A"]),
        "100.64.0.2"
    );
    let v6 = ns
        .exec(
            "dig",
            &[
                "@fd7a:115c:a1e0::53",
                "+short",
                "+time=2",
                "bravo.tailnet.internal",
                "A",
            ],
        )
        .unwrap();
    assert_eq!(v6.trim(), "100.64.0.2");

    let socket = node.control_socket.clone().unwrap();
    let cli = |args: &[&str]| {
        lab::run(
            std::process::Command::new(TAILGATE)
                .arg("--socket")
                .arg(&socket)
                .args(args),
        )
        .unwrap_or_else(|e| panic!("tailgate {args:?}: {e:#}"))
    };
    let q = cli(&["dns", "query", "bravo"]);
    assert!(
        q.contains("status: NOERROR") && q.contains("100.64.0.2"),
        "{q}"
    );
    let q = cli(&["dns", "query", "100.64.0.2", "PTR"]);
    assert!(q.contains("bravo.tailnet.internal."), "{q}");
    let st: serde_json::Value = serde_json::from_str(&cli(&["dns", "status", "--json"])).unwrap();
    assert_eq!(st["running"], true, "{st}");
    let names = st["names"].to_string();
    assert!(
        names.contains("alpha.tailnet.internal") && names.contains("bravo.tailnet.internal"),
        "{st}"
    );
    assert!(st["stats"]["queries"].as_u64().unwrap_or(0) >= 8, "{st}");
}
