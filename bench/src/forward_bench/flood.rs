//! An XDP traffic generator for the LAN host: a tiny XDP program, run with the kernel's
//! live-frames `BPF_PROG_RUN` mode (as `xdp-trafficgen` does), that writes one fixed Ethernet
//! frame and returns `XDP_TX`, so the kernel sends it out of the LAN host's veth to the router.
//!
//! A socket sender spends most of its time in its own system calls and network stack, so on a
//! small machine it, not the router, limits what the router is offered. Frames from this
//! generator cost a few tens of nanoseconds each to make, and the router's receive path runs on
//! the same CPU right after each batch (the veth hands them to the router's NAPI there), so
//! the rate it reaches is set by the router's per-packet cost.
//!
//! The program is built from raw BPF instructions here (it only stores the frame's bytes), not
//! taken from `gateway-ebpf`, which holds only what the daemon runs. It rewrites the whole frame
//! on every run because the router rewrites the frames it receives (de-NAT) and the kernel
//! reuses their pages for later runs without restoring them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tailgate::xdp::{prog_run_xdp_live, xdp_action};

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source register in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | (dst & 0xf),
            off,
            imm,
        }
    }
}

// Opcodes used (linux/bpf.h, linux/bpf_common.h).
/// `dst = *(u32 *)(src + off)`.
const LDX_W: u8 = 0x61;
/// `*(u32 *)(dst + off) = imm`.
const ST_W: u8 = 0x62;
/// `*(u16 *)(dst + off) = imm`.
const ST_H: u8 = 0x6a;
/// `*(u8 *)(dst + off) = imm`.
const ST_B: u8 = 0x72;
/// `dst = src` (64-bit).
const MOV64_X: u8 = 0xbf;
/// `dst = imm` (64-bit).
const MOV64_K: u8 = 0xb7;
/// `dst += imm` (64-bit).
const ADD64_K: u8 = 0x07;
/// `if dst > src goto pc + off` (unsigned).
const JGT_X: u8 = 0x2d;
/// Return `r0`.
const EXIT: u8 = 0x95;

/// Longest frame the generator writes (a minimum-size frame is all it needs).
pub const MAX_FRAME: usize = 256;

/// The program: if the frame is at least `frame.len()` bytes long, overwrite its start with
/// `frame` and return `XDP_TX`; otherwise `XDP_DROP`.
fn program(frame: &[u8]) -> Vec<Insn> {
    let len = frame.len() as i32;
    let mut stores = Vec::new();
    let mut off = 0usize;
    while off < frame.len() {
        let rest = &frame[off..];
        let (code, width) = match rest.len() {
            4.. => (ST_W, 4),
            2..=3 => (ST_H, 2),
            _ => (ST_B, 1),
        };
        let mut word = [0u8; 4];
        word[..width].copy_from_slice(&rest[..width]);
        stores.push(Insn::new(code, 2, 0, off as i16, i32::from_le_bytes(word)));
        off += width;
    }
    let mut p = vec![
        Insn::new(LDX_W, 2, 1, 0, 0), // r2 = ctx->data
        Insn::new(LDX_W, 3, 1, 4, 0), // r3 = ctx->data_end
        Insn::new(MOV64_X, 4, 2, 0, 0),
        Insn::new(ADD64_K, 4, 0, 0, len),
        // Skip the stores, the verdict and its exit when data + len > data_end.
        Insn::new(JGT_X, 4, 3, stores.len() as i16 + 2, 0),
    ];
    p.extend(stores);
    p.push(Insn::new(MOV64_K, 0, 0, 0, xdp_action::TX as i32));
    p.push(Insn::new(EXIT, 0, 0, 0, 0));
    p.push(Insn::new(MOV64_K, 0, 0, 0, xdp_action::DROP as i32));
    p.push(Insn::new(EXIT, 0, 0, 0, 0));
    p
}

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// A loaded generator program for one frame; unloaded on drop.
pub struct XdpFlood {
    prog: OwnedFd,
    frame: Vec<u8>,
}

impl XdpFlood {
    /// Loads a generator that sends `frame` (an Ethernet frame of at most [`MAX_FRAME`]
    /// bytes).
    pub fn load(frame: &[u8]) -> Result<XdpFlood> {
        if frame.len() < 14 || frame.len() > MAX_FRAME {
            bail!(
                "the generator's frame must be 14..={MAX_FRAME} bytes, not {}",
                frame.len()
            );
        }
        let insns = program(frame);
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut name = [0u8; 16];
        name[..9].copy_from_slice(b"tgb_flood");
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name,
            ..ProgLoadAttr::default()
        };
        // SAFETY: `attr` is a zero-initialised `bpf_attr` prefix of the size passed; `insns`,
        // `license` and `log` are valid for the lengths given and outlive the call; the kernel
        // writes at most `log_size` bytes into `log`.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &mut attr as *mut ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>() as u32,
            )
        };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            bail!(
                "loading the XDP generator: {err}; verifier: {}",
                String::from_utf8_lossy(&log[..end]).trim()
            );
        }
        // SAFETY: the kernel returned a new program descriptor that nothing else owns.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(XdpFlood {
            prog,
            frame: frame.to_vec(),
        })
    }

    /// Sends the frame out of `ifindex` (an interface of the calling thread's namespace) until
    /// `duration` passed; returns the frames made and the seconds it took.
    ///
    /// Each `BPF_PROG_RUN` call sets up and tears down a page pool, which costs tens of
    /// milliseconds here, so the calls are made as long as the time left allows (up to
    /// [`LONGEST_CALL`]), sized from the rate of the call before.
    pub fn flood(&self, ifindex: u32, duration: Duration) -> Result<(u64, f64)> {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut chunk = FIRST_CHUNK;
        loop {
            let call = Instant::now();
            prog_run_xdp_live(self.prog.as_raw_fd(), &self.frame, ifindex, chunk, 0)
                .context("BPF_PROG_RUN in live-frames mode (kernel 5.18+)")?;
            sent += u64::from(chunk);
            let Some(left) = duration.checked_sub(start.elapsed()) else {
                break;
            };
            chunk = next_chunk(chunk, call.elapsed(), left);
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    }
}

/// Frames in the first `BPF_PROG_RUN` call of [`XdpFlood::flood`].
const FIRST_CHUNK: u32 = 65_536;
/// The longest a single call of [`XdpFlood::flood`] is planned to take.
pub const LONGEST_CALL: Duration = Duration::from_millis(500);

/// Frames for the next call: as many as the last call's rate makes in `left` (at most
/// [`LONGEST_CALL`]), at least 4096.
fn next_chunk(last: u32, took: Duration, left: Duration) -> u32 {
    let rate = f64::from(last) / took.as_secs_f64().max(1e-6);
    let frames = rate * left.min(LONGEST_CALL).as_secs_f64();
    frames.clamp(4096.0, f64::from(u32::MAX / 2)) as u32
}

/// An Ethernet II header for an IPv4 packet from `src` to `dst` MAC, followed by `ip`.
pub fn ethernet_ipv4(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// Parses a MAC address written as `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC address: {s:?}");
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("not a MAC address: {s:?}"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_stores_every_byte_of_the_frame_once() {
        for len in [14usize, 15, 17, 60, 61, 63] {
            let frame: Vec<u8> = (0..len as u8).collect();
            let p = program(&frame);
            let mut image = vec![0u8; len];
            let mut written = vec![0u32; len];
            for i in p.iter().filter(|i| [ST_W, ST_H, ST_B].contains(&i.code)) {
                let width = match i.code {
                    ST_W => 4,
                    ST_H => 2,
                    _ => 1,
                };
                for (k, byte) in i.imm.to_le_bytes().into_iter().take(width).enumerate() {
                    let at = i.off as usize + k;
                    image[at] = byte;
                    written[at] += 1;
                }
            }
            assert_eq!(image, frame, "len {len}");
            assert!(written.iter().all(|&w| w == 1), "len {len}");
            // The bounds check jumps over the stores and the TX verdict to the DROP verdict.
            let jump = p.iter().position(|i| i.code == JGT_X).unwrap();
            let target = jump + 1 + p[jump].off as usize;
            assert_eq!(p[target].code, MOV64_K);
            assert_eq!(p[target].imm, xdp_action::DROP as i32);
            assert_eq!(p.last().unwrap().code, EXIT);
        }
    }

    #[test]
    fn calls_fill_the_time_left_up_to_the_longest_call() {
        let ms = Duration::from_millis;
        // 100,000 frames in 50 ms: 2 Mpps.
        assert_eq!(next_chunk(100_000, ms(50), ms(100)), 200_000);
        assert_eq!(
            next_chunk(100_000, ms(50), Duration::from_secs(5)),
            1_000_000
        );
        assert_eq!(next_chunk(100_000, ms(50), ms(0)), 4096);
        assert_eq!(next_chunk(100_000, Duration::ZERO, ms(500)), u32::MAX / 2);
    }

    #[test]
    fn macs_parse_and_junk_is_refused() {
        assert_eq!(
            parse_mac("02:00:0a:01:01:FF\n").unwrap(),
            [2, 0, 10, 1, 1, 0xff]
        );
        assert!(parse_mac("02:00:0a:01:01").is_err());
        assert!(parse_mac("02:00:0a:01:01:zz").is_err());
    }

    #[test]
    fn kernel_structs_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(Insn::new(LDX_W, 2, 1, 4, 0).regs, 0x12);
    }

    #[test]
    fn frames_outside_the_bounds_are_refused() {
        assert!(XdpFlood::load(&[0u8; 13]).is_err());
        assert!(XdpFlood::load(&vec![0u8; MAX_FRAME + 1]).is_err());
    }
}
