//! The WireGuard UDP socket: one dual-stack socket with large buffers.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;

use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::mmsg::{self, DatagramBatch, Outgoing};
use super::udp_offload;

/// Socket buffer size requested for both directions (bursts of a fast tunnel).
const SOCKET_BUFFER_BYTES: libc::c_int = 7 * 1024 * 1024;

/// A UDP socket for WireGuard datagrams, IPv4 and IPv6 on one port where the host has IPv6.
pub struct WgSocket {
    sock: UdpSocket,
    dual_stack: bool,
    /// Whether sends may use `UDP_SEGMENT`; cleared if the kernel refuses it once.
    gso: AtomicBool,
    /// Whether `UDP_GRO` is on.
    gro: bool,
}

impl WgSocket {
    /// Binds `[::]:port` (dual-stack), or `0.0.0.0:port` where IPv6 is unavailable. With
    /// `offload`, sends use UDP GSO and receives UDP GRO where the kernel has them.
    /// Must run inside a tokio runtime.
    pub async fn bind(port: u16, offload: bool) -> io::Result<WgSocket> {
        let (sock, dual_stack) = match bind_std(Domain::IPV6, port) {
            Ok(s) => (s, true),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(_) => (bind_std(Domain::IPV4, port)?, false),
        };
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            // FORCE needs CAP_NET_ADMIN; the plain option is capped by net.core.*mem_max.
            if set_int_opt(&sock, libc::SOL_SOCKET, force, SOCKET_BUFFER_BYTES).is_err() {
                let _ = set_int_opt(&sock, libc::SOL_SOCKET, plain, SOCKET_BUFFER_BYTES);
            }
        }
        let sock = UdpSocket::from_std(sock)?;
        let gro = offload && udp_offload::enable_gro(sock.as_raw_fd());
        Ok(WgSocket {
            sock,
            dual_stack,
            gso: AtomicBool::new(offload),
            gro,
        })
    }

    /// The bound UDP port.
    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.sock.local_addr()?.port())
    }

    /// Receives one datagram; IPv4-mapped source addresses are returned as IPv4.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = self.sock.recv_from(buf).await?;
        Ok((n, canonical(from)))
    }

    /// Sends one datagram to `to` (IPv4 or IPv6).
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sock.send_to(buf, self.wire_addr(to)).await
    }

    /// Sends one datagram without waiting; `WouldBlock` when the socket buffer is full.
    pub fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sock.try_send_to(buf, self.wire_addr(to))
    }

    /// Sets `SO_MARK` on outgoing datagrams (0 clears it), for policy routing.
    pub fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        set_int_opt(
            &self.sock,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            mark as libc::c_int,
        )
    }

    /// Whether UDP GSO is in use for sends.
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether UDP GRO is in use for receives.
    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    /// Sends `buf` as consecutive datagrams of `segment` bytes (the last may be shorter) to
    /// `to`: one `sendmsg` with GSO, or one send per datagram without it.
    pub async fn send_segments(
        &self,
        buf: &[u8],
        segment: usize,
        to: SocketAddr,
    ) -> io::Result<()> {
        if segment >= buf.len() {
            return self.send_to(buf, to).await.map(drop);
        }
        if self.gso_enabled() {
            let addr = SockAddr::from(self.wire_addr(to));
            let fd = self.sock.as_raw_fd();
            let r = self
                .sock
                .async_io(Interest::WRITABLE, || {
                    udp_offload::send_segments(fd, buf, segment, &addr)
                })
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if is_gso_refusal(&e) => {
                    log::warn!(
                        "UDP GSO refused by the kernel ({e}); sending one datagram per syscall"
                    );
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        for d in buf.chunks(segment) {
            self.send_to(d, to).await?;
        }
        Ok(())
    }

    /// Waits for datagrams: returns bytes, sender, and the segment size when several
    /// datagrams were coalesced by GRO.
    pub async fn recv_coalesced(
        &self,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<usize>)> {
        let fd = self.sock.as_raw_fd();
        let (n, from, seg) = self
            .sock
            .async_io(Interest::READABLE, || udp_offload::recv_coalesced(fd, buf))
            .await?;
        Ok((n, canonical(from), seg))
    }

    /// Like [`WgSocket::recv_coalesced`] without waiting: `WouldBlock` when nothing is queued.
    pub fn try_recv_coalesced(
        &self,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<usize>)> {
        let fd = self.sock.as_raw_fd();
        let (n, from, seg) = self
            .sock
            .try_io(Interest::READABLE, || udp_offload::recv_coalesced(fd, buf))?;
        Ok((n, canonical(from), seg))
    }

    /// Waits for datagrams and reads every queued one that fits `batch` with one `recvmmsg`;
    /// returns how many.
    pub async fn recv_batch(&self, batch: &mut DatagramBatch) -> io::Result<usize> {
        let fd = self.sock.as_raw_fd();
        self.sock
            .async_io(Interest::READABLE, || batch.recv(fd))
            .await
    }

    /// Sends slots of `batch` (slot index and destination each) with as few `sendmmsg`
    /// calls as the socket buffer allows; a slot holding a GRO run goes on as the same
    /// datagrams (with UDP GSO, or one by one where the kernel refuses GSO). Returns how many
    /// slots were sent (all, unless an error other than a full buffer stopped it).
    pub async fn send_batch(
        &self,
        batch: &DatagramBatch,
        targets: &[(usize, SocketAddr)],
    ) -> io::Result<usize> {
        let fd = self.sock.as_raw_fd();
        let wire: Vec<SockAddr> = targets
            .iter()
            .map(|(_, to)| SockAddr::from(self.wire_addr(*to)))
            .collect();
        let mut sent = 0;
        while sent < targets.len() {
            let gso = self.gso_enabled();
            let (slot, to) = targets[sent];
            if let (Some(segment), false) = (batch.segment(slot), gso) {
                self.send_segments(batch.slot(slot), segment, to).await?;
                sent += 1;
                continue;
            }
            // Up to the next run that needs sending one by one.
            let end = (sent..targets.len())
                .find(|&k| !gso && batch.segment(targets[k].0).is_some())
                .unwrap_or(targets.len());
            let outgoing: Vec<Outgoing> = (sent..end)
                .map(|k| batch.outgoing(targets[k].0, &wire[k]))
                .collect();
            let has_runs = outgoing.iter().any(|o| o.segment.is_some());
            match self
                .sock
                .async_io(Interest::WRITABLE, || mmsg::send_many(fd, &outgoing))
                .await
            {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if has_runs && is_gso_refusal(&e) => {
                    log::warn!(
                        "UDP GSO refused by the kernel ({e}); sending one datagram per syscall"
                    );
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) if sent > 0 => {
                    log::debug!("sendmmsg: {e}");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    fn wire_addr(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }
}

/// Whether a send failed because the kernel (or the route's device) cannot do UDP GSO.
fn is_gso_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT)
    )
}

/// Turns an IPv4-mapped IPv6 socket address into a plain IPv4 one.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// A non-blocking UDP socket bound to the unspecified address of `domain`; IPv6 sockets
/// also accept IPv4 (`IPV6_V6ONLY` off, set before binding).
fn bind_std(domain: Domain, port: u16) -> io::Result<std::net::UdpSocket> {
    let sock = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    let addr: SocketAddr = if domain == Domain::IPV6 {
        sock.set_only_v6(false)?;
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

fn set_int_opt(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a live c_int and the length passed matches its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
