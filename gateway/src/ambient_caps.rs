//! Passing the daemon's network capabilities on to the programs it runs (`nft`, `iptables`,
//! `ping`, `resolvectl`). A daemon started as an unprivileged user whose binary has file
//! capabilities (`tailgate configure-host`, the NAS packages) holds them itself, but a child
//! process gets none unless they are ambient: so at start-up those of
//! [`DAEMON_CAPS`](crate::configure_host::DAEMON_CAPS) the process has in its permitted set
//! are added to its inheritable set and raised as ambient. Capabilities belong to a thread and
//! are copied to the threads it creates, so this must run before the async runtime starts.

use crate::configure_host::DAEMON_CAPS;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets, one bit per capability number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSets {
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
}

/// What to change so that children inherit the daemon's capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmbientPlan {
    /// The inheritable set to install (the current one plus the capabilities to raise).
    pub inheritable: u64,
    /// The capabilities to raise as ambient: number and name.
    pub raise: Vec<(u32, &'static str)>,
}

/// The plan for a process with `sets`: every daemon capability in the permitted set becomes
/// inheritable and ambient. `None` when there is nothing to pass on.
pub fn plan(sets: CapSets) -> Option<AmbientPlan> {
    let raise: Vec<(u32, &'static str)> = DAEMON_CAPS
        .iter()
        .copied()
        .filter(|&(c, _)| sets.permitted & (1u64 << c) != 0)
        .collect();
    if raise.is_empty() {
        return None;
    }
    let inheritable = raise
        .iter()
        .fold(sets.inheritable, |m, &(c, _)| m | (1u64 << c));
    Some(AmbientPlan { inheritable, raise })
}

fn header() -> CapHeader {
    CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    }
}

/// Reads the calling thread's capability sets.
fn capget() -> std::io::Result<CapSets> {
    let mut hdr = header();
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with version 3 writes two `__user_cap_data_struct`s; `hdr` and `data`
    // are valid, properly laid out (`repr(C)`) and live for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok(CapSets {
        effective: join(|d| d.effective),
        permitted: join(|d| d.permitted),
        inheritable: join(|d| d.inheritable),
    })
}

/// Sets the calling thread's capability sets.
fn capset(sets: CapSets) -> std::io::Result<()> {
    let mut hdr = header();
    let word = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData {
        effective: word(sets.effective, i),
        permitted: word(sets.permitted, i),
        inheritable: word(sets.inheritable, i),
    });
    // SAFETY: capset(2) with version 3 reads two `__user_cap_data_struct`s from `data`; both
    // pointers are valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises `cap` in the ambient set (it must be permitted and inheritable).
fn raise_ambient(cap: u32) -> std::io::Result<()> {
    let zero: libc::c_ulong = 0;
    // SAFETY: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) takes only integers and
    // changes nothing but this thread's ambient set.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            libc::c_ulong::from(cap),
            zero,
            zero,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// For a non-root process holding some of the daemon's capabilities: makes them inheritable
/// and ambient, so that the helper programs it runs get them too. Logs what was raised;
/// failures are warnings (the daemon itself keeps its capabilities either way). Call before
/// any other thread is started.
pub fn pass_on_to_children() {
    // SAFETY: geteuid() has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    let sets = match capget() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("reading the process capabilities: {e}; helper programs get none");
            return;
        }
    };
    let Some(plan) = plan(sets) else {
        return;
    };
    if let Err(e) = capset(CapSets {
        inheritable: plan.inheritable,
        ..sets
    }) {
        log::warn!("making capabilities inheritable: {e}; helper programs get none");
        return;
    }
    let mut raised = Vec::new();
    for (cap, name) in plan.raise {
        match raise_ambient(cap) {
            Ok(()) => raised.push(name),
            Err(e) => log::warn!("raising {name} as an ambient capability: {e}"),
        }
    }
    if !raised.is_empty() {
        log::info!(
            "helper programs (nft, iptables, ping, resolvectl) inherit {}",
            raised.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configure_host::{CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW};

    #[test]
    fn permitted_daemon_caps_become_inheritable_and_ambient() {
        const CAP_CHOWN: u32 = 0;
        let bit = |c: u32| 1u64 << c;
        let sets = CapSets {
            effective: bit(CAP_NET_ADMIN) | bit(CAP_BPF),
            permitted: bit(CAP_NET_ADMIN) | bit(CAP_BPF) | bit(CAP_CHOWN),
            inheritable: bit(CAP_NET_RAW),
        };
        let p = plan(sets).expect("something to raise");
        assert_eq!(
            p.raise,
            vec![(CAP_NET_ADMIN, "cap_net_admin"), (CAP_BPF, "cap_bpf")]
        );
        // Only daemon capabilities are added; what was inheritable stays.
        assert_eq!(
            p.inheritable,
            bit(CAP_NET_ADMIN) | bit(CAP_BPF) | bit(CAP_NET_RAW)
        );
    }

    #[test]
    fn nothing_to_raise_without_daemon_caps() {
        assert_eq!(plan(CapSets::default()), None);
        assert_eq!(
            plan(CapSets {
                permitted: 1,
                ..CapSets::default()
            }),
            None
        );
    }

    #[test]
    fn own_sets_can_be_read() {
        let s = capget().expect("capget");
        // The effective set is always a subset of the permitted set.
        assert_eq!(s.effective & !s.permitted, 0);
    }
}
