//! `tailgate containerboot` (the container entrypoint) with Tailscale's TS_* variables, against
//! a control server in the lab. Kernel mode (`TS_USERSPACE=false`): the node comes up, a peer
//! pings it through the tunnel, `/healthz` and `/metrics` answer, SIGTERM stops it and removes
//! its TUN. Userspace mode (the default): it restarts on the registered state after its auth key
//! was revoked and reaches a peer through its SOCKS5 proxy. Bad variables stop it with the
//! reason. Needs root; the lab removes everything on drop.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use tailgate_bench::lab::control::{tailnet_v4_of, ControlServer, CtlNode, TempDir, SETTLE};
use tailgate_bench::lab::proxy_client::{echo_roundtrip, echo_server, http_get, socks5_connect};
use tailgate_bench::lab::{self, wait_for, Lab, Netns, Process};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");

/// `GET path` from the entrypoint's health/metrics listener (127.0.0.1:9002 in `ns`).
fn get(ns: &Netns, path: &str) -> Result<(u16, String)> {
    http_get(ns, SocketAddr::from(([127, 0, 0, 1], 9002)), path)
}

#[test]
fn containerboot_brings_a_node_up_from_ts_variables() {
    assert!(
        lab::is_root(),
        "needs root (run `cargo xtask test` as root)"
    );
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgboot").unwrap();
    let server = ControlServer::start(&lab, Path::new(TAILGATE), &dir).expect("server");
    let key = server.authkey(&["--reusable"]).unwrap();
    let mut peer = CtlNode::start(&lab, Path::new(TAILGATE), 1, "").expect("peer");
    peer.up(&server, &key, &["--hostname", "peer"])
        .expect("peer up");

    let host = lab.host(2).expect("container host");
    let tun = lab::unique_name("tgbt");
    let socket = format!("/run/tailgate/{tun}.sock");
    let state = dir.0.join("container-state");
    let boot = |extra: &[(&str, &str)]| {
        let mut c = host.ns.command(TAILGATE);
        c.arg("containerboot")
            .env("TS_AUTHKEY", &key)
            .env("TG_LOGIN_SERVER", &server.url)
            .env("TS_HOSTNAME", "boxed")
            .env("TS_STATE_DIR", &state)
            .env("TS_EXTRA_ARGS", "--accept-routes")
            .env("TS_TAILSCALED_EXTRA_ARGS", "--no-xdp")
            .env("TS_ENABLE_HEALTH_CHECK", "true")
            .env("TS_ENABLE_METRICS", "true")
            .env("TS_LOCAL_ADDR_PORT", "127.0.0.1:9002")
            .env("TG_TUN", &tun)
            .env("TAILGATE_SOCKET", &socket)
            .env("RUST_LOG", "info");
        for (k, v) in extra {
            c.env(k, v);
        }
        c
    };

    // Unsupported and malformed values stop it at once, with the reason.
    for (k, v, why) in [
        ("TS_SOCKS5_SERVER", "1055", "TS_SOCKS5_SERVER"),
        ("TS_ROUTES", "10.0.0.0/33", "TS_ROUTES"),
        ("TS_EXTRA_ARGS", "--ssh", "not a tailgate up flag"),
    ] {
        let out = boot(&[(k, v)]).output().expect("containerboot");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{k}={v}: {err}");
    }

    let mut ctr =
        Process::spawn("containerboot", boot(&[("TS_USERSPACE", "false")])).expect("containerboot");
    wait_for("containerboot to bring the node up", SETTLE, || {
        ctr.check_running()?;
        Ok(ctr
            .log()
            .contains("containerboot: up as boxed")
            .then_some(()))
    })
    .expect("up");
    assert!(state.join("tailgate.toml").exists());
    let st: serde_json::Value = serde_json::from_str(
        &lab::run(
            std::process::Command::new(TAILGATE).args(["--socket", &socket, "status", "--json"]),
        )
        .unwrap(),
    )
    .unwrap();
    let v4 = tailnet_v4_of(&st).expect("tailnet address");
    peer.wait_peers(1).expect("the peer sees the container");
    peer.wait_ping(&v4)
        .expect("peer → container through the tunnel");

    let (code, _) = get(&host.ns, "/healthz").expect("healthz");
    assert_eq!(code, 200);
    let (code, body) = get(&host.ns, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(body.contains("tailgate_up{interface=\""), "{body}");

    // SIGTERM to the entrypoint reaches the daemon, which removes its interface and exits.
    assert!(ctr.stop().expect("stop"), "clean exit:\n{}", ctr.log());
    let links = host.ns.ip(&["-o", "link"]).unwrap();
    assert!(!links.contains(&tun), "TUN left behind: {links}");

    // The image's default, userspace networking: no TUN; the peer is reached through SOCKS5.
    // The state dir is registered, so the revoked key still in TS_AUTHKEY does not matter.
    server
        .admin(&["authkey", "revoke", &key])
        .expect("revoke the auth key");
    let peer_v4 = peer.tailnet_v4().unwrap();
    let echo = echo_server(&peer.host.ns, 7000, 1).expect("echo server");
    let mut ctr = Process::spawn(
        "containerboot",
        boot(&[("TS_SOCKS5_SERVER", "localhost:1055")]),
    )
    .expect("containerboot (userspace)");
    wait_for(
        "containerboot (userspace) to bring the node up",
        SETTLE,
        || {
            ctr.check_running()?;
            Ok(ctr
                .log()
                .contains("containerboot: up as boxed")
                .then_some(()))
        },
    )
    .expect("up (userspace)");
    let back = host
        .ns
        .spawn_inside(move || -> Result<Vec<u8>> {
            let proxy = SocketAddr::from(([127, 0, 0, 1], 1055));
            let (code, s) = wait_for("the peer through SOCKS5", SETTLE, || {
                let (code, s) = socks5_connect(proxy, &peer_v4, 7000)?;
                Ok((code == 0).then_some((code, s)))
            })?;
            assert_eq!(code, 0);
            echo_roundtrip(s, b"from the container")
        })
        .unwrap()
        .join()
        .unwrap()
        .expect("SOCKS5 echo");
    assert_eq!(back, b"from the container");
    echo.join().unwrap().expect("echo server");
    let (code, _) = get(&host.ns, "/healthz").expect("healthz (userspace)");
    assert_eq!(code, 200);
    assert!(ctr.stop().expect("stop"), "clean exit:\n{}", ctr.log());
    let _ = &mut peer;
}
