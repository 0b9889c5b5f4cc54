//! IP forwarding sysctls, which a subnet router or exit node needs.

use std::fs;

/// The forwarding switches, as `/proc/sys` paths.
const FORWARDING: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

/// Turns IPv4 and IPv6 forwarding on (in the daemon's network namespace) and says what it
/// changed. They stay on after the daemon stops, as with Tailscale, since other services
/// may rely on them.
pub fn enable_forwarding() -> std::io::Result<Vec<String>> {
    let mut changed = Vec::new();
    for path in FORWARDING {
        let current = fs::read_to_string(path)?;
        if current.trim() != "1" {
            fs::write(path, "1")?;
            let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
            changed.push(format!("{key}=1"));
        }
    }
    Ok(changed)
}
