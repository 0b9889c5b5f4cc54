//! `cargo xtask package qpkg`: the QNAP QTS package `target/qpkg/tailgate_<version>_x86_64.qpkg`,
//! written in QDK's format without QDK: a self-extracting shell header, a tar holding
//! `control.tar.gz` (installer, qpkg.cfg), `data.tar.gz` (the package directory), and QNAP's
//! 100-byte trailer (model, the size checksum QTS verifies, name, version, `QNAPQPKG`). The
//! static files live in `image/qnap/`; docs/qnap.md describes the package.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::spk_archive::{self as archive, Entry};
use super::util;

/// The package's static files, relative to the workspace root.
pub const ASSETS: &str = "image/qnap";
/// Where the package is written, relative to the workspace root.
pub const OUT_DIR: &str = "target/qpkg";
/// The package name (QPKG_NAME, at most 20 characters in the trailer).
pub const PACKAGE: &str = "tailgate";
/// `uname -m` of the machines this package is for (QDK's `x86_64` model).
pub const ARCH: &str = "x86_64";
/// Length of QNAP's trailer.
pub const TRAILER_LEN: usize = 100;
/// The trailer's last field.
pub const FLAG: &[u8; 10] = b"QNAPQPKG  ";
/// Multiplier of QTS's size checksum (QDK's `QNAPFLAG_ENCRYPT_KEY`).
const CHECKSUM_KEY: u64 = 3589;

/// A built package.
pub struct Qpkg {
    /// The .qpkg file.
    pub path: PathBuf,
    /// QPKG_VER.
    pub version: String,
}

/// The offsets the header script carries, and the trailer's fields.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    /// Length of the header script (the control tar starts there).
    pub script_len: usize,
    /// Length of the control tar.
    pub control_len: usize,
    /// Length of data.tar.gz.
    pub data_len: usize,
    /// QPKG name from the trailer.
    pub name: String,
    /// QPKG version from the trailer.
    pub version: String,
    /// The size checksum from the trailer.
    pub checksum: String,
}

/// QTS's size checksum of a `size`-byte package: the first ten digits of
/// `size × 3589 + 1000000000`.
pub fn size_checksum(size: u64) -> String {
    let mut s = (size * CHECKSUM_KEY + 1_000_000_000).to_string();
    s.truncate(10);
    s
}

/// A field of `width` bytes, space padded; fails if `value` is longer.
fn field(value: &str, width: usize) -> Result<Vec<u8>> {
    ensure!(
        value.len() <= width,
        "{value:?} is longer than the trailer's {width}-byte field"
    );
    let mut v = value.as_bytes().to_vec();
    v.resize(width, b' ');
    Ok(v)
}

/// The 100-byte trailer: model (10), reserved (30), checksum (10), firmware (10), name (20),
/// version (10), flag (10).
pub fn trailer(name: &str, version: &str, total_size: u64) -> Result<Vec<u8>> {
    let mut t = Vec::with_capacity(TRAILER_LEN);
    t.extend(field("", 10)?);
    t.extend(field("", 30)?);
    t.extend(field(&size_checksum(total_size), 10)?);
    t.extend(field("", 10)?);
    t.extend(field(name, 20)?);
    t.extend(field(version, 10)?);
    t.extend_from_slice(FLAG);
    Ok(t)
}

/// Fills a `@NAME@` placeholder with `value`, padded with spaces to the placeholder's length so
/// the header's own length does not change.
fn fill_fixed(text: &str, placeholder: &str, value: usize) -> Result<String> {
    let v = value.to_string();
    ensure!(
        v.len() <= placeholder.len() && text.matches(placeholder).count() == 1,
        "header: cannot put {value} into {placeholder}"
    );
    Ok(text.replace(
        placeholder,
        &format!("{v:<width$}", width = placeholder.len()),
    ))
}

/// Reads the offsets from a package's header and the fields of its trailer.
pub fn parse(data: &[u8]) -> Result<Layout> {
    ensure!(
        data.len() > TRAILER_LEN,
        "{} bytes: too short for a QPKG",
        data.len()
    );
    let tail = &data[data.len() - TRAILER_LEN..];
    ensure!(&tail[90..] == FLAG, "no QNAPQPKG flag at the end");
    let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&tail[r]).trim().to_string();
    let head_end = data.len().min(8192);
    let head = String::from_utf8_lossy(&data[..head_end]);
    let number = |key: &str| -> Result<usize> {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .with_context(|| format!("the header sets no {key}"))?
            .trim()
            .parse()
            .with_context(|| format!("{key} is not a number"))
    };
    let layout = Layout {
        script_len: number("script_len")?,
        control_len: number("control_len")?,
        data_len: number("data_len")?,
        name: text(60..80),
        version: text(80..90),
        checksum: text(40..50),
    };
    ensure!(
        layout.script_len + layout.control_len + layout.data_len + TRAILER_LEN == data.len(),
        "header offsets {layout:?} do not add up to the file's {} bytes",
        data.len()
    );
    Ok(layout)
}

/// Builds the .qpkg from `bin` (the release binary) and prints its path.
pub fn build(root: &Path, bin: &Path) -> Result<Qpkg> {
    let assets = root.join(ASSETS);
    let version = archive::binary_version(bin)?;
    if version.len() > 10 {
        bail!("version {version}: QPKG_VER has at most 10 characters");
    }
    let epoch = archive::source_date_epoch(root)?;
    let out_dir = root.join(OUT_DIR);
    let work = out_dir.join("build");
    util::remove_tree(&work)?;
    util::mkdir(&work)?;
    let read = |name: &str| -> Result<Vec<u8>> {
        fs::read(assets.join(name)).with_context(|| format!("reading {ASSETS}/{name}"))
    };

    let stripped = work.join("tailgate");
    util::copy_stripped(bin, &stripped)?;
    let data = vec![
        Entry::Dir("bin".into()),
        Entry::from_disk("bin/tailgate", &stripped, 0o755)?,
        Entry::File("tailgate.sh".into(), read("tailgate.sh")?, 0o755),
        Entry::File("qpkg-functions".into(), read("qpkg-functions")?, 0o644),
        Entry::File(".uninstall.sh".into(), read("uninstall.sh")?, 0o755),
        Entry::Dir("share".into()),
        Entry::File("share/tailgate.toml".into(), read("tailgate.toml")?, 0o644),
        Entry::from_disk("share/README.md", &root.join("config/README.md"), 0o644)?,
    ];
    let data_gz = archive::gzip_tar(&work.join("data.tar"), data, epoch)?;

    let cfg = String::from_utf8(read("qpkg.cfg.in")?)?.replace("@VERSION@", &version);
    let control = vec![
        Entry::File("qinstall.sh".into(), read("qinstall.sh")?, 0o755),
        Entry::File("qpkg.cfg".into(), cfg.into_bytes(), 0o644),
        Entry::File("qpkg-functions".into(), read("qpkg-functions")?, 0o644),
    ];
    let control_gz = archive::gzip_tar(&work.join("control.tar"), control, epoch)?;
    let control_tar = work.join("control-outer.tar");
    archive::write_tar(
        &control_tar,
        vec![Entry::from_disk("control.tar.gz", &control_gz, 0o644)?],
        epoch,
    )?;

    let control_bytes = fs::read(&control_tar)?;
    let data_bytes = fs::read(&data_gz)?;
    let mut header = String::from_utf8(read("header.sh")?)?.replace("@ARCH@", ARCH);
    let script_len = header.len();
    header = fill_fixed(&header, "@SCRIPT_LEN@", script_len)?;
    header = fill_fixed(&header, "@CONTROL_LEN@", control_bytes.len())?;
    header = fill_fixed(&header, "@DATA_LEN@", data_bytes.len())?;
    ensure!(header.len() == script_len, "the header changed length");
    let mut qpkg = header.into_bytes();
    qpkg.extend_from_slice(&control_bytes);
    qpkg.extend_from_slice(&data_bytes);
    let total = (qpkg.len() + TRAILER_LEN) as u64;
    qpkg.extend(trailer(PACKAGE, &version, total)?);

    let path = out_dir.join(format!("{PACKAGE}_{version}_{ARCH}.qpkg"));
    util::write(&path, qpkg, 0o644)?;
    util::remove_tree(&work)?;
    println!("xtask: built {}", path.display());
    Ok(Qpkg { path, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_matches_qdk() {
        // qpkg_encrypt: 12345 × 3589 + 1000000000 = 1044306205.
        assert_eq!(size_checksum(12_345), "1044306205");
        assert_eq!(size_checksum(5_000_000), "1894500000");
        let t = trailer("tailgate", "0.1.0", 12_345).unwrap();
        assert_eq!(t.len(), TRAILER_LEN);
        assert_eq!(&t[40..50], b"1044306205");
        assert_eq!(&t[60..80], b"tailgate            ");
        assert_eq!(&t[80..90], b"0.1.0     ");
        assert_eq!(&t[90..], FLAG);
        assert!(trailer("a-name-longer-than-twenty", "1", 1).is_err());
    }

    #[test]
    fn header_offsets_keep_the_header_length() {
        let h = "script_len=@SCRIPT_LEN@\nexit\n";
        let filled = fill_fixed(h, "@SCRIPT_LEN@", 1234).unwrap();
        assert_eq!(filled.len(), h.len());
        assert!(filled.starts_with("script_len=1234        \n"));
        assert!(fill_fixed(h, "@SCRIPT_LEN@", usize::MAX).is_err());
    }

    #[test]
    fn bad_packages_are_refused() {
        assert!(parse(b"#!/bin/sh\n").is_err());
        let mut fake = b"#!/bin/sh\nscript_len=10\ncontrol_len=1\ndata_len=1\n".to_vec();
        fake.extend(trailer("tailgate", "0.1.0", 1).unwrap());
        let e = parse(&fake).unwrap_err().to_string();
        assert!(e.contains("do not add up"), "{e}");
    }
}
