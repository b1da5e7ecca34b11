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
use std::time::Instant;

/// Nodes per bucket, and nodes a lookup converges on.
pub const K: usize = 8;
/// Unanswered queries in a row after which a node may be replaced.
pub const MAX_FAILURES: u32 = 2;

#[derive(Debug, Clone)]
struct Entry {
    node: NodeInfo,
    last_seen: Instant,
    failures: u32,
}

pub struct Table {
    own: Id,
    buckets: Vec<Vec<Entry>>,
}

/// Whether `node`, taking a place in the table, takes entry `e`'s: at its address, or at its IP
/// (loopback aside).
fn replaced_by(e: &Entry, node: &NodeInfo) -> bool {
    e.node.addr == node.addr
        || (e.node.addr.ip() == node.addr.ip() && !node.addr.ip().is_loopback())
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
