//! The subnet-router and exit-node side: IP forwarding sysctls, the XDP fast path, the
//! nftables fallback path (masquerade), and 4via6 translation in userspace.

pub mod apply;
pub mod fast_path;
pub mod nft;
pub mod sysctl;
pub mod via;

pub use apply::{Routing, RoutingChange, RoutingStatus};
pub use fast_path::{FastPath, FastPathStatus, LanSocket};
pub use via::{ViaPassthrough, ViaTranslator};
