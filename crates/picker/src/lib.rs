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
//! - Parole ([`Picker::put_on_parole`], libtorrent's term): a peer that sent part of a piece
//!   that failed its hash while others sent the rest gets whole pieces of its own until one
//!   verifies. It opens pieces nobody else joins, joins none, and doubles up on nothing in
//!   end-game; so its next piece fails on it alone (a strike) or verifies. Without it, a peer
//!   that always sent the same bad block into pieces others served (end-game doubles it onto
//!   the last pieces) was never singled out, and the download never ended. A piece of its own
//!   is opened to others again when it chokes us, goes, lets a request fail, or is off parole;
//!   and with nothing of its own to fetch it joins others' pieces, so peers that are all on
//!   parole cannot leave a piece waiting. (A peer that sends one bad block of a piece of its
//!   own and then stalls is not singled out so: the piece fails with blocks from several
//!   again. Striking a stall would strike honest peers that stall, or that reject before
//!   they choke, as pow does.)
//! - Priorities per piece (0 = skip), set from file selections by [`Picker::set_file_priority`].
//! - In order, for a reader that follows the download ([`Picker::prefer_in_order`]): new pieces
//!   come from a window of pieces past the first missing one, lowest first, before rarest first
//!   is asked; so the data arrives roughly front to back and can be read (the loader's MD5)
//!   while it downloads. Pieces outside the window are still picked when the window has none
//!   this peer can send.
//! - Sparing a seed ([`Picker::pick_sparing`]): a seed is asked only for pieces that no peer
//!   lending to us (unchoking us, not a spared seed itself) has, so a swarm's leechers take from each
//!   other what they can and the seed's upload goes to pieces the swarm lacks. Of those, it is
//!   asked only for our [`Share`]: the leechers split them by rendezvous hashing, so two
//!   leechers rarely fetch the same piece from a seed before either can tell the other it has
//!   it. The engine decides when a seed is no longer spared (the lenders too slow to be worth
//!   the wait).
//!
//! Geometry (16 KiB blocks, the short last block, piece lengths that are not a multiple of
//! 16 KiB) comes from `metainfo::Geometry`.
//!
//! Cost: the pieces a pick may open are kept in availability buckets (module `candidates`), so a
//! rarest-first pick walks only until the first piece the peer has; started pieces with free
//! blocks are kept in a set, so a pick does not look at full or finished ones; what makes a
//! peer interesting is one bitfield, so [`Picker::interesting`] is a word-wise AND.

mod candidates;
mod share;

pub use share::{Share, SHARE_BUCKETS};

use candidates::Candidates;
use pow_metainfo::{Block, Geometry, PieceIndex, BLOCK_SIZE};
use pow_wire::Bitfield;
use std::collections::{BTreeSet, HashMap, HashSet};

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
    /// How many of `blocks` are `Free`.
    free: u32,
    /// The peer that opened this piece; it keeps going with it first.
    owner: Option<PeerKey>,
    /// Opened by `owner` on parole: nobody else takes its blocks.
    exclusive: bool,
    /// Blocks (by index) a peer refused (a BEP 6 `reject`): not asked of it again while this
    /// attempt lasts, unless it chokes us in between or [`Picker::forget_refusals`].
    refused: Vec<(usize, PeerKey)>,
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
    /// How many lending peers (see [`Picker::pick_sparing`]) have each piece.
    lent: Vec<u32>,
    priority: Vec<u8>,
    partial: HashMap<u32, Partial>,
    /// Started pieces with at least one free block (the only ones step 1 of a pick looks at).
    open: BTreeSet<u32>,
    /// Pieces a pick may open: wanted, not started, not hashing; by availability.
    candidates: Candidates,
    /// Wanted and not hashing: a peer with any of these is interesting.
    needed: Bitfield,
    /// Pieces whose blocks are all received and that wait for their hash check.
    hashing: Bitfield,
    /// Wanted pieces not yet verified, and their bytes: kept as counters because the engine
    /// asks after every verified piece (a scan would make a download quadratic in pieces).
    missing: u32,
    bytes_left: u64,
    in_order: Option<InOrder>,
    /// Peers on parole (see the module doc).
    parole: HashSet<PeerKey>,
}

/// See [`Picker::prefer_in_order`].
#[derive(Debug, Clone, Copy)]
struct InOrder {
    /// How many pieces from `first_missing` on are picked in order.
    window: u32,
    /// The first wanted piece not yet verified (or the piece count).
    first_missing: u32,
}

impl Picker {
    /// `have` is what is already verified on disk.
    pub fn new(geometry: Geometry, have: Bitfield) -> Picker {
        let count = geometry.piece_count();
        let mut picker = Picker {
            availability: vec![0; count as usize],
            lent: vec![0; count as usize],
            priority: vec![1; count as usize],
            partial: HashMap::new(),
            open: BTreeSet::new(),
            candidates: Candidates::new(count),
            needed: Bitfield::new(count),
            hashing: Bitfield::new(count),
            have,
            geometry,
            missing: 0,
            bytes_left: 0,
            in_order: None,
            parole: HashSet::new(),
        };
        picker.recount();
        picker
    }

    /// Recomputes the counters, candidates and needed pieces after priorities change (rare:
    /// file selection).
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
        self.candidates.clear();
        self.needed = Bitfield::new(self.geometry.piece_count());
        for piece in wanted {
            let i = piece.get();
            if self.hashing.get(i) {
                continue;
            }
            self.needed.set(i);
            if !self.partial.contains_key(&i) {
                self.candidates.insert(i, self.availability[i as usize]);
            }
        }
        if let Some(in_order) = self.in_order.as_mut() {
            in_order.first_missing = 0;
        }
        self.advance_in_order();
    }

    /// New pieces are picked lowest first from the `window` pieces past the first missing one,
    /// before rarest first (which still picks when none of those is free and offered). For a
    /// download whose content is read front to back as it arrives; it costs the swarm some of
    /// rarest first's spread, so only such a download asks for it.
    pub fn prefer_in_order(&mut self, window: u32) {
        self.in_order = Some(InOrder {
            window: window.max(1),
            first_missing: 0,
        });
        self.advance_in_order();
    }

    /// Moves the in-order window past pieces that are verified or not wanted.
    fn advance_in_order(&mut self) {
        let count = self.geometry.piece_count();
        if let Some(mut in_order) = self.in_order {
            while in_order.first_missing < count && !self.is_wanted(in_order.first_missing) {
                in_order.first_missing += 1;
            }
            self.in_order = Some(in_order);
        }
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

    /// Do we want `piece` from peers (wanted, not ours, not being checked)?
    pub fn needs(&self, piece: u32) -> bool {
        self.needed.get(piece)
    }

    /// Would we want anything from a peer with `bits`?
    pub fn interesting(&self, bits: &Bitfield) -> bool {
        bits.intersects(&self.needed)
    }

    fn add_availability(&mut self, piece: u32) {
        if let Some(a) = self.availability.get_mut(piece as usize) {
            let from = *a;
            *a += 1;
            self.candidates.moved(piece, from, from + 1);
        }
    }

    fn sub_availability(&mut self, piece: u32) {
        if let Some(a) = self.availability.get_mut(piece as usize) {
            let from = *a;
            *a = from.saturating_sub(1);
            self.candidates.moved(piece, from, *a);
        }
    }

    pub fn peer_connected(&mut self, bits: &Bitfield) {
        for i in bits.ones() {
            self.add_availability(i);
        }
    }

    pub fn peer_have(&mut self, piece: u32) {
        self.add_availability(piece);
    }

    /// A peer started lending to us (it unchokes us and is not a spared seed) with these pieces.
    pub fn lender_added(&mut self, bits: &Bitfield) {
        for i in bits.ones() {
            if let Some(n) = self.lent.get_mut(i as usize) {
                *n += 1;
            }
        }
    }

    /// A lending peer got `piece`.
    pub fn lender_have(&mut self, piece: u32) {
        if let Some(n) = self.lent.get_mut(piece as usize) {
            *n += 1;
        }
    }

    /// A peer stopped lending (choked us, became a seed, went away); `bits` are the pieces it
    /// was counted with.
    pub fn lender_removed(&mut self, bits: &Bitfield) {
        for i in bits.ones() {
            if let Some(n) = self.lent.get_mut(i as usize) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// A peer no longer has `piece` (a web seed that lost a file or sent it corrupt): it stops
    /// counting for the piece's availability. Its requests stay as they are.
    pub fn peer_lost(&mut self, piece: u32) {
        self.sub_availability(piece);
    }

    /// Forgets a peer: its bits stop counting and its outstanding requests become free.
    pub fn peer_disconnected(&mut self, peer: PeerKey, bits: &Bitfield) {
        for i in bits.ones() {
            self.sub_availability(i);
        }
        self.peer_choked(peer);
        self.parole.remove(&peer);
    }

    /// `peer` sent blocks of a piece that failed its hash, with others: from now on it gets
    /// whole pieces of its own (see the module doc) until [`Picker::end_parole`].
    pub fn put_on_parole(&mut self, peer: PeerKey) {
        self.parole.insert(peer);
    }

    /// A piece `peer` sent alone verified: its other pieces are anyone's again (it is not
    /// on parole to go on with them alone, and nobody else could take them).
    pub fn end_parole(&mut self, peer: PeerKey) {
        if self.parole.remove(&peer) {
            for partial in self.partial.values_mut() {
                if partial.owner == Some(peer) {
                    partial.exclusive = false;
                }
            }
        }
    }

    pub fn on_parole(&self, peer: PeerKey) -> bool {
        self.parole.contains(&peer)
    }

    /// The peer choked us (or went away): every request it had is free again.
    pub fn peer_choked(&mut self, peer: PeerKey) {
        for (&piece, partial) in self.partial.iter_mut() {
            for block in &mut partial.blocks {
                if let BlockState::Requested(peers) = block {
                    peers.retain(|&p| p != peer);
                    if peers.is_empty() {
                        *block = BlockState::Free;
                        partial.free += 1;
                    }
                }
            }
            if partial.free > 0 {
                self.open.insert(piece);
            }
            if partial.owner == Some(peer) {
                partial.owner = None;
                partial.exclusive = false;
            }
            partial.refused.retain(|&(_, p)| p != peer);
        }
    }

    /// Every block refused may be asked again of the peer that refused it (the engine calls
    /// this every choking round: a refusal may have been for a moment only).
    pub fn forget_refusals(&mut self) {
        for partial in self.partial.values_mut() {
            partial.refused.clear();
        }
    }

    /// `peer` refused the block (a BEP 6 `reject` without a choke: it will not send it, say
    /// a seed that can no longer read it). As [`Picker::request_failed`], and the block is
    /// not asked of it again this attempt: given back at once, as its own piece's block it
    /// came straight back to it, request and reject each round trip.
    pub fn request_rejected(&mut self, peer: PeerKey, block: &Block) {
        self.request_failed(peer, block);
        let i = (block.begin / BLOCK_SIZE) as usize;
        if let Some(partial) = self.partial.get_mut(&block.piece.get()) {
            if i < partial.blocks.len() && !partial.refused.contains(&(i, peer)) {
                partial.refused.push((i, peer));
            }
        }
    }

    /// A request we sent was rejected or timed out. A piece of its own that a peer on parole
    /// lets a request of fail is anyone's again: it is not sending it whole.
    pub fn request_failed(&mut self, peer: PeerKey, block: &Block) {
        let piece = block.piece.get();
        if let Some(partial) = self.partial.get_mut(&piece) {
            let Some(slot) = partial.blocks.get_mut((block.begin / BLOCK_SIZE) as usize) else {
                return;
            };
            if let BlockState::Requested(peers) = slot {
                if partial.exclusive && peers.contains(&peer) {
                    partial.exclusive = false;
                }
                peers.retain(|&p| p != peer);
                if peers.is_empty() {
                    *slot = BlockState::Free;
                    partial.free += 1;
                    self.open.insert(piece);
                }
            }
        }
    }

    /// Up to `max` blocks to request from `peer`, which has `bits`.
    pub fn pick(&mut self, peer: PeerKey, bits: &Bitfield, max: usize) -> Vec<Block> {
        self.pick_from(peer, bits, max, None)
    }

    /// [`Picker::pick`] for a seed we spare: the pieces it opened, then only pieces that no
    /// lending peer has and that are in our `share`; in end-game it doubles up only on pieces
    /// no lending peer has.
    pub fn pick_sparing(
        &mut self,
        peer: PeerKey,
        bits: &Bitfield,
        max: usize,
        share: &Share,
    ) -> Vec<Block> {
        self.pick_from(peer, bits, max, Some(share))
    }

    fn pick_from(
        &mut self,
        peer: PeerKey,
        bits: &Bitfield,
        max: usize,
        spare: Option<&Share>,
    ) -> Vec<Block> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        let on_parole = self.parole.contains(&peer);
        // 1. Pieces this peer opened, then 2. any other started piece it has (on parole, only
        // its own; nobody joins a piece of a peer on parole).
        let mut started: Vec<u32> = self
            .open
            .iter()
            .copied()
            .filter(|&i| {
                let partial = &self.partial[&i];
                let own = partial.owner == Some(peer);
                bits.get(i)
                    && (if on_parole {
                        own && partial.exclusive
                    } else {
                        !partial.exclusive
                    })
                    && (spare.is_none() || self.lent[i as usize] == 0 || own)
            })
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
            let Some(piece) = self.choose_new_piece(bits, spare) else {
                break;
            };
            self.candidates
                .remove(piece, self.availability[piece as usize]);
            let blocks = self
                .geometry
                .blocks_in_piece(self.geometry.piece(piece).expect("valid"));
            self.partial.insert(
                piece,
                Partial {
                    blocks: vec![BlockState::Free; blocks as usize],
                    received: 0,
                    free: blocks,
                    owner: Some(peer),
                    exclusive: on_parole,
                    refused: Vec::new(),
                },
            );
            self.open.insert(piece);
            self.take_free(peer, piece, max, &mut out);
        }
        // 2'. On parole with nothing of its own to fetch: the others' started pieces, rather
        // than leave one waiting on peers that are all on parole.
        if on_parole && out.is_empty() {
            let others: Vec<u32> = self
                .open
                .iter()
                .copied()
                .filter(|&i| {
                    bits.get(i)
                        && !self.partial[&i].exclusive
                        && (spare.is_none() || self.lent[i as usize] == 0)
                })
                .collect();
            for piece in others {
                self.take_free(peer, piece, max, &mut out);
                if out.len() >= max {
                    return out;
                }
            }
        }
        // 4. End-game: nothing free is left anywhere this peer could serve; double up on
        // blocks in flight with other peers.
        if out.len() < max && !on_parole && self.all_requested() {
            let mut in_flight: Vec<(u32, usize)> = Vec::new();
            for (&piece, partial) in &self.partial {
                // A spared seed doubles only what no lender could send.
                if !bits.get(piece)
                    || partial.exclusive
                    || (spare.is_some() && self.lent[piece as usize] > 0)
                {
                    continue;
                }
                for (i, block) in partial.blocks.iter().enumerate() {
                    if let BlockState::Requested(peers) = block {
                        if !peers.contains(&peer)
                            && peers.len() < 3
                            && !partial.refused.contains(&(i, peer))
                        {
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
                if out.len() + taken.len() >= max || partial.free == 0 {
                    break;
                }
                if *block == BlockState::Free && !partial.refused.contains(&(i, peer)) {
                    *block = BlockState::Requested(vec![peer]);
                    partial.free -= 1;
                    taken.push(i);
                }
            }
            if partial.free == 0 {
                self.open.remove(&piece);
            }
        }
        for i in taken {
            out.push(self.block(piece, i));
        }
    }

    /// True when no wanted piece has a free block and no unstarted wanted piece remains.
    fn all_requested(&self) -> bool {
        self.open.is_empty() && self.candidates.is_empty()
    }

    fn choose_new_piece(&self, bits: &Bitfield, spare: Option<&Share>) -> Option<u32> {
        let mut rng = rand::rng();
        let offered = |p: u32| {
            bits.get(p) && spare.is_none_or(|share| self.lent[p as usize] == 0 && share.owns(p))
        };
        if let Some(InOrder {
            window,
            first_missing,
        }) = self.in_order
        {
            let end = first_missing
                .saturating_add(window)
                .min(self.geometry.piece_count());
            let next = (first_missing..end).find(|&p| self.candidates.contains(p) && offered(p));
            if next.is_some() {
                return next;
            }
        }
        if self.have.count() < RANDOM_FIRST_PIECES {
            self.candidates.random(offered, &mut rng)
        } else {
            self.candidates.rarest(offered, &mut rng)
        }
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
            self.forget_partial(piece);
            self.hashing.set(piece);
            self.needed.clear(piece);
            Received::PieceDone { cancel }
        } else {
            Received::Stored { cancel }
        }
    }

    fn forget_partial(&mut self, piece: u32) {
        if self.partial.remove(&piece).is_some() {
            self.open.remove(&piece);
        }
    }

    /// The piece's hash matched: it is ours.
    pub fn piece_verified(&mut self, piece: u32) {
        self.hashing.clear(piece);
        self.forget_partial(piece);
        if self.is_wanted(piece) {
            self.missing -= 1;
            let index = self.geometry.piece(piece).expect("wanted pieces exist");
            self.bytes_left -= u64::from(self.geometry.piece_size(index));
        }
        self.have.set(piece);
        if let Some(&a) = self.availability.get(piece as usize) {
            self.candidates.remove(piece, a);
        }
        self.needed.clear(piece);
        if self.in_order.is_some_and(|o| o.first_missing == piece) {
            self.advance_in_order();
        }
    }

    /// A piece we had can no longer be read (its file was truncated or removed): not ours any
    /// more, and not wanted either, so a seed never turns into a leecher for data someone
    /// removed on purpose. The counters do not change: it was neither missing nor left.
    pub fn piece_lost(&mut self, piece: u32) {
        if self.have.get(piece) {
            self.have.clear(piece);
            self.priority[piece as usize] = 0;
            self.candidates
                .remove(piece, self.availability[piece as usize]);
            self.needed.clear(piece);
        }
    }

    /// The piece's hash did not match: every block is wanted again.
    pub fn piece_failed(&mut self, piece: u32) {
        self.hashing.clear(piece);
        self.forget_partial(piece);
        if self.is_wanted(piece) {
            self.needed.set(piece);
            if !self.candidates.contains(piece) {
                self.candidates
                    .insert(piece, self.availability[piece as usize]);
            }
        }
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

    /// Checks every derived structure against the plain state (tests).
    #[cfg(test)]
    fn check_invariants(&self) {
        self.candidates.check(&self.availability);
        if let Some(in_order) = self.in_order {
            let count = self.geometry.piece_count();
            let first = (0..count).find(|&i| self.is_wanted(i)).unwrap_or(count);
            assert_eq!(in_order.first_missing, first, "in-order window start");
        }
        for i in 0..self.geometry.piece_count() {
            let candidate =
                self.is_wanted(i) && !self.partial.contains_key(&i) && !self.hashing.get(i);
            assert_eq!(self.candidates.contains(i), candidate, "candidate {i}");
            assert_eq!(
                self.needed.get(i),
                self.is_wanted(i) && !self.hashing.get(i),
                "needed {i}"
            );
        }
        for (&piece, partial) in &self.partial {
            let free = partial
                .blocks
                .iter()
                .filter(|b| **b == BlockState::Free)
                .count() as u32;
            assert_eq!(partial.free, free, "free blocks of {piece}");
            assert!(
                !partial.exclusive || partial.owner.is_some(),
                "exclusive {piece}"
            );
            assert_eq!(self.open.contains(&piece), free > 0, "open {piece}");
        }
        assert!(self.open.iter().all(|p| self.partial.contains_key(p)));
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
    fn a_spared_seed_is_asked_only_for_pieces_no_lender_has() {
        let g = geometry(8, 16384, 16384);
        let mut picker = Picker::new(g, Bitfield::new(8));
        let (seed, lender) = (1, 2);
        picker.peer_connected(&full(8));
        let mut lent = Bitfield::new(8);
        for i in [0, 1, 2, 3, 4] {
            lent.set(i);
        }
        picker.peer_connected(&lent);
        picker.lender_added(&lent);
        picker.lender_have(5);
        let mut asked: Vec<u32> = picker
            .pick_sparing(seed, &full(8), 10, &Share::all())
            .iter()
            .map(|b| b.piece.get())
            .collect();
        asked.sort_unstable();
        assert_eq!(asked, vec![6, 7], "only what the lender lacks");
        // Asking the lender for its pieces leaves the spared seed nothing to be asked for.
        let from_lender = picker.pick(lender, &lent, 1);
        assert_eq!(from_lender.len(), 1);
        assert!(picker
            .pick_sparing(seed, &full(8), 10, &Share::all())
            .is_empty());
        // Once it stops lending (it choked us), the seed is asked for the rest.
        picker.peer_choked(lender);
        let mut lent_then = lent.clone();
        lent_then.set(5);
        picker.lender_removed(&lent_then);
        assert_eq!(
            picker.pick_sparing(seed, &full(8), 10, &Share::all()).len(),
            6
        );
    }

    #[test]
    fn a_spared_seed_is_asked_only_for_our_share() {
        let g = geometry(12, 16384, 16384);
        let mut picker = Picker::new(g, Bitfield::new(12));
        let seed = 1;
        picker.peer_connected(&full(12));
        let share = Share::among(b"us", &[&b"them"[..], &b"others"[..]]);
        let ours: Vec<u32> = (0..12).filter(|&p| share.owns(p)).collect();
        assert!(!ours.is_empty() && ours.len() < 12, "{ours:?}");
        let mut asked: Vec<u32> = picker
            .pick_sparing(seed, &full(12), 100, &share)
            .iter()
            .map(|b| b.piece.get())
            .collect();
        asked.sort_unstable();
        assert_eq!(asked, ours);
        assert!(picker.pick_sparing(seed, &full(12), 100, &share).is_empty());
        // A plain pick (the seed no longer spared) takes the others' shares too.
        assert_eq!(picker.pick(seed, &full(12), 100).len(), 12 - ours.len());
    }

    #[test]
    fn a_spared_seed_doubles_up_in_end_game_only_on_what_no_lender_has() {
        let g = geometry(4, 16384, 16384);
        let mut picker = Picker::new(g, Bitfield::new(4));
        let (seed, lender, other) = (1, 2, 3);
        picker.peer_connected(&full(4));
        let mut lent = Bitfield::new(4);
        lent.set(0);
        lent.set(1);
        picker.peer_connected(&lent);
        picker.lender_added(&lent);
        // Everything is in flight: pieces 0 and 1 with the lender, 2 and 3 with another peer.
        assert_eq!(picker.pick(lender, &lent, 2).len(), 2);
        let mut rest = Bitfield::new(4);
        rest.set(2);
        rest.set(3);
        picker.peer_connected(&rest);
        assert_eq!(picker.pick(other, &rest, 2).len(), 2);
        let mut doubled: Vec<u32> = picker
            .pick_sparing(seed, &full(4), 10, &Share::all())
            .iter()
            .map(|b| b.piece.get())
            .collect();
        doubled.sort_unstable();
        assert_eq!(doubled, vec![2, 3], "not the lender's pieces");
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
    fn in_order_window_picks_front_to_back_then_falls_back() {
        let g = geometry(100, 16384, 16384);
        let mut picker = Picker::new(g, Bitfield::new(100));
        picker.prefer_in_order(8);
        let all = full(100);
        picker.peer_connected(&all);
        let firsts: Vec<u32> = picker
            .pick(1, &all, 3)
            .iter()
            .map(|b| b.piece.get())
            .collect();
        assert_eq!(firsts, [0, 1, 2], "lowest first, no random start");
        // A peer without the window's next pieces gets the lowest it has in the window...
        let mut some = Bitfield::new(100);
        some.set(5);
        some.set(50);
        picker.peer_connected(&some);
        assert_eq!(picker.pick(2, &some, 1)[0].piece.get(), 5);
        // ...and one with nothing in the window still gets work (rarest first).
        let mut far = Bitfield::new(100);
        far.set(60);
        picker.peer_connected(&far);
        assert_eq!(picker.pick(3, &far, 1)[0].piece.get(), 60);
        // The window slides as its first pieces are verified.
        for piece in 0..3 {
            assert!(matches!(
                picker.block_received(1, piece, 0, 16384),
                Received::PieceDone { .. }
            ));
            picker.piece_verified(piece);
        }
        let next: Vec<u32> = picker
            .pick(1, &all, 7)
            .iter()
            .map(|b| b.piece.get())
            .collect();
        assert_eq!(next, [3, 4, 6, 7, 8, 9, 10], "window 3..11, 5 taken");
        // Once the window is all taken, picks leave it rather than stall.
        let outside = picker.pick(1, &all, 2);
        assert!(outside.iter().all(|b| b.piece.get() >= 11), "{outside:?}");
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

    /// A peer on parole opens pieces nobody joins, joins none, and doubles up on nothing in
    /// end-game; its piece opens to others once it lets a request fail or chokes us.
    #[test]
    fn a_peer_on_parole_gets_whole_pieces_of_its_own() {
        let g = geometry(2, 4 * 16384, 4 * 16384);
        let mut picker = Picker::new(g, Bitfield::new(2));
        let bits = full(2);
        picker.peer_connected(&bits);
        picker.peer_connected(&bits);
        picker.put_on_parole(1);
        let first = picker.pick(1, &bits, 2);
        assert_eq!(first.len(), 2);
        let own = first[0].piece.get();
        assert!(first.iter().all(|b| b.piece.get() == own));
        // The other peer opens the other piece, not the free half of the parole peer's.
        let other = picker.pick(2, &bits, 8);
        assert_eq!(other.len(), 4);
        assert!(other.iter().all(|b| b.piece.get() != own), "{other:?}");
        picker.check_invariants();
        // Nothing else is free: no end-game for either on the other's piece.
        assert!(picker.pick(2, &bits, 8).is_empty());
        let rest = picker.pick(1, &bits, 8);
        assert_eq!(rest.len(), 2, "the rest of its own piece, and no doubling");
        assert!(rest.iter().all(|b| b.piece.get() == own));
        assert!(picker.pick(1, &bits, 8).is_empty());
        assert!(
            picker.pick(2, &bits, 8).is_empty(),
            "its blocks are not doubled"
        );
        // It lets one request fail (a reject, a snub): the piece is anyone's again.
        picker.request_failed(1, &rest[0]);
        let taken = picker.pick(2, &bits, 8);
        assert_eq!(taken[0], rest[0]);
        assert!(
            taken.contains(&rest[1]),
            "and end-game doubles on it: {taken:?}"
        );
        picker.check_invariants();
        // Once off parole, it doubles up in end-game like anyone.
        picker.end_parole(1);
        assert!(!picker.pick(1, &bits, 8).is_empty());
        picker.check_invariants();
    }

    /// Parole ends with a piece it sent alone verified, while it has another piece of its own
    /// started: that piece's free blocks are anyone's, its own too (nobody could take them).
    #[test]
    fn a_piece_of_its_own_is_anyones_once_its_parole_ends() {
        let g = geometry(2, 4 * 16384, 4 * 16384);
        let mut picker = Picker::new(g, Bitfield::new(2));
        let bits = full(2);
        picker.peer_connected(&bits);
        picker.put_on_parole(1);
        let first = picker.pick(1, &bits, 6);
        assert_eq!(first.len(), 6, "a whole piece and half of another");
        let done = first[0].piece.get();
        for block in first.iter().filter(|b| b.piece.get() == done) {
            picker.block_received(1, done, block.begin, block.length);
        }
        picker.piece_verified(done);
        picker.end_parole(1);
        let asked: Vec<u32> = first
            .iter()
            .filter(|b| b.piece.get() != done)
            .map(|b| b.begin)
            .collect();
        let free_half = |taken: &[Block]| {
            taken
                .iter()
                .filter(|b| b.piece.get() != done && !asked.contains(&b.begin))
                .count()
        };
        // (It also doubles up on the half in flight: end-game.)
        let taken = picker.pick(2, &bits, 8);
        assert_eq!(free_half(&taken), 2, "the other peer takes the free half");
        picker.peer_choked(2);
        let taken = picker.pick(1, &bits, 8);
        assert_eq!(free_half(&taken), 2, "and so does its owner");
        picker.check_invariants();
    }

    /// With nothing of its own to fetch, a peer on parole joins a piece another peer started
    /// rather than leave it waiting (all the others may be on parole too).
    #[test]
    fn a_peer_on_parole_with_nothing_of_its_own_joins_others_pieces() {
        let g = geometry(1, 4 * 16384, 4 * 16384);
        let mut picker = Picker::new(g, Bitfield::new(1));
        let bits = full(1);
        picker.peer_connected(&bits);
        assert_eq!(picker.pick(2, &bits, 1).len(), 1);
        picker.put_on_parole(1);
        assert_eq!(picker.pick(1, &bits, 8).len(), 3);
        picker.check_invariants();
    }

    #[test]
    fn a_piece_of_a_peer_on_parole_opens_to_others_when_it_chokes_us() {
        let g = geometry(1, 4 * 16384, 4 * 16384);
        let mut picker = Picker::new(g, Bitfield::new(1));
        let bits = full(1);
        picker.peer_connected(&bits);
        picker.put_on_parole(1);
        assert_eq!(picker.pick(1, &bits, 2).len(), 2);
        assert!(picker.pick(2, &bits, 8).is_empty());
        picker.peer_choked(1);
        assert_eq!(picker.pick(2, &bits, 8).len(), 4);
        picker.check_invariants();
        picker.peer_disconnected(1, &bits);
        assert!(!picker.on_parole(1));
    }

    /// A block a peer rejected goes to others, not back to it (its own piece's blocks came
    /// first for it, so it was asked again at once, each round trip), until it chokes us.
    #[test]
    fn a_rejected_block_is_not_asked_of_the_same_peer_again() {
        let g = geometry(2, 2 * 16384, 2 * 16384);
        let mut picker = Picker::new(g, Bitfield::new(2));
        let bits = full(2);
        picker.peer_connected(&bits);
        picker.peer_connected(&bits);
        let first = picker.pick(1, &bits, 1);
        picker.request_rejected(1, &first[0]);
        let next = picker.pick(1, &bits, 1);
        assert_ne!(next, first, "not the rejected block again");
        assert_eq!(next[0].piece, first[0].piece, "its piece's other block");
        picker.check_invariants();
        // Nor in end-game, once everything else is asked for.
        let rest = picker.pick(1, &bits, 8);
        assert!(!rest.contains(&first[0]), "{rest:?}");
        assert!(picker.pick(1, &bits, 8).is_empty());
        // Another peer takes it.
        assert!(picker.pick(2, &bits, 1).contains(&first[0]));
        // After a choke, it may be asked again.
        picker.peer_choked(2);
        picker.peer_choked(1);
        assert!(picker.pick(1, &bits, 8).contains(&first[0]));
        picker.check_invariants();
        // And after the refusals are forgotten (every choking round).
        picker.request_rejected(1, &first[0]);
        assert!(!picker.pick(1, &bits, 8).contains(&first[0]));
        picker.forget_refusals();
        assert!(picker.pick(1, &bits, 8).contains(&first[0]));
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

    #[test]
    fn a_piece_only_the_peer_has_uncounted_is_still_picked() {
        // Availability 0 (no peer counted) is looked at last, but it is looked at.
        let g = geometry(8, 16384, 16384);
        let mut have = Bitfield::new(8);
        for i in 0..4 {
            have.set(i);
        }
        let mut picker = Picker::new(g, have);
        let mut bits = Bitfield::new(8);
        bits.set(6);
        let blocks = picker.pick(1, &bits, 1);
        assert_eq!(blocks[0].piece.get(), 6);
        picker.check_invariants();
    }

    #[test]
    fn rarest_ties_are_broken_at_random() {
        let g = geometry(64, 16384, 16384);
        let mut have = Bitfield::new(64);
        for i in 0..4 {
            have.set(i);
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut picker = Picker::new(g.clone(), have.clone());
            picker.peer_connected(&full(64));
            seen.insert(picker.pick(1, &full(64), 1)[0].piece.get());
        }
        assert!(seen.len() > 10, "only {seen:?}");
    }

    #[test]
    fn interesting_follows_what_we_still_need() {
        let g = geometry(3, 16384, 16384);
        let mut picker = Picker::new(g, Bitfield::new(3));
        let mut bits = Bitfield::new(3);
        assert!(!picker.interesting(&bits));
        bits.set(1);
        assert!(picker.interesting(&bits));
        let b = picker.pick(1, &bits, 1)[0];
        assert!(picker.interesting(&bits), "started is still needed");
        picker.block_received(1, b.piece.get(), 0, 16384);
        assert!(!picker.interesting(&bits), "hashing is not");
        picker.piece_failed(1);
        assert!(picker.interesting(&bits), "failed is needed again");
        picker.set_piece_priority(1, 0);
        assert!(!picker.interesting(&bits), "skipped is not");
        picker.check_invariants();
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, HashSet};

        #[derive(Debug, Clone)]
        enum Op {
            Connect(u64, u64),
            Disconnect(u64),
            Have(u64, u32),
            Lost(u64, u32),
            Pick(u64, usize),
            Receive(u64, usize, bool),
            Choke(u64),
            Fail(u64, usize),
            Priority(u32, u8),
            PieceLost(u32),
        }

        const PIECES: u32 = 24;

        fn op() -> impl Strategy<Value = Op> {
            let peer = 0u64..5;
            let piece = 0u32..PIECES;
            prop_oneof![
                (peer.clone(), any::<u64>()).prop_map(|(k, s)| Op::Connect(k, s)),
                peer.clone().prop_map(Op::Disconnect),
                (peer.clone(), piece.clone()).prop_map(|(k, p)| Op::Have(k, p)),
                (peer.clone(), piece.clone()).prop_map(|(k, p)| Op::Lost(k, p)),
                (peer.clone(), 1usize..8).prop_map(|(k, n)| Op::Pick(k, n)),
                (peer.clone(), 0usize..8).prop_map(|(k, n)| Op::Pick(k, n)),
                (peer.clone(), any::<usize>(), any::<bool>())
                    .prop_map(|(k, i, ok)| Op::Receive(k, i, ok)),
                (peer.clone(), any::<usize>(), any::<bool>())
                    .prop_map(|(k, i, ok)| Op::Receive(k, i, ok)),
                peer.clone().prop_map(Op::Choke),
                (peer.clone(), any::<usize>()).prop_map(|(k, i)| Op::Fail(k, i)),
                (piece.clone(), 0u8..3).prop_map(|(p, v)| Op::Priority(p, v)),
                piece.prop_map(Op::PieceLost),
            ]
        }

        fn random_bits(seed: u64) -> Bitfield {
            let mut bits = Bitfield::new(PIECES);
            let mut x = seed | 1;
            for i in 0..PIECES {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if !x.is_multiple_of(3) {
                    bits.set(i);
                }
            }
            bits
        }

        /// Slow answers straight from the plain state.
        fn candidate(p: &Picker, i: u32) -> bool {
            p.is_wanted(i) && !p.partial.contains_key(&i) && !p.hashing.get(i)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn picks_stay_correct_against_a_plain_scan(
                have_seed in any::<u64>(),
                ops in prop::collection::vec(op(), 1..120),
            ) {
                // 24 pieces of 40,000 bytes (3 blocks), the last one a single short block.
                let g = geometry(PIECES, 40_000, 1_000);
                let mut have = Bitfield::new(PIECES);
                for i in 0..PIECES {
                    if (have_seed >> i) & 1 == 1 && (have_seed >> 40) & 1 == 1 {
                        have.set(i);
                    }
                }
                let mut picker = Picker::new(g.clone(), have);
                let in_order = ((have_seed >> 50) & 1 == 1).then(|| 1 + (have_seed >> 51) as u32 % 8);
                if let Some(window) = in_order {
                    picker.prefer_in_order(window);
                }
                let mut peers: BTreeMap<u64, Bitfield> = BTreeMap::new();
                // What each peer was asked for and has not answered (a superset: the
                // picker forgets requests on choke and failure).
                let mut asked: BTreeMap<u64, Vec<Block>> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Connect(k, seed) => {
                            if let Some(old) = peers.remove(&k) {
                                picker.peer_disconnected(k, &old);
                            }
                            let bits = random_bits(seed);
                            picker.peer_connected(&bits);
                            peers.insert(k, bits);
                        }
                        Op::Disconnect(k) => {
                            if let Some(old) = peers.remove(&k) {
                                picker.peer_disconnected(k, &old);
                                asked.remove(&k);
                            }
                        }
                        Op::Have(k, i) => {
                            if let Some(bits) = peers.get_mut(&k) {
                                if !bits.get(i) {
                                    bits.set(i);
                                    picker.peer_have(i);
                                }
                            }
                        }
                        Op::Lost(k, i) => {
                            if let Some(bits) = peers.get_mut(&k) {
                                if bits.get(i) {
                                    bits.clear(i);
                                    picker.peer_lost(i);
                                }
                            }
                        }
                        Op::Pick(k, max) => {
                            let Some(bits) = peers.get(&k).cloned() else { continue };
                            let random_phase = picker.have().count() < RANDOM_FIRST_PIECES;
                            let before: Vec<u32> =
                                (0..PIECES).filter(|&i| candidate(&picker, i)).collect();
                            let started: HashSet<u32> = picker.partial.keys().copied().collect();
                            let blocks = picker.pick(k, &bits, max);
                            prop_assert!(blocks.len() <= max);
                            let mut opened = Vec::new();
                            for b in &blocks {
                                let i = b.piece.get();
                                prop_assert!(bits.get(i), "peer {} lacks {}", k, i);
                                prop_assert!(!picker.have().get(i), "we have {}", i);
                                prop_assert!(g.block(i, b.begin, b.length).is_some());
                                if !started.contains(&i) && !opened.contains(&i) {
                                    prop_assert!(before.contains(&i), "{} was no candidate", i);
                                    prop_assert!(picker.priority[i as usize] > 0, "{} not selected", i);
                                    opened.push(i);
                                }
                            }
                            let mut unique: Vec<_> = blocks.iter().map(|b| (b.piece.get(), b.begin)).collect();
                            unique.sort_unstable();
                            unique.dedup();
                            prop_assert_eq!(unique.len(), blocks.len(), "a block twice in one pick");
                            if let Some(window) = in_order {
                                // Opened pieces: the window's candidates this peer has, lowest
                                // first, and only once those are all opened, any others.
                                let start = picker.in_order.unwrap().first_missing;
                                let in_window: Vec<u32> = before
                                    .iter()
                                    .copied()
                                    .filter(|&i| bits.get(i) && i >= start && i < start + window)
                                    .collect();
                                let from_window = opened.iter().take_while(|i| in_window.contains(i)).count();
                                prop_assert_eq!(&opened[..from_window], &in_window[..from_window]);
                                if from_window < opened.len() {
                                    prop_assert_eq!(from_window, in_window.len(), "left the window early");
                                }
                            } else if !random_phase {
                                // Each opened piece is no more available than any candidate
                                // the peer has that is still unopened.
                                let rest = before
                                    .iter()
                                    .filter(|&&i| bits.get(i) && candidate(&picker, i))
                                    .map(|&i| picker.availability[i as usize])
                                    .min();
                                for &i in &opened {
                                    if let Some(rest) = rest {
                                        prop_assert!(picker.availability[i as usize] <= rest);
                                    }
                                }
                            }
                            // A pick stops short only when it has nothing more to give.
                            if blocks.len() < max {
                                prop_assert!(!before.iter().any(|&i| bits.get(i) && candidate(&picker, i)));
                            }
                            asked.entry(k).or_default().extend(blocks);
                        }
                        Op::Receive(k, n, ok) => {
                            let Some(list) = asked.get_mut(&k) else { continue };
                            if list.is_empty() {
                                continue;
                            }
                            let b = list.remove(n % list.len());
                            let i = b.piece.get();
                            if let Received::PieceDone { .. } =
                                picker.block_received(k, i, b.begin, b.length)
                            {
                                if ok {
                                    picker.piece_verified(i);
                                } else {
                                    picker.piece_failed(i);
                                }
                            }
                        }
                        Op::Choke(k) => {
                            picker.peer_choked(k);
                            asked.remove(&k);
                        }
                        Op::Fail(k, n) => {
                            let Some(list) = asked.get_mut(&k) else { continue };
                            if list.is_empty() {
                                continue;
                            }
                            let b = list.remove(n % list.len());
                            picker.request_failed(k, &b);
                        }
                        Op::Priority(i, v) => picker.set_piece_priority(i, v),
                        Op::PieceLost(i) => picker.piece_lost(i),
                    }
                    picker.check_invariants();
                    for bits in peers.values() {
                        let slow = bits.ones().any(|i| picker.is_wanted(i) && !picker.hashing.get(i));
                        prop_assert_eq!(picker.interesting(bits), slow);
                    }
                    let slow_all_requested = !picker.partial.values().any(|p| p.blocks.contains(&BlockState::Free))
                        && !(0..PIECES).any(|i| candidate(&picker, i));
                    prop_assert_eq!(picker.all_requested(), slow_all_requested);
                }
                // Whatever happened, a seed that joins now gets every wanted piece done.
                for (k, bits) in std::mem::take(&mut peers) {
                    picker.peer_disconnected(k, &bits);
                }
                picker.peer_connected(&full(PIECES));
                for round in 0.. {
                    prop_assert!(round < 1000, "no progress");
                    let blocks = picker.pick(99, &full(PIECES), 5);
                    if blocks.is_empty() {
                        break;
                    }
                    for b in blocks {
                        if let Received::PieceDone { .. } =
                            picker.block_received(99, b.piece.get(), b.begin, b.length)
                        {
                            picker.piece_verified(b.piece.get());
                        }
                    }
                }
                picker.check_invariants();
                prop_assert!(picker.is_complete(), "{} missing", picker.missing());
            }
        }
    }
}
