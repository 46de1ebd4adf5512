//! A blob's outboard built as its bytes arrive, in whatever pieces: the same
//! post-order outboard and root hash as `bao_tree`'s `outboard_post_order`,
//! which needs a reader, without reading the bytes back from disk afterwards.

use bao_tree::iter::{BaoChunk, PostOrderChunkIter};
use bao_tree::{BaoTree, ChunkNum};
use cartable_net::peer::exchange::BLOCK_SIZE;
use cartable_proto::BlobHash;

use super::verify::{hash_group, parent_cv};

/// Walks the tree of a blob of known size in post order as its bytes are
/// given: each chunk group is hashed once complete, each parent's two child
/// hashes are appended to the outboard once both are known.
#[derive(Debug)]
pub struct OutboardBuilder {
    chunks: PostOrderChunkIter,
    /// The chunk group being filled: its first chunk, its length, whether it
    /// is the whole blob.
    leaf: Option<(ChunkNum, usize, bool)>,
    /// Bytes of that group given so far, when they came in smaller pieces.
    group: Vec<u8>,
    /// Hashes of the subtrees still waiting for their parent.
    stack: Vec<blake3::Hash>,
    /// Outboard bytes built and not yet taken.
    outboard: Vec<u8>,
}

impl OutboardBuilder {
    /// A builder for a blob of `size` bytes.
    pub fn new(size: u64) -> Self {
        let mut builder = Self {
            chunks: BaoTree::new(size, BLOCK_SIZE).post_order_chunks_iter(),
            leaf: None,
            group: Vec::new(),
            stack: Vec::new(),
            outboard: Vec::new(),
        };
        builder.advance();
        builder
    }

    /// Takes the next bytes of the blob; bytes past its end are ignored (the
    /// caller counts what it is given).
    pub fn update(&mut self, mut bytes: &[u8]) {
        while let Some((start, len, is_root)) = self.leaf {
            if bytes.is_empty() {
                break;
            }
            if self.group.is_empty() && bytes.len() >= len {
                // The whole group is in this piece: hash it where it lies.
                let (whole, rest) = bytes.split_at(len);
                self.stack.push(hash_group(start, whole, is_root));
                bytes = rest;
            } else {
                let take = (len - self.group.len()).min(bytes.len());
                self.group.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.group.len() < len {
                    break;
                }
                self.stack.push(hash_group(start, &self.group, is_root));
                self.group.clear();
            }
            self.leaf = None;
            self.advance();
        }
    }

    /// The outboard bytes built since the last call.
    pub fn take_outboard(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outboard)
    }

    /// The root hash, once every byte of the blob has been given.
    pub fn root(&self) -> Option<BlobHash> {
        match (&self.leaf, self.stack.as_slice()) {
            (None, [root]) => Some((*root).into()),
            _ => None,
        }
    }

    /// Hashes the parents that follow in post order, up to the next chunk
    /// group to wait for (which may be empty: the blob of no bytes).
    fn advance(&mut self) {
        while self.leaf.is_none() {
            match self.chunks.next() {
                None => return,
                Some(BaoChunk::Leaf {
                    start_chunk,
                    size,
                    is_root,
                    ..
                }) => {
                    if size == 0 {
                        self.stack.push(hash_group(start_chunk, &[], is_root));
                    } else {
                        self.leaf = Some((start_chunk, size, is_root));
                    }
                }
                Some(BaoChunk::Parent { is_root, .. }) => {
                    let (Some(right), Some(left)) = (self.stack.pop(), self.stack.pop()) else {
                        unreachable!("post order gives a parent after its two children")
                    };
                    self.outboard.extend_from_slice(left.as_bytes());
                    self.outboard.extend_from_slice(right.as_bytes());
                    self.stack.push(parent_cv(&left, &right, is_root));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bao_tree::io::sync::outboard_post_order;

    use super::*;
    use crate::store::tests::pattern;

    /// Gives `data` in pieces of the lengths in `cuts`, cycled.
    fn built(data: &[u8], cuts: &[usize]) -> (Option<BlobHash>, Vec<u8>) {
        let mut builder = OutboardBuilder::new(data.len() as u64);
        let mut outboard = Vec::new();
        let mut rest = data;
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, after) = rest.split_at((*cut).min(rest.len()));
            builder.update(piece);
            outboard.extend(builder.take_outboard());
            rest = after;
        }
        outboard.extend(builder.take_outboard());
        (builder.root(), outboard)
    }

    #[test]
    fn the_outboard_and_hash_are_bao_trees_whatever_the_pieces() {
        let group = BLOCK_SIZE.bytes();
        for len in [
            0,
            1,
            1024,
            group - 1,
            group,
            group + 1,
            3 * group + 5,
            8 * group,
            64 * group - 1,
            64 * group + 1,
            65 * group + 1024,
            (1 << 20) + 17,
            5 * (1 << 20) - 3,
        ] {
            let data = pattern(len, 3);
            let mut expected = Vec::new();
            let hash = outboard_post_order(
                &data[..],
                BaoTree::new(len as u64, BLOCK_SIZE),
                &mut expected,
            )
            .unwrap();
            for cuts in [&[len.max(1)][..], &[1000, 7, 16384, 40000], &[group]] {
                let (root, outboard) = built(&data, cuts);
                assert_eq!(root, Some(hash.into()), "{len} bytes in pieces of {cuts:?}");
                assert_eq!(root, Some(BlobHash::of(&data)));
                assert!(outboard == expected, "{len} bytes in pieces of {cuts:?}");
            }
        }
    }

    #[test]
    fn no_root_before_the_last_byte_and_nothing_counted_after_it() {
        let data = pattern(100_000, 3);
        let mut builder = OutboardBuilder::new(data.len() as u64);
        builder.update(&data[..99_999]);
        assert_eq!(builder.root(), None);
        let mut longer = data[99_999..].to_vec();
        longer.push(0);
        builder.update(&longer);
        assert_eq!(
            builder.root(),
            Some(BlobHash::of(&data)),
            "the extra byte is ignored"
        );
    }
}
