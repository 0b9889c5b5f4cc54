//! `BPF_PROG_TEST_RUN` for XDP programs (aya 0.13 has no wrapper): one packet through a
//! program with its verdict and output ([`prog_test_run_xdp`], for test vectors and timing),
//! and the kernel's live-frames mode ([`prog_run_xdp_live`]), in which the verdicts are carried
//! out: `XDP_TX` and `XDP_REDIRECT` transmit the frames, as a traffic generator needs.

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (an [`super::xdp_action`]).
    pub action: u32,
    /// The packet after the program (as it would be passed, transmitted or redirected).
    pub data: Vec<u8>,
    /// Average run time per repetition, ns.
    pub duration_ns: u32,
}

/// `struct xdp_md` as `BPF_PROG_TEST_RUN` takes it for its context.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The `test` member of `union bpf_attr` (kernel 5.10+ layout, zero-padded).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Room for headers an XDP program may prepend in a test run.
const TEST_RUN_HEADROOM: usize = 256;

/// `BPF_PROG_TEST_RUN` of an XDP program (aya 0.13 has no wrapper).
pub fn prog_test_run_xdp(
    prog_fd: i32,
    packet: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> std::io::Result<TestRun> {
    let mut out = vec![0u8; packet.len() + TEST_RUN_HEADROOM];
    let ctx = XdpMd {
        data_end: packet.len() as u32,
        ingress_ifindex,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..TestRunAttr::default()
    };
    if ingress_ifindex != 0 {
        attr.ctx_size_in = std::mem::size_of::<XdpMd>() as u32;
        attr.ctx_in = &ctx as *const XdpMd as u64;
    }
    // SAFETY: the pointers in `attr` (`packet`, `out`, `ctx`) are valid for the lengths given
    // and outlive the call; the kernel writes at most `data_size_out` bytes into `out`.
    unsafe { bpf_prog_test_run(&mut attr)? };
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun {
        action: attr.retval,
        data: out,
        duration_ns: attr.duration,
    })
}

/// `BPF_F_TEST_XDP_LIVE_FRAMES`: carry out the program's verdicts (kernel 5.18+).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// Runs an XDP program `repeat` times in live-frames mode on copies of `frame`, as if each
/// had arrived on `ingress_ifindex` (in the calling thread's network namespace), `batch_size`
/// frames at a time (0: the kernel's default of 64). The verdicts are carried out: `XDP_TX`
/// sends the frame out of `ingress_ifindex`, `XDP_REDIRECT` to its target, `XDP_PASS` into the
/// stack. The kernel initialises each frame from `frame` only when it first allocates the
/// page, so a program whose frames are changed downstream must rewrite them on every run.
pub fn prog_run_xdp_live(
    prog_fd: i32,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
    batch_size: u32,
) -> std::io::Result<()> {
    let ctx = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: repeat.max(1),
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size,
        ..TestRunAttr::default()
    };
    // SAFETY: `frame` and `ctx` are valid for the lengths given and outlive the call;
    // live-frames mode writes no output buffer (`data_out` is null with size 0).
    unsafe { bpf_prog_test_run(&mut attr) }
}

/// The `BPF_PROG_TEST_RUN` system call.
///
/// # Safety
/// Every pointer in `attr` must be valid for the length given beside it for the whole call,
/// and writable where the kernel writes (`data_out`, `ctx_out`).
unsafe fn bpf_prog_test_run(attr: &mut TestRunAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a zero-initialised `bpf_attr` prefix of the size passed; the caller
    // vouches for the pointers in it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layout() {
        assert_eq!(std::mem::size_of::<TestRunAttr>(), 80);
        assert_eq!(std::mem::size_of::<XdpMd>(), 24);
    }
}
