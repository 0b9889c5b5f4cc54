//! tailgate: a self-hostable mesh VPN node and eBPF/XDP-accelerated gateway appliance.
//!
//! The binary (`src/main.rs`) is a thin CLI over these layers; see `docs/ARCHITECTURE.md`.

pub mod afxdp;
pub mod ambient_caps;
pub mod api;
pub mod atomic_file;
pub mod cli;
pub mod config;
pub mod configure_host;
pub mod containerboot;
pub mod control;
pub mod daemon;
pub mod derp;
pub mod device;
pub mod dns;
pub mod filter;
pub mod forwarding;
pub mod io;
pub mod liveness;
pub mod metrics;
pub mod nat;
pub mod netcfg;
pub mod netcheck;
pub mod netstack;
pub mod node_control;
pub mod peer_relay;
pub mod portmap;
pub mod prefs;
pub mod route;
pub mod stun;
pub mod traversal;
pub mod uapi;
pub mod wg;
pub mod xdp;

#[cfg(test)]
mod test_util;
