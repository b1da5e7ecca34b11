//! The pieces a pick may open, grouped by availability (how many connected peers have each),
//! as libtorrent's piece picker does: rarest first is a walk from the lowest bucket up that
//! stops at the first piece the peer has, instead of a scan of every piece.
//!
//! Each bucket is kept in random order (every insertion swaps into a random slot, an
//! inside-out shuffle), and a walk starts each bucket at a random offset, so ties between
//! equally rare pieces are broken at random. Moving a piece between buckets, adding and
//! removing one are O(1).

use rand::Rng;

const NONE: u32 = u32::MAX;

pub(crate) struct Candidates {
    /// `buckets[a]`: candidate pieces that `a` connected peers have.
    buckets: Vec<Vec<u32>>,
    /// Each piece's slot in its bucket, or `NONE` when it is not a candidate.
    pos: Vec<u32>,
    len: u32,
    /// xorshift state for the insertion shuffle (cheap; moves happen per peer bit).
    seed: u64,
}

impl Candidates {
    pub(crate) fn new(pieces: u32) -> Candidates {
        Candidates {
            buckets: Vec::new(),
            pos: vec![NONE; pieces as usize],
            len: 0,
            seed: rand::rng().random::<u64>() | 1,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.buckets.iter_mut().for_each(Vec::clear);
        self.pos.fill(NONE);
        self.len = 0;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub(crate) fn contains(&self, piece: u32) -> bool {
        self.pos.get(piece as usize).is_some_and(|&p| p != NONE)
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        x
    }

    /// Adds `piece` (not yet a candidate) with availability `avail`.
    pub(crate) fn insert(&mut self, piece: u32, avail: u32) {
        debug_assert!(!self.contains(piece));
        self.push(piece, avail);
        self.len += 1;
    }

    fn push(&mut self, piece: u32, avail: u32) {
        let a = avail as usize;
        if self.buckets.len() <= a {
            self.buckets.resize_with(a + 1, Vec::new);
        }
        let slot = self.next_random();
        let bucket = &mut self.buckets[a];
        bucket.push(piece);
        let last = bucket.len() - 1;
        let j = (slot % (last as u64 + 1)) as usize;
        bucket.swap(j, last);
        self.pos[bucket[last] as usize] = last as u32;
        self.pos[piece as usize] = j as u32;
    }

    fn take(&mut self, piece: u32, avail: u32) {
        let i = self.pos[piece as usize] as usize;
        let bucket = &mut self.buckets[avail as usize];
        debug_assert_eq!(bucket[i], piece, "piece {piece} not in bucket {avail}");
        bucket.swap_remove(i);
        if let Some(&moved) = bucket.get(i) {
            self.pos[moved as usize] = i as u32;
        }
        self.pos[piece as usize] = NONE;
    }

    /// Removes `piece` if it is a candidate; `avail` is its current availability.
    pub(crate) fn remove(&mut self, piece: u32, avail: u32) {
        if self.contains(piece) {
            self.take(piece, avail);
            self.len -= 1;
        }
    }

    /// `piece`'s availability went from `from` to `to`: moves it if it is a candidate.
    #[inline]
    pub(crate) fn moved(&mut self, piece: u32, from: u32, to: u32) {
        if from != to && self.contains(piece) {
            self.take(piece, from);
            self.push(piece, to);
        }
    }

    /// The rarest candidate `offered` accepts (the ones the peer has), ties at random. Pieces no connected peer
    /// has (bucket 0) are looked at last: in a consistent engine no peer has them, and looking
    /// there first would cost a walk over all of them on every pick.
    pub(crate) fn rarest(&self, offered: impl Fn(u32) -> bool, rng: &mut impl Rng) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let order = (1..self.buckets.len()).chain(std::iter::once(0));
        for a in order {
            let bucket = match self.buckets.get(a) {
                Some(b) if !b.is_empty() => b,
                _ => continue,
            };
            let start = rng.random_range(0..bucket.len());
            let (head, tail) = bucket.split_at(start);
            if let Some(&piece) = tail.iter().chain(head).find(|&&p| offered(p)) {
                return Some(piece);
            }
        }
        None
    }

    /// A candidate `offered` accepts, uniformly at random (the random-first phase).
    pub(crate) fn random(&self, offered: impl Fn(u32) -> bool, rng: &mut impl Rng) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        // Rejection sampling over piece indices is uniform over what it accepts; when the
        // peer has few candidates, fall back to listing them.
        let n = self.pos.len() as u32;
        for _ in 0..64 {
            let piece = rng.random_range(0..n);
            if self.contains(piece) && offered(piece) {
                return Some(piece);
            }
        }
        let all: Vec<u32> = self
            .buckets
            .iter()
            .flatten()
            .copied()
            .filter(|&p| offered(p))
            .collect();
        (!all.is_empty()).then(|| all[rng.random_range(0..all.len())])
    }

    /// Checks the structure against `avail` (tests).
    #[cfg(test)]
    pub(crate) fn check(&self, avail: &[u32]) {
        let mut count = 0;
        for (a, bucket) in self.buckets.iter().enumerate() {
            for (i, &piece) in bucket.iter().enumerate() {
                assert_eq!(self.pos[piece as usize], i as u32, "slot of {piece}");
                assert_eq!(avail[piece as usize], a as u32, "bucket of {piece}");
                count += 1;
            }
        }
        assert_eq!(count, self.len);
        assert_eq!(
            self.pos.iter().filter(|&&p| p != NONE).count() as u32,
            self.len
        );
    }
}
