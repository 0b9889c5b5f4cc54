//! `cargo xtask package spk`: the Synology DSM 7 package `target/spk/tailgate-<arch>-<version>.spk`,
//! a tar of INFO, package.tgz (bin/tailgate, the default configuration, the port definition),
//! scripts/, conf/privilege, conf/resource, the install wizard and the icons. The static files
//! live in `image/synology/`; docs/synology.md describes the package.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::spk_archive::{self as archive, Entry};
use super::util::{self, stdout_of};

/// The package's static files, relative to the workspace root.
pub const ASSETS: &str = "image/synology";
/// Where the package is written, relative to the workspace root.
pub const OUT_DIR: &str = "target/spk";
/// The package name (also the package user's name on DSM).
pub const PACKAGE: &str = "tailgate";
/// DSM's name for the architecture this is built for.
pub const ARCH: &str = "x86_64";
/// The scripts DSM runs, all required.
pub const SCRIPTS: &[&str] = &[
    "preinst",
    "postinst",
    "preuninst",
    "postuninst",
    "preupgrade",
    "postupgrade",
    "start-stop-status",
];
/// Icon files and their sizes (DSM 7: 64 and 256 pixels).
pub const ICONS: &[(&str, u32)] = &[("PACKAGE_ICON.PNG", 64), ("PACKAGE_ICON_256.PNG", 256)];

/// A built package.
pub struct Spk {
    /// The .spk file.
    pub path: PathBuf,
    /// The DSM version string in INFO (`<cargo version>-<build>`).
    pub version: String,
}

/// A Cargo version as a DSM version (`0.1.0` → `0.1.0-1`); DSM versions have no
/// pre-release part.
pub fn dsm_version(cargo: &str) -> Result<String> {
    if cargo.contains('-') || cargo.contains('+') {
        bail!(
            "version {cargo}: DSM package versions are NUMBERS-BUILD without a pre-release or \
             build suffix; build the SPK from a release version"
        );
    }
    Ok(format!("{cargo}-1"))
}

/// Builds the .spk from `bin` (the release binary) and prints its path.
pub fn build(root: &Path, bin: &Path) -> Result<Spk> {
    let assets = root.join(ASSETS);
    let version = dsm_version(&archive::binary_version(bin)?)?;
    let epoch = archive::source_date_epoch(root)?;
    let out_dir = root.join(OUT_DIR);
    let work = out_dir.join("build");
    util::remove_tree(&work)?;
    util::mkdir(&work)?;

    // package.tgz: what DSM unpacks into /var/packages/tailgate/target.
    let stripped = work.join("tailgate");
    util::copy_stripped(bin, &stripped)?;
    let inner = vec![
        Entry::Dir("bin".into()),
        Entry::from_disk("bin/tailgate", &stripped, 0o755)?,
        Entry::Dir("conf".into()),
        Entry::from_disk("conf/tailgate.sc", &assets.join("tailgate.sc"), 0o644)?,
        Entry::Dir("share".into()),
        Entry::from_disk("share/tailgate.toml", &assets.join("tailgate.toml"), 0o644)?,
        Entry::from_disk("share/README.md", &root.join("config/README.md"), 0o644)?,
    ];
    let inner_tar = work.join("package.tar");
    let extract_size = archive::write_tar(&inner_tar, inner, epoch)?;
    let package_tgz = archive::gzip(&inner_tar)?;
    let checksum = archive::md5_hex(&package_tgz)?;

    let create_time = stdout_of(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{epoch}"),
        "+%Y%m%d-%H:%M:%S",
    ]))?;
    let info_template = fs::read_to_string(assets.join("INFO.in"))
        .with_context(|| format!("reading {ASSETS}/INFO.in"))?;
    let info = info_template
        .replace("@VERSION@", &version)
        .replace("@ARCH@", ARCH)
        .replace("@CREATE_TIME@", &create_time)
        .replace("@EXTRACTSIZE@", &(extract_size / 1024).to_string())
        .replace("@CHECKSUM@", &checksum);
    if let Some(i) = info.find("=\"@") {
        bail!(
            "{ASSETS}/INFO.in: unknown placeholder near {:?}",
            &info[i..]
        );
    }

    let mut outer = vec![
        Entry::File("INFO".into(), info.into_bytes(), 0o644),
        Entry::from_disk("package.tgz", &package_tgz, 0o644)?,
        Entry::Dir("conf".into()),
        Entry::from_disk("conf/privilege", &assets.join("conf/privilege"), 0o644)?,
        Entry::from_disk("conf/resource", &assets.join("conf/resource"), 0o644)?,
        Entry::Dir("WIZARD_UIFILES".into()),
        Entry::from_disk(
            "WIZARD_UIFILES/install_uifile",
            &assets.join("WIZARD_UIFILES/install_uifile"),
            0o644,
        )?,
        Entry::Dir("scripts".into()),
        Entry::from_disk("scripts/common", &assets.join("scripts/common"), 0o644)?,
    ];
    for script in SCRIPTS {
        outer.push(Entry::from_disk(
            &format!("scripts/{script}"),
            &assets.join("scripts").join(script),
            0o755,
        )?);
    }
    for (name, size) in ICONS {
        outer.push(Entry::File(
            name.to_string(),
            archive::icon_png(*size),
            0o644,
        ));
    }
    let spk = out_dir.join(format!("{PACKAGE}-{ARCH}-{version}.spk"));
    archive::write_tar(&spk, outer, epoch)?;
    util::remove_tree(&work)?;
    println!("xtask: built {}", spk.display());
    Ok(Spk { path: spk, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsm_versions() {
        assert_eq!(dsm_version("0.1.0").unwrap(), "0.1.0-1");
        let e = dsm_version("1.0.0-rc.1").unwrap_err().to_string();
        assert!(e.contains("pre-release"), "{e}");
    }
}
