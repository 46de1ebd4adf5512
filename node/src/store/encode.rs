//! The bao-tree pre-order encoding of a stored blob's chunk groups, as a peer
//! asks for them, built straight into the pieces handed to the QUIC stream.
//!
//! Each group is read from disk into the piece that carries it and checked
//! there against the outboard: one read, one hash and no copy per group, and a
//! group that fails is never handed out. The pieces come from a [`PiecePool`]
//! and go back to it once quinn drops them, so their memory stays mapped.

use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bao_tree::io::sync::Outboard;
use bao_tree::{ChunkNum, ChunkRanges};
use bytes::Bytes;
use cartable_proto::wire::GROUP_BYTES;

use super::verify::{BlobFiles, Expected, PIECE_BYTES, Step, VerifyError};

/// Room for a piece and the item (a group, or a hash pair) that takes it past
/// [`PIECE_BYTES`].
const PIECE_CAPACITY: usize = PIECE_BYTES + GROUP_BYTES as usize;
/// Free pieces a pool keeps: about what one fast copy has in flight (the
/// stream's channel and what quinn holds until the peer acknowledges it).
const POOL_KEPT: usize = 32;

/// Piece buffers kept for reuse by every blob a node sends. A fresh allocation
/// of a piece's size is fresh memory on Linux, and faulting its pages in was
/// 8% of a sender's CPU (`perf`, 1 GiB copies); a reused piece is already there.
#[derive(Debug, Default)]
pub struct PiecePool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl PiecePool {
    fn take(self: &Arc<Self>) -> Piece {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Piece {
            // Zeroed once, when first made: afterwards reads land on bytes
            // that are already initialised, and nothing is zeroed again.
            buf: reused.unwrap_or_else(|| vec![0; PIECE_CAPACITY]),
            len: 0,
            pool: self.clone(),
        }
    }

    /// Free pieces kept now.
    pub fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One piece being filled; its first `len` bytes are the encoding.
struct Piece {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<PiecePool>,
}

impl Piece {
    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Reads `size` bytes of `data` at `at` onto the end; returns them.
    fn read(&mut self, data: &std::fs::File, at: u64, size: usize) -> io::Result<&[u8]> {
        let room = &mut self.buf[self.len..self.len + size];
        data.read_exact_at(room, at)?;
        self.len += size;
        Ok(&self.buf[self.len - size..self.len])
    }

    /// The piece as the stream takes it. quinn keeps a piece until the peer
    /// acknowledges it: a short one (a small blob, a blob's end) is copied out
    /// rather than holding a whole piece's room, which goes back to the pool.
    fn into_bytes(self) -> Bytes {
        if self.len < PIECE_BYTES / 4 {
            Bytes::copy_from_slice(self.as_ref())
        } else {
            Bytes::from_owner(self)
        }
    }
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < POOL_KEPT {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

impl BlobFiles {
    /// Hands `emit` the pre-order encoding of chunk groups `groups` (clamped to
    /// the blob) in pieces of about [`PIECE_BYTES`], every group and hash pair
    /// verified before it is put in a piece. `emit` fails to stop (the peer went
    /// away); the failure is returned as [`VerifyError::Io`].
    pub fn encode_groups(
        &self,
        groups: &[Range<u64>],
        pool: &Arc<PiecePool>,
        emit: impl FnMut(Bytes) -> io::Result<()>,
    ) -> Result<(), VerifyError> {
        self.check_length()?;
        let chunks = chunks_of(groups, self.groups());
        match &self.outboard {
            // One group, no hash pairs: its hash is the blob's.
            _ if self.size <= GROUP_BYTES => {
                self.encode_tree(self.outboard_over(&[][..]), &chunks, pool, emit)
            }
            Some(file) => self.encode_tree(self.outboard_over(file), &chunks, pool, emit),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "outboard missing").into()),
        }
    }

    fn encode_tree(
        &self,
        outboard: impl Outboard,
        chunks: &ChunkRanges,
        pool: &Arc<PiecePool>,
        mut emit: impl FnMut(Bytes) -> io::Result<()>,
    ) -> Result<(), VerifyError> {
        let mut expected = Expected::new(self.hash);
        let mut piece = pool.take();
        for item in self.tree().ranges_pre_order_chunks_iter_ref(chunks, 0) {
            match expected.step(&outboard, item)? {
                Step::Pair(l, r) => {
                    piece.push(l.as_bytes());
                    piece.push(r.as_bytes());
                }
                Step::Group {
                    start_chunk,
                    size,
                    is_root,
                    ranges,
                } => {
                    if !ranges.is_all() {
                        // `chunks_of` asks for whole groups only.
                        return Err(io::Error::other("a range inside a chunk group").into());
                    }
                    let group = piece.read(&self.data, start_chunk.to_bytes(), size)?;
                    expected.group(start_chunk, group, is_root)?;
                }
            }
            if piece.len >= PIECE_BYTES {
                emit(std::mem::replace(&mut piece, pool.take()).into_bytes())?;
            }
        }
        if piece.len > 0 {
            emit(piece.into_bytes())?;
        }
        Ok(())
    }
}

/// The chunks of `groups` in a blob of `last` groups. A range that reaches or
/// passes the blob's end is left open, as bao-tree's own encoder canonicalises
/// it, so that the last group, shorter or not, is a whole leaf. Ranges that
/// start past the end are left out: peers asking for them are refused first.
fn chunks_of(groups: &[Range<u64>], last: u64) -> ChunkRanges {
    let chunks_per_group = GROUP_BYTES / 1024;
    let mut chunks = ChunkRanges::empty();
    for g in groups.iter().filter(|g| g.start < g.end.min(last)) {
        let from = ChunkNum(g.start * chunks_per_group);
        chunks |= if g.end >= last {
            ChunkRanges::from(from..)
        } else {
            ChunkRanges::from(from..ChunkNum(g.end * chunks_per_group))
        };
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use bao_tree::BaoTree;
    use bao_tree::io::outboard::PostOrderMemOutboard;
    use bao_tree::io::sync::encode_ranges_validated;
    use cartable_net::peer::exchange::BLOCK_SIZE;
    use cartable_proto::BlobHash;

    /// A blob of `size` bytes written to files, with its outboard.
    fn stored(dir: &std::path::Path, size: usize) -> (BlobFiles, Vec<u8>, Vec<u8>) {
        // No two groups alike, so that a misplaced one shows.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let outboard = PostOrderMemOutboard::create(&bytes, BLOCK_SIZE);
        std::fs::write(dir.join("data"), &bytes).unwrap();
        std::fs::write(dir.join("outboard"), &outboard.data).unwrap();
        let files = BlobFiles {
            hash: BlobHash::of(&bytes),
            size: size as u64,
            data: std::fs::File::open(dir.join("data")).unwrap(),
            outboard: Some(std::fs::File::open(dir.join("outboard")).unwrap()),
        };
        (files, bytes, outboard.data)
    }

    /// What bao-tree's own validating encoder sends for the same groups.
    fn reference(bytes: &[u8], pairs: &[u8], groups: &[Range<u64>]) -> Vec<u8> {
        let outboard = bao_tree::io::outboard::PostOrderOutboard {
            root: blake3::hash(bytes),
            tree: BaoTree::new(bytes.len() as u64, BLOCK_SIZE),
            data: pairs.to_vec(),
        };
        let mut chunks = ChunkRanges::empty();
        for g in groups {
            chunks |= ChunkRanges::from(
                ChunkNum(g.start.saturating_mul(16))..ChunkNum(g.end.saturating_mul(16)),
            );
        }
        let mut out = Vec::new();
        encode_ranges_validated(bytes, outboard, &chunks, &mut out).unwrap();
        out
    }

    fn encoded(
        files: &BlobFiles,
        pool: &Arc<PiecePool>,
        groups: &[Range<u64>],
    ) -> Result<(Vec<u8>, usize), VerifyError> {
        let (mut out, mut pieces) = (Vec::new(), 0);
        files.encode_groups(groups, pool, |piece| {
            assert!(piece.len() <= PIECE_CAPACITY);
            out.extend_from_slice(&piece);
            pieces += 1;
            Ok(())
        })?;
        Ok((out, pieces))
    }

    #[test]
    fn the_encoding_is_bao_trees_for_any_groups() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(PiecePool::default());
        let g = GROUP_BYTES as usize;
        for size in [0, 1, 1024, g - 1, g, g + 1, 5 * g + 300, 40 * g, 37 * g + 5] {
            let (files, bytes, pairs) = stored(dir.path(), size);
            let n = size.div_ceil(g).max(1) as u64;
            let cases: Vec<Vec<Range<u64>>> = vec![
                vec![0..n],
                vec![0..1],
                vec![n - 1..n],
                vec![0..n + 7],
                vec![n / 2..n / 2 + 1, n - 1..u64::MAX],
                vec![1..3, 5..9, 20..30],
            ];
            for groups in cases.into_iter().filter(|c| c.iter().all(|g| g.start < n)) {
                let (ours, _) = encoded(&files, &pool, &groups).unwrap();
                let theirs = reference(&bytes, &pairs, &groups);
                // Not the bytes themselves: a failure would print megabytes.
                assert!(
                    ours == theirs,
                    "{size} B, {groups:?}: {} bytes, {} expected",
                    ours.len(),
                    theirs.len()
                );
            }
        }
    }

    #[test]
    fn pieces_are_about_a_piece_and_come_back_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(PiecePool::default());
        let (files, ..) = stored(dir.path(), 3 * PIECE_BYTES + 1000);
        let mut sizes = Vec::new();
        let result = files.encode_groups(std::slice::from_ref(&(0..u64::MAX)), &pool, |piece| {
            sizes.push(piece.len());
            Ok(())
        });
        result.unwrap();
        let (last, full) = sizes.split_last().unwrap();
        assert!(full.len() >= 3, "{sizes:?}");
        assert!(*last > 0, "{sizes:?}");
        for size in full {
            assert!((PIECE_BYTES..=PIECE_CAPACITY).contains(size), "{sizes:?}");
        }
        // Each piece was dropped as soon as handed over: the one being filled
        // and the one handed over took turns, and both came back.
        assert_eq!(pool.kept(), 2);
    }

    #[test]
    fn a_rotten_group_is_never_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(PiecePool::default());
        let size = 40 * GROUP_BYTES as usize;
        let (files, good, pairs) = stored(dir.path(), size);
        let mut bytes = good.clone();
        bytes[33 * GROUP_BYTES as usize + 17] ^= 1;
        std::fs::write(dir.path().join("data"), &bytes).unwrap();
        let mut handed = Vec::new();
        let result = files.encode_groups(std::slice::from_ref(&(0..40)), &pool, |piece| {
            handed.extend_from_slice(&piece);
            Ok(())
        });
        let Err(VerifyError::Corrupt { offset, .. }) = result else {
            panic!("{result:?}");
        };
        assert_eq!(offset, 33 * GROUP_BYTES);
        // The groups before it were sent in whole pieces, nothing of group 33:
        // what was handed out is a prefix of the encoding of groups 0..33.
        assert!(handed.len() >= PIECE_BYTES);
        let before = reference(&good, &pairs, std::slice::from_ref(&(0..33)));
        assert!(
            handed.len() <= before.len(),
            "{} > {}",
            handed.len(),
            before.len()
        );
        assert_eq!(handed, before[..handed.len()]);
    }

    #[test]
    fn a_peer_gone_stops_the_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(PiecePool::default());
        let (files, ..) = stored(dir.path(), 3 * PIECE_BYTES);
        let mut calls = 0;
        let result = files.encode_groups(std::slice::from_ref(&(0..u64::MAX)), &pool, |_| {
            calls += 1;
            Err(io::ErrorKind::ConnectionReset.into())
        });
        assert!(matches!(result, Err(VerifyError::Io(_))), "{result:?}");
        assert_eq!(calls, 1);
    }
}
