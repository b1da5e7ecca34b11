//! [`Share`]: which of the pieces only a seed has are ours to fetch from it, when the swarm's
//! leechers that know each other split them (rendezvous hashing over buckets of pieces).

use std::sync::Arc;

/// Pieces fall into this many buckets by index (`piece % SHARE_BUCKETS`); a share is a set of
/// buckets. Enough that leechers' shares come out near equal, few enough that a share is
/// recomputed in microseconds when a leecher comes or goes.
pub const SHARE_BUCKETS: u32 = 4096;

/// Which of the pieces only a seed has are ours to fetch from it ([`crate::Picker::pick_sparing`]).
///
/// Each bucket belongs to the leecher whose id scores highest for it. Every leecher scores
/// the same way, so two that see each other never both own a bucket, and a leecher that comes
/// or goes moves only the buckets it wins. A split by rank among `n` (`piece % n == rank`)
/// moves nearly every piece when `n` changes, so leechers whose views of the swarm differed
/// for a moment (while connections form) fetched the same pieces from the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Bit `b` set: bucket `b` is ours. `None`: every piece is (no other leecher in sight).
    mine: Option<Arc<[u64]>>,
}

impl Share {
    /// Every piece is ours.
    pub fn all() -> Share {
        Share { mine: None }
    }

    /// Our share, with id `own`, among the leechers with ids `others` (ours not among them).
    pub fn among<I: AsRef<[u8]>>(own: &[u8], others: &[I]) -> Share {
        if others.is_empty() {
            return Share::all();
        }
        let own = id_key(own);
        let others: Vec<u64> = others.iter().map(|id| id_key(id.as_ref())).collect();
        let mut mine = vec![0u64; SHARE_BUCKETS.div_ceil(64) as usize];
        for bucket in 0..SHARE_BUCKETS {
            let ours = score(own, bucket);
            if others.iter().all(|&other| score(other, bucket) < ours) {
                mine[(bucket / 64) as usize] |= 1 << (bucket % 64);
            }
        }
        Share {
            mine: Some(mine.into()),
        }
    }

    pub fn owns(&self, piece: u32) -> bool {
        match &self.mine {
            None => true,
            Some(mine) => {
                let bucket = piece % SHARE_BUCKETS;
                mine[(bucket / 64) as usize] >> (bucket % 64) & 1 == 1
            }
        }
    }
}

/// A peer id as 64 bits (FNV-1a): the same in every process, unlike std's hasher.
fn id_key(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How strongly the leecher keyed `key` claims `bucket` (splitmix64's finalizer).
fn score(key: u64, bucket: u32) -> u64 {
    let mut z = key ^ u64::from(bucket).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<[u8; 20]> {
        (0..n)
            .map(|i| {
                let mut id = *b"-PW0100-000000000000";
                id[8..].copy_from_slice(format!("{i:012}").as_bytes());
                id
            })
            .collect()
    }

    /// Each leecher's share, as it computes it seeing all of `ids`.
    fn shares(ids: &[[u8; 20]]) -> Vec<Share> {
        (0..ids.len())
            .map(|i| {
                let others: Vec<_> = ids
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, id)| *id)
                    .collect();
                Share::among(&ids[i], &others)
            })
            .collect()
    }

    #[test]
    fn leechers_that_see_each_other_split_every_piece_once_and_near_evenly() {
        let ids = ids(8);
        let shares = shares(&ids);
        let mut counts = vec![0u32; 8];
        for piece in 0..SHARE_BUCKETS {
            let owners: Vec<usize> = (0..8).filter(|&i| shares[i].owns(piece)).collect();
            assert_eq!(owners.len(), 1, "piece {piece}: {owners:?}");
            counts[owners[0]] += 1;
        }
        // 512 each on average; a binomial's spread is about 21.
        assert!(
            counts.iter().all(|&n| (416..=608).contains(&n)),
            "{counts:?}"
        );
        // Piece indices wrap around the buckets.
        assert_eq!(shares[3].owns(5), shares[3].owns(5 + SHARE_BUCKETS));
    }

    #[test]
    fn a_leecher_that_leaves_hands_on_only_its_own_buckets() {
        let ids = ids(8);
        let before = shares(&ids);
        let after = shares(&ids[..7]);
        for piece in 0..SHARE_BUCKETS {
            for i in 0..7 {
                if before[i].owns(piece) {
                    assert!(after[i].owns(piece), "leecher {i} lost piece {piece}");
                }
                if after[i].owns(piece) && !before[i].owns(piece) {
                    assert!(before[7].owns(piece), "piece {piece} moved between stayers");
                }
            }
        }
    }

    #[test]
    fn alone_every_piece_is_ours() {
        let none: [[u8; 20]; 0] = [];
        let share = Share::among(b"-PW0100-000000000000", &none);
        assert_eq!(share, Share::all());
        assert!((0..10_000).all(|p| share.owns(p)));
    }
}
