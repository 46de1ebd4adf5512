//! The fixed 64-bit hashes placement is built on.
//!
//! Placement must give the same answer on every machine and in every release, so
//! it uses its own tiny hash rather than `std`'s (randomly seeded) or a dependency
//! whose output could change: SplitMix64's finalizer, a bijection on `u64` that
//! passes the usual avalanche tests, applied over the 32 id bytes.

/// SplitMix64's increment: successive multiples give well-spread inputs.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// Keeps node points and bundle probes in separate domains, so that a node and a
/// bundle with equal id bytes do not probe exactly onto the node's points.
const PROBE_DOMAIN: u64 = 0x5bd1_e995_a2c4_1f37;

/// SplitMix64's output function.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 64-bit key for 32 id bytes (node ids and bundle ids).
pub(crate) fn key_of(bytes: &[u8; 32]) -> u64 {
    bytes
        .chunks_exact(8)
        .fold(0x243f_6a88_85a3_08d3, |acc, word| {
            mix64(acc ^ u64::from_le_bytes(word.try_into().unwrap()))
        })
}

/// The `i`-th point of the node with key `node_key` on the ring.
pub(crate) fn point(node_key: u64, i: u64) -> u64 {
    mix64(node_key.wrapping_add(GOLDEN.wrapping_mul(i + 1)))
}

/// The `j`-th probe of the bundle with key `bundle_key` on the ring.
pub(crate) fn probe(bundle_key: u64, j: u64) -> u64 {
    mix64((bundle_key ^ PROBE_DOMAIN).wrapping_add(GOLDEN.wrapping_mul(j + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_fixed_across_builds() {
        // Changing these values re-places every bundle of every deployed cluster.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_eq!(key_of(&[0; 32]), 0x9a04_b598_3ed5_a094);
    }

    #[test]
    fn one_flipped_bit_changes_about_half_the_key() {
        let base = key_of(&[7; 32]);
        for byte in 0..32 {
            let mut bytes = [7; 32];
            bytes[byte] ^= 1;
            let flipped = (key_of(&bytes) ^ base).count_ones();
            assert!((12..=52).contains(&flipped), "byte {byte}: {flipped} bits");
        }
    }
}
