//! Userspace networking: an embedded TCP/IP stack (smoltcp) in place of the kernel's TUN
//! device, for containers and hosts without `/dev/net/tun` or `NET_ADMIN`.
//!
//! The stack holds the node's tailnet addresses. The data path treats it as its TUN
//! ([`crate::io::tun::Tun::userspace`]): decrypted packets from peers go in, and what the
//! stack sends goes out through the tunnel. It answers pings to the node, and opens TCP
//! connections to the tailnet for the SOCKS5 and HTTP proxies ([`proxy`]): [`Netstack::connect`]
//! gives a [`StackConn`] whose bytes flow through the stack.
//!
//! One task owns the stack; everything else talks to it through channels, so nothing here
//! blocks the data path.

pub mod proxy;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use crate::io::tun::Tun;

/// Packets queued between the data path and the stack, each way.
const PACKET_QUEUE: usize = 1024;
/// Send and receive buffer of each TCP connection.
const TCP_BUFFER: usize = 256 * 1024;
/// Bytes a client may have in flight towards the stack, per connection.
const CLIENT_WINDOW: usize = 256 * 1024;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the stack task sleeps without a reason to wake.
const MAX_IDLE: Duration = Duration::from_millis(50);
/// Bytes handed to a client per message.
const CHUNK: usize = 32 * 1024;

/// A handle on the stack (cheap to clone).
#[derive(Clone)]
pub struct Netstack {
    cmd: mpsc::UnboundedSender<Command>,
    wake: Arc<Notify>,
}

enum Command {
    Connect {
        dst: SocketAddr,
        reply: oneshot::Sender<io::Result<StackConn>>,
    },
    /// Client bytes for the connection (empty: the client finished sending).
    Data { id: u64, data: Vec<u8> },
    /// The client is gone.
    Close { id: u64 },
    /// The node's tailnet addresses.
    Addresses(Vec<IpNet>),
}

/// A TCP connection through the stack, as two halves.
pub struct StackConn {
    /// Bytes to the remote end.
    pub tx: StackTx,
    /// Bytes from the remote end.
    pub rx: StackRx,
}

/// The sending half of a [`StackConn`].
pub struct StackTx {
    id: u64,
    cmd: mpsc::UnboundedSender<Command>,
    wake: Arc<Notify>,
    window: Arc<Semaphore>,
}

/// The receiving half of a [`StackConn`]; dropping it ends the connection (with a reset if
/// it was not closed in order).
pub struct StackRx {
    id: u64,
    cmd: mpsc::UnboundedSender<Command>,
    wake: Arc<Notify>,
    from_stack: mpsc::Receiver<Vec<u8>>,
    notify_close: bool,
}

impl StackTx {
    /// Sends bytes to the remote end (waits while the client's window is full).
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(CHUNK) {
            let permits = self
                .window
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| broken())?;
            permits.forget();
            self.cmd
                .send(Command::Data {
                    id: self.id,
                    data: chunk.to_vec(),
                })
                .map_err(|_| broken())?;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Tells the remote end that no more bytes come (TCP FIN).
    pub fn finish(&self) {
        let _ = self.cmd.send(Command::Data {
            id: self.id,
            data: Vec::new(),
        });
        self.wake.notify_one();
    }
}

impl StackRx {
    /// Bytes from the remote end; `None` at its end of stream.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let data = self.from_stack.recv().await;
        // Room in the channel: the stack may move more bytes.
        self.wake.notify_one();
        data
    }
}

impl Drop for StackRx {
    fn drop(&mut self) {
        if self.notify_close {
            let _ = self.cmd.send(Command::Close { id: self.id });
            self.wake.notify_one();
        }
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the userspace stack stopped")
}

impl Netstack {
    /// Starts the stack with `addresses` (MTU `mtu`); returns its handle and the TUN the data
    /// path uses. Must run within tokio.
    pub fn start(addresses: &[IpNet], mtu: u16) -> (Netstack, Tun) {
        let (to_device, from_stack) = mpsc::channel(PACKET_QUEUE);
        let (to_stack, from_device) = mpsc::channel(PACKET_QUEUE);
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let stack = Stack::new(addresses, usize::from(mtu), to_device);
        tokio::spawn(stack.run(from_device, cmd_rx, cmd.clone(), wake.clone()));
        (
            Netstack { cmd, wake },
            Tun::userspace("userspace-networking", from_stack, to_stack),
        )
    }

    /// Opens a TCP connection to `dst` through the tunnel.
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<StackConn> {
        let (reply, answer) = oneshot::channel();
        self.cmd
            .send(Command::Connect { dst, reply })
            .map_err(|_| broken())?;
        self.wake.notify_one();
        answer.await.map_err(|_| broken())?
    }

    /// Replaces the node's addresses (a new netmap).
    pub fn set_addresses(&self, addresses: &[IpNet]) {
        let _ = self.cmd.send(Command::Addresses(addresses.to_vec()));
        self.wake.notify_one();
    }
}

/// Packet queues between smoltcp and the channels.
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(
        &mut self,
        _now: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// One connection's state on the stack's side.
struct Conn {
    socket: SocketHandle,
    to_client: Option<mpsc::Sender<Vec<u8>>>,
    window: Arc<Semaphore>,
    /// Client bytes not yet in the socket's send buffer.
    pending: VecDeque<u8>,
    client_finished: bool,
    fin_sent: bool,
    /// Still connecting: where the answer goes.
    connecting: Option<(oneshot::Sender<io::Result<StackConn>>, StackConn)>,
}

/// The stack task's state.
struct Stack {
    epoch: Instant,
    iface: Interface,
    queues: Queues,
    sockets: SocketSet<'static>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    next_port: u16,
    to_device: mpsc::Sender<Vec<u8>>,
}

fn cidrs(addresses: &[IpNet]) -> Vec<IpCidr> {
    addresses
        .iter()
        .map(|a| IpCidr::new(a.addr().into(), a.max_prefix_len()))
        .collect()
}

impl Stack {
    fn new(addresses: &[IpNet], mtu: usize, to_device: mpsc::Sender<Vec<u8>>) -> Stack {
        let mut queues = Queues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        };
        let epoch = Instant::now();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut queues,
            smoltcp::time::Instant::from_millis(0),
        );
        // Everything not on the node itself goes out through the tunnel; with an IP medium
        // the gateway address only has to exist.
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(100, 100, 100, 100));
        let _ = iface
            .routes_mut()
            .add_default_ipv6_route(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53));
        let mut stack = Stack {
            epoch,
            iface,
            queues,
            sockets: SocketSet::new(Vec::new()),
            conns: HashMap::new(),
            next_id: 1,
            next_port: 49152,
            to_device,
        };
        stack.set_addresses(addresses);
        stack
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_millis(self.epoch.elapsed().as_millis() as i64)
    }

    fn set_addresses(&mut self, addresses: &[IpNet]) {
        let list = cidrs(addresses);
        self.iface.update_ip_addrs(|a| {
            a.clear();
            for c in list {
                if a.push(c).is_err() {
                    log::warn!("userspace stack: too many addresses, {c} left out");
                }
            }
        });
    }

    fn local_addr(&self, family_v4: bool) -> Option<IpAddr> {
        self.iface
            .ip_addrs()
            .iter()
            .map(|c| IpAddr::from(c.address()))
            .find(|a| a.is_ipv4() == family_v4)
    }

    fn local_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if self.next_port == u16::MAX {
            49152
        } else {
            self.next_port + 1
        };
        port
    }

    fn connect(
        &mut self,
        dst: SocketAddr,
        reply: oneshot::Sender<io::Result<StackConn>>,
        cmd: &mpsc::UnboundedSender<Command>,
        wake: &Arc<Notify>,
    ) {
        let Some(src) = self.local_addr(dst.is_ipv4()) else {
            let _ = reply.send(Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "the node has no tailnet address of that family yet",
            )));
            return;
        };
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        socket.set_timeout(Some(smoltcp::time::Duration::from_millis(
            CONNECT_TIMEOUT.as_millis() as u64,
        )));
        socket.set_nagle_enabled(false);
        let port = self.local_port();
        if let Err(e) = socket.connect(self.iface.context(), dst, SocketAddr::new(src, port)) {
            let _ = reply.send(Err(io::Error::other(format!("connect {dst}: {e}"))));
            return;
        }
        let handle = self.sockets.add(socket);
        let id = self.next_id;
        self.next_id += 1;
        let (to_client, from_stack) = mpsc::channel(8);
        let window = Arc::new(Semaphore::new(CLIENT_WINDOW));
        let conn = StackConn {
            tx: StackTx {
                id,
                cmd: cmd.clone(),
                wake: wake.clone(),
                window: window.clone(),
            },
            rx: StackRx {
                id,
                cmd: cmd.clone(),
                wake: wake.clone(),
                from_stack,
                notify_close: true,
            },
        };
        self.conns.insert(
            id,
            Conn {
                socket: handle,
                to_client: Some(to_client),
                window,
                pending: VecDeque::new(),
                client_finished: false,
                fin_sent: false,
                connecting: Some((reply, conn)),
            },
        );
    }

    /// Moves bytes between sockets and clients; returns the ids of finished connections.
    fn service(&mut self) {
        let mut done = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            let socket = self.sockets.get_mut::<tcp::Socket>(c.socket);
            if let Some((reply, conn)) = c.connecting.take() {
                match socket.state() {
                    tcp::State::Established => {
                        // The timeout was for connecting; an open connection waits as long as
                        // the tunnel needs (a rekey or a path change).
                        socket.set_timeout(None);
                        let _ = reply.send(Ok(conn));
                    }
                    tcp::State::Closed | tcp::State::TimeWait => {
                        let mut conn = conn;
                        conn.rx.notify_close = false;
                        let _ = reply.send(Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            "connection refused or timed out",
                        )));
                        done.push(*id);
                        continue;
                    }
                    _ => {
                        c.connecting = Some((reply, conn));
                        continue;
                    }
                }
            }
            // Client → remote.
            while !c.pending.is_empty() && socket.can_send() {
                let (front, _) = c.pending.as_slices();
                match socket.send_slice(front) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        c.pending.drain(..n);
                        c.window.add_permits(n);
                    }
                }
            }
            if c.client_finished && c.pending.is_empty() && !c.fin_sent {
                socket.close();
                c.fin_sent = true;
            }
            // Remote → client.
            if let Some(tx) = &c.to_client {
                while socket.can_recv() && tx.capacity() > 0 {
                    let mut buf = vec![0; CHUNK];
                    match socket.recv_slice(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.try_send(buf).is_err() {
                                break;
                            }
                        }
                    }
                }
                if !socket.may_recv() && socket.recv_queue() == 0 {
                    c.to_client = None; // end of stream
                }
            }
            if socket.state() == tcp::State::Closed && c.to_client.is_none() {
                done.push(*id);
            }
        }
        for id in done {
            if let Some(c) = self.conns.remove(&id) {
                // A client still sending learns at once that the connection is gone.
                c.window.close();
                self.sockets.remove(c.socket);
            }
        }
    }

    fn command(
        &mut self,
        cmd: Command,
        cmd_tx: &mpsc::UnboundedSender<Command>,
        wake: &Arc<Notify>,
    ) {
        match cmd {
            Command::Connect { dst, reply } => self.connect(dst, reply, cmd_tx, wake),
            Command::Data { id, data } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    if data.is_empty() {
                        c.client_finished = true;
                    } else {
                        c.pending.extend(data);
                    }
                }
            }
            Command::Close { id } => {
                if let Some(c) = self.conns.remove(&id) {
                    let socket = self.sockets.get_mut::<tcp::Socket>(c.socket);
                    // A connection closed in order finishes by itself; any other is reset.
                    if !c.fin_sent || socket.may_recv() {
                        socket.abort();
                    }
                    // Keep the socket until the FIN or RST is out; removed once closed.
                    self.conns.insert(
                        id,
                        Conn {
                            to_client: None,
                            pending: VecDeque::new(),
                            connecting: None,
                            ..c
                        },
                    );
                }
            }
            Command::Addresses(a) => self.set_addresses(&a),
        }
    }

    async fn run(
        mut self,
        mut from_device: mpsc::Receiver<Vec<u8>>,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
        cmd_tx: mpsc::UnboundedSender<Command>,
        wake: Arc<Notify>,
    ) {
        loop {
            let now = self.now();
            self.iface.poll(now, &mut self.queues, &mut self.sockets);
            self.service();
            // A second poll sends what servicing queued (data, FINs, RSTs) at once.
            self.iface.poll(now, &mut self.queues, &mut self.sockets);
            while let Some(p) = self.queues.tx.pop_front() {
                if self.to_device.try_send(p).is_err() {
                    // The data path is behind: drop (TCP retransmits).
                    break;
                }
            }
            self.queues.tx.clear();
            let delay = self
                .iface
                .poll_delay(self.now(), &self.sockets)
                .map(|d| Duration::from_millis(d.total_millis()))
                .unwrap_or(MAX_IDLE)
                .min(MAX_IDLE);
            tokio::select! {
                p = from_device.recv() => match p {
                    Some(p) => {
                        self.queues.rx.push_back(p);
                        while self.queues.rx.len() < 64 {
                            match from_device.try_recv() {
                                Ok(p) => self.queues.rx.push_back(p),
                                Err(_) => break,
                            }
                        }
                    }
                    // The data path is gone: so is the stack.
                    None => return,
                },
                Some(c) = cmd_rx.recv() => {
                    self.command(c, &cmd_tx, &wake);
                    while let Ok(c) = cmd_rx.try_recv() {
                        self.command(c, &cmd_tx, &wake);
                    }
                }
                _ = wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}
