//! The tailgate configuration each `#cloud-config` template in `image/cloud-init/` writes
//! parses with the daemon's own loader, in control mode, with the routes or exit node the
//! template's `tailgate up` advertises. The names start with `package_cloud_init` so that
//! `cargo xtask test package_cloud_init` runs them with the rest of that check.

use std::path::{Path, PathBuf};

use tailgate::config::Config;
use tailgate_bench::lab::control::TempDir;

/// The example values substituted for the templates' placeholders.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("@DEB_URL@", "https://files.example.com/tailgate_0.1.0_amd64.deb"),
    (
        "@LOGIN_SERVER@",
        "tg://control.example.com:7443#7d0a7f0e3c6b2a19d4c5e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7",
    ),
    ("@AUTH_KEY@", "tgkey-5f3a9c1e-0b7d4e2a6c8f1b3d5e7a9c0f"),
    ("@ROUTES_TOML@", "\"10.0.0.0/16\", \"fd00:1::/64\""),
    ("@ROUTES@", "10.0.0.0/16,fd00:1::/64"),
    ("@ROUTE_PRIORITY@", "200"),
];

fn templates() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/cloud-init");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("image/cloud-init")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "subnet router, exit node, HA pair");
    files
}

/// The literal block (`content: |`) of the `write_files` entry for `path`, dedented.
fn written_file(yaml: &str, path: &str) -> Option<String> {
    let mut lines = yaml.lines();
    lines.find(|l| l.trim() == format!("- path: {path}"))?;
    let content = lines.find(|l| l.trim_start().starts_with("content:"))?;
    assert_eq!(content.trim(), "content: |", "{path}: a literal block");
    let key_indent = content.len() - content.trim_start().len();
    let mut block = Vec::new();
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent <= key_indent {
            break;
        }
        block.push(line);
    }
    while block.last().is_some_and(|l| l.trim().is_empty()) {
        block.pop();
    }
    let strip = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    Some(
        block
            .iter()
            .map(|l| l.get(strip..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
}

fn substitute(text: &str) -> String {
    PLACEHOLDERS
        .iter()
        .fold(text.to_string(), |t, (k, v)| t.replace(k, v))
}

#[test]
fn package_cloud_init_configs_load_with_the_daemons_loader() {
    for file in templates() {
        let yaml = std::fs::read_to_string(&file).unwrap();
        let name = file.display();
        let toml = written_file(&yaml, "/etc/tailgate/tailgate.toml")
            .unwrap_or_else(|| panic!("{name}: writes no /etc/tailgate/tailgate.toml"));
        let toml = substitute(&toml);
        assert!(!toml.contains('@'), "{name}: placeholder left: {toml}");
        // The loader creates the node key in control.state_dir: use a scratch one.
        let state = TempDir::new("tgcloudinit").unwrap();
        let state_line = "state_dir = \"/var/lib/tailgate\"";
        assert!(toml.contains(state_line), "{name}: {toml}");
        let toml = toml.replace(
            state_line,
            &format!("state_dir = {:?}", state.0.display().to_string()),
        );
        let cfg = Config::parse(Path::new("/etc/tailgate/tailgate.toml"), &toml, None)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{toml}"));
        let control = cfg.control.as_ref().expect("control mode");
        assert_eq!(
            control.login_server.as_ref().map(|l| l.address()),
            Some("control.example.com:7443".to_string()),
            "{name}"
        );
        assert!(
            !cfg.dns.accept_dns,
            "{name}: a router keeps the cloud's resolver"
        );
        let up = written_file(&yaml, "/usr/local/sbin/tailgate-up")
            .unwrap_or_else(|| panic!("{name}: writes no tailgate-up script"));
        let up = substitute(&up);
        let routes: Vec<String> = cfg
            .routing
            .advertise_routes
            .iter()
            .map(|r| r.to_string())
            .collect();
        if cfg.routing.advertise_exit_node {
            assert!(routes.is_empty(), "{name}: {routes:?}");
            assert!(up.contains("tailgate up --advertise-exit-node"), "{name}");
        } else {
            // The routes the daemon resumes with are the ones `tailgate up` advertises.
            assert_eq!(routes, ["10.0.0.0/16", "fd00:1::/64"], "{name}");
            assert!(
                up.contains(&format!("--advertise-routes={}", routes.join(","))),
                "{name}: {up}"
            );
        }
    }
}

#[test]
fn package_cloud_init_extractor_finds_blocks() {
    let yaml = "write_files:\n  - path: /a\n    content: |\n      x = 1\n\n        y\n  - path: /b\n    content: |\n      z\nruncmd: []\n";
    assert_eq!(written_file(yaml, "/a").unwrap(), "x = 1\n\n  y\n");
    assert_eq!(written_file(yaml, "/b").unwrap(), "z\n");
    assert!(written_file(yaml, "/c").is_none());
}
