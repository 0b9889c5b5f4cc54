//! `tailgate configure-host`: the one step, run as root, that lets a daemon running as an
//! unprivileged package user (Synology DSM 7 runs every third-party package that way) use a
//! kernel TUN device and route subnets. It grants the binary file capabilities by writing its
//! `security.capability` extended attribute (what `setcap` does, without needing `setcap`),
//! makes `/dev/net/tun` usable by everyone (creating it if missing), and turns on IPv4 and IPv6
//! forwarding. `tailgate configure-host --check` (any user) says whether the binary has those
//! capabilities and the TUN device is usable, which the NAS packages' start scripts use to choose
//! between a kernel TUN and userspace networking.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The extended attribute holding file capabilities.
pub const XATTR: &str = "security.capability";
/// The TUN clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// The forwarding sysctls a subnet router or exit node needs.
pub const FORWARDING_SYSCTLS: &[&str] = &[
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

/// `CAP_NET_BIND_SERVICE`: MagicDNS on port 53.
pub const CAP_NET_BIND_SERVICE: u32 = 10;
/// `CAP_NET_ADMIN`: TUN, addresses, routes, XDP attach, forwarding sysctls.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`: the LAN health probe's ICMP sockets.
pub const CAP_NET_RAW: u32 = 13;
/// `CAP_PERFMON`: the verifier's pointer arithmetic for the XDP programs.
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`: creating BPF maps and loading the XDP programs.
pub const CAP_BPF: u32 = 39;
/// The capabilities `configure-host` grants: the five the daemon uses (docs/packaging.md).
pub const DAEMON_CAPS: &[(u32, &str)] = &[
    (CAP_NET_ADMIN, "cap_net_admin"),
    (CAP_NET_RAW, "cap_net_raw"),
    (CAP_NET_BIND_SERVICE, "cap_net_bind_service"),
    (CAP_BPF, "cap_bpf"),
    (CAP_PERFMON, "cap_perfmon"),
];

const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x0000_0001;
/// Size of a revision 2 `vfs_cap_data` (magic + two {permitted, inheritable} words).
pub const VFS_CAP_V2_LEN: usize = 20;
/// Size of a revision 3 `vfs_ns_cap_data` (revision 2 plus the namespace root uid).
pub const VFS_CAP_V3_LEN: usize = 24;

/// File capabilities as the kernel stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileCaps {
    /// Permitted set, one bit per capability number.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Whether the permitted set is also made effective at exec.
    pub effective: bool,
    /// The user namespace's root uid for revision 3 (namespaced) capabilities; `None` for
    /// revision 2.
    pub rootid: Option<u32>,
}

impl FileCaps {
    /// `caps` permitted and effective, nothing inheritable (setcap's `caps+ep`).
    pub fn permitted_effective(caps: &[u32]) -> FileCaps {
        FileCaps {
            permitted: caps.iter().fold(0u64, |m, &c| m | (1u64 << c)),
            inheritable: 0,
            effective: true,
            rootid: None,
        }
    }

    /// Whether every capability in `caps` is permitted and the set is effective.
    pub fn grants(&self, caps: &[u32]) -> bool {
        self.effective && caps.iter().all(|&c| self.permitted & (1u64 << c) != 0)
    }

    /// The attribute value: `vfs_cap_data` revision 2 (little-endian), or revision 3 with
    /// `rootid`.
    pub fn encode(&self) -> Vec<u8> {
        let revision = match self.rootid {
            Some(_) => VFS_CAP_REVISION_3,
            None => VFS_CAP_REVISION_2,
        };
        let flags = if self.effective {
            VFS_CAP_FLAGS_EFFECTIVE
        } else {
            0
        };
        let mut out = Vec::with_capacity(VFS_CAP_V3_LEN);
        out.extend_from_slice(&(revision | flags).to_le_bytes());
        for word in 0..2 {
            let shift = 32 * word;
            out.extend_from_slice(&((self.permitted >> shift) as u32).to_le_bytes());
            out.extend_from_slice(&((self.inheritable >> shift) as u32).to_le_bytes());
        }
        if let Some(uid) = self.rootid {
            out.extend_from_slice(&uid.to_le_bytes());
        }
        out
    }

    /// Parses an attribute value (revision 2 or 3; revision 1, from 32-capability kernels, is
    /// refused).
    pub fn decode(data: &[u8]) -> Result<FileCaps> {
        let word = |i: usize| -> u32 {
            u32::from_le_bytes([
                data[4 * i],
                data[4 * i + 1],
                data[4 * i + 2],
                data[4 * i + 3],
            ])
        };
        if data.len() < 4 {
            bail!("{XATTR}: {} bytes, too short", data.len());
        }
        let magic = word(0);
        let (revision, want) = match magic & VFS_CAP_REVISION_MASK {
            VFS_CAP_REVISION_2 => (2, VFS_CAP_V2_LEN),
            VFS_CAP_REVISION_3 => (3, VFS_CAP_V3_LEN),
            other => bail!("{XATTR}: unsupported revision {:#x}", other >> 24),
        };
        if data.len() != want {
            bail!(
                "{XATTR}: revision {revision} needs {want} bytes, got {}",
                data.len()
            );
        }
        if magic & !VFS_CAP_REVISION_MASK & !VFS_CAP_FLAGS_EFFECTIVE != 0 {
            bail!("{XATTR}: unknown flags in {magic:#010x}");
        }
        Ok(FileCaps {
            permitted: u64::from(word(1)) | (u64::from(word(3)) << 32),
            inheritable: u64::from(word(2)) | (u64::from(word(4)) << 32),
            effective: magic & VFS_CAP_FLAGS_EFFECTIVE != 0,
            rootid: (revision == 3).then(|| word(5)),
        })
    }

    /// setcap-style text for the permitted set, e.g. `cap_net_admin,cap_net_raw+ep`.
    pub fn describe(&self) -> String {
        let names: Vec<String> = (0..64)
            .filter(|c| self.permitted & (1u64 << c) != 0)
            .map(|c| {
                DAEMON_CAPS
                    .iter()
                    .find(|(n, _)| *n == c)
                    .map(|(_, name)| name.to_string())
                    .unwrap_or_else(|| format!("cap_{c}"))
            })
            .collect();
        format!(
            "{}+{}",
            names.join(","),
            if self.effective { "ep" } else { "p" }
        )
    }
}

/// Fails with a clear message unless `euid` is root.
pub fn require_root(euid: u32) -> Result<()> {
    if euid != 0 {
        bail!(
            "configure-host must run as root (effective uid is {euid}): it sets file \
             capabilities, changes /dev/net/tun and writes sysctls; run it with sudo"
        );
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{}: path contains a NUL byte", path.display()))
}

/// Reads the file capabilities of `path`; `None` if it has none.
pub fn read_caps(path: &Path) -> Result<Option<FileCaps>> {
    let p = c_path(path)?;
    let name = CString::new(XATTR).expect("constant has no NUL");
    let mut buf = [0u8; 64];
    // SAFETY: `p` and `name` are NUL-terminated; `buf` is valid for `buf.len()` bytes.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(None);
        }
        return Err(e).with_context(|| format!("reading {XATTR} of {}", path.display()));
    }
    FileCaps::decode(&buf[..n as usize])
        .map(Some)
        .with_context(|| path.display().to_string())
}

/// Writes `caps` as the file capabilities of `path` (needs root: `CAP_SETFCAP`).
pub fn write_caps(path: &Path, caps: &FileCaps) -> Result<()> {
    let p = c_path(path)?;
    let name = CString::new(XATTR).expect("constant has no NUL");
    let value = caps.encode();
    // SAFETY: `p` and `name` are NUL-terminated; `value` is valid for `value.len()` bytes.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setting {XATTR} on {}", path.display()));
    }
    Ok(())
}

/// Whether the TUN device exists, is a character device and this process can open it.
pub fn tun_usable() -> Result<(), String> {
    match fs::metadata(TUN_DEVICE) {
        Err(e) => return Err(format!("{TUN_DEVICE}: {e}")),
        Ok(m) if !m.file_type().is_char_device() => {
            return Err(format!("{TUN_DEVICE} is not a character device"))
        }
        Ok(_) => {}
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map(drop)
        .map_err(|e| format!("opening {TUN_DEVICE}: {e}"))
}

/// What `--check` found.
#[derive(Debug)]
pub struct HostCheck {
    /// The binary's file capabilities, if any.
    pub caps: Option<FileCaps>,
    /// Why the TUN device cannot be used, if it cannot.
    pub tun_problem: Option<String>,
}

impl HostCheck {
    /// Whether the daemon can run with a kernel TUN as this user.
    pub fn kernel_mode_ready(&self, euid: u32) -> bool {
        let caps_ok = euid == 0
            || self
                .caps
                .is_some_and(|c| c.grants(&[CAP_NET_ADMIN, CAP_NET_RAW]));
        caps_ok && self.tun_problem.is_none()
    }
}

/// Inspects `binary` and the TUN device.
pub fn check(binary: &Path) -> Result<HostCheck> {
    Ok(HostCheck {
        caps: read_caps(binary)?,
        tun_problem: tun_usable().err(),
    })
}

/// Makes `/dev/net/tun` exist (character device 10:200) with mode 0666.
fn prepare_tun() -> Result<()> {
    let dev = Path::new(TUN_DEVICE);
    let dir = dev.parent().expect("constant has a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", dir.display()))?;
    if !dev.exists() {
        let p = c_path(dev)?;
        // SAFETY: `p` is NUL-terminated; mknod(2) does not keep the pointer.
        let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 200)) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("creating {TUN_DEVICE} (mknod c 10 200)"));
        }
    }
    fs::set_permissions(dev, fs::Permissions::from_mode(0o666))
        .with_context(|| format!("chmod 666 {TUN_DEVICE}"))
}

/// Options of `tailgate configure-host`.
#[derive(Debug, clap::Args)]
pub struct ConfigureHostArgs {
    /// The daemon binary to grant capabilities to [default: this binary].
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Only report (any user): exit 0 if the daemon can use a kernel TUN as this user, 1 if
    /// it has to run with --tun=userspace-networking.
    #[arg(long)]
    pub check: bool,
    /// Leave the IP forwarding sysctls alone.
    #[arg(long)]
    pub no_forwarding: bool,
}

/// Runs `tailgate configure-host`; returns whether the host is ready (for `--check`'s exit
/// status).
pub fn run(args: &ConfigureHostArgs) -> Result<bool> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this binary")?,
    };
    if !binary.is_file() {
        bail!("{}: no such file", binary.display());
    }
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if args.check {
        let found = check(&binary)?;
        match &found.caps {
            Some(c) => println!("{}: file capabilities {}", binary.display(), c.describe()),
            None => println!("{}: no file capabilities", binary.display()),
        }
        match &found.tun_problem {
            Some(p) => println!("TUN: {p}"),
            None => println!("TUN: {TUN_DEVICE} usable"),
        }
        let ready = found.kernel_mode_ready(euid);
        if ready {
            println!("kernel TUN mode: ready");
        } else if euid == 0 || found.tun_problem.is_some() && found.caps.is_some() {
            println!("kernel TUN mode: not ready (userspace networking only): {TUN_DEVICE} is not usable");
        } else {
            println!(
                "kernel TUN mode: not ready (userspace networking only); run `{} configure-host` \
                 as root",
                binary.display()
            );
        }
        return Ok(ready);
    }
    require_root(euid)?;
    prepare_tun()?;
    println!("{TUN_DEVICE}: character device 10:200, mode 0666");
    let caps: Vec<u32> = DAEMON_CAPS.iter().map(|(c, _)| *c).collect();
    let want = FileCaps::permitted_effective(&caps);
    write_caps(&binary, &want)?;
    match read_caps(&binary)? {
        Some(got) if got.grants(&caps) => {
            println!("{}: file capabilities {}", binary.display(), got.describe())
        }
        other => bail!(
            "{}: {XATTR} reads back as {other:?} after writing it (does the file system keep \
             extended attributes?)",
            binary.display()
        ),
    }
    if !args.no_forwarding {
        for sysctl in FORWARDING_SYSCTLS {
            fs::write(sysctl, "1\n").with_context(|| format!("writing 1 to {sysctl}"))?;
            println!("{sysctl} = 1");
        }
    }
    println!(
        "done: the daemon can now use a kernel TUN device; restart it. Run this again after \
         each reboot (/dev/net/tun and the sysctls are reset) and after each upgrade (a new \
         binary has no capabilities)."
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_2_encoding_matches_setcap() {
        // `setcap cap_net_admin,cap_net_raw+ep f; getfattr -n security.capability -e hex f`
        // prints 0x0100000200300000000000000000000000000000.
        let caps = FileCaps::permitted_effective(&[CAP_NET_ADMIN, CAP_NET_RAW]);
        let bytes = caps.encode();
        assert_eq!(bytes.len(), VFS_CAP_V2_LEN);
        assert_eq!(
            bytes,
            [1, 0, 0, 2, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(FileCaps::decode(&bytes).unwrap(), caps);
        assert_eq!(caps.describe(), "cap_net_admin,cap_net_raw+ep");
    }

    #[test]
    fn capabilities_above_31_go_to_the_second_word() {
        let caps = FileCaps::permitted_effective(&[CAP_BPF, CAP_PERFMON, CAP_NET_BIND_SERVICE]);
        let bytes = caps.encode();
        assert_eq!(&bytes[4..8], &(1u32 << 10).to_le_bytes());
        assert_eq!(&bytes[12..16], &((1u32 << 7) | (1u32 << 6)).to_le_bytes());
        let back = FileCaps::decode(&bytes).unwrap();
        assert!(back.grants(&[CAP_BPF, CAP_PERFMON, CAP_NET_BIND_SERVICE]));
        assert!(!back.grants(&[CAP_NET_ADMIN]));
    }

    #[test]
    fn revision_3_carries_the_root_uid() {
        let caps = FileCaps {
            rootid: Some(100_000),
            ..FileCaps::permitted_effective(&[CAP_NET_ADMIN])
        };
        let bytes = caps.encode();
        assert_eq!(bytes.len(), VFS_CAP_V3_LEN);
        assert_eq!(bytes[3], 3);
        assert_eq!(FileCaps::decode(&bytes).unwrap(), caps);
    }

    #[test]
    fn bad_attributes_are_refused_with_the_reason() {
        let e = FileCaps::decode(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("unsupported revision"), "{e}");
        let e = FileCaps::decode(&[1, 0, 0, 2, 0]).unwrap_err();
        assert!(e.to_string().contains("needs 20 bytes"), "{e}");
        let e = FileCaps::decode(&[1]).unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
        let mut flags = FileCaps::permitted_effective(&[CAP_NET_ADMIN]).encode();
        flags[1] = 0x10;
        let e = FileCaps::decode(&flags).unwrap_err();
        assert!(e.to_string().contains("unknown flags"), "{e}");
    }

    #[test]
    fn non_root_is_refused_clearly() {
        let e = require_root(1026).unwrap_err().to_string();
        assert!(e.contains("must run as root") && e.contains("1026"), "{e}");
        require_root(0).unwrap();
    }

    #[test]
    fn capabilities_written_read_back_and_grant_kernel_mode() {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: setting file capabilities needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tg-caps-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = Cleanup(dir.clone());
        let file = dir.join("bin");
        fs::write(&file, b"#!/bin/sh\n").unwrap();
        assert_eq!(read_caps(&file).unwrap(), None);
        let caps: Vec<u32> = DAEMON_CAPS.iter().map(|(c, _)| *c).collect();
        write_caps(&file, &FileCaps::permitted_effective(&caps)).unwrap();
        let got = read_caps(&file).unwrap().expect("capabilities");
        assert!(got.grants(&caps), "{got:?}");
        let found = HostCheck {
            caps: Some(got),
            tun_problem: None,
        };
        assert!(found.kernel_mode_ready(1026));
        let none = HostCheck {
            caps: None,
            tun_problem: None,
        };
        assert!(!none.kernel_mode_ready(1026));
        assert!(none.kernel_mode_ready(0));
    }
}
