//! The HTTP/1.1 exchange in front of the relay protocol: the client asks for `GET /derp` with
//! `Upgrade: DERP`, the server answers `101 Switching Protocols`, and both sides switch to
//! frames. Because it is plain HTTP inside TLS, it passes HTTP proxies (CONNECT) and
//! TLS-terminating load balancers that allow upgrades. The same port answers `GET
//! /derp/probe` and `GET /generate_204` (latency probes) and `GET /` (a short text).

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// The relay protocol's upgrade token.
pub const UPGRADE_TOKEN: &str = "DERP";
/// The path of the relay endpoint.
pub const RELAY_PATH: &str = "/derp";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The relay protocol (a valid upgrade request).
    Relay,
    /// A latency probe: answer with an empty success.
    Probe,
    /// The index page.
    Index,
}

/// Decides what a request head asks for, or the HTTP status to refuse it with.
pub fn route(head: &str) -> Result<Route, u16> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(400);
    }
    if method != "GET" && method != "HEAD" {
        return Err(405);
    }
    let path = target.split('?').next().unwrap_or_default();
    match path {
        RELAY_PATH => {
            let upgrade = lines.any(|l| {
                l.split_once(':').is_some_and(|(name, value)| {
                    name.trim().eq_ignore_ascii_case("upgrade")
                        && value
                            .split(',')
                            .any(|v| v.trim().eq_ignore_ascii_case(UPGRADE_TOKEN))
                })
            });
            if upgrade && method == "GET" {
                Ok(Route::Relay)
            } else {
                Err(426)
            }
        }
        "/derp/probe" | "/generate_204" => Ok(Route::Probe),
        "/" => Ok(Route::Index),
        _ => Err(404),
    }
}

/// The client's upgrade request for `host`.
pub fn upgrade_request(host: &str) -> String {
    format!(
        "GET {RELAY_PATH} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tailgate/{}\r\n\
         Upgrade: {UPGRADE_TOKEN}\r\nConnection: Upgrade\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The server's answer to an upgrade request.
pub fn upgrade_response() -> &'static str {
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
}

/// A plain answer with `code` and a short text body (none for probes and HEAD).
pub fn plain_response(code: u16, body: &str) -> String {
    let reason = match code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Whether a response head is the `101` upgrade to the relay protocol.
pub fn is_upgrade_response(head: &str) -> bool {
    let status = head.split("\r\n").next().unwrap_or_default();
    let mut parts = status.split(' ');
    parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) && parts.next() == Some("101")
}

/// Reads an HTTP head (up to and including the blank line) from a buffered reader without
/// consuming anything after it. Fails on a head over [`MAX_HEAD`] bytes, on non-UTF-8 bytes
/// or when the stream ends first.
pub async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "HTTP head too large",
            ));
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            break;
        }
    }
    String::from_utf8(head)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "HTTP head not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        assert_eq!(route(&upgrade_request("relay.test")), Ok(Route::Relay));
        assert_eq!(
            route("GET /derp HTTP/1.1\r\nupgrade: websocket, derp\r\n\r\n"),
            Ok(Route::Relay)
        );
        assert_eq!(route("GET /derp HTTP/1.1\r\nHost: x\r\n\r\n"), Err(426));
        assert_eq!(route("GET /derp/probe HTTP/1.1\r\n\r\n"), Ok(Route::Probe));
        assert_eq!(
            route("HEAD /generate_204 HTTP/1.0\r\n\r\n"),
            Ok(Route::Probe)
        );
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Ok(Route::Index));
        assert_eq!(route("POST /derp HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(route("GET /x HTTP/1.1\r\n\r\n"), Err(404));
        assert_eq!(route("GET /derp\r\n\r\n"), Err(400));
        assert_eq!(route("\u{0}\u{1}"), Err(400));
        assert!(is_upgrade_response(upgrade_response()));
        assert!(!is_upgrade_response(&plain_response(404, "")));
    }

    #[tokio::test]
    async fn reads_exactly_the_head() {
        let data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n\r\nFRAMES".to_vec();
        let mut r = tokio::io::BufReader::new(&data[..]);
        let head = read_head(&mut r).await.unwrap();
        assert!(is_upgrade_response(&head));
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest)
            .await
            .unwrap();
        assert_eq!(rest, b"FRAMES");
        let long = vec![b'a'; MAX_HEAD + 10];
        assert!(read_head(&mut tokio::io::BufReader::new(&long[..]))
            .await
            .is_err());
    }

    proptest::proptest! {
        #[test]
        fn junk_heads_never_panic(s in ".{0,300}") {
            let _ = route(&s);
            let _ = is_upgrade_response(&s);
        }
    }
}
