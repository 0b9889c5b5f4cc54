//! The tailgate lab: network namespaces with real WireGuard implementations, shared by the
//! demo, the integration tests and the benchmarks.

pub mod acl_bench;
pub mod args;
pub mod dns_bench;
pub mod forward_bench;
pub mod lab;
pub mod relay_bench;
pub mod stun_bench;
pub mod transfer;
pub mod tunnel_bench;
