//! `tailgate containerboot`: the container entrypoint. It reads the same environment variables
//! as Tailscale's image (so existing compose files work), writes the daemon's config into the
//! state directory, starts `tailgate daemon`, brings the node up, and then lives as long as the
//! daemon, passing SIGTERM/SIGINT on.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TS_AUTHKEY` (`TS_AUTH_KEY`) | auth key for `up` | none (used only while the state dir holds no registration, or when coming up on it fails) |
//! | `TS_HOSTNAME` | hostname to register | the container's |
//! | `TS_STATE_DIR` | keys, registration, config | `/var/lib/tailgate` |
//! | `TS_ROUTES` | subnet routes to advertise, comma separated | none |
//! | `TS_ACCEPT_DNS` | point the container's resolv.conf at MagicDNS (kernel mode) | `false` (as Tailscale's image) |
//! | `TS_EXTRA_ARGS` | extra `tailgate up` flags (`--login-server=…`, `--advertise-exit-node`, `--accept-routes`, `--route-priority=N`, `--hostname=…`, `--advertise-routes=…`) | none |
//! | `TS_TAILSCALED_EXTRA_ARGS` | extra `tailgate daemon` flags | none |
//! | `TS_ENABLE_HEALTH_CHECK`, `TS_ENABLE_METRICS` | serve `/healthz` and `/metrics` on `TS_LOCAL_ADDR_PORT` | off, `[::]:9002` |
//! | `TS_DEBUG_MTU` | tunnel MTU | 1280 |
//! | `TS_USERSPACE` | userspace networking: no TUN, no NET_ADMIN; no subnet routes or exit node | `true` (as Tailscale's image) |
//! | `TS_SOCKS5_SERVER`, `TS_OUTBOUND_HTTP_PROXY_LISTEN` | SOCKS5 / HTTP proxy into the tailnet (`:1055`, `localhost:1055`, `ADDR:PORT`) | none |
//! | `TS_CLIENT_ID`, `TS_CLIENT_SECRET`, `TS_ID_TOKEN`, `TS_AUDIENCE` | OAuth / workload identity | refused (use `TS_AUTHKEY`) |
//! | `TG_LOGIN_SERVER` | the coordination server's `tg://HOST:PORT#KEY` URL | none |
//! | `TG_TUN` | TUN device name | `tailgate0` |
//! | `TG_PORT` | WireGuard UDP port | `41641` |
//!
//! Anything else starting with `TS_` or `TG_` is reported as unknown; values that cannot be
//! parsed or that contradict each other stop the container with the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::api::{self, Request, Response, UpRequest};

/// Default state directory in the container.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tailgate";
/// Default `/healthz` and `/metrics` address (Tailscale's `TS_LOCAL_ADDR_PORT`).
pub const DEFAULT_LOCAL_ADDR_PORT: &str = "[::]:9002";
/// How long the daemon may take to open its control socket.
const DAEMON_START: Duration = Duration::from_secs(30);

/// Variables this entrypoint reads.
const KNOWN: &[&str] = &[
    "TS_AUTHKEY",
    "TS_AUTH_KEY",
    "TS_HOSTNAME",
    "TS_STATE_DIR",
    "TS_ROUTES",
    "TS_ACCEPT_DNS",
    "TS_EXTRA_ARGS",
    "TS_TAILSCALED_EXTRA_ARGS",
    "TS_ENABLE_HEALTH_CHECK",
    "TS_ENABLE_METRICS",
    "TS_LOCAL_ADDR_PORT",
    "TS_DEBUG_MTU",
    "TS_USERSPACE",
    "TS_SOCKS5_SERVER",
    "TS_OUTBOUND_HTTP_PROXY_LISTEN",
    "TS_CLIENT_ID",
    "TS_CLIENT_SECRET",
    "TS_ID_TOKEN",
    "TS_AUDIENCE",
    "TG_LOGIN_SERVER",
    "TG_TUN",
    "TG_PORT",
];

/// What the entrypoint will do, derived from the environment alone.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The daemon's config file (inside the state directory) and its text.
    pub config_path: PathBuf,
    /// The config text.
    pub config: String,
    /// `tailgate daemon` arguments after `--config FILE`.
    pub daemon_args: Vec<String>,
    /// The `up` request.
    pub up: UpRequest,
    /// Warnings to print (unknown variables).
    pub warnings: Vec<String>,
}

fn boolean(env: &BTreeMap<String, String>, key: &str, default: bool) -> Result<bool, String> {
    match env.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v.is_empty() => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!("{key}={v:?}: want true or false")),
        },
    }
}

fn non_empty<'a>(env: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    env.get(key).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// Applies one `TS_EXTRA_ARGS` flag to `up`, or says why it cannot.
fn extra_up_flag(
    up: &mut UpRequest,
    flag: &str,
    accept_dns: &mut Option<bool>,
) -> Result<(), String> {
    let (name, value) = match flag.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (flag, None),
    };
    let need = |v: Option<&str>| {
        v.map(str::to_string)
            .ok_or(format!("TS_EXTRA_ARGS: {name} needs =VALUE"))
    };
    let bool_of = |v: Option<&str>| match v {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(format!(
            "TS_EXTRA_ARGS: {name}={other:?}: want true or false"
        )),
    };
    match name {
        "--login-server" => up.login_server = Some(need(value)?),
        "--hostname" => up.hostname = Some(need(value)?),
        "--authkey" | "--auth-key" => up.auth_key = Some(need(value)?),
        "--advertise-routes" => {
            up.advertise_routes.extend(parse_routes(
                "TS_EXTRA_ARGS --advertise-routes",
                &need(value)?,
            )?);
        }
        "--advertise-exit-node" => up.advertise_exit_node = bool_of(value)?,
        "--accept-routes" => up.accept_routes = bool_of(value)?,
        "--accept-dns" => *accept_dns = Some(bool_of(value)?),
        "--route-priority" => {
            up.route_priority = need(value)?
                .parse()
                .map_err(|_| format!("TS_EXTRA_ARGS: {name} wants a number"))?
        }
        _ => {
            return Err(format!(
                "TS_EXTRA_ARGS: {flag:?} is not a tailgate up flag (supported: --login-server=, \
                 --hostname=, --auth-key=, --advertise-routes=, --advertise-exit-node, \
                 --accept-routes, --accept-dns=, --route-priority=)"
            ))
        }
    }
    Ok(())
}

fn parse_routes(what: &str, list: &str) -> Result<Vec<ipnet::IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| crate::config::parse_cidr(r).map_err(|e| format!("{what}: {e}")))
        .collect()
}

/// Works out the plan from the environment (no I/O).
pub fn plan(env: &BTreeMap<String, String>) -> Result<BootPlan, String> {
    let mut warnings = Vec::new();
    for key in env.keys() {
        if (key.starts_with("TS_") || key.starts_with("TG_"))
            && !KNOWN.contains(&key.as_str())
            && key != "TS_DEBUG_MTU"
        {
            warnings.push(format!(
                "{key} is not used by tailgate's container entrypoint"
            ));
        }
    }
    for key in [
        "TS_CLIENT_ID",
        "TS_CLIENT_SECRET",
        "TS_ID_TOKEN",
        "TS_AUDIENCE",
    ] {
        if non_empty(env, key).is_some() {
            return Err(format!(
                "{key}: OAuth clients and workload identity are not supported; register with \
                 TS_AUTHKEY (a key from `tailgate control authkey create`)"
            ));
        }
    }
    let userspace = boolean(env, "TS_USERSPACE", true)?;
    let mut proxy_args = Vec::new();
    for (key, flag) in [
        ("TS_SOCKS5_SERVER", "--socks5-server"),
        (
            "TS_OUTBOUND_HTTP_PROXY_LISTEN",
            "--outbound-http-proxy-listen",
        ),
    ] {
        if let Some(v) = non_empty(env, key) {
            proxy_args.push(flag.to_string());
            proxy_args.push(listen_addr(key, v)?.to_string());
        }
    }
    let state_dir = PathBuf::from(non_empty(env, "TS_STATE_DIR").unwrap_or(DEFAULT_STATE_DIR));
    if !state_dir.is_absolute() {
        return Err(format!(
            "TS_STATE_DIR={}: want an absolute path",
            state_dir.display()
        ));
    }
    let tun = non_empty(env, "TG_TUN").unwrap_or("tailgate0");
    if tun.len() > 15
        || !tun
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "TG_TUN={tun:?}: want an interface name of up to 15 characters"
        ));
    }
    let port: u16 = match non_empty(env, "TG_PORT") {
        Some(p) => p
            .parse()
            .map_err(|_| format!("TG_PORT={p:?}: want a UDP port"))?,
        None => 41641,
    };
    let mut up = UpRequest {
        auth_key: non_empty(env, "TS_AUTHKEY")
            .or_else(|| non_empty(env, "TS_AUTH_KEY"))
            .map(str::to_string),
        hostname: non_empty(env, "TS_HOSTNAME").map(str::to_string),
        login_server: non_empty(env, "TG_LOGIN_SERVER").map(str::to_string),
        ..UpRequest::default()
    };
    if let Some(r) = non_empty(env, "TS_ROUTES") {
        up.advertise_routes = parse_routes("TS_ROUTES", r)?;
    }
    let mut accept_dns = None;
    for flag in non_empty(env, "TS_EXTRA_ARGS")
        .unwrap_or("")
        .split_whitespace()
    {
        extra_up_flag(&mut up, flag, &mut accept_dns)?;
    }
    let env_accept = boolean(env, "TS_ACCEPT_DNS", false)?;
    if let (Some(flag), Some(_)) = (accept_dns, env.get("TS_ACCEPT_DNS")) {
        if flag != env_accept {
            return Err(format!(
                "TS_ACCEPT_DNS={env_accept} and TS_EXTRA_ARGS --accept-dns={flag} contradict each other"
            ));
        }
    }
    let accept_dns = accept_dns.unwrap_or(env_accept);
    if userspace && (!up.advertise_routes.is_empty() || up.advertise_exit_node) {
        return Err(
            "TS_USERSPACE=true cannot advertise routes or an exit node (that needs \
                    kernel forwarding): set TS_USERSPACE=false and give the container NET_ADMIN \
                    and /dev/net/tun"
                .into(),
        );
    }
    let mut daemon_args = vec![format!("--accept-dns={}", accept_dns && !userspace)];
    if userspace {
        daemon_args.push(format!("--tun={}", crate::daemon::USERSPACE_NETWORKING));
    }
    daemon_args.extend(proxy_args);
    let health = boolean(env, "TS_ENABLE_HEALTH_CHECK", false)?;
    let metrics = boolean(env, "TS_ENABLE_METRICS", false)?;
    if health || metrics {
        let addr = non_empty(env, "TS_LOCAL_ADDR_PORT").unwrap_or(DEFAULT_LOCAL_ADDR_PORT);
        let parsed: SocketAddr = addr.parse().map_err(|_| {
            format!("TS_LOCAL_ADDR_PORT={addr:?}: want ADDR:PORT such as [::]:9002")
        })?;
        daemon_args.push("--metrics-listen".into());
        daemon_args.push(parsed.to_string());
    } else if non_empty(env, "TS_LOCAL_ADDR_PORT").is_some() {
        warnings.push(
            "TS_LOCAL_ADDR_PORT is set but neither TS_ENABLE_HEALTH_CHECK nor TS_ENABLE_METRICS is"
                .into(),
        );
    }
    daemon_args.extend(
        non_empty(env, "TS_TAILSCALED_EXTRA_ARGS")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string),
    );
    if let Some(mtu) = non_empty(env, "TS_DEBUG_MTU") {
        mtu.parse::<u16>()
            .map_err(|_| format!("TS_DEBUG_MTU={mtu:?}: want a number"))?;
    }
    let config_path = state_dir.join("tailgate.toml");
    let mut config = format!(
        "# Written by `tailgate containerboot` from the TS_*/TG_* environment; rewritten at each start.\n\
         [interface]\nname = \"{tun}\"\nlisten_port = {port}\n\n[control]\nstate_dir = \"{}\"\n",
        state_dir.display()
    );
    if let Some(h) = &up.hostname {
        config.push_str(&format!("hostname = {}\n", toml_string(h)));
    }
    Ok(BootPlan {
        state_dir,
        config_path,
        config,
        daemon_args,
        up,
        warnings,
    })
}

/// A proxy listen address as Tailscale's image takes it: `:1055` (every address),
/// `localhost:1055`, or `ADDR:PORT`.
fn listen_addr(key: &str, v: &str) -> Result<SocketAddr, String> {
    let bad = || format!("{key}={v:?}: want :PORT, localhost:PORT or ADDR:PORT");
    if let Some(port) = v.strip_prefix(':') {
        return Ok(SocketAddr::from((
            [0, 0, 0, 0],
            port.parse().map_err(|_| bad())?,
        )));
    }
    if let Some(port) = v.strip_prefix("localhost:") {
        return Ok(SocketAddr::from((
            [127, 0, 0, 1],
            port.parse().map_err(|_| bad())?,
        )));
    }
    v.parse().map_err(|_| bad())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Runs the entrypoint: plan, config, daemon, `up`, then wait for the daemon.
pub fn run() -> Result<()> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let plan = plan(&env).map_err(|e| anyhow!("containerboot: {e}"))?;
    for w in &plan.warnings {
        eprintln!("containerboot: warning: {w}");
    }
    std::fs::create_dir_all(&plan.state_dir)
        .with_context(|| format!("creating {}", plan.state_dir.display()))?;
    crate::atomic_file::write(&plan.config_path, plan.config.as_bytes(), 0o600)?;
    let socket = PathBuf::from(
        std::env::var("TAILGATE_SOCKET").unwrap_or_else(|_| api::DEFAULT_SOCKET.to_string()),
    );
    let exe = std::env::current_exe().context("finding the tailgate binary")?;
    let mut daemon = std::process::Command::new(&exe)
        .arg("--socket")
        .arg(&socket)
        .arg("daemon")
        .arg("--config")
        .arg(&plan.config_path)
        .args(&plan.daemon_args)
        .spawn()
        .context("starting tailgate daemon")?;
    let pid = daemon.id() as libc::pid_t;
    forward_signals(pid);
    let up = wait_and_up(&socket, &plan.up, registered(&plan.state_dir), &mut daemon);
    if let Err(e) = up {
        // SAFETY: kill(2) on the child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = daemon.wait();
        return Err(e);
    }
    let status = daemon.wait().context("waiting for the daemon")?;
    if status.success() {
        Ok(())
    } else {
        bail!("tailgate daemon exited: {status}")
    }
}

/// Whether the state dir holds a registration (then `up` needs no auth key).
fn registered(state_dir: &Path) -> bool {
    crate::control::node_state::NodeState::load(state_dir)
        .ok()
        .flatten()
        .is_some_and(|s| s.registration.is_some())
}

/// Waits for the daemon's socket and brings the node up. A node registered before comes up
/// without the auth key, so that a pod restarted after its key expired keeps working; the key
/// is sent only if that fails (e.g. the node was deleted at the server).
fn wait_and_up(
    socket: &Path,
    up: &UpRequest,
    registered: bool,
    daemon: &mut std::process::Child,
) -> Result<()> {
    let deadline = Instant::now() + DAEMON_START;
    while !socket.exists() {
        if let Some(status) = daemon.try_wait()? {
            bail!("tailgate daemon exited before it was up: {status}");
        }
        if Instant::now() > deadline {
            bail!(
                "tailgate daemon did not open {} within {DAEMON_START:?}",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if registered && up.auth_key.is_some() {
        let keyless = UpRequest {
            auth_key: None,
            ..up.clone()
        };
        match send_up(&rt, socket, &keyless) {
            // Only a refusal of the registration calls for the key; anything else (the
            // daemon stopping meanwhile) is for the caller's wait on the daemon to report.
            Ok(()) => match session_state(&rt, socket) {
                Ok(state) if state == "needs-login" => eprintln!(
                    "containerboot: the server no longer accepts the stored registration; \
                     trying the auth key"
                ),
                _ => return Ok(()),
            },
            Err(e) => eprintln!(
                "containerboot: up with the stored registration failed ({e:#}); trying the auth key"
            ),
        }
    }
    send_up(&rt, socket, up)
}

/// How long to wait for a session started on the stored registration to be accepted.
const SESSION_CHECK: Duration = Duration::from_secs(15);

/// The control session's state once it is settled ("running" or "needs-login"), or the
/// last state seen after [`SESSION_CHECK`] (the server may be down: the session retries).
fn session_state(rt: &tokio::runtime::Runtime, socket: &Path) -> Result<String> {
    let deadline = Instant::now() + SESSION_CHECK;
    loop {
        let state = match rt.block_on(api::request(socket, &Request::Status))? {
            Response::Status(st) => st.control.map(|c| c.state).unwrap_or_default(),
            other => bail!("status: unexpected answer {other:?}"),
        };
        if state == "running" || state == "needs-login" || Instant::now() > deadline {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send_up(rt: &tokio::runtime::Runtime, socket: &Path, up: &UpRequest) -> Result<()> {
    match rt.block_on(api::request(socket, &Request::Up(Box::new(up.clone()))))? {
        Response::Up(r) => {
            println!(
                "containerboot: up as {} ({}) on {}",
                r.name,
                r.addresses.join(", "),
                r.login_server
            );
            Ok(())
        }
        Response::Error(e) => bail!("tailgate up: {e}"),
        other => bail!("tailgate up: unexpected answer {other:?}"),
    }
}

/// Passes SIGTERM and SIGINT to the daemon (the container runtime signals PID 1, us).
fn forward_signals(child: libc::pid_t) {
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("containerboot: cannot watch signals: {e}");
                return;
            }
        };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            loop {
                let sig = tokio::select! {
                    _ = term.recv() => libc::SIGTERM,
                    _ = int.recv() => libc::SIGINT,
                };
                // SAFETY: kill(2) on our child; a stale pid only fails with ESRCH.
                unsafe { libc::kill(child, sig) };
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_subnet_router_compose_file() {
        let p = plan(&env(&[
            ("TS_AUTHKEY", "tgkey-abc-def"),
            ("TS_HOSTNAME", "nas-router"),
            ("TS_STATE_DIR", "/var/lib/tailscale"),
            ("TS_ROUTES", "192.168.1.0/24,10.0.0.0/16"),
            ("TS_USERSPACE", "false"),
            (
                "TS_EXTRA_ARGS",
                "--login-server=tg://ctl:7443#KEY --advertise-exit-node",
            ),
            ("TS_ENABLE_HEALTH_CHECK", "true"),
            ("TS_DEBUG_MTU", "1400"),
            ("PATH", "/usr/bin"),
        ]))
        .unwrap();
        assert_eq!(p.up.auth_key.as_deref(), Some("tgkey-abc-def"));
        assert_eq!(p.up.hostname.as_deref(), Some("nas-router"));
        assert_eq!(p.up.login_server.as_deref(), Some("tg://ctl:7443#KEY"));
        assert_eq!(p.up.advertise_routes.len(), 2);
        assert!(p.up.advertise_exit_node);
        assert_eq!(p.config_path, Path::new("/var/lib/tailscale/tailgate.toml"));
        assert!(p.config.contains("state_dir = \"/var/lib/tailscale\""));
        assert_eq!(
            p.daemon_args,
            ["--accept-dns=false", "--metrics-listen", "[::]:9002"]
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        // The written config is a valid daemon config.
        let dir = std::env::temp_dir().join(format!("tg-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = p
            .config
            .replace("/var/lib/tailscale", &dir.display().to_string());
        let parsed = crate::config::Config::parse(Path::new("c.toml"), &text, Some("1400"));
        std::fs::remove_dir_all(&dir).unwrap();
        let cfg = parsed.unwrap();
        assert_eq!(cfg.interface.name, "tailgate0");
        assert_eq!(cfg.interface.mtu, 1400);
    }

    #[test]
    fn unknown_conflicting_and_unsupported_values_are_reported() {
        let p = plan(&env(&[("TS_KUBE_SECRET", "x"), ("TG_WHATEVER", "1")])).unwrap();
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        let err = |pairs: &[(&str, &str)]| plan(&env(pairs)).unwrap_err();
        assert!(err(&[("TS_ROUTES", "10.0.0.0/24")]).contains("TS_USERSPACE=true cannot"));
        assert!(err(&[("TS_SOCKS5_SERVER", "1055")]).contains("TS_SOCKS5_SERVER"));
        assert!(err(&[("TS_CLIENT_SECRET", "s")]).contains("TS_AUTHKEY"));
        assert!(err(&[("TS_ACCEPT_DNS", "maybe")]).contains("want true or false"));
        assert!(err(&[("TS_ROUTES", "10.0.0.0/33")]).contains("TS_ROUTES"));
        assert!(err(&[("TS_EXTRA_ARGS", "--ssh")]).contains("not a tailgate up flag"));
        assert!(err(&[
            ("TS_ACCEPT_DNS", "true"),
            ("TS_EXTRA_ARGS", "--accept-dns=false")
        ])
        .contains("contradict"));
        assert!(err(&[("TS_STATE_DIR", "state")]).contains("absolute"));
        assert!(
            err(&[("TS_ENABLE_METRICS", "1"), ("TS_LOCAL_ADDR_PORT", "nope")])
                .contains("TS_LOCAL_ADDR_PORT")
        );
        assert!(err(&[("TS_DEBUG_MTU", "big")]).contains("TS_DEBUG_MTU"));
        let p = plan(&env(&[
            ("TS_USERSPACE", "false"),
            ("TS_ACCEPT_DNS", "true"),
            ("TS_TAILSCALED_EXTRA_ARGS", "--no-xdp"),
        ]))
        .unwrap();
        assert_eq!(p.daemon_args, ["--accept-dns=true", "--no-xdp"]);
        // The image's default: userspace networking, here with both proxies.
        let p = plan(&env(&[
            ("TS_SOCKS5_SERVER", ":1055"),
            ("TS_OUTBOUND_HTTP_PROXY_LISTEN", "localhost:8080"),
        ]))
        .unwrap();
        assert_eq!(
            p.daemon_args,
            [
                "--accept-dns=false",
                "--tun=userspace-networking",
                "--socks5-server",
                "0.0.0.0:1055",
                "--outbound-http-proxy-listen",
                "127.0.0.1:8080"
            ]
        );
    }
}
