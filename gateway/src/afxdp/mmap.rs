//! Owned memory mappings (the UMEM and the rings), unmapped on drop.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// A memory mapping this process owns; `munmap`ped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving it to another thread moves
// the ownership (the kernel side of shared rings synchronises through atomics).
unsafe impl Send for Mapping {}

impl Mapping {
    /// Anonymous, private, zeroed, page-aligned memory of `len` bytes, populated up front.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; no existing memory
        // is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::from_result(addr, len)
            .map_err(|e| io::Error::new(e.kind(), format!("mapping {len} bytes of UMEM: {e}")))
    }

    /// A shared mapping of `len` bytes of `fd` at `offset` (an AF_XDP ring).
    pub fn shared(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ring offset out of range"))?;
        // SAFETY: maps `len` bytes of the socket's ring at a fresh address the kernel picks;
        // `fd` is a valid open descriptor for the duration of the call.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset,
            )
        };
        Self::from_result(addr, len)
    }

    fn from_result(addr: *mut libc::c_void, len: usize) -> io::Result<Self> {
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        Ok(Mapping { addr, len })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for mappings that were created).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly what mmap returned and nothing borrows the memory
        // beyond this value's lifetime.
        unsafe {
            libc::munmap(self.addr.as_ptr().cast(), self.len);
        }
    }
}
