//! The check `package_k8s` of `cargo xtask test`: renders the Kubernetes manifests with
//! example values and an image override, and checks them offline: every document against the
//! Kubernetes JSON schemas of the oldest and newest versions checked (`kubernetes-validate
//! --strict`, which also refuses unknown fields), the image override applied everywhere, the
//! Secret references resolving to the Secret's keys, the auth key and login server read from
//! the Secret, the state directory on a volume claim of the StatefulSet, the subnet-router pair
//! with two replicas and the exit node with one, and kernel-mode pods having what kernel mode
//! needs (NET_ADMIN, /dev/net/tun, forwarding). That every `TS_*`/`TG_*` variable is one
//! the entrypoint accepts is the test `gateway/tests/k8s_manifests.rs`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_yaml::Value;

use super::k8s::render_into;
use super::util::{run, stdout_of, ScratchDir};

/// The venv `cargo xtask setup` installs kubernetes-validate into.
pub const VENV: &str = "/opt/tailgate-xtask/kubernetes-validate";
/// The kubernetes-validate release (it bundles the schemas of Kubernetes 1.25 to 1.37).
const VERSION: &str = "1.37.0";
/// The Kubernetes versions the manifests are validated against.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

/// The StatefulSets the manifests must have, with their replicas: the HA subnet-router pair
/// and the exit node.
const WORKLOADS: &[(&str, u64)] = &[("subnet-router", 2), ("exit-node", 1)];

/// Example values the check renders the manifests with.
const EXAMPLE_ROUTES: &str = "10.244.0.0/16,10.96.0.0/12";
const EXAMPLE_IMAGE: &str = "registry.example.com/net/tailgate:0.1.0";
const EXAMPLE_AUTH_KEY: &str = "tgkey-5f3a9c1e-0b7d4e2a6c8f1b3d5e7a9c0f";
const EXAMPLE_LOGIN_SERVER: &str =
    "tg://control.example.com:7443#7d0a7f0e3c6b2a19d4c5e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7";

fn validator() -> PathBuf {
    Path::new(VENV).join("bin/kubernetes-validate")
}

fn installed() -> bool {
    Command::new(validator())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(VERSION))
}

/// `cargo xtask setup`: creates the venv with kubernetes-validate unless it is there.
pub fn install() -> Result<()> {
    if installed() {
        return Ok(());
    }
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        bail!("{VENV} is missing; run `cargo xtask setup` as root");
    }
    println!("xtask setup: kubernetes-validate {VERSION} into {VENV}");
    // Debian's Python, whatever `python3` on PATH is.
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(VENV))?;
    run(Command::new(Path::new(VENV).join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("kubernetes-validate=={VERSION}")))?;
    if !installed() {
        bail!("kubernetes-validate {VERSION} was installed into {VENV} but does not run");
    }
    Ok(())
}

/// Renders the manifests into a scratch directory and checks them (see the module
/// documentation).
pub fn check(root: &Path, _bin: &Path) -> Result<()> {
    let started = Instant::now();
    let scratch = ScratchDir::new(root.join("target/k8s-check"))?;
    let files = render_into(
        root,
        EXAMPLE_ROUTES,
        EXAMPLE_IMAGE,
        Some((EXAMPLE_AUTH_KEY, EXAMPLE_LOGIN_SERVER)),
        scratch.path(),
    )?;
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(validator())
            .args(["--strict", "--no-warn", "-k", version])
            .args(&files)
            .output()
            .context("running kubernetes-validate (install it with `cargo xtask setup`)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        if !out.status.success() {
            let errors: Vec<&str> = text.lines().filter(|l| !l.starts_with("INFO ")).collect();
            bail!(
                "kubernetes-validate --strict -k {version} refused the manifests: {} {}",
                errors.join("; "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let docs = load_documents(&files)?;
    check_documents(&docs)?;
    let version = stdout_of(Command::new(validator()).arg("--version"))?;
    println!(
        "xtask: Kubernetes check passed ({} documents, {version}, Kubernetes {}) in {:.1} s",
        docs.len(),
        KUBERNETES_VERSIONS.join(" and "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every YAML document of `files`, with the file it is in.
fn load_documents(files: &[PathBuf]) -> Result<Vec<(PathBuf, Value)>> {
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)?;
        // Documents are separated by `---` lines.
        let mut chunks = vec![String::new()];
        for line in text.lines() {
            if line.trim_end() == "---" {
                chunks.push(String::new());
            } else if let Some(last) = chunks.last_mut() {
                last.push_str(line);
                last.push('\n');
            }
        }
        for chunk in chunks {
            let doc: Value =
                serde_yaml::from_str(&chunk).with_context(|| format!("parsing {}", f.display()))?;
            if !doc.is_null() {
                docs.push((f.clone(), doc));
            }
        }
    }
    Ok(docs)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The cross-document checks.
fn check_documents(docs: &[(PathBuf, Value)]) -> Result<()> {
    let mut secrets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, d) in docs {
        if str_at(d, &["kind"]) == Some("Secret") {
            let name = str_at(d, &["metadata", "name"]).unwrap_or_default();
            let keys = d
                .get("stringData")
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            secrets.insert(name.to_string(), keys);
        }
    }
    let mut replicas = BTreeMap::new();
    for (file, d) in docs {
        if str_at(d, &["kind"]) != Some("StatefulSet") {
            continue;
        }
        let name = str_at(d, &["metadata", "name"]).unwrap_or_default();
        let claims: Vec<&str> = seq_at(d, &["spec", "volumeClaimTemplates"])
            .iter()
            .filter_map(|c| str_at(c, &["metadata", "name"]))
            .collect();
        check_pod(&d["spec"]["template"]["spec"], &secrets, &claims)
            .with_context(|| format!("{}: StatefulSet {name}", file.display()))?;
        replicas.insert(name.to_string(), d["spec"]["replicas"].as_u64());
    }
    for (name, want) in WORKLOADS {
        match replicas.get(*name) {
            Some(Some(n)) if n == want => {}
            Some(n) => bail!("StatefulSet {name}: replicas {n:?}, want {want}"),
            None => bail!("no StatefulSet {name} (found {:?})", replicas.keys()),
        }
    }
    Ok(())
}

/// One pod template: image, Secret references, the auth key from the Secret, the state
/// directory on a per-pod volume claim, kernel mode's needs.
fn check_pod(pod: &Value, secrets: &BTreeMap<String, Vec<String>>, claims: &[&str]) -> Result<()> {
    let containers = seq_at(pod, &["containers"]);
    let inits = seq_at(pod, &["initContainers"]);
    for c in containers.iter().chain(inits) {
        let cname = str_at(c, &["name"]).unwrap_or_default();
        if str_at(c, &["image"]) != Some(EXAMPLE_IMAGE) {
            bail!("container {cname}: the image override was not applied");
        }
    }
    let main = containers
        .iter()
        .find(|c| str_at(c, &["name"]) == Some("tailgate"))
        .context("no container named tailgate")?;
    let mut env = BTreeMap::new();
    let mut from_secret = Vec::new();
    for e in seq_at(main, &["env"]) {
        let name = str_at(e, &["name"]).context("an env entry without name")?;
        if let Some(r) = e.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
            from_secret.push(name);
            let (secret, key) = (
                str_at(r, &["name"]).unwrap_or_default(),
                str_at(r, &["key"]).unwrap_or_default(),
            );
            if !secrets
                .get(secret)
                .is_some_and(|k| k.iter().any(|k| k == key))
            {
                bail!("{name} refers to key {key:?} of Secret {secret:?}, which has no such key");
            }
        }
        env.insert(name, str_at(e, &["value"]).unwrap_or_default());
    }
    for var in ["TS_AUTHKEY", "TG_LOGIN_SERVER"] {
        if !from_secret.contains(&var) {
            bail!("{var} does not come from the Secret (secretKeyRef)");
        }
    }
    // The node key and registration survive restarts and rescheduling only on a volume claim
    // of the StatefulSet mounted at the state directory.
    let state_dir = env
        .get("TS_STATE_DIR")
        .copied()
        .filter(|d| !d.is_empty())
        .context("no TS_STATE_DIR")?;
    let state_volume = seq_at(main, &["volumeMounts"])
        .iter()
        .find(|m| str_at(m, &["mountPath"]) == Some(state_dir))
        .and_then(|m| str_at(m, &["name"]))
        .with_context(|| format!("nothing mounted at TS_STATE_DIR {state_dir}"))?;
    if !claims.contains(&state_volume) {
        bail!(
            "the state directory {state_dir} is on volume {state_volume:?}, not one of the \
             volumeClaimTemplates {claims:?}"
        );
    }
    if env.get("TS_USERSPACE") != Some(&"false") {
        return Ok(());
    }
    let caps: Vec<&str> = seq_at(main, &["securityContext", "capabilities", "add"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for cap in ["NET_ADMIN", "NET_RAW"] {
        if !caps.contains(&cap) {
            bail!("kernel mode (TS_USERSPACE=false) without the {cap} capability");
        }
    }
    let tun_volume = seq_at(pod, &["volumes"])
        .iter()
        .find(|v| str_at(v, &["hostPath", "path"]) == Some("/dev/net/tun"))
        .and_then(|v| str_at(v, &["name"]))
        .context("kernel mode without a /dev/net/tun hostPath volume")?;
    if !seq_at(main, &["volumeMounts"]).iter().any(|m| {
        str_at(m, &["name"]) == Some(tun_volume)
            && str_at(m, &["mountPath"]) == Some("/dev/net/tun")
    }) {
        bail!("kernel mode without /dev/net/tun mounted");
    }
    let forwarding = inits.iter().any(|c| {
        c.get("securityContext")
            .and_then(|s| s.get("privileged"))
            .and_then(Value::as_bool)
            == Some(true)
            && seq_at(c, &["command"])
                .iter()
                .filter_map(Value::as_str)
                .any(|a| {
                    a.contains("/proc/sys/net/ipv4/ip_forward")
                        && a.contains("/proc/sys/net/ipv6/conf/all/forwarding")
                })
    });
    if !forwarding {
        bail!("kernel mode without a privileged init container turning forwarding on");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifests rendered as the check renders them, as documents.
    fn rendered() -> Vec<(PathBuf, Value)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = std::env::temp_dir().join(format!("tailgate-k8s-test-{}", std::process::id()));
        let files = render_into(
            root,
            EXAMPLE_ROUTES,
            EXAMPLE_IMAGE,
            Some((EXAMPLE_AUTH_KEY, EXAMPLE_LOGIN_SERVER)),
            &out,
        )
        .unwrap();
        let docs = load_documents(&files).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
        docs
    }

    /// The tailgate container of the StatefulSet `name`.
    fn container<'a>(docs: &'a mut [(PathBuf, Value)], name: &str) -> &'a mut Value {
        let set = docs
            .iter_mut()
            .map(|(_, d)| d)
            .find(|d| {
                str_at(d, &["kind"]) == Some("StatefulSet")
                    && str_at(d, &["metadata", "name"]) == Some(name)
            })
            .unwrap();
        set["spec"]["template"]["spec"]["containers"]
            .as_sequence_mut()
            .unwrap()
            .iter_mut()
            .find(|c| str_at(c, &["name"]) == Some("tailgate"))
            .unwrap()
    }

    #[test]
    fn package_k8s_documents_check_refuses_what_is_missing() {
        let good = rendered();
        check_documents(&good).unwrap();

        // One router instead of a pair.
        let mut docs = good.clone();
        for (_, d) in &mut docs {
            if str_at(d, &["metadata", "name"]) == Some("subnet-router")
                && str_at(d, &["kind"]) == Some("StatefulSet")
            {
                d["spec"]["replicas"] = Value::from(1);
            }
        }
        let e = format!("{:#}", check_documents(&docs).unwrap_err());
        assert!(e.contains("replicas"), "{e}");

        // The state directory on a volume that is not a claim (lost with the pod).
        let mut docs = good.clone();
        let c = container(&mut docs, "exit-node");
        for m in c["volumeMounts"].as_sequence_mut().unwrap() {
            if str_at(m, &["mountPath"]) == Some("/var/lib/tailgate") {
                m["name"] = Value::from("scratch");
            }
        }
        let e = format!("{:#}", check_documents(&docs).unwrap_err());
        assert!(e.contains("volumeClaimTemplates"), "{e}");

        // The auth key written into the manifest instead of read from the Secret.
        let mut docs = good;
        let c = container(&mut docs, "subnet-router");
        for v in c["env"].as_sequence_mut().unwrap() {
            if str_at(v, &["name"]) == Some("TS_AUTHKEY") {
                *v = serde_yaml::from_str("{name: TS_AUTHKEY, value: tgkey-x}").unwrap();
            }
        }
        let e = format!("{:#}", check_documents(&docs).unwrap_err());
        assert!(
            e.contains("TS_AUTHKEY does not come from the Secret"),
            "{e}"
        );
    }
}
