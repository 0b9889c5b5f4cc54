//! UPnP IGD: SSDP discovery (multicast and unicast M-SEARCH), the device description's
//! WANIPConnection/WANPPPConnection service, and SOAP GetExternalIPAddress, AddPortMapping
//! and DeletePortMapping over [`super::http`]. The XML is scanned tolerantly, no parser.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rand_core::RngCore;

use super::http::{self, Url};
use super::retransmit::{retransmit, Reply};
use super::{Handle, Mapping, Protocol, REQUESTED_LIFETIME};

/// The SSDP multicast group and port.
pub const SSDP_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);

/// What M-SEARCH asks for: the gateway device and its WAN IP connection services.
pub const SEARCH_TARGETS: [&str; 3] = [
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANIPConnection:2",
];

/// The most an SSDP reply may take.
const MAX_SSDP: usize = 2048;

/// How long a permanent UPnP lease is treated as valid before it is renewed.
const PERMANENT_LEASE_RENEWAL: Duration = Duration::from_secs(3600);

/// An M-SEARCH request for `st`.
pub fn msearch(st: &str) -> String {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n\
         MX: 1\r\nST: {st}\r\n\r\n"
    )
}

/// A useful SSDP answer: where the device description is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsdpReply {
    /// The LOCATION header: the device description URL.
    pub location: String,
    /// The search target answered.
    pub st: String,
}

/// Whether a search target (or notification type) is an Internet gateway or its WAN
/// connection service.
fn is_igd_target(st: &str) -> bool {
    [
        "InternetGatewayDevice:",
        "WANIPConnection:",
        "WANPPPConnection:",
    ]
    .iter()
    .any(|t| st.contains(t))
}

/// Parses an SSDP reply: `HTTP/1.1 200`, an IGD search target and a LOCATION.
pub fn parse_ssdp_reply(b: &[u8]) -> Result<SsdpReply> {
    if b.len() > MAX_SSDP {
        bail!("SSDP reply too long ({} bytes)", b.len());
    }
    let (status, headers) = http::parse_head(b)?;
    if status != 200 {
        bail!("SSDP status {status}");
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let st = get("st").unwrap_or_default();
    if !is_igd_target(&st) {
        bail!("SSDP reply for another target {st:?}");
    }
    let location = get("location").ok_or_else(|| anyhow!("SSDP reply without LOCATION"))?;
    Url::parse(&location)?;
    Ok(SsdpReply { location, st })
}

/// Searches for an IGD at `gateway`: M-SEARCH for each target to the multicast group (out of
/// the interface toward the gateway) and to the gateway's port 1900 directly, resent with
/// backoff, until the gateway answers or `timeout` passes.
pub async fn discover(gateway: Ipv4Addr, timeout: Duration) -> Result<SsdpReply> {
    let local = super::local_addr_toward(gateway)?;
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    sock.bind(&SocketAddr::from((local, 0)).into())?;
    sock.set_multicast_if_v4(&local)?;
    sock.set_multicast_ttl_v4(2)?;
    sock.set_nonblocking(true)?;
    let sock = tokio::net::UdpSocket::from_std(sock.into())?;
    let sock = &sock;
    let send = || async move {
        let mut err = None;
        for st in SEARCH_TARGETS {
            let m = msearch(st);
            for to in [SocketAddr::V4(SSDP_ADDR), SocketAddr::from((gateway, 1900))] {
                if let Err(e) = sock.send_to(m.as_bytes(), to).await {
                    err = Some(anyhow!(e).context(format!("sending M-SEARCH to {to}")));
                }
            }
        }
        err
    };
    let mut buf = [0u8; MAX_SSDP + 1];
    let reply = retransmit(
        sock,
        timeout,
        &mut buf,
        "receiving SSDP replies",
        send,
        |b, from| {
            if from.ip() != gateway {
                return Reply::Ignore;
            }
            match parse_ssdp_reply(b) {
                Ok(reply) => Reply::Done(reply),
                Err(e) => Reply::Note(e),
            }
        },
    )
    .await;
    reply.map_err(|no| {
        anyhow!(
            "no UPnP IGD answered from {gateway} within {timeout:?}{}",
            no.why()
        )
    })
}

/// Whether an UPnP IGD at `gateway` answers SSDP within `timeout`.
pub async fn probe(gateway: Ipv4Addr, timeout: Duration) -> bool {
    discover(gateway, timeout).await.is_ok()
}

/// Finds the first element called `name` (any namespace prefix) at or after byte `from`:
/// its text content (trimmed) and the byte offset after its end tag.
fn element<'a>(xml: &'a str, name: &str, from: usize) -> Option<(&'a str, usize)> {
    let mut i = from;
    while let Some(off) = xml.get(i..)?.find('<') {
        let start = i + off + 1;
        let rest = &xml[start..];
        let name_end = rest
            .find(|c: char| c == '>' || c == '/' || c.is_whitespace())
            .unwrap_or(rest.len());
        let tag = &rest[..name_end];
        let local = tag.rsplit(':').next().unwrap_or(tag);
        if local == name && !tag.is_empty() {
            let gt = rest.find('>')?;
            let content_start = start + gt + 1;
            if rest[..gt].ends_with('/') {
                return Some(("", content_start));
            }
            // The end tag: `</tag` followed by `>` or white space (not `</tagLonger>`).
            let close = format!("</{tag}");
            let mut end = content_start;
            loop {
                end += xml[end..].find(&close)?;
                let next = xml[end + close.len()..].chars().next();
                if next.is_some_and(|c| c == '>' || c.is_whitespace()) {
                    break;
                }
                end += close.len();
            }
            let after = xml[end..].find('>').map_or(xml.len(), |g| end + g + 1);
            return Some((xml[content_start..end].trim(), after));
        }
        i = start;
    }
    None
}

/// The text of the first element called `name`, entities decoded.
pub fn element_text(xml: &str, name: &str) -> Option<String> {
    element(xml, name, 0).map(|(t, _)| unescape(t))
}

/// Decodes the five predefined XML entities.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Escapes text for XML content.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A WAN connection service from a device description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its serviceType URN (WANIPConnection:1/2 or WANPPPConnection:1).
    pub service_type: String,
    /// Its controlURL as written (relative or absolute).
    pub control_url: String,
}

/// The WAN connection service to use from a device description: WANIPConnection (version 2
/// first), else WANPPPConnection.
pub fn find_wan_service(xml: &str) -> Option<Service> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some((block, next)) = element(xml, "service", at) {
        at = next;
        let (Some(st), Some(ctl)) = (
            element_text(block, "serviceType"),
            element_text(block, "controlURL"),
        ) else {
            continue;
        };
        let rank = if st.contains(":service:WANIPConnection:2") {
            0
        } else if st.contains(":service:WANIPConnection:") {
            1
        } else if st.contains(":service:WANPPPConnection:") {
            2
        } else {
            continue;
        };
        if !ctl.is_empty() {
            found.push((
                rank,
                Service {
                    service_type: st,
                    control_url: ctl,
                },
            ));
        }
    }
    found.sort_by_key(|(rank, _)| *rank);
    found.into_iter().next().map(|(_, s)| s)
}

/// A SOAP request body for `action` of `service_type` with `args`.
pub fn soap_envelope(service_type: &str, action: &str, args: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (k, v) in args {
        body.push_str(&format!("<{k}>{}</{k}>", escape(v)));
    }
    format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:{action} xmlns:u=\"{}\">{body}</u:{action}></s:Body></s:Envelope>\r\n",
        escape(service_type)
    )
}

/// A UPnP error from a SOAP fault (e.g. 718 ConflictInMappingEntry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("UPnP {action} failed: error {code} ({description})")]
pub struct UpnpError {
    /// The action called.
    pub action: String,
    /// The UPnP errorCode (0 if the fault had none).
    pub code: u32,
    /// The errorDescription.
    pub description: String,
}

/// Interprets a SOAP response: the body on 200, a [`UpnpError`] from a fault otherwise.
pub fn soap_result(action: &str, resp: &http::Response) -> Result<String> {
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    if resp.status == 200 && element(&body, "Fault", 0).is_none() {
        return Ok(body);
    }
    let code = element_text(&body, "errorCode")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let description = element_text(&body, "errorDescription")
        .unwrap_or_else(|| format!("HTTP status {}", resp.status));
    Err(UpnpError {
        action: action.to_string(),
        code,
        description,
    }
    .into())
}

/// An Internet gateway device's WAN connection service, ready for SOAP calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Igd {
    /// The device description URL.
    pub location: Url,
    /// The service's control URL.
    pub control_url: Url,
    /// The service type.
    pub service_type: String,
}

impl Igd {
    /// Calls `action` with `args`; returns the response body.
    pub async fn call(
        &self,
        action: &str,
        args: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<String> {
        let body = soap_envelope(&self.service_type, action, args);
        let soap_action = format!("\"{}#{action}\"", self.service_type);
        let resp = http::request(
            "POST",
            &self.control_url,
            &[
                ("Content-Type", "text/xml; charset=\"utf-8\""),
                ("SOAPAction", &soap_action),
            ],
            body.as_bytes(),
            timeout,
        )
        .await?;
        soap_result(action, &resp)
    }

    /// GetExternalIPAddress.
    pub async fn external_ip(&self, timeout: Duration) -> Result<Ipv4Addr> {
        let body = self.call("GetExternalIPAddress", &[], timeout).await?;
        let text = element_text(&body, "NewExternalIPAddress")
            .ok_or_else(|| anyhow!("GetExternalIPAddress: no NewExternalIPAddress"))?;
        let ip: Ipv4Addr = text
            .parse()
            .with_context(|| format!("GetExternalIPAddress: bad address {text:?}"))?;
        if ip.is_unspecified() {
            bail!("the gateway has no external address");
        }
        Ok(ip)
    }

    /// AddPortMapping for UDP `external_port` → `client:internal_port`, lease in seconds
    /// (0: permanent).
    pub async fn add_udp(
        &self,
        external_port: u16,
        client: Ipv4Addr,
        internal_port: u16,
        lease: u32,
        timeout: Duration,
    ) -> Result<()> {
        let (ext, int, client, lease) = (
            external_port.to_string(),
            internal_port.to_string(),
            client.to_string(),
            lease.to_string(),
        );
        self.call(
            "AddPortMapping",
            &[
                ("NewRemoteHost", ""),
                ("NewExternalPort", &ext),
                ("NewProtocol", "UDP"),
                ("NewInternalPort", &int),
                ("NewInternalClient", &client),
                ("NewEnabled", "1"),
                ("NewPortMappingDescription", "tailgate"),
                ("NewLeaseDuration", &lease),
            ],
            timeout,
        )
        .await
        .map(drop)
    }

    /// DeletePortMapping for UDP `external_port`.
    pub async fn delete_udp(&self, external_port: u16, timeout: Duration) -> Result<()> {
        let ext = external_port.to_string();
        self.call(
            "DeletePortMapping",
            &[
                ("NewRemoteHost", ""),
                ("NewExternalPort", &ext),
                ("NewProtocol", "UDP"),
            ],
            timeout,
        )
        .await
        .map(drop)
    }
}

/// Discovers the IGD at `gateway` and reads its description.
pub async fn find_igd(gateway: Ipv4Addr, timeout: Duration) -> Result<Igd> {
    let deadline = Instant::now() + timeout;
    let reply = discover(gateway, timeout).await?;
    let location = Url::parse(&reply.location)?;
    let left = deadline.saturating_duration_since(Instant::now());
    let resp = http::request("GET", &location, &[], &[], left).await?;
    if resp.status != 200 {
        bail!("GET {} returned HTTP {}", reply.location, resp.status);
    }
    let xml = String::from_utf8_lossy(&resp.body);
    let service = find_wan_service(&xml).ok_or_else(|| {
        anyhow!(
            "{} describes no WANIPConnection or WANPPPConnection service",
            reply.location
        )
    })?;
    // UPnP 1.0 descriptions may give a URLBase for relative URLs.
    let base = match element_text(&xml, "URLBase").filter(|b| !b.is_empty()) {
        Some(b) => Url::parse(&b)?,
        None => location.clone(),
    };
    Ok(Igd {
        control_url: base.join(&service.control_url)?,
        location,
        service_type: service.service_type,
    })
}

/// Asks the IGD at `gateway` to forward UDP `local_port` (same external port if free, else a
/// random one) to our LAN address for two hours (permanently if only that is supported).
pub async fn map_udp(gateway: Ipv4Addr, local_port: u16, timeout: Duration) -> Result<Mapping> {
    tokio::time::timeout(timeout, async {
        let igd = find_igd(gateway, timeout).await?;
        add(&igd, gateway, local_port, local_port, timeout).await
    })
    .await
    .map_err(|_| anyhow!("UPnP mapping timed out after {timeout:?}"))?
}

/// AddPortMapping, retrying another external port on a conflict and a permanent lease if
/// only those are supported.
async fn add(
    igd: &Igd,
    gateway: Ipv4Addr,
    local_port: u16,
    first_port: u16,
    timeout: Duration,
) -> Result<Mapping> {
    let local = super::local_addr_toward(gateway)?;
    let external_ip = igd.external_ip(timeout).await?;
    let mut lease = REQUESTED_LIFETIME.as_secs() as u32;
    let mut port = first_port;
    let mut tries = 0;
    loop {
        tries += 1;
        match igd.add_udp(port, local, local_port, lease, timeout).await {
            Ok(()) => break,
            Err(e) if tries < 5 => match e.downcast_ref::<UpnpError>().map(|u| u.code) {
                // OnlyPermanentLeasesSupported.
                Some(725) if lease != 0 => lease = 0,
                // ConflictInMappingEntry, or a port the gateway will not give out.
                Some(718) | Some(716) | Some(729) | Some(606) => {
                    port = 1024 + (rand_core::OsRng.next_u32() % (65536 - 1024)) as u16;
                }
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    Ok(Mapping {
        protocol: Protocol::Upnp,
        external: SocketAddr::V4(SocketAddrV4::new(external_ip, port)),
        lifetime: if lease == 0 {
            PERMANENT_LEASE_RENEWAL
        } else {
            Duration::from_secs(lease.into())
        },
        internal_port: local_port,
        gateway,
        local,
        granted_at: Instant::now(),
        handle: Handle::Upnp {
            control_url: format!(
                "http://{}:{}{}",
                igd.control_url.host, igd.control_url.port, igd.control_url.path
            ),
            service_type: igd.service_type.clone(),
        },
    })
}

/// The IGD a mapping was made with.
fn igd_of(mapping: &Mapping) -> Result<Igd> {
    let Handle::Upnp {
        control_url,
        service_type,
    } = &mapping.handle
    else {
        bail!("not a UPnP mapping");
    };
    let control_url = Url::parse(control_url)?;
    Ok(Igd {
        location: control_url.clone(),
        control_url,
        service_type: service_type.clone(),
    })
}

/// Renews a UPnP mapping: AddPortMapping again for the same external port.
pub async fn renew(mapping: &Mapping, timeout: Duration) -> Result<Mapping> {
    let igd = igd_of(mapping)?;
    tokio::time::timeout(
        timeout,
        add(
            &igd,
            mapping.gateway,
            mapping.internal_port,
            mapping.external.port(),
            timeout,
        ),
    )
    .await
    .map_err(|_| anyhow!("UPnP renewal timed out after {timeout:?}"))?
}

/// Deletes a UPnP mapping (DeletePortMapping).
pub async fn unmap(mapping: &Mapping, timeout: Duration) -> Result<()> {
    igd_of(mapping)?
        .delete_udp(mapping.external.port(), timeout)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device><serviceList><service>
<serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList><deviceList><device>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType>
<controlURL>/ctl/PPP</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn?a=1&amp;b=2</controlURL><eventSubURL/></service>
</serviceList></device></deviceList></device></root>"#;

    #[test]
    fn msearch_has_the_ssdp_layout() {
        assert_eq!(
            msearch("urn:schemas-upnp-org:device:InternetGatewayDevice:1"),
            "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n\
             MX: 1\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
        );
    }

    #[test]
    fn ssdp_replies_parse() {
        let r = parse_ssdp_reply(
            b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n\
              ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\n\
              Location: http://192.168.5.1:34229/rootDesc.xml\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.location, "http://192.168.5.1:34229/rootDesc.xml");
        // Another device type, no location, a NOTIFY, junk.
        for bad in [
            &b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:MediaRenderer:1\r\nLOCATION: http://a/\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:service:WANIPConnection:2\r\n\r\n",
            b"NOTIFY * HTTP/1.1\r\nNT: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:service:WANIPConnection:1\r\nLOCATION: https://a/\r\n\r\n",
            b"\xff\xfe",
            b"",
        ] {
            assert!(parse_ssdp_reply(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_wan_ip_service_is_found_in_a_description() {
        assert_eq!(
            find_wan_service(DESC),
            Some(Service {
                service_type: "urn:schemas-upnp-org:service:WANIPConnection:1".into(),
                control_url: "/ctl/IPConn?a=1&b=2".into(),
            })
        );
        let ppp_only = DESC.replace("WANIPConnection", "WANIPv6FirewallControl");
        assert_eq!(find_wan_service(&ppp_only).unwrap().control_url, "/ctl/PPP");
        assert_eq!(find_wan_service("<root><service></service>"), None);
        assert_eq!(
            find_wan_service(
                "<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1"
            ),
            None
        );
        assert_eq!(find_wan_service(""), None);
    }

    #[test]
    fn soap_requests_and_responses() {
        let env = soap_envelope(
            "urn:schemas-upnp-org:service:WANIPConnection:1",
            "DeletePortMapping",
            &[
                ("NewRemoteHost", ""),
                ("NewExternalPort", "41641"),
                ("NewProtocol", "UDP"),
            ],
        );
        assert!(
            env.contains(
                "<u:DeletePortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">\
             <NewRemoteHost></NewRemoteHost><NewExternalPort>41641</NewExternalPort>\
             <NewProtocol>UDP</NewProtocol></u:DeletePortMapping>"
            ),
            "{env}"
        );
        let ok = http::Response {
            status: 200,
            headers: vec![],
            body: b"<s:Envelope><s:Body><u:GetExternalIPAddressResponse xmlns:u=\"x\">\
                    <NewExternalIPAddress>11.99.0.5</NewExternalIPAddress>\
                    </u:GetExternalIPAddressResponse></s:Body></s:Envelope>"
                .to_vec(),
        };
        let body = soap_result("GetExternalIPAddress", &ok).unwrap();
        assert_eq!(
            element_text(&body, "NewExternalIPAddress").as_deref(),
            Some("11.99.0.5")
        );
        let fault = http::Response {
            status: 500,
            headers: vec![],
            body: b"<s:Envelope><s:Body><s:Fault><faultcode>s:Client</faultcode><detail>\
                    <UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode>\
                    <errorDescription>ConflictInMappingEntry</errorDescription></UPnPError>\
                    </detail></s:Fault></s:Body></s:Envelope>"
                .to_vec(),
        };
        let e = soap_result("AddPortMapping", &fault).unwrap_err();
        let u = e.downcast_ref::<UpnpError>().unwrap();
        assert_eq!(
            (u.code, u.description.as_str()),
            (718, "ConflictInMappingEntry")
        );
        let junk = http::Response {
            status: 404,
            headers: vec![],
            body: b"<html>nope".to_vec(),
        };
        let e = soap_result("AddPortMapping", &junk).unwrap_err();
        assert!(e.to_string().contains("HTTP status 404"), "{e}");
    }

    #[test]
    fn element_scan_is_tolerant() {
        assert_eq!(element_text("<a:b>x</a:b>", "b").as_deref(), Some("x"));
        assert_eq!(element_text("<b/>", "b").as_deref(), Some(""));
        assert_eq!(
            element_text("<b attr=\"1\"> y </b>", "b").as_deref(),
            Some("y")
        );
        assert_eq!(element_text("<bb>no</bb>", "b"), None);
        assert_eq!(
            element_text("<b><bc>1</bc></b>", "b").as_deref(),
            Some("<bc>1</bc>")
        );
        assert_eq!(element_text("<b>x</bc>", "b"), None);
        assert_eq!(element_text("<b>unterminated", "b"), None);
        assert_eq!(element_text("<", "b"), None);
        assert_eq!(element_text("<é<b>ü</b>", "b").as_deref(), Some("ü"));
    }

    proptest::proptest! {
        #[test]
        fn random_ssdp_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_ssdp_reply(&b);
        }

        #[test]
        fn random_xml_never_panics(s in "(<|>|/|:|service|serviceType|controlURL|WANIPConnection:1|[a-z ]|é){0,60}") {
            let _ = find_wan_service(&s);
            let _ = element_text(&s, "controlURL");
            let r = http::Response { status: 500, headers: vec![], body: s.into_bytes() };
            let _ = soap_result("AddPortMapping", &r);
        }
    }
}
