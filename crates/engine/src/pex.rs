//! Peer exchange (BEP 11) on one connection: what we tell the peer of the others we are
//! connected to, and what we take from what it tells us.
//!
//! Sending: the first message lists every peer we can name (its listening address: the one we
//! dialed, or its IP with the port from its extension handshake), later ones only the change
//! since the last (`added`, `dropped`), at most [`MAX_PEERS_PER_LIST`] each. A message goes
//! as soon as there is something to say and [`crate::EngineConfig::pex_interval`] has passed
//! since the last one: a new connection hears of the swarm within a second, and no peer gets
//! more than one a minute (libtorrent drops a peer that sends three in one).
//!
//! Receiving: at most [`MAX_PEERS_PER_LIST`] addresses are taken from one message, and only
//! from [`MAX_MESSAGES_PER_MINUTE`] messages a minute; more are ignored, not an offence (a
//! rate-limited link can deliver a backlog at once). A seed skips peers flagged as seeds.
//! Private torrents do neither: no `ut_pex` in our handshake, and anything sent is ignored.

use crate::{Inner, MAX_KNOWN_PEERS};
use pow_picker::PeerKey;
use pow_wire::extension::ExtensionError;
use pow_wire::pex::{flags, PexMessage};
use pow_wire::Message;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most addresses in one list of a message we send, and most we take from one we receive.
pub const MAX_PEERS_PER_LIST: usize = 50;
/// Peer-exchange messages read per peer per minute; the rest are ignored.
pub const MAX_MESSAGES_PER_MINUTE: usize = 3;

/// Peer exchange with one peer.
#[derive(Default)]
pub(crate) struct PexLink {
    /// The id the peer takes `ut_pex` messages as (`None`: it does not, or PEX is off).
    their_id: Option<u8>,
    /// The addresses the peer has been told of and not told dropped since.
    told: HashSet<SocketAddr>,
    /// No message before this.
    next: Option<Instant>,
    /// When the last few messages we read arrived.
    received: VecDeque<Instant>,
}

impl PexLink {
    /// The peer's extension handshake named this id for `ut_pex` (or none).
    pub fn handshake(&mut self, inner: &Inner, their_id: Option<u8>) {
        self.their_id = their_id.filter(|_| inner.pex_enabled());
    }

    /// The message due to this peer now, if one is: the change in our connected peers since
    /// the last, once the interval has passed.
    pub fn due(&mut self, inner: &Inner, key: PeerKey, now: Instant) -> Option<Message> {
        let their_id = self.their_id?;
        if self.next.is_some_and(|next| now < next) {
            return None;
        }
        let state = inner.lock();
        let theirs = state.peers.get(&key).and_then(|p| p.listen_addr);
        let connected: Vec<(SocketAddr, u8)> = state
            .peers
            .iter()
            .filter(|(other, _)| **other != key)
            .filter_map(|(_, peer)| {
                let wire = peer.wire?;
                let addr = peer.listen_addr.filter(|a| Some(*a) != theirs)?;
                let mut f = 0;
                if peer.bits.is_full() {
                    f |= flags::SEED;
                }
                if wire.outgoing {
                    f |= flags::REACHABLE;
                }
                if wire.utp {
                    f |= flags::UTP;
                }
                Some((addr, f))
            })
            .collect();
        drop(state);
        let now_connected: HashSet<SocketAddr> = connected.iter().map(|(a, _)| *a).collect();
        let message = PexMessage {
            added: connected
                .into_iter()
                .filter(|(addr, _)| !self.told.contains(addr))
                .take(MAX_PEERS_PER_LIST)
                .collect(),
            dropped: self
                .told
                .iter()
                .filter(|addr| !now_connected.contains(addr))
                .take(MAX_PEERS_PER_LIST)
                .copied()
                .collect(),
        };
        if message.is_empty() {
            return None;
        }
        for addr in &message.dropped {
            self.told.remove(addr);
        }
        self.told.extend(message.added.iter().map(|(a, _)| *a));
        self.next = Some(now + inner.config.pex_interval);
        inner.stats.pex_sent.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            "pex to peer {key}: {} added, {} dropped",
            message.added.len(),
            message.dropped.len()
        );
        Some(message.to_message(their_id))
    }

    /// A `ut_pex` message from the peer: new addresses are dialed as the connection cap allows.
    pub fn receive(
        &mut self,
        inner: &Arc<Inner>,
        from: SocketAddr,
        body: &[u8],
        now: Instant,
    ) -> Result<(), ExtensionError> {
        if !inner.pex_enabled() {
            return Ok(());
        }
        while self
            .received
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.received.pop_front();
        }
        if self.received.len() >= MAX_MESSAGES_PER_MINUTE {
            tracing::debug!("{from}: peer exchange more often than allowed; ignored");
            return Ok(());
        }
        self.received.push_back(now);
        let message = PexMessage::decode(body)?;
        inner.stats.pex_received.fetch_add(1, Ordering::Relaxed);
        let seeding = inner.lock().picker.is_complete();
        let addrs: Vec<SocketAddr> = message
            .added
            .iter()
            .filter(|(_, f)| !(seeding && f & flags::SEED != 0))
            .map(|(addr, _)| *addr)
            .filter(|addr| reachable_from(from, *addr))
            .take(MAX_PEERS_PER_LIST)
            .collect();
        let new = inner.learn_peers(addrs);
        inner
            .stats
            .peers_from_pex
            .fetch_add(new as u64, Ordering::Relaxed);
        tracing::debug!(
            "{from}: pex named {} peers, {new} new (at most {MAX_KNOWN_PEERS} kept)",
            message.added.len()
        );
        Ok(())
    }
}

/// Whether a peer at `from` can have seen a peer at `addr`: a peer on the internet names no
/// loopback, private or link-local address (it would have us dial our own host or our network
/// for it), and one on a local network no loopback address. Peers on one host, or one
/// network, may name each other.
fn reachable_from(from: SocketAddr, addr: SocketAddr) -> bool {
    let loopback = |a: SocketAddr| a.ip().to_canonical().is_loopback();
    match (loopback(addr), local_scope(addr.ip())) {
        (true, _) => loopback(from),
        (false, true) => local_scope(from.ip()),
        (false, false) => true,
    }
}

/// Loopback, private (RFC 1918, unique local) and link-local addresses.
fn local_scope(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    /// A peer on the internet cannot have us dial our own host or network; peers on loopback
    /// or a private network name one another (local swarms, tests).
    #[test]
    fn only_peers_on_local_networks_name_local_addresses() {
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        let internet = at("203.0.113.7:6881");
        for local in [
            "127.0.0.1:22",
            "10.0.0.5:80",
            "192.168.1.1:6881",
            "169.254.1.1:1",
            "[::1]:22",
            "[fd00::1]:1",
            "[fe80::1]:1",
            "[::ffff:127.0.0.1]:22",
        ] {
            assert!(!reachable_from(internet, at(local)), "{local}");
            assert!(reachable_from(at("127.0.0.1:51413"), at(local)), "{local}");
        }
        // A peer on the local network may name others there, not our own host.
        let lan = at("192.168.1.9:51413");
        for own_host in ["127.0.0.1:22", "[::1]:22", "[::ffff:127.0.0.1]:22"] {
            assert!(!reachable_from(lan, at(own_host)), "{own_host}");
        }
        for network in [
            "10.0.0.5:80",
            "192.168.1.1:6881",
            "[fd00::1]:1",
            "[fe80::1]:1",
        ] {
            assert!(reachable_from(lan, at(network)), "{network}");
        }
        assert!(reachable_from(internet, at("198.51.100.1:6881")));
        assert!(reachable_from(at("127.0.0.1:1"), at("198.51.100.1:6881")));
    }
}
