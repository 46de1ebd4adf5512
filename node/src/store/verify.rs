//! Reading a byte range of a stored blob while checking it against the blob's
//! hash, so that no corrupt byte leaves the node.
//!
//! Blobs up to one chunk group (16 KiB) are hashed whole. Larger ones are read
//! chunk group by chunk group and each group is checked against the post-order
//! outboard, whose hash pairs are checked in turn up to the root: the cost is one
//! BLAKE3 pass over the groups the range touches, and nothing is emitted before the
//! group that holds it has been verified.

use std::fs::File;
use std::io;
use std::ops::Range;

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{Outboard, ReadAt};
use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, ChunkNum, ChunkRanges};
use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};
use bytes::Bytes;
use cartable_net::peer::exchange::BLOCK_SIZE;
use cartable_proto::BlobHash;
use cartable_proto::wire::GROUP_BYTES;

/// Outboards up to this size are read into memory whole rather than pair by pair.
const OUTBOARD_IN_MEMORY: u64 = 1 << 20;
/// Verified bytes are handed out in pieces of about this size.
pub(super) const PIECE_BYTES: usize = 256 * 1024;

/// Why a verified read stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The bytes or the outboard do not match the blob's hash.
    #[error("blob {hash} is corrupt near byte {offset}")]
    Corrupt {
        /// The blob.
        hash: BlobHash,
        /// Start of the first chunk group or subtree that failed.
        offset: u64,
    },
    /// The data file's length is not the blob's size.
    #[error("blob {hash} is {actual} bytes on disk, {expected} expected")]
    WrongLength {
        /// The blob.
        hash: BlobHash,
        /// The size it should have.
        expected: u64,
        /// The size on disk.
        actual: u64,
    },
    /// Reading failed.
    #[error("reading blob: {0}")]
    Io(#[from] io::Error),
}

impl VerifyError {
    /// Whether the failure shows the blob wrong or gone on disk (bytes that do
    /// not verify, a file of the wrong length or missing, a disk that cannot
    /// read the sector), rather than the node short of something a later try
    /// may have (file descriptors, memory, time): only the first marks a blob
    /// damaged, so a flood of requests cannot get a good blob repaired.
    pub fn shows_damage(&self) -> bool {
        match self {
            Self::Corrupt { .. } | Self::WrongLength { .. } => true,
            Self::Io(e) => io_shows_damage(e),
        }
    }
}

/// Whether an IO error on a blob's files shows the files missing or unreadable
/// on disk: `NotFound`, a file shorter than its size (`UnexpectedEof`), `EIO`.
/// Everything else (`EMFILE`, `ENFILE`, `ENOMEM`, `EACCES`, timeouts,
/// interruptions) is the node's trouble, not the blob's.
pub fn io_shows_damage(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
    ) || e.raw_os_error() == Some(libc::EIO)
}

/// The open files of one stored blob.
#[derive(Debug)]
pub struct BlobFiles {
    /// The blob's hash.
    pub hash: BlobHash,
    /// Its size.
    pub size: u64,
    /// Its bytes.
    pub data: File,
    /// Its outboard; `None` for blobs of one chunk group or less.
    pub outboard: Option<File>,
}

impl BlobFiles {
    pub(super) fn tree(&self) -> BaoTree {
        BaoTree::new(self.size, BLOCK_SIZE)
    }

    /// Its chunk groups: one at least, however small.
    pub fn groups(&self) -> u64 {
        self.size.div_ceil(GROUP_BYTES).max(1)
    }

    /// Checks the data file's length against the blob's size.
    pub fn check_length(&self) -> Result<(), VerifyError> {
        let actual = self.data.metadata()?.len();
        if actual == self.size {
            Ok(())
        } else {
            Err(VerifyError::WrongLength {
                hash: self.hash,
                expected: self.size,
                actual,
            })
        }
    }

    /// Reads `range` (clamped to the blob), verifying it, and hands the bytes to
    /// `emit` in order. `emit` returns `false` to stop early (the reader went away).
    pub fn read_verified(
        &self,
        range: Range<u64>,
        mut emit: impl FnMut(Bytes) -> bool,
    ) -> Result<(), VerifyError> {
        let range = range.start.min(self.size)..range.end.min(self.size);
        self.check_length()?;
        match &self.outboard {
            _ if self.size <= GROUP_BYTES => self.read_small(range, emit),
            None => Err(VerifyError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                "outboard missing",
            ))),
            // Read whole only when that costs little next to the range itself.
            Some(file)
                if self.tree().outboard_size() <= OUTBOARD_IN_MEMORY
                    && self.tree().outboard_size() <= (range.end - range.start) / 16 =>
            {
                // A partial outboard may be shorter: pairs not written yet stay
                // zero, which never verifies.
                let full = self.tree().outboard_size();
                let mut pairs = vec![0u8; file.metadata()?.len().min(full) as usize];
                file.read_exact_at(0, &mut pairs)?;
                pairs.resize(full as usize, 0);
                self.read_tree(self.outboard_over(pairs), range, &mut emit)
            }
            Some(file) => self.read_tree(self.outboard_over(file), range, &mut emit),
        }
    }

    pub(super) fn outboard_over<D: ReadAt>(&self, data: D) -> PostOrderOutboard<D> {
        PostOrderOutboard {
            root: self.hash.into(),
            tree: self.tree(),
            data,
        }
    }

    fn read_small(
        &self,
        range: Range<u64>,
        emit: impl FnMut(Bytes) -> bool,
    ) -> Result<(), VerifyError> {
        let mut buf = vec![0u8; self.size as usize];
        self.data.read_exact_at(0, &mut buf)?;
        self.emit_small(buf, range, emit)
    }

    /// The whole of a blob of one chunk group, verified, if its bytes are all
    /// in the page cache; `None`, with nothing judged, when reading them would
    /// wait on the disk or the file system cannot tell (`RWF_NOWAIT`): read
    /// them on a blocking thread then.
    pub fn read_small_cached(&self) -> Option<Result<Bytes, VerifyError>> {
        if self.size > GROUP_BYTES {
            return None;
        }
        if let Err(e) = self.check_length() {
            return Some(Err(e));
        }
        let mut buf = vec![0u8; self.size as usize];
        let mut bufs = [io::IoSliceMut::new(&mut buf)];
        match rustix::io::preadv2(&self.data, &mut bufs, 0, rustix::io::ReadWriteFlags::NOWAIT) {
            Ok(read) if read as u64 == self.size => {}
            // Some of it, none of it, or no way to ask.
            Ok(_) | Err(_) => return None,
        }
        let mut whole = Bytes::new();
        let verified = self.emit_small(buf, 0..self.size, |bytes| {
            whole = bytes;
            true
        });
        Some(verified.map(|()| whole))
    }

    fn emit_small(
        &self,
        buf: Vec<u8>,
        range: Range<u64>,
        mut emit: impl FnMut(Bytes) -> bool,
    ) -> Result<(), VerifyError> {
        if BlobHash::of(&buf) != self.hash {
            return Err(VerifyError::Corrupt {
                hash: self.hash,
                offset: 0,
            });
        }
        let bytes = Bytes::from(buf).slice(range.start as usize..range.end as usize);
        if !bytes.is_empty() {
            emit(bytes);
        }
        Ok(())
    }

    /// Reads the groups the range touches in blocks of [`PIECE_BYTES`], checks each
    /// group in place, and emits a block (trimmed to the range) only once every
    /// group in it has been verified: one read and no copy per block.
    fn read_tree(
        &self,
        outboard: impl Outboard,
        range: Range<u64>,
        emit: &mut impl FnMut(Bytes) -> bool,
    ) -> Result<(), VerifyError> {
        if range.is_empty() {
            return Ok(());
        }
        let tree = outboard.tree();
        let chunks =
            ChunkRanges::from(ChunkNum(range.start / 1024)..ChunkNum(range.end.div_ceil(1024)));
        // Reads never go past the last group the range touches.
        let read_limit = (range.end.div_ceil(GROUP_BYTES) * GROUP_BYTES).min(self.size);
        let mut expected = Expected::new(self.hash);
        let mut block = Block::default();
        for item in tree.ranges_pre_order_chunks_iter_ref(&chunks, 0) {
            let Step::Group {
                start_chunk,
                size,
                is_root,
                ..
            } = expected.step(&outboard, item)?
            else {
                continue;
            };
            let start = start_chunk.to_bytes();
            if !block.covers(start + size as u64) {
                if !block.emit(&range, emit) {
                    return Ok(());
                }
                let len = (read_limit - start).min(PIECE_BYTES as u64) as usize;
                block.read(&self.data, start, len)?;
            }
            expected.group(start_chunk, block.group(start, size), is_root)?;
        }
        block.emit(&range, emit);
        Ok(())
    }
}

/// Consecutive chunk groups read from the data file in one call.
#[derive(Debug, Default)]
struct Block {
    bytes: Vec<u8>,
    /// File offset of `bytes[0]`.
    start: u64,
}

impl Block {
    fn covers(&self, end: u64) -> bool {
        end <= self.start + self.bytes.len() as u64
    }

    /// Reads into fresh memory left uninitialised: zero-filling each block
    /// first was 7% of the CPU of serving large files (`perf`, 8 MiB over HTTP/2).
    fn read(&mut self, data: &File, start: u64, len: usize) -> io::Result<()> {
        self.start = start;
        self.bytes = Vec::with_capacity(len);
        while self.bytes.len() < len {
            let at = start + self.bytes.len() as u64;
            match rustix::io::pread(data, rustix::buffer::spare_capacity(&mut self.bytes), at) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The allocator may have given more room than asked, and pread filled it.
        self.bytes.truncate(len);
        Ok(())
    }

    fn group(&self, start: u64, size: usize) -> &[u8] {
        let from = (start - self.start) as usize;
        &self.bytes[from..from + size]
    }

    /// Hands the verified block, trimmed to `range`, to `emit`; false to stop.
    fn emit(&mut self, range: &Range<u64>, emit: &mut impl FnMut(Bytes) -> bool) -> bool {
        if self.bytes.is_empty() {
            return true;
        }
        let end = self.start + self.bytes.len() as u64;
        let from = range.start.max(self.start) - self.start;
        let to = range.end.min(end) - self.start;
        let bytes = Bytes::from(std::mem::take(&mut self.bytes)).slice(from as usize..to as usize);
        bytes.is_empty() || emit(bytes)
    }
}

/// The hashes a pre-order walk of a blob's tree has still to match, the next
/// one on top: each hash pair and each group is checked against its parent's
/// hash before it is used.
pub(super) struct Expected {
    blob: BlobHash,
    stack: Vec<blake3::Hash>,
}

impl Expected {
    /// The walk's start: the blob's hash is the root's.
    pub(super) fn new(blob: BlobHash) -> Self {
        Self {
            blob,
            stack: vec![blob.into()],
        }
    }

    fn corrupt(&self, offset: u64) -> VerifyError {
        VerifyError::Corrupt {
            hash: self.blob,
            offset,
        }
    }

    /// Takes the walk's next `item`: a parent's hash pair is loaded from
    /// `outboard` and checked, and the halves the walk goes on into are kept
    /// to be matched next; a chunk group is handed back to be read and checked.
    pub(super) fn step<R>(
        &mut self,
        outboard: &impl Outboard,
        item: BaoChunk<R>,
    ) -> Result<Step<R>, VerifyError> {
        let (node, is_root, left, right) = match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => (node, is_root, left, right),
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ranges,
            } => {
                return Ok(Step::Group {
                    start_chunk,
                    size,
                    is_root,
                    ranges,
                });
            }
        };
        let offset = node.chunk_range().start.to_bytes();
        let (l, r) = outboard.load(node)?.ok_or_else(|| self.corrupt(offset))?;
        if self.stack.pop() != Some(parent_cv(&l, &r, is_root)) {
            return Err(self.corrupt(offset));
        }
        if right {
            self.stack.push(r);
        }
        if left {
            self.stack.push(l);
        }
        Ok(Step::Pair(l, r))
    }

    /// Checks the chunk group `data` that starts at `start_chunk`.
    pub(super) fn group(
        &mut self,
        start_chunk: ChunkNum,
        data: &[u8],
        is_root: bool,
    ) -> Result<(), VerifyError> {
        if self.stack.pop() != Some(hash_group(start_chunk, data, is_root)) {
            return Err(self.corrupt(start_chunk.to_bytes()));
        }
        Ok(())
    }
}

/// One step of a walk of a blob's tree, as [`Expected::step`] leaves it.
pub(super) enum Step<R> {
    /// A parent's hash pair, checked.
    Pair(blake3::Hash, blake3::Hash),
    /// A chunk group, to be read and checked with [`Expected::group`].
    Group {
        start_chunk: ChunkNum,
        size: usize,
        is_root: bool,
        /// The part of the group the walk asked for.
        ranges: R,
    },
}

/// The BLAKE3 chaining value of one chunk group starting at `start_chunk`.
pub(crate) fn hash_group(start_chunk: ChunkNum, data: &[u8], is_root: bool) -> blake3::Hash {
    if is_root {
        return blake3::hash(data);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(start_chunk.0 * 1024);
    hasher.update(data);
    let cv: ChainingValue = hasher.finalize_non_root();
    blake3::Hash::from(cv)
}

pub(crate) fn parent_cv(left: &blake3::Hash, right: &blake3::Hash, is_root: bool) -> blake3::Hash {
    let (l, r): (ChainingValue, ChainingValue) = (*left.as_bytes(), *right.as_bytes());
    if is_root {
        merge_subtrees_root(&l, &r, Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(&l, &r, Mode::Hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_the_disk_count_as_damage() {
        let hash = BlobHash::of(b"x");
        let io = |e: io::Error| VerifyError::Io(e).shows_damage();
        assert!(VerifyError::Corrupt { hash, offset: 0 }.shows_damage());
        let short = VerifyError::WrongLength {
            hash,
            expected: 2,
            actual: 1,
        };
        assert!(short.shows_damage());
        assert!(io(io::ErrorKind::NotFound.into()));
        assert!(io(io::ErrorKind::UnexpectedEof.into()));
        assert!(io(io::Error::from_raw_os_error(libc::EIO)));
        for transient in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::EAGAIN] {
            assert!(!io(io::Error::from_raw_os_error(transient)), "{transient}");
        }
        assert!(!io(io::ErrorKind::PermissionDenied.into()));
        assert!(!io(io::ErrorKind::TimedOut.into()));
        assert!(!io(io::ErrorKind::Interrupted.into()));
    }
}
