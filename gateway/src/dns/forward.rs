//! The upstream client: sends a query to a list of nameservers and returns the first good
//! response.
//!
//! - Classic DNS goes over UDP from a fresh socket (random source port, random ID), is
//!   retransmitted every [`ForwardOptions::udp_retransmit`], and is retried over TCP when the
//!   answer comes back truncated.
//! - DNS over HTTPS is an RFC 8484 POST of `application/dns-message` with ID 0, over rustls
//!   (HTTP/2 or HTTP/1.1); `http://` URLs work for local servers.
//! - Several nameservers are raced: the first starts at once, each next one after
//!   [`ForwardOptions::stagger`] or as soon as an earlier one fails. NOERROR and NXDOMAIN
//!   responses win; SERVFAIL/REFUSED-style responses are kept and returned only if no
//!   nameserver does better. Everything is bounded by [`ForwardOptions::timeout`].

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use hickory_proto::op::{Header, Message, MessageType, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{sleep_until, timeout_at, Instant};

use super::stats::DnsStats;
use super::view::{DohUpstream, Upstream};
use super::DnsError;

/// Largest DNS message.
const MAX_MESSAGE: usize = 65535;
/// The media type of DNS messages over HTTP (RFC 8484).
const DNS_MESSAGE: &str = "application/dns-message";
/// DoH clients kept for connection reuse before the cache is reset.
const MAX_DOH_CLIENTS: usize = 64;

/// Timeouts and TLS trust for upstream queries.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// Total time for one query across all nameservers; the client gets SERVFAIL after it.
    pub timeout: Duration,
    /// Head start of each nameserver over the next one.
    pub stagger: Duration,
    /// UDP retransmission interval.
    pub udp_retransmit: Duration,
    /// PEM root certificates trusted for DoH servers in addition to the built-in web PKI
    /// roots (for a private DoH server).
    pub extra_root_certs_pem: Vec<Vec<u8>>,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            timeout: Duration::from_secs(4),
            stagger: Duration::from_millis(200),
            udp_retransmit: Duration::from_secs(1),
            extra_root_certs_pem: Vec::new(),
        }
    }
}

/// Why a query could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No nameserver applies to the name.
    #[error("no upstream nameserver for this name")]
    NoUpstream,
    /// No answer in time.
    #[error("{0}: timed out")]
    Timeout(String),
    /// A network error.
    #[error("{upstream}: {source}")]
    Io {
        /// The nameserver.
        upstream: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The nameserver answered with something that is not a response to the query.
    #[error("{upstream}: bad response: {reason}")]
    BadResponse {
        /// The nameserver.
        upstream: String,
        /// What was wrong.
        reason: String,
    },
    /// An HTTP-level failure of a DoH server.
    #[error("{upstream}: {reason}")]
    Http {
        /// The nameserver.
        upstream: String,
        /// What was wrong.
        reason: String,
    },
    /// The query could not be encoded.
    #[error("cannot encode query: {0}")]
    Encode(String),
}

/// Sends queries to upstream nameservers.
pub struct Forwarder {
    opts: ForwardOptions,
    roots: Vec<reqwest::Certificate>,
    doh_clients: Mutex<HashMap<DohUpstream, reqwest::Client>>,
    stats: Arc<DnsStats>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Whether `resp` answers `query`: a response with the same ID and question.
fn check_response(query: &Message, resp: &Message) -> Result<(), String> {
    if resp.metadata.message_type != MessageType::Response {
        return Err("not a response".into());
    }
    if resp.metadata.id != query.metadata.id {
        return Err(format!(
            "ID {} does not match query ID {}",
            resp.metadata.id, query.metadata.id
        ));
    }
    if resp.queries.is_empty() && resp.metadata.response_code != ResponseCode::NoError {
        // Some servers drop the question from error responses.
        return Ok(());
    }
    let same = resp.queries.len() == query.queries.len()
        && resp.queries.iter().zip(&query.queries).all(|(a, b)| {
            a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
                && a.name().eq_ignore_root(b.name())
        });
    if same {
        Ok(())
    } else {
        Err("question does not match the query".into())
    }
}

/// NOERROR and NXDOMAIN are answers; other codes mean "try another nameserver".
fn is_final(resp: &Message) -> bool {
    matches!(
        resp.metadata.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    )
}

type Attempt<'a> = Pin<Box<dyn Future<Output = Result<Message, ForwardError>> + Send + 'a>>;

impl Forwarder {
    /// A forwarder; fails if an extra root certificate is not valid PEM.
    pub fn new(opts: ForwardOptions, stats: Arc<DnsStats>) -> Result<Forwarder, DnsError> {
        let mut roots = Vec::new();
        for (index, pem) in opts.extra_root_certs_pem.iter().enumerate() {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                DnsError::BadRootCertificate {
                    index,
                    message: e.to_string(),
                }
            })?;
            if certs.is_empty() {
                return Err(DnsError::BadRootCertificate {
                    index,
                    message: "no PEM certificate found".into(),
                });
            }
            roots.extend(certs);
        }
        Ok(Forwarder {
            opts,
            roots,
            doh_clients: Mutex::new(HashMap::new()),
            stats,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &ForwardOptions {
        &self.opts
    }

    /// Sends `query` to `upstreams` (raced, staggered) and returns the first good response,
    /// else the best error response, else the last error.
    pub async fn forward(
        &self,
        upstreams: &[Upstream],
        query: &Message,
    ) -> Result<Message, ForwardError> {
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let deadline = Instant::now() + self.opts.timeout;
        let mut running: FuturesUnordered<Attempt<'_>> = FuturesUnordered::new();
        let mut next = 0;
        let mut next_start = Instant::now();
        let mut fallback: Option<Message> = None;
        let mut last_err: Option<ForwardError> = None;
        loop {
            if next < upstreams.len() && (running.is_empty() || Instant::now() >= next_start) {
                running.push(Box::pin(self.exchange(&upstreams[next], query, deadline)));
                next += 1;
                next_start = Instant::now() + self.opts.stagger;
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                done = running.next() => match done {
                    Some(Ok(resp)) if is_final(&resp) => return Ok(resp),
                    Some(Ok(resp)) => {
                        log::debug!(
                            "dns: upstream answered {}; trying others",
                            resp.metadata.response_code
                        );
                        self.stats.upstream_failure();
                        fallback = Some(resp);
                        next_start = Instant::now();
                    }
                    Some(Err(e)) => {
                        log::debug!("dns: upstream failed: {e}");
                        self.stats.upstream_failure();
                        last_err = Some(e);
                        next_start = Instant::now();
                    }
                    None => {}
                },
                _ = sleep_until(next_start), if next < upstreams.len() => {}
                _ = sleep_until(deadline) => {
                    last_err = Some(ForwardError::Timeout(
                        upstreams.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    ));
                    break;
                }
            }
        }
        match (fallback, last_err) {
            (Some(resp), _) => Ok(resp),
            (None, Some(e)) => Err(e),
            (None, None) => Err(ForwardError::NoUpstream),
        }
    }

    /// One exchange with one nameserver, bounded by `deadline`.
    pub async fn exchange(
        &self,
        upstream: &Upstream,
        query: &Message,
        deadline: Instant,
    ) -> Result<Message, ForwardError> {
        match upstream {
            Upstream::Dns(addr) => {
                let bytes = query
                    .to_vec()
                    .map_err(|e| ForwardError::Encode(e.to_string()))?;
                match self.udp(*addr, &bytes, query, deadline).await? {
                    Some(resp) => Ok(resp),
                    None => {
                        self.stats.upstream_tcp_retry();
                        tcp_exchange(*addr, &bytes, query, deadline).await
                    }
                }
            }
            Upstream::Doh(doh) => self.doh(doh, query, deadline).await,
        }
    }

    /// A UDP exchange; `None` when the answer is truncated (retry over TCP).
    async fn udp(
        &self,
        addr: SocketAddr,
        bytes: &[u8],
        query: &Message,
        deadline: Instant,
    ) -> Result<Option<Message>, ForwardError> {
        let name = format!("udp {addr}");
        let io = |source| ForwardError::Io {
            upstream: name.clone(),
            source,
        };
        let local: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(local).await.map_err(io)?;
        sock.connect(addr).await.map_err(io)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut resend_at = Instant::now();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ForwardError::Timeout(name));
            }
            if now >= resend_at {
                sock.send(bytes).await.map_err(io)?;
                resend_at = now + self.opts.udp_retransmit;
            }
            let n = match timeout_at(resend_at.min(deadline), sock.recv(&mut buf)).await {
                Err(_) => continue,
                Ok(Err(e)) => return Err(io(e)),
                Ok(Ok(n)) => n,
            };
            let mut decoder = BinDecoder::new(&buf[..n]);
            let Ok(header) = Header::read(&mut decoder) else {
                continue;
            };
            if header.metadata.id != query.metadata.id
                || header.metadata.message_type != MessageType::Response
            {
                continue; // late answer to an earlier send, or noise
            }
            if header.metadata.truncation {
                return Ok(None);
            }
            let Ok(resp) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if check_response(query, &resp).is_ok() {
                return Ok(Some(resp));
            }
        }
    }

    fn doh_client(&self, up: &DohUpstream) -> Result<reqwest::Client, ForwardError> {
        let mut clients = self
            .doh_clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(c) = clients.get(up) {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_DOH_CLIENTS {
            clients.clear();
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .connect_timeout(self.opts.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("tailgate/", env!("CARGO_PKG_VERSION")));
        for cert in &self.roots {
            builder = builder.add_root_certificate(cert.clone());
        }
        if let (Some(host), false) = (up.url().domain(), up.bootstrap().is_empty()) {
            let port = up.url().port_or_known_default().unwrap_or(443);
            let addrs: Vec<SocketAddr> = up
                .bootstrap()
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
            builder = builder.resolve_to_addrs(host, &addrs);
        }
        let client = builder.build().map_err(|e| ForwardError::Http {
            upstream: up.to_string(),
            reason: format!("cannot build HTTP client: {e}"),
        })?;
        clients.insert(up.clone(), client.clone());
        Ok(client)
    }

    async fn doh(
        &self,
        up: &DohUpstream,
        query: &Message,
        deadline: Instant,
    ) -> Result<Message, ForwardError> {
        let client = self.doh_client(up)?;
        let name = up.url().to_string();
        let http = |reason: String| ForwardError::Http {
            upstream: name.clone(),
            reason,
        };
        // RFC 8484 §4.1: the ID should be 0 so that responses are cacheable.
        let mut q = query.clone();
        q.metadata.id = 0;
        let body = q
            .to_vec()
            .map_err(|e| ForwardError::Encode(e.to_string()))?;
        let exchange = async {
            let mut resp = client
                .post(up.url().clone())
                .header(reqwest::header::CONTENT_TYPE, DNS_MESSAGE)
                .header(reqwest::header::ACCEPT, DNS_MESSAGE)
                .body(body)
                .send()
                .await
                .map_err(|e| http(format!("request failed: {e}")))?;
            if !resp.status().is_success() {
                return Err(http(format!("HTTP status {}", resp.status())));
            }
            let ctype = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !ctype.starts_with(DNS_MESSAGE) {
                return Err(http(format!("content type {ctype:?}, want {DNS_MESSAGE}")));
            }
            if resp
                .content_length()
                .is_some_and(|n| n > MAX_MESSAGE as u64)
            {
                return Err(http("response larger than a DNS message".into()));
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| http(format!("reading body: {e}")))?
            {
                if bytes.len() + chunk.len() > MAX_MESSAGE {
                    return Err(http("response larger than a DNS message".into()));
                }
                bytes.extend_from_slice(&chunk);
            }
            let resp = Message::from_vec(&bytes).map_err(|e| ForwardError::BadResponse {
                upstream: name.clone(),
                reason: e.to_string(),
            })?;
            check_response(&q, &resp).map_err(|reason| ForwardError::BadResponse {
                upstream: name.clone(),
                reason,
            })?;
            Ok(resp)
        };
        let mut resp = timeout_at(deadline, exchange)
            .await
            .map_err(|_| ForwardError::Timeout(name.clone()))??;
        resp.metadata.id = query.metadata.id;
        Ok(resp)
    }
}

/// A TCP exchange (RFC 1035 §4.2.2 framing), bounded by `deadline`.
async fn tcp_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    query: &Message,
    deadline: Instant,
) -> Result<Message, ForwardError> {
    let name = format!("tcp {addr}");
    let io = |source| ForwardError::Io {
        upstream: name.clone(),
        source,
    };
    let len =
        u16::try_from(bytes.len()).map_err(|_| ForwardError::Encode("query too long".into()))?;
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
        stream.write_all(&out).await.map_err(io)?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.map_err(io)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.map_err(io)?;
        let bad = |reason: String| ForwardError::BadResponse {
            upstream: name.clone(),
            reason,
        };
        let resp = Message::from_vec(&buf).map_err(|e| bad(e.to_string()))?;
        check_response(query, &resp).map_err(bad)?;
        Ok(resp)
    };
    timeout_at(deadline, exchange)
        .await
        .map_err(|_| ForwardError::Timeout(name.clone()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query() -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("www.example.org.").unwrap(),
            RecordType::A,
        ));
        m
    }

    #[test]
    fn response_matching() {
        let q = query();
        let mut r = Message::response(q.metadata.id, OpCode::Query);
        r.add_query(Query::query(
            Name::from_ascii("WWW.Example.ORG.").unwrap(),
            RecordType::A,
        ));
        assert!(check_response(&q, &r).is_ok());
        let mut wrong_id = r.clone();
        wrong_id.metadata.id = q.metadata.id.wrapping_add(1);
        assert!(check_response(&q, &wrong_id).is_err());
        let mut wrong_q = Message::response(q.metadata.id, OpCode::Query);
        wrong_q.add_query(Query::query(
            Name::from_ascii("www.example.org.").unwrap(),
            RecordType::AAAA,
        ));
        assert!(check_response(&q, &wrong_q).is_err());
        let mut not_resp = r.clone();
        not_resp.metadata.message_type = MessageType::Query;
        assert!(check_response(&q, &not_resp).is_err());
        // An error response without the question is accepted (as a failure code).
        let err = Message::error_msg(q.metadata.id, OpCode::Query, ResponseCode::Refused);
        assert!(check_response(&q, &err).is_ok());
        assert!(!is_final(&err));
        let empty_ok = Message::response(q.metadata.id, OpCode::Query);
        assert!(check_response(&q, &empty_ok).is_err());
    }

    #[test]
    fn bad_root_certificate_is_an_error() {
        let opts = ForwardOptions {
            extra_root_certs_pem: vec![b"not a certificate".to_vec()],
            ..ForwardOptions::default()
        };
        let err = Forwarder::new(opts, Arc::new(DnsStats::new())).unwrap_err();
        assert!(err.to_string().contains("root certificate 0"), "{err}");
    }

    #[tokio::test]
    async fn no_upstreams_fails_at_once() {
        let f = Forwarder::new(ForwardOptions::default(), Arc::new(DnsStats::new())).unwrap();
        assert!(matches!(
            f.forward(&[], &query()).await,
            Err(ForwardError::NoUpstream)
        ));
    }

    /// A loopback UDP server that answers the first query with SERVFAIL, from which the
    /// forwarder moves to the second upstream, which answers NOERROR.
    #[tokio::test]
    async fn races_past_a_failing_upstream() {
        async fn serve(code: ResponseCode) -> (SocketAddr, tokio::task::JoinHandle<()>) {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = sock.local_addr().unwrap();
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                    let Ok(q) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let mut r = Message::response(q.metadata.id, OpCode::Query);
                    r.metadata.response_code = code;
                    r.add_queries(q.queries.clone());
                    let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
                }
            });
            (addr, task)
        }
        let (bad, t1) = serve(ResponseCode::ServFail).await;
        let (good, t2) = serve(ResponseCode::NoError).await;
        let stats = Arc::new(DnsStats::new());
        let opts = ForwardOptions {
            stagger: Duration::from_secs(3),
            ..ForwardOptions::default()
        };
        let f = Forwarder::new(opts, stats.clone()).unwrap();
        let start = std::time::Instant::now();
        let resp = f
            .forward(&[Upstream::Dns(bad), Upstream::Dns(good)], &query())
            .await
            .unwrap();
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        // The failure started the second upstream without waiting for the stagger.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(stats.snapshot().upstream_failures, 1);
        // With only the failing upstream, its SERVFAIL is returned.
        let resp = f.forward(&[Upstream::Dns(bad)], &query()).await.unwrap();
        assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
        // Behind a silent upstream, a failure starts the next one without another stagger:
        // silent at 0, bad at 300 ms (fails), good right after (not at 600 ms).
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let opts = ForwardOptions {
            stagger: Duration::from_millis(300),
            ..ForwardOptions::default()
        };
        let f = Forwarder::new(opts, Arc::new(DnsStats::new())).unwrap();
        let start = std::time::Instant::now();
        let ups = [
            Upstream::Dns(silent.local_addr().unwrap()),
            Upstream::Dns(bad),
            Upstream::Dns(good),
        ];
        let resp = f.forward(&ups, &query()).await.unwrap();
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(550),
            "{took:?}"
        );
        t1.abort();
        t2.abort();
    }

    /// DoH over TLS to a server whose certificate comes from a private CA, reached through a
    /// bootstrap address: refused without the CA, answered with it.
    #[tokio::test]
    async fn doh_over_tls_with_a_private_root() {
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record};
        use std::net::Ipv4Addr;
        use tokio_rustls::rustls;

        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["dns.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                    let mut want = None;
                    loop {
                        if let Some((start, len)) = want {
                            if buf.len() >= start + len {
                                break;
                            }
                        }
                        match tls.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        if want.is_none() {
                            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                                let len = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                                    .unwrap_or(0);
                                want = Some((p + 4, len));
                            }
                        }
                    }
                    let (start, len) = want.unwrap_or_default();
                    let Ok(q) = Message::from_vec(&buf[start..start + len]) else {
                        return;
                    };
                    let mut r = Message::response(q.metadata.id, OpCode::Query);
                    r.add_queries(q.queries.clone());
                    r.add_answer(Record::from_rdata(
                        q.queries[0].name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                    ));
                    let body = r.to_vec().unwrap();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/dns-message\r\n\
                         content-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(&body).await;
                    let _ = tls.flush().await;
                });
            }
        });
        let up: Upstream = format!("https://dns.test:{port}/dns-query#127.0.0.1")
            .parse()
            .unwrap();
        let opts = ForwardOptions {
            timeout: Duration::from_secs(3),
            ..ForwardOptions::default()
        };
        let untrusted = Forwarder::new(opts.clone(), Arc::new(DnsStats::new())).unwrap();
        let err = untrusted
            .forward(std::slice::from_ref(&up), &query())
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Http { .. }), "{err}");
        let trusted = Forwarder::new(
            ForwardOptions {
                extra_root_certs_pem: vec![ca.pem().into_bytes()],
                ..opts
            },
            Arc::new(DnsStats::new()),
        )
        .unwrap();
        let q = query();
        let resp = trusted.forward(&[up], &q).await.unwrap();
        assert_eq!(
            resp.metadata.id, q.metadata.id,
            "ID restored after the DoH ID 0"
        );
        assert!(
            matches!(&resp.answers[..], [r] if r.data == RData::A(A(Ipv4Addr::new(192, 0, 2, 7))))
        );
        server.abort();
    }

    #[tokio::test]
    async fn unreachable_upstream_times_out_or_errors() {
        // A bound but silent socket: the forwarder retransmits and then gives up.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let opts = ForwardOptions {
            timeout: Duration::from_millis(300),
            udp_retransmit: Duration::from_millis(100),
            ..ForwardOptions::default()
        };
        let f = Forwarder::new(opts, Arc::new(DnsStats::new())).unwrap();
        let start = std::time::Instant::now();
        let err = f
            .forward(&[Upstream::Dns(silent.local_addr().unwrap())], &query())
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Timeout(_)), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
        // Three sends in 300 ms: at 0, 100 and 200 ms.
        silent
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 512];
        let mut got = 0;
        while silent.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        assert!((2..=4).contains(&got), "{got} retransmissions");
    }
}
