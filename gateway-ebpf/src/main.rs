//! tailgate's eBPF programs. Built for `bpfel-unknown-none` by `cargo xtask build`
//! (see `xtask/src/ebpf.rs`) and embedded in the `tailgate` binary (see `gateway/build.rs`).
#![no_std]
#![no_main]

mod fwd;
mod helpers;
mod lan_return;
mod stun;
mod tun_forward;
mod wan_ingress;

/// Kernel-visible license of the programs in this object. "Dual MIT/GPL" is GPL-compatible, so
/// GPL-only helpers stay available to the programs (aya would assume "GPL" without it).
#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// eBPF has no unwinding; a reachable panic path would show up as an infinite loop that the
/// verifier rejects at load time, rather than as undefined behaviour.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
