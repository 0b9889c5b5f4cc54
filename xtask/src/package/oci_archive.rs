//! Deterministic OCI image archives, written without a registry or a container engine: a root
//! file system as one gzip layer, the image config, manifest and index as an OCI image layout
//! in a tar, plus the `manifest.json` of `docker save`, so that both `docker load` (any
//! version) and `podman load` / `skopeo` (as an `oci-archive`) read the same file.
//!
//! The same tree and inputs give the same bytes: entries sorted by name, every time stamp set to
//! one epoch, `gzip -n` (no name or time in the header), JSON with sorted keys.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// Media types of the OCI image specification.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Top-level directories whose contents are not part of an image: the container runtime mounts
/// its own there (device nodes would not be portable anyway). The directories themselves stay.
const RUNTIME_MOUNTS: &[&str] = &["dev", "proc", "sys"];
/// The one extended attribute carried into the layer: file capabilities (`ping` has
/// `cap_net_raw`), as a PAX `SCHILY.xattr.` record as docker and podman expect.
const XATTR_CAPABILITY: &str = "security.capability";

/// A compressed layer blob, written to a file.
pub struct Layer {
    /// The gzip file.
    pub path: PathBuf,
    /// `sha256:…` of the gzip file (the blob digest).
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// `sha256:…` of the uncompressed tar (the config's `diff_ids`).
    pub diff_id: String,
    /// Size of the uncompressed tar in bytes.
    pub tar_size: u64,
}

/// What the image runs and how it is described.
pub struct ImageConfig {
    /// Repository name, as in `tailgate:latest`.
    pub name: String,
    /// Tag.
    pub tag: String,
    /// OCI architecture (`amd64`, `arm64`, …).
    pub architecture: String,
    /// Creation time, seconds since the epoch (`SOURCE_DATE_EPOCH`).
    pub created: u64,
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Env`, `NAME=value`.
    pub env: Vec<String>,
    /// `config.Volumes`.
    pub volumes: Vec<String>,
    /// `config.Labels`, also the manifest's annotations.
    pub labels: BTreeMap<String, String>,
    /// The history entry's `created_by`.
    pub created_by: String,
}

/// A written image archive.
pub struct Archive {
    /// The tar file.
    pub path: PathBuf,
    /// `sha256:…` of the manifest (what `skopeo inspect` calls the digest).
    pub manifest_digest: String,
    /// `sha256:…` of the config (docker's image ID).
    pub config_digest: String,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, the `sha256:…` digest and the byte count.
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex(&self.hasher.finalize()));
        (self.inner, digest, self.len)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:…` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Writes the tree at `rootfs` as a gzip-compressed layer tar to `out` (see the module
/// documentation for what makes it reproducible). Owners, modes (setuid included), symbolic
/// and hard links and file capabilities are kept; the contents of /dev, /proc and /sys are left
/// out; any other device node, FIFO or socket is an error.
///
/// Compression is gzip's (`gzip -6n`, several times faster than an unoptimised build of a Rust
/// deflate, as xtask is built).
pub fn write_layer(rootfs: &Path, epoch: u64, out: &Path) -> Result<Layer> {
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut gzip = Command::new("gzip")
        .args(["-6", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("running gzip")?;
    let stdin = gzip.stdin.take().context("gzip has no stdin")?;
    let mut tar = tar::Builder::new(Hashing::new(io::BufWriter::with_capacity(1 << 16, stdin)));
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let written = sorted_tree(rootfs).and_then(|tree| {
        for rel in tree {
            append_entry(&mut tar, rootfs, &rel, epoch, &mut links)
                .with_context(|| format!("adding /{} to the layer", rel.display()))?;
        }
        tar.finish()?;
        Ok(())
    });
    // Closing gzip's input (also after an error) lets it finish.
    let (buf, diff_id, tar_size) = tar.into_inner()?.finish();
    let flushed = buf.into_inner().map(drop).map_err(|e| e.into_error());
    let status = gzip.wait().context("waiting for gzip")?;
    written?;
    flushed.context("writing to gzip")?;
    if !status.success() {
        bail!("gzip failed: {status}");
    }
    let mut hash = Hashing::new(io::sink());
    io::copy(
        &mut fs::File::open(out).with_context(|| format!("opening {}", out.display()))?,
        &mut hash,
    )?;
    let (_, digest, size) = hash.finish();
    Ok(Layer {
        path: out.to_path_buf(),
        digest,
        size,
        diff_id,
        tar_size,
    })
}

/// Every path below `root` (relative, parents before children, siblings sorted by their bytes),
/// without the contents of [`RUNTIME_MOUNTS`].
fn sorted_tree(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let dir = root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let child = rel.join(&name);
            out.push(child.clone());
            let meta = fs::symlink_metadata(root.join(&child))?;
            let skip = rel.as_os_str().is_empty()
                && RUNTIME_MOUNTS
                    .iter()
                    .any(|m| name.as_bytes() == m.as_bytes());
            if meta.is_dir() && !skip {
                walk(root, &child, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out)?;
    Ok(out)
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    rootfs: &Path,
    rel: &Path,
    epoch: u64,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let path = rootfs.join(rel);
    let meta = fs::symlink_metadata(&path)?;
    let kind = meta.file_type();
    let mut header = Header::new_gnu();
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(meta.uid().into());
    header.set_gid(meta.gid().into());
    header.set_mtime(epoch);
    header.set_size(0);
    if kind.is_dir() {
        header.set_entry_type(EntryType::Directory);
        tar.append_data(&mut header, rel, io::empty())?;
    } else if kind.is_symlink() {
        header.set_entry_type(EntryType::Symlink);
        let target = fs::read_link(&path)?;
        tar.append_link(&mut header, rel, target)?;
    } else if kind.is_file() {
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                header.set_entry_type(EntryType::Link);
                tar.append_link(&mut header, rel, first)?;
                return Ok(());
            }
            links.insert((meta.dev(), meta.ino()), rel.to_path_buf());
        }
        if let Some(cap) = xattr(&path, XATTR_CAPABILITY)? {
            append_pax(tar, rel, epoch, &[(XATTR_CAPABILITY, &cap)])?;
        }
        header.set_entry_type(EntryType::Regular);
        header.set_size(meta.len());
        let mut file = fs::File::open(&path)?;
        tar.append_data(&mut header, rel, &mut file)?;
    } else if kind.is_block_device() || kind.is_char_device() || kind.is_fifo() || kind.is_socket()
    {
        bail!("a device node, FIFO or socket outside /dev has no place in an image layer");
    } else {
        bail!("unknown file type");
    }
    Ok(())
}

/// A PAX extended header with `SCHILY.xattr.NAME` records for the entry `rel` that follows.
fn append_pax<W: Write>(
    tar: &mut tar::Builder<W>,
    rel: &Path,
    epoch: u64,
    xattrs: &[(&str, &[u8])],
) -> Result<()> {
    let mut data = Vec::new();
    for (name, value) in xattrs {
        let key = format!("SCHILY.xattr.{name}");
        // "LEN KEY=VALUE\n", where LEN counts the whole record, its own digits included.
        let rest = 1 + key.len() + 1 + value.len() + 1;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let name = rel
        .file_name()
        .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        .unwrap_or_default();
    // The header's own name is informational; keep it within ustar's 100 bytes.
    let name: String = format!("PaxHeaders.0/{name}").chars().take(99).collect();
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::XHeader);
    header.set_path(&name)?;
    header.set_mode(0o644);
    header.set_mtime(epoch);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data.as_slice())?;
    Ok(())
}

/// The value of extended attribute `name` of `path` (not following symbolic links), if set.
fn xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let c_name = CString::new(name)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated; the buffer is valid for `buf.len()` bytes.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(err).with_context(|| format!("reading {name} of {}", path.display())),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// `seconds` since the epoch as RFC 3339 in UTC (`2024-05-01T12:00:00Z`).
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let secs = seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The image config document.
fn config_json(image: &ImageConfig, layer: &Layer) -> Value {
    let created = rfc3339(image.created);
    let volumes: serde_json::Map<String, Value> = image
        .volumes
        .iter()
        .map(|v| (v.clone(), json!({})))
        .collect();
    json!({
        "created": created,
        "architecture": image.architecture,
        "os": "linux",
        "config": {
            "Env": image.env,
            "Entrypoint": image.entrypoint,
            "WorkingDir": "/",
            "Volumes": volumes,
            "StopSignal": "SIGTERM",
            "Labels": image.labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
        "history": [{ "created": created, "created_by": image.created_by }],
    })
}

/// Writes the image archive to `out`: an OCI image layout (`oci-layout`, `index.json`,
/// `blobs/sha256/…`) with docker's `manifest.json` beside it, the blobs shared.
pub fn write_archive(image: &ImageConfig, layer: &Layer, out: &Path) -> Result<Archive> {
    let reference = format!("{}:{}", image.name, image.tag);
    let config = serde_json::to_vec(&config_json(image, layer))?;
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size }],
        "annotations": image.labels,
    }))?;
    let manifest_digest = digest(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": image.architecture, "os": "linux" },
            "annotations": {
                // containerd (docker's image store) takes the full name from here …
                "io.containerd.image.name": format!("docker.io/library/{reference}"),
                // … podman, skopeo and umoci from here.
                "org.opencontainers.image.ref.name": reference,
            },
        }],
    }))?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": [reference],
        "Layers": [blob(&layer.digest)],
    }]))?;

    let tmp = out.with_extension("tar.partial");
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    let epoch = image.created;
    let dir = |tar: &mut tar::Builder<_>, path: &str| -> io::Result<()> {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(epoch);
        h.set_size(0);
        tar.append_data(&mut h, path, io::empty())
    };
    let file_entry = |tar: &mut tar::Builder<_>, path: &str, len: u64, data: &mut dyn Read| {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(epoch);
        h.set_size(len);
        tar.append_data(&mut h, path, data)
    };
    dir(&mut tar, "blobs")?;
    dir(&mut tar, "blobs/sha256")?;
    // Blobs in digest order, so the archive does not depend on which is which.
    let mut layer_file =
        fs::File::open(&layer.path).with_context(|| format!("opening {}", layer.path.display()))?;
    let (mut config_data, mut manifest_data) = (config.as_slice(), manifest.as_slice());
    let mut blobs: Vec<(String, u64, &mut dyn Read)> = vec![
        (blob(&config_digest), config.len() as u64, &mut config_data),
        (
            blob(&manifest_digest),
            manifest.len() as u64,
            &mut manifest_data,
        ),
        (blob(&layer.digest), layer.size, &mut layer_file),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, len, data) in blobs {
        file_entry(&mut tar, &path, len, data)?;
    }
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    for (path, data) in [
        ("index.json", index.as_slice()),
        ("manifest.json", docker_manifest.as_slice()),
        ("oci-layout", layout.as_slice()),
    ] {
        file_entry(&mut tar, path, data.len() as u64, &mut &*data)?;
    }
    tar.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(Archive {
        path: out.to_path_buf(),
        manifest_digest,
        config_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut out = Vec::new();
        let mut tar = tar::Builder::new(&mut out);
        append_pax(
            &mut tar,
            Path::new("usr/bin/ping"),
            0,
            &[("a.b", &[7u8; 95])],
        )
        .unwrap();
        tar.finish().unwrap();
        drop(tar);
        let data = &out[512..];
        let space = data.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&data[..space])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(data[len - 1], b'\n');
        assert_eq!(&data[space + 1..space + 19], b"SCHILY.xattr.a.b=\x07");
        // " " + 16 + "=" + 95 + "\n" = 114 bytes, and three digits.
        assert_eq!(len, 117);
    }

    fn tree_in(dir: &Path) {
        fs::create_dir_all(dir.join("usr/bin")).unwrap();
        fs::create_dir_all(dir.join("dev")).unwrap();
        fs::write(dir.join("usr/bin/b"), b"bee").unwrap();
        fs::write(dir.join("usr/bin/a"), b"ay").unwrap();
        fs::hard_link(dir.join("usr/bin/a"), dir.join("usr/bin/a2")).unwrap();
        fs::write(dir.join("dev/null"), b"not a device").unwrap();
        symlink("usr/bin", dir.join("bin")).unwrap();
    }

    #[test]
    fn layers_are_reproducible_and_complete() {
        let base = std::env::temp_dir().join(format!("xtask-oci-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (one, two) = (base.join("one"), base.join("two"));
        tree_in(&one);
        tree_in(&two);
        let l1 = write_layer(&one, 1_700_000_000, &base.join("one.tar.gz")).unwrap();
        let l2 = write_layer(&two, 1_700_000_000, &base.join("two.tar.gz")).unwrap();
        assert_eq!(l1.digest, l2.digest);
        assert_eq!(l1.diff_id, l2.diff_id);
        assert_eq!(digest(&fs::read(&l1.path).unwrap()), l1.digest);

        let tar = Command::new("gzip")
            .arg("-dc")
            .arg(&l1.path)
            .output()
            .unwrap();
        assert!(tar.status.success());
        let mut ar = tar::Archive::new(tar.stdout.as_slice());
        let entries: Vec<(String, EntryType, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "usr",
                "usr/bin",
                "usr/bin/a",
                "usr/bin/a2",
                "usr/bin/b"
            ]
        );
        assert_eq!(entries[0].1, EntryType::Symlink);
        assert_eq!(entries[5].1, EntryType::Link);
        assert!(entries.iter().all(|e| e.2 == 1_700_000_000));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn archives_hold_an_oci_layout_and_a_docker_manifest() {
        let base = std::env::temp_dir().join(format!("xtask-oci-arch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        tree_in(&base.join("root"));
        let layer = write_layer(&base.join("root"), 0, &base.join("layer.tar.gz")).unwrap();
        let image = ImageConfig {
            name: "tailgate".into(),
            tag: "latest".into(),
            architecture: "amd64".into(),
            created: 0,
            entrypoint: vec!["/usr/bin/tailgate".into(), "containerboot".into()],
            env: vec!["PATH=/usr/bin".into()],
            volumes: vec!["/var/lib/tailgate".into()],
            labels: BTreeMap::from([("org.opencontainers.image.title".into(), "t".into())]),
            created_by: "test".into(),
        };
        let out = base.join("image.tar");
        let archive = write_archive(&image, &layer, &out).unwrap();
        let mut files = BTreeMap::new();
        let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(path, data);
        }
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], archive.manifest_digest.as_str());
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "tailgate:latest"
        );
        let blob = |d: &str| files[&format!("blobs/sha256/{}", &d[7..])].clone();
        let manifest_bytes = blob(&archive.manifest_digest);
        assert_eq!(digest(&manifest_bytes), archive.manifest_digest);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], layer.digest.as_str());
        assert_eq!(digest(&blob(&layer.digest)), layer.digest);
        let config: Value = serde_json::from_slice(&blob(&archive.config_digest)).unwrap();
        assert_eq!(config["config"]["Entrypoint"][1], "containerboot");
        assert_eq!(config["rootfs"]["diff_ids"][0], layer.diff_id.as_str());
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        let docker: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(docker[0]["RepoTags"][0], "tailgate:latest");
        assert!(files.contains_key(docker[0]["Layers"][0].as_str().unwrap()));
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        fs::remove_dir_all(&base).unwrap();
    }
}
