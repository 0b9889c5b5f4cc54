//! The WireGuard cross-platform userspace API (`/var/run/wireguard/<name>.sock`), so the
//! standard `wg` tool manages a tailgate interface as it does a wireguard-go one.

pub mod protocol;
pub mod server;

pub use protocol::{
    format_get, parse_set, DeviceSnapshot, PeerSnapshot, PeerUpdate, SetRequest, UapiError,
};
