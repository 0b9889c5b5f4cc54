//! The appliance image's disk layout, made without mounting anything: an MBR partition table
//! with one bootable partition from 1 MiB to the end, an ext4 file system in it filled from a
//! directory by `mkfs.ext4 -d`, and GRUB for BIOS: its boot code in the MBR and its core image
//! (`grub-mkimage`, with the modules to read the partition and the menu) in the gap before the
//! partition, the rest of its modules and its menu in `/boot/grub` on the file system.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::util::{self, stdout_of};

/// The disk's size in bytes (a sparse file; cloud-init grows the partition to a larger disk).
pub const DISK_SIZE: u64 = 1 << 30;
/// The root file system's UUID (fixed, so the same sources give the same image; the kernel
/// command line and /etc/fstab name the root by it).
pub const ROOT_UUID: &str = "6c0b5c5e-7a11-4a7e-9e0d-7a11ca7e0001";
/// The root file system's label.
const ROOT_LABEL: &str = "tailgate-root";
/// The MBR's disk signature.
const DISK_SIGNATURE: u32 = 0x7a11_ca7e;
/// Where the partition starts, in 512-byte sectors (1 MiB: the gap holds GRUB's core image).
const PART_START: u64 = 2048;
/// Where GRUB's modules for BIOS machines are on the host (package grub-pc-bin).
const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
/// The modules built into GRUB's core image: enough to read the partition, find its menu and
/// boot Linux from it with the serial console; the others load from /boot/grub/i386-pc.
const CORE_MODULES: &[&str] = &[
    "biosdisk",
    "part_msdos",
    "ext2",
    "normal",
    "linux",
    "serial",
    "terminal",
    "echo",
    "test",
];

/// Copies GRUB's BIOS modules from the host into `grub_dir`/i386-pc of the image.
pub fn install_grub_modules(grub_dir: &Path) -> Result<()> {
    let dest = grub_dir.join("i386-pc");
    util::mkdir(&dest)?;
    let src = Path::new(GRUB_PC_DIR);
    let entries = fs::read_dir(src).with_context(|| {
        format!("reading {GRUB_PC_DIR} (install grub-pc-bin with `cargo xtask setup`)")
    })?;
    for entry in entries {
        let path = entry?.path();
        let wanted = path.extension().is_some_and(|e| e == "mod" || e == "lst");
        if wanted {
            let name = path.file_name().context("module without a name")?;
            util::install(&path, &dest.join(name), 0o644)?;
        }
    }
    Ok(())
}

/// Makes the disk image `out` from the root file system in `root_dir` (which must have
/// /boot/grub filled in); `epoch` (seconds) is the file system's creation time.
pub fn assemble(root_dir: &Path, out: &Path, epoch: &str) -> Result<()> {
    let t = Instant::now();
    let total_sectors = DISK_SIZE / 512;
    let part_sectors = u32::try_from(total_sectors - PART_START)
        .context("the disk is too large for an MBR partition")?;
    let offset = PART_START * 512;
    let fs_kib = u64::from(part_sectors) / 2;

    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    file.set_len(DISK_SIZE)
        .with_context(|| format!("sizing {}", out.display()))?;
    drop(file);

    println!("xtask: ext4 root file system ({fs_kib} KiB) from the root directory (mkfs.ext4 -d)");
    util::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", ROOT_LABEL, "-U", ROOT_UUID])
            .arg("-E")
            .arg(format!("offset={offset},hash_seed={ROOT_UUID}"))
            .arg("-d")
            .arg(root_dir)
            .arg(out)
            .arg(format!("{fs_kib}k"))
            // The superblock's times.
            .env("E2FSPROGS_FAKE_TIME", epoch),
    )
    .context("mkfs.ext4 could not build the root file system (too large for the disk?)")?;
    stdout_of(
        Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(format!("{}?offset={offset}", out.display())),
    )
    .context("the new root file system does not pass e2fsck")?;

    let core = out.with_extension("core.img");
    let prefix = "(hd0,msdos1)/boot/grub";
    util::run(
        Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-d", GRUB_PC_DIR, "-p", prefix, "-o"])
            .arg(&core)
            .args(CORE_MODULES),
    )
    .context("grub-mkimage (install grub-pc-bin with `cargo xtask setup`)")?;
    let core_img = fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
    let _ = fs::remove_file(&core);
    if core_img.len() as u64 > (PART_START - 1) * 512 {
        bail!(
            "GRUB's core image ({} bytes) does not fit before the partition",
            core_img.len()
        );
    }
    let boot_img = fs::read(Path::new(GRUB_PC_DIR).join("boot.img"))
        .with_context(|| format!("reading {GRUB_PC_DIR}/boot.img"))?;
    let sector0 = mbr(&boot_img, DISK_SIGNATURE, PART_START as u32, part_sectors)?;

    // GRUB's boot code loads the core image from sector 1 (its default), and the core image's
    // first sector loads the rest from sector 2 on (grub-mkimage's default block list).
    let mut disk = fs::OpenOptions::new()
        .write(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    disk.write_all(&sector0)?;
    disk.seek(SeekFrom::Start(512))?;
    disk.write_all(&core_img)?;
    disk.sync_all()
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "xtask: disk laid out (MBR, GRUB, ext4) in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A master boot record: the first 440 bytes of `boot_code` (GRUB's boot.img), the disk
/// signature, one active Linux partition of `sectors` sectors from sector `start` (addressed by
/// LBA only), and the boot signature.
pub fn mbr(boot_code: &[u8], signature: u32, start: u32, sectors: u32) -> Result<[u8; 512]> {
    if boot_code.len() < 440 {
        bail!(
            "boot code of {} bytes; GRUB's boot.img has 512",
            boot_code.len()
        );
    }
    if start == 0 || sectors == 0 {
        bail!("a partition must start after sector 0 and not be empty");
    }
    let mut s = [0u8; 512];
    s[..440].copy_from_slice(&boot_code[..440]);
    s[440..444].copy_from_slice(&signature.to_le_bytes());
    let entry = &mut s[446..462];
    // Active; CHS fields all "beyond the CHS range" (0xfe 0xff 0xff), so LBA is used; type
    // 0x83 (Linux); first sector; number of sectors.
    entry[..8].copy_from_slice(&[0x80, 0xfe, 0xff, 0xff, 0x83, 0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&start.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xaa;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_layout() {
        let code: Vec<u8> = (0..512u32).map(|i| (i % 251) as u8).collect();
        let s = mbr(&code, 0x1234_5678, 2048, 2_095_104).unwrap();
        assert_eq!(&s[..440], &code[..440]);
        assert_eq!(&s[440..444], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&s[444..446], &[0, 0]);
        assert_eq!(s[446], 0x80, "active");
        assert_eq!(s[450], 0x83, "Linux");
        assert_eq!(u32::from_le_bytes(s[454..458].try_into().unwrap()), 2048);
        assert_eq!(
            u32::from_le_bytes(s[458..462].try_into().unwrap()),
            2_095_104
        );
        assert!(s[462..510].iter().all(|&b| b == 0), "one partition only");
        assert_eq!(&s[510..], &[0x55, 0xaa]);
    }

    #[test]
    fn mbr_refuses_bad_input() {
        assert!(mbr(&[0; 100], 1, 2048, 10).is_err());
        assert!(mbr(&[0; 512], 1, 0, 10).is_err());
        assert!(mbr(&[0; 512], 1, 2048, 0).is_err());
    }

    #[test]
    fn disk_geometry_fits_an_mbr() {
        let sectors = DISK_SIZE / 512 - PART_START;
        assert!(u32::try_from(sectors).is_ok());
        assert_eq!(DISK_SIZE % (1 << 20), 0, "whole MiB");
    }
}
