//! The relay client: connects to a relay server (TCP, optionally through an HTTP proxy, then
//! TLS, then the HTTP upgrade), proves its node key, and then sends packets to other node
//! keys and receives theirs. Nodes use it for peers they cannot reach directly; relay servers
//! use it for their mesh links.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use x25519_dalek::{PublicKey, StaticSecret};

use super::auth::{self, ClientInfo, ServerInfo, PROTOCOL_VERSION};
use super::conn::{read_frame, spawn_writer, BoxStream, ReadError};
use super::frame::{Frame, GoneReason, NodeKey};
use super::http;
use super::tls::{self, Verification};

/// Frames a client queues before [`Sender::try_send`] reports it full.
const QUEUE_DEPTH: usize = 1024;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The server's host name: TLS server name and HTTP `Host`.
    pub host: String,
    /// The address to connect to (the host name resolved, or the relay map's IPv4/IPv6).
    pub addr: SocketAddr,
    /// TLS and how to verify the certificate, or `None` for plain HTTP (only behind a
    /// TLS-terminating proxy, or in a lab).
    pub tls: Option<Verification>,
    /// An HTTP proxy to tunnel through with `CONNECT`.
    pub proxy: Option<SocketAddr>,
    /// The server key the relay map promises; the connection fails if the server has another.
    pub expect_server_key: Option<NodeKey>,
    /// The region's mesh secret (relay servers' mesh links only).
    pub mesh_key: Option<String>,
    /// Limit for the whole connection set-up.
    pub timeout: Duration,
}

impl ConnectOptions {
    /// Options for `host` at `addr` over TLS with `verification`, 10 s to connect.
    pub fn new(host: &str, addr: SocketAddr, verification: Verification) -> ConnectOptions {
        ConnectOptions {
            host: host.to_string(),
            addr,
            tls: Some(verification),
            proxy: None,
            expect_server_key: None,
            mesh_key: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A packet from the node with key `src`.
    Packet {
        /// The sender's node key.
        src: NodeKey,
        /// The packet.
        data: Vec<u8>,
    },
    /// A node left the relay, or a packet was sent to a node that is not there.
    PeerGone {
        /// The node's key.
        key: NodeKey,
        /// Why.
        reason: GoneReason,
    },
    /// (Mesh watchers) a node connected to the server.
    PeerPresent(NodeKey),
    /// The answer to [`Sender::ping`].
    Pong([u8; 8]),
}

/// The sending half of a connection; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Frame>,
}

impl Sender {
    /// Queues `packet` for the node `dst`, waiting while the queue is full.
    pub async fn send(&self, dst: NodeKey, packet: Vec<u8>) -> Result<()> {
        self.frame(Frame::SendPacket { dst, packet }).await
    }

    /// Queues `packet` for `dst` unless the queue is full (then the packet is returned).
    pub fn try_send(&self, dst: NodeKey, packet: Vec<u8>) -> Result<(), Vec<u8>> {
        self.tx
            .try_send(Frame::SendPacket { dst, packet })
            .map_err(|e| match e.into_inner() {
                Frame::SendPacket { packet, .. } => packet,
                _ => unreachable!("the frame just queued"),
            })
    }

    /// Sends a ping; the server answers with [`Received::Pong`].
    pub async fn ping(&self, data: [u8; 8]) -> Result<()> {
        self.frame(Frame::Ping(data)).await
    }

    /// Tells the server whether it is this node's home relay.
    pub async fn note_preferred(&self, preferred: bool) -> Result<()> {
        self.frame(Frame::NotePreferred(preferred)).await
    }

    /// (Mesh) asks for the server's present and future clients.
    pub async fn watch_conns(&self) -> Result<()> {
        self.frame(Frame::WatchConns).await
    }

    /// Queues a raw frame (mesh forwarding uses this).
    pub async fn frame(&self, frame: Frame) -> Result<()> {
        self.tx
            .send(frame)
            .await
            .map_err(|_| anyhow!("relay connection closed"))
    }

    /// The underlying queue (mesh routes keep it to forward packets).
    pub fn queue(&self) -> mpsc::Sender<Frame> {
        self.tx.clone()
    }
}

/// The receiving half of a connection.
pub struct Receiver {
    reader: BufReader<ReadHalf<BoxStream>>,
    buf: Vec<u8>,
    tx: mpsc::Sender<Frame>,
    writer: JoinHandle<()>,
}

impl Receiver {
    /// The next packet or notice; pings from the server are answered here. Fails when the
    /// connection breaks or the server sends a malformed frame.
    pub async fn recv(&mut self) -> Result<Received, ReadError> {
        loop {
            match read_frame(&mut self.reader, &mut self.buf).await? {
                Frame::RecvPacket { src, packet } => {
                    return Ok(Received::Packet { src, data: packet })
                }
                Frame::PeerGone { key, reason } => return Ok(Received::PeerGone { key, reason }),
                Frame::PeerPresent(key) => return Ok(Received::PeerPresent(key)),
                Frame::Pong(d) => return Ok(Received::Pong(d)),
                Frame::Ping(d) => {
                    let _ = self.tx.try_send(Frame::Pong(d));
                }
                _ => {}
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// A connected, authenticated client.
pub struct Client {
    /// The server's public key.
    pub server_key: NodeKey,
    /// What the server said about itself (rate limits).
    pub server_info: ServerInfo,
    /// Sending half.
    pub sender: Sender,
    /// Receiving half.
    pub receiver: Receiver,
}

/// Connects to a relay server as the node `private_key`.
pub async fn connect(opts: &ConnectOptions, private_key: &StaticSecret) -> Result<Client> {
    tokio::time::timeout(opts.timeout, connect_inner(opts, private_key))
        .await
        .map_err(|_| {
            anyhow!(
                "relay {} ({}): no connection within {:?}",
                opts.host,
                opts.addr,
                opts.timeout
            )
        })?
        .with_context(|| format!("relay {} ({})", opts.host, opts.addr))
}

async fn connect_inner(opts: &ConnectOptions, private_key: &StaticSecret) -> Result<Client> {
    let tcp = match opts.proxy {
        Some(proxy) => {
            let mut tcp = TcpStream::connect(proxy)
                .await
                .with_context(|| format!("connecting to the proxy {proxy}"))?;
            let target = opts.addr;
            tcp.write_all(
                format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut r = BufReader::new(&mut tcp);
            let head = http::read_head(&mut r).await.context("proxy answer")?;
            let status = head.split(' ').nth(1).unwrap_or_default();
            if status != "200" {
                bail!(
                    "the proxy refused CONNECT: {}",
                    head.lines().next().unwrap_or_default()
                );
            }
            if !r.buffer().is_empty() {
                bail!("the proxy sent data before the tunnel was up");
            }
            tcp
        }
        None => TcpStream::connect(opts.addr).await.context("connecting")?,
    };
    let _ = tcp.set_nodelay(true);
    let stream: BoxStream = match &opts.tls {
        Some(verification) => {
            let connector = TlsConnector::from(tls::client_config(verification)?);
            let name = ServerName::try_from(opts.host.clone())
                .map_err(|_| anyhow!("{:?} is not a valid TLS server name", opts.host))?;
            Box::pin(connector.connect(name, tcp).await.context("TLS")?)
        }
        None => Box::pin(tcp),
    };
    let (read_half, mut write_half) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    write_half
        .write_all(http::upgrade_request(&opts.host).as_bytes())
        .await?;
    write_half.flush().await?;
    let head = http::read_head(&mut reader)
        .await
        .context("reading the upgrade answer")?;
    if !http::is_upgrade_response(&head) {
        bail!(
            "not a relay: the server answered {:?}",
            head.lines().next().unwrap_or_default()
        );
    }
    let mut buf = Vec::new();
    let (server_key, challenge) = match read_frame(&mut reader, &mut buf).await? {
        Frame::ServerKey { key, challenge } => (key, challenge),
        other => bail!("expected the server key, got {other:?}"),
    };
    if let Some(expected) = opts.expect_server_key {
        if expected != server_key {
            bail!("the server's key is not the one in the relay map");
        }
    }
    let info = ClientInfo {
        version: PROTOCOL_VERSION,
        mesh_key: opts.mesh_key.clone(),
    };
    let (nonce, sealed) = auth::seal_client_info(private_key, &server_key, &challenge, &info)?;
    let mut hello = Vec::new();
    Frame::ClientInfo {
        key: PublicKey::from(private_key).to_bytes(),
        nonce,
        sealed,
    }
    .encode(&mut hello);
    write_half.write_all(&hello).await?;
    write_half.flush().await?;
    let server_info = match read_frame(&mut reader, &mut buf).await {
        Ok(Frame::ServerInfo { nonce, sealed }) => {
            auth::open_server_info(private_key, &server_key, &challenge, &nonce, &sealed)?
        }
        Ok(other) => bail!("expected the server info, got {other:?}"),
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            bail!("the server closed the connection during the handshake (wrong mesh key?)")
        }
        Err(e) => return Err(e.into()),
    };
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let writer = spawn_writer(write_half, rx, Some(super::server::KEEP_ALIVE));
    Ok(Client {
        server_key,
        server_info,
        sender: Sender { tx: tx.clone() },
        receiver: Receiver {
            reader,
            buf,
            tx,
            writer,
        },
    })
}
