//! Batched datagram I/O: many datagrams per `recvmmsg`/`sendmmsg` system call, for sockets
//! that forward datagrams from many senders (the peer relay's sessions), where UDP GRO does
//! not help.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

use super::udp_offload::socket_addr;

/// Received datagrams: fixed slots, each big enough for the largest UDP datagram. Slots are
/// zero-allocated, so the memory a slot holds is only what datagrams have written into it.
pub struct DatagramBatch {
    data: Vec<u8>,
    slot_len: usize,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    count: usize,
}

/// Largest UDP payload.
pub const MAX_DATAGRAM: usize = 65535;

impl DatagramBatch {
    /// Room for `slots` datagrams of up to [`MAX_DATAGRAM`] bytes.
    pub fn new(slots: usize) -> DatagramBatch {
        let slots = slots.max(1);
        DatagramBatch {
            data: vec![0; slots * MAX_DATAGRAM],
            slot_len: MAX_DATAGRAM,
            lens: vec![0; slots],
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) value.
            addrs: vec![unsafe { zeroed() }; slots],
            count: 0,
        }
    }

    /// Datagrams held since the last receive.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` and its sender (IPv4-mapped addresses as IPv4), or `None` when `i` is out
    /// of range or the sender is not an IP address.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let from = super::udp::canonical(socket_addr(&self.addrs[i])?);
        Some((self.slot(i), from))
    }

    /// The bytes of datagram `i` (empty when out of range).
    pub fn slot(&self, i: usize) -> &[u8] {
        if i >= self.count {
            return &[];
        }
        let start = i * self.slot_len;
        &self.data[start..start + self.lens[i]]
    }

    /// Reads what is queued on `fd` without waiting (`recvmmsg` with `MSG_DONTWAIT`); returns
    /// the number of datagrams, or `WouldBlock` when nothing is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let slots = self.lens.len();
        let base = self.data.as_mut_ptr();
        let mut iovs: Vec<libc::iovec> = (0..slots)
            .map(|i| libc::iovec {
                // SAFETY: `i * slot_len` is within `data`, which holds `slots` slots.
                iov_base: unsafe { base.add(i * self.slot_len) }.cast(),
                iov_len: self.slot_len,
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
                m
            })
            .collect();
        // SAFETY: every mmsghdr points at live buffers (slots, iovecs, addresses) for the
        // duration of the call; `slots` is the length of `msgs`.
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
            self.lens[i] = (m.msg_len as usize).min(self.slot_len);
        }
        Ok(self.count)
    }

    /// Sends datagrams of this batch, slot index and destination each, with one `sendmmsg`
    /// and without waiting; returns how many the kernel took (`WouldBlock` for none).
    pub fn send(&self, fd: RawFd, targets: &[(usize, SockAddr)]) -> io::Result<usize> {
        let datagrams: Vec<(&[u8], Option<&SockAddr>)> = targets
            .iter()
            .map(|(i, to)| (self.slot(*i), Some(to)))
            .collect();
        send_many(fd, &datagrams)
    }
}

/// Sends each datagram to its address (or, for `None`, to the peer of the connected socket
/// `fd`) with one `sendmmsg`, without waiting; returns how many the kernel took
/// (`WouldBlock` for none).
pub fn send_many(fd: RawFd, datagrams: &[(&[u8], Option<&SockAddr>)]) -> io::Result<usize> {
    if datagrams.is_empty() {
        return Ok(0);
    }
    let mut iovs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|(d, _)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = datagrams
        .iter()
        .zip(iovs.iter_mut())
        .map(|((_, to), iov)| {
            // SAFETY: an all-zero mmsghdr is valid (no name, no control); the pointers set
            // here outlive the call.
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            if let Some(to) = to {
                m.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = to.len();
            }
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: every mmsghdr points at live data and addresses for the duration of the call;
    // the kernel only reads the payloads and writes `msg_len`. The count is `msgs.len()`.
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

    use super::*;

    #[test]
    fn a_batch_receives_what_is_queued_and_sends_it_on() {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut batch = DatagramBatch::new(4);
        let err = batch.recv(rx.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        let big = vec![7u8; 60000];
        for d in [&b"one"[..], b"two", &big, b"four", b"five"] {
            tx.send_to(d, rx.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            batch.recv(rx.as_raw_fd()).unwrap(),
            4,
            "one slot per datagram"
        );
        let from = tx.local_addr().unwrap();
        assert_eq!(batch.get(0), Some((&b"one"[..], from)));
        assert_eq!(batch.get(2).map(|(d, _)| d.len()), Some(60000));
        assert_eq!(batch.get(4), None);

        let to = SockAddr::from(sink.local_addr().unwrap());
        assert_eq!(
            batch
                .send(rx.as_raw_fd(), &[(3, to.clone()), (0, to)])
                .unwrap(),
            2
        );
        let mut buf = [0u8; 16];
        let n = sink.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"four");
        let n = sink.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");

        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert_eq!(batch.get(0).map(|(d, _)| d), Some(&b"five"[..]));
    }
}
