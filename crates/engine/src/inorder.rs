//! The SHA-1 of pieces one peer sends, computed as their blocks are written, so that a piece
//! the peer completes alone needs no read-back from disk.
//!
//! Seeds that read blocks from disk concurrently (libtorrent, rqbit) send a piece's blocks a
//! little out of order, sometimes across socket reads. A block ahead of the hash is kept (a
//! copy, within a per-peer budget) until the gap before it arrives; only a block that does not
//! fit the budget, or a gap another peer fills, costs the piece its in-order hash (and a
//! read-back check).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use sha1::{Digest, Sha1};

/// Pieces hashed at once at most (a peer works on a few at a time; past this the stale ones
/// are dropped and those pieces are read back instead).
const MAX_PIECES: usize = 64;

/// Bytes of blocks held ahead of their pieces' hashes, per peer (32 blocks of 16 KiB).
const MAX_AHEAD_BYTES: usize = 512 * 1024;

/// The in-order hashes of the pieces one peer is sending.
#[derive(Default)]
pub(crate) struct InOrderHashes {
    pieces: HashMap<u32, PieceHash>,
    /// Bytes held in every piece's `ahead`.
    ahead_bytes: usize,
}

struct PieceHash {
    sha: Sha1,
    /// Bytes of the piece hashed so far.
    next: u32,
    /// Written blocks past `next`, by offset, waiting for the gap before them.
    ahead: BTreeMap<u32, Bytes>,
}

impl InOrderHashes {
    /// Feeds a block of `index` at `begin` that is now written. A block at offset 0 after the
    /// hash has begun starts the piece afresh (a new attempt); any other block the piece
    /// already has drops it.
    pub(crate) fn feed(&mut self, index: u32, begin: u32, data: &[u8]) {
        if begin == 0 && self.pieces.get(&index).is_some_and(|piece| piece.next > 0) {
            self.drop_piece(index);
        }
        if !self.pieces.contains_key(&index) && self.pieces.len() >= MAX_PIECES {
            self.pieces.clear();
            self.ahead_bytes = 0;
        }
        let piece = self.pieces.entry(index).or_insert_with(|| PieceHash {
            sha: Sha1::new(),
            next: 0,
            ahead: BTreeMap::new(),
        });
        if begin == piece.next {
            piece.sha.update(data);
            piece.next += data.len() as u32;
            while let Some(block) = piece.ahead.remove(&piece.next) {
                self.ahead_bytes -= block.len();
                piece.sha.update(&block);
                piece.next += block.len() as u32;
            }
        } else if begin < piece.next || piece.ahead.contains_key(&begin) {
            self.drop_piece(index);
        } else if self.ahead_bytes + data.len() <= MAX_AHEAD_BYTES {
            self.ahead_bytes += data.len();
            piece.ahead.insert(begin, Bytes::copy_from_slice(data));
        } else {
            // Pieces whose gap another peer filled hold their blocks until dropped, so past
            // the budget every piece holding blocks is dropped, this one with them.
            self.pieces.retain(|_, piece| piece.ahead.is_empty());
            self.pieces.remove(&index);
            self.ahead_bytes = 0;
        }
    }

    /// The SHA-1 of the piece's first `size` bytes, if this peer's blocks covered them in
    /// order (after waiting ahead where needed); the piece is forgotten either way.
    pub(crate) fn finish(&mut self, index: u32, size: u32) -> Option<[u8; 20]> {
        let piece = self.pieces.remove(&index)?;
        self.ahead_bytes -= piece.ahead.values().map(Bytes::len).sum::<usize>();
        (piece.next == size && piece.ahead.is_empty()).then(|| piece.sha.finalize().into())
    }

    fn drop_piece(&mut self, index: u32) {
        if let Some(piece) = self.pieces.remove(&index) {
            self.ahead_bytes -= piece.ahead.values().map(Bytes::len).sum::<usize>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 16 * 1024;

    fn piece(blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect()
    }

    fn sha1(data: &[u8]) -> [u8; 20] {
        Sha1::digest(data).into()
    }

    fn feed_in(hashes: &mut InOrderHashes, index: u32, data: &[u8], order: &[usize]) {
        for &b in order {
            hashes.feed(index, (b * BLOCK) as u32, &data[b * BLOCK..(b + 1) * BLOCK]);
        }
    }

    #[test]
    fn blocks_out_of_order_within_the_budget_still_give_the_piece_hash() {
        let data = piece(16);
        let mut hashes = InOrderHashes::default();
        feed_in(
            &mut hashes,
            3,
            &data,
            &[1, 0, 3, 2, 4, 7, 6, 5, 8, 9, 15, 10, 11, 12, 13, 14],
        );
        assert_eq!(hashes.ahead_bytes, 0);
        assert_eq!(hashes.finish(3, data.len() as u32), Some(sha1(&data)));
    }

    #[test]
    fn a_gap_never_filled_or_a_block_sent_twice_gives_no_hash() {
        let data = piece(4);
        let mut hashes = InOrderHashes::default();
        // Block 1 came from another peer.
        feed_in(&mut hashes, 0, &data, &[0, 2, 3]);
        assert_eq!(hashes.finish(0, data.len() as u32), None);
        feed_in(&mut hashes, 1, &data, &[0, 1, 1, 2, 3]);
        assert_eq!(hashes.finish(1, data.len() as u32), None);
        assert_eq!(hashes.ahead_bytes, 0);
    }

    #[test]
    fn blocks_past_the_budget_drop_the_pieces_holding_blocks_and_free_them() {
        let blocks = MAX_AHEAD_BYTES / BLOCK + 2;
        let data = piece(blocks);
        let mut hashes = InOrderHashes::default();
        // Piece 8 is hashed in order so far and holds nothing: it survives the drop.
        feed_in(&mut hashes, 8, &data, &[0]);
        // Piece 7's block 0 went to another peer: its block 2 is held for ever.
        feed_in(&mut hashes, 7, &data, &[2]);
        let mut order: Vec<usize> = (1..blocks).collect();
        order.push(0);
        feed_in(&mut hashes, 9, &data, &order);
        assert_eq!(hashes.finish(9, data.len() as u32), None);
        assert!(!hashes.pieces.contains_key(&7));
        assert_eq!(hashes.ahead_bytes, 0);
        feed_in(&mut hashes, 8, &data, &(1..blocks).collect::<Vec<_>>());
        assert_eq!(hashes.finish(8, data.len() as u32), Some(sha1(&data)));
        // A new attempt at the piece, in order, is hashed again.
        feed_in(&mut hashes, 9, &data, &(0..blocks).collect::<Vec<_>>());
        assert_eq!(hashes.finish(9, data.len() as u32), Some(sha1(&data)));
    }

    #[test]
    fn a_block_at_offset_zero_starts_a_new_attempt() {
        let data = piece(2);
        let mut hashes = InOrderHashes::default();
        feed_in(&mut hashes, 5, &data, &[0, 0, 1]);
        assert_eq!(hashes.finish(5, data.len() as u32), Some(sha1(&data)));
    }
}
