//! The UMEM: a page-aligned area of equally sized frames that the kernel copies received
//! packets into and reads transmitted ones from.

use std::io;

use super::mmap::Mapping;

/// The frame area, registered with a socket by [`super::XdpSocket::bind`].
#[derive(Debug)]
pub struct Umem {
    area: Mapping,
    frame_size: u32,
    frame_count: u32,
}

impl Umem {
    /// Maps `frame_count` frames of `frame_size` bytes (a power of two from 2048 to the page
    /// size, as the kernel requires for aligned frames).
    pub fn new(frame_count: u32, frame_size: u32) -> io::Result<Self> {
        check_geometry(frame_count, frame_size, page_size())?;
        let len = frame_count as usize * frame_size as usize;
        Ok(Umem {
            area: Mapping::anonymous(len)?,
            frame_size,
            frame_count,
        })
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// Start of the area (for `XDP_UMEM_REG`).
    pub fn as_ptr(&self) -> *mut u8 {
        self.area.as_ptr()
    }

    /// Length of the area in bytes.
    pub fn len(&self) -> usize {
        self.area.len()
    }

    /// Whether the area is empty (never, for a UMEM that was created).
    pub fn is_empty(&self) -> bool {
        self.area.is_empty()
    }

    /// UMEM address of frame `index`.
    pub fn frame_addr(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.frame_size)
    }

    /// The bytes `addr..addr + len` of the area, if they lie inside one frame.
    pub fn bytes(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let (start, len) = checked_range(addr, len, self.frame_size, self.area.len())?;
        // SAFETY: `start..start + len` lies inside the mapping (checked above); the kernel
        // wrote this frame before publishing its descriptor and does not touch it again until
        // the frame is given back through the fill ring, which needs `&mut self` of the socket.
        Some(unsafe { std::slice::from_raw_parts(self.area.as_ptr().add(start), len) })
    }

    /// Writable bytes `addr..addr + len`, if they lie inside one frame.
    pub fn bytes_mut(&mut self, addr: u64, len: u32) -> Option<&mut [u8]> {
        let (start, len) = checked_range(addr, len, self.frame_size, self.area.len())?;
        // SAFETY: inside the mapping (checked above); the frame is owned by userspace (not in
        // any ring) while the caller fills it, and `&mut self` excludes other borrows.
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.as_ptr().add(start), len) })
    }

    /// The start of the frame that contains `addr` (descriptors may point past a headroom).
    pub fn frame_base(&self, addr: u64) -> u64 {
        addr - addr % u64::from(self.frame_size)
    }
}

/// The system page size.
pub fn page_size() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// Validates a UMEM geometry: aligned frames are a power of two from 2048 bytes to a page.
pub fn check_geometry(frame_count: u32, frame_size: u32, page_size: u32) -> io::Result<()> {
    if !frame_size.is_power_of_two() || frame_size < 2048 || frame_size > page_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "UMEM frame size {frame_size}: must be a power of two from 2048 to the page \
                 size ({page_size})"
            ),
        ));
    }
    if frame_count == 0 || u64::from(frame_count) * u64::from(frame_size) > 1 << 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("UMEM of {frame_count} frames: must be 1 to 4 GiB in total"),
        ));
    }
    Ok(())
}

/// `(offset, len)` of `addr..addr + len` as `usize`, if it fits in the area and does not cross
/// a frame boundary.
pub fn checked_range(
    addr: u64,
    len: u32,
    frame_size: u32,
    area_len: usize,
) -> Option<(usize, usize)> {
    let end = addr.checked_add(u64::from(len))?;
    if end > area_len as u64 {
        return None;
    }
    let frame = u64::from(frame_size);
    if len > 0 && addr / frame != (end - 1) / frame {
        return None;
    }
    Some((usize::try_from(addr).ok()?, len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rules() {
        assert!(check_geometry(4096, 2048, 4096).is_ok());
        assert!(check_geometry(4096, 4096, 4096).is_ok());
        assert!(check_geometry(4096, 3000, 4096).is_err());
        assert!(check_geometry(4096, 1024, 4096).is_err());
        assert!(check_geometry(4096, 8192, 4096).is_err());
        assert!(check_geometry(0, 2048, 4096).is_err());
    }

    #[test]
    fn ranges_stay_inside_one_frame() {
        assert_eq!(checked_range(0, 2048, 2048, 8192), Some((0, 2048)));
        assert_eq!(
            checked_range(2048 + 256, 100, 2048, 8192),
            Some((2304, 100))
        );
        assert_eq!(checked_range(2000, 100, 2048, 8192), None);
        assert_eq!(checked_range(8192 - 10, 20, 2048, 8192), None);
        assert_eq!(checked_range(u64::MAX, 2, 2048, 8192), None);
        assert_eq!(checked_range(4096, 0, 2048, 8192), Some((4096, 0)));
    }
}
