//! Which keys a bulk load has loaded so far, as a split-block Bloom filter (the layout of
//! Parquet's and Impala's filters): a key never loaded is told apart for certain, and
//! about one in a hundred is mistaken for one that was.
//!
//! It replaced an exact set of 64-bit key hashes. That set took 8 bytes a key and, at a
//! partition's size, lived outside the CPU caches: its inserts were a sixth of a full
//! restore's loading threads in `perf` (deploy/bench restore). The filter takes 1.5 bytes
//! a key, and each key touches one 32-byte block. A mistaken "loaded before" costs one
//! read of the store, which finds nothing and removes nothing.

/// Bits per key the filter is sized for: about 1% false "loaded before" at that many
/// keys, fewer below.
const BITS_PER_KEY: u64 = 12;

/// One bit in each of a block's eight words, chosen by these odd multipliers (Parquet's).
const SALT: [u32; 8] = [0x47b6_137b, 0x4497_4d91, 0x8824_ad5b, 0xa2b7_289d, 0x7054_95c7, 0x2df1_424b, 0x9efc_4947, 0x5c6b_fb31];

pub struct LoadedKeys {
    blocks: Vec<[u32; 8]>,
}

impl LoadedKeys {
    /// A filter for up to `keys` keys (more still work, with more false answers).
    pub fn with_capacity(keys: u64) -> Self {
        let blocks = (keys.max(1) * BITS_PER_KEY).div_ceil(256);
        Self { blocks: vec![[0; 8]; blocks as usize] }
    }

    /// Adds the key whose 64-bit hash is `hash` (a hash of good quality: both halves are
    /// used); returns whether it may have been added before. False is certain.
    pub fn insert(&mut self, hash: u64) -> bool {
        let (block, bits) = self.locate(hash);
        let block = &mut self.blocks[block];
        let seen = block.iter().zip(bits).all(|(word, bit)| word & bit != 0);
        for (word, bit) in block.iter_mut().zip(bits) {
            *word |= bit;
        }
        seen
    }

    /// The block of `hash` and its bit in each of the block's words: the high half picks
    /// the block (a multiply instead of a modulo), the low half the bits.
    fn locate(&self, hash: u64) -> (usize, [u32; 8]) {
        let block = ((hash >> 32) * self.blocks.len() as u64) >> 32;
        let low = hash as u32;
        (block as usize, SALT.map(|salt| 1u32 << (low.wrapping_mul(salt) >> 27)))
    }

    #[cfg(test)]
    fn contains(&self, hash: u64) -> bool {
        let (block, bits) = self.locate(hash);
        self.blocks[block].iter().zip(bits).all(|(word, bit)| word & bit != 0)
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<[u32; 8]>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, RandomState};

    /// Every key added is reported as added (no false "never loaded": a key loaded twice
    /// would keep its earlier value's index entries); at the size the filter was made
    /// for, about 1% of keys never added are taken for added, and a new key added to it
    /// is told new as often.
    #[test]
    fn keys_added_are_always_recognised_and_others_rarely_are() {
        let hasher = RandomState::new();
        let n = 200_000u64;
        let mut keys = LoadedKeys::with_capacity(n);
        let taken_for_added_while_filling = (0..n).filter(|i| keys.insert(hasher.hash_one(format!("key-{i}")))).count();
        for i in 0..n {
            assert!(keys.contains(hasher.hash_one(format!("key-{i}"))), "key-{i} was added");
            assert!(keys.insert(hasher.hash_one(format!("key-{i}"))), "key-{i} was added");
        }
        let mistaken = (0..n).filter(|i| keys.contains(hasher.hash_one(format!("other-{i}")))).count();
        let (rate, filling) = (mistaken as f64 / n as f64, taken_for_added_while_filling as f64 / n as f64);
        assert!(rate < 0.02, "{:.2}% of keys never added taken for added", rate * 100.0);
        assert!(filling < 0.01, "{:.2}% of new keys taken for added while filling", filling * 100.0);
        assert_eq!(keys.bytes() as u64, (n * BITS_PER_KEY).div_ceil(256) * 32, "1.5 bytes a key");
    }

    /// A filter made for no keys still holds one block and answers.
    #[test]
    fn an_empty_capacity_still_works() {
        let mut keys = LoadedKeys::with_capacity(0);
        assert!(!keys.insert(42));
        assert!(keys.insert(42));
    }
}
