//! Shared-memory transport for large frames.
//!
//! Each direction of a worker's channel has an arena: a memfd, created by
//! the host when it spawns the worker and mapped by both processes. A frame
//! body at least [`SHARED_MIN`] long is copied into a region of the arena,
//! and only a [`Kind::Shared`] descriptor (`[13, 0, offset, len]`) goes over
//! the socket. The receiver reads the body where it lies: the host builds
//! its binaries as sub-binaries of the mapping, so a reply's bytes are copied
//! once (into the arena) instead of five times through the socket, the VM
//! port and the decoder.
//!
//! The arena starts with a bitmap of its blocks in use. Only the sending
//! side sets bits ([`Arena::alloc`], one sender at a time per arena, under a
//! lock), and only the receiving side clears them ([`Shared`]'s drop, when
//! it is done with the bytes: for the host, once the last binary made from
//! them is garbage collected). So a region is never reused while the other
//! side still reads it, and neither side waits for the other. An arena with
//! no room left makes the sender fall back to the socket.
//!
//! Freed blocks beyond the first [`WARM_BYTES`] are given back to the
//! kernel, so one huge payload does not stay resident; the blocks below
//! stay mapped and faulted in, which is what makes repeated large calls
//! cheap.
//!
//! Both processes trust each other with memory anyway (the host reads
//! whatever the worker sends); a descriptor that points outside the arena
//! is a protocol error, never an out-of-bounds read.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{madvise, mmap, munmap, MapFlags, MmapAdvise, ProtFlags};

use crate::message::{Header, Kind};
use crate::value::{self as wire, read_uint};
use crate::DecodeError;

/// Bytes per block: the unit of allocation, a page.
pub const BLOCK: usize = 4096;
/// Frame bodies from this size on go through the arena. Below it, the
/// socket's copies cost less than a region's bookkeeping.
pub const SHARED_MIN: usize = 32 * 1024;
/// Freed blocks below this offset stay resident for the next payload.
pub const WARM_BYTES: usize = 16 * 1024 * 1024;

/// One direction's shared memory, mapped in this process.
pub struct Arena {
    base: NonNull<u8>,
    /// Bytes mapped: the bitmap's blocks, then the data blocks.
    mapped: usize,
    /// Offset of the first data block.
    data: usize,
    blocks: usize,
    /// Serialises senders; the bitmap's bits are only set under it.
    alloc: Mutex<()>,
}

// SAFETY: the mapping is shared memory reached only through atomics (the
// bitmap) and through regions that one side owns at a time (see the module
// docs); the pointer itself never changes.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    /// Creates an arena with room for `capacity` bytes of frames, and the
    /// memfd to hand to the other process (close-on-exec: the spawner
    /// places it in the child).
    pub fn create(name: &str, capacity: usize) -> std::io::Result<(Arena, OwnedFd)> {
        let blocks = capacity.div_ceil(BLOCK).max(1);
        let size = bitmap_bytes(blocks) + blocks * BLOCK;
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&fd, size as i64)?;
        let arena = Arena::map(&fd, size)?;
        Ok((arena, fd))
    }

    /// Maps an arena the other process created (its memfd, which may be
    /// closed afterwards: the mapping keeps the memory).
    pub fn open(fd: impl AsFd) -> std::io::Result<Arena> {
        let size = nix::sys::stat::fstat(fd.as_fd())?.st_size as usize;
        Arena::map(fd, size)
    }

    fn map(fd: impl AsFd, size: usize) -> std::io::Result<Arena> {
        let blocks = blocks_in(size);
        if blocks == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "shared memory too small"));
        }
        let len = NonZeroUsize::new(size).expect("a non-empty arena");
        // SAFETY: a fresh shared mapping of the whole file; nothing else
        // refers to its address range. MAP_NORESERVE: the memfd is sparse,
        // and pages come into being only as they are written.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE,
                fd,
                0,
            )?
        };
        Ok(Arena {
            base: ptr.cast(),
            mapped: size,
            data: bitmap_bytes(blocks),
            blocks,
            alloc: Mutex::new(()),
        })
    }

    /// Bytes of frames the arena can hold at most.
    pub fn capacity(&self) -> usize {
        self.blocks * BLOCK
    }

    /// Blocks in use: filled by the sender and not yet freed by the
    /// receiver.
    pub fn used_blocks(&self) -> usize {
        let words = self.bitmap();
        words.iter().map(|w| w.load(Ordering::Acquire).count_ones() as usize).sum()
    }

    fn bitmap(&self) -> &[AtomicU64] {
        // SAFETY: the first `data` bytes of the mapping hold the bitmap,
        // page-aligned, as u64 words; shared with the other process and so
        // only ever accessed atomically.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU64>(), self.blocks.div_ceil(64)) }
    }

    /// Copies `body` into a free region and returns the descriptor frame
    /// (length header included) to send in its place; None when no run of
    /// free blocks is long enough.
    pub fn place(&self, body: &[u8]) -> Option<Vec<u8>> {
        self.place_parts(&[body])
    }

    /// [`Arena::place`] for a body made of `parts`, copied one after the
    /// other: a body need not be gathered in one buffer first.
    pub fn place_parts(&self, parts: &[&[u8]]) -> Option<Vec<u8>> {
        let len = parts.iter().map(|p| p.len()).sum();
        let offset = self.alloc(len)?;
        let mut at = self.data + offset;
        for part in parts {
            // SAFETY: `alloc` reserved `len` bytes from `offset` for this
            // side; the receiver reads them only after the descriptor,
            // returned below, is sent.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), self.base.as_ptr().add(at), part.len());
            }
            at += part.len();
        }
        Some(descriptor(offset, len))
    }

    /// Frees the region of a descriptor frame from [`Arena::place`] that was
    /// not sent after all (the receiver will never see it).
    pub fn unplace(&self, frame: &[u8]) {
        if let Some(Ok((offset, len))) = frame.get(crate::HEADER_LEN..).and_then(described) {
            if self.check(offset, len).is_ok() {
                self.release(offset, len);
            }
        }
    }

    /// Reserves blocks for `len` bytes (first fit) and returns their offset.
    fn alloc(&self, len: usize) -> Option<usize> {
        let needed = len.div_ceil(BLOCK).max(1);
        if needed > self.blocks {
            return None;
        }
        let _guard = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let words = self.bitmap();
        let mut run_start = 0;
        let mut run = 0;
        let mut block = 0;
        while block < self.blocks {
            let word = words[block / 64].load(Ordering::Acquire);
            if word == u64::MAX && block % 64 == 0 {
                block += 64;
                run = 0;
                continue;
            }
            if word & (1 << (block % 64)) != 0 {
                run = 0;
            } else {
                if run == 0 {
                    run_start = block;
                }
                run += 1;
                if run == needed {
                    self.mark(run_start, needed, true);
                    return Some(run_start * BLOCK);
                }
            }
            block += 1;
        }
        None
    }

    /// Sets or clears the bits of `count` blocks from `first`.
    fn mark(&self, first: usize, count: usize, used: bool) {
        let words = self.bitmap();
        let mut block = first;
        let end = first + count;
        while block < end {
            let bits_here = (64 - block % 64).min(end - block);
            let mask = if bits_here == 64 { u64::MAX } else { ((1u64 << bits_here) - 1) << (block % 64) };
            if used {
                words[block / 64].fetch_or(mask, Ordering::AcqRel);
            } else {
                words[block / 64].fetch_and(!mask, Ordering::AcqRel);
            }
            block += bits_here;
        }
    }

    /// The body a descriptor names, held until the returned value drops,
    /// which hands its blocks back to the sender.
    pub fn take(self: &Arc<Self>, offset: usize, len: usize) -> Result<Shared, DecodeError> {
        self.check(offset, len)?;
        Ok(Shared {
            arena: self.clone(),
            offset,
            len,
        })
    }

    /// The body a descriptor names, to look at before taking it.
    pub fn view(&self, offset: usize, len: usize) -> Result<&[u8], DecodeError> {
        self.check(offset, len)?;
        // SAFETY: within the data blocks (checked); the sender leaves the
        // region alone until the receiver takes and drops it.
        Ok(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(self.data + offset), len) })
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), DecodeError> {
        let fits = offset.is_multiple_of(BLOCK) && offset.checked_add(len).is_some_and(|end| end <= self.capacity());
        if fits {
            Ok(())
        } else {
            Err(DecodeError::Invalid(format!(
                "shared region {offset}+{len} outside the {} byte arena",
                self.capacity()
            )))
        }
    }

    fn release(&self, offset: usize, len: usize) {
        let first = offset / BLOCK;
        let count = len.div_ceil(BLOCK).max(1);
        // Past the warm part, the pages go back to the kernel first (the
        // sender finds them zeroed, faulted in afresh).
        let cold_from = WARM_BYTES.max(offset);
        let end = (first + count) * BLOCK;
        if end > cold_from {
            let start = cold_from.next_multiple_of(BLOCK);
            // SAFETY: `start..end` lies within the data blocks of this
            // mapping, and this side owns that range until the bits are
            // cleared below; MADV_REMOVE frees the memfd's pages behind it.
            unsafe {
                let ptr = NonNull::new_unchecked(self.base.as_ptr().add(self.data + start));
                let _ = madvise(ptr.cast(), end - start, MmapAdvise::MADV_REMOVE);
            }
        }
        self.mark(first, count, false);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`; no region outlives the arena
        // (each holds an `Arc` of it).
        let _ = unsafe { munmap(self.base.cast(), self.mapped) };
    }
}

/// A frame body received through an arena. Dropping it frees its blocks for
/// the sender.
pub struct Shared {
    arena: Arc<Arena>,
    offset: usize,
    len: usize,
}

impl Shared {
    pub fn bytes(&self) -> &[u8] {
        // The sender does not touch these blocks until this value drops and
        // clears their bits.
        self.arena.view(self.offset, self.len).expect("checked in Arena::take")
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.arena.release(self.offset, self.len);
    }
}

/// The descriptor frame for a body at `offset` of `len` bytes.
pub fn descriptor(offset: usize, len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(24);
    let start = crate::FrameWriter::begin(&mut frame);
    Header { kind: Kind::Shared, id: 0 }.write(&mut frame);
    wire::write_u64(&mut frame, offset as u64);
    wire::write_u64(&mut frame, len as u64);
    crate::FrameWriter::finish(&mut frame, start).expect("a descriptor is small");
    frame
}

/// If `body` is a descriptor, the offset and length it names.
pub fn described(body: &[u8]) -> Option<Result<(usize, usize), DecodeError>> {
    // [13, 0, ...]: fixarray of 4, then the kind as a positive fixint.
    if body.len() < 2 || body[0] != 0x94 || body[1] != Kind::Shared as u8 {
        return None;
    }
    let mut fields = body;
    Some((|| {
        let header = Header::read(&mut fields)?;
        debug_assert_eq!(header.kind, Kind::Shared);
        let offset = read_uint(&mut fields)? as usize;
        let len = read_uint(&mut fields)? as usize;
        if !fields.is_empty() {
            return Err(DecodeError::TrailingBytes(fields.len()));
        }
        Ok((offset, len))
    })())
}

/// Bitmap bytes for `blocks`, rounded up to whole blocks.
fn bitmap_bytes(blocks: usize) -> usize {
    blocks.div_ceil(8).next_multiple_of(BLOCK)
}

/// Data blocks in a mapping of `size` bytes.
fn blocks_in(size: usize) -> usize {
    // The bitmap takes one bit per block, rounded up to blocks.
    let mut blocks = size / BLOCK;
    while blocks > 0 && bitmap_bytes(blocks) + blocks * BLOCK > size {
        blocks -= 1;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena(capacity: usize) -> Arc<Arena> {
        Arc::new(Arena::create("sb-test", capacity).unwrap().0)
    }

    fn body_of(frame: &[u8]) -> &[u8] {
        &frame[crate::HEADER_LEN..]
    }

    #[test]
    fn a_placed_body_is_read_back_through_its_descriptor_and_freed_on_drop() {
        let host = arena(1 << 20);
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let frame = host.place(&data).unwrap();
        let (offset, len) = described(body_of(&frame)).unwrap().unwrap();
        assert_eq!(len, data.len());
        assert_eq!(host.used_blocks(), data.len().div_ceil(BLOCK));
        let shared = host.take(offset, len).unwrap();
        assert_eq!(shared.bytes(), &data[..]);
        drop(shared);
        assert_eq!(host.used_blocks(), 0);
    }

    #[test]
    fn the_other_process_mapping_sees_the_same_bytes_and_frees_for_the_sender() {
        let (sender, fd) = Arena::create("sb-test", 1 << 20).unwrap();
        let receiver = Arc::new(Arena::open(&fd).unwrap());
        drop(fd);
        let frame = sender.place(b"through the memfd").unwrap();
        let (offset, len) = described(body_of(&frame)).unwrap().unwrap();
        let shared = receiver.take(offset, len).unwrap();
        assert_eq!(shared.bytes(), b"through the memfd");
        assert_eq!(sender.used_blocks(), 1);
        drop(shared);
        assert_eq!(sender.used_blocks(), 0);
    }

    #[test]
    fn a_full_arena_refuses_and_regions_in_use_are_not_reused() {
        let host = arena(4 * BLOCK);
        let a = host.place(&[1; 2 * BLOCK]).unwrap();
        let b = host.place(&[2; 2 * BLOCK]).unwrap();
        assert!(host.place(&[3; 1]).is_none(), "full");
        let (ao, al) = described(body_of(&a)).unwrap().unwrap();
        let (bo, bl) = described(body_of(&b)).unwrap().unwrap();
        assert_ne!(ao, bo);
        let first = host.take(ao, al).unwrap();
        drop(first);
        let c = host.place(&[4; BLOCK + 1]).unwrap();
        assert_eq!(described(body_of(&c)).unwrap().unwrap().0, ao, "first fit reuses the freed run");
        assert!(host.take(bo, bl).unwrap().bytes().iter().all(|&x| x == 2), "b untouched");
        assert!(host.place(&[0; 5 * BLOCK]).is_none(), "larger than the arena");
    }

    #[test]
    fn a_body_in_parts_is_placed_whole() {
        let host = arena(4 * BLOCK);
        let frame = host.place_parts(&[b"head", &[9; BLOCK], b"tail"]).unwrap();
        let (offset, len) = described(body_of(&frame)).unwrap().unwrap();
        let body = host.take(offset, len).unwrap();
        assert_eq!(body.bytes(), [&b"head"[..], &[9; BLOCK], b"tail"].concat());
    }

    #[test]
    fn an_unsent_descriptor_is_unplaced() {
        let host = arena(8 * BLOCK);
        let frame = host.place(&[5; 3 * BLOCK]).unwrap();
        assert_eq!(host.used_blocks(), 3);
        host.unplace(&frame);
        assert_eq!(host.used_blocks(), 0);
        let mut ping = Vec::new();
        crate::Message::Ping { id: 0 }.write_frame(&mut ping).unwrap();
        host.unplace(&ping);
    }

    #[test]
    fn descriptors_outside_the_arena_are_refused() {
        let host = arena(4 * BLOCK);
        assert!(host.take(4 * BLOCK, 1).is_err());
        assert!(host.take(0, 4 * BLOCK + 1).is_err());
        assert!(host.take(1, 1).is_err());
        assert!(host.take(usize::MAX - 1, 10).is_err());
        assert!(host.take(0, 4 * BLOCK).is_ok());
    }

    #[test]
    fn other_frames_are_not_descriptors() {
        let mut frame = Vec::new();
        crate::Message::Ping { id: 0 }.write_frame(&mut frame).unwrap();
        assert!(described(body_of(&frame)).is_none());
        assert!(described(&[0x94, Kind::Shared as u8, 0xc0]).unwrap().is_err());
    }

    #[test]
    fn blocks_past_the_warm_part_are_given_back() {
        let host = arena(WARM_BYTES + 8 * BLOCK);
        let warm = host.place(&vec![9; WARM_BYTES - BLOCK]).unwrap();
        let cold = host.place(&[7; 4 * BLOCK]).unwrap();
        let (co, cl) = described(body_of(&cold)).unwrap().unwrap();
        assert!(co >= WARM_BYTES - BLOCK);
        drop(host.take(co, cl).unwrap());
        let again = host.place(&[0; 1]).unwrap();
        let (ao, _) = described(body_of(&again)).unwrap().unwrap();
        assert_eq!(ao, co);
        // The removed pages read back as zeros.
        assert_eq!(host.take(ao, 4 * BLOCK).unwrap().bytes()[BLOCK..], [0; 3 * BLOCK]);
        drop(warm);
    }
}
