//! An AF_XDP socket bound to one receive queue of one interface, in copy mode, with its own
//! UMEM: most frames wait in the fill ring for received packets, the rest are kept for
//! transmitting.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::ring::{check_ring_size, Ring};
use super::umem::Umem;

/// Sizes of the UMEM and the rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpSocketConfig {
    /// Frames in the UMEM (a power of two; also the fill ring's size).
    pub frame_count: u32,
    /// Bytes per frame (a power of two from 2048 to the page size).
    pub frame_size: u32,
    /// Entries of the RX ring (a power of two).
    pub rx_ring_size: u32,
    /// Entries of the TX and completion rings (a power of two, below `frame_count`); this many
    /// frames are kept for transmitting, the others are for receiving.
    pub tx_ring_size: u32,
    /// Most RX descriptors one [`XdpSocket::recv_batch`] call handles.
    pub batch: u32,
}

impl Default for XdpSocketConfig {
    fn default() -> Self {
        XdpSocketConfig {
            frame_count: 4096,
            frame_size: 2048,
            rx_ring_size: 2048,
            tx_ring_size: 512,
            batch: 64,
        }
    }
}

impl XdpSocketConfig {
    fn check(&self) -> io::Result<()> {
        check_ring_size("fill (frame count)", self.frame_count)?;
        check_ring_size("RX", self.rx_ring_size)?;
        check_ring_size("TX", self.tx_ring_size)?;
        if self.tx_ring_size >= self.frame_count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "TX ring size {} leaves no UMEM frames for receiving ({} frames)",
                    self.tx_ring_size, self.frame_count
                ),
            ));
        }
        if self.batch == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "receive batch size must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Kernel counters of a socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpSocketStats {
    /// Packets dropped for reasons other than an invalid descriptor.
    pub rx_dropped: u64,
    /// Packets dropped because of an invalid descriptor.
    pub rx_invalid_descs: u64,
    /// Packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring had no frame when a packet arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// TX descriptors that were invalid.
    pub tx_invalid_descs: u64,
    /// Times the TX ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

/// An AF_XDP socket with its UMEM, bound to `(ifindex, queue)` in copy mode. Dropping it
/// unbinds it (the kernel removes it from any XSK map) and frees the memory.
pub struct XdpSocket {
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    completion: Ring<u64>,
    /// Closed before the UMEM is unmapped (fields drop in order).
    fd: OwnedFd,
    umem: Umem,
    /// Frames free for transmitting.
    tx_free: Vec<u64>,
    /// Frames taken off the RX ring, waiting to go back to the fill ring.
    refill: Vec<u64>,
    batch: u32,
    ifindex: u32,
    queue: u32,
    need_wakeup: bool,
}

impl std::fmt::Debug for XdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("frames", &self.umem.frame_count())
            .field("need_wakeup", &self.need_wakeup)
            .finish_non_exhaustive()
    }
}

fn with_context(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("AF_XDP {what}: {e}"))
}

fn setsockopt<T>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live, initialised `T` and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(SOL_XDP, name)` into a zeroed `T`; returns it with the length the kernel wrote.
fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, name: libc::c_int, zero: T) -> io::Result<(T, usize)> {
    let mut value = zero;
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok((value, len as usize))
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mmap_offsets(fd: BorrowedFd<'_>) -> io::Result<libc::xdp_mmap_offsets> {
    let zero_ring = libc::xdp_ring_offset {
        producer: 0,
        consumer: 0,
        desc: 0,
        flags: 0,
    };
    let zero = libc::xdp_mmap_offsets {
        rx: zero_ring,
        tx: zero_ring,
        fr: zero_ring,
        cr: zero_ring,
    };
    let (off, len) = getsockopt(fd, libc::XDP_MMAP_OFFSETS, zero)
        .map_err(with_context("reading the ring offsets (XDP_MMAP_OFFSETS)"))?;
    if len != std::mem::size_of::<libc::xdp_mmap_offsets>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "AF_XDP: the kernel's ring offsets have no flags word (kernel older than 5.4)",
        ));
    }
    Ok(off)
}

impl XdpSocket {
    /// Creates a socket with a fresh UMEM, maps its four rings, fills the fill ring and binds
    /// it to receive queue `queue` of interface `ifindex` in copy mode, asking for
    /// `XDP_USE_NEED_WAKEUP` (bound without it on kernels that refuse it).
    pub fn bind(ifindex: u32, queue: u32, config: XdpSocketConfig) -> io::Result<Self> {
        config.check()?;
        let umem = Umem::new(config.frame_count, config.frame_size)?;
        // SAFETY: plain socket creation; the result is checked before use.
        let raw: RawFd =
            unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(with_context("creating the socket")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a descriptor this function just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let reg = libc::xdp_umem_reg {
            addr: umem.as_ptr() as u64,
            len: umem.len() as u64,
            chunk_size: umem.frame_size(),
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(fd.as_fd(), libc::XDP_UMEM_REG, &reg)
            .map_err(with_context("registering the UMEM (XDP_UMEM_REG)"))?;
        let rx_frames = config.frame_count - config.tx_ring_size;
        for (name, opt, size) in [
            ("fill", libc::XDP_UMEM_FILL_RING, config.frame_count),
            (
                "completion",
                libc::XDP_UMEM_COMPLETION_RING,
                config.tx_ring_size,
            ),
            ("RX", libc::XDP_RX_RING, config.rx_ring_size),
            ("TX", libc::XDP_TX_RING, config.tx_ring_size),
        ] {
            setsockopt(fd.as_fd(), opt, &size)
                .map_err(|e| with_context(&format!("sizing the {name} ring"))(e))?;
        }
        let off = mmap_offsets(fd.as_fd())?;
        let fill = Ring::map(
            "fill",
            fd.as_fd(),
            libc::XDP_UMEM_PGOFF_FILL_RING,
            config.frame_count,
            off.fr.into(),
        )?;
        let completion = Ring::map(
            "completion",
            fd.as_fd(),
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            config.tx_ring_size,
            off.cr.into(),
        )?;
        let rx = Ring::map(
            "RX",
            fd.as_fd(),
            libc::XDP_PGOFF_RX_RING as u64,
            config.rx_ring_size,
            off.rx.into(),
        )?;
        let tx = Ring::map(
            "TX",
            fd.as_fd(),
            libc::XDP_PGOFF_TX_RING as u64,
            config.tx_ring_size,
            off.tx.into(),
        )?;
        let tx_free = (rx_frames..config.frame_count)
            .map(|i| umem.frame_addr(i))
            .collect();
        let mut socket = XdpSocket {
            rx,
            tx,
            fill,
            completion,
            fd,
            umem,
            tx_free,
            refill: Vec::with_capacity(config.batch as usize),
            batch: config.batch,
            ifindex,
            queue,
            need_wakeup: true,
        };
        let rx_addrs: Vec<u64> = (0..rx_frames).map(|i| socket.umem.frame_addr(i)).collect();
        let produced = socket.fill.produce(rx_addrs.iter().copied());
        if produced != rx_frames {
            return Err(io::Error::other(format!(
                "AF_XDP: the fill ring took {produced} of {rx_frames} frames"
            )));
        }
        match socket.bind_to(libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                socket.need_wakeup = false;
                socket.bind_to(libc::XDP_COPY).map_err(|e2| {
                    io::Error::new(e2.kind(), format!("{e2} (with XDP_USE_NEED_WAKEUP: {e})"))
                })?;
            }
            Err(e) => return Err(e),
        }
        Ok(socket)
    }

    fn bind_to(&self, flags: u16) -> io::Result<()> {
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: self.ifindex,
            sxdp_queue_id: self.queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a valid `sockaddr_xdp` and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!(
                "AF_XDP: binding to ifindex {} queue {} in copy mode: {e}",
                self.ifindex, self.queue
            ),
        ))
    }

    /// Interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Receive queue the socket is bound to (its key in an XSK map).
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether the socket was bound with `XDP_USE_NEED_WAKEUP`.
    pub fn uses_need_wakeup(&self) -> bool {
        self.need_wakeup
    }

    /// Calls `f` with every received frame (Ethernet header included) ready on the RX ring, up
    /// to the configured batch, then gives the frames back to the kernel through the fill ring.
    /// Returns how many frames were handled; 0 when none was waiting (never blocks).
    pub fn recv_batch(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
        let n = self.rx.available(self.batch);
        if n == 0 {
            self.wake_fill_if_needed()?;
            return Ok(0);
        }
        self.refill.clear();
        let mut invalid = 0usize;
        for i in 0..n {
            let desc = self.rx.peek(i);
            match self.umem.bytes(desc.addr, desc.len) {
                Some(frame) => f(frame),
                None => invalid += 1,
            }
            self.refill.push(self.umem.frame_base(desc.addr));
        }
        self.rx.release(n);
        let returned = self.fill.produce(self.refill.iter().copied());
        if returned as usize != self.refill.len() {
            return Err(io::Error::other(format!(
                "AF_XDP: fill ring full, {} frames lost",
                self.refill.len() - returned as usize
            )));
        }
        self.wake_fill_if_needed()?;
        if invalid > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("AF_XDP: {invalid} RX descriptors pointed outside their frame"),
            ));
        }
        Ok(n as usize)
    }

    fn wake_fill_if_needed(&self) -> io::Result<()> {
        if self.need_wakeup && self.fill.needs_wakeup() {
            self.kick_receive()?;
        }
        Ok(())
    }

    fn kick_receive(&self) -> io::Result<()> {
        // SAFETY: a zero-length, non-blocking receive into no buffer: it only makes the
        // kernel process the fill ring.
        let rc = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        ignore_transient(rc, "waking the receive side")
    }

    fn kick_transmit(&self) -> io::Result<()> {
        // SAFETY: a zero-length, non-blocking send of no buffer: it only makes the kernel
        // process the TX ring.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        ignore_transient(rc, "waking the transmit side")
    }

    /// Takes back the frames of sent packets from the completion ring; returns how many.
    pub fn reclaim(&mut self) -> usize {
        let n = self.completion.available(self.completion.size());
        for i in 0..n {
            let addr = self.completion.peek(i);
            self.tx_free.push(self.umem.frame_base(addr));
        }
        self.completion.release(n);
        n as usize
    }

    /// Queues one frame (Ethernet header included) for sending on the bound queue and wakes
    /// the kernel. Returns `false` when no TX frame is free (try again after the kernel has
    /// completed earlier sends).
    pub fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l <= self.umem.frame_size())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "AF_XDP: a {}-byte frame does not fit a {}-byte UMEM frame",
                        frame.len(),
                        self.umem.frame_size()
                    ),
                )
            })?;
        if self.tx_free.is_empty() {
            self.reclaim();
        }
        let Some(addr) = self.tx_free.pop() else {
            return Ok(false);
        };
        match self.umem.bytes_mut(addr, len) {
            Some(buf) => buf.copy_from_slice(frame),
            None => {
                self.tx_free.push(addr);
                return Err(io::Error::other("AF_XDP: TX frame outside the UMEM"));
            }
        }
        let desc = libc::xdp_desc {
            addr,
            len,
            options: 0,
        };
        if self.tx.produce([desc]) == 0 {
            self.tx_free.push(addr);
            return Ok(false);
        }
        // Copy mode sends only from sendto(); without need-wakeup always kick.
        if !self.need_wakeup || self.tx.needs_wakeup() {
            self.kick_transmit()?;
        }
        Ok(true)
    }

    /// Waits up to `timeout` for received frames; `Ok(true)` when some are ready.
    pub fn poll(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid `pollfd` and the count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(with_context("poll")(e));
        }
        if pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(io::Error::other(format!(
                "AF_XDP poll: socket error (revents {:#x})",
                pfd.revents
            )));
        }
        Ok(pfd.revents & libc::POLLIN != 0)
    }

    /// The kernel's counters for this socket.
    pub fn stats(&self) -> io::Result<XdpSocketStats> {
        let zero = libc::xdp_statistics {
            rx_dropped: 0,
            rx_invalid_descs: 0,
            tx_invalid_descs: 0,
            rx_ring_full: 0,
            rx_fill_ring_empty_descs: 0,
            tx_ring_empty_descs: 0,
        };
        let (s, _) = getsockopt(self.fd.as_fd(), libc::XDP_STATISTICS, zero)
            .map_err(with_context("reading statistics (XDP_STATISTICS)"))?;
        Ok(XdpSocketStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

impl AsFd for XdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for XdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Maps a wake-up call's result: busy / would-block / no-buffer answers are expected (the
/// kernel is already working on the ring), anything else is an error.
fn ignore_transient(rc: isize, what: &str) -> io::Result<()> {
    if rc >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::EINTR) => Ok(()),
        _ => Err(io::Error::new(e.kind(), format!("AF_XDP {what}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        assert!(XdpSocketConfig::default().check().is_ok());
        let bad = |c: XdpSocketConfig| c.check().is_err();
        let d = XdpSocketConfig::default();
        assert!(bad(XdpSocketConfig {
            tx_ring_size: d.frame_count,
            ..d
        }));
        assert!(bad(XdpSocketConfig {
            rx_ring_size: 1000,
            ..d
        }));
        assert!(bad(XdpSocketConfig { batch: 0, ..d }));
    }
}
