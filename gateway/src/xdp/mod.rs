//! XDP fast paths: loading and attaching the programs of `gateway-ebpf` (DESIGN.md §3).
//!
//! The eBPF object is embedded at build time (see `gateway/build.rs`); a binary built without it
//! (plain `cargo build`) still works, and every entry point here then reports that XDP is
//! unavailable so the daemon can run without the fast paths.
//!
//! Programs:
//! - [`XdpWanIngress`]: `wan_ingress` on the endpoint-facing interface, which drops datagrams to
//!   the tunnel's listen port that are not well-formed WireGuard messages and counts verdicts
//!   ([`WanCounters`]).
//! - [`XdpStunResponder`]: `stun_responder`, which answers STUN binding requests with `XDP_TX`
//!   in front of the userspace STUN server ([`XdpStunCounters`]).

mod counters;
mod forward;
mod forward_counters;
mod loader;
pub mod stun;
mod test_run;
mod wan_ingress;

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use counters::WanCounters;
pub use forward::{
    action as xdp_action, ExpireStats, ForwardConn, ForwardError, ForwardOptions, ForwardProgram,
    ForwardRoute, LanInterface, XdpForward,
};
pub use forward_counters::{ForwardCounters, LanReturnCounters, TunForwardCounters};
pub use gateway_common::WanCounter;
pub use gateway_common::{LanCounter, TunCounter};
pub use stun::{XdpStunCounters, XdpStunResponder};
pub use test_run::{prog_run_xdp_live, prog_test_run_xdp, TestRun};
pub use wan_ingress::{WanIngressOptions, XdpWanIngress};

/// Message used when the binary does not carry the eBPF object.
pub const NOT_EMBEDDED_MSG: &str =
    "this binary was built without the eBPF object; build with `cargo xtask build`";

/// The embedded eBPF object (ELF), if this binary was built with one.
pub fn ebpf_object() -> Option<&'static [u8]> {
    #[cfg(tailgate_ebpf_obj)]
    {
        Some(aya::include_bytes_aligned!(env!("TAILGATE_EBPF_OBJ_PATH")))
    }
    #[cfg(not(tailgate_ebpf_obj))]
    {
        None
    }
}

/// Whether the eBPF object is embedded in this binary.
pub fn ebpf_object_embedded() -> bool {
    ebpf_object().is_some()
}

/// Where to attach an XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachPreference {
    /// Native (driver) mode, falling back to generic (SKB) mode if the driver refuses.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode only: works on any interface, slower.
    Generic,
}

impl fmt::Display for AttachPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachPreference::Auto => "auto",
            AttachPreference::Native => "native",
            AttachPreference::Generic => "generic",
        })
    }
}

impl FromStr for AttachPreference {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AttachPreference::Auto),
            "native" | "drv" | "driver" => Ok(AttachPreference::Native),
            "generic" | "skb" => Ok(AttachPreference::Generic),
            other => Err(format!(
                "unknown XDP attach mode `{other}` (expected auto, native or generic)"
            )),
        }
    }
}

/// Errors of the XDP loader. `Display` is meant to be shown after "XDP disabled: ".
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("{NOT_EMBEDDED_MSG}")]
    NotEmbedded,
    #[error("insufficient privileges to load XDP programs: {0}")]
    NotPermitted(String),
    #[error("network interface `{0}` not found")]
    UnknownInterface(String),
    #[error("the embedded eBPF object has no {kind} `{name}` (stale object? rebuild with `cargo xtask build`)")]
    MissingObject {
        kind: &'static str,
        name: &'static str,
    },
    #[error("loading the eBPF object failed: {}", chain(.0))]
    Object(#[source] aya::EbpfError),
    #[error("loading program `{name}` into the kernel failed: {}", chain(.source))]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map `{name}`: {}", chain(.source))]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("attaching XDP to `{ifname}` failed: {}", .errors.join("; "))]
    Attach {
        ifname: String,
        /// One "mode: error" entry per mode tried.
        errors: Vec<String>,
    },
    #[error("invalid XDP program configuration: {0}")]
    InvalidConfig(String),
    #[error("BPF_PROG_TEST_RUN of `{name}` failed: {source}")]
    TestRun {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Formats an error with its sources ("a: b: c"), skipping repeated messages.
pub(crate) fn chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let msg = e.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = e.source();
    }
    out
}

/// Why XDP cannot be used by this process, or `None` if it can.
///
/// Checks that the object is embedded, that the process has the capabilities to load XDP
/// programs, and loads the programs into the kernel once (verifier included) without attaching
/// them. Meant for "XDP disabled: <reason>" at start-up.
pub fn xdp_unavailable_reason() -> Option<String> {
    wan_ingress::probe().err().map(|e| e.to_string())
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Checks the effective capabilities needed to load and attach XDP programs:
/// CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8).
pub(crate) fn check_capabilities() -> Result<(), XdpError> {
    let status = match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => s,
        // Cannot tell; let the kernel decide.
        Err(_) => return Ok(()),
    };
    let Some(cap_eff) = parse_cap_eff(&status) else {
        return Ok(());
    };
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(XdpError::NotPermitted(format!(
            "missing {} (run as root or grant CAP_BPF and CAP_NET_ADMIN)",
            missing.join(" and ")
        )))
    }
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (later ones use memory cgroups);
/// raise it there, best effort, like other aya-based loaders do.
pub(crate) fn raise_memlock_rlimit_if_needed() {
    let old_kernel = aya::util::KernelVersion::current()
        .map(|v| v < aya::util::KernelVersion::new(5, 11, 0))
        .unwrap_or(false);
    if !old_kernel {
        return;
    }
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `setrlimit` only reads the `rlimit` struct passed by reference, which outlives
    // the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if rc != 0 {
        log::debug!(
            "raising RLIMIT_MEMLOCK failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_preference_parses_and_displays() {
        for p in [
            AttachPreference::Auto,
            AttachPreference::Native,
            AttachPreference::Generic,
        ] {
            assert_eq!(p.to_string().parse::<AttachPreference>(), Ok(p));
        }
        assert_eq!("SKB".parse(), Ok(AttachPreference::Generic));
        assert_eq!("drv".parse(), Ok(AttachPreference::Native));
        assert!("fast".parse::<AttachPreference>().is_err());
        assert_eq!(
            serde_json::to_string(&AttachPreference::Generic).unwrap(),
            "\"generic\""
        );
    }

    #[test]
    fn cap_eff_parsing() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn not_embedded_message_mentions_xtask() {
        assert!(XdpError::NotEmbedded
            .to_string()
            .contains("cargo xtask build"));
    }

    #[test]
    fn error_chain_skips_duplicates() {
        let io = std::io::Error::from_raw_os_error(libc::EOPNOTSUPP);
        let e = aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: io,
        });
        let s = chain(&e);
        assert!(s.starts_with("`bpf_link_create` failed: "), "{s}");
    }
}
