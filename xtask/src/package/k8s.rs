//! `cargo xtask package k8s`: the Kubernetes manifests in `image/k8s/` (namespace, auth
//! Secret, HA subnet-router pair, exit node) rendered with the user's routes, image and,
//! optionally, auth key and login server into `target/k8s/`, named so that `kubectl apply -f
//! target/k8s/` creates them in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::cloud_init::{check_auth_key, check_login_server, check_routes, substitute};
use super::util::{mkdir, remove_tree, write};

/// Where the manifests are, relative to the workspace.
pub const TEMPLATE_DIR: &str = "image/k8s";
/// Where `cargo xtask package k8s` writes them.
pub const OUT_DIR: &str = "target/k8s";
/// The image the manifests name: what `cargo xtask package oci` builds.
pub const DEFAULT_IMAGE: &str = "tailgate:latest";

/// The manifests: output name (its prefix orders `kubectl apply -f DIR`), template, and
/// whether it is the Secret (written only with an auth key and login server).
pub const OUTPUTS: &[(&str, &str, bool)] = &[
    ("00-namespace.yaml", "namespace.yaml", false),
    ("10-secret.yaml", "secret.yaml", true),
    ("20-subnet-router.yaml", "subnet-router.yaml", false),
    ("30-exit-node.yaml", "exit-node.yaml", false),
];

/// `cargo xtask package k8s` options.
#[derive(clap::Args, Debug, Clone)]
pub struct K8sArgs {
    /// The subnet routes the router pair advertises, comma separated (for example the
    /// cluster's pod and service ranges, 10.244.0.0/16,10.96.0.0/12).
    #[arg(long, value_name = "CIDRS")]
    pub routes: String,
    /// The container image the pods run, if not the locally loaded tailgate:latest (e.g. the
    /// same image pushed to the cluster's registry).
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Auth key for the Secret (`tailgate control authkey create --reusable`); with
    /// --login-server. Without both, create the Secret with kubectl (docs/kubernetes.md).
    #[arg(long, value_name = "KEY", requires = "login_server")]
    pub auth_key: Option<String>,
    /// The coordination server's tg://HOST:PORT#KEY URL for the Secret; with --auth-key.
    #[arg(long, value_name = "URL", requires = "auth_key")]
    pub login_server: Option<String>,
}

/// `--image`: a container image reference (`[registry/]name[:tag][@digest]`).
pub fn check_image(image: &str) -> Result<String> {
    let image = image.trim();
    let ok = !image.is_empty()
        && image.len() <= 255
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        && image
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("--image {image:?}: not an image reference such as tailgate:latest or registry.example.com/tailgate:0.1.0");
    }
    Ok(image.to_string())
}

/// `cargo xtask package k8s`: checks the values and renders the manifests into `target/k8s/`
/// (emptied first); returns the files written.
pub fn render(root: &Path, args: &K8sArgs) -> Result<Vec<PathBuf>> {
    let out = root.join(OUT_DIR);
    remove_tree(&out)?;
    let files = render_into(
        root,
        &args.routes,
        &args.image,
        args.auth_key.as_deref().zip(args.login_server.as_deref()),
        &out,
    )?;
    for f in &files {
        println!("xtask: wrote {}", f.display());
    }
    if args.auth_key.is_none() {
        println!(
            "xtask: no Secret written (no --auth-key/--login-server); create it with \
             `kubectl -n tailgate create secret generic tailgate-auth \
             --from-literal=TS_AUTHKEY=… --from-literal=TG_LOGIN_SERVER=…`"
        );
    }
    println!(
        "xtask: apply with `kubectl apply -f {}` (docs/kubernetes.md)",
        out.display()
    );
    Ok(files)
}

/// Renders the manifests into `out` (created if missing): `routes` and `image` checked and
/// filled in, the Secret only with `secret` = (auth key, login server).
pub fn render_into(
    root: &Path,
    routes: &str,
    image: &str,
    secret: Option<(&str, &str)>,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let routes = check_routes(routes)?;
    let image = check_image(image)?;
    let mut values = BTreeMap::from([("ROUTES", routes.join(","))]);
    if let Some((key, server)) = secret {
        values.insert("AUTH_KEY", check_auth_key(key)?);
        values.insert("LOGIN_SERVER", check_login_server(server)?);
    }
    mkdir(out)?;
    let mut written = Vec::new();
    for (name, template, is_secret) in OUTPUTS {
        if *is_secret && secret.is_none() {
            continue;
        }
        let path = root.join(TEMPLATE_DIR).join(template);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let text =
            substitute(&text, &values).with_context(|| format!("rendering {}", path.display()))?;
        let text = replace_image(&text, &image);
        let dest = out.join(name);
        write(&dest, text, if *is_secret { 0o600 } else { 0o644 })?;
        written.push(dest);
    }
    Ok(written)
}

/// Every `image: tailgate:latest` line with `image` instead.
fn replace_image(text: &str, image: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let rest = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        if rest.trim_end() == format!("image: {DEFAULT_IMAGE}") {
            let indent = &line[..line.len() - trimmed.len()];
            let dash = if trimmed.starts_with("- ") { "- " } else { "" };
            let newline = if line.ends_with('\n') { "\n" } else { "" };
            out.push_str(&format!("{indent}{dash}image: {image}{newline}"));
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        check_image("tailgate:latest").unwrap();
        check_image("registry.example.com:5000/net/tailgate:0.1.0").unwrap();
        check_image("tailgate@sha256:0123abcd").unwrap();
        for bad in ["", "-x", "tail gate", "a\"b", "x\ny"] {
            let e = check_image(bad).unwrap_err().to_string();
            assert!(e.contains("not an image reference"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn image_lines_are_replaced_in_place() {
        let text = "      containers:\n        - name: a\n          image: tailgate:latest\n        - image: tailgate:latest\n          name: b\n# image: tailgate:latest is the default\n";
        assert_eq!(
            replace_image(text, "r.example/t:1"),
            "      containers:\n        - name: a\n          image: r.example/t:1\n        - image: r.example/t:1\n          name: b\n# image: tailgate:latest is the default\n"
        );
    }
}
