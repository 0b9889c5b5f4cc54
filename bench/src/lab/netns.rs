//! Network namespaces, veth links and bridges that delete themselves when dropped.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, Context, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `<prefix><pid % 10000><n>`, at most 15 bytes
/// for prefixes of up to 6 bytes, so it also works as an interface name.
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 10000)
}

/// Runs a command and returns its stdout, failing with its stderr if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(anyhow!(
            "{:?} failed ({}): {}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and returns its full output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| format!("running {cmd:?}"))
}

/// Runs `ip ARGS…` in the current namespace.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// A network namespace, deleted (with every link inside it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a unique name and brings its loopback up.
    pub fn new(prefix: &str) -> Result<Netns> {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program ARGS…` inside the namespace, returning stdout or an error with stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// Runs `ip ARGS…` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.exec("ip", args)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Joins two namespaces with a veth pair `a_if` ↔ `b_if`, addresses given as CIDRs
/// (one IPv4 and/or IPv6 each), both ends up.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addrs: &[&str],
    b: &Netns,
    b_if: &str,
    b_addrs: &[&str],
) -> Result<()> {
    ip(&[
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", ifname, "nodad"])?;
        }
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

impl Netns {
    /// Runs `f` on a new thread that has entered this namespace, so sockets it opens live
    /// there.
    pub fn spawn_inside<T, F>(&self, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd we hold open; it changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(anyhow!("setns: {}", std::io::Error::last_os_error()));
            }
            f()
        }))
    }
}
