//! Steps the XDP loaders share: taking maps and programs out of a loaded [`Ebpf`] object with
//! descriptive errors, and attaching a program with the native → generic fallback of
//! [`AttachPreference`].

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{Map, MapError};
use aya::programs::{ProgramError, Xdp, XdpFlags};
use aya::Ebpf;

use super::{chain, AttachPreference, XdpError};

/// Wraps an error of map `name`.
pub(crate) fn map_err(name: &'static str) -> impl Fn(MapError) -> XdpError {
    move |source| XdpError::Map { name, source }
}

/// Wraps an error of program `name`.
pub(crate) fn prog_err(name: &'static str) -> impl Fn(ProgramError) -> XdpError {
    move |source| XdpError::Program { name, source }
}

/// Takes map `name` out of `ebpf` as a `T` (`Array`, `PerCpuArray`, `HashMap`, ...).
pub(crate) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(XdpError::MissingObject { kind: "map", name })?;
    T::try_from(map).map_err(map_err(name))
}

/// The XDP program `name` of `ebpf`.
pub(crate) fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp, XdpError> {
    let program = ebpf.program(name).ok_or(XdpError::MissingObject {
        kind: "XDP program",
        name,
    })?;
    program.try_into().map_err(prog_err(name))
}

/// The XDP program `name` of `ebpf`, mutably (to load or attach it).
pub(crate) fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, XdpError> {
    let program = ebpf.program_mut(name).ok_or(XdpError::MissingObject {
        kind: "XDP program",
        name,
    })?;
    program.try_into().map_err(prog_err(name))
}

/// Loads the XDP program `name` of `ebpf` into the kernel (verifier included).
pub(crate) fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), XdpError> {
    program_mut(ebpf, name)?.load().map_err(prog_err(name))
}

/// The fd of the loaded XDP program `name` of `ebpf` (for `BPF_PROG_TEST_RUN`).
pub(crate) fn program_fd<'a>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<BorrowedFd<'a>, XdpError> {
    let fd = program(ebpf, name)?.fd().map_err(prog_err(name))?;
    Ok(fd.as_fd())
}

/// Attaches the loaded `program` (named `name` in logs) to `ifname`, in the calling thread's
/// network namespace, trying the modes of `mode` in order ([`AttachPreference::Auto`]:
/// native, then generic). Returns the mode that worked, `"native"` or `"generic"`; the error
/// lists every mode tried.
pub(crate) fn attach_xdp(
    program: &mut Xdp,
    name: &'static str,
    ifname: &str,
    mode: AttachPreference,
) -> Result<&'static str, XdpError> {
    let attempts: &[(XdpFlags, &'static str)] = match mode {
        AttachPreference::Auto => &[
            (XdpFlags::DRV_MODE, "native"),
            (XdpFlags::SKB_MODE, "generic"),
        ],
        AttachPreference::Native => &[(XdpFlags::DRV_MODE, "native")],
        AttachPreference::Generic => &[(XdpFlags::SKB_MODE, "generic")],
    };
    let mut errors = Vec::new();
    for &(flags, mode_name) in attempts {
        match program.attach(ifname, flags) {
            Ok(_link_id) => return Ok(mode_name),
            Err(ProgramError::UnknownInterface { .. }) => {
                return Err(XdpError::UnknownInterface(ifname.to_string()));
            }
            Err(e) => {
                log::debug!("XDP {name} {mode_name} attach on {ifname} failed: {e:?}");
                errors.push(format!("{mode_name} mode: {}", chain(&e)));
            }
        }
    }
    Err(XdpError::Attach {
        ifname: ifname.to_string(),
        errors,
    })
}
