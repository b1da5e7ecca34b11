//! The routing table: nodes we know, in 160 buckets by how many leading bits their id shares
//! with ours, at most [`K`] a bucket (BEP 5's k-buckets, without splitting: the bucket of the
//! nodes nearest us is as large as any, which matters only in swarms of millions).
//!
//! A full bucket takes a new node only in place of one that failed to answer
//! [`MAX_FAILURES`] times in a row: long-lived nodes are kept, as Kademlia prefers them.
//!
//! One entry per IP address (libtorrent's `restrict_routing_ips`), loopback excepted: else one
//! host, querying us from a thousand source ports, could fill every bucket.

use crate::krpc::{self, Id, NodeInfo};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// Nodes per bucket, and nodes a lookup converges on.
pub const K: usize = 8;
/// Unanswered queries in a row after which a node may be replaced.
pub const MAX_FAILURES: u32 = 2;
/// A node not heard from for this long is questionable (BEP 5): pinged to see whether it is
/// still there, and its bucket, when none of its nodes was heard from for this long, refreshed.
pub const QUESTIONABLE_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone)]
struct Entry {
    node: NodeInfo,
    last_seen: Instant,
    failures: u32,
}

pub struct Table {
    own: Id,
    buckets: Vec<Vec<Entry>>,
    /// When each bucket was last refreshed ([`Table::refreshing`]).
    refreshed: Vec<Option<Instant>>,
}

/// Whether `node`, taking a place in the table, takes entry `e`'s: at its address, or at its IP
/// (loopback aside).
fn replaced_by(e: &Entry, node: &NodeInfo) -> bool {
    e.node.addr == node.addr
        || (e.node.addr.ip() == node.addr.ip() && !node.addr.ip().is_loopback())
}

fn is_questionable(e: &Entry, now: Instant) -> bool {
    now.saturating_duration_since(e.last_seen) >= QUESTIONABLE_AFTER
}

/// XOR distance, compared as a big-endian number.
pub fn distance(a: &Id, b: &Id) -> Id {
    let mut d = [0u8; 20];
    for i in 0..20 {
        d[i] = a[i] ^ b[i];
    }
    d
}

impl Table {
    pub fn new(own: Id) -> Table {
        Table {
            own,
            buckets: vec![Vec::new(); 160],
            refreshed: vec![None; 160],
        }
    }

    fn bucket_of(&self, id: &Id) -> Option<usize> {
        let d = distance(&self.own, id);
        let zeros = d
            .iter()
            .position(|&b| b != 0)
            .map(|i| i * 8 + d[i].leading_zeros() as usize)?;
        Some(zeros)
    }

    /// A node answered a query of ours: remember it, or refresh it. Returns whether it is in
    /// the table now.
    pub fn seen(&mut self, node: NodeInfo, now: Instant) -> bool {
        if !krpc::dialable(&node.addr) {
            return false;
        }
        let Some(b) = self.bucket_of(&node.id) else {
            return false; // our own id
        };
        if let Some(entry) = self.buckets[b].iter_mut().find(|e| e.node.id == node.id) {
            if entry.node.addr != node.addr && entry.failures < MAX_FAILURES {
                // An id we know at another address that still answers: kept there. Our
                // `find_node` answers name the table's ids, so anyone could otherwise claim
                // each of them from its own address and have every lookup go through it.
                return false;
            }
            let moved = entry.node.addr != node.addr;
            entry.node.addr = node.addr;
            entry.last_seen = now;
            entry.failures = 0;
            if moved {
                // Another entry at that address (or, loopback aside, that IP) goes: an id
                // moved there kept both, and one IP gathered entries past its one.
                let same_place = |e: &Entry| e.node.id != node.id && replaced_by(e, &node);
                for bucket in &mut self.buckets {
                    bucket.retain(|e| !same_place(e));
                }
            }
            return true;
        }
        if !self.has_place_for(&node, b) {
            return false;
        }
        let replaced = |e: &Entry| replaced_by(e, &node);
        for bucket in &mut self.buckets {
            bucket.retain(|e| !replaced(e));
        }
        let bucket = &mut self.buckets[b];
        let entry = Entry {
            node,
            last_seen: now,
            failures: 0,
        };
        if bucket.len() < K {
            bucket.push(entry);
            return true;
        }
        if let Some(stale) = bucket.iter_mut().find(|e| e.failures >= MAX_FAILURES) {
            *stale = entry;
            return true;
        }
        false
    }

    /// Whether a new `node` (its id not in the table) would get a place in bucket `b`. One
    /// entry per address: a node that restarted with a new id replaces its old self, and one
    /// address cannot fill the table by naming itself with many ids. One per IP too, kept
    /// while it answers. Loopback is exempt: only local test swarms, many nodes on one IP,
    /// live there, and packets from it never come from another host. The entry it replaces
    /// goes only if it is taken: a forged source (a known node's address) and an id for a full
    /// bucket removed that node for nothing.
    fn has_place_for(&self, node: &NodeInfo, b: usize) -> bool {
        let other_ip_entry_answers =
            self.buckets.iter().flatten().any(|e| {
                replaced_by(e, node) && e.node.addr != node.addr && e.failures < MAX_FAILURES
            });
        if other_ip_entry_answers {
            return false;
        }
        let staying = || self.buckets[b].iter().filter(|e| !replaced_by(e, node));
        staying().count() < K || staying().any(|e| e.failures >= MAX_FAILURES)
    }

    /// Whether [`Table::seen`] would keep `node` if it answered: worth a ping.
    pub fn would_take(&self, node: &NodeInfo) -> bool {
        if !krpc::dialable(&node.addr) {
            return false;
        }
        let Some(b) = self.bucket_of(&node.id) else {
            return false;
        };
        match self.buckets[b].iter().find(|e| e.node.id == node.id) {
            Some(entry) => entry.node.addr == node.addr || entry.failures >= MAX_FAILURES,
            None => self.has_place_for(node, b),
        }
    }

    /// A node queried us: its entry, when the table has this id at this address, is marked
    /// heard from (not its failures: a query's source may be forged). Returns whether it is
    /// there and answering; a node not there, or given up on, is to be pinged: it enters, or
    /// is taken back, only by answering a query of ours ([`Table::seen`]).
    pub fn heard_from(&mut self, node: &NodeInfo, now: Instant) -> bool {
        let Some(b) = self.bucket_of(&node.id) else {
            return false;
        };
        match self.buckets[b].iter_mut().find(|e| e.node == *node) {
            Some(entry) => {
                entry.last_seen = now;
                entry.failures == 0
            }
            None => false,
        }
    }

    /// `node` answered a query sent to its address: an entry at that address under another id
    /// is given up on (the node there restarted under a new id), whether or not `node` got a
    /// place. Left good, it was pinged again in every upkeep round and handed out.
    pub fn answered_as(&mut self, node: &NodeInfo) {
        for entry in self.buckets.iter_mut().flatten() {
            if entry.node.addr == node.addr && entry.node.id != node.id {
                entry.failures = entry.failures.max(MAX_FAILURES);
            }
        }
    }

    /// A query to `addr` went unanswered.
    pub fn failed(&mut self, addr: SocketAddrV4) {
        for entry in self.buckets.iter_mut().flatten() {
            if entry.node.addr == addr {
                entry.failures += 1;
            }
        }
    }

    /// Up to `n` good nodes closest to `target`, nearest first.
    pub fn closest(&self, target: &Id, n: usize) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = self
            .buckets
            .iter()
            .flatten()
            .filter(|e| e.failures < MAX_FAILURES)
            .map(|e| e.node)
            .collect();
        nodes.sort_by_key(|node| distance(&node.id, target));
        nodes.truncate(n);
        nodes
    }

    /// Up to `n` nodes that answered their last query, most recently heard first.
    pub fn good(&self, n: usize) -> Vec<NodeInfo> {
        let mut entries: Vec<&Entry> = self
            .buckets
            .iter()
            .flatten()
            .filter(|e| e.failures == 0)
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_seen));
        entries.into_iter().take(n).map(|e| e.node).collect()
    }

    /// Up to `n` nodes not heard from for [`QUESTIONABLE_AFTER`] at `now` and not given up on,
    /// longest silent first: to be pinged. Without that, a node that left was kept, and handed
    /// out, for as long as no lookup happened to ask it: forever, far from what we look up.
    pub fn questionable(&self, now: Instant, n: usize) -> Vec<NodeInfo> {
        let mut entries: Vec<&Entry> = self
            .buckets
            .iter()
            .flatten()
            .filter(|e| e.failures < MAX_FAILURES && is_questionable(e, now))
            .collect();
        entries.sort_by_key(|e| e.last_seen);
        entries.into_iter().take(n).map(|e| e.node).collect()
    }

    /// The non-empty bucket whose newest node was heard from longest ago, if that was
    /// [`QUESTIONABLE_AFTER`] before `now` or more and it was not refreshed since: to be
    /// refreshed (BEP 5), by a lookup of an id in its range, [`Table::id_in_bucket`]. Empty
    /// buckets are left alone: the far ones are never empty in a real network, and a lookup
    /// each for the 150 near ones nobody is in would ask the network for nothing.
    pub fn stale_bucket(&self, now: Instant) -> Option<usize> {
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(b, bucket)| {
                let newest = bucket.iter().map(|e| e.last_seen).max()?;
                Some((b, newest.max(self.refreshed[b].unwrap_or(newest))))
            })
            .filter(|(_, newest)| now.saturating_duration_since(*newest) >= QUESTIONABLE_AFTER)
            .min_by_key(|(_, newest)| *newest)
            .map(|(b, _)| b)
    }

    /// Bucket `b` is being refreshed at `now`: not stale again for [`QUESTIONABLE_AFTER`],
    /// whether or not the lookup finds it nodes.
    pub fn refreshing(&mut self, b: usize, now: Instant) {
        self.refreshed[b] = Some(now);
    }

    /// An id in bucket `b`'s range: ours up to bit `b`, that bit flipped, `random` after it.
    pub fn id_in_bucket(&self, b: usize, random: Id) -> Id {
        let mut id = self.own;
        for bit in b..160 {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            let value = match bit == b {
                true => !self.own[byte] & mask,
                false => random[byte] & mask,
            };
            id[byte] = (id[byte] & !mask) | value;
        }
        id
    }

    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    /// Nodes not yet given up on (those [`Table::closest`] names): when none is left, the
    /// table is as good as empty.
    pub fn answering(&self) -> usize {
        self.buckets
            .iter()
            .flatten()
            .filter(|e| e.failures < MAX_FAILURES)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(first: u8, last: u8, port: u16) -> NodeInfo {
        let mut id = [0u8; 20];
        id[0] = first;
        id[19] = last;
        NodeInfo {
            id,
            addr: SocketAddrV4::new([127, 0, 0, 1].into(), port),
        }
    }

    /// BEP 5's upkeep: a node silent for 15 minutes is questionable (to be pinged) until it is
    /// given up on, and a bucket none of whose nodes was heard from for that long is stale (to
    /// be refreshed by a lookup of an id in its range).
    #[test]
    fn nodes_silent_for_fifteen_minutes_are_pinged_and_their_bucket_refreshed() {
        let mut table = Table::new([0; 20]);
        let t0 = Instant::now();
        let minutes = |m: u64| t0 + Duration::from_secs(m * 60);
        let (old, fresh) = (node(0x80, 1, 6001), node(0x40, 1, 6002));
        table.seen(old, t0);
        table.seen(fresh, minutes(10));
        assert!(table.questionable(minutes(14), 8).is_empty());
        assert_eq!(table.stale_bucket(minutes(14)), None);
        assert_eq!(table.questionable(minutes(16), 8), vec![old]);
        assert_eq!(table.stale_bucket(minutes(16)), Some(0));
        assert_eq!(table.questionable(minutes(26), 8), vec![old, fresh]);
        assert_eq!(
            table.questionable(minutes(26), 1),
            vec![old],
            "longest silent first"
        );
        table.failed(old.addr);
        assert_eq!(
            table.questionable(minutes(16), 8),
            vec![old],
            "one failure: asked again"
        );
        table.failed(old.addr);
        assert!(table.questionable(minutes(16), 8).is_empty(), "given up on");
        table.seen(old, minutes(16));
        assert_eq!(
            table.stale_bucket(minutes(26)),
            Some(1),
            "bucket 0 heard from at 16"
        );
        table.refreshing(1, minutes(26));
        assert_eq!(
            table.stale_bucket(minutes(30)),
            None,
            "bucket 1 refreshed at 26"
        );
        assert_eq!(
            table.stale_bucket(minutes(41)),
            Some(0),
            "the stalest first"
        );
        table.refreshing(0, minutes(41));
        assert_eq!(table.stale_bucket(minutes(41)), Some(1));

        // The node at `fresh`'s address answers under another id: it restarted, and the
        // entry under the old id is given up on.
        let answering = table.answering();
        table.answered_as(&NodeInfo {
            id: [0x33; 20],
            addr: fresh.addr,
        });
        assert_eq!(table.answering(), answering - 1);
        assert!(!table.questionable(minutes(60), 8).contains(&fresh));

        let ours = Table::new([0x5a; 20]);
        for b in [0, 1, 7, 8, 100, 159] {
            for random in [[0; 20], [0xff; 20], [0xa5; 20]] {
                let id = ours.id_in_bucket(b, random);
                assert_eq!(
                    ours.bucket_of(&id),
                    Some(b),
                    "bucket {b}, random {random:?}"
                );
            }
        }
    }

    /// A known id from another address is ignored while the node at the first answers, and
    /// taken once that one has stopped answering (a node that moved).
    #[test]
    fn a_known_id_from_another_address_is_ignored_while_the_first_answers() {
        let now = Instant::now();
        let mut table = Table::new([0u8; 20]);
        assert!(table.seen(node(0x80, 1, 1000), now));
        assert!(
            !table.seen(node(0x80, 1, 6666), now),
            "an impostor took the id"
        );
        let addr = |port| SocketAddrV4::new([127, 0, 0, 1].into(), port);
        assert_eq!(table.closest(&[0x80; 20], 8)[0].addr, addr(1000));
        for _ in 0..MAX_FAILURES {
            table.failed(addr(1000));
        }
        assert!(table.seen(node(0x80, 1, 6666), now));
        assert_eq!(table.closest(&[0x80; 20], 8)[0].addr, addr(6666));
    }

    #[test]
    fn closest_are_by_xor_distance_and_full_buckets_keep_live_nodes() {
        let now = Instant::now();
        let mut table = Table::new([0u8; 20]);
        // All of these share no leading bit with 0x00..: one bucket (0x80..0xff), K places.
        for i in 0..K as u8 {
            assert!(table.seen(node(0x80 | i, 0, 1000 + u16::from(i)), now));
        }
        assert!(
            !table.seen(node(0xf0, 0, 2000), now),
            "a full bucket took a new node"
        );
        table.failed(SocketAddrV4::new([127, 0, 0, 1].into(), 1003));
        table.failed(SocketAddrV4::new([127, 0, 0, 1].into(), 1003));
        assert!(
            table.seen(node(0xf0, 0, 2000), now),
            "a failing node was not replaced"
        );
        assert!(table.seen(node(0x01, 0, 3000), now));
        assert!(!table.seen(node(0, 0, 4000), now), "our own id");
        let target = {
            let mut t = [0u8; 20];
            t[0] = 0x81;
            t
        };
        let closest = table.closest(&target, 3);
        assert_eq!(
            closest.iter().map(|n| n.id[0]).collect::<Vec<_>>(),
            vec![0x81, 0x80, 0x82]
        );
        assert_eq!(table.len(), K + 1);
        // The same address with a new id replaces the old entry.
        assert!(table.seen(node(0x01, 9, 3000), now));
        assert_eq!(table.len(), K + 1);
    }

    /// A node that queries us is worth a ping only where the table would take it when it
    /// answers; one in the table that was given up on is pinged again (its query does not
    /// take it back: the source may be forged), one that answers is only marked heard from.
    #[test]
    fn a_querier_is_pinged_only_where_the_table_would_take_it() {
        let now = Instant::now();
        let mut table = Table::new([0u8; 20]);
        let newcomer = node(0xf0, 0, 2000);
        assert!(table.would_take(&newcomer));
        for i in 0..K as u8 {
            assert!(table.seen(node(0x80 | i, 0, 1000 + u16::from(i)), now));
        }
        assert!(
            !table.would_take(&newcomer),
            "its bucket is full of answering nodes"
        );
        assert!(
            table.would_take(&node(0x01, 0, 3000)),
            "another bucket has room"
        );
        let known = node(0x83, 0, 1003);
        assert!(table.heard_from(&known, now), "answering: no ping");
        table.failed(known.addr);
        table.failed(known.addr);
        assert!(!table.heard_from(&known, now), "given up on: pinged");
        assert!(table.would_take(&known));
        assert_eq!(
            table.answering(),
            K - 1,
            "its query alone does not take it back"
        );
        assert!(
            table.would_take(&newcomer),
            "a given-up entry's place is free"
        );
    }

    /// A node that names itself with an id for a full bucket from a known node's address (a
    /// forged source) is not taken, and the known node stays; an id moved to a taken address
    /// leaves one entry there.
    #[test]
    fn an_entry_goes_only_for_a_node_that_takes_its_place() {
        let now = Instant::now();
        let mut table = Table::new([0u8; 20]);
        let at = |first: u8, ip: u8| NodeInfo {
            id: {
                let mut id = [0u8; 20];
                id[0] = first;
                id[19] = ip;
                id
            },
            addr: SocketAddrV4::new([10, 0, 0, ip].into(), 1),
        };
        for ip in 1..=K as u8 {
            assert!(table.seen(at(0x80 | ip, ip), now));
        }
        let known = at(0x40, 9);
        assert!(table.seen(known, now));
        assert!(!table.seen(at(0xff, 9), now), "a full bucket took it");
        assert_eq!(
            table.closest(&known.id, 1),
            vec![known],
            "the known node went"
        );
        assert_eq!(table.len(), K + 1);
        // An id moves to an address that holds another entry: that one goes.
        let moving = at(0x20, 20);
        assert!(table.seen(moving, now));
        for _ in 0..MAX_FAILURES {
            table.failed(moving.addr);
        }
        let moved = NodeInfo {
            addr: known.addr,
            ..moving
        };
        assert!(table.seen(moved, now));
        let there: Vec<NodeInfo> = table
            .closest(&[0; 20], 3 * K)
            .into_iter()
            .filter(|n| n.addr == known.addr)
            .collect();
        assert_eq!(there, vec![moved]);
        // Nodes given up on still count in `len`, not in `answering`.
        assert_eq!(table.answering(), table.len());
        for ip in 1..=K as u8 {
            for _ in 0..MAX_FAILURES {
                table.failed(at(0x80 | ip, ip).addr);
            }
        }
        assert_eq!(table.answering(), table.len() - K);
    }

    /// One host querying us from many source ports holds one entry, until that one stops
    /// answering; loopback (local test swarms) holds many.
    #[test]
    fn one_ip_holds_one_entry_but_loopback_many() {
        let now = Instant::now();
        let mut table = Table::new([0u8; 20]);
        // Ids spread over the buckets, so that none is refused for a full bucket.
        let at = |ip: [u8; 4], port: u16| {
            let bit = usize::from(port) % 144;
            let mut id = [0u8; 20];
            id[bit / 8] = 0x80 >> (bit % 8);
            id[18..].copy_from_slice(&port.to_be_bytes());
            NodeInfo {
                id,
                addr: SocketAddrV4::new(ip.into(), port),
            }
        };
        assert!(table.seen(at([10, 0, 0, 1], 1), now));
        for port in 2..1282 {
            assert!(!table.seen(at([10, 0, 0, 1], port), now), "port {port}");
        }
        assert_eq!(table.len(), 1);
        // The same address is refreshed; another host is welcome.
        assert!(table.seen(at([10, 0, 0, 1], 1), now));
        assert!(table.seen(at([10, 0, 0, 2], 7), now));
        assert_eq!(table.len(), 2);
        // A node that moved to another port takes its place once the old one fails.
        for _ in 0..MAX_FAILURES {
            table.failed(SocketAddrV4::new([10, 0, 0, 1].into(), 1));
        }
        assert!(table.seen(at([10, 0, 0, 1], 9), now));
        assert_eq!(table.len(), 2);
        let ips: Vec<SocketAddrV4> = table.closest(&[0; 20], 8).iter().map(|n| n.addr).collect();
        assert!(
            ips.contains(&SocketAddrV4::new([10, 0, 0, 1].into(), 9)),
            "{ips:?}"
        );
        for port in 100..140 {
            assert!(table.seen(at([127, 0, 0, 1], port), now), "port {port}");
        }
        assert_eq!(table.len(), 42);
        // Addresses where no node can be are not kept.
        for ip in [[0, 0, 0, 0], [224, 0, 0, 1], [255, 255, 255, 255]] {
            assert!(!table.seen(at(ip, 6881), now), "{ip:?}");
        }
        assert_eq!(table.len(), 42);
    }
}
