//! `/metrics` of a relay server (Prometheus text format), rendered from its
//! [`Snapshot`](super::server::Snapshot) and, when a STUN server runs beside it, the STUN
//! counters (`extra` lines rendered by the caller).

use crate::metrics::Family;

use super::server::Snapshot;

/// Renders the relay's families; `extra` (already in exposition format) is appended.
pub fn render(s: &Snapshot, extra: &str) -> String {
    let mut out = String::new();
    let gauges: [(&str, &str, u64); 3] = [
        (
            "tailgate_derp_clients",
            "Clients connected to this relay server now.",
            s.clients,
        ),
        (
            "tailgate_derp_mesh_keys",
            "Node keys reachable through other servers of the region now.",
            s.mesh_keys,
        ),
        (
            "tailgate_derp_mesh_watchers",
            "Servers of the region watching this server's clients now.",
            s.watchers,
        ),
    ];
    for (name, help, v) in gauges {
        Family::new(&mut out, name, "gauge", help).sample(name, &[], v);
    }
    let counters: [(&str, &str, u64); 6] = [
        (
            "tailgate_derp_accepted_total",
            "TCP connections accepted.",
            s.accepted,
        ),
        (
            "tailgate_derp_http_requests_total",
            "HTTP requests answered without an upgrade (probes, index, errors).",
            s.http_requests,
        ),
        (
            "tailgate_derp_handshake_failures_total",
            "Connections that failed TLS, the HTTP upgrade or the key handshake.",
            s.handshake_failures,
        ),
        (
            "tailgate_derp_relayed_bytes_total",
            "Bytes of packets handed to clients of this server.",
            s.bytes_relayed,
        ),
        (
            "tailgate_derp_rate_limited_total",
            "Times a client was paced by its rate limit.",
            s.rate_limited,
        ),
        (
            "tailgate_derp_protocol_errors_total",
            "Connections closed because of a malformed frame.",
            s.protocol_errors,
        ),
    ];
    for (name, help, v) in counters {
        Family::new(&mut out, name, "counter", help).sample(name, &[], v);
    }
    let name = "tailgate_derp_packets_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Packets by outcome: relayed to a local client, sent to or received from another server \
         of the region, or dropped.",
    );
    for (outcome, v) in [
        ("relayed", s.packets_relayed),
        ("to_mesh", s.packets_to_mesh),
        ("from_mesh", s.packets_from_mesh),
        ("dropped_unknown_dest", s.dropped_unknown_dest),
        ("dropped_queue_full", s.dropped_queue_full),
        ("dropped_not_mesh", s.dropped_not_mesh),
        ("unexpected_frame", s.unexpected_frames),
    ] {
        f.sample(name, &[("outcome", outcome)], v);
    }
    out.push_str(extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_its_family() {
        let s = Snapshot {
            clients: 2,
            packets_relayed: 5,
            ..Snapshot::default()
        };
        let m = render(&s, "");
        assert!(m.contains("tailgate_derp_clients 2\n"));
        assert!(m.contains("tailgate_derp_packets_total{outcome=\"relayed\"} 5\n"));
        let mut announced = std::collections::HashSet::new();
        for line in m.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                assert!(announced.contains(line.split(['{', ' ']).next().unwrap()));
            }
        }
    }
}
