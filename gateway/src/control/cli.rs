//! `tailgate control …`: the coordination server and its admin commands.
//!
//! `serve` runs the server; every other command talks to a running server through its admin
//! socket (`STATE_DIR/admin.sock`, root-only) and prints a table, or JSON with `--json`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use ipnet::IpNet;

use super::admin::{
    self, AdminRequest, AuthKeyInfo, CreatedAuthKey, NodeInfo, RouteInfo, ServerInfo, UserInfo,
    ADMIN_SOCKET,
};
use super::duration;
use super::server::{self, ServeOptions};
use super::store::unix_now;
use super::tailnet::TailnetConfig;

/// Default state directory of the control server.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tailgate-control";

/// `tailgate control`.
#[derive(Debug, Args)]
#[command(
    about = "Self-hosted coordination server (like headscale) and its admin commands",
    long_about = "Self-hosted coordination server (like headscale) and its admin commands.\n\n\
        `tailgate control serve` runs the server: nodes register with an auth key, get stable \
        100.64.0.0/10 and fd7a:115c:a1e0::/48 addresses, and receive a netmap of their peers and \
        routes over a Noise-encrypted session that is updated within a second of any change. \
        The other commands administer a running server through its admin socket \
        (STATE_DIR/admin.sock, readable by the server's user only).\n\n\
        Typical set-up:\n  \
        tailgate control serve --listen 0.0.0.0:7443 --state-dir /var/lib/tailgate-control &\n  \
        tailgate control info                      # prints the login URL tg://HOST:PORT#KEY\n  \
        tailgate control authkey create --reusable --tags tag:router\n  \
        tailgate up --login-server tg://HOST:PORT#KEY --auth-key tgkey-…"
)]
pub struct ControlArgs {
    /// The server's state directory (SQLite database, admin socket).
    #[arg(
        long,
        global = true,
        env = "TAILGATE_CONTROL_STATE_DIR",
        default_value = DEFAULT_STATE_DIR
    )]
    pub state_dir: PathBuf,
    /// The admin socket, if not STATE_DIR/admin.sock.
    #[arg(long, global = true, env = "TAILGATE_CONTROL_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: ControlCommand,
}

/// `--json`.
#[derive(Debug, Args, Clone, Copy)]
pub struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The `tailgate control` subcommands.
#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Run the coordination server.
    #[command(long_about = "Run the coordination server.\n\n\
    State lives in STATE_DIR/control.db (SQLite, WAL; survives restarts and kill -9). On first \
    start the server generates its Noise key; nodes pin it through the login URL printed at \
    start-up and by `tailgate control info`.\n\n\
    HA routers: among the online routers advertising the same approved prefix whose LAN probe \
    is healthy, exactly one is primary. Higher --route-priority wins (ties: earliest \
    advertisement, then lowest node id). A primary that disconnects or reports its LAN unhealthy \
    is replaced at once; a router that comes back takes over again only if its priority is \
    strictly higher, and only after --hold-down.")]
    Serve(ServeArgs),
    /// Show the server's login URL (tg://HOST:PORT#KEY), public key and node counts.
    Info(Output),
    /// Create, list and revoke auth keys.
    #[command(subcommand)]
    Authkey(AuthkeyCommand),
    /// List, expire and delete nodes.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// List, approve and unapprove advertised subnet and exit routes.
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// List and create users (owners of auth keys and untagged nodes).
    #[command(subcommand)]
    Users(UsersCommand),
    /// The access policy (HuJSON: groups, tagOwners, hosts, acls, tests, autoApprovers).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// `tailgate control policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replace the server's policy. It is parsed and its `tests` are run first: a bad policy
    /// is refused with the line and the reason, and the old one stays in force. Nodes get
    /// their new packet filters with the next netmap (at once).
    Set {
        /// The HuJSON policy file.
        file: PathBuf,
        #[command(flatten)]
        out: Output,
    },
    /// Print the policy in force.
    Get,
    /// Check a policy file without a server: syntax, names, and its `tests`.
    Check {
        /// The HuJSON policy file.
        file: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// `tailgate control serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TCP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: String,
    /// HuJSON policy file (access rules, groups, tags, hosts, tests, autoApprovers; see
    /// `tailgate control policy`). `policy set` writes new policies back to it. Without it
    /// the server uses the policy last set, or none (every node may reach every other).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// HOST:PORT nodes use to reach this server, for the printed login URL.
    #[arg(long)]
    pub public_addr: Option<String>,
    /// Relay map (JSON in Tailscale's derpMap shape: Regions → Nodes with HostName, DERPPort,
    /// STUNPort, and CertSHA256/PublicKey as `tailgate derp serve` prints them) handed to
    /// every node; the policy's `derpMap` can change it.
    #[arg(long, value_name = "FILE")]
    pub derp_map: Option<PathBuf>,
    /// The tailnet's DNS domain (nodes are NAME.DOMAIN).
    #[arg(long, default_value = "tailnet.internal")]
    pub domain: String,
    /// How long a returning higher-priority router waits before it takes its routes back.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub hold_down: Duration,
    /// How long a node still shows as online after its session ends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub offline_grace: Duration,
    /// How long an ephemeral node may stay offline before it is deleted.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ephemeral_grace: Duration,
    /// After a restart, how long persisted primaries keep their role while routers reconnect.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub startup_grace: Duration,
    /// Keepalive interval of sessions (silent for 3 intervals = disconnected).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub keepalive: Duration,
    /// Node-key lifetime of untagged nodes (0 = never expire; tagged nodes never expire).
    #[arg(long, default_value = "180d", value_parser = parse_duration)]
    pub node_key_expiry: Duration,
    /// Default lifetime of new auth keys.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub auth_key_expiry: Duration,
}

/// `tailgate control authkey …`.
#[derive(Debug, Subcommand)]
pub enum AuthkeyCommand {
    /// Create an auth key (printed once; pass it to `tailgate up --auth-key`).
    Create {
        /// Owner of the key and of the nodes it registers ("default" is created on demand).
        #[arg(long, default_value = "default")]
        user: String,
        /// The key can register any number of machines (default: single use).
        #[arg(long)]
        reusable: bool,
        /// Nodes registered with the key are deleted after going offline.
        #[arg(long)]
        ephemeral: bool,
        /// Tags for the nodes, comma separated (tag:router,tag:exit). Tagged nodes are owned by
        /// their tags (autoApprovers match them by tag) and their keys do not expire.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Lifetime of the key (24h, 7d, …; 0 = never). Default: the server's --auth-key-expiry.
        #[arg(long, value_parser = parse_duration)]
        expiry: Option<Duration>,
        #[command(flatten)]
        out: Output,
    },
    /// List auth keys (never their secrets).
    List(Output),
    /// Revoke an auth key by id (the part after `tgkey-`, or the whole key).
    Revoke {
        /// Key id.
        id: String,
        #[command(flatten)]
        out: Output,
    },
}

/// `tailgate control nodes …`.
#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List nodes with addresses, owner, online state and expiry.
    List(Output),
    /// Expire a node's key now: it leaves every netmap and must log in again.
    Expire {
        /// Node id or name.
        node: String,
        #[command(flatten)]
        out: Output,
    },
    /// Delete a node.
    Delete {
        /// Node id or name.
        node: String,
        #[command(flatten)]
        out: Output,
    },
    /// Rename a node: its MagicDNS name changes on every peer with the next netmap. The name
    /// is made a DNS label (lower case, `-` for other characters) and unique.
    Rename {
        /// Node id or current name.
        node: String,
        /// The new name.
        name: String,
        #[command(flatten)]
        out: Output,
    },
}

/// `tailgate control routes …`.
#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// List routes: advertised, approved, primary, priority.
    List {
        /// Only this node (id or name).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Approve routes of a node (also before it advertises them).
    Approve {
        /// Node id or name.
        node: String,
        /// Prefixes, e.g. 192.168.1.0/24.
        routes: Vec<IpNet>,
        /// Approve exit-node service (0.0.0.0/0 and ::/0).
        #[arg(long)]
        exit: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Withdraw approval of routes of a node.
    Unapprove {
        /// Node id or name.
        node: String,
        /// Prefixes.
        routes: Vec<IpNet>,
        /// Withdraw exit-node approval.
        #[arg(long)]
        exit: bool,
        #[command(flatten)]
        out: Output,
    },
}

/// `tailgate control users …`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users.
    List(Output),
    /// Create a user.
    Create {
        /// Name, e.g. alice@example.com.
        name: String,
        #[command(flatten)]
        out: Output,
    },
}

/// Runs a `tailgate control` command.
pub fn run(args: ControlArgs) -> Result<()> {
    let socket = args
        .admin_socket
        .clone()
        .unwrap_or_else(|| args.state_dir.join(ADMIN_SOCKET));
    match args.command {
        ControlCommand::Serve(s) => {
            let opts = ServeOptions {
                listen: s.listen,
                state_dir: args.state_dir,
                policy: s.policy,
                public_addr: s.public_addr,
                tailnet: TailnetConfig {
                    relay_map: match &s.derp_map {
                        Some(path) => crate::derp::map::RelayMap::from_json(
                            &std::fs::read_to_string(path)
                                .with_context(|| format!("reading {}", path.display()))?,
                        )
                        .with_context(|| path.display().to_string())?,
                        None => Default::default(),
                    },
                    domain: s.domain,
                    hold_down: s.hold_down,
                    offline_grace: s.offline_grace,
                    ephemeral_grace: s.ephemeral_grace,
                    startup_grace: s.startup_grace,
                    keepalive: s.keepalive,
                    node_key_expiry: (!s.node_key_expiry.is_zero()).then_some(s.node_key_expiry),
                    auth_key_expiry: s.auth_key_expiry,
                    ..TailnetConfig::default()
                },
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(server::serve(opts))
        }
        ControlCommand::Policy(PolicyCommand::Check { file }) => {
            let p = super::policy::Policy::load(&file)?;
            let summary = super::tailnet::PolicySummary::of(&p);
            println!(
                "{}: OK ({} acls, {} tests passed)",
                file.display(),
                summary
                    .acls
                    .map_or_else(|| "no".to_string(), |n| n.to_string()),
                summary.tests
            );
            Ok(())
        }
        command => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(admin_command(&socket, command))
        }
    }
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn exit_routes(mut routes: Vec<IpNet>, exit: bool) -> Result<Vec<IpNet>> {
    if exit {
        routes.push(crate::route::table::EXIT_V4);
        routes.push(crate::route::table::EXIT_V6);
    }
    if routes.is_empty() {
        return Err(anyhow!("name at least one route (or --exit)"));
    }
    Ok(routes)
}

async fn admin_command(socket: &std::path::Path, command: ControlCommand) -> Result<()> {
    let (req, json, render): (AdminRequest, bool, fn(serde_json::Value) -> Result<String>) =
        match command {
            ControlCommand::Serve(_) => return Err(anyhow!("serve is not an admin command")),
            ControlCommand::Info(o) => (AdminRequest::Info, o.json, render_info),
            ControlCommand::Authkey(AuthkeyCommand::Create {
                user,
                reusable,
                ephemeral,
                tags,
                expiry,
                out,
            }) => (
                AdminRequest::AuthkeyCreate {
                    user,
                    reusable,
                    ephemeral,
                    tags,
                    expiry_secs: expiry.map(|d| d.as_secs()),
                },
                out.json,
                render_created_key,
            ),
            ControlCommand::Authkey(AuthkeyCommand::List(o)) => {
                (AdminRequest::AuthkeyList, o.json, render_keys)
            }
            ControlCommand::Authkey(AuthkeyCommand::Revoke { id, out }) => {
                (AdminRequest::AuthkeyRevoke { id }, out.json, |v| {
                    Ok(format!(
                        "revoked {}\n",
                        v["revoked"].as_str().unwrap_or("?")
                    ))
                })
            }
            ControlCommand::Nodes(NodesCommand::List(o)) => {
                (AdminRequest::NodesList, o.json, render_nodes)
            }
            ControlCommand::Nodes(NodesCommand::Expire { node, out }) => {
                (AdminRequest::NodesExpire { node }, out.json, |v| {
                    let n: NodeInfo = serde_json::from_value(v)?;
                    Ok(format!("expired node {} ({})\n", n.name, n.id))
                })
            }
            ControlCommand::Nodes(NodesCommand::Delete { node, out }) => {
                (AdminRequest::NodesDelete { node }, out.json, |v| {
                    Ok(format!("deleted node {}\n", v["deleted"]))
                })
            }
            ControlCommand::Nodes(NodesCommand::Rename { node, name, out }) => {
                (AdminRequest::NodesRename { node, name }, out.json, |v| {
                    let n: NodeInfo = serde_json::from_value(v)?;
                    Ok(format!("node {} is now {}\n", n.id, n.name))
                })
            }
            ControlCommand::Routes(RoutesCommand::List { node, out }) => {
                let v = admin::request(socket, &AdminRequest::RoutesList).await?;
                let mut routes: Vec<RouteInfo> = serde_json::from_value(v)?;
                if let Some(sel) = node {
                    routes.retain(|r| r.node == sel || r.node_id.to_string() == sel);
                }
                if out.json {
                    return print_json(&serde_json::to_value(&routes)?);
                }
                print!("{}", routes_table(&routes));
                return Ok(());
            }
            ControlCommand::Routes(RoutesCommand::Approve {
                node,
                routes,
                exit,
                out,
            }) => (
                AdminRequest::RoutesApprove {
                    node,
                    routes: exit_routes(routes, exit)?,
                },
                out.json,
                render_routes,
            ),
            ControlCommand::Routes(RoutesCommand::Unapprove {
                node,
                routes,
                exit,
                out,
            }) => (
                AdminRequest::RoutesUnapprove {
                    node,
                    routes: exit_routes(routes, exit)?,
                },
                out.json,
                render_routes,
            ),
            ControlCommand::Policy(PolicyCommand::Set { file, out }) => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                (AdminRequest::PolicySet { text }, out.json, |v| {
                    let s: super::tailnet::PolicySummary = serde_json::from_value(v)?;
                    Ok(format!(
                        "policy set: {} acls, {} tests passed, {} groups\n",
                        s.acls.map_or_else(|| "no".to_string(), |n| n.to_string()),
                        s.tests,
                        s.groups
                    ))
                })
            }
            ControlCommand::Policy(PolicyCommand::Get) => (AdminRequest::PolicyGet, false, |v| {
                Ok(v["text"].as_str().unwrap_or_default().to_string())
            }),
            ControlCommand::Policy(PolicyCommand::Check { .. }) => {
                return Err(anyhow!("check runs without a server"))
            }
            ControlCommand::Users(UsersCommand::List(o)) => {
                (AdminRequest::UsersList, o.json, render_users)
            }
            ControlCommand::Users(UsersCommand::Create { name, out }) => {
                (AdminRequest::UsersCreate { name }, out.json, |v| {
                    let u: UserInfo = serde_json::from_value(v)?;
                    Ok(format!("created user {} ({})\n", u.name, u.id))
                })
            }
        };
    let v = admin::request(socket, &req).await?;
    if json {
        return print_json(&v);
    }
    print!("{}", render(v)?);
    Ok(())
}

/// Formats rows as a left-aligned table with a header.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn when(t: Option<u64>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let now = unix_now();
    if t > now {
        format!("in {}", duration::format(Duration::from_secs(t - now)))
    } else if t == now {
        "now".into()
    } else {
        format!("{} ago", duration::format(Duration::from_secs(now - t)))
    }
}

fn render_info(v: serde_json::Value) -> Result<String> {
    let i: ServerInfo = serde_json::from_value(v)?;
    Ok(format!(
        "login URL:   {}\npublic key:  {}\nlistening:   {}\ndomain:      {}\nnodes:       {} ({} connected)\nversion:     {} (protocol {})\n",
        i.login_url, i.public_key, i.listen, i.domain, i.nodes, i.connected, i.version, i.protocol
    ))
}

fn key_flags(k: &AuthKeyInfo) -> String {
    let mut f = vec![if k.reusable { "reusable" } else { "single-use" }];
    if k.ephemeral {
        f.push("ephemeral");
    }
    f.join(",")
}

fn key_state(k: &AuthKeyInfo) -> String {
    if k.revoked {
        "revoked".into()
    } else if k.expired {
        "expired".into()
    } else if k.used && !k.reusable {
        format!(
            "used by {}",
            k.used_by.map(|n| n.to_string()).unwrap_or("?".into())
        )
    } else {
        "valid".into()
    }
}

fn render_created_key(v: serde_json::Value) -> Result<String> {
    let c: CreatedAuthKey = serde_json::from_value(v)?;
    Ok(format!(
        "{}\n(user {}, {}, tags {}, expires {}; shown only once)\n",
        c.key,
        c.info.user,
        key_flags(&c.info),
        if c.info.tags.is_empty() {
            "none".into()
        } else {
            c.info.tags.join(",")
        },
        when(c.info.expires_at)
    ))
}

fn render_keys(v: serde_json::Value) -> Result<String> {
    let keys: Vec<AuthKeyInfo> = serde_json::from_value(v)?;
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.user.clone(),
                key_flags(k),
                k.tags.join(","),
                when(k.expires_at),
                key_state(k),
            ]
        })
        .collect();
    Ok(table(
        &["ID", "USER", "KIND", "TAGS", "EXPIRES", "STATE"],
        &rows,
    ))
}

fn render_nodes(v: serde_json::Value) -> Result<String> {
    let nodes: Vec<NodeInfo> = serde_json::from_value(v)?;
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let owner = if n.tags.is_empty() {
                n.user.clone()
            } else {
                n.tags.join(",")
            };
            let state = if n.expired {
                "expired".to_string()
            } else if n.online {
                if n.lan_ok {
                    "online".into()
                } else {
                    "online, LAN down".into()
                }
            } else {
                format!("offline (seen {})", when(n.last_seen))
            };
            vec![
                n.id.to_string(),
                n.name.clone(),
                n.ipv4.to_string(),
                n.ipv6.to_string(),
                owner,
                n.os.clone(),
                state,
                if n.ephemeral {
                    "yes".into()
                } else {
                    "-".into()
                },
                when(n.key_expiry),
            ]
        })
        .collect();
    Ok(table(
        &[
            "ID",
            "NAME",
            "IPV4",
            "IPV6",
            "OWNER",
            "OS",
            "STATE",
            "EPHEMERAL",
            "KEY EXPIRY",
        ],
        &rows,
    ))
}

fn routes_table(routes: &[RouteInfo]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
            vec![
                r.node.clone(),
                r.prefix.to_string(),
                yn(r.advertised),
                yn(r.approved),
                if r.prefix.prefix_len() == 0 {
                    "(exit)".into()
                } else {
                    yn(r.primary)
                },
                r.priority.to_string(),
                if !r.connected {
                    "offline".into()
                } else if !r.lan_ok {
                    "LAN down".into()
                } else {
                    "ok".into()
                },
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "PREFIX",
            "ADVERTISED",
            "APPROVED",
            "PRIMARY",
            "PRIORITY",
            "HEALTH",
        ],
        &rows,
    )
}

fn render_routes(v: serde_json::Value) -> Result<String> {
    let routes: Vec<RouteInfo> = serde_json::from_value(v)?;
    Ok(routes_table(&routes))
}

fn render_users(v: serde_json::Value) -> Result<String> {
    let users: Vec<UserInfo> = serde_json::from_value(v)?;
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| vec![u.id.to_string(), u.name.clone(), when(Some(u.created_at))])
        .collect();
    Ok(table(&["ID", "NAME", "CREATED"], &rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: Sub,
    }
    #[derive(Subcommand)]
    enum Sub {
        Control(ControlArgs),
    }

    fn parse(args: &[&str]) -> ControlArgs {
        let mut v = vec!["tailgate", "control"];
        v.extend_from_slice(args);
        match Top::try_parse_from(v).unwrap().cmd {
            Sub::Control(c) => c,
        }
    }

    #[test]
    fn parses_commands() {
        let a = parse(&[
            "authkey",
            "create",
            "--reusable",
            "--tags",
            "tag:a,tag:b",
            "--expiry",
            "24h",
            "--json",
            "--state-dir",
            "/tmp/x",
        ]);
        assert_eq!(a.state_dir, PathBuf::from("/tmp/x"));
        match a.command {
            ControlCommand::Authkey(AuthkeyCommand::Create {
                reusable,
                tags,
                expiry,
                out,
                ..
            }) => {
                assert!(reusable && out.json);
                assert_eq!(tags, vec!["tag:a", "tag:b"]);
                assert_eq!(expiry, Some(Duration::from_secs(86400)));
            }
            other => panic!("{other:?}"),
        }
        let a = parse(&["serve", "--listen", "127.0.0.1:0", "--hold-down", "2s"]);
        match a.command {
            ControlCommand::Serve(s) => assert_eq!(s.hold_down, Duration::from_secs(2)),
            other => panic!("{other:?}"),
        }
        let a = parse(&["routes", "approve", "r1", "10.0.0.0/8", "--exit"]);
        assert!(matches!(
            a.command,
            ControlCommand::Routes(RoutesCommand::Approve { exit: true, .. })
        ));
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz\n");
    }
}
