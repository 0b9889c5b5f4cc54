//! `cargo xtask package cloud-init`: the `#cloud-config` templates in `image/cloud-init/`
//! (subnet router, exit node, HA subnet-router pair) rendered with the user's package URL,
//! login server, auth key and routes into `target/cloud-init/`. Also the checks of those values
//! and the `@NAME@` placeholder substitution the Kubernetes manifests share.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::util::{mkdir, remove_tree, write};

/// Where the templates are, relative to the workspace.
pub const TEMPLATE_DIR: &str = "image/cloud-init";
/// Where `cargo xtask package cloud-init` writes the rendered files.
pub const OUT_DIR: &str = "target/cloud-init";

/// The files rendered: output name, template, HA route priority (`@ROUTE_PRIORITY@`).
pub const OUTPUTS: &[(&str, &str, Option<u32>)] = &[
    ("subnet-router.yaml", "subnet-router.yaml", None),
    ("exit-node.yaml", "exit-node.yaml", None),
    (
        "ha-subnet-router-a.yaml",
        "ha-subnet-router.yaml",
        Some(200),
    ),
    (
        "ha-subnet-router-b.yaml",
        "ha-subnet-router.yaml",
        Some(100),
    ),
];

/// `cargo xtask package cloud-init` options: the values the templates' placeholders take.
#[derive(clap::Args, Debug, Clone)]
pub struct CloudInitArgs {
    /// Where the VMs download the tailgate .deb (http:// or https://; e.g. a pre-signed
    /// object-storage URL or a web server of yours).
    #[arg(long, value_name = "URL")]
    pub deb_url: String,
    /// The coordination server's login URL, tg://HOST:PORT#KEY (`tailgate control info`).
    #[arg(long, value_name = "URL")]
    pub login_server: String,
    /// An auth key from `tailgate control authkey create` (`--reusable` for the HA pair, which
    /// registers two machines with it).
    #[arg(long, value_name = "KEY")]
    pub auth_key: String,
    /// The subnet routes the routers advertise, comma separated (10.0.0.0/16,10.1.0.0/16).
    #[arg(long, value_name = "CIDRS")]
    pub routes: String,
}

/// Checked values, ready to be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    /// The package URL.
    pub deb_url: String,
    /// The login server URL.
    pub login_server: String,
    /// The auth key.
    pub auth_key: String,
    /// The routes, each `addr/len` with no host bits.
    pub routes: Vec<String>,
}

impl Values {
    /// Checks every value; the error names the option and what is wrong with it.
    pub fn new(deb_url: &str, login_server: &str, auth_key: &str, routes: &str) -> Result<Values> {
        Ok(Values {
            deb_url: check_deb_url(deb_url)?,
            login_server: check_login_server(login_server)?,
            auth_key: check_auth_key(auth_key)?,
            routes: check_routes(routes)?,
        })
    }

    /// The placeholders and their text; `priority` fills `@ROUTE_PRIORITY@`.
    fn placeholders(&self, priority: Option<u32>) -> BTreeMap<&'static str, String> {
        let mut map = BTreeMap::from([
            ("DEB_URL", self.deb_url.clone()),
            ("LOGIN_SERVER", self.login_server.clone()),
            ("AUTH_KEY", self.auth_key.clone()),
            ("ROUTES", self.routes.join(",")),
            (
                "ROUTES_TOML",
                self.routes
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ]);
        if let Some(p) = priority {
            map.insert("ROUTE_PRIORITY", p.to_string());
        }
        map
    }
}

/// `cargo xtask package cloud-init`: checks the values and renders every template into
/// `target/cloud-init/` (emptied first); returns the files written.
pub fn render(root: &Path, args: &CloudInitArgs) -> Result<Vec<PathBuf>> {
    let values = Values::new(
        &args.deb_url,
        &args.login_server,
        &args.auth_key,
        &args.routes,
    )?;
    let out = root.join(OUT_DIR);
    remove_tree(&out)?;
    let files = render_into(root, &values, &out)?;
    for f in &files {
        println!("xtask: wrote {}", f.display());
    }
    println!(
        "xtask: pass one of them as the VMs' user data (docs/cloud-init.md); they hold the auth \
         key, so keep them private"
    );
    Ok(files)
}

/// Renders every template with `values` into `out` (created if missing).
pub fn render_into(root: &Path, values: &Values, out: &Path) -> Result<Vec<PathBuf>> {
    mkdir(out)?;
    let mut written = Vec::new();
    for (name, template, priority) in OUTPUTS {
        let path = root.join(TEMPLATE_DIR).join(template);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let rendered = substitute(&text, &values.placeholders(*priority))
            .with_context(|| format!("rendering {}", path.display()))?;
        let dest = out.join(name);
        // The files hold the auth key.
        write(&dest, rendered, 0o600)?;
        written.push(dest);
    }
    Ok(written)
}

/// Replaces every `@NAME@` in `template` with `values[NAME]` in one pass (substituted text is
/// not scanned again); a placeholder without a value is an error.
pub fn substitute(template: &str, values: &BTreeMap<&str, String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('@') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('@') {
            let name = &after[..name_len];
            let Some(v) = values.get(name) else {
                bail!("no value for the placeholder @{name}@");
            };
            out.push_str(v);
            rest = &after[name_len + 1..];
        } else {
            out.push('@');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Characters that would break out of the quoted places the values are written to (YAML and
/// TOML strings, a shell argument).
fn unsafe_char(c: char) -> bool {
    c.is_whitespace() || c.is_control() || "'\"\\`".contains(c)
}

/// `--deb-url`: an http:// or https:// URL with a host.
pub fn check_deb_url(url: &str) -> Result<String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
        bail!("--deb-url {url:?}: want an http:// or https:// URL");
    };
    if let Some(c) = url.chars().find(|&c| unsafe_char(c)) {
        bail!("--deb-url {url:?}: {c:?} is not allowed in the URL (percent-encode it)");
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        bail!("--deb-url {url:?}: the URL has no host");
    }
    Ok(url.to_string())
}

/// `--login-server`: `tg://HOST:PORT#KEY` as `tailgate control info` prints it (the key pins
/// the server from the first connection, so it is required here).
pub fn check_login_server(url: &str) -> Result<String> {
    let url = url.trim();
    let want = "want tg://HOST:PORT#KEY as `tailgate control info` prints it";
    let Some(rest) = url.strip_prefix("tg://") else {
        bail!("--login-server {url:?}: {want}");
    };
    let Some((hostport, key)) = rest.split_once('#') else {
        bail!("--login-server {url:?}: the server key after # is missing; {want}");
    };
    let key_ok = match key.len() {
        64 => key.chars().all(|c| c.is_ascii_hexdigit()),
        43 | 44 => key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=-_".contains(c)),
        _ => false,
    };
    if !key_ok {
        bail!("--login-server {url:?}: the key after # is not 64 hex digits or base64 of 32 bytes");
    }
    let port = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, port) = v6
                .split_once("]:")
                .with_context(|| format!("--login-server {url:?}: {want}"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                bail!("--login-server {url:?}: {h:?} is not an IPv6 address");
            }
            port
        }
        None => {
            let (h, port) = hostport
                .rsplit_once(':')
                .with_context(|| format!("--login-server {url:?}: the port is missing; {want}"))?;
            if h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                bail!("--login-server {url:?}: {h:?} is not a host name or IPv4 address");
            }
            port
        }
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => bail!("--login-server {url:?}: port {port:?} is not a number 1-65535"),
    }
    Ok(url.to_string())
}

/// `--auth-key`: `tgkey-ID-SECRET` as `tailgate control authkey create` prints it.
pub fn check_auth_key(key: &str) -> Result<String> {
    let key = key.trim();
    let parts = key
        .strip_prefix("tgkey-")
        .and_then(|rest| rest.split_once('-'));
    let ok = parts.is_some_and(|(id, secret)| !id.is_empty() && !secret.is_empty())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!(
            "--auth-key: not an auth key (want tgkey-ID-SECRET as `tailgate control authkey \
             create` prints it)"
        );
    }
    Ok(key.to_string())
}

/// `--routes`: comma-separated `addr/len` networks without host bits; not a default route
/// (an exit node is its own file).
pub fn check_routes(list: &str) -> Result<Vec<String>> {
    let mut routes = Vec::new();
    for r in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let bad = || format!("--routes: {r:?} is not a network such as 10.0.0.0/16 or fd00::/64");
        let (addr, len) = r.split_once('/').with_context(bad)?;
        let addr: IpAddr = addr.parse().ok().with_context(bad)?;
        let len: u8 = len.parse().ok().with_context(bad)?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if len > bits {
            bail!("--routes: {r:?}: the prefix length is more than {bits}");
        }
        if len == 0 {
            bail!("--routes: {r:?} is a default route; use the exit-node file for that");
        }
        let raw = match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
            IpAddr::V6(a) => u128::from(a),
        };
        // Both families sit in the top bits of `raw`, so the host part is what follows the
        // first `len` bits.
        let host_bits = if len >= 128 {
            0
        } else {
            raw & (u128::MAX >> len)
        };
        if host_bits != 0 {
            bail!("--routes: {r:?} has host bits set; give the network address");
        }
        routes.push(r.to_string());
    }
    if routes.is_empty() {
        bail!("--routes: give at least one network, e.g. 10.0.0.0/16");
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "7d0a7f0e3c6b2a19d4c5e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7";

    #[test]
    fn good_values_pass() {
        let v = Values::new(
            "https://files.example.com/tailgate_0.1.0_amd64.deb?sig=abc%2B",
            &format!("tg://control.example.com:7443#{KEY}"),
            "tgkey-1a2b-c3d4e5",
            "10.0.0.0/16, fd00:1::/64,192.168.1.0/24",
        )
        .unwrap();
        assert_eq!(v.routes, ["10.0.0.0/16", "fd00:1::/64", "192.168.1.0/24"]);
        check_login_server(&format!("tg://[2001:db8::1]:7443#{KEY}")).unwrap();
    }

    #[test]
    fn malformed_values_are_refused_with_the_reason() {
        fn e<T: std::fmt::Debug>(r: Result<T>) -> String {
            format!("{:#}", r.unwrap_err())
        }
        assert!(e(check_deb_url("ftp://x/y.deb")).contains("http"));
        assert!(e(check_deb_url("https://x/a b.deb")).contains("not allowed"));
        assert!(e(check_deb_url("https://x/it's.deb")).contains("not allowed"));
        assert!(e(check_deb_url("https:///y.deb")).contains("no host"));
        assert!(e(check_login_server("tg://h:7443")).contains("key after #"));
        assert!(e(check_login_server(&format!("https://h:7443#{KEY}"))).contains("tg://"));
        assert!(e(check_login_server(&format!("tg://h#{KEY}"))).contains("port"));
        assert!(e(check_login_server(&format!("tg://h:99999#{KEY}"))).contains("port"));
        assert!(e(check_login_server("tg://h:1#short")).contains("not 64 hex"));
        assert!(e(check_login_server(&format!("tg://a\"b:1#{KEY}"))).contains("host name"));
        assert!(e(check_auth_key("secret")).contains("tgkey-"));
        assert!(e(check_auth_key("tgkey-abc")).contains("tgkey-"));
        assert!(e(check_auth_key("tgkey-a-b\"c")).contains("tgkey-"));
        assert!(e(check_routes("10.0.0.1/16")).contains("host bits"));
        assert!(e(check_routes("0.0.0.0/0")).contains("default route"));
        assert!(e(check_routes("10.0.0.0/33")).contains("more than 32"));
        assert!(e(check_routes("10.0.0.0")).contains("not a network"));
        assert!(e(check_routes("lan")).contains("not a network"));
        assert!(e(check_routes(" , ")).contains("at least one"));
    }

    #[test]
    fn substitution_is_one_pass_and_complete() {
        let values = BTreeMap::from([("A", "@B@".to_string()), ("B", "x".to_string())]);
        assert_eq!(
            substitute("a=@A@ b=@B@ mail@host", &values).unwrap(),
            "a=@B@ b=x mail@host"
        );
        let err = substitute("@C@", &values).unwrap_err().to_string();
        assert!(err.contains("@C@"), "{err}");
    }

    #[test]
    fn every_template_renders_without_leftover_placeholders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let v = Values::new(
            "https://files.example.com/t.deb",
            &format!("tg://control.example.com:7443#{KEY}"),
            "tgkey-1a2b-c3d4e5",
            "10.0.0.0/16",
        )
        .unwrap();
        for (name, template, priority) in OUTPUTS {
            let text = std::fs::read_to_string(root.join(TEMPLATE_DIR).join(template)).unwrap();
            let out = substitute(&text, &v.placeholders(*priority)).unwrap();
            assert!(out.starts_with("#cloud-config\n"), "{name}");
            assert!(out.contains(&v.auth_key), "{name}");
            if let Some(p) = priority {
                assert!(out.contains(&format!("--route-priority={p}")), "{name}");
            }
        }
    }
}
