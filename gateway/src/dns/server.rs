//! [`DnsServer`]: UDP and TCP listeners in front of [`MagicDns`].
//!
//! Every listen address gets a UDP socket and a TCP listener on the same port. UDP queries are
//! answered concurrently (bounded; over the bound they are dropped and counted); UDP answers
//! larger than the client's limit (512 bytes without EDNS, its EDNS size otherwise, at most
//! 1232) go out truncated with TC set, and the client retries over TCP, where connections are
//! bounded too and closed after an idle timeout.
//!
//! The sockets are bound with `IP_FREEBIND` by default, so the resolver can start before the
//! daemon has put 100.100.100.100 / fd7a:115c:a1e0::53 on an interface.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::forward::ForwardOptions;
use super::handler::MagicDns;
use super::stats::{DnsStats, DnsStatsSnapshot};
use super::view::DnsView;
use super::DnsError;

/// How many times a free port shared by UDP and TCP is looked for when port 0 is asked for.
const PORT_ATTEMPTS: usize = 16;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Upstream timeouts and DoH trust.
    pub forward: ForwardOptions,
    /// Bind with `IP_FREEBIND` / `IPV6_FREEBIND` (the address need not exist yet).
    pub freebind: bool,
    /// UDP queries handled at once per socket; more are dropped.
    pub max_udp_in_flight: usize,
    /// TCP connections open at once per listener; more are closed at once.
    pub max_tcp_connections: usize,
    /// A TCP connection that sends nothing for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            forward: ForwardOptions::default(),
            freebind: true,
            max_udp_in_flight: 1024,
            max_tcp_connections: 256,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A running resolver; it serves until [`stop`](Self::stop)ped or dropped.
#[derive(Debug)]
pub struct DnsServer {
    addrs: Vec<SocketAddr>,
    handler: Arc<MagicDns>,
    tasks: JoinSet<()>,
}

fn bind_udp(addr: SocketAddr, freebind: bool) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        if freebind {
            s.set_freebind_v6(true)?;
        }
    } else if freebind {
        s.set_freebind_v4(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn bind_tcp(addr: SocketAddr, freebind: bool) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        if freebind {
            s.set_freebind_v6(true)?;
        }
    } else if freebind {
        s.set_freebind_v4(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A UDP socket and a TCP listener on the same address and port.
fn bind_pair(
    addr: SocketAddr,
    freebind: bool,
) -> Result<(std::net::UdpSocket, std::net::TcpListener, SocketAddr), DnsError> {
    let udp_err = |source| DnsError::Bind {
        proto: "udp",
        addr,
        source,
    };
    let tcp_err = |source| DnsError::Bind {
        proto: "tcp",
        addr,
        source,
    };
    if addr.port() != 0 {
        let udp = bind_udp(addr, freebind).map_err(udp_err)?;
        let tcp = bind_tcp(addr, freebind).map_err(tcp_err)?;
        return Ok((udp, tcp, addr));
    }
    let mut last = None;
    for _ in 0..PORT_ATTEMPTS {
        let udp = bind_udp(addr, freebind).map_err(udp_err)?;
        let bound = udp.local_addr().map_err(udp_err)?;
        match bind_tcp(bound, freebind) {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(tcp_err(e)),
        }
    }
    Err(tcp_err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            "no port free for both UDP and TCP",
        )
    })))
}

impl DnsServer {
    /// Binds UDP and TCP on every address in `listen` and serves queries from `view` (see
    /// [`MagicDns::new`]) with default [`ServerOptions`]. Must be called within a tokio
    /// runtime. Port 0 picks a free port (the same for UDP and TCP; see
    /// [`local_addrs`](Self::local_addrs)).
    pub fn start(
        listen: &[SocketAddr],
        view: watch::Receiver<DnsView>,
    ) -> Result<DnsServer, DnsError> {
        Self::start_with(listen, view, ServerOptions::default())
    }

    /// [`start`](Self::start) with explicit options.
    pub fn start_with(
        listen: &[SocketAddr],
        view: watch::Receiver<DnsView>,
        opts: ServerOptions,
    ) -> Result<DnsServer, DnsError> {
        if listen.is_empty() {
            return Err(DnsError::NoListenAddress);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(DnsError::NoRuntime);
        }
        let mut bound = Vec::new();
        for addr in listen {
            let (udp, tcp, at) = bind_pair(*addr, opts.freebind)?;
            let udp = UdpSocket::from_std(udp).map_err(|source| DnsError::Bind {
                proto: "udp",
                addr: at,
                source,
            })?;
            let tcp = TcpListener::from_std(tcp).map_err(|source| DnsError::Bind {
                proto: "tcp",
                addr: at,
                source,
            })?;
            bound.push((udp, tcp, at));
        }
        let addrs: Vec<SocketAddr> = bound.iter().map(|(_, _, a)| *a).collect();
        let handler = Arc::new(MagicDns::new(
            view,
            opts.forward.clone(),
            Arc::new(DnsStats::new()),
            addrs.clone(),
        )?);
        let mut tasks = JoinSet::new();
        for (udp, tcp, at) in bound {
            log::info!("dns: MagicDNS resolver listening on {at} (udp, tcp)");
            tasks.spawn(serve_udp(
                Arc::new(udp),
                handler.clone(),
                opts.max_udp_in_flight.max(1),
            ));
            tasks.spawn(serve_tcp(
                tcp,
                handler.clone(),
                opts.max_tcp_connections.max(1),
                opts.tcp_idle_timeout,
            ));
        }
        Ok(DnsServer {
            addrs,
            handler,
            tasks,
        })
    }

    /// The addresses served (with the actual ports).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The counters now.
    pub fn stats(&self) -> DnsStatsSnapshot {
        self.handler.stats().snapshot()
    }

    /// The request handler, e.g. to answer `tailgate dns query` in-process with
    /// [`MagicDns::answer`].
    pub fn handler(&self) -> &Arc<MagicDns> {
        &self.handler
    }

    /// Stops serving and waits until every socket is closed.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, handler: Arc<MagicDns>, max_in_flight: usize) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut in_flight = JoinSet::new();
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("dns: udp receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while in_flight.try_join_next().is_some() {}
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) if src.port() != 0 => p,
            _ => {
                handler.stats().query(false);
                handler.stats().dropped();
                continue;
            }
        };
        let msg = buf[..n].to_vec();
        let (sock, handler) = (sock.clone(), handler.clone());
        in_flight.spawn(async move {
            let _permit = permit;
            if let Some(resp) = handler.answer(&msg, src, Protocol::Udp).await {
                if let Err(e) = sock.send_to(&resp, src).await {
                    log::debug!("dns: udp send to {src}: {e}");
                }
            }
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    handler: Arc<MagicDns>,
    max_conns: usize,
    idle: Duration,
) {
    let permits = Arc::new(Semaphore::new(max_conns));
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("dns: tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            handler.stats().dropped();
            continue;
        };
        conns.spawn(serve_tcp_conn(stream, peer, handler.clone(), idle, permit));
    }
}

/// Serves length-prefixed queries on one connection, in order, until the client closes it,
/// stays idle for `idle`, or sends a zero length.
async fn serve_tcp_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<MagicDns>,
    idle: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    loop {
        let mut len = [0u8; 2];
        if !matches!(timeout(idle, stream.read_exact(&mut len)).await, Ok(Ok(_))) {
            return;
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n == 0 {
            return;
        }
        let mut msg = vec![0u8; n];
        if !matches!(timeout(idle, stream.read_exact(&mut msg)).await, Ok(Ok(_))) {
            return;
        }
        let Some(resp) = handler.answer(&msg, peer, Protocol::Tcp).await else {
            continue;
        };
        let Ok(resp_len) = u16::try_from(resp.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&resp_len.to_be_bytes());
        out.extend_from_slice(&resp);
        if !matches!(timeout(idle, stream.write_all(&out)).await, Ok(Ok(()))) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::view::Host;
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    fn view() -> DnsView {
        DnsView {
            domain: "tailnet.example".into(),
            self_node: None,
            peers: vec![Host {
                name: "peer".into(),
                addrs: vec!["100.64.0.2".parse().unwrap()],
            }],
            split: vec![],
            global: vec![],
        }
    }

    #[test]
    fn start_needs_a_runtime_and_an_address() {
        let (_tx, rx) = watch::channel(view());
        assert!(matches!(
            DnsServer::start(&["127.0.0.1:0".parse().unwrap()], rx.clone()),
            Err(DnsError::NoRuntime)
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(
                DnsServer::start(&[], rx),
                Err(DnsError::NoListenAddress)
            ));
        });
    }

    #[tokio::test]
    async fn serves_udp_and_tcp_on_loopback() {
        let (_tx, rx) = watch::channel(view());
        let server = DnsServer::start(&["127.0.0.1:0".parse().unwrap()], rx).unwrap();
        let addr = server.local_addrs()[0];
        assert_ne!(addr.port(), 0);
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("peer.tailnet.example.").unwrap(),
            RecordType::A,
        ));
        let bytes = q.to_vec().unwrap();
        // UDP.
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&bytes, addr).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (n, _) = timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let r = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        // TCP, two queries on one connection.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&bytes);
            tcp.write_all(&out).await.unwrap();
            let mut len = [0u8; 2];
            timeout(Duration::from_secs(2), tcp.read_exact(&mut len))
                .await
                .unwrap()
                .unwrap();
            let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
            tcp.read_exact(&mut resp).await.unwrap();
            assert_eq!(Message::from_vec(&resp).unwrap().answers.len(), 1);
        }
        let s = server.stats();
        assert_eq!((s.queries, s.tcp_queries, s.answered_local), (3, 2, 3));
        server.stop().await;
        // The port is free again.
        assert!(UdpSocket::bind(addr).await.is_ok());
    }
}
