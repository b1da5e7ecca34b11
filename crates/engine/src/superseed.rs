//! Super-seeding, in the manner of BEP 16: a seed that wants its first copy of the data spread
//! by the leechers instead of uploading it to each of them.
//!
//! Each peer is told (by `have`) of only a few pieces at a time ([`TOLD_BYTES_PER_PEER`]), chosen
//! among those no connected peer has and nobody else was told of. A piece told to peer R stays
//! R's until it is seen at another peer (a `have` from someone else), or until no other peer
//! lacks it; then R is told of a new one. So a leecher gets more from us only by passing on
//! what it got, and each piece leaves the seed about once while leechers stay connected.
//!
//! Fallback: a peer that lacks pieces, has none of ours left to fetch, and has announced no
//! piece for [`STARVED_AFTER`] is told of a share of what it lacks even if others have it
//! (its holders may be choking it, or unreachable from it: some clients never dial out on
//! loopback); the share doubles while that goes on.
//!
//! Costs: a refill scans the torrent's pieces once the never-told ones run out, so it is meant
//! for the first seeding of a dataset (as `super_seeding` is in libtorrent), not for a torrent
//! of millions of pieces.

use crate::PeerEntry;
use pow_picker::PeerKey;
use pow_wire::Bitfield;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bytes of pieces a peer is told of and may fetch from us before one of them is seen
/// elsewhere (at least [`MIN_TOLD_PER_PEER`] pieces). Less starves the swarm: leechers pick
/// rarest first among many pieces, so a given one is passed on only after a while. 8 pow
/// leechers of 256 MiB (`benches/swarm8.sh`) took 13-14 s with 4 MiB, 4-6 s with 8 MiB and
/// 3.1 s with 16 or 32 MiB, the seed uploading 1.00-1.06x the payload in every case.
const TOLD_BYTES_PER_PEER: u64 = 16 << 20;
const MIN_TOLD_PER_PEER: usize = 4;
/// A peer that has announced no piece for this long, with nothing of ours left to fetch, is
/// told of one more piece.
pub(crate) const STARVED_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct SuperSeed {
    /// Pieces never told to anyone, shuffled so peers spread different parts.
    fresh: Vec<u32>,
    /// Per piece: peers told of it that do not have it yet.
    pending: Vec<u16>,
    /// Told pieces a peer may have outstanding (see [`TOLD_BYTES_PER_PEER`]).
    per_peer: usize,
    peers: HashMap<PeerKey, Told>,
}

struct Told {
    /// Every piece this peer was told we have.
    told: Bitfield,
    /// Told pieces not yet seen at another peer.
    outstanding: Vec<u32>,
    last_have: Instant,
    /// Starving feeds in a row with none of its told pieces seen elsewhere since: each feed
    /// is twice the last, so a peer that cannot pass pieces on soon gets them at full speed.
    starved: u32,
}

/// A `have` to send: tell `peer` that we have `piece`.
pub(crate) type Reveal = (PeerKey, u32);

impl SuperSeed {
    pub fn new(pieces: u32, piece_length: u64) -> SuperSeed {
        let mut fresh: Vec<u32> = (0..pieces).collect();
        fresh.shuffle(&mut rand::rng());
        SuperSeed {
            fresh,
            pending: vec![0; pieces as usize],
            per_peer: (TOLD_BYTES_PER_PEER / piece_length.max(1)).max(MIN_TOLD_PER_PEER as u64)
                as usize,
            peers: HashMap::new(),
        }
    }

    /// A new connection: it is told nothing until we know what it has ([`Self::refill`]).
    pub fn connected(&mut self, key: PeerKey, pieces: u32) {
        self.peers.insert(
            key,
            Told {
                told: Bitfield::new(pieces),
                outstanding: Vec::new(),
                last_have: Instant::now(),
                starved: 0,
            },
        );
    }

    /// `key` left (it is no longer in `peers`). Pieces others fetched only from it are fresh
    /// again; pieces that now no remaining peer lacks are settled.
    pub fn disconnected(
        &mut self,
        key: PeerKey,
        bits: &Bitfield,
        peers: &HashMap<PeerKey, PeerEntry>,
    ) -> Vec<Reveal> {
        if let Some(told) = self.peers.remove(&key) {
            for piece in told.outstanding {
                if !bits.get(piece) {
                    self.unpend(piece);
                }
            }
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        let mut reveals = Vec::new();
        for key in keys {
            if self.settle(key, peers) {
                reveals.extend(self.refill(key, peers));
            }
        }
        reveals
    }

    /// `from` announced `piece` (its bits already say so). Where it was told to others, it
    /// is now seen elsewhere: their slot is free.
    pub fn have(
        &mut self,
        from: PeerKey,
        piece: u32,
        peers: &HashMap<PeerKey, PeerEntry>,
    ) -> Vec<Reveal> {
        let mut freed = Vec::new();
        if let Some(told) = self.peers.get_mut(&from) {
            told.last_have = Instant::now();
            if told.outstanding.contains(&piece) {
                self.pending[piece as usize] = self.pending[piece as usize].saturating_sub(1);
            }
        }
        if self.settle(from, peers) {
            freed.push(from);
        }
        for (&key, told) in &mut self.peers {
            if key == from || !told.outstanding.contains(&piece) {
                continue;
            }
            told.outstanding.retain(|&p| p != piece);
            told.starved = 0;
            if peers.get(&key).is_some_and(|e| !e.bits.get(piece)) {
                let pending = &mut self.pending[piece as usize];
                *pending = pending.saturating_sub(1);
            }
            freed.push(key);
        }
        let mut reveals = Vec::new();
        for key in freed {
            reveals.extend(self.refill(key, peers));
        }
        reveals
    }

    /// Drops from `key`'s outstanding pieces those it has that no other connected peer
    /// lacks: nobody is left to pass them to. Returns whether any was dropped.
    fn settle(&mut self, key: PeerKey, peers: &HashMap<PeerKey, PeerEntry>) -> bool {
        let (Some(told), Some(bits)) = (self.peers.get_mut(&key), peers.get(&key).map(|e| &e.bits))
        else {
            return false;
        };
        let before = told.outstanding.len();
        told.outstanding
            .retain(|&p| !bits.get(p) || peers.iter().any(|(k, e)| *k != key && !e.bits.get(p)));
        told.outstanding.len() != before
    }

    /// Tells `key` of new pieces until it has its share outstanding
    /// ([`TOLD_BYTES_PER_PEER`]): never-told pieces it lacks first, then pieces no connected
    /// peer has and no one else was told of.
    pub fn refill(&mut self, key: PeerKey, peers: &HashMap<PeerKey, PeerEntry>) -> Vec<Reveal> {
        let Some(bits) = peers.get(&key).map(|e| &e.bits) else {
            return Vec::new();
        };
        let holders = |piece: u32| peers.values().filter(|e| e.bits.get(piece)).count();
        let mut reveals = Vec::new();
        while let Some(told) = self.peers.get(&key) {
            if told.outstanding.len() >= self.per_peer {
                break;
            }
            let wanted = |p: u32| !bits.get(p) && !told.told.get(p);
            let fresh_at = self
                .fresh
                .iter()
                .rposition(|&p| wanted(p) && holders(p) == 0);
            let piece = match fresh_at {
                Some(at) => Some(self.fresh.swap_remove(at)),
                None => (0..bits.len())
                    .find(|&p| wanted(p) && self.pending[p as usize] == 0 && holders(p) == 0),
            };
            let Some(piece) = piece else {
                break;
            };
            let told = self.peers.get_mut(&key).expect("checked above");
            told.told.set(piece);
            told.outstanding.push(piece);
            told.last_have = Instant::now();
            self.pending[piece as usize] += 1;
            reveals.push((key, piece));
        }
        reveals
    }

    /// A starving peer is told of a share of the pieces it lacks (doubling with each feed in
    /// a row), fewest holders first, whoever else has them or was told of them. These do not wait to be seen elsewhere
    /// (a peer that cannot reach the others would wait for ever).
    fn feed_starving(&mut self, key: PeerKey, peers: &HashMap<PeerKey, PeerEntry>) -> Vec<Reveal> {
        let (Some(bits), Some(told)) = (peers.get(&key).map(|e| &e.bits), self.peers.get_mut(&key))
        else {
            return Vec::new();
        };
        let holders = |piece: u32| peers.values().filter(|e| e.bits.get(piece)).count();
        let mut lacking: Vec<(usize, u32)> = (0..bits.len())
            .filter(|&p| !bits.get(p) && !told.told.get(p))
            .map(|p| (holders(p) + usize::from(self.pending[p as usize]), p))
            .collect();
        lacking.sort_unstable();
        lacking.truncate(self.per_peer << told.starved.min(16));
        told.starved += 1;
        told.last_have = Instant::now();
        lacking
            .into_iter()
            .map(|(_, piece)| {
                told.told.set(piece);
                (key, piece)
            })
            .collect()
    }

    /// Once a second per peer: the starvation fallback (see the module doc).
    pub fn tick(&mut self, key: PeerKey, peers: &HashMap<PeerKey, PeerEntry>) -> Vec<Reveal> {
        let Some(bits) = peers.get(&key).map(|e| &e.bits) else {
            return Vec::new();
        };
        if self.settle(key, peers) {
            return self.refill(key, peers);
        }
        let Some(told) = self.peers.get(&key) else {
            return Vec::new();
        };
        let nothing_to_fetch = told.outstanding.iter().all(|&p| bits.get(p));
        if bits.is_full() || !nothing_to_fetch || told.last_have.elapsed() < STARVED_AFTER {
            return Vec::new();
        }
        let reveals = self.refill(key, peers);
        if reveals.is_empty() {
            return self.feed_starving(key, peers);
        }
        reveals
    }

    fn unpend(&mut self, piece: u32) {
        let pending = &mut self.pending[piece as usize];
        *pending = pending.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn entry(bits: Bitfield) -> PeerEntry {
        PeerEntry::new(
            "127.0.0.1:1".parse().unwrap(),
            None,
            bits,
            mpsc::unbounded_channel().0,
        )
    }

    fn pieces_of(reveals: &[Reveal], key: PeerKey) -> Vec<u32> {
        reveals
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, p)| *p)
            .collect()
    }

    #[test]
    fn each_peer_is_told_of_different_pieces() {
        let mut ss = SuperSeed::new(64, 16 << 20);
        let mut peers = HashMap::new();
        let mut all = Vec::new();
        for key in 1..=8 {
            peers.insert(key, entry(Bitfield::new(64)));
            ss.connected(key, 64);
            let told = pieces_of(&ss.refill(key, &peers), key);
            assert_eq!(told.len(), MIN_TOLD_PER_PEER);
            all.extend(told);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8 * MIN_TOLD_PER_PEER);
    }

    #[test]
    fn a_piece_seen_at_another_peer_frees_a_slot() {
        let mut ss = SuperSeed::new(16, 16 << 20);
        let mut peers = HashMap::new();
        for key in [1, 2] {
            peers.insert(key, entry(Bitfield::new(16)));
            ss.connected(key, 16);
        }
        let first = pieces_of(&ss.refill(1, &peers), 1);
        ss.refill(2, &peers);
        // Peer 1 fetches its first piece: nothing new yet, peer 2 still lacks it.
        peers.get_mut(&1).unwrap().bits.set(first[0]);
        assert!(ss.have(1, first[0], &peers).is_empty());
        // Peer 2 got it from peer 1: peer 1 is told of one more piece, never told before.
        peers.get_mut(&2).unwrap().bits.set(first[0]);
        let next = pieces_of(&ss.have(2, first[0], &peers), 1);
        assert_eq!(next.len(), 1);
        assert!(!first.contains(&next[0]));
    }

    #[test]
    fn a_lone_leecher_is_told_more_as_it_fetches() {
        let mut ss = SuperSeed::new(8, 16 << 20);
        let mut peers = HashMap::from([(1, entry(Bitfield::new(8)))]);
        ss.connected(1, 8);
        let mut queue = pieces_of(&ss.refill(1, &peers), 1);
        let mut got = 0;
        while let Some(piece) = queue.pop() {
            peers.get_mut(&1).unwrap().bits.set(piece);
            got += 1;
            queue.extend(pieces_of(&ss.have(1, piece, &peers), 1));
        }
        assert_eq!(got, 8);
    }

    #[test]
    fn a_starved_peer_is_told_of_pieces_others_have() {
        let mut ss = SuperSeed::new(8, 16 << 20);
        let mut peers =
            HashMap::from([(1, entry(Bitfield::full(8))), (2, entry(Bitfield::new(8)))]);
        ss.connected(2, 8);
        // Everything exists at peer 1, so nothing is fresh for peer 2...
        assert!(ss.refill(2, &peers).is_empty());
        assert!(ss.tick(2, &peers).is_empty());
        // ...until it has gone a while with nothing to show: then a share of what it lacks.
        ss.peers.get_mut(&2).unwrap().last_have -= STARVED_AFTER;
        assert_eq!(ss.tick(2, &peers).len(), MIN_TOLD_PER_PEER);
        // With their holder gone, the rest are fresh again.
        peers.remove(&1);
        assert_eq!(ss.refill(2, &peers).len(), 8 - MIN_TOLD_PER_PEER);
    }
}
