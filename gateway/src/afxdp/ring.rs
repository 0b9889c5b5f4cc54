//! The four AF_XDP rings: single-producer / single-consumer arrays of a power-of-two size
//! whose free-running `u32` producer and consumer indices live in memory shared with the
//! kernel. The side that produces publishes entries with a Release store of its index after
//! writing them; the other side reads that index with Acquire before reading the entries.

use std::io;
use std::marker::PhantomData;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, Ordering};

use super::mmap::Mapping;

/// Entries a producer may still write: the ring's size minus what the consumer has not taken.
pub fn producer_free(size: u32, producer: u32, consumer: u32) -> u32 {
    size.wrapping_sub(producer.wrapping_sub(consumer))
}

/// Entries a consumer may read: what the producer published beyond the consumer's index.
pub fn consumer_available(producer: u32, consumer: u32) -> u32 {
    producer.wrapping_sub(consumer)
}

/// Array slot of a free-running index.
pub fn slot(index: u32, size: u32) -> usize {
    (index & (size - 1)) as usize
}

/// Checks a ring size: a power of two, at least 1 (the kernel's rule).
pub fn check_ring_size(name: &str, size: u32) -> io::Result<()> {
    if size == 0 || !size.is_power_of_two() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} ring size {size}: must be a power of two"),
        ));
    }
    Ok(())
}

/// Byte offsets inside a ring's mapping (from `XDP_MMAP_OFFSETS`).
#[derive(Clone, Copy, Debug)]
pub struct RingOffsets {
    /// The producer index (`u32`).
    pub producer: u64,
    /// The consumer index (`u32`).
    pub consumer: u64,
    /// The first entry.
    pub desc: u64,
    /// The flags word (`u32`, `XDP_RING_NEED_WAKEUP`).
    pub flags: u64,
}

impl From<libc::xdp_ring_offset> for RingOffsets {
    fn from(o: libc::xdp_ring_offset) -> Self {
        RingOffsets {
            producer: o.producer,
            consumer: o.consumer,
            desc: o.desc,
            flags: o.flags,
        }
    }
}

/// One mmap'd ring with entries of type `T` (`u64` frame addresses for the fill and
/// completion rings, `xdp_desc` for RX and TX).
pub struct Ring<T> {
    map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    entries: *mut T,
    size: u32,
    /// This side's own index (not yet published if it is the producer side).
    local: u32,
    /// The other side's index as last read.
    cached: u32,
    _entries: PhantomData<T>,
}

// SAFETY: the ring is used by one thread at a time (`&mut self` for every operation); the
// pointers address the owned mapping, and the kernel side synchronises through atomics.
unsafe impl<T: Send> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Maps a ring of `size` entries of the socket `fd` at the page offset `pgoff`.
    pub fn map(
        name: &str,
        fd: BorrowedFd<'_>,
        pgoff: u64,
        size: u32,
        offsets: RingOffsets,
    ) -> io::Result<Self> {
        check_ring_size(name, size)?;
        let len = offsets.desc as usize + size as usize * std::mem::size_of::<T>();
        let map = Mapping::shared(fd, len, pgoff)
            .map_err(|e| io::Error::new(e.kind(), format!("mapping the {name} ring: {e}")))?;
        for (what, off, width) in [
            ("producer", offsets.producer, 4),
            ("consumer", offsets.consumer, 4),
            ("flags", offsets.flags, 4),
            ("descriptors", offsets.desc, 0),
        ] {
            if off as usize + width > len || off % 4 != 0 {
                return Err(io::Error::other(format!(
                    "{name} ring: {what} offset {off} outside the {len}-byte mapping"
                )));
            }
        }
        let base = map.as_ptr();
        // SAFETY: every offset was checked to lie inside the mapping and to be 4-byte aligned
        // (the mapping itself is page-aligned); the kernel documents these words as `u32`s
        // shared with it, which `AtomicU32` matches in size and alignment.
        let (producer, consumer, flags, entries) = unsafe {
            (
                base.add(offsets.producer as usize) as *const AtomicU32,
                base.add(offsets.consumer as usize) as *const AtomicU32,
                base.add(offsets.flags as usize) as *const AtomicU32,
                base.add(offsets.desc as usize) as *mut T,
            )
        };
        let mut ring = Ring {
            map,
            producer,
            consumer,
            flags,
            entries,
            size,
            local: 0,
            cached: 0,
            _entries: PhantomData,
        };
        // A fresh ring starts at 0/0; read both in case the kernel says otherwise.
        ring.local = ring.producer().load(Ordering::Relaxed);
        ring.cached = ring.consumer().load(Ordering::Acquire);
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points inside `self.map` (checked in `map`), alive as long as `self`.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    /// Number of entries.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Whether the kernel asked to be woken up (`XDP_RING_NEED_WAKEUP`) to process this ring.
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        let flags = unsafe { &*self.flags };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn write(&mut self, index: u32, value: T) {
        // SAFETY: `slot` is below `size`, so the entry lies inside the mapping; the entry is
        // owned by the producer (this side) until the producer index is published.
        unsafe {
            self.entries
                .add(slot(index, self.size))
                .write_volatile(value)
        }
    }

    fn read(&self, index: u32) -> T {
        // SAFETY: `slot` is below `size`; the producer (kernel) published this entry with a
        // Release store that `available` read with Acquire, and does not rewrite it until the
        // consumer index moves past it.
        unsafe { self.entries.add(slot(index, self.size)).read_volatile() }
    }

    // --- producer side (fill, TX) ---

    /// Entries that can be produced now (re-reads the consumer index when short of `wanted`).
    pub fn free(&mut self, wanted: u32) -> u32 {
        let free = producer_free(self.size, self.local, self.cached);
        if free >= wanted {
            return free;
        }
        self.cached = self.consumer().load(Ordering::Acquire);
        producer_free(self.size, self.local, self.cached)
    }

    /// Writes up to the free space of entries from `values`, then publishes them; returns how
    /// many were produced.
    pub fn produce(&mut self, values: impl IntoIterator<Item = T>) -> u32 {
        let mut free = self.free(self.size);
        let mut n = 0u32;
        for v in values {
            if free == 0 {
                break;
            }
            self.write(self.local.wrapping_add(n), v);
            n += 1;
            free -= 1;
        }
        if n > 0 {
            self.local = self.local.wrapping_add(n);
            self.producer().store(self.local, Ordering::Release);
        }
        n
    }

    // --- consumer side (RX, completion) ---

    /// Entries ready to be consumed, at most `max` (re-reads the producer index when short).
    pub fn available(&mut self, max: u32) -> u32 {
        let mut ready = consumer_available(self.cached, self.local);
        if ready < max {
            self.cached = self.producer().load(Ordering::Acquire);
            ready = consumer_available(self.cached, self.local);
        }
        ready.min(max)
    }

    /// The `i`-th ready entry (`i` below what [`Ring::available`] returned).
    pub fn peek(&self, i: u32) -> T {
        self.read(self.local.wrapping_add(i))
    }

    /// Hands `n` consumed entries back to the kernel.
    pub fn release(&mut self, n: u32) {
        if n > 0 {
            self.local = self.local.wrapping_add(n);
            self.consumer().store(self.local, Ordering::Release);
        }
    }

    /// Length of the mapping (for diagnostics).
    pub fn mapped_len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_full() {
        assert_eq!(producer_free(8, 0, 0), 8);
        assert_eq!(producer_free(8, 8, 0), 0);
        assert_eq!(producer_free(8, 5, 3), 6);
        assert_eq!(consumer_available(0, 0), 0);
        assert_eq!(consumer_available(8, 0), 8);
        assert_eq!(consumer_available(5, 3), 2);
    }

    #[test]
    fn indices_wrap_around_u32() {
        let p = 2u32;
        let c = u32::MAX - 1; // 4 entries in flight across the wrap
        assert_eq!(consumer_available(p, c), 4);
        assert_eq!(producer_free(16, p, c), 12);
        assert_eq!(slot(u32::MAX, 16), 15);
        assert_eq!(slot(u32::MAX.wrapping_add(1), 16), 0);
        assert_eq!(slot(17, 16), 1);
    }

    #[test]
    fn sizes_must_be_powers_of_two() {
        assert!(check_ring_size("rx", 2048).is_ok());
        assert!(check_ring_size("rx", 1).is_ok());
        assert!(check_ring_size("rx", 0).is_err());
        assert!(check_ring_size("rx", 1000).is_err());
    }
}
