//! Loader for the `stun_responder` XDP program: answers STUN binding requests to one UDP port
//! with `XDP_TX` (see `gateway-common/src/stun.rs` for what it answers and what it passes to
//! the userspace server).

use std::os::fd::AsRawFd;

use aya::maps::{Array, MapData, PerCpuArray};
use aya::{Ebpf, EbpfLoader};
use gateway_common::stun::{
    STUN_CONFIG_MAP, STUN_COUNTERS_MAP, STUN_FLAG_ENABLED, STUN_RESPONDER_PROGRAM,
};
use gateway_common::{StunConfig, StunCounter};

use super::counters::counter_struct;
use super::loader::{attach_xdp, load_program, map_err, program_fd, program_mut, take_map};
use super::{
    check_capabilities, ebpf_object, prog_test_run_xdp, raise_memlock_rlimit_if_needed,
    AttachPreference, TestRun, XdpError,
};

counter_struct! {
    /// Totals (summed over CPUs) of the `STUN_COUNTERS` map. Field names equal
    /// [`StunCounter::name`].
    XdpStunCounters for StunCounter {
        /// Binding requests over IPv4 answered with `XDP_TX`.
        answered_v4 => AnsweredV4,
        /// Binding requests over IPv6 answered with `XDP_TX`.
        answered_v6 => AnsweredV6,
        /// To the port, not a well-formed binding request: passed to the userspace server.
        passed_not_binding => PassedNotBinding,
        /// Binding requests with attributes the program does not handle: passed.
        passed_attributes => PassedAttributes,
        /// To the port with IPv4 options or fragmented: passed.
        passed_unsupported => PassedUnsupported,
        /// The frame could not be resized for the answer: passed.
        passed_tail_error => PassedTailError,
        /// Not for the port: passed.
        passed_other => PassedOther,
    }
}

impl XdpStunCounters {
    /// Binding requests answered in XDP, both families.
    pub fn answered(&self) -> u64 {
        self.answered_v4 + self.answered_v6
    }

    /// Prometheus family `tailgate_stun_xdp_packets_total{outcome}`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let name = "tailgate_stun_xdp_packets_total";
        let mut f = crate::metrics::Family::new(
            &mut out,
            name,
            "counter",
            "Packets seen by the STUN XDP responder by outcome: answered in XDP (per address \
             family) or passed to the kernel (per reason).",
        );
        for (outcome, v) in self.iter() {
            f.sample(name, &[("outcome", outcome)], v);
        }
        out
    }
}

/// `stun_responder` loaded and configured, attached to an interface or not (for test runs).
/// Dropping it detaches and unloads the program.
pub struct XdpStunResponder {
    config: Array<MapData, StunConfig>,
    counters: PerCpuArray<MapData, u64>,
    /// Owns the program and its XDP link: dropping it detaches the link and unloads the
    /// program.
    ebpf: Ebpf,
    port: u16,
    attached: Option<(String, &'static str)>,
}

impl std::fmt::Debug for XdpStunResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpStunResponder")
            .field("port", &self.port)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl XdpStunResponder {
    /// Loads the program (verifier included) and configures it to answer on UDP `port`,
    /// without attaching it anywhere: [`XdpStunResponder::test_run`] works, no traffic is
    /// seen until [`XdpStunResponder::attach_to`].
    pub fn load(port: u16) -> Result<Self, XdpError> {
        if port == 0 {
            return Err(XdpError::InvalidConfig(
                "the STUN responder needs a non-zero UDP port".into(),
            ));
        }
        let object = ebpf_object().ok_or(XdpError::NotEmbedded)?;
        check_capabilities()?;
        raise_memlock_rlimit_if_needed();
        let mut ebpf = EbpfLoader::new().load(object).map_err(XdpError::Object)?;
        let mut config: Array<MapData, StunConfig> = take_map(&mut ebpf, STUN_CONFIG_MAP)?;
        let counters = take_map(&mut ebpf, STUN_COUNTERS_MAP)?;
        load_program(&mut ebpf, STUN_RESPONDER_PROGRAM)?;
        config
            .set(0, StunConfig::new(port, STUN_FLAG_ENABLED), 0)
            .map_err(map_err(STUN_CONFIG_MAP))?;
        Ok(Self {
            config,
            counters,
            ebpf,
            port,
            attached: None,
        })
    }

    /// Loads the program for UDP `port` and attaches it to `ifname` (in the calling thread's
    /// network namespace). With [`AttachPreference::Auto`], native (driver) mode is tried
    /// first and generic (SKB) mode second; [`XdpStunResponder::attach_mode`] says which.
    ///
    /// On a veth in native mode, `XDP_TX` frames reach the peer only if the peer has an XDP
    /// program attached or GRO enabled (`ethtool -K PEER gro on`).
    pub fn attach(ifname: &str, port: u16, mode: AttachPreference) -> Result<Self, XdpError> {
        let mut me = Self::load(port)?;
        me.attach_to(ifname, mode)?;
        Ok(me)
    }

    /// Attaches the loaded program to `ifname` (once; a second call fails).
    pub fn attach_to(&mut self, ifname: &str, mode: AttachPreference) -> Result<(), XdpError> {
        if let Some((current, _)) = &self.attached {
            return Err(XdpError::Attach {
                ifname: ifname.to_string(),
                errors: vec![format!("already attached to {current}")],
            });
        }
        let program = program_mut(&mut self.ebpf, STUN_RESPONDER_PROGRAM)?;
        let mode = attach_xdp(program, STUN_RESPONDER_PROGRAM, ifname, mode)?;
        log::info!(
            "XDP {STUN_RESPONDER_PROGRAM} attached to {ifname} ({mode} mode), UDP port {}",
            self.port
        );
        self.attached = Some((ifname.to_string(), mode));
        Ok(())
    }

    /// `"native"` or `"generic"` once attached.
    pub fn attach_mode(&self) -> Option<&'static str> {
        self.attached.as_ref().map(|(_, m)| *m)
    }

    /// The interface the program is attached to.
    pub fn ifname(&self) -> Option<&str> {
        self.attached.as_ref().map(|(i, _)| i.as_str())
    }

    /// The UDP port answered.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Answers on `port` from now on.
    pub fn set_port(&mut self, port: u16) -> Result<(), XdpError> {
        if port == 0 {
            return Err(XdpError::InvalidConfig(
                "the STUN responder needs a non-zero UDP port".into(),
            ));
        }
        self.config
            .set(0, StunConfig::new(port, STUN_FLAG_ENABLED), 0)
            .map_err(map_err(STUN_CONFIG_MAP))?;
        self.port = port;
        Ok(())
    }

    /// Current counters, summed over CPUs.
    pub fn counters(&self) -> Result<XdpStunCounters, XdpError> {
        XdpStunCounters::read(&self.counters, STUN_COUNTERS_MAP)
    }

    /// Runs the program once on the Ethernet frame `packet` with `BPF_PROG_TEST_RUN` (counters
    /// count it too): the action and the frame as it would be transmitted or passed.
    pub fn test_run(&self, packet: &[u8]) -> Result<TestRun, XdpError> {
        let fd = program_fd(&self.ebpf, STUN_RESPONDER_PROGRAM)?;
        prog_test_run_xdp(fd.as_raw_fd(), packet, 0, 1).map_err(|source| XdpError::TestRun {
            name: STUN_RESPONDER_PROGRAM,
            source,
        })
    }
}

impl Drop for XdpStunResponder {
    fn drop(&mut self) {
        // Dropping `self.ebpf` (after this) detaches the link and unloads the program.
        if let Some((ifname, _)) = &self.attached {
            log::info!("XDP {STUN_RESPONDER_PROGRAM} detached from {ifname}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_like_the_enum() {
        let mut c = XdpStunCounters::default();
        for (i, k) in StunCounter::ALL.iter().enumerate() {
            *c.slot_mut(*k) = i as u64 + 1;
        }
        let json = serde_json::to_value(c).unwrap();
        for (i, k) in StunCounter::ALL.iter().enumerate() {
            assert_eq!(json[k.name()], i as u64 + 1);
        }
        assert_eq!(c.answered(), 3);
        assert!(c
            .render()
            .contains("tailgate_stun_xdp_packets_total{outcome=\"passed_other\"} 7\n"));
    }

    #[test]
    fn port_zero_is_refused() {
        assert!(XdpStunResponder::load(0).is_err());
    }
}
