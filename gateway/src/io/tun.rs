//! A Linux TUN device (`IFF_TUN | IFF_NO_PI`), non-blocking, driven by tokio — or, in
//! userspace networking mode, a pair of channels to the embedded TCP/IP stack
//! ([`crate::netstack`]) that the data path uses the same way.
//!
//! The device exists as long as the file descriptor is open; the kernel removes it, with its
//! addresses and routes, when the [`Tun`] is dropped.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

const TUN_PATH: &[u8] = b"/dev/net/tun\0";
// From <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// Which offloads the TUN device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunOffloads {
    /// Every packet is prefixed by a `virtio_net_hdr`.
    pub vnet_hdr: bool,
    /// The kernel hands over TCP super-packets (TSO) and takes coalesced ones.
    pub tso: bool,
    /// The kernel hands over UDP super-packets (USO).
    pub uso: bool,
}

/// An open TUN device, or the userspace stack's end of one.
pub struct Tun {
    io: TunIo,
    name: String,
    offloads: TunOffloads,
}

/// Where packets go.
enum TunIo {
    /// A kernel TUN device.
    Kernel(AsyncFd<OwnedFd>),
    /// The userspace stack: packets it sends, and a way to hand it packets.
    Stack {
        from_stack: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<u8>>>,
        to_stack: tokio::sync::mpsc::Sender<Vec<u8>>,
    },
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Creates (or attaches to) the TUN device `name`; with `offload`, asks for a virtio
    /// header and TSO/USO, keeping what the kernel grants. Must run inside a tokio runtime.
    pub fn create(name: &str, offload: bool) -> io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad interface name",
            ));
        }
        // SAFETY: TUN_PATH is NUL-terminated; open has no other preconditions.
        let raw = unsafe {
            libc::open(
                TUN_PATH.as_ptr().cast(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")));
        }
        // SAFETY: raw is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI | if offload { IFF_VNET_HDR } else { 0 },
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: req is a properly sized, initialised struct ifreq for TUNSETIFF.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
        }
        let len = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        let offloads = if offload {
            negotiate_offloads(fd.as_raw_fd())
        } else {
            TunOffloads::default()
        };
        // SAFETY: `fd` is an open descriptor that the AsyncFd takes ownership of; OwnedFd
        // always returns that same descriptor and closes it only when dropped with it.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| e.into_parts().1)?;
        Ok(Tun {
            io: TunIo::Kernel(fd),
            name,
            offloads,
        })
    }

    /// The userspace stack's side as a TUN: `recv` yields what the stack sends out through
    /// `from_stack`, `send` hands packets to it through `to_stack`. No offloads.
    pub fn userspace(
        name: &str,
        from_stack: tokio::sync::mpsc::Receiver<Vec<u8>>,
        to_stack: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Tun {
        Tun {
            io: TunIo::Stack {
                from_stack: tokio::sync::Mutex::new(from_stack),
                to_stack,
            },
            name: name.to_string(),
            offloads: TunOffloads::default(),
        }
    }

    /// True for the userspace stack's side (no kernel device).
    pub fn is_userspace(&self) -> bool {
        matches!(self.io, TunIo::Stack { .. })
    }

    /// The kernel's name for the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offloads in effect.
    pub fn offloads(&self) -> TunOffloads {
        self.offloads
    }

    /// Reads one IP packet (prefixed by a virtio header when `offloads().vnet_hdr`) into `buf`, waiting until one is available.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = match &self.io {
            TunIo::Kernel(fd) => fd,
            TunIo::Stack { from_stack, .. } => {
                let packet = from_stack.lock().await.recv().await.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the userspace stack stopped")
                })?;
                let n = packet.len().min(buf.len());
                buf[..n].copy_from_slice(&packet[..n]);
                return Ok(n);
            }
        };
        loop {
            let mut guard = fd.readable().await?;
            match guard.try_io(|fd| sys_read(fd.as_raw_fd(), buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one IP packet, waiting while the device queue is full.
    pub async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        let fd = match &self.io {
            TunIo::Kernel(fd) => fd,
            TunIo::Stack { to_stack, .. } => {
                to_stack.send(packet.to_vec()).await.map_err(|_| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the userspace stack stopped")
                })?;
                return Ok(packet.len());
            }
        };
        loop {
            let mut guard = fd.writable().await?;
            match guard.try_io(|fd| sys_write(fd.as_raw_fd(), packet)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Asks for TSO (and USO where the kernel has it, Linux 6.2+); the virtio header stays on
/// even when neither is granted, since the device was created with it.
fn negotiate_offloads(fd: RawFd) -> TunOffloads {
    let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    let set = |flags: libc::c_uint| {
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        unsafe { libc::ioctl(fd, TUNSETOFFLOAD, flags as libc::c_ulong) == 0 }
    };
    if set(tso | TUN_F_USO4 | TUN_F_USO6) {
        TunOffloads {
            vnet_hdr: true,
            tso: true,
            uso: true,
        }
    } else if set(tso) {
        TunOffloads {
            vnet_hdr: true,
            tso: true,
            uso: false,
        }
    } else {
        log::warn!("TUN offloads refused by the kernel; packets are read one at a time");
        TunOffloads {
            vnet_hdr: true,
            tso: false,
            uso: false,
        }
    }
}

fn sys_read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn sys_write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
