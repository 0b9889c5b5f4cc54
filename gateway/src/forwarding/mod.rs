//! The subnet-router and exit-node side: IP forwarding sysctls, the XDP fast path, the
//! fallback path's masquerade (nftables, or iptables where there is no nft), and 4via6
//! translation in userspace.

pub mod apply;
pub mod fast_path;
pub mod iptables;
pub mod nat_backend;
pub mod nft;
pub mod sysctl;
pub mod via;

pub use apply::{Routing, RoutingChange, RoutingStatus};
pub use fast_path::{FastPath, FastPathStatus, LanSocket};
pub use nat_backend::NatBackend;
pub use via::{ViaPassthrough, ViaTranslator};
