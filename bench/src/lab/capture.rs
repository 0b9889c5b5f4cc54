//! Capturing one UDP datagram off an interface (AF_PACKET), to replay it in tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::Netns;

/// A captured IPv4 UDP datagram.
#[derive(Debug, Clone)]
pub struct CapturedDatagram {
    /// Source address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// Parses an IPv4/UDP packet (starting at the IP header).
pub fn parse_ipv4_udp(pkt: &[u8]) -> Option<CapturedDatagram> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 17 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let udp = pkt.get(ihl..)?;
    if udp.len() < 8 {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let payload = udp.get(8..udp_len.max(8))?.to_vec();
    let ip = |o: usize| Ipv4Addr::new(pkt[o], pkt[o + 1], pkt[o + 2], pkt[o + 3]);
    Some(CapturedDatagram {
        src: SocketAddr::new(ip(12).into(), u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(ip(16).into(), u16::from_be_bytes([udp[2], udp[3]])),
        payload,
    })
}

/// Captures, inside `ns` on `ifname`, the first IPv4 UDP datagram for which `want` is true.
/// Returns after `timeout` with an error if none came.
pub fn capture_udp<F>(
    ns: &Netns,
    ifname: &str,
    timeout: Duration,
    want: F,
) -> Result<std::thread::JoinHandle<Result<CapturedDatagram>>>
where
    F: Fn(&CapturedDatagram) -> bool + Send + 'static,
{
    let ifname = std::ffi::CString::new(ifname)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn_inside(move || {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM,
                i32::from((libc::ETH_P_IP as u16).to_be()),
            )
        };
        if raw < 0 {
            return Err(anyhow!(
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: raw is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifname is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        if index == 0 {
            return Err(anyhow!("no interface {ifname:?}"));
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is a valid sockaddr_ll and the length matches.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(anyhow!(
                "bind AF_PACKET: {}",
                std::io::Error::last_os_error()
            ));
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: tv is a valid timeval and the length matches.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let _ = ready_tx.send(());
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            if let Some(d) = parse_ipv4_udp(&buf[..n as usize]) {
                if want(&d) {
                    return Ok(d);
                }
            }
        }
        Err(anyhow!("no matching datagram within {timeout:?}"))
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("capture thread did not start"))?;
    Ok(handle)
}
