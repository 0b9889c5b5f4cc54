//! The coordination server (`tailgate control`) and the node's client for it.
//!
//! Like headscale + tailscaled's control client in one crate:
//!
//! | module | concern |
//! |---|---|
//! | [`proto`] | the versioned JSON messages (register, netmap, updates, keepalives) |
//! | [`transport`] | Noise IK over TCP: prelude, length-prefixed frames, chunked messages |
//! | [`login_url`] | `tg://HOST:PORT#KEY` login-server URLs |
//! | [`store`] | SQLite persistence (WAL, migrations) |
//! | [`tailnet`] | the I/O-free core: registration, addresses, sessions, routes, netmaps |
//! | [`election`] | HA primary election per prefix (priorities, failover, hold-down) |
//! | [`policy`], [`hujson`] | the HuJSON policy file and its `autoApprovers` |
//! | [`acl`] | the policy's `acls`, `hosts`, `tagOwners`, `tests`: per-node packet filters and peer visibility |
//! | [`server`] | the tokio server: connections, sessions, timers, admin socket |
//! | [`admin`], [`cli`] | the admin API and the `tailgate control …` commands |
//! | [`client`], [`node_state`] | the node side: registration, session loop with backoff, state on disk |
//! | [`duration`] | `30s` / `24h` / `180d` flag values |

pub mod acl;
pub mod admin;
pub mod cli;
pub mod client;
pub mod duration;
pub mod election;
pub mod failover;
pub mod hujson;
pub mod login_url;
pub mod node_state;
pub mod policy;
pub mod proto;
pub mod server;
pub mod store;
pub mod tailnet;
pub mod transport;
