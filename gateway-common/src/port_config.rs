//! [`PortConfig`]: the configuration entry of the XDP programs that act on one UDP port
//! (`wan_ingress`'s [`WanConfig`](crate::WanConfig), `stun_responder`'s
//! [`StunConfig`](crate::StunConfig)).

/// A UDP port and flag bits, entry 0 of a program's one-entry config array map. Both fields
/// are in network byte order; an all-zero entry (no flag set) means "not configured".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortConfig {
    /// UDP port the program acts on, network byte order.
    pub port: [u8; 2],
    /// The program's flag bits, network byte order.
    pub flags: [u8; 2],
}

impl PortConfig {
    /// A configuration for `port` with `flags`.
    pub const fn new(port: u16, flags: u16) -> Self {
        Self {
            port: port.to_be_bytes(),
            flags: flags.to_be_bytes(),
        }
    }

    /// The UDP port.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    /// The flag bits.
    pub const fn flags(&self) -> u16 {
        u16::from_be_bytes(self.flags)
    }

    /// Whether `flag` is set.
    pub const fn has_flag(&self, flag: u16) -> bool {
        self.flags() & flag != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: `PortConfig` is `#[repr(C)]`, `Copy`, made only of `u8` arrays (no padding, no
// pointers), and every bit pattern is a valid value.
unsafe impl aya::Pod for PortConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_network_order() {
        let c = PortConfig::new(3478, 0x0102);
        assert_eq!(c.port, [0x0d, 0x96]);
        assert_eq!(c.flags, [0x01, 0x02]);
        assert_eq!(c.port(), 3478);
        assert_eq!(c.flags(), 0x0102);
        assert!(c.has_flag(0x0100));
        assert!(!c.has_flag(0x0001 << 2));
        assert_eq!(core::mem::size_of::<PortConfig>(), 4);
        assert_eq!(core::mem::align_of::<PortConfig>(), 1);
        assert_eq!(PortConfig::default(), PortConfig::new(0, 0));
    }
}
