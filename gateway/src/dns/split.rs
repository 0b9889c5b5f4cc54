//! Which nameservers a forwarded query goes to: the split-DNS route with the longest matching
//! suffix (label by label, so `evilcompany.com` is not under `company.com`), else the global
//! nameservers, else none. Pure; compiled once per view.

use hickory_proto::rr::Name;

use super::view::{SplitRoute, Upstream};

/// Split routes and global nameservers, ready for lookups.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Routes by suffix (lowercase, fully qualified); each suffix appears once.
    split: Vec<(Name, Vec<Upstream>)>,
    global: Vec<Upstream>,
}

/// Where a query goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The most specific split-DNS route matched.
    Split {
        /// The route's suffix.
        suffix: &'a Name,
        /// Its nameservers (may be empty: the query then fails).
        upstreams: &'a [Upstream],
    },
    /// No split route matched; the global nameservers apply.
    Global(&'a [Upstream]),
    /// No split route matched and there are no global nameservers.
    NoUpstream,
}

impl Route<'_> {
    /// The nameservers to try, in order.
    pub fn upstreams(&self) -> &[Upstream] {
        match self {
            Route::Split { upstreams, .. } => upstreams,
            Route::Global(u) => u,
            Route::NoUpstream => &[],
        }
    }
}

/// Parses a split-DNS suffix (`internal.company.com`, with or without trailing dot; `.` for
/// every name) into a lowercase, fully qualified name.
pub fn parse_suffix(s: &str) -> Option<Name> {
    let s = s.trim();
    if s.is_empty() || s == "." {
        return Some(Name::root());
    }
    let mut name = Name::from_ascii(s).ok()?.to_lowercase();
    name.set_fqdn(true);
    Some(name)
}

impl Routes {
    /// Compiles the view's routes; suffixes that are not domain names are skipped with a
    /// warning, and routes with the same suffix are merged (their nameservers in order).
    pub fn new(split: &[SplitRoute], global: &[Upstream]) -> Routes {
        let mut out: Vec<(Name, Vec<Upstream>)> = Vec::new();
        for route in split {
            let Some(suffix) = parse_suffix(&route.suffix) else {
                log::warn!(
                    "dns: ignoring split-DNS route {:?}: not a domain name",
                    route.suffix
                );
                continue;
            };
            match out.iter_mut().find(|(s, _)| *s == suffix) {
                Some((_, ups)) => {
                    for u in &route.upstreams {
                        if !ups.contains(u) {
                            ups.push(u.clone());
                        }
                    }
                }
                None => out.push((suffix, route.upstreams.clone())),
            }
        }
        Routes {
            split: out,
            global: global.to_vec(),
        }
    }

    /// Where a query for `name` goes (the name is compared case-insensitively).
    pub fn choose(&self, name: &Name) -> Route<'_> {
        let mut lower = name.to_lowercase();
        lower.set_fqdn(true);
        let best = self
            .split
            .iter()
            .filter(|(suffix, _)| suffix.zone_of(&lower))
            .max_by_key(|(suffix, _)| suffix.num_labels());
        match best {
            Some((suffix, upstreams)) => Route::Split { suffix, upstreams },
            None if self.global.is_empty() => Route::NoUpstream,
            None => Route::Global(&self.global),
        }
    }

    /// True when no query can be forwarded anywhere.
    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.split.iter().all(|(_, u)| u.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Upstream {
        s.parse().unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn routes() -> Routes {
        Routes::new(
            &[
                SplitRoute {
                    suffix: "company.com".into(),
                    upstreams: vec![up("10.0.0.53")],
                },
                SplitRoute {
                    suffix: "Internal.Company.com.".into(),
                    upstreams: vec![up("10.1.0.53")],
                },
                SplitRoute {
                    suffix: "corp.example".into(),
                    upstreams: vec![up("10.2.0.53")],
                },
                SplitRoute {
                    suffix: "corp.example".into(),
                    upstreams: vec![up("10.2.0.54"), up("10.2.0.53")],
                },
                SplitRoute {
                    suffix: "blackhole.example".into(),
                    upstreams: vec![],
                },
                SplitRoute {
                    suffix: "bad..name".into(),
                    upstreams: vec![up("10.9.0.53")],
                },
            ],
            &[up("192.0.2.53"), up("https://dns.example/dns-query")],
        )
    }

    #[test]
    fn most_specific_suffix_wins() {
        let r = routes();
        let pick = |n: &str| r.choose(&name(n)).upstreams().to_vec();
        assert_eq!(pick("db.internal.company.com."), vec![up("10.1.0.53")]);
        assert_eq!(pick("INTERNAL.company.COM"), vec![up("10.1.0.53")]);
        assert_eq!(pick("www.company.com."), vec![up("10.0.0.53")]);
        assert_eq!(pick("company.com."), vec![up("10.0.0.53")]);
        // Label-wise match: not a suffix of "company.com".
        assert_eq!(pick("evilcompany.com."), r.global.clone());
        assert_eq!(pick("notinternal.company.com."), vec![up("10.0.0.53")]);
        // Duplicate suffixes merge, keeping order and dropping repeats.
        assert_eq!(
            pick("x.corp.example."),
            vec![up("10.2.0.53"), up("10.2.0.54")]
        );
        match r.choose(&name("a.b.internal.company.com.")) {
            Route::Split { suffix, .. } => assert_eq!(suffix.to_ascii(), "internal.company.com."),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn global_and_empty_routes() {
        let r = routes();
        assert!(matches!(r.choose(&name("example.org.")), Route::Global(g) if g.len() == 2));
        // A route with no nameservers does not fall back to the global ones.
        assert!(matches!(
            r.choose(&name("x.blackhole.example.")),
            Route::Split { upstreams: [], .. }
        ));
        let none = Routes::new(&[], &[]);
        assert_eq!(none.choose(&name("example.org.")), Route::NoUpstream);
        assert!(none.is_empty());
        assert!(!r.is_empty());
    }

    #[test]
    fn root_suffix_matches_everything() {
        let r = Routes::new(
            &[
                SplitRoute {
                    suffix: ".".into(),
                    upstreams: vec![up("10.0.0.1")],
                },
                SplitRoute {
                    suffix: "lan".into(),
                    upstreams: vec![up("10.0.0.2")],
                },
            ],
            &[up("192.0.2.53")],
        );
        assert_eq!(
            r.choose(&name("example.org.")).upstreams(),
            [up("10.0.0.1")]
        );
        assert_eq!(r.choose(&name("nas.lan.")).upstreams(), [up("10.0.0.2")]);
    }

    #[test]
    fn suffix_parsing() {
        assert_eq!(parse_suffix("."), Some(Name::root()));
        assert_eq!(parse_suffix("").unwrap(), Name::root());
        assert_eq!(
            parse_suffix("Corp.Example").unwrap().to_ascii(),
            "corp.example."
        );
        assert!(parse_suffix("a..b").is_none());
    }
}
