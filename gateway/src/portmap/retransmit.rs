//! Request/answer over UDP with retransmission: send, wait 250 ms, 500 ms, 1 s, … (RFC 6886
//! 3.1) for a datagram that answers, resend, until a deadline. Shared by NAT-PMP, PCP and the
//! SSDP search of UPnP.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The first wait for an answer; it doubles after every resend.
const FIRST_INTERVAL: Duration = Duration::from_millis(250);

/// What a received datagram is to [`retransmit`].
pub(crate) enum Reply<T> {
    /// Not an answer to this request: keep waiting.
    Ignore,
    /// An unusable answer, reported if nothing better comes: keep waiting.
    Note(anyhow::Error),
    /// The answer: stop.
    Done(T),
}

/// Nothing answered before the deadline.
#[derive(Debug)]
pub(crate) struct NoAnswer {
    /// The last send or receive error, or unusable answer, if any.
    pub last_err: Option<anyhow::Error>,
}

impl NoAnswer {
    /// ` (last error)`, or nothing: to append to a "no answer" message.
    pub fn why(&self) -> String {
        self.last_err
            .as_ref()
            .map(|e| format!(" ({e:#})"))
            .unwrap_or_default()
    }
}

/// Calls `send` (which returns its error, if any), then hands every datagram received on
/// `sock` into `buf` to `accept`, resending at 250 ms, 500 ms, 1 s, … until `accept` returns
/// [`Reply::Done`] or `timeout` has passed. Send and receive errors are retried too (a
/// receive error, such as ICMP port unreachable from an earlier send, waits out the
/// interval); `recv_context` names receive errors.
pub(crate) async fn retransmit<T, F>(
    sock: &UdpSocket,
    timeout: Duration,
    buf: &mut [u8],
    recv_context: &'static str,
    mut send: impl FnMut() -> F,
    mut accept: impl FnMut(&[u8], SocketAddr) -> Reply<T>,
) -> Result<T, NoAnswer>
where
    F: Future<Output = Option<anyhow::Error>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = FIRST_INTERVAL;
    let mut last_err = None;
    loop {
        if let Some(e) = send().await {
            last_err = Some(e);
        }
        let resend_at = (Instant::now() + interval).min(deadline);
        while let Ok(r) = tokio::time::timeout_at(resend_at, sock.recv_from(buf)).await {
            let (n, from) = match r {
                Ok(r) => r,
                Err(e) => {
                    last_err = Some(anyhow!(e).context(recv_context));
                    // Connection refused comes back at once; wait out the interval instead of
                    // spinning.
                    tokio::time::sleep_until(resend_at).await;
                    break;
                }
            };
            match accept(&buf[..n], from) {
                Reply::Ignore => {}
                Reply::Note(e) => last_err = Some(e),
                Reply::Done(t) => return Ok(t),
            }
        }
        if Instant::now() >= deadline {
            return Err(NoAnswer { last_err });
        }
        interval *= 2;
    }
}

/// Sends `request` on a connected socket and waits for a datagram that `accept` takes
/// (`Some`), resending as [`retransmit`] does until `timeout` has passed.
pub(crate) async fn request_response<T>(
    sock: &UdpSocket,
    request: &[u8],
    timeout: Duration,
    mut accept: impl FnMut(&[u8]) -> Option<Result<T>>,
) -> Result<T> {
    let mut buf = [0u8; 1100];
    let send = || async move {
        sock.send(request)
            .await
            .err()
            .map(|e| anyhow!(e).context("send"))
    };
    let answer = retransmit(sock, timeout, &mut buf, "receive", send, |b, _| {
        accept(b).map_or(Reply::Ignore, Reply::Done)
    })
    .await;
    match answer {
        Ok(r) => r,
        Err(no) => Err(anyhow!("no answer within {timeout:?}{}", no.why())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn resends_with_doubling_waits_until_the_deadline() {
        let (client, server) = pair().await;
        let r = request_response(&client, b"ping", Duration::from_secs(1), |_| {
            None::<Result<()>>
        })
        .await;
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with("no answer within 1s"), "{e}");
        // Sent at 0, 250 and 750 ms.
        let mut buf = [0u8; 16];
        let mut sent = 0;
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(50), server.recv(&mut buf)).await
        {
            assert_eq!(&buf[..n], b"ping");
            sent += 1;
        }
        assert_eq!(sent, 3);
    }

    #[tokio::test]
    async fn skips_what_accept_ignores_and_stops_at_the_answer() {
        let (client, server) = pair().await;
        let answer = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = server.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"ping");
            server.send(b"junk").await.unwrap();
            server.send(b"pong").await.unwrap();
        });
        let r = request_response(&client, b"ping", Duration::from_secs(5), |b| {
            (b == b"pong").then(|| Ok(b.len()))
        })
        .await;
        assert_eq!(r.unwrap(), 4);
        answer.await.unwrap();
    }

    #[tokio::test]
    async fn notes_are_reported_when_nothing_answers() {
        let (client, server) = pair().await;
        server.send(b"bad").await.unwrap();
        let mut buf = [0u8; 16];
        let r = retransmit(
            &client,
            Duration::from_millis(100),
            &mut buf,
            "receive",
            || async { None },
            |b, _| Reply::<()>::Note(anyhow!("unusable {} bytes", b.len())),
        )
        .await;
        assert_eq!(r.unwrap_err().why(), " (unusable 3 bytes)");
    }
}
