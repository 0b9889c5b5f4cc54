//! `cargo xtask package oci`: the container image `tailgate:latest` as an archive that both
//! `docker load` and `podman load` read, `target/oci/tailgate-oci.tar`, built without a
//! registry or a container engine.
//!
//! The root file system is a Debian root of the host's release made by mmdebstrap from the
//! host's apt sources: the essential set, the packages the .deb depends on, recommends and
//! suggests (nftables for kernel-mode subnet routing, ping, wg) and iproute2, without
//! documentation (copyright files stay), with the .deb of [`super::deb`] installed by dpkg. It
//! becomes one layer of an OCI image whose entrypoint is `tailgate containerboot`
//! (docs/container.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::check::host_suite_and_sources;
use super::deb::{self, Deb};
use super::oci_archive::{self, ImageConfig};
use super::util::{self, stdout_of, ScratchDir};

/// Where the image is written, relative to the workspace root.
pub const OUT_DIR: &str = "target/oci";
/// The archive's file name.
pub const ARCHIVE_NAME: &str = "tailgate-oci.tar";
/// The image's name and tag (the compose examples in image/compose/ use `tailgate:latest`).
pub const IMAGE_NAME: &str = "tailgate";
pub const IMAGE_TAG: &str = "latest";
/// The entrypoint.
pub const ENTRYPOINT: &[&str] = &["/usr/bin/tailgate", "containerboot"];
/// The state directory (`TS_STATE_DIR`), a volume.
pub const STATE_DIR: &str = "/var/lib/tailgate";
/// Packages besides the essential set and the .deb's own relations.
const EXTRA_PACKAGES: &[&str] = &["iproute2"];
/// What dpkg leaves out of the root (kept in the image's /etc/dpkg/dpkg.cfg.d/, so packages
/// installed later in a derived image leave it out too).
const DPKG_FILTERS: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
];
/// mmdebstrap's hooks that set up /bin, /lib, /sbin as links into /usr, as Debian's installer
/// does (without them apt would pick the usrmerge package, which pulls in Perl).
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// A built image archive.
pub struct Image {
    /// The archive (OCI layout + docker `manifest.json`).
    pub archive: PathBuf,
    /// `tailgate:latest`.
    pub reference: String,
    /// The OCI architecture (`amd64`, …).
    pub architecture: String,
    /// The compressed layer, in bytes (about what a registry would transfer).
    pub layer_size: u64,
    /// The root file system as an uncompressed tar, in bytes.
    pub rootfs_size: u64,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
}

/// Builds the .deb from `bin`, then the image from it.
pub fn build(root: &Path, bin: &Path) -> Result<Image> {
    let deb = deb::build(root, bin)?;
    build_from_deb(root, &deb)
}

/// Builds the image archive from a built .deb and prints what it made.
pub fn build_from_deb(root: &Path, deb: &Deb) -> Result<Image> {
    let started = Instant::now();
    let epoch = changelog_epoch(root)?;
    let dpkg_arch = stdout_of(Command::new("dpkg").arg("--print-architecture"))?;
    let architecture = oci_architecture(&dpkg_arch)?;
    let fields = stdout_of(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb.path)
            .args(["Depends", "Recommends", "Suggests", "Description"]),
    )?;
    let mut packages = Vec::new();
    for field in ["Depends", "Recommends", "Suggests"] {
        packages.extend(package_names(&field_value(&fields, field)));
    }
    packages.extend(EXTRA_PACKAGES.iter().map(|p| p.to_string()));
    packages.sort();
    packages.dedup();
    let summary = field_value(&fields, "Description");

    let out_dir = root.join(OUT_DIR);
    util::mkdir(&out_dir)?;
    let scratch = ScratchDir::new(out_dir.join("build"))?;
    let rootfs = scratch.path().join("rootfs");
    bootstrap(&rootfs, deb, &packages, epoch)?;

    // The binary runs in the root and is the package's.
    let version = stdout_of(
        Command::new("chroot")
            .arg(&rootfs)
            .args([ENTRYPOINT[0], "--version"]),
    )?;
    if !version.ends_with(&format!(" {}", deb.version.replace('~', "-"))) {
        bail!("tailgate --version in the image's root says {version:?}");
    }
    for tool in ["usr/sbin/nft", "usr/bin/ip", "usr/bin/ping", "usr/bin/wg"] {
        if !rootfs.join(tool).exists() {
            bail!("the image's root has no /{tool}");
        }
    }

    let t = Instant::now();
    let layer = oci_archive::write_layer(&rootfs, epoch, &scratch.path().join("layer.tar.gz"))?;
    let created = oci_archive::rfc3339(epoch);
    let labels = BTreeMap::from([
        ("org.opencontainers.image.title".into(), IMAGE_NAME.into()),
        ("org.opencontainers.image.description".into(), summary),
        (
            "org.opencontainers.image.version".into(),
            deb.version.clone(),
        ),
        ("org.opencontainers.image.licenses".into(), license(root)?),
        ("org.opencontainers.image.created".into(), created),
    ]);
    let config = ImageConfig {
        name: IMAGE_NAME.into(),
        tag: IMAGE_TAG.into(),
        architecture: architecture.into(),
        created: epoch,
        entrypoint: ENTRYPOINT.iter().map(|s| s.to_string()).collect(),
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("TS_STATE_DIR={STATE_DIR}"),
        ],
        volumes: vec![STATE_DIR.into()],
        labels,
        created_by: format!(
            "cargo xtask package oci: Debian essential set, {}, {}",
            packages.join(", "),
            deb.path.file_name().unwrap_or_default().to_string_lossy()
        ),
    };
    let archive = oci_archive::write_archive(&config, &layer, &out_dir.join(ARCHIVE_NAME))?;
    println!("xtask: layer written in {:.0} s", t.elapsed().as_secs_f64());
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "xtask: built {} ({}:{}, image ID {}, layer {:.1} MiB compressed, {:.1} MiB \
         uncompressed) in {:.0} s",
        archive.path.display(),
        IMAGE_NAME,
        IMAGE_TAG,
        &archive.config_digest[..19],
        mib(layer.size),
        mib(layer.tar_size),
        started.elapsed().as_secs_f64()
    );
    Ok(Image {
        archive: archive.path,
        reference: format!("{IMAGE_NAME}:{IMAGE_TAG}"),
        architecture: architecture.into(),
        layer_size: layer.size,
        rootfs_size: layer.tar_size,
        manifest_digest: archive.manifest_digest,
    })
}

/// The root file system: mmdebstrap (essential set + `packages`), then the .deb by dpkg.
fn bootstrap(rootfs: &Path, deb: &Deb, packages: &[String], epoch: u64) -> Result<()> {
    if !Path::new(MERGED_USR_HOOKS).is_dir() {
        bail!("{MERGED_USR_HOOKS} is missing (install mmdebstrap with `cargo xtask setup`)");
    }
    let (suite, sources) = host_suite_and_sources()?;
    let name = deb
        .path
        .file_name()
        .context("package path has no file name")?
        .to_string_lossy()
        .to_string();
    println!(
        "xtask: image root: {suite} essential set + {} + {name} (mmdebstrap)",
        packages.join(", ")
    );
    let t = Instant::now();
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--quiet",
        "--mode=root",
        "--variant=essential",
        "--format=directory",
    ])
    .arg(format!("--hook-dir={MERGED_USR_HOOKS}"))
    .arg(format!("--include={}", packages.join(",")));
    for filter in DPKG_FILTERS {
        cmd.arg(format!("--dpkgopt={filter}"));
    }
    cmd.arg(format!(
        "--customize-hook=copy-in {} /tmp",
        deb.path.display()
    ))
    .arg(format!(
        "--customize-hook=chroot \"$1\" dpkg --install /tmp/{name}"
    ))
    // The build host's name and resolver are not the image's: the container runtime provides
    // both. Debconf's backups are not needed.
    .arg(format!(
        "--customize-hook=rm -f \"$1\"/tmp/{name} \"$1\"/etc/hostname \"$1\"/etc/resolv.conf \
         \"$1\"/var/cache/debconf/*-old"
    ))
    .arg(&suite)
    .arg(rootfs)
    .arg(&sources)
    .env("SOURCE_DATE_EPOCH", epoch.to_string());
    // mmdebstrap's hooks and dpkg talk a lot; their output is shown when something fails.
    let out = cmd
        .output()
        .context("running mmdebstrap (install it with `cargo xtask setup`)")?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "mmdebstrap failed ({}); its last lines:\n{}",
            out.status,
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    println!(
        "xtask: image root ready in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The time of the changelog's latest entry, as the .deb uses for its time stamps.
fn changelog_epoch(root: &Path) -> Result<u64> {
    let ts = stdout_of(
        Command::new("dpkg-parsechangelog")
            .arg("-l")
            .arg(root.join(deb::ASSETS).join("changelog"))
            .args(["-S", "Timestamp"]),
    )?;
    ts.parse()
        .with_context(|| format!("dpkg-parsechangelog gave the time stamp {ts:?}"))
}

/// The workspace's license expression (for the image's label), from `cargo metadata`.
fn license(root: &Path) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = stdout_of(Command::new(cargo).current_dir(root).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))?;
    let meta: serde_json::Value = serde_json::from_str(&out).context("parsing cargo metadata")?;
    meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == deb::PACKAGE))
        .and_then(|p| p["license"].as_str())
        .map(str::to_string)
        .context("cargo metadata has no license for the tailgate package")
}

/// The OCI name of a Debian architecture.
fn oci_architecture(dpkg: &str) -> Result<&'static str> {
    Ok(match dpkg {
        "amd64" => "amd64",
        "arm64" => "arm64",
        "i386" => "386",
        "ppc64el" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => bail!("no OCI architecture for the Debian architecture {other}"),
    })
}

/// The first line of field `name` in `dpkg-deb --field` output of several fields.
fn field_value(fields: &str, name: &str) -> String {
    fields
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Package names in a relation field (`libc6 (>= 2.34), a | b`): the first of each
/// alternative, without version or architecture.
fn package_names(relations: &str) -> Vec<String> {
    relations
        .split(',')
        .filter_map(|rel| {
            let first = rel.split('|').next()?.trim();
            let name = first.split([' ', '(', ':', '[']).next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_fields_give_package_names() {
        assert_eq!(
            package_names("libc6 (>= 2.34), libgcc-s1 (>= 4.2)"),
            ["libc6", "libgcc-s1"]
        );
        assert_eq!(package_names("a | b, c:any, "), ["a", "c"]);
        assert!(package_names("").is_empty());
    }

    #[test]
    fn fields_are_found_by_name() {
        let out = "Depends: libc6 (>= 2.34)\nRecommends: nftables\nDescription: mesh VPN\n more\n";
        assert_eq!(field_value(out, "Recommends"), "nftables");
        assert_eq!(field_value(out, "Description"), "mesh VPN");
        assert_eq!(field_value(out, "Suggests"), "");
    }
}
