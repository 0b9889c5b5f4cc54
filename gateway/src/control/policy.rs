//! The server's policy file (HuJSON): `groups`, `tagOwners`, `hosts`, `acls`, `tests` (see
//! [`super::acl`]) and `autoApprovers`.
//!
//! ```jsonc
//! {
//!   "groups": { "group:netops": ["alice@example.com"] },
//!   "autoApprovers": {
//!     // routes inside a listed prefix are approved when the node matches an entry
//!     "routes": { "192.168.1.0/24": ["tag:router", "group:netops"], },
//!     "exitNode": ["tag:exit"],
//!   },
//! }
//! ```
//!
//! `derpMap` (Tailscale's shape) changes the relay map the server hands out: regions set to
//! `null` are removed, others added or replaced (see [`crate::derp::map`]).
//!
//! Entries are `tag:NAME`, `group:NAME` or a user name. A tagged node (registered with a tagged
//! auth key) matches by its tags only, like Tailscale; an untagged node matches by its user and
//! the groups that contain the user. An advertised route is auto-approved when some
//! `routes` key contains it (equal or more specific); exit routes (`0.0.0.0/0`, `::/0`) only
//! through `exitNode`. A policy whose `tests` fail is refused, as is anything malformed, with
//! the line of the problem.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use serde::Deserialize;

use super::acl::{Acl, Names, RawAclRule, RawAclTest};
use super::hujson;
use crate::derp::map::{RelayMap, RelayMapPatch};

/// The parsed policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `group:NAME` → user names.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Automatic route approval.
    pub auto_approvers: AutoApprovers,
    /// Access rules and their tests.
    pub acl: Acl,
    /// `derpMap`: changes to the server's relay map (see [`crate::derp::map`]).
    pub derp_map: Option<RelayMapPatch>,
    /// The text it was parsed from (what `tailgate control policy get` returns).
    pub text: String,
}

/// The policy file's sections, as written.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    tag_owners: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    #[serde(default)]
    acls: Option<Vec<RawAclRule>>,
    #[serde(default)]
    tests: Vec<RawAclTest>,
    #[serde(default)]
    auto_approvers: AutoApprovers,
    /// Tailscale sections tailgate does not implement: accepted and reported, so existing
    /// policy files load (none of them grants access here).
    #[serde(default)]
    ssh: Option<serde_json::Value>,
    #[serde(default)]
    ssh_tests: Option<serde_json::Value>,
    #[serde(default)]
    node_attrs: Option<serde_json::Value>,
    #[serde(default)]
    grants: Option<serde_json::Value>,
    #[serde(default)]
    postures: Option<serde_json::Value>,
    #[serde(default)]
    ipsets: Option<serde_json::Value>,
    #[serde(default)]
    derp_map: Option<RelayMapPatch>,
    #[serde(default, rename = "disableIPv4")]
    disable_ipv4: Option<serde_json::Value>,
    #[serde(default)]
    randomize_client_port: Option<serde_json::Value>,
}

impl RawPolicy {
    /// The sections present that tailgate ignores.
    fn ignored(&self) -> Vec<&'static str> {
        [
            ("ssh", self.ssh.is_some()),
            ("sshTests", self.ssh_tests.is_some()),
            ("nodeAttrs", self.node_attrs.is_some()),
            ("grants", self.grants.is_some()),
            ("postures", self.postures.is_some()),
            ("ipsets", self.ipsets.is_some()),
            ("disableIPv4", self.disable_ipv4.is_some()),
            ("randomizeClientPort", self.randomize_client_port.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
    }
}

/// The `autoApprovers` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoApprovers {
    /// Prefix → who may have routes inside it approved automatically.
    #[serde(default)]
    pub routes: BTreeMap<IpNet, Vec<String>>,
    /// Who may have an exit-node offer approved automatically.
    #[serde(default)]
    pub exit_node: Vec<String>,
}

/// Who owns a node, for matching policy entries.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// The user the node was registered by.
    pub user: &'a str,
    /// The node's tags (non-empty for tagged nodes).
    pub tags: &'a [String],
}

/// True for `0.0.0.0/0` and `::/0`.
pub fn is_exit_route(p: &IpNet) -> bool {
    p.prefix_len() == 0
}

impl Policy {
    /// Parses HuJSON policy text and runs its `tests`; `origin` names it in errors, which
    /// also give the line of the problem.
    pub fn parse(text: &str, origin: &str) -> Result<Policy> {
        let json = hujson::to_json(text).map_err(|e| anyhow!("{origin}: {e}"))?;
        let raw: RawPolicy = serde_json::from_str(&json).map_err(|e| anyhow!("{origin}: {e}"))?;
        let ignored = raw.ignored();
        if !ignored.is_empty() {
            log::warn!(
                "{origin}: sections not supported by tailgate are ignored (they grant nothing): {}",
                ignored.join(", ")
            );
        }
        let at = |needle: &str, problem: String| match line_of(text, needle) {
            Some(line) => anyhow!("{origin}: line {line}: {problem}"),
            None => anyhow!("{origin}: {problem}"),
        };
        for group in raw.groups.keys() {
            if !group.starts_with("group:") {
                return Err(at(
                    group,
                    format!("groups: {group:?} must start with \"group:\""),
                ));
            }
        }
        for (tag, owners) in &raw.tag_owners {
            if !tag.starts_with("tag:") {
                return Err(at(
                    tag,
                    format!("tagOwners: {tag:?} must start with \"tag:\""),
                ));
            }
            for o in owners {
                if o.starts_with("group:") && !raw.groups.contains_key(o) {
                    return Err(at(o, format!("tagOwners: {o} is not defined in groups")));
                }
            }
        }
        let mut hosts = BTreeMap::new();
        for (name, addr) in &raw.hosts {
            let net = addr
                .parse::<IpNet>()
                .or_else(|_| addr.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    at(
                        addr,
                        format!("hosts: {name}: {addr:?} is not an IP or CIDR"),
                    )
                })?;
            hosts.insert(name.clone(), net.trunc());
        }
        let names = Names {
            groups: &raw.groups,
            tag_owners: &raw.tag_owners,
            hosts: &hosts,
        };
        let rules = match &raw.acls {
            Some(list) => Some(names.rules(list).map_err(|(i, p)| {
                at_entry(text, "\"acls\"", i, format!("acls[{i}]: {p}"), origin)
            })?),
            None => None,
        };
        let tests = names
            .tests(&raw.tests)
            .map_err(|(i, p)| at_entry(text, "\"tests\"", i, format!("tests[{i}]: {p}"), origin))?;
        let entries = raw
            .auto_approvers
            .routes
            .values()
            .flatten()
            .chain(&raw.auto_approvers.exit_node);
        for e in entries {
            if let Some(g) = e.strip_prefix("group:") {
                if !raw.groups.contains_key(e) {
                    return Err(at(
                        e,
                        format!("autoApprovers names group:{g}, which groups does not define"),
                    ));
                }
            }
        }
        if let Some(patch) = &raw.derp_map {
            // The regions it sets must be valid on their own (the base map is checked when the
            // server applies it).
            let only_patch = RelayMapPatch {
                omit_default_regions: true,
                ..patch.clone()
            };
            RelayMap::default()
                .patched(&only_patch)
                .map_err(|e| at("derpMap", format!("derpMap: {}", e.0)))?;
        }
        let policy = Policy {
            groups: raw.groups.clone(),
            auto_approvers: raw.auto_approvers,
            derp_map: raw.derp_map,
            acl: Acl {
                rules,
                groups: raw.groups,
                tests,
            },
            text: text.to_string(),
        };
        let failures: Vec<String> = policy
            .acl
            .tests
            .iter()
            .flat_map(|t| policy.acl.run_test(t))
            .collect();
        if !failures.is_empty() {
            return Err(anyhow!(
                "{origin}: policy tests fail:\n  {}",
                failures.join("\n  ")
            ));
        }
        Ok(policy)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading policy file {}", path.display()))?;
        Policy::parse(&text, &path.display().to_string())
    }

    fn matches(&self, entries: &[String], owner: Owner<'_>) -> bool {
        entries.iter().any(|e| {
            if e.starts_with("tag:") {
                owner.tags.iter().any(|t| t == e)
            } else if !owner.tags.is_empty() {
                false
            } else if e.starts_with("group:") {
                self.groups
                    .get(e)
                    .is_some_and(|members| members.iter().any(|m| m == owner.user))
            } else {
                e == owner.user
            }
        })
    }

    /// Whether `route` advertised by `owner` is approved automatically.
    pub fn auto_approves(&self, route: &IpNet, owner: Owner<'_>) -> bool {
        if is_exit_route(route) {
            return self.matches(&self.auto_approvers.exit_node, owner);
        }
        self.auto_approvers
            .routes
            .iter()
            .any(|(prefix, entries)| prefix.contains(route) && self.matches(entries, owner))
    }
}

/// 1-based line of the first `"needle"` in `text`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    let quoted = format!("{needle:?}");
    text.lines()
        .position(|l| l.contains(&quoted))
        .map(|i| i + 1)
}

/// An error at entry `index` of the list under `key`: the line of that entry's `{`.
fn at_entry(text: &str, key: &str, index: usize, problem: String, origin: &str) -> anyhow::Error {
    let line = text.find(key).and_then(|start| {
        let mut depth = 0i32;
        let mut seen = 0usize;
        let mut in_str = false;
        let mut escaped = false;
        for (off, c) in text[start + key.len()..].char_indices() {
            if in_str {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_str = true,
                '[' | '{' => {
                    depth += 1;
                    if c == '{' && depth == 2 {
                        if seen == index {
                            let at = start + key.len() + off;
                            return Some(text[..at].matches('\n').count() + 1);
                        }
                        seen += 1;
                    }
                }
                ']' | '}' => {
                    depth -= 1;
                    if depth <= 0 {
                        return None;
                    }
                }
                _ => {}
            }
        }
        None
    });
    match line {
        Some(l) => anyhow!("{origin}: line {l}: {problem}"),
        None => anyhow!("{origin}: {problem}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{
        // who may route what
        "groups": {"group:netops": ["alice@example.com",],},
        "autoApprovers": {
            "routes": {
                "192.168.0.0/16": ["tag:router", "group:netops"],
                "10.1.0.0/24": ["bob@example.com"], /* bob's lab */
            },
            "exitNode": ["tag:exit"],
        },
        "acls": [],
    }"#;

    #[test]
    fn approves_by_tag_group_and_user() {
        let p = Policy::parse(POLICY, "test").unwrap();
        let router = ["tag:router".to_string()];
        let exit = ["tag:exit".to_string()];
        let r = |s: &str| s.parse::<IpNet>().unwrap();
        let by_tag = Owner {
            user: "x",
            tags: &router,
        };
        assert!(p.auto_approves(&r("192.168.1.0/24"), by_tag));
        assert!(
            !p.auto_approves(&r("192.0.0.0/8"), by_tag),
            "wider than the rule"
        );
        assert!(!p.auto_approves(&r("10.1.0.0/24"), by_tag));
        assert!(!p.auto_approves(&r("0.0.0.0/0"), by_tag));
        let alice = Owner {
            user: "alice@example.com",
            tags: &[],
        };
        assert!(p.auto_approves(&r("192.168.7.0/24"), alice));
        let bob = Owner {
            user: "bob@example.com",
            tags: &[],
        };
        assert!(p.auto_approves(&r("10.1.0.0/24"), bob));
        assert!(!p.auto_approves(&r("192.168.1.0/24"), bob));
        let exit_node = Owner {
            user: "bob@example.com",
            tags: &exit,
        };
        assert!(p.auto_approves(&r("0.0.0.0/0"), exit_node));
        assert!(p.auto_approves(&r("::/0"), exit_node));
        assert!(
            !p.auto_approves(&r("10.1.0.0/24"), exit_node),
            "tagged nodes match by tag only"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Policy::parse(r#"{"autoApprovers": {"routes": {"nope": []}}}"#, "p.hujson")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.hujson:"), "{e}");
        let e = Policy::parse(r#"{"autoApprovers": {"exitNode": ["group:x"]}}"#, "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("group:x"), "{e}");
        let empty = Policy::parse("{}", "p").unwrap();
        assert_eq!(empty.acl, Acl::default());
        assert!(empty.acl.rules.is_none(), "no acls key: allow all");
        // Tailscale sections tailgate does not implement load (ignored); unknown keys do not.
        let ts = Policy::parse(
            r#"{"ssh": [], "nodeAttrs": [], "grants": [], "disableIPv4": false}"#,
            "p",
        );
        assert!(ts.is_ok(), "{ts:?}");
        assert!(Policy::parse(r#"{"bogus": 1}"#, "p").is_err());
    }

    #[test]
    fn derp_maps_are_read_and_bad_ones_refused_with_the_line() {
        let p = Policy::parse(
            r#"{
              "derpMap": { "Regions": { "1": null, "900": { "RegionID": 900,
                "Nodes": [{ "Name": "a", "RegionID": 900, "HostName": "relay.test" }] } } }
            }"#,
            "p",
        )
        .unwrap();
        let patch = p.derp_map.unwrap();
        assert_eq!(patch.regions.len(), 2);
        assert!(patch.regions["1"].is_none());
        let e = Policy::parse(
            "{\n  \"derpMap\": { \"Regions\": { \"900\": { \"RegionID\": 901, \"Nodes\": [] } } }\n}",
            "p",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("RegionID 901"), "{e}");
    }
}
