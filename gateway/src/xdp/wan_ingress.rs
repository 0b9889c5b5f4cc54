//! Loader for the `wan_ingress` XDP program.

use aya::maps::{Array, MapData, PerCpuArray};
use aya::{Ebpf, EbpfLoader};
use gateway_common::wan::{
    WAN_CONFIG_MAP, WAN_COUNTERS_MAP, WAN_FLAG_ENABLED, WAN_FLAG_STRICT_DATA_PADDING,
    WAN_INGRESS_PROGRAM,
};
use gateway_common::WanConfig;

use super::loader::{attach_xdp, load_program, map_err, program_mut, take_map};
use super::{
    check_capabilities, ebpf_object, raise_memlock_rlimit_if_needed, AttachPreference, WanCounters,
    XdpError,
};

/// Tunables of `wan_ingress` besides the listen port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WanIngressOptions {
    /// Also drop transport data messages whose length is not `32 + 16*n`. Off by default:
    /// boringtun does not pad, and Linux/Go WireGuard clamp the padding at the MTU.
    pub strict_data_padding: bool,
}

/// `wan_ingress` attached to an interface. Dropping it detaches and unloads the program.
pub struct XdpWanIngress {
    config: Array<MapData, WanConfig>,
    counters: PerCpuArray<MapData, u64>,
    /// Owns the program and its XDP link: dropping it detaches the link and unloads the
    /// program (the maps above hold their own fds and go away with them).
    _ebpf: Ebpf,
    ifname: String,
    listen_port: u16,
    options: WanIngressOptions,
    mode: &'static str,
    program_id: Option<u32>,
}

impl std::fmt::Debug for XdpWanIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpWanIngress")
            .field("ifname", &self.ifname)
            .field("listen_port", &self.listen_port)
            .field("mode", &self.mode)
            .field("options", &self.options)
            .field("program_id", &self.program_id)
            .finish_non_exhaustive()
    }
}

/// The object loaded into the kernel (maps created, program verified), not attached.
struct Loaded {
    ebpf: Ebpf,
    config: Array<MapData, WanConfig>,
    counters: PerCpuArray<MapData, u64>,
}

fn load() -> Result<Loaded, XdpError> {
    let object = ebpf_object().ok_or(XdpError::NotEmbedded)?;
    check_capabilities()?;
    raise_memlock_rlimit_if_needed();

    let mut ebpf = EbpfLoader::new().load(object).map_err(XdpError::Object)?;
    let config = take_map(&mut ebpf, WAN_CONFIG_MAP)?;
    let counters = take_map(&mut ebpf, WAN_COUNTERS_MAP)?;
    load_program(&mut ebpf, WAN_INGRESS_PROGRAM)?;
    Ok(Loaded {
        ebpf,
        config,
        counters,
    })
}

/// Loads (and verifies) the program without attaching it; everything is released on return.
pub(super) fn probe() -> Result<(), XdpError> {
    load().map(drop)
}

fn config_value(listen_port: u16, options: WanIngressOptions) -> WanConfig {
    let mut flags = WAN_FLAG_ENABLED;
    if options.strict_data_padding {
        flags |= WAN_FLAG_STRICT_DATA_PADDING;
    }
    WanConfig::new(listen_port, flags)
}

impl XdpWanIngress {
    /// Loads `wan_ingress`, configures it for `listen_port` and attaches it to `ifname` (in the
    /// calling thread's network namespace) with default options.
    pub fn attach(
        ifname: &str,
        listen_port: u16,
        mode: AttachPreference,
    ) -> Result<Self, XdpError> {
        Self::attach_with(ifname, listen_port, mode, WanIngressOptions::default())
    }

    /// Like [`XdpWanIngress::attach`], with explicit options.
    pub fn attach_with(
        ifname: &str,
        listen_port: u16,
        mode: AttachPreference,
        options: WanIngressOptions,
    ) -> Result<Self, XdpError> {
        let Loaded {
            mut ebpf,
            mut config,
            counters,
        } = load()?;
        // Configure before attaching so that no packet sees a half-configured program.
        config
            .set(0, config_value(listen_port, options), 0)
            .map_err(map_err(WAN_CONFIG_MAP))?;

        let program = program_mut(&mut ebpf, WAN_INGRESS_PROGRAM)?;
        let mode = attach_xdp(program, WAN_INGRESS_PROGRAM, ifname, mode)?;
        let program_id = program.info().ok().map(|info| info.id());
        log::info!("XDP wan_ingress attached to {ifname} ({mode} mode), listen port {listen_port}");
        Ok(Self {
            config,
            counters,
            _ebpf: ebpf,
            ifname: ifname.to_string(),
            listen_port,
            options,
            mode,
            program_id,
        })
    }

    /// `"native"` (driver mode) or `"generic"` (SKB mode).
    pub fn attach_mode(&self) -> &'static str {
        self.mode
    }

    /// Interface the program is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// UDP port the program guards.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    pub fn options(&self) -> WanIngressOptions {
        self.options
    }

    /// Kernel id of the loaded program (as shown by `bpftool prog show`), if known.
    pub fn program_id(&self) -> Option<u32> {
        self.program_id
    }

    /// Changes the guarded port and options of the attached program.
    pub fn reconfigure(
        &mut self,
        listen_port: u16,
        options: WanIngressOptions,
    ) -> Result<(), XdpError> {
        self.config
            .set(0, config_value(listen_port, options), 0)
            .map_err(map_err(WAN_CONFIG_MAP))?;
        self.listen_port = listen_port;
        self.options = options;
        Ok(())
    }

    /// Current counters, summed over CPUs.
    pub fn counters(&self) -> Result<WanCounters, XdpError> {
        WanCounters::read(&self.counters, WAN_COUNTERS_MAP)
    }
}

impl Drop for XdpWanIngress {
    fn drop(&mut self) {
        // Dropping `self._ebpf` (after this) detaches the link and unloads the program.
        log::info!("XDP wan_ingress detached from {}", self.ifname);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flags() {
        let c = config_value(51820, WanIngressOptions::default());
        assert_eq!(c.port(), 51820);
        assert!(c.has_flag(WAN_FLAG_ENABLED));
        assert!(!c.has_flag(WAN_FLAG_STRICT_DATA_PADDING));
        let c = config_value(
            1,
            WanIngressOptions {
                strict_data_padding: true,
            },
        );
        assert!(c.has_flag(WAN_FLAG_STRICT_DATA_PADDING));
    }

    #[cfg(not(tailgate_ebpf_obj))]
    #[test]
    fn attach_without_object_is_descriptive() {
        let err = XdpWanIngress::attach("lo", 51820, AttachPreference::Auto).unwrap_err();
        assert!(matches!(err, XdpError::NotEmbedded));
        assert!(super::super::xdp_unavailable_reason()
            .unwrap()
            .contains("cargo xtask build"));
    }
}
