//! UDP segmentation offload (`UDP_SEGMENT`, one `sendmsg` for many equal-size datagrams) and
//! receive coalescing (`UDP_GRO`, one `recvmsg` for many datagrams of one sender), as raw
//! `sendmsg`/`recvmsg` calls on the socket's descriptor.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// `SOL_UDP` socket option level.
const SOL_UDP: libc::c_int = 17;
/// Per-`sendmsg` segment size (Linux 4.18+).
pub const UDP_SEGMENT: libc::c_int = 103;
/// Receive coalescing (Linux 5.0+).
pub const UDP_GRO: libc::c_int = 104;
/// Most segments one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS` on older kernels).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most payload bytes one GSO send may carry.
pub const MAX_GSO_BYTES: usize = 65000;

/// Room for one `u16`/`int` control message.
pub(crate) const CMSG_SPACE: usize = 64;

/// Room for the control messages of one datagram, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct CmsgBuf(pub(crate) [u8; CMSG_SPACE]);

impl CmsgBuf {
    /// An empty buffer.
    pub(crate) const EMPTY: CmsgBuf = CmsgBuf([0; CMSG_SPACE]);
}

/// Points `msg`'s control data at `cmsg`, holding a `UDP_SEGMENT` of `segment` bytes: the
/// kernel splits the payload into datagrams of that size.
pub(crate) fn set_segment(msg: &mut libc::msghdr, cmsg: &mut CmsgBuf, segment: usize) {
    // SAFETY: CMSG_SPACE of a u16 fits in the aligned 64-byte buffer, which `msg` points
    // at from here on; CMSG_FIRSTHDR is then non-null.
    unsafe {
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(msg);
        (*c).cmsg_level = SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment as u16);
    }
}

/// The `UDP_GRO` segment size in the control data of a received `msg` of `len` bytes, when
/// the kernel coalesced several datagrams into it.
pub(crate) fn gro_segment(msg: &libc::msghdr, len: usize) -> Option<usize> {
    let mut segment = None;
    // SAFETY: the kernel filled msg_control with well-formed cmsgs within msg_controllen
    // (or left msg_controllen 0, for which CMSG_FIRSTHDR is null).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                segment = usize::try_from(size).ok().filter(|&s| s > 0 && s < len);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    segment
}

/// Turns on `UDP_GRO`; false if the kernel refuses.
pub fn enable_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and the length matches.
    unsafe {
        libc::setsockopt(
            fd,
            SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Sends `buf` to `to` as datagrams of `segment` bytes (the last may be shorter) in one
/// `sendmsg`. `segment == buf.len()` sends a single datagram without the control message.
pub fn send_segments(fd: RawFd, buf: &[u8], segment: usize, to: &SockAddr) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE]);
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = to.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = to.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if segment < buf.len() {
        set_segment(&mut msg, &mut cmsg, segment);
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Receives into `buf`: returns the bytes read, the sender and the segment size when the
/// kernel coalesced several datagrams (`None` for a single datagram).
pub fn recv_coalesced(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<usize>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: sockaddr_storage is plain data.
    let mut from: libc::sockaddr_storage = unsafe { zeroed() };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE]);
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE;
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let segment = gro_segment(&msg, n as usize);
    let addr = socket_addr(&from).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address")
    })?;
    Ok((n as usize, addr, segment))
}

/// Reads an IPv4/IPv6 address out of a `sockaddr_storage` the kernel filled.
pub(crate) fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can contain.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which it can contain.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
