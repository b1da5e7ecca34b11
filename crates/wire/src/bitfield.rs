//! A set of piece indices in BEP 3 wire order: piece 0 is the most significant bit of byte 0.

use crate::WireError;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bitfield {
    bytes: Vec<u8>,
    pieces: u32,
    count: u32,
}

impl Bitfield {
    /// All clear.
    pub fn new(pieces: u32) -> Bitfield {
        Bitfield {
            bytes: vec![0; pieces.div_ceil(8) as usize],
            pieces,
            count: 0,
        }
    }

    /// All set.
    pub fn full(pieces: u32) -> Bitfield {
        let mut bytes = vec![0xff; pieces.div_ceil(8) as usize];
        let spare = bytes.len() as u32 * 8 - pieces;
        if let Some(last) = bytes.last_mut() {
            *last &= 0xff << spare;
        }
        Bitfield {
            bytes,
            pieces,
            count: pieces,
        }
    }

    /// Checks a received bitfield: exactly `ceil(pieces / 8)` bytes, spare bits clear.
    pub fn from_wire(bytes: &[u8], pieces: u32) -> Result<Bitfield, WireError> {
        let expected = pieces.div_ceil(8) as usize;
        if bytes.len() != expected {
            return Err(WireError::BitfieldSize {
                got: bytes.len(),
                expected,
                pieces,
            });
        }
        let spare = (expected * 8) as u32 - pieces;
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if bytes[expected - 1] & mask != 0 {
                return Err(WireError::BitfieldSpareBits { pieces });
            }
        }
        let count = bytes.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield {
            bytes: bytes.to_vec(),
            pieces,
            count,
        })
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    #[inline]
    pub fn len(&self) -> u32 {
        self.pieces
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pieces == 0
    }
    /// How many pieces are set.
    #[inline]
    pub fn count(&self) -> u32 {
        self.count
    }
    #[inline]
    pub fn is_full(&self) -> bool {
        self.count == self.pieces
    }

    #[inline]
    pub fn get(&self, index: u32) -> bool {
        index < self.pieces && self.bytes[(index / 8) as usize] & (0x80 >> (index % 8)) != 0
    }

    /// Sets a bit; returns false (and does nothing) if `index` is out of range.
    #[inline]
    pub fn set(&mut self, index: u32) -> bool {
        if index >= self.pieces {
            return false;
        }
        let byte = &mut self.bytes[(index / 8) as usize];
        let mask = 0x80 >> (index % 8);
        if *byte & mask == 0 {
            *byte |= mask;
            self.count += 1;
        }
        true
    }

    #[inline]
    pub fn clear(&mut self, index: u32) {
        if index < self.pieces {
            let byte = &mut self.bytes[(index / 8) as usize];
            let mask = 0x80 >> (index % 8);
            if *byte & mask != 0 {
                *byte &= !mask;
                self.count -= 1;
            }
        }
    }

    /// Indices of set bits, ascending. Skips clear bytes, so a sparse field is cheap to walk
    /// (spare bits past `len` are always clear).
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        set_bits(self.bytes.iter().copied())
    }

    /// How `new` differs from this field: each index set in one of them and not in the
    /// other, ascending, with `true` where `new` has it. Compared over the shorter of the two.
    pub fn changes<'a>(&'a self, new: &'a Bitfield) -> impl Iterator<Item = (u32, bool)> + 'a {
        let differ = self.bytes.iter().zip(&new.bytes).map(|(a, b)| a ^ b);
        set_bits(differ).map(|i| (i, new.get(i)))
    }

    /// True when some index is set in both (compared over the shorter of the two).
    pub fn intersects(&self, other: &Bitfield) -> bool {
        let (a, b) = (self.as_bytes(), other.as_bytes());
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut words_a = a.chunks_exact(8);
        let mut words_b = b.chunks_exact(8);
        for (x, y) in (&mut words_a).zip(&mut words_b) {
            let x = u64::from_ne_bytes(x.try_into().expect("8 bytes"));
            let y = u64::from_ne_bytes(y.try_into().expect("8 bytes"));
            if x & y != 0 {
                return true;
            }
        }
        words_a
            .remainder()
            .iter()
            .zip(words_b.remainder())
            .any(|(x, y)| x & y != 0)
    }
}

/// Indices of the set bits of a byte stream in wire order, skipping zero bytes.
fn set_bits(bytes: impl Iterator<Item = u8>) -> impl Iterator<Item = u32> {
    bytes
        .enumerate()
        .filter(|&(_, b)| b != 0)
        .flat_map(|(i, b)| {
            let base = i as u32 * 8;
            let mut rest = b;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.leading_zeros();
                rest &= !(0x80 >> bit);
                Some(base + bit)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn field(pieces: u32, set: &[u32]) -> Bitfield {
        let mut bits = Bitfield::new(pieces);
        for &i in set {
            bits.set(i % pieces.max(1));
        }
        bits
    }

    proptest! {
        #[test]
        fn ones_lists_exactly_the_set_bits(pieces in 1u32..300, set in prop::collection::vec(0u32..300, 0..80)) {
            let bits = field(pieces, &set);
            let slow: Vec<u32> = (0..pieces).filter(|&i| bits.get(i)).collect();
            prop_assert_eq!(bits.ones().collect::<Vec<_>>(), slow.clone());
            prop_assert_eq!(slow.len() as u32, bits.count());
        }

        #[test]
        fn intersects_means_a_common_index(
            pieces in 1u32..300,
            a in prop::collection::vec(0u32..300, 0..40),
            b in prop::collection::vec(0u32..300, 0..40),
        ) {
            let (a, b) = (field(pieces, &a), field(pieces, &b));
            let slow = a.ones().any(|i| b.get(i));
            prop_assert_eq!(a.intersects(&b), slow);
            prop_assert_eq!(b.intersects(&a), slow);
        }

        #[test]
        fn changes_list_every_index_where_the_two_differ(
            pieces in 1u32..300,
            a in prop::collection::vec(0u32..300, 0..80),
            b in prop::collection::vec(0u32..300, 0..80),
        ) {
            let (old, new) = (field(pieces, &a), field(pieces, &b));
            let slow: Vec<(u32, bool)> =
                (0..pieces).filter(|&i| old.get(i) != new.get(i)).map(|i| (i, new.get(i))).collect();
            prop_assert_eq!(old.changes(&new).collect::<Vec<_>>(), slow);
        }

        #[test]
        fn full_sets_every_piece_and_no_spare_bit(pieces in 0u32..300) {
            let full = Bitfield::full(pieces);
            prop_assert_eq!(full.ones().collect::<Vec<_>>(), (0..pieces).collect::<Vec<_>>());
            prop_assert_eq!(full.count(), pieces);
            prop_assert!(Bitfield::from_wire(full.as_bytes(), pieces).is_ok());
        }
    }
}
