//! Archive helpers shared by the NAS packages (SPK, QPKG): deterministic tar archives (sorted
//! entries, one time stamp, root-owned), `gzip -n`, MD5 sums, and the package icons as PNG
//! files drawn in code.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use tar::{EntryType, Header};

use super::util::stdout_of;

/// One tar entry: a directory, or a file with its bytes and mode.
pub enum Entry {
    /// A directory (mode 0755).
    Dir(String),
    /// A regular file: name, contents, mode.
    File(String, Vec<u8>, u32),
}

impl Entry {
    /// A file read from `src`.
    pub fn from_disk(name: &str, src: &Path, mode: u32) -> Result<Entry> {
        let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        Ok(Entry::File(name.to_string(), data, mode))
    }
}

/// Writes `entries` as a tar file to `out` (sorted by name, owned by 0:0, time `mtime`);
/// returns its size in bytes.
pub fn write_tar(out: &Path, mut entries: Vec<Entry>, mtime: u64) -> Result<u64> {
    let name = |e: &Entry| match e {
        Entry::Dir(n) | Entry::File(n, _, _) => n.clone(),
    };
    entries.sort_by_key(name);
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut builder = tar::Builder::new(file);
    for e in &entries {
        let mut h = Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        match e {
            Entry::Dir(n) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                builder.append_data(&mut h, format!("{}/", n.trim_end_matches('/')), &[][..])?;
            }
            Entry::File(n, data, mode) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, n, &data[..])?;
            }
        }
    }
    builder.into_inner()?.flush()?;
    Ok(fs::metadata(out)?.len())
}

/// Compresses `src` to `src.gz` with `gzip -n -9` (no name or time in the header); returns
/// the new path.
pub fn gzip(src: &Path) -> Result<PathBuf> {
    super::util::run(Command::new("gzip").args(["-n", "-9", "-f"]).arg(src))?;
    let mut out = src.as_os_str().to_owned();
    out.push(".gz");
    Ok(PathBuf::from(out))
}

/// Writes `entries` as a tar at `tar_path` and compresses it; returns the `.gz` path.
pub fn gzip_tar(tar_path: &Path, entries: Vec<Entry>, mtime: u64) -> Result<PathBuf> {
    write_tar(tar_path, entries, mtime)?;
    gzip(tar_path)
}

/// The MD5 sum of `path`, in hex.
pub fn md5_hex(path: &Path) -> Result<String> {
    let out = stdout_of(Command::new("md5sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .with_context(|| format!("md5sum printed nothing for {}", path.display()))
}

/// `SOURCE_DATE_EPOCH` of the packages: the latest entry of `image/deb/changelog`.
pub fn source_date_epoch(root: &Path) -> Result<u64> {
    let out = stdout_of(
        Command::new("dpkg-parsechangelog")
            .arg("-l")
            .arg(root.join("image/deb/changelog"))
            .args(["-S", "Timestamp"]),
    )?;
    out.parse()
        .with_context(|| format!("changelog timestamp {out:?}"))
}

/// The version `bin --version` reports (`tailgate X.Y.Z` → `X.Y.Z`).
pub fn binary_version(bin: &Path) -> Result<String> {
    let out = stdout_of(Command::new(bin).arg("--version"))?;
    out.strip_prefix("tailgate ")
        .map(str::to_string)
        .with_context(|| format!("{} --version printed {out:?}", bin.display()))
}

/// The package icon, `size`×`size` pixels, as a PNG file: a rounded blue tile with a white
/// ring and a dot (a node), drawn in code so the same sources give the same bytes.
pub fn icon_png(size: u32) -> Vec<u8> {
    let s = size as f32;
    let mut raw = Vec::with_capacity(((size * 4 + 1) * size) as usize);
    for y in 0..size {
        raw.push(0); // filter: none
        for x in 0..size {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let r = s * 0.18;
            let (cx, cy) = (fx.clamp(r, s - r), fy.clamp(r, s - r));
            let inside = (fx - cx).powi(2) + (fy - cy).powi(2) <= r * r;
            let d = ((fx - s / 2.0).powi(2) + (fy - s / 2.0).powi(2)).sqrt() / s;
            let white = (0.22..0.30).contains(&d) || d < 0.09;
            let px: [u8; 4] = match (inside, white) {
                (false, _) => [0, 0, 0, 0],
                (true, true) => [255, 255, 255, 255],
                (true, false) => [0x1f, 0x6f, 0xeb, 255],
            };
            raw.extend_from_slice(&px);
        }
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&size.to_be_bytes());
    ihdr.extend_from_slice(&size.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65535).collect();
    for (i, b) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = b.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &x in data {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Width and height of a PNG file, from its IHDR chunk.
pub fn png_size(data: &[u8]) -> Option<(u32, u32)> {
    if data.len() < 24 || &data[..8] != b"\x89PNG\r\n\x1a\n" || &data[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(data[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(data[20..24].try_into().ok()?);
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_icon_headers_are_right() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        let png = icon_png(64);
        assert_eq!(png_size(&png), Some((64, 64)));
        assert!(png.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]));
        assert_eq!(png_size(b"GIF89a"), None);
    }
}
