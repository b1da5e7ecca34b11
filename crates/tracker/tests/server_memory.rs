//! The test tracker's worst-case memory, measured: every byte its state allocates is counted
//! (this binary's allocator counts), for the shapes of announce floods that cost it the most,
//! against the figure `ServerConfig::max_peers_total` documents.

use pow_tracker::server::{Announce, ServerConfig, State};
use pow_tracker::Event;
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `ServerConfig::max_peers_total` documents for the defaults.
const WORST_CASE_BYTES: usize = 90 << 20;

/// Peer `n`: an address of its own, in a /64 of its own (the costliest for the per-address
/// counts), port 6881.
fn host(n: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(
        (0x2001_0db8_u128 << 96) | (u128::from(n) << 64) | 1,
    ))
}

fn announce(torrent: u32, event: Event) -> Announce {
    let mut info_hash = [0x5a; 20];
    info_hash[..4].copy_from_slice(&torrent.to_be_bytes());
    Announce {
        info_hash,
        peer_id: [7; 20],
        port: 6881,
        uploaded: 0,
        downloaded: 0,
        left: 1,
        event,
        numwant: Some(0),
        compact: true,
        no_peer_id: true,
    }
}

/// Announces made to a fresh state, all at the instant given.
type Flood = Box<dyn FnOnce(&mut State, Instant)>;

/// Bytes the state holds after `flood` ran on it with the default caps.
fn bytes_held_after(flood: Flood) -> usize {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut state = State::new(ServerConfig::default());
    flood(&mut state, Instant::now());
    let held = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let s = state.stats();
    eprintln!(
        "{} torrents, {} peers: {:.1} MB, {} bytes per peer",
        s.torrents,
        s.peers,
        held as f64 / 1e6,
        held / s.peers.max(1)
    );
    held
}

#[test]
fn peers_fill_the_caps_in_bounded_memory() {
    let cfg = ServerConfig::default();
    let (torrents, total) = (cfg.max_torrents as u32, cfg.max_peers_total as u32);
    let shapes: [(&str, Flood); 5] = [
        (
            "every torrent, five times the total in peers",
            Box::new(move |st, now| {
                for n in 0..5 * total {
                    let _ = st.announce(&announce(n % torrents, Event::Started), host(n), now);
                }
            }),
        ),
        (
            "every torrent with one peer",
            Box::new(move |st, now| {
                for n in 0..torrents {
                    let _ = st.announce(&announce(n, Event::Started), host(n), now);
                }
            }),
        ),
        (
            // Each swarm grown to 60 peers, then 50 of them stopped: its map is shrunk from
            // 128 buckets to 64, the most it keeps for 10 peers.
            "every torrent's peer map grown and left sparse",
            Box::new(move |st, now| {
                let (kept, grown) = (total / torrents, 60);
                for t in 0..torrents {
                    let first = t * grown;
                    for n in first..first + grown {
                        let _ = st.announce(&announce(t, Event::Started), host(n), now);
                    }
                    for n in first + kept..first + grown {
                        let _ = st.announce(&announce(t, Event::Stopped), host(n), now);
                    }
                }
            }),
        ),
        (
            // A swarm keeps its seeds and its leechers in two maps: each grown to 25 (room
            // for 28) and left with 5, which is not yet little enough to be shrunk.
            "every torrent's seeds and leechers grown and left sparse",
            Box::new(move |st, now| {
                let (kept, grown) = (total / torrents / 2, 25);
                for t in 0..torrents {
                    let first = t * 2 * grown;
                    for n in first..first + 2 * grown {
                        let left = u64::from(n < first + grown);
                        let a = Announce {
                            left,
                            ..announce(t, Event::Started)
                        };
                        let _ = st.announce(&a, host(n), now);
                    }
                    for n in
                        (first + kept..first + grown).chain(first + grown + kept..first + 2 * grown)
                    {
                        let left = u64::from(n < first + grown);
                        let a = Announce {
                            left,
                            ..announce(t, Event::Stopped)
                        };
                        let _ = st.announce(&a, host(n), now);
                    }
                }
            }),
        ),
        (
            "full swarms",
            Box::new(move |st, now| {
                let full = ServerConfig::default().max_peers_per_torrent as u32;
                for n in 0..total {
                    let _ = st.announce(&announce(n / full, Event::Started), host(n), now);
                }
            }),
        ),
    ];
    for (shape, flood) in shapes {
        eprint!("{shape}: ");
        let held = bytes_held_after(flood);
        assert!(
            held < WORST_CASE_BYTES,
            "{shape}: {held} bytes, past the documented {WORST_CASE_BYTES}"
        );
    }
}
