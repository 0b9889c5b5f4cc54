//! Pointing the operating system at MagicDNS (`accept_dns`, Tailscale's `--accept-dns`).
//!
//! Two ways, chosen at start:
//!
//! - **systemd-resolved**, when it runs and the system's resolv.conf is its file: the TUN link
//!   gets 100.100.100.100 as its DNS server, the tailnet domain as a search domain and every
//!   split-DNS suffix as a routing-only domain (`~suffix`); with "override local DNS" and global
//!   nameservers, also `~.` and the default route. `resolvectl revert` undoes it, and resolved
//!   forgets the link by itself if the daemon dies (the TUN device goes away).
//! - **resolv.conf**, otherwise: the original is saved to a backup file (atomically) and the
//!   file is rewritten to `nameserver 100.100.100.100` with the tailnet domain searched first.
//!   The resolver then forwards other names to the original's nameservers (unless "override
//!   local DNS" sends them to the global ones). On shutdown the original goes back byte for
//!   byte; after a crash, the next start puts it back before doing anything else.

use std::fs;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, Context, Result};

use super::resolv_conf::{self, ResolvConf};
use super::{DnsView, Resolvers, Upstream, DNS_PORT, SERVICE_IPV4, SERVICE_IPV6};

/// Content of the backup when there was no resolv.conf at all (restoring removes the file).
const NO_FILE: &str = "# tailgate: there was no resolv.conf before\n";

/// Where systemd-resolved keeps its resolv.conf files and its varlink socket.
const RESOLVED_DIR: &str = "/run/systemd/resolve";

/// Where the system's resolver configuration lives, and where its original is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsDnsSettings {
    /// The system's resolv.conf (`/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// The copy of the original taken before rewriting it.
    pub backup: PathBuf,
}

/// What the system is told, derived from the resolver's view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsDnsConfig {
    /// Domains searched for short names (the tailnet domain).
    pub search: Vec<String>,
    /// Domains whose queries go to MagicDNS without being searched (split-DNS suffixes).
    pub match_domains: Vec<String>,
    /// Send every query to MagicDNS ("override local DNS" with global nameservers).
    pub all_queries: bool,
}

impl OsDnsConfig {
    /// The configuration for `view`.
    pub fn for_view(view: &DnsView, override_local_dns: bool) -> OsDnsConfig {
        OsDnsConfig {
            search: (!view.domain.is_empty())
                .then(|| view.domain.clone())
                .into_iter()
                .collect(),
            match_domains: view.split.iter().map(|r| r.suffix.clone()).collect(),
            all_queries: override_local_dns && !view.global.is_empty(),
        }
    }
}

/// The upstreams the resolver uses for names outside the tailnet and the split routes.
///
/// With "override local DNS" off (Tailscale's default) the system's own nameservers, read from
/// the original resolv.conf, answer them; with it on, the configured global nameservers do. Either
/// side falls back to the other when it has none.
pub fn effective_resolvers(
    configured: &Resolvers,
    override_local_dns: bool,
    system_nameservers: &[IpAddr],
) -> Resolvers {
    let use_system =
        !system_nameservers.is_empty() && (!override_local_dns || configured.global.is_empty());
    if !use_system {
        return configured.clone();
    }
    Resolvers {
        split: configured.split.clone(),
        global: system_nameservers
            .iter()
            .map(|ip| Upstream::Dns(SocketAddr::new(*ip, DNS_PORT)))
            .collect(),
    }
}

/// How the system is being configured.
enum Backend {
    Resolved {
        ifname: String,
    },
    File {
        settings: OsDnsSettings,
        /// The original file's settings.
        original: ResolvConf,
        /// Whether the backup holds the original (the file is ours).
        saved: bool,
    },
}

/// The system's resolver configuration while the daemon manages it.
pub struct OsDns {
    backend: Backend,
}

impl OsDns {
    /// Chooses how to configure the system, and puts back a resolv.conf left behind by a
    /// daemon that did not stop cleanly.
    pub fn prepare(settings: &OsDnsSettings, ifname: &str) -> Result<OsDns> {
        if resolved_manages(&settings.resolv_conf) {
            return Ok(OsDns {
                backend: Backend::Resolved {
                    ifname: ifname.to_string(),
                },
            });
        }
        recover(settings)?;
        let original = match fs::read_to_string(&settings.resolv_conf) {
            Ok(text) => ResolvConf::parse(&text),
            Err(e) if e.kind() == ErrorKind::NotFound => ResolvConf::default(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading {}", settings.resolv_conf.display()))
            }
        };
        Ok(OsDns {
            backend: Backend::File {
                settings: settings.clone(),
                original,
                saved: false,
            },
        })
    }

    /// The system's own nameservers (resolv.conf mode; none under systemd-resolved, which
    /// keeps answering other names itself). The MagicDNS addresses are left out.
    pub fn system_nameservers(&self) -> Vec<IpAddr> {
        match &self.backend {
            Backend::Resolved { .. } => Vec::new(),
            Backend::File { original, .. } => original
                .nameservers
                .iter()
                .copied()
                .filter(|ip| *ip != IpAddr::V4(SERVICE_IPV4) && *ip != IpAddr::V6(SERVICE_IPV6))
                .collect(),
        }
    }

    /// One line for `tailgate dns status`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Resolved { ifname } => format!("systemd-resolved, link {ifname}"),
            Backend::File { settings, .. } => format!(
                "{} (the original is kept in {})",
                settings.resolv_conf.display(),
                settings.backup.display()
            ),
        }
    }

    /// Tells the system about `cfg` (again, when the view changed).
    pub fn apply(&mut self, cfg: &OsDnsConfig) -> Result<()> {
        match &mut self.backend {
            Backend::Resolved { ifname } => {
                for args in resolvectl_commands(ifname, cfg) {
                    resolvectl(&args)?;
                }
                Ok(())
            }
            Backend::File {
                settings,
                original,
                saved,
            } => {
                let current = read_optional(&settings.resolv_conf)?;
                if !*saved || !current.as_deref().is_some_and(resolv_conf::is_managed) {
                    // First write, or someone replaced our file: keep what is there now.
                    let copy = current.as_deref().unwrap_or(NO_FILE);
                    crate::atomic_file::write(&settings.backup, copy.as_bytes(), 0o644)
                        .with_context(|| format!("saving {}", settings.resolv_conf.display()))?;
                    *original = current
                        .as_deref()
                        .map(ResolvConf::parse)
                        .unwrap_or_default();
                    *saved = true;
                }
                let text = ResolvConf::render_managed(
                    &[IpAddr::V4(SERVICE_IPV4)],
                    &cfg.search,
                    original,
                    &settings.backup,
                );
                resolv_conf::replace_content(&settings.resolv_conf, text.as_bytes())
            }
        }
    }

    /// Undoes [`OsDns::apply`]: reverts the link, or puts the original resolv.conf back
    /// (unless someone else replaced the file meanwhile) and removes the backup.
    pub fn restore(&mut self) -> Result<()> {
        match &mut self.backend {
            Backend::Resolved { ifname } => resolvectl(&["revert".into(), ifname.clone()]),
            Backend::File {
                settings, saved, ..
            } => {
                if !*saved {
                    return Ok(());
                }
                *saved = false;
                put_back(settings)
            }
        }
    }
}

/// Puts back a resolv.conf left behind by a daemon that did not stop cleanly (the backup
/// still exists); nothing to do otherwise.
pub fn recover(settings: &OsDnsSettings) -> Result<()> {
    if !settings.backup.exists() {
        return Ok(());
    }
    log::warn!(
        "{} exists: the daemon did not stop cleanly last time",
        settings.backup.display()
    );
    put_back(settings)
}

/// Puts the backup back if the file is still ours, then removes the backup.
fn put_back(settings: &OsDnsSettings) -> Result<()> {
    let path = &settings.resolv_conf;
    let current = read_optional(path)?;
    if current.as_deref().is_some_and(resolv_conf::is_managed) {
        let original = fs::read_to_string(&settings.backup)
            .with_context(|| format!("reading {}", settings.backup.display()))?;
        if original == NO_FILE {
            fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        } else {
            resolv_conf::replace_content(path, original.as_bytes())?;
        }
        log::info!("{} restored", path.display());
    } else {
        log::info!(
            "{} was replaced by someone else: left as it is",
            path.display()
        );
    }
    fs::remove_file(&settings.backup)
        .with_context(|| format!("removing {}", settings.backup.display()))
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Whether systemd-resolved runs and the system's resolv.conf is one of its files.
fn resolved_manages(resolv_conf: &Path) -> bool {
    let ours = fs::canonicalize(resolv_conf).is_ok_and(|p| p.starts_with(RESOLVED_DIR));
    ours && Path::new(RESOLVED_DIR).join("io.systemd.Resolve").exists()
}

/// The `resolvectl` calls that give link `ifname` the configuration `cfg`.
pub fn resolvectl_commands(ifname: &str, cfg: &OsDnsConfig) -> Vec<Vec<String>> {
    let mut domains = vec!["domain".to_string(), ifname.to_string()];
    domains.extend(cfg.search.iter().cloned());
    domains.extend(cfg.match_domains.iter().map(|d| format!("~{d}")));
    if cfg.all_queries {
        domains.push("~.".into());
    }
    vec![
        vec![
            "dns".into(),
            ifname.into(),
            SERVICE_IPV4.to_string(),
            SERVICE_IPV6.to_string(),
        ],
        domains,
        vec![
            "default-route".into(),
            ifname.into(),
            if cfg.all_queries { "yes" } else { "no" }.into(),
        ],
    ]
}

fn resolvectl(args: &[String]) -> Result<()> {
    let out = Command::new("resolvectl")
        .args(args)
        .output()
        .context("running resolvectl")?;
    if out.status.success() {
        Ok(())
    } else {
        Err(anyhow!(
            "resolvectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::SplitRoute;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn temp_dir(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("tg-osdns-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn settings(dir: &Path) -> OsDnsSettings {
        OsDnsSettings {
            resolv_conf: dir.join("resolv.conf"),
            backup: dir.join("state/resolv.conf.pre-tailgate"),
        }
    }
    fn cfg(domain: &str) -> OsDnsConfig {
        OsDnsConfig {
            search: vec![domain.into()],
            ..OsDnsConfig::default()
        }
    }
    const ORIGINAL: &str = "# from DHCP\nnameserver 192.0.2.53\nsearch corp.example\n";

    #[test]
    fn apply_and_restore_give_back_the_exact_file() {
        let d = temp_dir("exact");
        let s = settings(&d.0);
        fs::write(&s.resolv_conf, ORIGINAL).unwrap();
        let mut os = OsDns::prepare(&s, "tg0").unwrap();
        assert_eq!(
            os.system_nameservers(),
            vec!["192.0.2.53".parse::<IpAddr>().unwrap()]
        );
        os.apply(&cfg("tailnet.internal")).unwrap();
        let now = ResolvConf::parse(&fs::read_to_string(&s.resolv_conf).unwrap());
        assert_eq!(now.nameservers, vec![IpAddr::V4(SERVICE_IPV4)]);
        assert_eq!(now.search, vec!["tailnet.internal", "corp.example"]);
        os.apply(&cfg("other.internal")).unwrap();
        assert_eq!(fs::read_to_string(&s.backup).unwrap(), ORIGINAL);
        os.restore().unwrap();
        assert_eq!(fs::read_to_string(&s.resolv_conf).unwrap(), ORIGINAL);
        assert!(!s.backup.exists());
        os.restore().unwrap();
        assert_eq!(fs::read_to_string(&s.resolv_conf).unwrap(), ORIGINAL);
    }

    #[test]
    fn next_start_recovers_after_a_crash() {
        let d = temp_dir("crash");
        let s = settings(&d.0);
        fs::write(&s.resolv_conf, ORIGINAL).unwrap();
        let mut crashed = OsDns::prepare(&s, "tg0").unwrap();
        crashed.apply(&cfg("tailnet.internal")).unwrap();
        drop(crashed);
        let os = OsDns::prepare(&s, "tg0").unwrap();
        assert_eq!(fs::read_to_string(&s.resolv_conf).unwrap(), ORIGINAL);
        assert!(!s.backup.exists());
        assert_eq!(os.system_nameservers().len(), 1);
    }

    #[test]
    fn a_file_replaced_meanwhile_is_left_alone() {
        let d = temp_dir("replaced");
        let s = settings(&d.0);
        fs::write(&s.resolv_conf, ORIGINAL).unwrap();
        let mut os = OsDns::prepare(&s, "tg0").unwrap();
        os.apply(&cfg("t")).unwrap();
        fs::write(&s.resolv_conf, "nameserver 198.51.100.1\n").unwrap();
        os.restore().unwrap();
        assert_eq!(
            fs::read_to_string(&s.resolv_conf).unwrap(),
            "nameserver 198.51.100.1\n"
        );
        assert!(!s.backup.exists());
    }

    #[test]
    fn a_missing_file_is_removed_again() {
        let d = temp_dir("missing");
        let s = settings(&d.0);
        let mut os = OsDns::prepare(&s, "tg0").unwrap();
        assert!(os.system_nameservers().is_empty());
        os.apply(&cfg("t")).unwrap();
        assert!(s.resolv_conf.exists());
        os.restore().unwrap();
        assert!(!s.resolv_conf.exists());
    }

    #[test]
    fn a_symlink_is_written_through() {
        let d = temp_dir("symlink");
        let s = settings(&d.0);
        let target = d.0.join("real-resolv.conf");
        fs::write(&target, ORIGINAL).unwrap();
        std::os::unix::fs::symlink(&target, &s.resolv_conf).unwrap();
        let mut os = OsDns::prepare(&s, "tg0").unwrap();
        os.apply(&cfg("t")).unwrap();
        assert!(fs::symlink_metadata(&s.resolv_conf)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(resolv_conf::is_managed(
            &fs::read_to_string(&target).unwrap()
        ));
        os.restore().unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), ORIGINAL);
    }

    #[test]
    fn resolved_commands_route_split_domains() {
        let c = OsDnsConfig {
            search: vec!["tailnet.internal".into()],
            match_domains: vec!["internal.company.com".into()],
            all_queries: true,
        };
        let cmds = resolvectl_commands("tg0", &c);
        assert_eq!(
            cmds[0],
            ["dns", "tg0", "100.100.100.100", "fd7a:115c:a1e0::53"]
        );
        assert_eq!(
            cmds[1],
            [
                "domain",
                "tg0",
                "tailnet.internal",
                "~internal.company.com",
                "~."
            ]
        );
        assert_eq!(cmds[2], ["default-route", "tg0", "yes"]);
        let off = resolvectl_commands("tg0", &OsDnsConfig::default());
        assert_eq!(off[1], ["domain", "tg0"]);
        assert_eq!(off[2], ["default-route", "tg0", "no"]);
    }

    #[test]
    fn override_local_dns_picks_the_upstreams() {
        let global: Upstream = "9.9.9.9".parse().unwrap();
        let configured = Resolvers {
            split: vec![SplitRoute {
                suffix: "corp".into(),
                upstreams: vec!["10.0.0.53".parse().unwrap()],
            }],
            global: vec![global.clone()],
        };
        let system = ["192.0.2.53".parse::<IpAddr>().unwrap()];
        let kept = effective_resolvers(&configured, false, &system);
        assert_eq!(kept.global, vec!["192.0.2.53".parse::<Upstream>().unwrap()]);
        assert_eq!(kept.split, configured.split);
        assert_eq!(effective_resolvers(&configured, true, &system), configured);
        assert_eq!(effective_resolvers(&configured, false, &[]), configured);
        let no_global = Resolvers::default();
        assert_eq!(
            effective_resolvers(&no_global, true, &system).global.len(),
            1
        );
        let view = DnsView {
            domain: "t".into(),
            global: vec![global],
            ..DnsView::default()
        };
        assert!(OsDnsConfig::for_view(&view, true).all_queries);
        assert!(!OsDnsConfig::for_view(&view, false).all_queries);
    }
}
