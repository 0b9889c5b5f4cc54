//! The node ↔ server transport: `Noise_IK_25519_ChaChaPoly_BLAKE2s` over TCP, length-prefixed
//! frames, and JSON messages chunked across frames.
//!
//! # Why Noise IK and not TLS
//! * **Mutual authentication in one round trip.** The node knows the server's static public key
//!   up front (pinned in the login URL `tg://host:port#<key>`, or fetched once and pinned on
//!   first use); the node's static key is its *machine key*, which the IK handshake
//!   authenticates. The server therefore knows which machine is talking without client
//!   certificates, passwords or bearer tokens that could leak, and a reconnecting machine needs
//!   no secret other than its key.
//! * **No PKI.** No certificate generation, expiry, clocks or X.509 parsing; a pin is 32 bytes.
//! * **Same primitives as the data plane** (X25519, ChaCha20-Poly1305, BLAKE2s), already audited
//!   and already in the tree; [`snow`] implements the framework. Ephemeral keys give forward
//!   secrecy. Tailscale's own control protocol ("ts2021") made the same choice.
//!
//! A replayed first handshake message gets an answer, but whoever replays it cannot derive the
//! transport keys, so the session it opens is useless and times out.
//!
//! # Wire format
//! A connection starts with a 5-byte prelude: the magic `TGC1` and a mode byte.
//! * Mode `K` (key request, plaintext): the server answers one JSON line
//!   `{"server_key":"<base64>","version":1}` and closes. Used for trust-on-first-use.
//! * Mode `N` (Noise): then frames, each a big-endian `u16` length (1…65535) and that many bytes.
//!   The first two frames are the handshake (payloads [`ClientHello`] / [`ServerHello`] as
//!   JSON, prologue [`PROLOGUE`]); every later frame is one Noise transport message (≤ 65535
//!   bytes, 16 of them the tag). A *message* is a `u32` big-endian length (≤
//!   [`MAX_MESSAGE_LEN`]) followed by its bytes, split over as many frames as needed; a frame
//!   never carries bytes of two messages.
//!
//! Every decoder here is bounded, pure where possible ([`decode_frame`],
//! [`MessageAssembler`]) and returns errors instead of panicking, so the server survives
//! arbitrary input; the property tests feed them random bytes.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use snow::{HandshakeState, StatelessTransportState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::proto::{ClientHello, ServerHello, PROTOCOL_VERSION};
use crate::wg::Key;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash; a peer speaking another protocol fails the handshake.
pub const PROLOGUE: &[u8] = b"tailgate control protocol v1";
/// The first four bytes of every connection.
pub const MAGIC: [u8; 4] = *b"TGC1";
/// Prelude mode: Noise session follows.
pub const MODE_NOISE: u8 = b'N';
/// Prelude mode: plaintext key request.
pub const MODE_KEY: u8 = b'K';
/// Largest frame body (the Noise message limit).
pub const MAX_FRAME_LEN: usize = 65535;
/// Noise's AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Largest plaintext in one transport frame.
pub const MAX_CHUNK_LEN: usize = MAX_FRAME_LEN - TAG_LEN;
/// Largest message (a netmap of a few thousand nodes fits comfortably).
pub const MAX_MESSAGE_LEN: usize = 8 << 20;
/// How long the prelude and handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest key-request answer line.
const MAX_KEY_LINE: usize = 1024;

/// Why the transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection between messages.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A frame or message violated the framing rules.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The connection does not start with the tailgate prelude.
    #[error("not a tailgate control connection (bad prelude {0:02x?})")]
    BadPrelude([u8; 5]),
    /// The Noise handshake failed: wrong server key, wrong protocol, or garbage.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A transport message did not decrypt (tampering or desynchronisation).
    #[error("decryption failed")]
    Decrypt,
    /// The server refused the protocol version.
    #[error("server refused the connection: {0}")]
    Refused(String),
    /// A message was not valid JSON of the expected type.
    #[error("{0}")]
    Proto(#[from] super::proto::ProtoError),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// A violation of the framing rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame of length zero.
    #[error("empty frame")]
    Empty,
    /// A transport frame shorter than the AEAD tag.
    #[error("frame of {0} bytes is shorter than the 16-byte tag")]
    ShorterThanTag(usize),
    /// A message header announcing more than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    MessageTooLarge(usize),
    /// A message of length zero.
    #[error("empty message")]
    EmptyMessage,
    /// The first chunk of a message is shorter than its 4-byte header.
    #[error("message header cut short")]
    ShortHeader,
    /// A chunk carries more bytes than its message announced.
    #[error("chunk overruns its message by {0} bytes")]
    Overrun(usize),
}

/// Finds the first complete frame in `buf`: `Ok(Some((body, consumed)))`, `Ok(None)` if more
/// bytes are needed. Bodies are 1…65535 bytes by construction.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let [a, b, rest @ ..] = buf else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([*a, *b]));
    if len == 0 {
        return Err(FrameError::Empty);
    }
    match rest.get(..len) {
        Some(body) => Ok(Some((body, 2 + len))),
        None => Ok(None),
    }
}

/// Appends one frame (`u16` length + body) to `out`. `body` must be 1…65535 bytes.
fn encode_frame(body: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!body.is_empty() && body.len() <= MAX_FRAME_LEN);
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
}

/// Reassembles messages from decrypted chunks (see the module docs), bounded by a size limit.
#[derive(Debug)]
pub struct MessageAssembler {
    max: usize,
    expected: Option<usize>,
    buf: Vec<u8>,
}

impl Default for MessageAssembler {
    fn default() -> Self {
        MessageAssembler::new(MAX_MESSAGE_LEN)
    }
}

impl MessageAssembler {
    /// An assembler accepting messages up to `max` bytes.
    pub fn new(max: usize) -> MessageAssembler {
        MessageAssembler {
            max,
            expected: None,
            buf: Vec::new(),
        }
    }

    /// Adds one chunk; returns a message when this chunk completes it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let (total, data) = match self.expected {
            Some(total) => (total, chunk),
            None => {
                let [a, b, c, d, data @ ..] = chunk else {
                    return Err(FrameError::ShortHeader);
                };
                let total = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
                if total == 0 {
                    return Err(FrameError::EmptyMessage);
                }
                if total > self.max {
                    return Err(FrameError::MessageTooLarge(total));
                }
                self.expected = Some(total);
                (total, data)
            }
        };
        let have = self.buf.len() + data.len();
        if have > total {
            return Err(FrameError::Overrun(have - total));
        }
        self.buf.extend_from_slice(data);
        if have == total {
            self.expected = None;
            return Ok(Some(std::mem::take(&mut self.buf)));
        }
        Ok(None)
    }
}

/// Splits a message into plaintext chunks (header on the first), each ≤ [`MAX_CHUNK_LEN`].
pub fn chunk_message(msg: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
    if msg.is_empty() {
        return Err(FrameError::EmptyMessage);
    }
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(FrameError::MessageTooLarge(msg.len()));
    }
    let mut chunks = Vec::with_capacity(msg.len() / MAX_CHUNK_LEN + 1);
    let first_len = msg.len().min(MAX_CHUNK_LEN - 4);
    let mut first = Vec::with_capacity(4 + first_len);
    first.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    first.extend_from_slice(&msg[..first_len]);
    chunks.push(first);
    for c in msg[first_len..].chunks(MAX_CHUNK_LEN) {
        chunks.push(c.to_vec());
    }
    Ok(chunks)
}

/// Reads frames from a byte stream through [`decode_frame`].
struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(io: R) -> Self {
        FrameReader {
            io,
            buf: Vec::with_capacity(4096),
            start: 0,
        }
    }

    /// The next frame body.
    async fn next(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            if let Some((body, used)) = decode_frame(&self.buf[self.start..])? {
                let body = body.to_vec();
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(body);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let mut tmp = [0u8; 16 * 1024];
            let n = self.io.read(&mut tmp).await?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    TransportError::Closed
                } else {
                    TransportError::Truncated
                });
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

/// The receiving half of an established session.
pub struct SecureReader<R> {
    frames: FrameReader<R>,
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    assembler: MessageAssembler,
    plain: Vec<u8>,
}

impl<R: AsyncRead + Unpin> SecureReader<R> {
    /// Lowers (or raises) the largest message accepted from the peer (default
    /// [`MAX_MESSAGE_LEN`]). The server accepts far less from nodes than nodes accept from it.
    pub fn set_max_message(&mut self, max: usize) {
        self.assembler.max = max;
    }

    /// The next complete message.
    ///
    /// Cancel-safe: the only await is the socket read, so dropping the future (e.g. in
    /// `tokio::select!`) never loses part of a frame or message.
    pub async fn recv_raw(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            let frame = self.frames.next().await?;
            if frame.len() < TAG_LEN {
                return Err(FrameError::ShorterThanTag(frame.len()).into());
            }
            let n = self
                .noise
                .read_message(self.nonce, &frame, &mut self.plain)
                .map_err(|_| TransportError::Decrypt)?;
            self.nonce += 1;
            if let Some(msg) = self.assembler.push(&self.plain[..n])? {
                return Ok(msg);
            }
        }
    }

    /// The next message, parsed with `parse` (e.g. [`super::proto::decode_client_message`]).
    pub async fn recv<T>(
        &mut self,
        parse: fn(&[u8]) -> Result<T, super::proto::ProtoError>,
    ) -> Result<T, TransportError> {
        let raw = self.recv_raw().await?;
        Ok(parse(&raw)?)
    }
}

/// The sending half of an established session.
pub struct SecureWriter<W> {
    io: W,
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    cipher: Vec<u8>,
    out: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> SecureWriter<W> {
    /// Encrypts and sends one message.
    pub async fn send_raw(&mut self, msg: &[u8]) -> Result<(), TransportError> {
        self.out.clear();
        for chunk in chunk_message(msg)? {
            let n = self
                .noise
                .write_message(self.nonce, &chunk, &mut self.cipher)
                .map_err(|e| TransportError::Handshake(format!("encrypt: {e}")))?;
            self.nonce += 1;
            encode_frame(&self.cipher[..n], &mut self.out);
        }
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Serializes `msg` as JSON and sends it.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), TransportError> {
        let bytes = serde_json::to_vec(msg).map_err(|e| {
            TransportError::Proto(super::proto::ProtoError::Malformed(e.to_string()))
        })?;
        self.send_raw(&bytes).await
    }

    /// Shuts the write side down (the peer sees a clean close).
    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

/// An established, authenticated session.
pub struct Connection<S> {
    /// Receiving half.
    pub reader: SecureReader<ReadHalf<S>>,
    /// Sending half.
    pub writer: SecureWriter<WriteHalf<S>>,
    /// The peer's authenticated static key (the machine key, on the server side).
    pub remote_static: Key,
}

fn builder() -> Result<snow::Builder<'static>, TransportError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| TransportError::Handshake(format!("noise params: {e}")))?;
    snow::Builder::new(params)
        .prologue(PROLOGUE)
        .map_err(|e| TransportError::Handshake(e.to_string()))
}

fn established<S: AsyncRead + AsyncWrite>(
    hs: HandshakeState,
    frames: FrameReader<ReadHalf<S>>,
    write: WriteHalf<S>,
) -> Result<Connection<S>, TransportError> {
    let remote_static = hs
        .get_remote_static()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .map(Key::from_bytes)
        .ok_or_else(|| TransportError::Handshake("no remote static key".into()))?;
    let noise = Arc::new(
        hs.into_stateless_transport_mode()
            .map_err(|e| TransportError::Handshake(e.to_string()))?,
    );
    Ok(Connection {
        reader: SecureReader {
            frames,
            noise: noise.clone(),
            nonce: 0,
            assembler: MessageAssembler::default(),
            plain: vec![0u8; MAX_FRAME_LEN],
        },
        writer: SecureWriter {
            io: write,
            noise,
            nonce: 0,
            cipher: vec![0u8; MAX_FRAME_LEN],
            out: Vec::new(),
        },
        remote_static,
    })
}

/// Opens a session as a node: prelude, Noise IK handshake with `server_public`, hello
/// exchange. A wrong pinned key shows up as [`TransportError::Handshake`].
pub async fn client_handshake<S>(
    io: S,
    machine_private: &Key,
    server_public: &Key,
) -> Result<(Connection<S>, ServerHello), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        client_handshake_inner(io, machine_private, server_public),
    )
    .await
    .map_err(|_| TransportError::Timeout("handshake"))?
}

async fn client_handshake_inner<S>(
    io: S,
    machine_private: &Key,
    server_public: &Key,
) -> Result<(Connection<S>, ServerHello), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(io);
    let mut hs = builder()?
        .local_private_key(machine_private.as_bytes())
        .and_then(|b| b.remote_public_key(server_public.as_bytes()))
        .and_then(|b| b.build_initiator())
        .map_err(|e| TransportError::Handshake(e.to_string()))?;
    let hello = serde_json::to_vec(&ClientHello {
        version: PROTOCOL_VERSION,
    })
    .map_err(|e| TransportError::Handshake(e.to_string()))?;
    let mut msg = vec![0u8; MAX_FRAME_LEN];
    let n = hs
        .write_message(&hello, &mut msg)
        .map_err(|e| TransportError::Handshake(e.to_string()))?;
    let mut out = Vec::with_capacity(7 + n);
    out.extend_from_slice(&MAGIC);
    out.push(MODE_NOISE);
    encode_frame(&msg[..n], &mut out);
    write.write_all(&out).await?;
    write.flush().await?;

    let mut frames = FrameReader::new(read);
    let reply = match frames.next().await {
        Ok(f) => f,
        Err(TransportError::Closed) | Err(TransportError::Truncated) => {
            return Err(TransportError::Handshake(
                "the server closed the connection (is the pinned server key right?)".into(),
            ))
        }
        Err(e) => return Err(e),
    };
    let mut payload = vec![0u8; MAX_FRAME_LEN];
    let n = hs.read_message(&reply, &mut payload).map_err(|_| {
        TransportError::Handshake("the server's reply does not match its pinned key".into())
    })?;
    let server_hello: ServerHello = serde_json::from_slice(&payload[..n])
        .map_err(|e| TransportError::Handshake(format!("server hello: {e}")))?;
    if let Some(err) = &server_hello.error {
        return Err(TransportError::Refused(err.clone()));
    }
    let conn = established(hs, frames, write)?;
    Ok((conn, server_hello))
}

/// What arrived on the server's port.
pub enum Accepted<S> {
    /// An authenticated node session.
    Session(Box<Connection<S>>, ClientHello),
    /// A key request, already answered.
    KeyRequest,
}

/// Accepts a connection on the server: reads the prelude, answers key requests, runs the
/// Noise responder and the hello exchange. Bounded by [`HANDSHAKE_TIMEOUT`].
pub async fn server_accept<S>(io: S, server_private: &Key) -> Result<Accepted<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, server_accept_inner(io, server_private))
        .await
        .map_err(|_| TransportError::Timeout("handshake"))?
}

async fn server_accept_inner<S>(io: S, server_private: &Key) -> Result<Accepted<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut read, mut write) = tokio::io::split(io);
    let mut prelude = [0u8; 5];
    read.read_exact(&mut prelude).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            TransportError::Closed
        } else {
            e.into()
        }
    })?;
    if prelude[..4] != MAGIC {
        if prelude[..3].iter().all(u8::is_ascii_uppercase) {
            // Someone pointed a web browser or curl at us: say what this is.
            let _ = write
                .write_all(
                    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
                      This is a tailgate coordination server. Point `tailgate up --login-server` at \
                      tg://HOST:PORT (see `tailgate control info`).\n",
                )
                .await;
        }
        return Err(TransportError::BadPrelude(prelude));
    }
    match prelude[4] {
        MODE_KEY => {
            let line = format!(
                "{}\n",
                serde_json::json!({
                    "server_key": server_private.public_key().to_base64(),
                    "version": PROTOCOL_VERSION,
                })
            );
            write.write_all(line.as_bytes()).await?;
            write.flush().await?;
            let _ = write.shutdown().await;
            Ok(Accepted::KeyRequest)
        }
        MODE_NOISE => {
            let mut frames = FrameReader::new(read);
            let first = frames.next().await?;
            let mut hs = builder()?
                .local_private_key(server_private.as_bytes())
                .and_then(|b| b.build_responder())
                .map_err(|e| TransportError::Handshake(e.to_string()))?;
            let mut payload = vec![0u8; MAX_FRAME_LEN];
            let n = hs.read_message(&first, &mut payload).map_err(|_| {
                TransportError::Handshake(
                    "first message does not decrypt (client pinned another server key?)".into(),
                )
            })?;
            let hello: ClientHello = serde_json::from_slice(&payload[..n])
                .map_err(|e| TransportError::Handshake(format!("client hello: {e}")))?;
            let reply = ServerHello {
                version: PROTOCOL_VERSION,
                error: (hello.version != PROTOCOL_VERSION).then(|| {
                    format!(
                        "unsupported protocol version {} (this server speaks {PROTOCOL_VERSION})",
                        hello.version
                    )
                }),
            };
            let reply_bytes =
                serde_json::to_vec(&reply).map_err(|e| TransportError::Handshake(e.to_string()))?;
            let mut msg = vec![0u8; MAX_FRAME_LEN];
            let n = hs
                .write_message(&reply_bytes, &mut msg)
                .map_err(|e| TransportError::Handshake(e.to_string()))?;
            let mut out = Vec::with_capacity(2 + n);
            encode_frame(&msg[..n], &mut out);
            write.write_all(&out).await?;
            write.flush().await?;
            if let Some(e) = reply.error {
                return Err(TransportError::Refused(e));
            }
            Ok(Accepted::Session(
                Box::new(established(hs, frames, write)?),
                hello,
            ))
        }
        _ => Err(TransportError::BadPrelude(prelude)),
    }
}

/// Asks the server at `addr` for its public key (plaintext; for trust-on-first-use only).
pub async fn fetch_server_key<S>(mut io: S) -> Result<Key, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let fut = async {
        let mut prelude = MAGIC.to_vec();
        prelude.push(MODE_KEY);
        io.write_all(&prelude).await?;
        io.flush().await?;
        let mut line = Vec::new();
        (&mut io)
            .take(MAX_KEY_LINE as u64)
            .read_to_end(&mut line)
            .await?;
        #[derive(serde::Deserialize)]
        struct KeyReply {
            server_key: String,
        }
        let reply: KeyReply = serde_json::from_slice(&line).map_err(|e| {
            TransportError::Handshake(format!(
                "unreadable key reply (not a tailgate server?): {e}"
            ))
        })?;
        Key::from_base64(&reply.server_key)
            .map_err(|e| TransportError::Handshake(format!("server key: {e}")))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| TransportError::Timeout("key request"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_decode_incrementally() {
        let mut buf = Vec::new();
        encode_frame(b"hello", &mut buf);
        encode_frame(b"x", &mut buf);
        assert_eq!(decode_frame(&buf[..1]).unwrap(), None);
        assert_eq!(decode_frame(&buf[..6]).unwrap(), None);
        let (body, used) = decode_frame(&buf).unwrap().unwrap();
        assert_eq!((body, used), (&b"hello"[..], 7));
        let (body, used) = decode_frame(&buf[7..]).unwrap().unwrap();
        assert_eq!((body, used), (&b"x"[..], 3));
        assert_eq!(decode_frame(&[0, 0, 1]), Err(FrameError::Empty));
    }

    #[test]
    fn assembler_enforces_limits() {
        let mut a = MessageAssembler::new(10);
        assert_eq!(a.push(&[0, 0, 0]), Err(FrameError::ShortHeader));
        assert_eq!(a.push(&[0, 0, 0, 0]), Err(FrameError::EmptyMessage));
        assert_eq!(
            a.push(&[0, 0, 0, 11, 1]),
            Err(FrameError::MessageTooLarge(11))
        );
        let mut a = MessageAssembler::new(10);
        assert_eq!(a.push(&[0, 0, 0, 3, 1]), Ok(None));
        assert_eq!(a.push(&[2, 3, 4]), Err(FrameError::Overrun(1)));
        let mut a = MessageAssembler::new(10);
        assert_eq!(a.push(&[0, 0, 0, 3, 1]), Ok(None));
        assert_eq!(a.push(&[2]), Ok(None));
        assert_eq!(a.push(&[3]), Ok(Some(vec![1, 2, 3])));
        assert_eq!(a.push(&[0, 0, 0, 1, 9]), Ok(Some(vec![9])));
    }

    #[test]
    fn big_messages_chunk_and_reassemble() {
        let msg: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let chunks = chunk_message(&msg).unwrap();
        assert!(chunks.len() >= 4);
        assert!(chunks.iter().all(|c| c.len() <= MAX_CHUNK_LEN));
        let mut a = MessageAssembler::default();
        let mut out = None;
        for c in &chunks {
            assert!(out.is_none());
            out = a.push(c).unwrap();
        }
        assert_eq!(out.unwrap(), msg);
        assert!(chunk_message(&[]).is_err());
    }

    #[tokio::test]
    async fn handshake_and_messages_over_a_pipe() {
        let server_key = Key::generate_private();
        let machine = Key::generate_private();
        let (c, s) = tokio::io::duplex(1 << 16);
        let server_priv = server_key;
        let server = tokio::spawn(async move {
            match server_accept(s, &server_priv).await.unwrap() {
                Accepted::Session(mut conn, hello) => {
                    assert_eq!(hello.version, PROTOCOL_VERSION);
                    let m = conn.reader.recv_raw().await.unwrap();
                    conn.writer.send_raw(&m).await.unwrap();
                    conn.remote_static
                }
                Accepted::KeyRequest => panic!("expected a session"),
            }
        });
        let (mut conn, hello) = client_handshake(c, &machine, &server_key.public_key())
            .await
            .unwrap();
        assert_eq!(hello.version, PROTOCOL_VERSION);
        assert_eq!(conn.remote_static, server_key.public_key());
        let big: Vec<u8> = (0..150_000u32).map(|i| (i * 7) as u8).collect();
        conn.writer.send_raw(&big).await.unwrap();
        assert_eq!(conn.reader.recv_raw().await.unwrap(), big);
        assert_eq!(server.await.unwrap(), machine.public_key());
    }

    #[tokio::test]
    async fn wrong_pinned_key_fails_cleanly() {
        let server_key = Key::generate_private();
        let other = Key::generate_private();
        let (c, s) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { server_accept(s, &server_key).await.err() });
        let err = client_handshake(c, &Key::generate_private(), &other.public_key())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, TransportError::Handshake(_)), "{err}");
        assert!(matches!(
            server.await.unwrap(),
            Some(TransportError::Handshake(_))
        ));
    }

    #[tokio::test]
    async fn key_request_and_garbage() {
        let server_key = Key::generate_private();
        let (c, s) = tokio::io::duplex(4096);
        let sk = server_key;
        let server = tokio::spawn(async move { server_accept(s, &sk).await.is_ok() });
        assert_eq!(fetch_server_key(c).await.unwrap(), server_key.public_key());
        assert!(server.await.unwrap());

        let (mut c, s) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move { server_accept(s, &server_key).await.err() });
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).await.unwrap();
        assert!(reply.contains("tailgate coordination server"));
        assert!(matches!(
            server.await.unwrap(),
            Some(TransportError::BadPrelude(_))
        ));
    }

    proptest! {
        #[test]
        fn frame_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut rest = &bytes[..];
            while let Ok(Some((body, used))) = decode_frame(rest) {
                prop_assert!(!body.is_empty() && used == body.len() + 2);
                rest = &rest[used..];
            }
        }

        #[test]
        fn assembler_never_panics(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..40), 0..20)) {
            let mut a = MessageAssembler::new(64);
            for c in &chunks {
                if let Ok(Some(m)) = a.push(c) {
                    prop_assert!(!m.is_empty() && m.len() <= 64);
                }
            }
        }

        #[test]
        fn chunking_round_trips(len in 1usize..140_000, seed in any::<u8>()) {
            let msg: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let mut a = MessageAssembler::default();
            let mut got = None;
            for c in chunk_message(&msg).unwrap() {
                got = a.push(&c).unwrap();
            }
            prop_assert_eq!(got, Some(msg));
        }
    }

    #[tokio::test]
    async fn server_survives_random_garbage_after_prelude() {
        use rand_core::{OsRng, RngCore};
        for _ in 0..50 {
            let mut junk = vec![0u8; (OsRng.next_u32() % 400) as usize];
            OsRng.fill_bytes(&mut junk);
            let mut input = MAGIC.to_vec();
            input.push(MODE_NOISE);
            input.extend_from_slice(&junk);
            let (mut c, s) = tokio::io::duplex(4096);
            let key = Key::generate_private();
            let server = tokio::spawn(async move { server_accept(s, &key).await.is_err() });
            c.write_all(&input).await.unwrap();
            c.shutdown().await.unwrap();
            assert!(server.await.unwrap());
        }
    }
}
