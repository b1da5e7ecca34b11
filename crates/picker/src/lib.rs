//! Which blocks to ask which peer for. Pure bookkeeping: no I/O, no clocks.
//!
//! - The first [`RANDOM_FIRST_PIECES`] pieces are picked at random (a new peer has something to
//!   trade as soon as possible, and rare pieces are not all fetched from one source first).
//! - After that, rarest first by how many connected peers have a piece, ties broken at random.
//! - A peer first finishes the pieces it started ("whole pieces per peer"), then joins other
//!   started pieces, then opens a new one, so pieces complete quickly and a bad piece can be
//!   traced to few peers.
//! - End-game: once every missing block has been requested, blocks still in flight may be
//!   requested again from other peers; when one arrives, [`Picker::block_received`] names the
//!   other peers to send `cancel` to.
//! - Priorities per piece (0 = skip), set from file selections by [`Picker::set_file_priority`].
//!
//! Geometry (16 KiB blocks, the short last block, piece lengths that are not a multiple of
//! 16 KiB) comes from `metainfo::Geometry`.

use pow_metainfo::{Block, Geometry, PieceIndex, BLOCK_SIZE};
use pow_wire::Bitfield;
use rand::Rng;
use std::collections::HashMap;

pub const RANDOM_FIRST_PIECES: u32 = 4;

/// The engine's handle for a peer connection.
pub type PeerKey = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum BlockState {
    Free,
    /// Requested from these peers (more than one only in end-game).
    Requested(Vec<PeerKey>),
    Received,
}

#[derive(Debug, Clone)]
struct Partial {
    blocks: Vec<BlockState>,
    received: u32,
    /// The peer that opened this piece; it keeps going with it first.
    owner: Option<PeerKey>,
}

impl Partial {
    fn has_free(&self) -> bool {
        self.blocks.contains(&BlockState::Free)
    }
}

/// What arrived block means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// We did not want this block (never requested, or already have it): drop it.
    Unwanted,
    /// Stored; `cancel` these other peers' requests for the same block (end-game).
    Stored { cancel: Vec<PeerKey> },
    /// Stored and the piece has all its blocks: hash it. Cancel as above.
    PieceDone { cancel: Vec<PeerKey> },
}

pub struct Picker {
    geometry: Geometry,
    have: Bitfield,
    availability: Vec<u32>,
    priority: Vec<u8>,
    partial: HashMap<u32, Partial>,
    /// Pieces whose blocks are all received and that wait for their hash check.
    hashing: Bitfield,
    /// Wanted pieces not yet verified, and their bytes: kept as counters because the engine
    /// asks after every verified piece (a scan would make a download quadratic in pieces).
    missing: u32,
    bytes_left: u64,
}

impl Picker {
    /// `have` is what is already verified on disk.
    pub fn new(geometry: Geometry, have: Bitfield) -> Picker {
        let count = geometry.piece_count();
        let mut picker = Picker {
            availability: vec![0; count as usize],
            priority: vec![1; count as usize],
            partial: HashMap::new(),
            hashing: Bitfield::new(count),
            have,
            geometry,
            missing: 0,
            bytes_left: 0,
        };
        picker.recount();
        picker
    }

    /// Recomputes the counters after priorities change (rare: file selection).
    fn recount(&mut self) {
        let wanted: Vec<PieceIndex> = self
            .geometry
            .pieces()
            .filter(|p| self.priority[p.as_usize()] > 0 && !self.have.get(p.get()))
            .collect();
        self.missing = wanted.len() as u32;
        self.bytes_left = wanted
            .iter()
            .map(|&p| u64::from(self.geometry.piece_size(p)))
            .sum();
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// True when every wanted piece is verified.
    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// Pieces wanted and not yet verified.
    pub fn missing(&self) -> u32 {
        self.missing
    }

    /// Bytes wanted and not yet verified.
    pub fn bytes_left(&self) -> u64 {
        self.bytes_left
    }

    pub fn set_piece_priority(&mut self, piece: u32, priority: u8) {
        if let Some(p) = self.priority.get_mut(piece as usize) {
            *p = priority;
            self.recount();
        }
    }

    /// Raises the priority of every piece holding bytes of file `file` to at least `priority`
    /// (skipping files is [`Picker::select_files`]: a piece shared with a wanted file stays wanted).
    pub fn set_file_priority(&mut self, file: usize, priority: u8) {
        self.raise_file_priority(file, priority);
        self.recount();
    }

    fn raise_file_priority(&mut self, file: usize, priority: u8) {
        for piece in self.geometry.file_pieces(file) {
            let p = &mut self.priority[piece as usize];
            *p = if priority == 0 {
                *p
            } else {
                (*p).max(priority)
            };
        }
    }

    /// Skips every file not in `wanted` (by index): their pieces get priority 0 unless they
    /// also hold bytes of a wanted file.
    pub fn select_files(&mut self, wanted: &[usize]) {
        self.priority.iter_mut().for_each(|p| *p = 0);
        for &file in wanted {
            self.raise_file_priority(file, 1);
        }
        self.recount();
    }

    pub fn is_wanted(&self, piece: u32) -> bool {
        self.priority.get(piece as usize).is_some_and(|&p| p > 0) && !self.have.get(piece)
    }

    /// Would we want anything from a peer with `bits`?
    pub fn interesting(&self, bits: &Bitfield) -> bool {
        bits.ones()
            .any(|i| self.is_wanted(i) && !self.hashing.get(i))
    }

    pub fn peer_connected(&mut self, bits: &Bitfield) {
        for i in bits.ones() {
            self.availability[i as usize] += 1;
        }
    }

    pub fn peer_have(&mut self, piece: u32) {
        if let Some(a) = self.availability.get_mut(piece as usize) {
            *a += 1;
        }
    }

    /// A peer no longer has `piece` (a web seed that lost a file or sent it corrupt): it stops
    /// counting for the piece's availability. Its requests stay as they are.
    pub fn peer_lost(&mut self, piece: u32) {
        if let Some(a) = self.availability.get_mut(piece as usize) {
            *a = a.saturating_sub(1);
        }
    }

    /// Forgets a peer: its bits stop counting and its outstanding requests become free.
    pub fn peer_disconnected(&mut self, peer: PeerKey, bits: &Bitfield) {
        for i in bits.ones() {
            let a = &mut self.availability[i as usize];
            *a = a.saturating_sub(1);
        }
        self.peer_choked(peer);
    }

    /// The peer choked us (or went away): every request it had is free again.
    pub fn peer_choked(&mut self, peer: PeerKey) {
        for partial in self.partial.values_mut() {
            for block in &mut partial.blocks {
                if let BlockState::Requested(peers) = block {
                    peers.retain(|&p| p != peer);
                    if peers.is_empty() {
                        *block = BlockState::Free;
                    }
                }
            }
            if partial.owner == Some(peer) {
                partial.owner = None;
            }
        }
    }

    /// A request we sent was rejected or timed out.
    pub fn request_failed(&mut self, peer: PeerKey, block: &Block) {
        if let Some(partial) = self.partial.get_mut(&block.piece.get()) {
            let slot = &mut partial.blocks[(block.begin / BLOCK_SIZE) as usize];
            if let BlockState::Requested(peers) = slot {
                peers.retain(|&p| p != peer);
                if peers.is_empty() {
                    *slot = BlockState::Free;
                }
            }
        }
    }

    /// Up to `max` blocks to request from `peer`, which has `bits`.
    pub fn pick(&mut self, peer: PeerKey, bits: &Bitfield, max: usize) -> Vec<Block> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        // 1. Pieces this peer opened, then 2. any other started piece it has.
        let mut started: Vec<u32> = self
            .partial
            .iter()
            .filter(|(&i, p)| bits.get(i) && p.has_free())
            .map(|(&i, _)| i)
            .collect();
        started.sort_by_key(|i| (self.partial[i].owner != Some(peer), *i));
        for piece in started {
            self.take_free(peer, piece, max, &mut out);
            if out.len() >= max {
                return out;
            }
        }
        // 3. New pieces.
        while out.len() < max {
            let Some(piece) = self.choose_new_piece(bits) else {
                break;
            };
            let blocks = self
                .geometry
                .blocks_in_piece(self.geometry.piece(piece).expect("valid"));
            self.partial.insert(
                piece,
                Partial {
                    blocks: vec![BlockState::Free; blocks as usize],
                    received: 0,
                    owner: Some(peer),
                },
            );
            self.take_free(peer, piece, max, &mut out);
        }
        // 4. End-game: nothing free is left anywhere this peer could serve; double up on
        // blocks in flight with other peers.
        if out.len() < max && self.all_requested() {
            let mut in_flight: Vec<(u32, usize)> = Vec::new();
            for (&piece, partial) in &self.partial {
                if !bits.get(piece) {
                    continue;
                }
                for (i, block) in partial.blocks.iter().enumerate() {
                    if let BlockState::Requested(peers) = block {
                        if !peers.contains(&peer) && peers.len() < 3 {
                            in_flight.push((piece, i));
                        }
                    }
                }
            }
            in_flight.sort_unstable();
            for (piece, i) in in_flight.into_iter().take(max - out.len()) {
                if let BlockState::Requested(peers) =
                    &mut self.partial.get_mut(&piece).expect("partial").blocks[i]
                {
                    peers.push(peer);
                }
                out.push(self.block(piece, i));
            }
        }
        out
    }

    fn block(&self, piece: u32, i: usize) -> Block {
        let piece = self.geometry.piece(piece).expect("valid piece");
        let begin = i as u32 * BLOCK_SIZE;
        Block {
            piece,
            begin,
            length: BLOCK_SIZE.min(self.geometry.piece_size(piece) - begin),
        }
    }

    fn take_free(&mut self, peer: PeerKey, piece: u32, max: usize, out: &mut Vec<Block>) {
        let mut taken = Vec::new();
        if let Some(partial) = self.partial.get_mut(&piece) {
            for (i, block) in partial.blocks.iter_mut().enumerate() {
                if out.len() + taken.len() >= max {
                    break;
                }
                if *block == BlockState::Free {
                    *block = BlockState::Requested(vec![peer]);
                    taken.push(i);
                }
            }
        }
        for i in taken {
            out.push(self.block(piece, i));
        }
    }

    /// True when no wanted piece has a free block and no unstarted wanted piece remains.
    fn all_requested(&self) -> bool {
        if self.partial.values().any(Partial::has_free) {
            return false;
        }
        !(0..self.geometry.piece_count())
            .any(|i| self.is_wanted(i) && !self.partial.contains_key(&i) && !self.hashing.get(i))
    }

    fn choose_new_piece(&self, bits: &Bitfield) -> Option<u32> {
        let candidates = bits.ones().filter(|&i| {
            self.is_wanted(i) && !self.partial.contains_key(&i) && !self.hashing.get(i)
        });
        let mut rng = rand::rng();
        if self.have.count() < RANDOM_FIRST_PIECES {
            let all: Vec<u32> = candidates.collect();
            return (!all.is_empty()).then(|| all[rng.random_range(0..all.len())]);
        }
        // Rarest first; reservoir sampling breaks ties uniformly at random.
        let mut best: Option<(u32, u32)> = None;
        let mut ties = 0u32;
        for i in candidates {
            let avail = self.availability[i as usize];
            match best {
                Some((_, b)) if avail > b => {}
                Some((_, b)) if avail == b => {
                    ties += 1;
                    if rng.random_range(0..ties) == 0 {
                        best = Some((i, avail));
                    }
                }
                _ => {
                    best = Some((i, avail));
                    ties = 1;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// A block arrived from `peer`. Says whether to store it, whom to cancel, and whether its
    /// piece is now complete and must be hashed.
    pub fn block_received(
        &mut self,
        peer: PeerKey,
        piece: u32,
        begin: u32,
        length: u32,
    ) -> Received {
        let Some(index) = self.geometry.piece(piece) else {
            return Received::Unwanted;
        };
        let expected = self.geometry.block(piece, begin, length);
        let Some(partial) = self.partial.get_mut(&piece) else {
            return Received::Unwanted;
        };
        let i = (begin / BLOCK_SIZE) as usize;
        if !begin.is_multiple_of(BLOCK_SIZE) || expected.is_none() || i >= partial.blocks.len() {
            return Received::Unwanted;
        }
        let cancel = match &partial.blocks[i] {
            BlockState::Requested(peers) => {
                if !peers.contains(&peer) {
                    return Received::Unwanted;
                }
                peers.iter().copied().filter(|&p| p != peer).collect()
            }
            _ => return Received::Unwanted,
        };
        if length != BLOCK_SIZE.min(self.geometry.piece_size(index) - begin) {
            return Received::Unwanted;
        }
        partial.blocks[i] = BlockState::Received;
        partial.received += 1;
        if partial.received as usize == partial.blocks.len() {
            self.partial.remove(&piece);
            self.hashing.set(piece);
            Received::PieceDone { cancel }
        } else {
            Received::Stored { cancel }
        }
    }

    /// The piece's hash matched: it is ours.
    pub fn piece_verified(&mut self, piece: u32) {
        self.hashing.clear(piece);
        self.partial.remove(&piece);
        if self.is_wanted(piece) {
            self.missing -= 1;
            let index = self.geometry.piece(piece).expect("wanted pieces exist");
            self.bytes_left -= u64::from(self.geometry.piece_size(index));
        }
        self.have.set(piece);
    }

    /// A piece we had can no longer be read (its file was truncated or removed): not ours any
    /// more, and not wanted either, so a seed never turns into a leecher for data someone
    /// removed on purpose. The counters do not change: it was neither missing nor left.
    pub fn piece_lost(&mut self, piece: u32) {
        if self.have.get(piece) {
            self.have.clear(piece);
            self.priority[piece as usize] = 0;
        }
    }

    /// The piece's hash did not match: every block is wanted again.
    pub fn piece_failed(&mut self, piece: u32) {
        self.hashing.clear(piece);
        self.partial.remove(&piece);
    }

    /// Outstanding requests of `peer` (for timeouts and cancels on disconnect).
    pub fn requests_of(&self, peer: PeerKey) -> Vec<Block> {
        let mut out = Vec::new();
        for (&piece, partial) in &self.partial {
            for (i, block) in partial.blocks.iter().enumerate() {
                if let BlockState::Requested(peers) = block {
                    if peers.contains(&peer) {
                        out.push(self.block(piece, i));
                    }
                }
            }
        }
        out
    }

    pub fn piece_index(&self, piece: u32) -> Option<PieceIndex> {
        self.geometry.piece(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(pieces: u32, piece_length: u64, last: u64) -> Geometry {
        let total = piece_length * u64::from(pieces - 1) + last;
        Geometry::new(piece_length, vec![total], u64::from(pieces), false).unwrap()
    }

    fn full(n: u32) -> Bitfield {
        Bitfield::full(n)
    }

    #[test]
    fn a_lost_piece_is_neither_had_nor_wanted() {
        let g = geometry(4, 16384, 16384);
        let mut picker = Picker::new(g, full(4));
        picker.piece_lost(2);
        assert!(!picker.have().get(2));
        assert!(!picker.is_wanted(2));
        assert!(picker.is_complete());
        assert_eq!(picker.bytes_left(), 0);
        picker.peer_connected(&full(4));
        assert!(picker.pick(1, &full(4), 10).is_empty());
    }

    #[test]
    fn downloads_everything_once_then_completes() {
        let g = geometry(10, 40_000, 1_000);
        let mut picker = Picker::new(g.clone(), Bitfield::new(10));
        picker.peer_connected(&full(10));
        let mut seen = std::collections::HashSet::new();
        loop {
            let blocks = picker.pick(1, &full(10), 7);
            if blocks.is_empty() {
                break;
            }
            for b in blocks {
                assert!(seen.insert((b.piece.get(), b.begin)), "{b:?} twice");
                assert!(g.block(b.piece.get(), b.begin, b.length).is_some());
                if let Received::PieceDone { .. } =
                    picker.block_received(1, b.piece.get(), b.begin, b.length)
                {
                    picker.piece_verified(b.piece.get());
                }
            }
        }
        assert!(picker.is_complete());
        // 40,000-byte pieces are 16384 + 16384 + 7232; the last piece is one 1,000-byte block.
        assert_eq!(seen.len(), 9 * 3 + 1);
    }

    #[test]
    fn rarest_first_after_the_random_start() {
        let g = geometry(8, 16384, 16384);
        let mut have = Bitfield::new(8);
        for i in 0..4 {
            have.set(i);
        }
        let mut picker = Picker::new(g, have);
        let mut common = Bitfield::new(8);
        for i in 4..8 {
            common.set(i);
        }
        picker.peer_connected(&common);
        picker.peer_connected(&common);
        let mut rare = Bitfield::new(8);
        rare.set(6);
        picker.peer_connected(&rare);
        // Piece 5 is held by two peers, piece 6 by three... make 5 the rarest:
        picker.peer_have(4);
        picker.peer_have(7);
        let blocks = picker.pick(9, &common, 1);
        assert_eq!(blocks[0].piece.get(), 5);
    }

    #[test]
    fn end_game_doubles_up_and_names_cancels() {
        let g = geometry(1, 32768, 32768);
        let mut picker = Picker::new(g, Bitfield::new(1));
        let bits = full(1);
        let a = picker.pick(1, &bits, 10);
        assert_eq!(a.len(), 2);
        let b = picker.pick(2, &bits, 10);
        assert_eq!(b.len(), 2, "end-game duplicates");
        assert_eq!(
            picker.block_received(2, 0, 0, 16384),
            Received::Stored { cancel: vec![1] }
        );
        assert_eq!(picker.block_received(1, 0, 0, 16384), Received::Unwanted);
        assert!(matches!(
            picker.block_received(1, 0, 16384, 16384),
            Received::PieceDone { .. }
        ));
    }

    #[test]
    fn choke_frees_requests_and_failed_pieces_come_back() {
        let g = geometry(2, 16384, 16384);
        let mut picker = Picker::new(g, Bitfield::new(2));
        let bits = full(2);
        let first = picker.pick(1, &bits, 1);
        picker.peer_choked(1);
        let again = picker.pick(2, &bits, 1);
        assert_eq!(first, again);
        let b = again[0];
        assert!(matches!(
            picker.block_received(2, b.piece.get(), 0, 16384),
            Received::PieceDone { .. }
        ));
        picker.piece_failed(b.piece.get());
        let more = picker.pick(2, &bits, 2);
        assert_eq!(more.len(), 2);
    }

    #[test]
    fn skipped_files_are_not_picked() {
        let g = Geometry::new(16384, vec![16384, 16384, 100], 3, false).unwrap();
        let mut picker = Picker::new(g, Bitfield::new(3));
        picker.select_files(&[1]);
        let blocks = picker.pick(1, &full(3), 10);
        assert_eq!(
            blocks.iter().map(|b| b.piece.get()).collect::<Vec<_>>(),
            vec![1]
        );
        picker.block_received(1, 1, 0, 16384);
        picker.piece_verified(1);
        assert!(picker.is_complete());
        assert_eq!(picker.bytes_left(), 0);
    }

    #[test]
    fn unrequested_and_malformed_blocks_are_unwanted() {
        let g = geometry(2, 32768, 32768);
        let mut picker = Picker::new(g, Bitfield::new(2));
        assert_eq!(picker.block_received(1, 0, 0, 16384), Received::Unwanted);
        let blocks = picker.pick(1, &full(2), 1);
        let b = blocks[0];
        assert_eq!(
            picker.block_received(1, b.piece.get(), 1, 16384),
            Received::Unwanted
        );
        assert_eq!(
            picker.block_received(1, b.piece.get(), b.begin, 100),
            Received::Unwanted
        );
        assert_eq!(
            picker.block_received(2, b.piece.get(), b.begin, 16384),
            Received::Unwanted
        );
        assert_eq!(picker.block_received(1, 7, 0, 16384), Received::Unwanted);
    }
}
