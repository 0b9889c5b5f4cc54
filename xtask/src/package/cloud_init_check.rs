//! The check `package_cloud_init` of `cargo xtask test`: renders the `#cloud-config` templates
//! with example values and checks each file offline: Debian's `cloud-init schema`, top-level
//! keys that cloud-init knows (it ignores unknown ones), `sh -n` on every shell script in it,
//! the `tailgate up` flags it uses against the binary's own `--help`, what it writes (the
//! tailgate config, the forwarding sysctls, the unit) and what it runs (the package downloaded
//! from the given URL and installed with apt, the sysctls applied, the units started). That the config parses with
//! tailgate's loader is the test `gateway/tests/cloud_init_configs.rs`.
//!
//! cloud-init runs from an unpacked copy of Debian's package in [`CLOUD_INIT_ROOT`], not an
//! installed one: installing it would enable its boot-time services on the build machine,
//! which would then try to configure the machine from a cloud data source at the next boot.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_yaml::Value;

use super::cloud_init::{render_into, Values, OUTPUTS};
use super::util::{remove_tree, run, stdout_of, write, ScratchDir};

/// Where `cargo xtask setup` unpacks Debian's cloud-init package.
pub const CLOUD_INIT_ROOT: &str = "/opt/tailgate-xtask/cloud-init";
/// Debian's Python, which has the libraries cloud-init imports (python3-yaml, …).
const PYTHON: &str = "/usr/bin/python3";

/// Example values the check renders the templates with.
const EXAMPLE_DEB_URL: &str = "https://files.example.com/tailgate/tailgate_0.1.0_amd64.deb";
const EXAMPLE_LOGIN_SERVER: &str =
    "tg://control.example.com:7443#7d0a7f0e3c6b2a19d4c5e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7";
const EXAMPLE_AUTH_KEY: &str = "tgkey-5f3a9c1e-0b7d4e2a6c8f1b3d5e7a9c0f";
const EXAMPLE_ROUTES: &str = "10.0.0.0/16,10.1.0.0/16";

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The `cloud-init` program of the unpacked package.
fn cloud_init_bin() -> PathBuf {
    Path::new(CLOUD_INIT_ROOT).join("usr/bin/cloud-init")
}

/// The unpacked package's Python modules.
fn cloud_init_modules() -> PathBuf {
    Path::new(CLOUD_INIT_ROOT).join("usr/lib/python3/dist-packages")
}

/// `cargo xtask setup`: unpacks Debian's cloud-init package into [`CLOUD_INIT_ROOT`] unless it
/// is there (its libraries come from `APT_PACKAGES`).
pub fn install() -> Result<()> {
    if cloud_init_bin().is_file() {
        return Ok(());
    }
    if !is_root() {
        bail!("{CLOUD_INIT_ROOT} is missing; run `cargo xtask setup` as root");
    }
    println!("xtask setup: unpacking Debian's cloud-init into {CLOUD_INIT_ROOT}");
    let parent = Path::new(CLOUD_INIT_ROOT)
        .parent()
        .context("cloud-init root has a parent")?;
    let download = ScratchDir::new(parent.join("cloud-init.download"))?;
    // apt drops to the _apt user for downloads; let it write there.
    super::util::set_mode(download.path(), 0o777)?;
    let fetch = |dir: &Path| {
        Command::new("apt-get")
            .args(["download", "-qq", "cloud-init"])
            .current_dir(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !fetch(download.path()) {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        if !fetch(download.path()) {
            bail!("apt-get download cloud-init failed");
        }
    }
    let deb = std::fs::read_dir(download.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = parent.join("cloud-init.unpacking");
    remove_tree(&unpacked)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    remove_tree(Path::new(CLOUD_INIT_ROOT))?;
    std::fs::rename(&unpacked, CLOUD_INIT_ROOT)
        .with_context(|| format!("moving {} to {CLOUD_INIT_ROOT}", unpacked.display()))?;
    let version = stdout_of(cloud_init_command().arg("--version"))?;
    println!("xtask setup: {version}");
    Ok(())
}

/// `cloud-init` from the unpacked package, run by Debian's Python.
fn cloud_init_command() -> Command {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(cloud_init_bin())
        .env("PYTHONPATH", cloud_init_modules())
        // Nothing of the machine's own cloud-init state is read for a --config-file check.
        .env_remove("PYTHONHOME");
    cmd
}

/// Renders the templates into a scratch directory and checks every file (see the module
/// documentation).
pub fn check(root: &Path, bin: &Path) -> Result<()> {
    let started = Instant::now();
    let scratch = ScratchDir::new(root.join("target/cloud-init-check"))?;
    let values = Values::new(
        EXAMPLE_DEB_URL,
        EXAMPLE_LOGIN_SERVER,
        EXAMPLE_AUTH_KEY,
        EXAMPLE_ROUTES,
    )?;
    let files = render_into(root, &values, &scratch.path().join("rendered"))?;
    let known_keys = schema_keys()?;
    let up_help = stdout_of(Command::new(bin).args(["up", "--help"]))?;
    for (file, (_, _, priority)) in files.iter().zip(OUTPUTS) {
        check_file(
            file,
            &values,
            *priority,
            &known_keys,
            &up_help,
            scratch.path(),
        )
        .with_context(|| format!("checking {}", file.display()))?;
        println!("xtask: {}: valid", file.display());
    }
    println!(
        "xtask: cloud-init check passed ({} files) in {:.1} s",
        files.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every key cloud-init's schema defines for a module (the top-level keys of a cloud-config).
fn schema_keys() -> Result<BTreeSet<String>> {
    let path = cloud_init_modules().join("cloudinit/config/schemas/schema-cloud-config-v1.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let defs = schema
        .get("$defs")
        .and_then(|d| d.as_object())
        .with_context(|| format!("{}: no $defs", path.display()))?;
    let keys: BTreeSet<String> = defs
        .values()
        .filter_map(|d| d.get("properties").and_then(|p| p.as_object()))
        .flat_map(|p| p.keys().cloned())
        .collect();
    if !keys.contains("write_files") || !keys.contains("runcmd") {
        bail!(
            "{}: unexpected layout (no write_files or runcmd)",
            path.display()
        );
    }
    Ok(keys)
}

/// The checks of one rendered file.
fn check_file(
    file: &Path,
    values: &Values,
    priority: Option<u32>,
    known_keys: &BTreeSet<String>,
    up_help: &str,
    scratch: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    if !text.starts_with("#cloud-config\n") {
        bail!("the first line is not #cloud-config");
    }
    // cloud-init's own validation.
    let out = cloud_init_command()
        .args(["schema", "--config-file"])
        .arg(file)
        .output()
        .context("running cloud-init schema (install it with `cargo xtask setup`)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("Valid cloud-config") {
        bail!(
            "cloud-init schema refused it: {} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let doc: Value = serde_yaml::from_str(&text).context("parsing the YAML")?;
    let top = doc.as_mapping().context("the document is not a mapping")?;
    for key in top.keys() {
        let key = key.as_str().context("a top-level key is not a string")?;
        if !known_keys.contains(key) {
            bail!("top-level key {key:?} is not a cloud-init module's (it would be ignored)");
        }
    }
    let mut scripts = Vec::new();
    let mut written = std::collections::BTreeMap::new();
    for entry in top
        .get("write_files")
        .and_then(Value::as_sequence)
        .context("no write_files list")?
    {
        let path = entry
            .get("path")
            .and_then(Value::as_str)
            .context("a write_files entry without path")?;
        let content = entry
            .get("content")
            .and_then(Value::as_str)
            .with_context(|| format!("write_files {path}: no content"))?;
        if content.starts_with("#!/bin/sh\n") {
            scripts.push((format!("write_files {path}"), content.to_string()));
        }
        written.insert(path.to_string(), content.to_string());
    }
    for (i, cmd) in top
        .get("runcmd")
        .and_then(Value::as_sequence)
        .context("no runcmd list")?
        .iter()
        .enumerate()
    {
        match cmd {
            Value::String(s) => scripts.push((format!("runcmd {i}"), s.clone())),
            Value::Sequence(argv) => {
                let argv: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
                if let ["sh", "-c", script, ..] = argv.as_slice() {
                    scripts.push((format!("runcmd {i}"), script.to_string()));
                }
            }
            other => bail!("runcmd {i}: neither a string nor a list: {other:?}"),
        }
    }
    if scripts.is_empty() {
        bail!("no shell scripts found");
    }
    check_install(top, values)?;
    for (i, (what, script)) in scripts.iter().enumerate() {
        let path = scratch.join(format!("script-{i}.sh"));
        write(&path, script, 0o644)?;
        let out = Command::new("sh").arg("-n").arg(&path).output()?;
        if !out.status.success() {
            bail!(
                "{what}: sh -n: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        check_up_flags(what, script, up_help)?;
    }
    check_written(&written, values, priority)
}

/// The `runcmd` script downloads the package from the user's URL, installs it with apt keeping
/// the config written by `write_files`, applies the sysctls and starts both units.
fn check_install(top: &serde_yaml::Mapping, values: &Values) -> Result<()> {
    let runcmd = top
        .get("runcmd")
        .and_then(Value::as_sequence)
        .context("no runcmd list")?;
    let install = runcmd
        .iter()
        .filter_map(Value::as_sequence)
        .map(|argv| argv.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .find(|argv| argv.contains(&values.deb_url.as_str()))
        .with_context(|| {
            format!(
                "no runcmd entry is given the package URL {}",
                values.deb_url
            )
        })?;
    let script = match install.as_slice() {
        ["sh", "-c", script, _name, url] if *url == values.deb_url => *script,
        other => bail!("the install entry is not `sh -c SCRIPT NAME URL`: {other:?}"),
    };
    for step in [
        "curl -fsSL",
        "\"$1\"",
        "apt-get install -y",
        "--force-confold",
        "/var/tmp/tailgate.deb",
        "sysctl -p /etc/sysctl.d/60-tailgate-forwarding.conf",
        "systemctl enable --now tailgate.service tailgate-up.service",
    ] {
        if !script.contains(step) {
            bail!("the install script has no `{step}`:\n{script}");
        }
    }
    if !script.starts_with("set -eu\n") {
        bail!("the install script does not stop at the first failure (set -eu)");
    }
    Ok(())
}

/// Every `--flag` after `tailgate up` in `script` is one `tailgate up --help` lists.
fn check_up_flags(what: &str, script: &str, up_help: &str) -> Result<()> {
    for line in script.lines() {
        let Some((_, args)) = line.split_once("tailgate up") else {
            continue;
        };
        for word in args.split_whitespace().filter(|w| w.starts_with("--")) {
            let flag = word.split(['=', ';']).next().unwrap_or(word);
            if !up_help.contains(&format!("{flag} ")) && !up_help.contains(&format!("{flag}\n")) {
                bail!("{what}: `tailgate up` has no flag {flag}");
            }
        }
    }
    Ok(())
}

/// What the file writes: the tailgate config in control mode with the values, the forwarding
/// sysctls, the auth key, the unit that brings the node up with the file's routes or exit node
/// and (HA) priority.
fn check_written(
    written: &std::collections::BTreeMap<String, String>,
    values: &Values,
    priority: Option<u32>,
) -> Result<()> {
    let get = |path: &str| {
        written
            .get(path)
            .with_context(|| format!("does not write {path}"))
    };
    let config = get("/etc/tailgate/tailgate.toml")?;
    if !config.contains(&format!("login_server = \"{}\"", values.login_server)) {
        bail!("the tailgate config does not have the login server");
    }
    let sysctl = get("/etc/sysctl.d/60-tailgate-forwarding.conf")?;
    for key in [
        "net.ipv4.ip_forward = 1",
        "net.ipv6.conf.all.forwarding = 1",
    ] {
        if !sysctl.lines().any(|l| l.trim() == key) {
            bail!("the sysctl file does not set {key}");
        }
    }
    if get("/etc/tailgate/authkey")?.trim() != values.auth_key {
        bail!("the auth key file does not hold the auth key");
    }
    let up = get("/usr/local/sbin/tailgate-up")?;
    let unit = get("/etc/systemd/system/tailgate-up.service")?;
    if !unit.contains("ExecStart=/usr/local/sbin/tailgate-up") {
        bail!("tailgate-up.service does not run /usr/local/sbin/tailgate-up");
    }
    let routes = values.routes.join(",");
    let exit = config.contains("advertise_exit_node = true");
    if exit != up.contains("--advertise-exit-node") {
        bail!("the config and tailgate-up disagree about the exit node");
    }
    if !exit && !up.contains(&format!("--advertise-routes={routes}")) {
        bail!("tailgate-up does not advertise {routes}");
    }
    if let Some(p) = priority {
        if !up.contains(&format!("--route-priority={p}")) {
            bail!("tailgate-up does not set route priority {p}");
        }
    }
    Ok(())
}
