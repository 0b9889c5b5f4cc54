//! Assembling `target/deb/tailgate_<version>_<arch>.deb` from the release binary, the files in
//! `image/deb/` and the example configuration, laid out as debhelper would
//! (`target/deb/build/debian/tailgate/`), and built with `dpkg-deb --root-owner-group`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::manpage;
use super::util::{self, install, install_gzipped, stdout_of, write};

/// The package's static files, relative to the workspace root.
pub const ASSETS: &str = "image/deb";
/// The example configuration installed as the conffile /etc/tailgate/tailgate.toml.
pub const DEFAULT_CONFIG: &str = "config/tailgate.toml";
/// Where the package is written, relative to the workspace root.
pub const OUT_DIR: &str = "target/deb";
/// The package name.
pub const PACKAGE: &str = "tailgate";
/// The systemd unit, as installed.
pub const UNIT_PATH: &str = "usr/lib/systemd/system/tailgate.service";
/// The conffile, as installed.
pub const CONFFILE: &str = "etc/tailgate/tailgate.toml";

/// A built package.
pub struct Deb {
    /// The .deb file.
    pub path: PathBuf,
    /// The Debian version (from gateway/Cargo.toml).
    pub version: String,
}

/// Builds the .deb from `bin` (the release binary `cargo xtask build` made) and prints its path.
pub fn build(root: &Path, bin: &Path) -> Result<Deb> {
    let assets = root.join(ASSETS);
    let cargo_version = cargo_version(root)?;
    let version = debian_version(&cargo_version);
    let bin_version = stdout_of(Command::new(bin).arg("--version"))?;
    if bin_version != format!("tailgate {cargo_version}") {
        bail!(
            "{} says {bin_version:?} but gateway/Cargo.toml has version {cargo_version}; rebuild \
             it with `cargo xtask build`",
            bin.display()
        );
    }
    let changelog = assets.join("changelog");
    let parse = |field: &str| -> Result<String> {
        stdout_of(
            Command::new("dpkg-parsechangelog")
                .arg("-l")
                .arg(&changelog)
                .args(["-S", field]),
        )
    };
    let changelog_version = parse("Version")?;
    if changelog_version != version {
        bail!(
            "{}: the latest entry is version {changelog_version}, but gateway/Cargo.toml makes \
             the package version {version}: add a changelog entry for it",
            changelog.display()
        );
    }
    // Dates in the man page and time stamps in the .deb come from the changelog, so the same
    // sources give the same package.
    let epoch = parse("Timestamp")?;
    let arch = stdout_of(Command::new("dpkg").arg("--print-architecture"))?;

    let out_dir = root.join(OUT_DIR);
    let build_dir = out_dir.join("build");
    util::remove_tree(&build_dir)?;
    let pkg = build_dir.join("debian").join(PACKAGE);
    let doc = pkg.join("usr/share/doc").join(PACKAGE);

    let installed_bin = pkg.join("usr/bin/tailgate");
    install(bin, &installed_bin, 0o755)?;
    util::strip(&installed_bin)?;
    install(
        &assets.join("tailgate.service"),
        &pkg.join(UNIT_PATH),
        0o644,
    )?;
    install(&root.join(DEFAULT_CONFIG), &pkg.join(CONFFILE), 0o644)?;
    let overrides = assets.join("lintian-overrides");
    if overrides.exists() {
        install(
            &overrides,
            &pkg.join("usr/share/lintian/overrides").join(PACKAGE),
            0o644,
        )?;
    }

    // Documentation: copyright, changelog, the packaging notes, the example configurations.
    write(
        &doc.join("copyright"),
        copyright(root, &assets.join("copyright"))?,
        0o644,
    )?;
    install_gzipped(&changelog, &doc.join("changelog.gz"))?;
    install(
        &root.join("docs/packaging.md"),
        &doc.join("packaging.md"),
        0o644,
    )?;
    for entry in fs::read_dir(root.join("config")).context("reading config/")? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".toml") || name == "README.md" {
            install(&path, &doc.join("examples").join(&*name), 0o644)?;
        }
    }

    let control_template = read(&assets.join("control"))?;
    let summary = control_template
        .lines()
        .find_map(|l| l.strip_prefix("Description: "))
        .context("image/deb/control has no Description")?;
    let man = build_dir.join("tailgate.1");
    manpage::generate(bin, summary, &assets.join("tailgate.h2m"), &epoch, &man)?;
    install_gzipped(&man, &pkg.join("usr/share/man/man1/tailgate.1.gz"))?;

    // DEBIAN/: control, conffiles, md5sums, maintainer scripts.
    let control = control_template
        .replace("@VERSION@", &version)
        .replace("@ARCH@", &arch)
        .replace("@DEPENDS@", &shlib_depends(&build_dir)?)
        .replace("@INSTALLED_SIZE@", &installed_size_kib(&pkg)?.to_string());
    if let Some(left) = placeholder(&control) {
        bail!("image/deb/control: unknown placeholder {left}");
    }
    let meta = pkg.join("DEBIAN");
    write(&meta.join("control"), control, 0o644)?;
    write(&meta.join("conffiles"), format!("/{CONFFILE}\n"), 0o644)?;
    write(&meta.join("md5sums"), md5sums(&pkg)?, 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        install(&assets.join(script), &meta.join(script), 0o755)?;
    }

    let deb = out_dir.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    util::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&pkg)
            .arg(&deb)
            .env("SOURCE_DATE_EPOCH", &epoch),
    )?;
    println!("xtask: built {}", deb.display());
    Ok(Deb { path: deb, version })
}

/// The first `@NAME@` placeholder left in `text`, if any.
fn placeholder(text: &str) -> Option<&str> {
    let mut parts = text.split('@');
    parts.next();
    let mut start = text.find('@')?;
    for part in parts {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return text.get(start..start + part.len() + 2);
        }
        start += part.len() + 1;
    }
    None
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The version of the `tailgate` package, as cargo resolves it (workspace inheritance included).
fn cargo_version(root: &Path) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let id = stdout_of(
        Command::new(cargo)
            .current_dir(root)
            .args(["pkgid", "-p", "tailgate"]),
    )?;
    // path+file:///…/gateway#tailgate@0.1.0, or …/gateway#0.1.0 with older cargo.
    let version = id
        .rsplit(['@', '#'])
        .next()
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .with_context(|| format!("no version in `cargo pkgid` output {id:?}"))?;
    Ok(version.to_string())
}

/// A Cargo (semver) version as a Debian version: a pre-release sorts before the release
/// (`1.0.0-rc.1` becomes `1.0.0~rc.1`).
fn debian_version(cargo: &str) -> String {
    match cargo.split_once('-') {
        Some((release, pre)) => format!("{release}~{pre}"),
        None => cargo.to_string(),
    }
}

/// The `Depends` of the binary's shared libraries, from `dpkg-shlibdeps` (which needs a
/// `debian/control` next to the package tree).
fn shlib_depends(build_dir: &Path) -> Result<String> {
    write(
        &build_dir.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
        0o644,
    )?;
    let out = stdout_of(
        Command::new("dpkg-shlibdeps")
            .current_dir(build_dir)
            .args(["-O", "-e"])
            .arg(format!("debian/{PACKAGE}/usr/bin/tailgate")),
    )?;
    let depends = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out:?}"))?;
    Ok(depends.to_string())
}

/// Every file and directory below `dir` except DEBIAN/, relative to `dir`, sorted.
fn tree(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            let rel = path.strip_prefix(dir)?.to_path_buf();
            if rel == Path::new("DEBIAN") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            }
            out.push(rel);
        }
    }
    out.sort();
    Ok(out)
}

/// `Installed-Size` as dpkg-gencontrol computes it: each file's size rounded up to KiB, plus
/// one per directory.
fn installed_size_kib(pkg: &Path) -> Result<u64> {
    let mut kib = 0;
    for rel in tree(pkg)? {
        let meta = fs::symlink_metadata(pkg.join(&rel))?;
        kib += if meta.is_file() {
            meta.len().div_ceil(1024)
        } else {
            1
        };
    }
    Ok(kib)
}

/// `DEBIAN/md5sums`: every file except the conffiles (dpkg keeps their sums itself).
fn md5sums(pkg: &Path) -> Result<String> {
    let files: Vec<PathBuf> = tree(pkg)?
        .into_iter()
        .filter(|rel| !rel.starts_with("etc") && pkg.join(rel).is_file())
        .collect();
    stdout_of(Command::new("md5sum").current_dir(pkg).args(&files)).map(|s| s + "\n")
}

/// The copyright file: `image/deb/copyright` with the crates linked into the binary (and into
/// its eBPF object) filled in from `cargo tree`.
fn copyright(root: &Path, template: &Path) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let crates = |extra: &[&str]| -> Result<Vec<String>> {
        let out = stdout_of(
            Command::new(&cargo)
                .current_dir(root)
                .args([
                    "tree",
                    "-e",
                    "normal,no-proc-macro",
                    "--prefix",
                    "none",
                    "-f",
                    "{p}|{l}",
                ])
                .args(extra),
        )?;
        let mut list: Vec<String> = out
            .lines()
            .filter_map(|l| {
                let (package, license) = l.trim_end_matches(" (*)").split_once('|')?;
                // Workspace crates (tailgate itself) show their path: "name v0.1.0 (/…)".
                if package.contains(" (") {
                    return None;
                }
                let license = if license.trim().is_empty() {
                    "see the crate's license file"
                } else {
                    license.trim()
                };
                Some(format!(" {package}: {license}"))
            })
            .collect();
        list.sort();
        list.dedup();
        Ok(list)
    };
    let mut lines = crates(&["-p", "tailgate"])?;
    lines.push(" .".into());
    lines.push(" eBPF object:".into());
    lines.extend(crates(&[
        "--manifest-path",
        &root.join("gateway-ebpf/Cargo.toml").to_string_lossy(),
    ])?);
    let text = read(template)?;
    if !text.contains("@BUNDLED_CRATES@") {
        bail!("{}: no @BUNDLED_CRATES@ placeholder", template.display());
    }
    Ok(text.replace("@BUNDLED_CRATES@", &lines.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_releases_sort_before_the_release() {
        assert_eq!(debian_version("0.1.0"), "0.1.0");
        assert_eq!(debian_version("1.0.0-rc.1"), "1.0.0~rc.1");
        assert_eq!(debian_version("1.0.0-rc.1+git5"), "1.0.0~rc.1+git5");
    }

    #[test]
    fn placeholders_are_found_but_not_mail_addresses() {
        assert_eq!(placeholder("Maintainer: a <a@example.org>\n"), None);
        assert_eq!(placeholder("Version: @VERSION@\n"), Some("@VERSION@"));
        assert_eq!(placeholder("x <a@b.org> @ARCH@"), Some("@ARCH@"));
    }
}
