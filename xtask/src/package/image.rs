//! `cargo xtask package image`: a bootable disk image of a Debian appliance with tailgate
//! preinstalled and cloud-init enabled, `target/image/tailgate-appliance.img` (raw, sparse) and
//! `target/image/tailgate-appliance.qcow2`.
//!
//! The root file system is made by mmdebstrap (the host's Debian release: kernel, systemd with
//! systemd-networkd and systemd-resolved, cloud-init, OpenSSH, our .deb installed by apt), then
//! the static files of `image/appliance/` are added and [`super::image_disk`] lays it out as a
//! partitioned disk with GRUB, without mounting anything. docs/appliance-image.md describes it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::check::host_suite_and_sources;
use super::deb::{self, Deb};
use super::image_disk;
use super::util::{self, install, stdout_of, write, ScratchDir};

/// Where the images are written, relative to the workspace.
pub const OUT_DIR: &str = "target/image";
/// The raw image's file name.
pub const RAW_NAME: &str = "tailgate-appliance.img";
/// The qcow2 image's file name.
pub const QCOW2_NAME: &str = "tailgate-appliance.qcow2";
/// The image's static files, relative to the workspace.
pub const ASSETS: &str = "image/appliance";

/// Packages besides the essential set: the kernel for virtual machines and clouds, systemd as
/// init with its network and resolver daemons, cloud-init with growpart (the root partition
/// grows to the disk), e2fsprogs (fsck, resize2fs), OpenSSH (cloud-init installs the keys),
/// sudo (the default user's), and what tailgate uses or suggests. nftables, which the package
/// recommends, is listed so apt installs the .deb without any download.
const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "systemd-timesyncd",
    "udev",
    "cloud-init",
    "cloud-guest-utils",
    "e2fsprogs",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "iproute2",
    "iputils-ping",
    "nftables",
    "wireguard-tools",
];

/// dpkg filters: no manual pages, translations or documentation in the image, except the
/// copyright files and tailgate's own documentation (its configuration examples).
const DPKG_FILTERS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-include=/usr/share/doc/tailgate/*",
];

/// The built images.
pub struct Image {
    /// The raw disk image.
    pub raw: PathBuf,
    /// The same disk as qcow2.
    pub qcow2: PathBuf,
}

/// Builds the .deb from `bin` and the images around it; prints their paths.
pub fn build(root: &Path, bin: &Path) -> Result<Image> {
    let package = deb::build(root, bin)?;
    build_with(root, &package)
}

/// Builds the images with `package` installed.
pub fn build_with(root: &Path, package: &Deb) -> Result<Image> {
    let arch = stdout_of(Command::new("dpkg").arg("--print-architecture"))?;
    if arch != "amd64" {
        bail!("the appliance image is built for amd64 (a BIOS GRUB and linux-image-cloud-amd64); this host is {arch}");
    }
    let started = Instant::now();
    let out = root.join(OUT_DIR);
    util::mkdir(&out)?;
    let scratch = ScratchDir::new(out.join("build"))?;
    let dir = scratch.path().join("root");
    let epoch = stdout_of(
        Command::new("dpkg-parsechangelog")
            .arg("-l")
            .arg(root.join(deb::ASSETS).join("changelog"))
            .args(["-S", "Timestamp"]),
    )?;

    bootstrap(&dir, package, &epoch)?;
    customize(root, &dir)?;

    let raw = out.join(RAW_NAME);
    let qcow2 = out.join(QCOW2_NAME);
    let partial = scratch.path().join(RAW_NAME);
    image_disk::assemble(&dir, &partial, &epoch)?;
    fs::rename(&partial, &raw).with_context(|| format!("moving the image to {}", raw.display()))?;
    println!("xtask: converting to qcow2");
    let _ = fs::remove_file(&qcow2);
    util::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow2),
    )?;
    let allocated = |p: &Path| -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(fs::metadata(p)
            .with_context(|| format!("reading {}", p.display()))?
            .blocks()
            * 512)
    };
    let mib = |b: u64| b / (1 << 20);
    println!(
        "xtask: built {} ({} MiB, {} MiB allocated) and {} ({} MiB) in {:.0} s",
        raw.display(),
        mib(image_disk::DISK_SIZE),
        mib(allocated(&raw)?),
        qcow2.display(),
        mib(allocated(&qcow2)?),
        started.elapsed().as_secs_f64()
    );
    Ok(Image { raw, qcow2 })
}

/// The root file system: mmdebstrap with [`PACKAGES`], then the package installed by apt.
fn bootstrap(dir: &Path, package: &Deb, epoch: &str) -> Result<()> {
    let (suite, sources) = host_suite_and_sources()?;
    let name = package
        .path
        .file_name()
        .context("package path has no file name")?
        .to_string_lossy()
        .to_string();
    println!("xtask: {suite} root file system for the appliance image (mmdebstrap)");
    let t = Instant::now();
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--quiet",
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
    ])
    .arg(format!("--include={}", PACKAGES.join(",")));
    for filter in DPKG_FILTERS {
        cmd.arg(format!("--dpkgopt={filter}"));
    }
    cmd.arg(format!(
        "--customize-hook=copy-in {} /srv",
        package.path.display()
    ))
    .arg(format!(
        "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get install \
         --yes --no-install-recommends /srv/{name}"
    ))
    .arg(format!("--customize-hook=rm \"$1\"/srv/{name}"))
    // Enabled now so it runs at the first boot, when cloud-init has written its network
    // configuration (DHCP on the first NIC unless the data source says otherwise).
    .arg("--customize-hook=chroot \"$1\" systemctl enable systemd-networkd.service")
    .arg(&suite)
    .arg(dir)
    .arg(&sources)
    .env("SOURCE_DATE_EPOCH", epoch);
    util::run(&mut cmd)?;
    println!(
        "xtask: root file system ready in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    for f in ["usr/bin/tailgate", deb::UNIT_PATH, "vmlinuz", "initrd.img"] {
        if !dir.join(f).exists() {
            bail!("the appliance root file system has no /{f}");
        }
    }
    Ok(())
}

/// The appliance's own files: file system table, host name, GRUB and its modules, cloud-init
/// settings, the readiness script; and no SSH host keys or machine id (made at first boot).
fn customize(root: &Path, dir: &Path) -> Result<()> {
    let assets = root.join(ASSETS);
    write(
        &dir.join("etc/fstab"),
        format!(
            "# <file system> <mount point> <type> <options> <dump> <pass>\n\
             UUID={} / ext4 rw,discard,errors=remount-ro 0 1\n",
            image_disk::ROOT_UUID
        ),
        0o644,
    )?;
    write(&dir.join("etc/hostname"), "tailgate\n", 0o644)?;
    write(
        &dir.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\ttailgate\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    // The locale the cloud-init settings name (C.UTF-8 needs no locales package).
    write(&dir.join("etc/default/locale"), "LANG=C.UTF-8\n", 0o644)?;
    // systemd makes the machine id at the first boot when the file is empty.
    write(&dir.join("etc/machine-id"), "", 0o444)?;
    for entry in fs::read_dir(dir.join("etc/ssh")).context("reading the image's /etc/ssh")? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ssh_host_"))
        {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }

    let grub_cfg = fs::read_to_string(assets.join("grub.cfg"))
        .with_context(|| format!("reading {}/grub.cfg", assets.display()))?;
    if !grub_cfg.contains("@ROOT_UUID@") {
        bail!(
            "{}/grub.cfg has no @ROOT_UUID@ to fill in",
            assets.display()
        );
    }
    write(
        &dir.join("boot/grub/grub.cfg"),
        grub_cfg.replace("@ROOT_UUID@", image_disk::ROOT_UUID),
        0o644,
    )?;
    image_disk::install_grub_modules(&dir.join("boot/grub"))?;

    install(
        &assets.join("90-tailgate-appliance.cfg"),
        &dir.join("etc/cloud/cloud.cfg.d/90-tailgate-appliance.cfg"),
        0o644,
    )?;
    install(
        &assets.join("tailgate-appliance-ready"),
        &dir.join("usr/local/sbin/tailgate-appliance-ready"),
        0o755,
    )?;
    Ok(())
}
