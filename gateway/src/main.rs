//! The `tailgate` command: node daemon and the CLI that talks to it.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};

use tailgate::api::{self, Request, Response};
use tailgate::daemon::{self, DaemonOptions};
use tailgate::wg::Key;

/// tailgate: a self-hostable mesh VPN node and XDP-accelerated WireGuard gateway.
#[derive(Parser)]
#[command(name = "tailgate", version, about, long_about = None)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "TAILGATE_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon: WireGuard interface, routes and XDP fast path from a config file.
    ///
    /// Stops cleanly on SIGINT/SIGTERM, removing the interface, its routes, the XDP program
    /// and its sockets. The standard `wg` tool manages the interface through
    /// /var/run/wireguard/<name>.sock.
    Daemon {
        /// TOML configuration file (see config/README.md for every key).
        #[arg(long, short, default_value = "/etc/tailgate/tailgate.toml")]
        config: PathBuf,
        /// Do not load the XDP program, even if the kernel supports it.
        #[arg(long)]
        no_xdp: bool,
        /// XDP attach mode for wan_ingress, overriding interface.xdp in the config.
        #[arg(long, value_enum)]
        xdp: Option<tailgate::config::XdpMode>,
        /// Turn off TUN offloads (TSO/USO super-packets) and UDP GSO/GRO: one packet per
        /// syscall, as wireguard-go does. For comparison and troubleshooting.
        #[arg(long, env = "TG_NO_OFFLOAD")]
        no_offload: bool,
        /// Serve Prometheus `/metrics` and `/healthz` (200 when up and, in control mode,
        /// connected; 503 with the reason otherwise) on this address, e.g. [::]:9002.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Point the system's resolver at MagicDNS (through systemd-resolved, else by
        /// rewriting /etc/resolv.conf, restored on exit), overriding `dns.accept_dns`
        /// (default true). `--accept-dns=false` leaves the system's DNS alone.
        #[arg(
            long,
            env = "TS_ACCEPT_DNS",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = clap::builder::BoolishValueParser::new(),
        )]
        accept_dns: Option<bool>,
        /// TUN device name (overrides interface.name), or `userspace-networking`: no TUN and
        /// no NET_ADMIN needed; an embedded TCP/IP stack reaches the tailnet, for the SOCKS5
        /// and HTTP proxies (subnet routing and exit nodes need a TUN).
        #[arg(long, value_name = "NAME|userspace-networking")]
        tun: Option<String>,
        /// Serve a SOCKS5 proxy into the tailnet on this address (e.g. localhost:1055).
        #[arg(long, value_name = "ADDR:PORT")]
        socks5_server: Option<std::net::SocketAddr>,
        /// Serve an HTTP proxy (CONNECT and http:// URLs) into the tailnet on this address.
        #[arg(long, value_name = "ADDR:PORT")]
        outbound_http_proxy_listen: Option<std::net::SocketAddr>,
    },
    /// Show the interface, peers, handshakes, transfer and data-path mode of the running daemon.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Connect to a coordination server: register with an auth key and start the session
    /// (the daemon must run in control mode, with a [control] table in its config).
    Up {
        /// The server's login URL, tg://HOST:PORT#KEY (default: control.login_server).
        #[arg(long)]
        login_server: Option<String>,
        /// Auth key from `tailgate control authkey create` (not needed once registered).
        #[arg(long, env = "TAILGATE_AUTH_KEY")]
        auth_key: Option<String>,
        /// Hostname to register (the server makes it unique).
        #[arg(long)]
        hostname: Option<String>,
        /// Subnet routes to advertise, comma separated (10.0.0.0/16,192.168.1.0/24).
        #[arg(long, value_delimiter = ',')]
        advertise_routes: Vec<ipnet::IpNet>,
        /// Offer exit-node service.
        #[arg(long)]
        advertise_exit_node: bool,
        /// Install the subnet routes other nodes advertise.
        #[arg(long)]
        accept_routes: bool,
        /// HA priority among routers for the same prefix: higher is preferred (default 0).
        #[arg(long, default_value_t = 0)]
        route_priority: u32,
        /// Replace the node's WireGuard key now, without dropping its tunnels (done
        /// automatically when the key is within 14 days of expiry).
        #[arg(long)]
        rotate_key: bool,
    },
    /// Disconnect from the coordination server: the session stops and peers are removed
    /// (the interface stays).
    Down,
    /// Change routing preferences of the running daemon (subnet routes, SNAT, exit node, …).
    Set(tailgate::cli::routing::SetArgs),
    /// Exit nodes offered by peers.
    #[command(subcommand)]
    ExitNode(tailgate::cli::routing::ExitNodeCommand),
    /// Ping a peer with discovery messages and show the path each answer took (direct
    /// IP:PORT or a relay region); by default until a direct path answers.
    Ping(tailgate::cli::ping::PingArgs),
    // Help text (short and long) comes from `NetcheckArgs`.
    Netcheck(tailgate::cli::netcheck::NetcheckArgs),
    /// MagicDNS: the resolver's state, and queries answered by it.
    #[command(subcommand)]
    Dns(tailgate::cli::dns::DnsCommand),
    /// Debugging helpers.
    #[command(subcommand)]
    Debug(tailgate::cli::routing::DebugCommand),
    /// Generate a new private key and print it in base64 (like `wg genkey`).
    Genkey,
    /// Read a base64 private key on stdin and print its public key (like `wg pubkey`).
    Pubkey,
    // Help text (short and long) comes from `ControlArgs`.
    Control(tailgate::control::cli::ControlArgs),
    // Help text (short and long) comes from `DerpArgs`.
    Derp(tailgate::derp::cli::DerpArgs),
    /// Container entrypoint: reads Tailscale's TS_* variables (TS_AUTHKEY, TS_HOSTNAME,
    /// TS_STATE_DIR, TS_ROUTES, TS_ACCEPT_DNS, TS_EXTRA_ARGS, TS_TAILSCALED_EXTRA_ARGS,
    /// TS_ENABLE_HEALTH_CHECK, TS_ENABLE_METRICS, TS_LOCAL_ADDR_PORT, TS_DEBUG_MTU) and TG_*
    /// ones (TG_LOGIN_SERVER, TG_TUN, TG_PORT), writes the daemon's config into the state
    /// directory, starts the daemon and brings the node up. See docs/container.md.
    Containerboot,
    /// Run once as root on a NAS whose package runs the daemon as an unprivileged user
    /// (Synology DSM 7): grant the binary CAP_NET_ADMIN, CAP_NET_RAW, CAP_NET_BIND_SERVICE,
    /// CAP_BPF and CAP_PERFMON as file capabilities, make /dev/net/tun usable and turn on IP
    /// forwarding. `--check` only reports whether a kernel TUN can be used.
    ConfigureHost(tailgate::configure_host::ConfigureHostArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,netlink_packet_route=error"),
    )
    .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Daemon {
            config,
            no_xdp,
            xdp,
            no_offload,
            metrics_listen,
            accept_dns,
            tun,
            socks5_server,
            outbound_http_proxy_listen,
        } => {
            // Before the runtime's threads exist: they copy this thread's capabilities.
            tailgate::ambient_caps::pass_on_to_children();
            runtime()?.block_on(daemon::run(DaemonOptions {
                config,
                socket: cli.socket,
                no_xdp,
                no_offload,
                xdp,
                metrics_listen,
                accept_dns,
                tun,
                socks5_server,
                http_proxy_listen: outbound_http_proxy_listen,
            }))
        }
        Command::Status { json } => {
            let response = runtime()?.block_on(api::request(&cli.socket, &Request::Status))?;
            match response {
                Response::Status(s) if json => println!("{}", serde_json::to_string_pretty(&s)?),
                Response::Status(s) => print!("{}", s.to_text()),
                Response::Error(e) => return Err(anyhow!("daemon: {e}")),
                other => return Err(anyhow!("unexpected answer from the daemon: {other:?}")),
            }
            Ok(())
        }
        Command::Up {
            login_server,
            auth_key,
            hostname,
            advertise_routes,
            advertise_exit_node,
            accept_routes,
            route_priority,
            rotate_key,
        } => {
            let req = Request::Up(Box::new(api::UpRequest {
                login_server,
                auth_key,
                hostname,
                advertise_routes,
                advertise_exit_node,
                accept_routes,
                route_priority,
                rotate_key,
            }));
            match runtime()?.block_on(api::request(&cli.socket, &req))? {
                Response::Up(r) => {
                    println!(
                        "up: {} ({}) on {}",
                        r.name,
                        r.addresses.join(", "),
                        r.login_server
                    );
                    Ok(())
                }
                Response::Error(e) => Err(anyhow!("{e}")),
                other => Err(anyhow!("unexpected answer from the daemon: {other:?}")),
            }
        }
        Command::Down => match runtime()?.block_on(api::request(&cli.socket, &Request::Down))? {
            Response::Down => Ok(()),
            Response::Error(e) => Err(anyhow!("{e}")),
            other => Err(anyhow!("unexpected answer from the daemon: {other:?}")),
        },
        Command::Set(args) => runtime()?.block_on(tailgate::cli::routing::set(&cli.socket, args)),
        Command::ExitNode(cmd) => {
            runtime()?.block_on(tailgate::cli::routing::exit_node(&cli.socket, cmd))
        }
        Command::Debug(cmd) => tailgate::cli::routing::debug(cmd),
        Command::Dns(cmd) => runtime()?.block_on(tailgate::cli::dns::run(&cli.socket, cmd)),
        Command::Ping(args) => runtime()?.block_on(tailgate::cli::ping::run(&cli.socket, args)),
        Command::Netcheck(args) => {
            runtime()?.block_on(tailgate::cli::netcheck::run(&cli.socket, args))
        }
        Command::Genkey => {
            println!("{}", Key::generate_private().to_base64());
            Ok(())
        }
        Command::Control(args) => tailgate::control::cli::run(args),
        Command::Derp(args) => tailgate::derp::cli::run(args),
        Command::Containerboot => tailgate::containerboot::run(),
        Command::ConfigureHost(args) => {
            if !tailgate::configure_host::run(&args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Pubkey => {
            let mut input = String::new();
            std::io::stdin()
                .take(1024)
                .read_to_string(&mut input)
                .context("reading private key from stdin")?;
            let key =
                Key::from_base64(input.trim()).map_err(|e| anyhow!("private key on stdin: {e}"))?;
            println!("{}", key.public_key().to_base64());
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
