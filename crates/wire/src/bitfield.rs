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
        let mut bits = Bitfield::new(pieces);
        for i in 0..pieces {
            bits.set(i);
        }
        bits
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

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn len(&self) -> u32 {
        self.pieces
    }
    pub fn is_empty(&self) -> bool {
        self.pieces == 0
    }
    /// How many pieces are set.
    pub fn count(&self) -> u32 {
        self.count
    }
    pub fn is_full(&self) -> bool {
        self.count == self.pieces
    }

    pub fn get(&self, index: u32) -> bool {
        index < self.pieces && self.bytes[(index / 8) as usize] & (0x80 >> (index % 8)) != 0
    }

    /// Sets a bit; returns false (and does nothing) if `index` is out of range.
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

    /// Indices of set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.pieces).filter(|&i| self.get(i))
    }
}
