//! Userspace networking (`tailgate daemon --tun=userspace-networking`): a node without a TUN
//! device reaches a peer through its SOCKS5 and HTTP proxies, over the embedded TCP/IP stack
//! and the WireGuard tunnel, and answers the peer's pings. Needs root (for the lab); the lab
//! removes everything on drop.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Result};
use tailgate_bench::lab::control::{ControlServer, CtlNode, TempDir};
use tailgate_bench::lab::proxy_client::{
    echo_roundtrip, echo_server, http_connect, socks5_connect,
};
use tailgate_bench::lab::{self, Lab};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");
const ECHO_PORT: u16 = 7000;

fn socks5(host: &str, port: u16) -> Result<(u8, std::net::TcpStream)> {
    socks5_connect(SocketAddr::from(([127, 0, 0, 1], 1055)), host, port)
}

#[test]
fn userspace_node_reaches_the_tailnet_through_its_proxies() {
    assert!(
        lab::is_root(),
        "needs root (run `cargo xtask test` as root)"
    );
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgus").unwrap();
    let bin = Path::new(TAILGATE);
    let server = ControlServer::start(&lab, bin, &dir).expect("server");
    let key = server.authkey(&["--reusable"]).unwrap();
    let mut user = CtlNode::start_with(
        &lab,
        bin,
        1,
        "",
        &[
            "--tun=userspace-networking",
            "--socks5-server",
            "127.0.0.1:1055",
            "--outbound-http-proxy-listen",
            "127.0.0.1:8080",
        ],
    )
    .expect("userspace node");
    let mut bravo = CtlNode::start(&lab, bin, 2, "").expect("kernel node");
    user.up(&server, &key, &["--hostname", "alpha"])
        .expect("up alpha");
    bravo
        .up(&server, &key, &["--hostname", "bravo"])
        .expect("up bravo");
    user.wait_peers(1).unwrap();
    bravo.wait_peers(1).unwrap();

    // No TUN device in the userspace node's namespace.
    let links = user.host.ns.ip(&["-o", "link"]).unwrap();
    assert!(!links.contains("tgc"), "a TUN exists: {links}");
    // The peer pings it: the embedded stack answers through the tunnel.
    let alpha_v4 = user.tailnet_v4().unwrap();
    bravo
        .wait_ping(&alpha_v4)
        .expect("bravo pings the userspace node");

    let echo = echo_server(&bravo.host.ns, ECHO_PORT, 3).expect("echo server");
    let ns = &user.host.ns;
    // SOCKS5 to the peer by name, with 1 MiB echoed back intact.
    let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let back = ns
        .spawn_inside(move || -> Result<Vec<u8>> {
            let (code, s) = socks5("bravo", ECHO_PORT)?;
            if code != 0 {
                bail!("SOCKS5 reply {code}");
            }
            echo_roundtrip(s, &data)
        })
        .unwrap()
        .join()
        .unwrap()
        .expect("SOCKS5 echo");
    assert_eq!(back.len(), 1024 * 1024);
    assert!(back
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i as u32 * 7 % 251) as u8));
    // SOCKS5 by the full MagicDNS name.
    let back = ns
        .spawn_inside(|| -> Result<Vec<u8>> {
            let (code, s) = socks5("bravo.tailnet.internal", ECHO_PORT)?;
            if code != 0 {
                bail!("SOCKS5 reply {code}");
            }
            echo_roundtrip(s, b"hello over socks")
        })
        .unwrap()
        .join()
        .unwrap()
        .expect("SOCKS5 by FQDN");
    assert_eq!(back, b"hello over socks");
    // HTTP CONNECT to the peer's address.
    let bravo_v4 = bravo.tailnet_v4().unwrap();
    let target = format!("{bravo_v4}:{ECHO_PORT}");
    let back = ns
        .spawn_inside(move || -> Result<Vec<u8>> {
            let (status, s) = http_connect(SocketAddr::from(([127, 0, 0, 1], 8080)), &target)?;
            if !status.contains(" 200 ") {
                bail!("HTTP CONNECT: {status}");
            }
            echo_roundtrip(s, b"hello over http")
        })
        .unwrap()
        .join()
        .unwrap()
        .expect("HTTP CONNECT echo");
    assert_eq!(back, b"hello over http");
    echo.join().unwrap().expect("echo server");

    // A closed port on the peer is "connection refused" (SOCKS5 reply 5).
    let code = ns
        .spawn_inside(|| socks5("bravo", 7001).map(|(c, _)| c))
        .unwrap()
        .join()
        .unwrap()
        .expect("SOCKS5 to a closed port");
    assert_eq!(code, 5);
    // Routing that needs the kernel is refused with the reason.
    let e = user
        .cli(&["set", "--advertise-routes", "10.9.0.0/24"])
        .unwrap_err();
    assert!(e.contains("userspace networking cannot forward"), "{e}");
    let _ = (&mut user, &mut bravo);
}
