//! A TCP bulk transfer between two namespaces with a SHA-256 check of what arrived.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};

use crate::lab::Netns;

/// What a transfer measured.
#[derive(Debug, Clone)]
pub struct TransferReport {
    /// Bytes the receiver got.
    pub bytes: u64,
    /// Whether the receiver's SHA-256 equals the sender's.
    pub checksum_matches: bool,
    /// Wall time from connect to the receiver's end of stream.
    pub elapsed: Duration,
}

impl TransferReport {
    /// Throughput in Gbit/s.
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Deterministic pseudo-random bytes (xorshift64), so corruption cannot go unnoticed.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Sends `bytes` of pseudo-random data from `from` to a listener in `to` at `listen`
/// (an address inside `to`), and compares SHA-256 digests. Bounded by `timeout`.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    listen: SocketAddr,
    bytes: u64,
    timeout: Duration,
) -> Result<TransferReport> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = to.spawn_inside(move || -> Result<(u64, [u8; 32])> {
        let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
        let _ = ready_tx.send(());
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(anyhow!("accepting on {listen}: {e}")),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n as u64;
        }
        Ok((total, hash.finalize().into()))
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("receiver did not start"))?;
    let sender = from.spawn_inside(move || -> Result<([u8; 32], Instant)> {
        let start = Instant::now();
        let mut stream = TcpStream::connect_timeout(&listen, Duration::from_secs(5))
            .with_context(|| format!("connecting to {listen}"))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            fill(&mut buf[..n], &mut state);
            stream.write_all(&buf[..n])?;
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        Ok((hash.finalize().into(), start))
    })?;
    let (sent_hash, start) = sender.join().map_err(|_| anyhow!("sender panicked"))??;
    let (received, got_hash) = receiver
        .join()
        .map_err(|_| anyhow!("receiver panicked"))??;
    Ok(TransferReport {
        bytes: received,
        checksum_matches: sent_hash == got_hash && received == bytes,
        elapsed: start.elapsed(),
    })
}
