//! Batched datagram I/O: many datagrams per `recvmmsg`/`sendmmsg` system call, for sockets
//! that forward datagrams from many senders (the peer relay's sessions). Where the socket has
//! UDP GRO on, a slot may hold a run of datagrams the kernel coalesced from one sender; it
//! is sent on as the same run with UDP GSO.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

use super::udp_offload::{gro_segment, set_segment, socket_addr, CmsgBuf, CMSG_SPACE};

/// Largest UDP payload (and largest GRO run).
pub const MAX_DATAGRAM: usize = 65535;

/// Received datagrams: fixed slots, each big enough for the largest UDP datagram or GRO run.
/// Slots are zero-allocated, so the memory a slot holds is only what datagrams have written
/// into it.
pub struct DatagramBatch {
    data: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<CmsgBuf>,
    segments: Vec<Option<usize>>,
    count: usize,
}

/// One datagram (or run of equal-size datagrams) to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The payload.
    pub data: &'a [u8],
    /// Where to: `None` for the peer of a connected socket.
    pub to: Option<&'a SockAddr>,
    /// Send `data` as datagrams of this many bytes (UDP GSO); `None` for one datagram.
    pub segment: Option<usize>,
}

impl DatagramBatch {
    /// Room for `slots` datagrams (or GRO runs) of up to [`MAX_DATAGRAM`] bytes.
    pub fn new(slots: usize) -> DatagramBatch {
        let slots = slots.max(1);
        DatagramBatch {
            data: vec![0; slots * MAX_DATAGRAM],
            lens: vec![0; slots],
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) value.
            addrs: vec![unsafe { zeroed() }; slots],
            controls: vec![CmsgBuf::EMPTY; slots],
            segments: vec![None; slots],
            count: 0,
        }
    }

    /// Slots filled by the last receive.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Slot `i` and its sender (IPv4-mapped addresses as IPv4), or `None` when `i` is out of
    /// range or the sender is not an IP address.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let from = super::udp::canonical(socket_addr(&self.addrs[i])?);
        Some((self.slot(i), from))
    }

    /// The bytes of slot `i` (empty when out of range).
    pub fn slot(&self, i: usize) -> &[u8] {
        if i >= self.count {
            return &[];
        }
        let start = i * MAX_DATAGRAM;
        &self.data[start..start + self.lens[i]]
    }

    /// The datagram size of slot `i` when it holds a GRO run of several datagrams.
    pub fn segment(&self, i: usize) -> Option<usize> {
        self.segments
            .get(i)
            .copied()
            .flatten()
            .filter(|_| i < self.count)
    }

    /// How many datagrams slot `i` holds (0 when out of range).
    pub fn datagrams(&self, i: usize) -> usize {
        let len = self.slot(i).len();
        match self.segment(i) {
            Some(seg) => len.div_ceil(seg),
            None => usize::from(i < self.count),
        }
    }

    /// Slot `i` as a datagram (or GRO run) to send to `to`.
    pub fn outgoing<'a>(&'a self, i: usize, to: &'a SockAddr) -> Outgoing<'a> {
        Outgoing {
            data: self.slot(i),
            to: Some(to),
            segment: self.segment(i),
        }
    }

    /// Reads what is queued on `fd` without waiting (`recvmmsg` with `MSG_DONTWAIT`); returns
    /// the number of slots filled, or `WouldBlock` when nothing is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let slots = self.lens.len();
        let base = self.data.as_mut_ptr();
        let mut iovs: Vec<libc::iovec> = (0..slots)
            .map(|i| libc::iovec {
                // SAFETY: `i * MAX_DATAGRAM` is within `data`, which holds `slots` slots.
                iov_base: unsafe { base.add(i * MAX_DATAGRAM) }.cast(),
                iov_len: MAX_DATAGRAM,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..slots)
            .map(|i| {
                // SAFETY: an all-zero mmsghdr is valid; the pointers set here outlive the call.
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
                m.msg_hdr.msg_controllen = CMSG_SPACE;
                m
            })
            .collect();
        // SAFETY: every mmsghdr points at live buffers (slots, iovecs, addresses, control
        // buffers) for the duration of the call; `slots` is the length of `msgs`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for (i, m) in msgs.iter().take(self.count).enumerate() {
            self.lens[i] = (m.msg_len as usize).min(MAX_DATAGRAM);
            self.segments[i] = gro_segment(&m.msg_hdr, self.lens[i]);
        }
        Ok(self.count)
    }
}

/// Sends each datagram (or GSO run) with one `sendmmsg`, without waiting; returns how many
/// entries the kernel took (`WouldBlock` for none).
pub fn send_many(fd: RawFd, datagrams: &[Outgoing<'_>]) -> io::Result<usize> {
    if datagrams.is_empty() {
        return Ok(0);
    }
    let mut iovs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.data.as_ptr() as *mut libc::c_void,
            iov_len: d.data.len(),
        })
        .collect();
    let mut controls = vec![CmsgBuf::EMPTY; datagrams.len()];
    let mut msgs: Vec<libc::mmsghdr> = datagrams
        .iter()
        .zip(iovs.iter_mut())
        .zip(controls.iter_mut())
        .map(|((d, iov), control)| {
            // SAFETY: an all-zero mmsghdr is valid (no name, no control); the pointers set
            // here outlive the call.
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            if let Some(to) = d.to {
                m.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = to.len();
            }
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            if let Some(seg) = d.segment.filter(|&s| s < d.data.len()) {
                set_segment(&mut m.msg_hdr, control, seg);
            }
            m
        })
        .collect();
    // SAFETY: every mmsghdr points at live data, addresses and control buffers for the
    // duration of the call; the kernel only reads them and writes `msg_len`. The count is
    // `msgs.len()`.
    let n = unsafe {
        libc::sendmmsg(
            fd,
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::super::udp_offload::{enable_gro, send_segments};
    use super::*;

    fn sink() -> UdpSocket {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    fn recv(s: &UdpSocket) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let n = s.recv(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_batch_receives_what_is_queued_and_sends_it_on() {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let out = sink();
        let mut batch = DatagramBatch::new(4);
        let err = batch.recv(rx.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        let big = vec![7u8; 60000];
        for d in [&b"one"[..], b"two", &big, b"four", b"five"] {
            tx.send_to(d, rx.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            batch.recv(rx.as_raw_fd()).unwrap(),
            4,
            "one slot per datagram"
        );
        let from = tx.local_addr().unwrap();
        assert_eq!(batch.get(0), Some((&b"one"[..], from)));
        assert_eq!(batch.get(2).map(|(d, _)| d.len()), Some(60000));
        assert_eq!((batch.segment(2), batch.datagrams(2)), (None, 1));
        assert_eq!(batch.get(4), None);
        assert_eq!(batch.datagrams(4), 0);

        let to = SockAddr::from(out.local_addr().unwrap());
        let sent = send_many(
            rx.as_raw_fd(),
            &[batch.outgoing(3, &to), batch.outgoing(0, &to)],
        );
        assert_eq!(sent.unwrap(), 2);
        assert_eq!(recv(&out), b"four");
        assert_eq!(recv(&out), b"one");

        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert_eq!(batch.get(0).map(|(d, _)| d), Some(&b"five"[..]));
    }

    #[test]
    fn a_gro_run_is_sent_on_as_the_same_datagrams() {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert!(enable_gro(rx.as_raw_fd()), "UDP GRO (Linux 5.0+)");
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let out = sink();
        // Ten 100-byte datagrams and a short last one, sent with GSO in one call.
        let run: Vec<u8> = (0..1040u32).map(|i| (i / 100) as u8).collect();
        let to_rx = SockAddr::from(rx.local_addr().unwrap());
        send_segments(tx.as_raw_fd(), &run, 100, &to_rx).unwrap();
        std::thread::sleep(Duration::from_millis(50));

        let mut batch = DatagramBatch::new(4);
        let slots = batch.recv(rx.as_raw_fd()).unwrap();
        let received: usize = (0..slots).map(|i| batch.datagrams(i)).sum();
        assert_eq!(received, 11, "every datagram arrived");
        let to = SockAddr::from(out.local_addr().unwrap());
        let outgoing: Vec<Outgoing> = (0..slots).map(|i| batch.outgoing(i, &to)).collect();
        assert_eq!(send_many(rx.as_raw_fd(), &outgoing).unwrap(), slots);
        for k in 0..10u8 {
            assert_eq!(recv(&out), vec![k; 100], "datagram {k}");
        }
        assert_eq!(recv(&out), vec![10u8; 40]);
    }
}
