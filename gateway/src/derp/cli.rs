//! `tailgate derp serve`: runs a relay server (and, beside it, the STUN server nodes use to
//! learn their public address).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use rand_core::OsRng;
use tokio_rustls::TlsAcceptor;
use x25519_dalek::StaticSecret;

use super::client::ConnectOptions;
use super::map::RelayNode;
use super::server::{Server, ServerOptions, DEFAULT_QUEUE_DEPTH};
use super::tls::{self, ServerCert, Verification};
use crate::atomic_file;
use crate::stun::server::StunCounters;
use crate::wg::Key;
use crate::xdp::{AttachPreference, XdpStunResponder};

/// Default state directory of a relay server (its key and self-signed certificate).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tailgate-derp";

/// `tailgate derp`.
#[derive(Debug, Args)]
#[command(
    about = "Relay server for nodes that cannot reach each other directly",
    long_about = "Relay server for nodes that cannot reach each other directly.\n\n\
        `tailgate derp serve` relays WireGuard packets, already encrypted end to end, between \
        nodes identified by their node keys, over TLS on TCP (an HTTP upgrade, so it passes \
        HTTP proxies). Clients must prove they hold their key. Several servers of one region \
        mesh (--mesh-with, --mesh-psk-file) so that clients on different servers reach each \
        other. Add the server to the relay map with the JSON it prints at start.\n\n\
        Typical set-up:\n  \
        tailgate derp serve --hostname relay.example.net --cert fullchain.pem --key privkey.pem\n  \
        tailgate derp serve --hostname relay.lan   # self-signed; the map pins its SHA-256"
)]
pub struct DerpArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DerpCommand,
}

/// `tailgate derp …` subcommands.
#[derive(Debug, Subcommand)]
pub enum DerpCommand {
    /// Run a relay server until SIGINT/SIGTERM.
    Serve(ServeArgs),
}

/// `tailgate derp serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port of the relay (HTTPS; HTTP with --plain-http).
    #[arg(long, default_value = "[::]:443")]
    pub listen: SocketAddr,
    /// The server's DNS name: the certificate's name and the relay map's HostName.
    #[arg(long)]
    pub hostname: String,
    /// PEM certificate chain. Without --cert/--key a self-signed certificate is generated
    /// once in the state directory and the relay map pins its SHA-256.
    #[arg(long, requires = "key", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Serve plain HTTP, for a server behind a TLS-terminating proxy.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    pub plain_http: bool,
    /// Where the server keeps its key (relay.key) and self-signed certificate.
    #[arg(long, env = "TAILGATE_DERP_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Another server of this region to mesh with: https://HOST:PORT (web PKI),
    /// https://HOST:PORT#sha256=HEX (pinned certificate) or http://HOST:PORT. Repeatable.
    #[arg(long, value_name = "URL")]
    pub mesh_with: Vec<String>,
    /// File holding the region's mesh secret (the same on every server of the region).
    #[arg(long, value_name = "FILE")]
    pub mesh_psk_file: Option<PathBuf>,
    /// Sustained rate each client may send, bytes per second (0: unlimited).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub rate_limit: u64,
    /// Burst each client may send above --rate-limit, bytes (at least 64 KiB is allowed).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub rate_burst: u64,
    /// UDP port of the STUN server beside the relay, on the --listen address (0: none).
    #[arg(long, default_value_t = 3478, value_name = "PORT")]
    pub stun_port: u16,
    /// Answer STUN binding requests in XDP (`XDP_TX`) on this interface, before they reach
    /// userspace; the userspace server answers what the program passes.
    #[arg(long, value_name = "IFACE")]
    pub stun_xdp: Option<String>,
    /// Serve Prometheus /metrics and /healthz on this address (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Region ID printed in the relay map entry.
    #[arg(long, default_value_t = 900)]
    pub region_id: u32,
    /// Node name printed in the relay map entry [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
}

/// Runs `tailgate derp …`.
pub fn run(args: DerpArgs) -> Result<()> {
    match args.command {
        DerpCommand::Serve(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(serve(a)),
    }
}

/// Loads the server key from `dir/relay.key`, creating it (0600, atomically) on first start.
pub fn load_or_create_key(dir: &Path) -> Result<StaticSecret> {
    let path = dir.join("relay.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = Key::from_base64(&text)
                .map_err(|e| anyhow!("{}: not a base64 private key: {e}", path.display()))?;
            Ok(StaticSecret::from(*key.as_bytes()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = StaticSecret::random_from_rng(OsRng);
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let text = format!("{}\n", Key::from_bytes(secret.to_bytes()).to_base64());
            atomic_file::write(&path, text.as_bytes(), 0o600)?;
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Parses a `--mesh-with` URL into connection options (resolving the host).
pub async fn mesh_peer(url: &str) -> Result<ConnectOptions> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("mesh peer {url:?}: expected https://HOST:PORT[#sha256=HEX] or http://HOST:PORT");
    };
    let (hostport, pin) = match rest.split_once('#') {
        Some((hp, frag)) => {
            let hex = frag
                .strip_prefix("sha256=")
                .ok_or_else(|| anyhow!("mesh peer {url:?}: the fragment must be sha256=HEX"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("mesh peer {url:?}: sha256 must be 64 hex digits");
            }
            (hp, Some(hex.to_ascii_lowercase()))
        }
        None => (rest, None),
    };
    let hostport = hostport.trim_end_matches('/');
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => bail!("mesh peer {url:?}: expected HOST:PORT"),
    };
    let addr = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("mesh peer {url:?}: resolving {hostport}"))?
        .next()
        .ok_or_else(|| anyhow!("mesh peer {url:?}: {hostport} has no address"))?;
    let verification = match pin {
        Some(p) => Verification::Pinned(p),
        None => Verification::WebPki,
    };
    let mut o = ConnectOptions::new(host, addr, verification);
    if !tls {
        o.tls = None;
    }
    Ok(o)
}

async fn serve(a: ServeArgs) -> Result<()> {
    let private_key = load_or_create_key(&a.state_dir)?;
    let mesh_key = match &a.mesh_psk_file {
        Some(p) => {
            let k = std::fs::read_to_string(p)
                .with_context(|| format!("reading the mesh secret {}", p.display()))?;
            let k = k.trim().to_string();
            if k.len() < 16 {
                bail!(
                    "{}: the mesh secret must be at least 16 characters",
                    p.display()
                );
            }
            Some(k)
        }
        None if !a.mesh_with.is_empty() => bail!("--mesh-with needs --mesh-psk-file"),
        None => None,
    };
    let (acceptor, fingerprint) = if a.plain_http {
        (None, None)
    } else {
        let cert = match (&a.cert, &a.key) {
            (Some(c), Some(k)) => ServerCert::from_pem_files(c, k)?,
            _ => ServerCert::self_signed(&a.state_dir, &a.hostname)?,
        };
        let pin = a.cert.is_none().then(|| cert.fingerprint());
        (Some(TlsAcceptor::from(tls::server_config(cert)?)), pin)
    };
    let server = Server::new(ServerOptions {
        private_key,
        mesh_key,
        rate_limit: (a.rate_limit > 0).then_some((a.rate_limit, a.rate_burst)),
        queue_depth: DEFAULT_QUEUE_DEPTH,
    });
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("relay listener on {}", a.listen))?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server.clone().serve(listener, acceptor));
    let stun = Arc::new(StunCounters::default());
    if a.stun_port != 0 {
        let addr = SocketAddr::new(a.listen.ip(), a.stun_port);
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("STUN socket on {addr}"))?;
        log::info!("STUN server on {addr}");
        tasks.spawn(crate::stun::server::serve(socket, stun.clone()));
    }
    let stun_xdp = match (&a.stun_xdp, a.stun_port) {
        (Some(_), 0) => bail!("--stun-xdp needs a STUN port (--stun-port is 0)"),
        (Some(ifname), port) => {
            let r = XdpStunResponder::attach(ifname, port, AttachPreference::Auto)
                .map_err(|e| anyhow!("--stun-xdp {ifname}: {e}"))?;
            log::info!(
                "STUN answered in XDP on {ifname} ({} mode)",
                r.attach_mode().unwrap_or("unknown")
            );
            Some(Arc::new(r))
        }
        (None, _) => None,
    };
    for url in &a.mesh_with {
        let peer = mesh_peer(url).await?;
        let link = super::mesh::spawn_link(server.clone(), peer);
        tasks.spawn(async move {
            let _ = link.await;
        });
    }
    if let Some(addr) = a.metrics_listen {
        let listener = crate::metrics::bind(addr).await?;
        let server = server.clone();
        let stun = stun.clone();
        let stun_xdp = stun_xdp.clone();
        tasks.spawn(crate::metrics::serve_with(listener, move |path: String| {
            let (server, stun, stun_xdp) = (server.clone(), stun.clone(), stun_xdp.clone());
            async move {
                let mut extra = stun.render();
                if let Some(c) = stun_xdp.as_ref().and_then(|x| x.counters().ok()) {
                    extra.push_str(&c.render());
                }
                match path.as_str() {
                    "/metrics" => (
                        200,
                        "text/plain; version=0.0.4",
                        super::metrics::render(&server.snapshot(), &extra),
                    ),
                    "/healthz" => (200, "text/plain", "ok\n".to_string()),
                    _ => (
                        404,
                        "text/plain",
                        "not found: try /metrics or /healthz\n".into(),
                    ),
                }
            }
        }));
    }
    let node = RelayNode {
        name: a.node_name.clone().unwrap_or_else(|| a.hostname.clone()),
        region_id: a.region_id,
        host_name: a.hostname.clone(),
        derp_port: a.listen.port(),
        stun_port: match a.stun_port {
            0 => -1,
            p => i32::from(p),
        },
        cert_sha256: fingerprint.clone(),
        public_key: Some(server.public_key().to_base64()),
        plain_http: a.plain_http,
        ..RelayNode::default()
    };
    log::info!(
        "relay {} listening on {} ({}); public key {}",
        a.hostname,
        a.listen,
        if a.plain_http { "plain HTTP" } else { "TLS" },
        server.public_key().to_base64()
    );
    if let Some(fp) = &fingerprint {
        log::info!("self-signed certificate, SHA-256 {fp}");
    }
    println!(
        "relay map node: {}",
        serde_json::to_string(&node).context("relay map node")?
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        Some(r) = tasks.join_next() => {
            r.context("relay task")?;
            bail!("a relay task ended");
        }
    }
    log::info!("relay stopping");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mesh_urls_parse_or_fail_clearly() {
        let o = mesh_peer("https://127.0.0.1:8443").await.unwrap();
        assert_eq!(o.tls, Some(Verification::WebPki));
        assert_eq!(o.host, "127.0.0.1");
        let pin = "AB".repeat(32);
        let o = mesh_peer(&format!("https://[::1]:443#sha256={pin}"))
            .await
            .unwrap();
        assert_eq!(o.tls, Some(Verification::Pinned("ab".repeat(32))));
        assert_eq!(o.host, "::1");
        assert_eq!(mesh_peer("http://127.0.0.1:80").await.unwrap().tls, None);
        for bad in [
            "relay:443",
            "https://127.0.0.1",
            "https://127.0.0.1:443#sha256=zz",
            "https://127.0.0.1:443#md5=00",
        ] {
            assert!(mesh_peer(bad).await.is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_is_created_once_and_kept() {
        let dir = crate::test_util::TempDir::new("relay-key");
        let k1 = load_or_create_key(dir.path()).unwrap();
        let k2 = load_or_create_key(dir.path()).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("relay.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("relay.key"), "junk").unwrap();
        assert!(load_or_create_key(dir.path()).is_err());
    }
}
