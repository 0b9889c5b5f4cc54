//! The request handler: parses raw messages, answers MagicDNS names from the current view and
//! forwards the rest. Transport-independent: [`DnsServer`](super::DnsServer) feeds it UDP and
//! TCP messages, and [`MagicDns`] also implements hickory-server's
//! [`RequestHandler`] so it can sit behind any hickory listener.
//!
//! Malformed input never panics: a message shorter than a header, or one that is itself a
//! response, is dropped (and counted); a message whose header parses but whose body does not
//! gets FORMERR; so does a query without exactly one question.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::sync::watch;

use super::forward::{ForwardOptions, Forwarder};
use super::split::Routes;
use super::stats::DnsStats;
use super::view::{DnsView, Upstream};
use super::zone::{Resolution, Zone};
use super::DnsError;

/// Largest UDP response sent to clients (and EDNS size advertised to upstreams): the DNS Flag
/// Day 2020 value, which avoids IP fragmentation.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// Largest UDP response to a client without EDNS (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// Why a message got no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than a DNS header.
    TooShort,
    /// A response, not a query (answering it could start a loop or a reflection).
    NotAQuery,
}

/// The first step for a raw message.
#[derive(Debug)]
pub enum Parsed {
    /// A query to handle.
    Request(Box<Request>),
    /// The header was readable but not the rest: send this FORMERR response.
    FormErr(Vec<u8>),
    /// No answer.
    Drop(DropReason),
}

/// Parses a raw message received from `src` over `protocol`. Never panics.
pub fn parse_message(raw: &[u8], src: SocketAddr, protocol: Protocol) -> Parsed {
    let mut decoder = BinDecoder::new(raw);
    let Ok(header) = Header::read(&mut decoder) else {
        return Parsed::Drop(DropReason::TooShort);
    };
    if header.metadata.message_type == MessageType::Response {
        return Parsed::Drop(DropReason::NotAQuery);
    }
    match Request::from_bytes(raw.to_vec(), src, protocol) {
        Ok(req) => Parsed::Request(Box::new(req)),
        Err(_) => Parsed::FormErr(formerr(&header, &mut decoder)),
    }
}

/// A FORMERR response to a message with this header, echoing its question when readable.
fn formerr(header: &Header, decoder: &mut BinDecoder<'_>) -> Vec<u8> {
    let mut msg = Message::error_msg(
        header.metadata.id,
        header.metadata.op_code,
        ResponseCode::FormErr,
    );
    msg.metadata.recursion_desired = header.metadata.recursion_desired;
    msg.metadata.checking_disabled = header.metadata.checking_disabled;
    if header.counts.queries == 1 {
        if let Ok(q) = Queries::read(decoder, 1) {
            msg.add_queries(q.queries().iter().map(|lq| lq.original().clone()));
        }
    }
    msg.to_vec().unwrap_or_else(|_| {
        // Without the question the message is a bare header, which always encodes.
        let bare = Message::error_msg(
            header.metadata.id,
            header.metadata.op_code,
            ResponseCode::FormErr,
        );
        bare.to_vec().unwrap_or_default()
    })
}

/// The view compiled for lookups.
struct Compiled {
    zone: Zone,
    routes: Routes,
}

struct ViewState {
    rx: watch::Receiver<DnsView>,
    compiled: Arc<Compiled>,
    serial: u32,
}

/// The MagicDNS request handler.
pub struct MagicDns {
    view: Mutex<ViewState>,
    forwarder: Forwarder,
    stats: Arc<DnsStats>,
    own_addrs: Vec<SocketAddr>,
}

impl std::fmt::Debug for MagicDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MagicDns")
            .field("forwarder", &self.forwarder)
            .field("own_addrs", &self.own_addrs)
            .finish_non_exhaustive()
    }
}

/// A response handler that encodes the response (truncating to `max_size`) into a buffer.
#[derive(Clone)]
struct BufferResponder {
    max_size: u16,
    out: Arc<Mutex<Option<Vec<u8>>>>,
    stats: Arc<DnsStats>,
}

#[async_trait::async_trait]
impl ResponseHandler for BufferResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let info = {
            let mut encoder = BinEncoder::new(&mut bytes);
            encoder.set_max_size(self.max_size);
            response.destructive_emit(&mut encoder)?
        };
        if info.truncation {
            self.stats.truncated();
        }
        *self.out.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        Ok(info)
    }
}

/// The EDNS record of a response to a query that carried `req`.
fn response_edns(req: &Edns) -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(MAX_UDP_PAYLOAD);
    e.set_version(0);
    e.set_dnssec_ok(req.flags().dnssec_ok);
    e
}

/// A response's records.
struct Sections<'r> {
    rcode: ResponseCode,
    authoritative: bool,
    authentic_data: bool,
    answers: &'r [Record],
    authority: &'r [Record],
    additionals: &'r [Record],
}

impl Sections<'_> {
    fn error(rcode: ResponseCode) -> Sections<'static> {
        Sections {
            rcode,
            authoritative: false,
            authentic_data: false,
            answers: &[],
            authority: &[],
            additionals: &[],
        }
    }
}

impl MagicDns {
    /// A handler answering from `view` (the newest value is used for every query; when the
    /// sender is dropped the last view stays) and forwarding with `forward`. `own_addrs` are
    /// the resolver's listen addresses: upstreams equal to one of them are skipped, so a
    /// misconfiguration cannot make the resolver query itself.
    pub fn new(
        mut view: watch::Receiver<DnsView>,
        forward: ForwardOptions,
        stats: Arc<DnsStats>,
        own_addrs: Vec<SocketAddr>,
    ) -> Result<MagicDns, DnsError> {
        let forwarder = Forwarder::new(forward, stats.clone())?;
        let first = view.borrow_and_update().clone();
        let compiled = Arc::new(Self::compile(&first, 1));
        Ok(MagicDns {
            view: Mutex::new(ViewState {
                rx: view,
                compiled,
                serial: 1,
            }),
            forwarder,
            stats,
            own_addrs,
        })
    }

    fn compile(view: &DnsView, serial: u32) -> Compiled {
        Compiled {
            zone: Zone::new(view, serial),
            routes: Routes::new(&view.split, &view.global),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<DnsStats> {
        &self.stats
    }

    /// The compiled newest view.
    fn current(&self) -> Arc<Compiled> {
        let mut st = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if st.rx.has_changed().unwrap_or(false) {
            let view = st.rx.borrow_and_update().clone();
            st.serial = st.serial.wrapping_add(1).max(1);
            st.compiled = Arc::new(Self::compile(&view, st.serial));
        }
        st.compiled.clone()
    }

    /// Answers one raw message as the server would: the encoded response (truncated with TC
    /// set when a UDP answer exceeds the client's limit), or `None` when the message is
    /// dropped. Counts it in [`stats`](Self::stats).
    pub async fn answer(&self, raw: &[u8], src: SocketAddr, protocol: Protocol) -> Option<Vec<u8>> {
        self.stats.query(protocol == Protocol::Tcp);
        let request = match parse_message(raw, src, protocol) {
            Parsed::Request(r) => r,
            Parsed::FormErr(bytes) => {
                self.stats.rcode(ResponseCode::FormErr);
                return Some(bytes);
            }
            Parsed::Drop(reason) => {
                log::trace!("dns: dropped message from {src}: {reason:?}");
                self.stats.dropped();
                return None;
            }
        };
        let max_size = match protocol {
            Protocol::Udp => request.max_payload().min(MAX_UDP_PAYLOAD),
            _ => u16::MAX,
        };
        let out = Arc::new(Mutex::new(None));
        let responder = BufferResponder {
            max_size,
            out: out.clone(),
            stats: self.stats.clone(),
        };
        self.handle(&request, responder).await;
        let bytes = out.lock().unwrap_or_else(|p| p.into_inner()).take();
        bytes
    }

    async fn handle<R: ResponseHandler>(&self, request: &Request, responder: R) -> ResponseInfo {
        let edns = request.edns.as_ref().map(response_edns);
        let meta = &request.metadata;
        if meta.message_type != MessageType::Query {
            return self
                .send(
                    request,
                    responder,
                    edns.as_ref(),
                    Sections::error(ResponseCode::FormErr),
                )
                .await;
        }
        if meta.op_code != OpCode::Query {
            return self
                .send(
                    request,
                    responder,
                    edns.as_ref(),
                    Sections::error(ResponseCode::NotImp),
                )
                .await;
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return self
                .send(
                    request,
                    responder,
                    edns.as_ref(),
                    Sections::error(ResponseCode::BADVERS),
                )
                .await;
        }
        let [query] = request.queries.queries() else {
            return self
                .send(
                    request,
                    responder,
                    edns.as_ref(),
                    Sections::error(ResponseCode::FormErr),
                )
                .await;
        };
        let compiled = self.current();
        let qname = query.original().name();
        match compiled
            .zone
            .resolve(qname, query.query_type(), query.query_class())
        {
            Resolution::Local(ans) => {
                self.stats.answered_local();
                let sections = Sections {
                    rcode: ans.rcode,
                    authoritative: ans.authoritative,
                    authentic_data: false,
                    answers: &ans.answers,
                    authority: &ans.authority,
                    additionals: &[],
                };
                self.send(request, responder, edns.as_ref(), sections).await
            }
            Resolution::Forward => {
                let route = compiled.routes.choose(qname);
                let upstreams: Vec<Upstream> = route
                    .upstreams()
                    .iter()
                    .filter(|u| !matches!(u, Upstream::Dns(a) if self.own_addrs.contains(a)))
                    .cloned()
                    .collect();
                drop(compiled);
                self.forward(request, responder, edns.as_ref(), &upstreams)
                    .await
            }
        }
    }

    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        responder: R,
        edns: Option<&Edns>,
        upstreams: &[Upstream],
    ) -> ResponseInfo {
        let servfail = Sections::error(ResponseCode::ServFail);
        if upstreams.is_empty() {
            log::debug!(
                "dns: no upstream nameserver for {:?}",
                request.queries.queries()
            );
            return self.send(request, responder, edns, servfail).await;
        }
        let mut query = Message::query();
        query.metadata.recursion_desired = request.metadata.recursion_desired;
        query.metadata.checking_disabled = request.metadata.checking_disabled;
        query.add_queries(
            request
                .queries
                .queries()
                .iter()
                .map(|q| q.original().clone()),
        );
        let mut up_edns = Edns::new();
        up_edns.set_max_payload(MAX_UDP_PAYLOAD);
        up_edns.set_dnssec_ok(request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
        query.set_edns(up_edns);
        match self.forwarder.forward(upstreams, &query).await {
            Ok(resp) => {
                self.stats.forwarded();
                let sections = Sections {
                    rcode: resp.metadata.response_code,
                    authoritative: resp.metadata.authoritative,
                    authentic_data: resp.metadata.authentic_data,
                    answers: &resp.answers,
                    authority: &resp.authorities,
                    additionals: &resp.additionals,
                };
                self.send(request, responder, edns, sections).await
            }
            Err(e) => {
                log::debug!("dns: forwarding failed: {e}");
                self.send(request, responder, edns, servfail).await
            }
        }
    }

    async fn send<R: ResponseHandler>(
        &self,
        request: &Request,
        mut responder: R,
        edns: Option<&Edns>,
        s: Sections<'_>,
    ) -> ResponseInfo {
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.response_code = s.rcode;
        meta.authoritative = s.authoritative;
        meta.authentic_data = s.authentic_data;
        meta.recursion_available = true;
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = edns {
            builder.edns(e);
        }
        let response = builder.build(
            meta,
            s.answers.iter(),
            s.authority.iter(),
            std::iter::empty(),
            s.additionals.iter(),
        );
        self.stats.rcode(s.rcode);
        match responder.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                log::debug!("dns: cannot send response: {e}");
                let mut failed = meta;
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for MagicDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.handle(request, response_handle).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::view::Host;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RData, RecordType};
    use proptest::prelude::*;

    fn src() -> SocketAddr {
        "127.0.0.1:5353".parse().unwrap()
    }

    fn view() -> DnsView {
        DnsView {
            domain: "tailnet.example".into(),
            self_node: Some(Host {
                name: "gw".into(),
                addrs: vec!["100.64.0.1".parse().unwrap()],
            }),
            peers: (0..100)
                .map(|i| Host {
                    name: format!("peer{i}"),
                    addrs: vec![format!("100.64.1.{i}").parse().unwrap()],
                })
                .chain(std::iter::once(Host {
                    name: "big".into(),
                    addrs: (0..120u16)
                        .map(|i| {
                            std::net::IpAddr::V6(std::net::Ipv6Addr::new(
                                0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 1, i,
                            ))
                        })
                        .collect(),
                }))
                .collect(),
            split: vec![],
            global: vec![],
        }
    }

    fn handler(view: DnsView) -> (watch::Sender<DnsView>, MagicDns) {
        let (tx, rx) = watch::channel(view);
        let h = MagicDns::new(
            rx,
            ForwardOptions::default(),
            Arc::new(DnsStats::new()),
            vec![],
        )
        .unwrap();
        (tx, h)
    }

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    async fn ask(h: &MagicDns, raw: &[u8], proto: Protocol) -> Message {
        let bytes = h.answer(raw, src(), proto).await.expect("an answer");
        Message::from_vec(&bytes).unwrap()
    }

    #[tokio::test]
    async fn local_answer_over_the_wire_format() {
        let (_tx, h) = handler(view());
        let raw = query("peer7.tailnet.example.", RecordType::A, None);
        let r = ask(&h, &raw, Protocol::Udp).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert!(r.metadata.recursion_desired && r.metadata.recursion_available);
        assert_eq!(r.answers.len(), 1);
        assert!(matches!(&r.answers[0].data, RData::A(a) if a.0.octets() == [100, 64, 1, 7]));
        assert_eq!(&raw[0..2], &r.metadata.id.to_be_bytes());
        assert!(
            r.edns.is_none(),
            "no OPT in the answer to a query without one"
        );
        // With EDNS the answer carries OPT.
        let r = ask(
            &h,
            &query("peer7.tailnet.example.", RecordType::A, Some(4096)),
            Protocol::Udp,
        )
        .await;
        assert_eq!(
            r.edns.as_ref().map(Edns::max_payload),
            Some(MAX_UDP_PAYLOAD)
        );
        let r = ask(
            &h,
            &query("nope.tailnet.example.", RecordType::A, None),
            Protocol::Udp,
        )
        .await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.authorities.len(), 1);
        let s = h.stats().snapshot();
        assert_eq!((s.queries, s.answered_local, s.nxdomain), (3, 3, 1));
    }

    #[tokio::test]
    async fn large_answers_truncate_over_udp_only() {
        let (_tx, h) = handler(view());
        // 120 AAAA records: ~3.4 KB.
        let raw = query("big.tailnet.example.", RecordType::AAAA, None);
        let udp = h.answer(&raw, src(), Protocol::Udp).await.unwrap();
        assert!(udp.len() <= 512, "{}", udp.len());
        let r = Message::from_vec(&udp).unwrap();
        assert!(r.metadata.truncation);
        let raw_edns = query("big.tailnet.example.", RecordType::AAAA, Some(4096));
        let udp = h.answer(&raw_edns, src(), Protocol::Udp).await.unwrap();
        assert!(udp.len() <= usize::from(MAX_UDP_PAYLOAD), "{}", udp.len());
        assert!(Message::from_vec(&udp).unwrap().metadata.truncation);
        let tcp = ask(&h, &raw, Protocol::Tcp).await;
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 120);
        assert_eq!(h.stats().snapshot().truncated, 2);
    }

    #[tokio::test]
    async fn malformed_messages() {
        let (_tx, h) = handler(view());
        // Shorter than a header: dropped.
        assert!(h.answer(&[1, 2, 3], src(), Protocol::Udp).await.is_none());
        // A response: dropped.
        let mut resp = Message::response(7, OpCode::Query);
        resp.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
        assert!(h
            .answer(&resp.to_vec().unwrap(), src(), Protocol::Udp)
            .await
            .is_none());
        // Header claims a question that is not there: FORMERR with the same ID.
        let mut bad = query("peer1.tailnet.example.", RecordType::A, None);
        bad.truncate(20);
        let r = ask(&h, &bad, Protocol::Udp).await;
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.metadata.id, u16::from_be_bytes([bad[0], bad[1]]));
        // A readable question followed by a missing answer record: FORMERR echoing it.
        let mut bad = query("peer1.tailnet.example.", RecordType::A, None);
        bad[7] = 1; // ANCOUNT = 1
        let r = ask(&h, &bad, Protocol::Udp).await;
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.queries.len(), 1);
        // Two questions: FORMERR.
        let mut two = Message::query();
        two.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("b.").unwrap(), RecordType::A));
        let r = ask(&h, &two.to_vec().unwrap(), Protocol::Udp).await;
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        // No question: FORMERR.
        let none = Message::query();
        let r = ask(&h, &none.to_vec().unwrap(), Protocol::Udp).await;
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        // Another opcode: NOTIMP.
        let mut notify = Message::new(9, MessageType::Query, OpCode::Notify);
        notify.add_query(Query::query(
            Name::from_ascii("a.").unwrap(),
            RecordType::SOA,
        ));
        let r = ask(&h, &notify.to_vec().unwrap(), Protocol::Udp).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        // EDNS version 1: BADVERS.
        let mut v1 = Message::query();
        v1.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
        let mut e = Edns::new();
        e.set_version(1);
        v1.set_edns(e);
        let r = ask(&h, &v1.to_vec().unwrap(), Protocol::Udp).await;
        // BADVERS and BADSIG share code 16; the decoder names it BADSIG.
        assert_eq!(u16::from(r.metadata.response_code), 16);
        assert!(r.edns.is_some(), "the extended code needs OPT");
        let s = h.stats().snapshot();
        assert_eq!(s.dropped, 2);
        assert_eq!(s.formerr, 4);
        assert_eq!(s.notimp, 1);
        // Still answering.
        let r = ask(
            &h,
            &query("gw.tailnet.example.", RecordType::A, None),
            Protocol::Udp,
        )
        .await;
        assert_eq!(r.answers.len(), 1);
    }

    #[tokio::test]
    async fn no_upstream_is_servfail() {
        let (_tx, h) = handler(view());
        let r = ask(
            &h,
            &query("example.org.", RecordType::A, None),
            Protocol::Udp,
        )
        .await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(h.stats().snapshot().servfail, 1);
    }

    #[tokio::test]
    async fn refuses_to_query_itself() {
        let own: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let mut v = view();
        v.global = vec![Upstream::Dns(own)];
        let (_tx, rx) = watch::channel(v);
        let h = MagicDns::new(
            rx,
            ForwardOptions::default(),
            Arc::new(DnsStats::new()),
            vec![own],
        )
        .unwrap();
        let r = ask(
            &h,
            &query("example.org.", RecordType::A, None),
            Protocol::Udp,
        )
        .await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(
            h.stats().snapshot().upstream_failures,
            0,
            "nothing was sent"
        );
    }

    #[tokio::test]
    async fn view_updates_apply_to_the_next_query() {
        let (tx, h) = handler(view());
        let raw = query("renamed.tailnet.example.", RecordType::A, None);
        assert_eq!(
            ask(&h, &raw, Protocol::Udp).await.metadata.response_code,
            ResponseCode::NXDomain
        );
        tx.send_modify(|v| v.peers[0].name = "renamed".into());
        let r = ask(&h, &raw, Protocol::Udp).await;
        assert_eq!(r.answers.len(), 1);
        // The SOA serial moved on.
        let r = ask(
            &h,
            &query("gone.tailnet.example.", RecordType::A, None),
            Protocol::Udp,
        )
        .await;
        match &r.authorities[0].data {
            RData::SOA(soa) => assert_eq!(soa.serial, 2),
            other => panic!("{other:?}"),
        }
        // Without a sender the last view stays.
        drop(tx);
        let r = ask(&h, &raw, Protocol::Udp).await;
        assert_eq!(r.answers.len(), 1);
    }

    #[tokio::test]
    async fn works_as_a_hickory_request_handler() {
        let (_tx, h) = handler(view());
        let raw = query("peer3.tailnet.example.", RecordType::A, None);
        let Parsed::Request(req) = parse_message(&raw, src(), Protocol::Tcp) else {
            panic!("not parsed");
        };
        let out = Arc::new(Mutex::new(None));
        let responder = BufferResponder {
            max_size: u16::MAX,
            out: out.clone(),
            stats: h.stats().clone(),
        };
        let info = h
            .handle_request::<_, hickory_server::net::runtime::TokioTime>(&req, responder)
            .await;
        assert_eq!(info.response_code, ResponseCode::NoError);
        assert_eq!(info.counts().answers, 1);
        let bytes = out.lock().unwrap().take().unwrap();
        assert_eq!(Message::from_vec(&bytes).unwrap().answers.len(), 1);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random bytes never panic the parse path or the handler.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let rt = runtime();
            let (_tx, h) = handler(view());
            let _ = parse_message(&bytes, src(), Protocol::Udp);
            rt.block_on(async {
                let _ = h.answer(&bytes, src(), Protocol::Udp).await;
                let _ = h.answer(&bytes, src(), Protocol::Tcp).await;
            });
        }

        /// A valid query header (QR=0, one question) with random bytes after it goes deeper
        /// into the parser; the answer, if any, always parses and keeps the ID.
        #[test]
        fn random_bodies_never_panic(
            id in any::<u16>(),
            flags in any::<u16>(),
            counts in proptest::array::uniform3(0u16..4),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let rt = runtime();
            let (_tx, h) = handler(view());
            let mut raw = Vec::new();
            raw.extend_from_slice(&id.to_be_bytes());
            raw.extend_from_slice(&(flags & 0x7fff).to_be_bytes());
            raw.extend_from_slice(&1u16.to_be_bytes());
            for c in counts {
                raw.extend_from_slice(&c.to_be_bytes());
            }
            raw.extend_from_slice(&body);
            let out = rt.block_on(h.answer(&raw, src(), Protocol::Udp));
            if let Some(resp) = out {
                prop_assert!(resp.len() <= usize::from(MAX_UDP_PAYLOAD));
                prop_assert_eq!(&resp[0..2], &id.to_be_bytes());
                let mut d = BinDecoder::new(&resp);
                prop_assert!(Header::read(&mut d).is_ok());
            }
        }
    }
}
