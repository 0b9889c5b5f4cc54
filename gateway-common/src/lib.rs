#![no_std]
//! Types shared between the tailgate daemon (userspace, `user` feature) and its eBPF programs
//! (`gateway-ebpf`, built for `bpfel-unknown-none`).
//!
//! Everything that crosses the kernel/userspace boundary is `#[repr(C)]`, has no implicit
//! padding, and keeps multi-byte protocol fields as byte arrays in network byte order so that
//! both sides agree on the layout regardless of host endianness.

mod counters;
pub mod forward;
pub mod port_config;
pub mod stun;
pub mod wan;

pub use forward::{LanCounter, TunCounter};
pub use port_config::PortConfig;
pub use stun::{StunConfig, StunCounter};
pub use wan::{classify_wg_payload, WanConfig, WanCounter};
