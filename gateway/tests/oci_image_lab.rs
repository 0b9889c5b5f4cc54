//! The container image of `cargo xtask package oci`, started in the lab with Tailscale's TS_*
//! variables against a control server: in kernel mode (`TS_USERSPACE=false`, with
//! `/dev/net/tun`) the node comes up, `tailgate status` works inside the container, a peer
//! pings it through its TUN and it pings the peer back with the image's `ping`, `/healthz` and
//! `/metrics` answer, SIGTERM stops it and removes the TUN; in userspace mode (the image's
//! default, no TUN, no capabilities) it reaches the peer's TCP echo through its SOCKS5 proxy.
//!
//! Two ways to start the image, one test each; both are ignored by a plain `cargo test`, as
//! they need the built image. `cargo xtask test` (its `package_oci` check) builds the archive
//! and runs them with `--ignored`:
//! - `image_runs_under_podman`: the archive loaded into podman (private storage);
//!   `TAILGATE_OCI_PODMAN` is the podman command to use (a wrapper with that storage),
//!   `TAILGATE_OCI_IMAGE` the image name.
//! - `image_rootfs_runs_under_chroot`: the archive unpacked by umoci into an OCI bundle
//!   (`TAILGATE_OCI_BUNDLE`: `config.json` + `rootfs/`), whose entrypoint and environment are
//!   run with chroot in the lab namespace, with fresh /proc, /sys, /dev (only the usual nodes,
//!   plus /dev/net/tun in kernel mode), /run and /tmp mounted in a mount namespace of its own.
//!   This is what runs where no container runtime is usable.
//!
//! Needs root; the lab, the containers and their mounts go away on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use tailgate_bench::lab::control::{tailnet_v4_of, ControlServer, CtlNode, TempDir, SETTLE};
use tailgate_bench::lab::proxy_client::{echo_roundtrip, echo_server, http_get, socks5_connect};
use tailgate_bench::lab::{self, unique_name, wait_for, Lab, Netns, Process};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");
/// The image's state volume (`TS_STATE_DIR` in its config).
const STATE_DIR: &str = "/var/lib/tailgate";

/// How the image is started.
enum Runtime {
    /// `podman run` of a loaded image.
    Podman { podman: PathBuf, image: String },
    /// chroot into an unpacked bundle's root, running its config's process.
    Chroot {
        rootfs: PathBuf,
        args: Vec<String>,
        env: Vec<String>,
    },
}

fn env_var(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| {
        anyhow!(
            "{name} is not set: this test needs the image built by `cargo xtask test \
             package_oci`, which sets it"
        )
    })
}

impl Runtime {
    fn podman() -> Result<Runtime> {
        Ok(Runtime::Podman {
            podman: env_var("TAILGATE_OCI_PODMAN")?.into(),
            image: env_var("TAILGATE_OCI_IMAGE")?,
        })
    }

    /// The bundle's `config.json` (made by umoci from the image config) gives the process.
    fn chroot() -> Result<Runtime> {
        let bundle = PathBuf::from(env_var("TAILGATE_OCI_BUNDLE")?);
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text)?;
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let args = strings(&config["process"]["args"]);
        let env = strings(&config["process"]["env"]);
        if args != ["/usr/bin/tailgate", "containerboot"] {
            bail!("the image's entrypoint is {args:?}");
        }
        if !env
            .iter()
            .any(|e| e == &format!("TS_STATE_DIR={STATE_DIR}"))
        {
            bail!("the image's environment has no TS_STATE_DIR={STATE_DIR}: {env:?}");
        }
        Ok(Runtime::Chroot {
            rootfs: bundle.join("rootfs"),
            args,
            env,
        })
    }
}

/// Sets up a container's mounts in the mount namespace `ip netns exec` gives each command
/// (nothing reaches the host's), then runs the rest of the arguments chrooted.
/// Arguments: ROOTFS RUN_DIR STATE_DIR TUN(0|1) COMMAND….
const CHROOT_SCRIPT: &str = r#"set -eu
root=$1 run=$2 state=$3 tun=$4
shift 4
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,mode=0755 dev "$root/dev"
for n in null zero full random urandom tty; do
	: >"$root/dev/$n"
	mount --bind "/dev/$n" "$root/dev/$n"
done
ln -s /proc/self/fd "$root/dev/fd"
if [ "$tun" = 1 ]; then
	mkdir "$root/dev/net"
	: >"$root/dev/net/tun"
	mount --bind /dev/net/tun "$root/dev/net/tun"
fi
mount --bind "$run" "$root/run"
mount -t tmpfs -o nosuid,nodev tmpfs "$root/tmp"
mkdir -p "$root/var/lib/tailgate"
mount --bind "$state" "$root/var/lib/tailgate"
exec chroot "$root" "$@"
"#;

/// A started container: the runtime's foreground process in the lab namespace.
struct Container<'a> {
    runtime: &'a Runtime,
    ns: &'a Netns,
    /// The podman container's name.
    name: String,
    /// The chroot's /run (the daemon's control socket is there).
    run_dir: TempDir,
    state: PathBuf,
    process: Option<Process>,
}

impl<'a> Container<'a> {
    /// Starts the image in `ns` with `vars`, its state volume at `state`; `kernel` gives it
    /// the TUN device and the capabilities kernel mode needs.
    fn start(
        runtime: &'a Runtime,
        ns: &'a Netns,
        state: &Path,
        kernel: bool,
        vars: &[(&str, &str)],
    ) -> Result<Container<'a>> {
        let mut ctr = Container {
            runtime,
            ns,
            name: unique_name("tgoci"),
            run_dir: TempDir::new("tgoci-run")?,
            state: state.to_path_buf(),
            process: None,
        };
        let cmd = match runtime {
            Runtime::Podman { podman, image } => {
                let mut c = Command::new(podman);
                c.args(["run", "--rm", "--name", &ctr.name])
                    .arg(format!("--network=ns:/var/run/netns/{}", ns.name()))
                    .arg(format!("--volume={}:{STATE_DIR}", state.display()));
                if kernel {
                    c.args(["--cap-add=NET_ADMIN,NET_RAW", "--device=/dev/net/tun"]);
                }
                for (k, v) in vars {
                    c.arg(format!("--env={k}={v}"));
                }
                c.arg(image);
                c
            }
            Runtime::Chroot { args, env, .. } => {
                let mut c = ctr.chroot_command(kernel, args);
                c.env_clear();
                for e in env {
                    if let Some((k, v)) = e.split_once('=') {
                        c.env(k, v);
                    }
                }
                c.envs(vars.iter().copied());
                c
            }
        };
        ctr.process = Some(Process::spawn("container", cmd)?);
        Ok(ctr)
    }

    /// `ip netns exec NS sh -c CHROOT_SCRIPT … args`.
    fn chroot_command(&self, tun: bool, args: &[String]) -> Command {
        let Runtime::Chroot { rootfs, .. } = self.runtime else {
            unreachable!("chroot_command of a podman container")
        };
        let mut c = self.ns.command("sh");
        c.args(["-c", CHROOT_SCRIPT, "sh"])
            .arg(rootfs)
            .arg(&self.run_dir.0)
            .arg(&self.state)
            .arg(if tun { "1" } else { "0" })
            .args(args);
        c
    }

    fn process(&mut self) -> Result<&mut Process> {
        self.process
            .as_mut()
            .ok_or_else(|| anyhow!("the container was stopped"))
    }

    fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }

    /// Waits for the entrypoint to report the node up.
    fn wait_up(&mut self) -> Result<()> {
        let p = self.process()?;
        wait_for("the container's node to come up", SETTLE, || {
            p.check_running()?;
            Ok(p.log().contains("containerboot: up as boxed").then_some(()))
        })
    }

    /// Runs `args` in the running container (`docker exec`); its stdout.
    fn exec(&self, args: &[&str]) -> Result<String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut cmd = match self.runtime {
            Runtime::Podman { podman, .. } => {
                let mut c = Command::new(podman);
                c.arg("exec").arg(&self.name).args(&args);
                c
            }
            Runtime::Chroot { env, .. } => {
                let mut c = self.chroot_command(false, &args);
                c.env_clear();
                for e in env {
                    if let Some((k, v)) = e.split_once('=') {
                        c.env(k, v);
                    }
                }
                c
            }
        };
        lab::run(&mut cmd)
    }

    /// SIGTERM (`docker stop`); whether the entrypoint exited 0.
    fn stop(&mut self) -> Result<bool> {
        let mut p = self
            .process
            .take()
            .ok_or_else(|| anyhow!("the container was stopped"))?;
        let stopped = p.stop();
        if !matches!(stopped, Ok(true)) {
            eprintln!("---- container log ----\n{}", p.log());
        }
        stopped
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.process.take() {
            if std::thread::panicking() {
                eprintln!("---- container log ----\n{}", p.log());
            }
            drop(p);
        }
        if let Runtime::Podman { podman, .. } = self.runtime {
            // `--rm` removes it when it exits; this is for a podman that was killed.
            let _ = Command::new(podman)
                .args(["rm", "--force", "--ignore", &self.name])
                .output();
        }
    }
}

/// Both modes of the image against a control server and a peer in the lab.
/// `GET path` from the container's health/metrics listener (127.0.0.1:9002 in `ns`).
fn get(ns: &Netns, path: &str) -> Result<(u16, String)> {
    http_get(ns, SocketAddr::from(([127, 0, 0, 1], 9002)), path)
}

fn image_serves_the_tailnet(runtime: &Runtime) {
    assert!(
        lab::is_root(),
        "needs root (run `cargo xtask test` as root)"
    );
    let lab = Lab::new().expect("lab");
    let dir = TempDir::new("tgoci").unwrap();
    let server = ControlServer::start(&lab, Path::new(TAILGATE), &dir).expect("server");
    let key = server.authkey(&["--reusable"]).unwrap();
    let mut peer = CtlNode::start(&lab, Path::new(TAILGATE), 1, "").expect("peer");
    peer.up(&server, &key, &["--hostname", "peer"])
        .expect("peer up");
    let peer_v4 = tailnet_v4_of(&peer.status_json().unwrap()).unwrap();
    let host = lab.host(2).expect("container host");
    // The state volume, kept from one start to the next as a named volume would be.
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    let vars = [
        ("TS_AUTHKEY", key.as_str()),
        ("TG_LOGIN_SERVER", server.url.as_str()),
        ("TS_HOSTNAME", "boxed"),
        ("TS_ENABLE_HEALTH_CHECK", "true"),
        ("TS_ENABLE_METRICS", "true"),
        ("TS_LOCAL_ADDR_PORT", "127.0.0.1:9002"),
        ("RUST_LOG", "info"),
    ];

    // Kernel mode: a TUN device in the container's namespace.
    let mut kernel_vars = vars.to_vec();
    kernel_vars.push(("TS_USERSPACE", "false"));
    let mut ctr = Container::start(runtime, &host.ns, &state, true, &kernel_vars)
        .expect("start (kernel mode)");
    ctr.wait_up().expect("up (kernel mode)");
    assert!(
        state.join("tailgate.toml").exists(),
        "no config in the state volume"
    );
    let status: serde_json::Value = serde_json::from_str(
        &ctr.exec(&["tailgate", "status", "--json"])
            .expect("exec status"),
    )
    .expect("status JSON");
    let v4 = tailnet_v4_of(&status).expect("the container's tailnet address");
    peer.wait_peers(1).expect("the peer sees the container");
    peer.wait_ping(&v4)
        .expect("peer → container through its TUN");
    ctr.exec(&["ping", "-c", "1", "-W", "5", &peer_v4])
        .expect("container → peer with the image's ping");
    let (code, body) = get(&host.ns, "/healthz").expect("healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(&host.ns, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("tailgate_up{interface=\"tailgate0\"}"),
        "{body}"
    );
    assert!(ctr.stop().expect("stop (kernel mode)"), "clean exit");
    let links = host.ns.ip(&["-o", "link"]).unwrap();
    assert!(!links.contains("tailgate0"), "TUN left behind: {links}");
    drop(ctr);

    // Userspace mode, the image's default: no TUN, no capabilities; SOCKS5 into the tailnet,
    // the peer reached by name. The state volume keeps the registration from the first start.
    let echo = echo_server(&peer.host.ns, 7000, 1).expect("echo server");
    let mut user_vars = vars.to_vec();
    user_vars.push(("TS_SOCKS5_SERVER", "localhost:1055"));
    let mut ctr =
        Container::start(runtime, &host.ns, &state, false, &user_vars).expect("start (userspace)");
    ctr.wait_up().expect("up (userspace)");
    let back = host
        .ns
        .spawn_inside(move || -> Result<Vec<u8>> {
            let proxy = SocketAddr::from(([127, 0, 0, 1], 1055));
            let s = wait_for("the peer through SOCKS5", SETTLE, || {
                let (code, s) = socks5_connect(proxy, "peer", 7000)?;
                Ok((code == 0).then_some(s))
            })?;
            echo_roundtrip(s, b"from the image")
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        back.expect("SOCKS5 echo"),
        b"from the image",
        "{}",
        ctr.log()
    );
    echo.join().unwrap().expect("echo server");
    let (code, body) = get(&host.ns, "/healthz").expect("healthz (userspace)");
    assert_eq!(code, 200, "{body}");
    let (code, _) = get(&host.ns, "/metrics").expect("metrics (userspace)");
    assert_eq!(code, 200);
    assert!(ctr.stop().expect("stop (userspace)"), "clean exit");
}

#[test]
#[ignore = "needs the image loaded into podman: run by `cargo xtask test package_oci`"]
fn image_runs_under_podman() {
    let runtime = Runtime::podman().unwrap_or_else(|e| panic!("{e:#}"));
    image_serves_the_tailnet(&runtime);
}

#[test]
#[ignore = "needs the image unpacked by umoci: run by `cargo xtask test package_oci`"]
fn image_rootfs_runs_under_chroot() {
    let runtime = Runtime::chroot().unwrap_or_else(|e| panic!("{e:#}"));
    image_serves_the_tailnet(&runtime);
}
