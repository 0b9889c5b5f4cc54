//! `/etc/resolv.conf`: reading the system's resolver settings, writing the one that points the
//! system at MagicDNS, and putting the original back byte for byte.
//!
//! The file tailgate writes starts with [`MARKER`], so a later start (after a crash) and the
//! shutdown can tell it from a file someone else wrote in the meantime.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// First line of every resolv.conf tailgate writes.
pub const MARKER: &str = "# resolv.conf written by tailgate (MagicDNS).";

/// At most this many `search` domains are written (glibc before 2.26 read only six).
const MAX_SEARCH: usize = 6;

/// The settings of a resolv.conf that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines, in order (an IPv6 zone suffix `%eth0` is dropped).
    pub nameservers: Vec<IpAddr>,
    /// `search` domains (or the `domain` line when there is no `search`), lower case, without
    /// the trailing dot.
    pub search: Vec<String>,
    /// `options` words, in order.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text the way the C library does: one keyword per line, `#` and `;`
    /// start comments, unknown keywords and bad addresses are skipped; the last `search` or
    /// `domain` line wins.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let addr = words.next().unwrap_or("");
                    let addr = addr.split('%').next().unwrap_or("");
                    if let Ok(ip) = addr.parse() {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search") | Some("domain") => {
                    conf.search = words
                        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                        .filter(|d| !d.is_empty())
                        .collect();
                }
                Some("options") => conf.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        conf
    }

    /// The file that sends every query to `nameservers` (the MagicDNS addresses), searching
    /// `search` first and then the original's search domains; the original's options stay.
    pub fn render_managed(
        nameservers: &[IpAddr],
        search: &[String],
        original: &ResolvConf,
        backup: &Path,
    ) -> String {
        let mut out = format!(
            "{MARKER}\n# The previous file is kept in {} and put back when tailgate stops.\n",
            backup.display()
        );
        for ns in nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        let mut domains: Vec<&str> = Vec::new();
        for d in search.iter().chain(&original.search) {
            if !d.is_empty() && !domains.contains(&d.as_str()) {
                domains.push(d);
            }
        }
        domains.truncate(MAX_SEARCH);
        if !domains.is_empty() {
            out.push_str(&format!("search {}\n", domains.join(" ")));
        }
        if !original.options.is_empty() {
            out.push_str(&format!("options {}\n", original.options.join(" ")));
        }
        out
    }
}

/// Whether `text` is a file tailgate wrote.
pub fn is_managed(text: &str) -> bool {
    text.starts_with(MARKER)
}

/// Replaces the content of `path` with `data`.
///
/// A regular file is replaced atomically (temp file and rename), keeping its permission bits.
/// A symlink is written through (its target gets the content, the link stays). A bind-mounted
/// file as containers have it, and a file writable in a read-only directory (systemd's
/// `ProtectSystem=strict` with `ReadWritePaths=/etc/resolv.conf`), where a temp file or rename
/// fails, are rewritten in place.
pub fn replace_content(path: &Path, data: &[u8]) -> Result<()> {
    let meta = fs::symlink_metadata(path);
    let is_symlink = meta.as_ref().is_ok_and(|m| m.file_type().is_symlink());
    if !is_symlink {
        let mode = meta
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        match crate::atomic_file::write(path, data, mode) {
            Ok(()) => return Ok(()),
            Err(e) if !is_busy_mount(&e) => return Err(e),
            Err(_) => {}
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// A write that failed because the target is a mount point (EBUSY), on another mount (EXDEV),
/// or in a read-only directory (EROFS).
fn is_busy_mount(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| {
            matches!(
                io.raw_os_error(),
                Some(libc::EBUSY) | Some(libc::EXDEV) | Some(libc::EROFS)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_c_library() {
        let c = ResolvConf::parse(
            "# comment\nnameserver 192.0.2.53\nnameserver fe80::1%eth0 ; zone\nnameserver bogus\n\
             domain old.example\nsearch Corp.Example. lab.example\noptions edns0 timeout:2\n\
             options rotate\nsortlist 10.0.0.0\n",
        );
        assert_eq!(
            c.nameservers,
            vec![
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(c.search, vec!["corp.example", "lab.example"]);
        assert_eq!(c.options, vec!["edns0", "timeout:2", "rotate"]);
        assert_eq!(ResolvConf::parse(""), ResolvConf::default());
    }

    #[test]
    fn managed_file_puts_the_tailnet_domain_first() {
        let orig = ResolvConf::parse(
            "nameserver 192.0.2.53\nsearch corp.example tailnet.internal\noptions edns0\n",
        );
        let text = ResolvConf::render_managed(
            &["100.100.100.100".parse().unwrap()],
            &["tailnet.internal".into()],
            &orig,
            Path::new("/var/lib/tailgate/resolv.conf.pre-tailgate"),
        );
        assert!(is_managed(&text), "{text}");
        let back = ResolvConf::parse(&text);
        assert_eq!(
            back.nameservers,
            vec!["100.100.100.100".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(back.search, vec!["tailnet.internal", "corp.example"]);
        assert_eq!(back.options, vec!["edns0"]);
        assert!(!is_managed("nameserver 192.0.2.53\n"));
    }

    #[test]
    fn search_list_is_capped() {
        let orig = ResolvConf::parse("search a b c d e f g\n");
        let text = ResolvConf::render_managed(&[], &["t".into()], &orig, Path::new("/b"));
        assert_eq!(
            ResolvConf::parse(&text).search,
            vec!["t", "a", "b", "c", "d", "e"]
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "(?s).{0,400}") {
            let _ = ResolvConf::parse(&text);
        }
    }
}
