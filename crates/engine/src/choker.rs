//! Who we upload to: BEP 3's choking, as the mainline client and Transmission do it.
//!
//! Every round (10 s) the upload slots go to the peers that want our data and, while we
//! download, send us the most (tit-for-tat), or, once we are a seed, take the most from us. One
//! slot is *optimistic*: it moves every third round to the interested peer whose last
//! optimistic turn is longest ago (never first), so a newcomer (which has nothing to trade yet)
//! and every peer beyond the slots gets served in turn. Between rounds a peer that becomes
//! interested takes a free slot at once (a quick start for the first leechers), and a slot
//! freed by a peer that left or lost interest starts a round early, so nobody waits for the
//! clock while a slot is idle.
//!
//! [`Choker::round`] is the decision alone (no sockets, no clock of its own); the session's
//! `choke_loop` gathers the peers' counters, asks it and tells the peers' tasks.

use pow_picker::PeerKey;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A connected peer as one round sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub key: PeerKey,
    /// It wants pieces we have (its last `interested` / `not interested`).
    pub interested: bool,
    /// Payload bytes it has sent us, and we have sent it, since it connected.
    pub received: u64,
    pub sent: u64,
}

/// The choker's memory between rounds.
pub(crate) struct Choker {
    slots: usize,
    round_length: Duration,
    /// The optimistic slot's peer (since when: its `last_optimistic`).
    optimistic: Option<PeerKey>,
    /// Each peer's counters at the previous round, to rate it by what it did in between.
    last: HashMap<PeerKey, (u64, u64)>,
    /// When each peer last held a slot (absent: never since it connected).
    last_served: HashMap<PeerKey, Instant>,
    /// When each peer last took the optimistic slot (absent: never since it connected).
    last_optimistic: HashMap<PeerKey, Instant>,
}

impl Choker {
    /// `slots` peers unchoked at once (at least 1), one of them optimistic; a new round every
    /// `round_length`, a new optimistic peer every three rounds.
    pub fn new(slots: usize, round_length: Duration) -> Choker {
        Choker {
            slots: slots.max(1),
            round_length,
            optimistic: None,
            last: HashMap::new(),
            last_served: HashMap::new(),
            last_optimistic: HashMap::new(),
        }
    }

    pub fn round_length(&self) -> Duration {
        self.round_length
    }

    /// Decides which of `peers` (every wire connection, interested or not) hold the slots from
    /// `now`: the `slots - 1` interested peers with the highest rate since the last round
    /// (bytes from them while `seeding` is false, to them once it is true), and the optimistic
    /// peer. Peers that are not interested never get a slot (and keep whatever they have: the
    /// caller decides what to do with them).
    pub fn round(&mut self, peers: &[Candidate], seeding: bool, now: Instant) -> HashSet<PeerKey> {
        let present: HashSet<PeerKey> = peers.iter().map(|p| p.key).collect();
        self.last.retain(|k, _| present.contains(k));
        self.last_served.retain(|k, _| present.contains(k));
        self.last_optimistic.retain(|k, _| present.contains(k));
        let mut rated: Vec<(u64, PeerKey)> = Vec::new();
        for p in peers {
            let (received, sent) = self
                .last
                .insert(p.key, (p.received, p.sent))
                .unwrap_or((0, 0));
            if p.interested {
                let rate = if seeding {
                    p.sent.saturating_sub(sent)
                } else {
                    p.received.saturating_sub(received)
                };
                rated.push((rate, p.key));
            }
        }
        if rated.len() <= self.slots {
            self.optimistic = None;
            let chosen: HashSet<PeerKey> = rated.iter().map(|&(_, k)| k).collect();
            self.mark_served(&chosen, now);
            return chosen;
        }
        // Highest rate first; among equals, the one served longest ago (never served first).
        rated.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| self.last_served.get(&a.1).cmp(&self.last_served.get(&b.1)))
                .then(a.1.cmp(&b.1))
        });
        let optimistic_due = match self.optimistic {
            Some(key) => {
                !rated.iter().any(|&(_, k)| k == key)
                    || self.last_optimistic.get(&key).is_none_or(|&since| {
                        now.saturating_duration_since(since) >= self.round_length * 3
                    })
            }
            None => true,
        };
        let mut chosen: HashSet<PeerKey> = HashSet::new();
        let kept_optimistic = if optimistic_due {
            None
        } else {
            self.optimistic
        };
        for &(_, key) in &rated {
            if chosen.len() + 1 >= self.slots {
                break;
            }
            if Some(key) != kept_optimistic {
                chosen.insert(key);
            }
        }
        let optimistic = match kept_optimistic {
            Some(key) => key,
            None => {
                // Whose optimistic turn is longest ago comes first: peers that all fitted in
                // the slots were served at the same instant, and `last_served` alone would then
                // give the turn to the same one every time.
                let waiting = rated
                    .iter()
                    .map(|&(_, k)| k)
                    .filter(|k| !chosen.contains(k))
                    .min_by(|a, b| {
                        let turn = |k| (self.last_optimistic.get(k), self.last_served.get(k));
                        turn(a).cmp(&turn(b)).then(a.cmp(b))
                    })
                    .expect("more interested peers than slots");
                self.optimistic = Some(waiting);
                self.last_optimistic.insert(waiting, now);
                waiting
            }
        };
        chosen.insert(optimistic);
        self.mark_served(&chosen, now);
        chosen
    }

    fn mark_served(&mut self, chosen: &HashSet<PeerKey>, now: Instant) {
        for &key in chosen {
            self.last_served.insert(key, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: PeerKey, interested: bool, received: u64, sent: u64) -> Candidate {
        Candidate {
            key,
            interested,
            received,
            sent,
        }
    }

    fn sorted(set: HashSet<PeerKey>) -> Vec<PeerKey> {
        let mut v: Vec<PeerKey> = set.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn with_room_for_all_every_interested_peer_is_unchoked() {
        let mut choker = Choker::new(4, Duration::from_secs(10));
        let peers = [
            peer(1, true, 0, 0),
            peer(2, false, 0, 0),
            peer(3, true, 0, 0),
        ];
        assert_eq!(sorted(choker.round(&peers, false, Instant::now())), [1, 3]);
    }

    #[test]
    fn a_leecher_unchokes_those_that_sent_most_since_the_last_round_and_one_optimistic() {
        let t0 = Instant::now();
        let mut choker = Choker::new(3, Duration::from_secs(10));
        let zero: Vec<Candidate> = (1..=5).map(|k| peer(k, true, 0, 0)).collect();
        choker.round(&zero, false, t0);
        // Peer 5 sent the most in total, but all of it before the first round.
        let peers = [
            peer(1, true, 100, 0),
            peer(2, true, 900, 0),
            peer(3, true, 50, 0),
            peer(4, true, 700, 999_999),
            peer(5, true, 0, 0),
        ];
        let chosen = choker.round(&peers, false, t0 + Duration::from_secs(10));
        assert!(chosen.contains(&2) && chosen.contains(&4), "{chosen:?}");
        assert_eq!(chosen.len(), 3);
        // A seed rates by what it sent: only peer 4 took anything since the last round.
        let mut seed = Choker::new(2, Duration::from_secs(10));
        seed.round(&zero, true, t0);
        let chosen = seed.round(&peers, true, t0 + Duration::from_secs(10));
        assert!(chosen.contains(&4), "{chosen:?}");
    }

    #[test]
    fn the_optimistic_slot_gives_every_waiting_peer_a_turn() {
        // One slot, six interested peers sending nothing: each round of three is one turn.
        let t0 = Instant::now();
        let round = Duration::from_secs(10);
        let mut choker = Choker::new(1, round);
        let peers: Vec<Candidate> = (1..=6).map(|k| peer(k, true, 0, 0)).collect();
        let mut turns = Vec::new();
        for r in 0..18u32 {
            let chosen = sorted(choker.round(&peers, true, t0 + round * r));
            assert_eq!(chosen.len(), 1);
            if turns.last() != Some(&chosen[0]) {
                turns.push(chosen[0]);
            }
        }
        assert_eq!(
            turns,
            [1, 2, 3, 4, 5, 6],
            "in turn, each held for three rounds"
        );
    }

    #[test]
    fn an_optimistic_peer_that_leaves_or_loses_interest_is_replaced_at_once() {
        let t0 = Instant::now();
        let mut choker = Choker::new(2, Duration::from_secs(10));
        let peers: Vec<Candidate> = (1..=4).map(|k| peer(k, true, 0, 0)).collect();
        let first = choker.round(&peers, true, t0);
        let optimistic = choker.optimistic.expect("an optimistic peer");
        assert!(first.contains(&optimistic));
        let without: Vec<Candidate> = peers
            .iter()
            .map(|p| peer(p.key, p.key != optimistic, 0, 0))
            .collect();
        let next = choker.round(&without, true, t0 + Duration::from_secs(1));
        assert!(!next.contains(&optimistic));
        assert_eq!(next.len(), 2);
    }

    #[test]
    fn peers_served_together_take_the_optimistic_slot_in_turn() {
        // A third peer (1) flickers in and out of interest, as a trader does while it takes
        // each new piece at once: whenever it is out, the other two fit and are served at the
        // same instant, so "served longest ago" cannot tell them apart. The optimistic slot
        // must still go to each in turn, not always to the same one (seen with libtorrent in
        // tests/choking.rs: one newcomer never choked).
        let t0 = Instant::now();
        let mut choker = Choker::new(2, Duration::from_secs(10));
        let mut left_out = HashSet::new();
        for r in 0..6u32 {
            let now = t0 + Duration::from_millis(500) * r;
            let two: Vec<Candidate> = (1..=3).map(|k| peer(k, k != 1, 0, 0)).collect();
            choker.round(&two, false, now);
            let three: Vec<Candidate> = (1..=3).map(|k| peer(k, true, 0, 0)).collect();
            let chosen = choker.round(&three, false, now + Duration::from_millis(100));
            assert_eq!(chosen.len(), 2);
            left_out.extend([2, 3].into_iter().filter(|k| !chosen.contains(k)));
        }
        assert_eq!(sorted(left_out), [2, 3], "both wait for a turn");
    }
}
