//! The server's policy file (HuJSON): for now the `groups` and `autoApprovers` sections.
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
//! Entries are `tag:NAME`, `group:NAME` or a user name. A tagged node (registered with a tagged
//! auth key) matches by its tags only, like Tailscale; an untagged node matches by its user and
//! the groups that contain the user. An advertised route is auto-approved when some
//! `routes` key contains it (equal or more specific); exit routes (`0.0.0.0/0`, `::/0`) only
//! through `exitNode`. Other sections (`acls`, …) are accepted and ignored for now.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use serde::Deserialize;

use super::hujson;

/// The parsed policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// `group:NAME` → user names.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Automatic route approval.
    #[serde(default)]
    pub auto_approvers: AutoApprovers,
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
    /// Parses HuJSON policy text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Policy> {
        let json = hujson::to_json(text).map_err(|e| anyhow!("{origin}: {e}"))?;
        let policy: Policy = serde_json::from_str(&json).map_err(|e| anyhow!("{origin}: {e}"))?;
        for group in policy.groups.keys() {
            if !group.starts_with("group:") {
                return Err(anyhow!(
                    "{origin}: groups: {group:?} must start with \"group:\""
                ));
            }
        }
        let entries = policy
            .auto_approvers
            .routes
            .values()
            .flatten()
            .chain(&policy.auto_approvers.exit_node);
        for e in entries {
            if let Some(g) = e.strip_prefix("group:") {
                if !policy.groups.contains_key(e) {
                    return Err(anyhow!(
                        "{origin}: autoApprovers names group:{g}, which groups does not define"
                    ));
                }
            }
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
        assert_eq!(Policy::parse("{}", "p").unwrap(), Policy::default());
    }
}
