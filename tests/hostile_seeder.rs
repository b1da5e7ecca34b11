//! Hostile peer suite, downloader side (#10): `pow download` talks to a scripted hostile peer
//! and a scripted honest seed at once. Each case checks that the hostile peer is dropped (or
//! banned) within its limit, that the download still completes from the honest peer, that the
//! bytes on disk are the payload's byte for byte (`pow verify` and a plain compare), and that
//! the downloader's peak memory (VmHWM) stays small.
//!
//! Both peers are written here by hand on std `TcpStream`s and speak the wire bytes directly,
//! so nothing in pow's own codec can make them more polite than intended. The honest seed keeps
//! the downloader choked until the hostile peer has done its worst (its "gate"), so every
//! hostile act meets a downloader that still needs every piece.

mod common;

use common::raw_peer::{
    accept_within, frame, handshake, unique_peer_id, vm_hwm_kib, word, End, RawPeer, BITFIELD,
    HAVE, INTERESTED, PIECE, REQUEST, UNCHOKE,
};
use common::{free_port, pow, pseudo_random_bytes, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const PIECE_LEN: u32 = 65536;
const BLOCK: u32 = 16384;
/// 65 pieces, the last one short (5,000 bytes): the bitfield has 7 spare bits.
const PAYLOAD_LEN: usize = 64 * PIECE_LEN as usize + 5000;
/// Passed to the downloader as the hidden `--idle-timeout` / `--snub-timeout` (defaults 180 s
/// and 60 s would make the stall cases take minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const SNUB_TIMEOUT: Duration = Duration::from_secs(2);
/// "Dropped at once": the engine reacts as the bytes are decoded; this leaves room for a
/// loaded CI machine.
const AT_ONCE: Duration = Duration::from_secs(2);
/// The downloader's peak resident memory must stay under this.
const MAX_HWM_KIB: u64 = 64 * 1024;
/// The 1 s engine tick plus scheduling slack, on top of the idle timeout.
const TICK_SLACK: Duration = Duration::from_secs(3);

/// A torrent of a small payload, made with `pow torrent create`.
struct Setup {
    work: TempDir,
    torrent: PathBuf,
    payload: Arc<Vec<u8>>,
    info_hash: [u8; 20],
    pieces: u32,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let setup = Setup::of_length(tag, PAYLOAD_LEN);
        assert_eq!(setup.pieces, 65);
        setup
    }

    /// A payload of `length` bytes, in pieces of [`PIECE_LEN`].
    fn of_length(tag: &str, length: usize) -> Setup {
        let work = TempDir::new(&format!("hseed-{tag}"));
        let payload = pseudo_random_bytes(length, 0x9e37_79b9_7f4a_7c15);
        let file = work.path().join("payload.bin");
        std::fs::write(&file, &payload).unwrap();
        let torrent = work.path().join("payload.torrent");
        let metainfo = common::create_torrent(&file, &torrent, PIECE_LEN);
        let pieces = metainfo.geometry.piece_count();
        Setup {
            work,
            torrent,
            payload: Arc::new(payload),
            info_hash: metainfo.info_hash.0,
            pieces,
        }
    }

    fn out_dir(&self) -> PathBuf {
        self.work.path().join("out")
    }

    /// The payload bytes of one block.
    fn block(&self, index: u32, begin: u32, length: u32) -> &[u8] {
        let start = index as usize * PIECE_LEN as usize + begin as usize;
        &self.payload[start..start + length as usize]
    }

    /// Every block of the torrent: (index, begin, length).
    fn blocks(&self) -> Vec<(u32, u32, u32)> {
        let mut out = Vec::new();
        for index in 0..self.pieces {
            let size =
                (PAYLOAD_LEN - index as usize * PIECE_LEN as usize).min(PIECE_LEN as usize) as u32;
            let mut begin = 0;
            while begin < size {
                out.push((index, begin, BLOCK.min(size - begin)));
                begin += BLOCK;
            }
        }
        out
    }

    /// A bitfield with every piece set (spare bits clear).
    fn full_bitfield(&self) -> Vec<u8> {
        let mut bits = vec![0xffu8; self.pieces.div_ceil(8) as usize];
        let spare = bits.len() as u32 * 8 - self.pieces;
        *bits.last_mut().unwrap() &= 0xffu8 << spare;
        bits
    }
}

/// Opened once the hostile peer has done its part; the honest seed unchokes only then.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }
    /// Waits for the gate, at most `limit` (then goes on anyway, so no test hangs on it).
    fn wait(&self, limit: Duration) {
        let guard = self.0 .0.lock().unwrap();
        let _ = self.0 .1.wait_timeout_while(guard, limit, |open| !*open);
    }
}

fn piece_frame(index: u32, begin: u32, data: &[u8]) -> Vec<u8> {
    let mut payload = index.to_be_bytes().to_vec();
    payload.extend_from_slice(&begin.to_be_bytes());
    payload.extend_from_slice(data);
    frame(PIECE, &payload)
}

/// An honest seed: answers every request with the payload's bytes, but unchokes only once the
/// gate opens. Serves every connection the downloader makes until it closes.
fn honest_seed(setup: &Setup, gate: Gate) -> SocketAddr {
    honest_seed_slow_on_first_blocks(setup, gate, Duration::ZERO)
}

/// [`honest_seed`], waiting `delay` before it sends the first block of a piece.
fn honest_seed_slow_on_first_blocks(setup: &Setup, gate: Gate, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let payload = setup.payload.clone();
    let info_hash = setup.info_hash;
    let bitfield = setup.full_bitfield();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (payload, gate, bitfield) = (payload.clone(), gate.clone(), bitfield.clone());
            std::thread::spawn(move || {
                let _ = serve_honestly(stream, info_hash, &payload, &gate, &bitfield, delay);
            });
        }
    });
    addr
}

fn serve_honestly(
    mut stream: TcpStream,
    info_hash: [u8; 20],
    payload: &[u8],
    gate: &Gate,
    bitfield: &[u8],
    first_block_delay: Duration,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut theirs = [0u8; 68];
    stream.read_exact(&mut theirs)?;
    stream.write_all(&handshake([0; 8], info_hash, *b"-XX0001-honest-seed-"))?;
    stream.write_all(&frame(BITFIELD, bitfield))?;
    gate.wait(Duration::from_secs(30));
    stream.write_all(&frame(UNCHOKE, &[]))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        reader.read_exact(&mut body)?;
        if body.first() == Some(&REQUEST) {
            let (index, begin, length) = (word(&body, 1), word(&body, 5), word(&body, 9));
            if begin == 0 {
                std::thread::sleep(first_block_delay);
            }
            let start = index as usize * PIECE_LEN as usize + begin as usize;
            stream.write_all(&piece_frame(
                index,
                begin,
                &payload[start..start + length as usize],
            ))?;
        }
    }
}

/// `pow download ... --seed`: it stays up after completing, so a hostile peer can be watched
/// being dropped later and VmHWM read at the end. Killed when dropped.
struct Downloader {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Downloader {
    fn start(setup: &Setup, peers: &[SocketAddr]) -> Downloader {
        let port = free_port();
        let stderr = setup.work.path().join("download.log");
        let mut cmd = pow();
        cmd.arg("download")
            .arg(&setup.torrent)
            .arg("-o")
            .arg(setup.out_dir())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--json", "--seed"])
            .args(["--idle-timeout", &IDLE_TIMEOUT.as_secs().to_string()])
            .args(["--snub-timeout", &SNUB_TIMEOUT.as_secs().to_string()]);
        for peer in peers {
            cmd.args(["--peer", &peer.to_string()]);
        }
        let child = cmd
            .env("POW_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Downloader {
            child,
            port,
            stderr,
        }
    }

    /// Waits for the JSON summary `pow download` prints on completion.
    fn summary(&mut self, limit: Duration) -> serde_json::Value {
        let stdout = self.child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(limit).unwrap_or_else(|_| {
            panic!(
                "download did not complete within {limit:?}; log:\n{}",
                self.log()
            )
        });
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("summary {line:?}: {e}; log:\n{}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Downloader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a case's hostile script saw.
struct Hostile {
    /// Each offence with the time from its last byte to the downloader hanging up (`None`:
    /// still connected at the limit).
    drops: Vec<(String, Option<Duration>)>,
    /// Anything else worth printing.
    note: String,
}

/// Runs one case: an honest seed behind a gate, a hostile peer listening for the downloader,
/// `script` playing the hostile part (it gets the hostile listener, the downloader's port and
/// the gate, and must open the gate when done). Then checks the download and prints figures.
fn run_case(
    name: &str,
    script: impl FnOnce(&Setup, TcpListener, u16, Gate) -> Hostile + Send,
    drop_limit: Duration,
    check: impl FnOnce(&serde_json::Value, &str, SocketAddr),
) {
    run_prepared_case(name, |_| {}, script, drop_limit, check);
}

/// [`run_case`], with `prepare` run on the setup before the downloader starts.
fn run_prepared_case(
    name: &str,
    prepare: impl FnOnce(&Setup),
    script: impl FnOnce(&Setup, TcpListener, u16, Gate) -> Hostile + Send,
    drop_limit: Duration,
    check: impl FnOnce(&serde_json::Value, &str, SocketAddr),
) {
    let setup = Setup::new(name);
    prepare(&setup);
    let gate = Gate::default();
    let honest = honest_seed(&setup, gate.clone());
    let hostile_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hostile_addr = hostile_listener.local_addr().unwrap();
    let mut download = Downloader::start(&setup, &[hostile_addr, honest]);
    let port = download.port;
    let (hostile, summary) = std::thread::scope(|scope| {
        let script_gate = gate.clone();
        let setup = &setup;
        let hostile = scope.spawn(move || script(setup, hostile_listener, port, script_gate));
        let summary = download.summary(Duration::from_secs(60));
        let hostile = hostile.join();
        gate.open();
        (hostile, summary)
    });
    let hostile = match hostile {
        Ok(h) => h,
        Err(panic) => {
            eprintln!("downloader log:\n{}", download.log());
            std::panic::resume_unwind(panic);
        }
    };
    let hwm = vm_hwm_kib(download.child.id());
    let log = download.log();
    drop(download);

    // The bytes: `pow verify` checks every piece hash, then a plain compare.
    let out = setup.out_dir();
    let verify = pow()
        .arg("verify")
        .arg(&setup.torrent)
        .arg("--data")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{name}: pow verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let got = std::fs::read(out.join("payload.bin")).unwrap();
    assert!(got == *setup.payload, "{name}: downloaded bytes differ");

    let seconds = summary["seconds"].as_f64().unwrap();
    let from_hostile = summary["received_by_peer"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == hostile_addr.to_string())
        .map_or(0, |p| p["bytes"].as_u64().unwrap());
    let drops: Vec<String> = hostile
        .drops
        .iter()
        .map(|(what, after)| match after {
            Some(d) => format!("{what}: dropped after {} ms", d.as_millis()),
            None => format!("{what}: NOT dropped within {} s", drop_limit.as_secs()),
        })
        .collect();
    println!(
        "{name}: {}; download {:.2} s, {}/{} pieces verified, {} hash failures, {} B wasted, \
         {} B credited to the hostile peer, VmHWM {} KiB{}",
        drops.join("; "),
        seconds,
        summary["pieces_verified"],
        summary["pieces_total"],
        summary["hash_failures"],
        summary["wasted"],
        from_hostile,
        hwm,
        if hostile.note.is_empty() {
            String::new()
        } else {
            format!("; {}", hostile.note)
        }
    );
    assert_eq!(summary["complete"], true, "{name}: {summary}");
    assert_eq!(summary["pieces_verified"], setup.pieces, "{name}");
    for (what, after) in &hostile.drops {
        let after = after.unwrap_or_else(|| panic!("{name}: {what}: not dropped; log:\n{log}"));
        assert!(
            after <= drop_limit,
            "{name}: {what}: dropped only after {after:?} (limit {drop_limit:?})"
        );
    }
    assert!(
        hwm < MAX_HWM_KIB,
        "{name}: downloader VmHWM {hwm} KiB over {MAX_HWM_KIB} KiB"
    );
    check(&summary, &log, hostile_addr);
}

/// The log says the downloader closed a peer whose address contains `addr` for a reason
/// containing `reason`.
fn assert_closed_for(log: &str, addr: impl std::fmt::Display, reason: &str) {
    let addr = addr.to_string();
    assert!(
        log.lines().any(|l| l.contains(&addr) && l.contains(reason)),
        "no `{reason}` for {addr} in the log:\n{log}"
    );
}

/// Hash failures: none for every case but the bad-hash one (hostile bytes never reached a
/// hash check, so none was written into a piece).
fn no_hash_failures(summary: &serde_json::Value) {
    assert_eq!(summary["hash_failures"], 0, "{summary}");
}

#[test]
fn length_prefix_2_pow_32_minus_1_is_refused_at_once() {
    run_case(
        "huge-prefix",
        |setup, listener, port, gate| {
            let mut drops = Vec::new();
            // On the connection the downloader dialled: the 4 prefix bytes and nothing more.
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            peer.stream.write_all(&[0xff; 4]).unwrap();
            drops.push((
                "ff ff ff ff alone (outgoing)".to_string(),
                peer.closed_within(AT_ONCE * 5),
            ));
            // On a connection to the downloader: the prefix and a `piece` id.
            let mut peer = RawPeer::dial(port, setup.info_hash);
            peer.read_handshake();
            peer.stream
                .write_all(&[0xff, 0xff, 0xff, 0xff, PIECE])
                .unwrap();
            drops.push((
                "ff ff ff ff 07 (incoming)".to_string(),
                peer.closed_within(AT_ONCE * 5),
            ));
            gate.open();
            Hostile {
                drops,
                note: String::new(),
            }
        },
        AT_ONCE,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "4294967295 bytes is longer");
        },
    );
}

#[test]
fn bad_bitfields_are_refused() {
    run_case(
        "bad-bitfield",
        |setup, listener, port, gate| {
            let mut drops = Vec::new();
            // One byte too many.
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            let mut long = setup.full_bitfield();
            long.push(0);
            peer.send(BITFIELD, &long).unwrap();
            drops.push((
                "bitfield of 10 bytes for 65 pieces (outgoing)".to_string(),
                peer.closed_within(AT_ONCE * 5),
            ));
            // Right size, spare bits set.
            let mut peer = RawPeer::dial(port, setup.info_hash);
            peer.read_handshake();
            let spare = vec![0xffu8; setup.pieces.div_ceil(8) as usize];
            peer.send(BITFIELD, &spare).unwrap();
            drops.push((
                "bitfield with spare bits set (incoming)".to_string(),
                peer.closed_within(AT_ONCE * 5),
            ));
            gate.open();
            Hostile {
                drops,
                note: String::new(),
            }
        },
        AT_ONCE,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "bitfield of 10 bytes");
            assert_closed_for(log, "127.0.0.1", "spare bits set");
        },
    );
}

#[test]
fn have_all_have_none_flapping_ends_the_connection_but_repeated_bitfields_do_not() {
    run_case(
        "flapping",
        |setup, listener, port, gate| {
            // BEP 6 have-all/have-none, 5 bytes each: every pair says it lost every piece.
            let fast = [0, 0, 0, 0, 0, 0, 0, 0x04];
            let mut peer = RawPeer::accept_reserved(&listener, setup.info_hash, fast);
            let (have_all, have_none) = (frame(0x0E, &[]), frame(0x0F, &[]));
            let flood: Vec<u8> = (0..1000)
                .flat_map(|_| [have_all.clone(), have_none.clone()].concat())
                .collect();
            let _ = peer.stream.write_all(&flood);
            let drops = vec![(
                "1,000 have-all/have-none pairs (outgoing)".to_string(),
                peer.closed_within(AT_ONCE * 5),
            )];
            // aria2 sends a fresh bitfield where others send `have`s: each says more, and a
            // peer that sends them is kept.
            let mut peer = RawPeer::dial(port, setup.info_hash);
            peer.read_handshake();
            let full = setup.full_bitfield();
            for filled in 0..=full.len() {
                let mut growing = vec![0u8; full.len()];
                growing[..filled].copy_from_slice(&full[..filled]);
                peer.send(BITFIELD, &growing).unwrap();
            }
            for _ in 0..100 {
                peer.send(BITFIELD, &full).unwrap();
            }
            let kept = peer.closed_within(Duration::from_millis(500));
            assert_eq!(
                kept, None,
                "a peer sending 110 bitfields that only grow was dropped"
            );
            drop(peer);
            gate.open();
            Hostile {
                drops,
                note: "110 growing or repeated bitfields (incoming): kept".to_string(),
            }
        },
        AT_ONCE,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "lost pieces it had");
            let flaps = log.matches("lost pieces it had").count();
            assert_eq!(flaps, 1, "only the flapping peer is closed for it:\n{log}");
        },
    );
}

#[test]
fn have_out_of_range_is_refused() {
    run_case(
        "have-range",
        |setup, listener, port, gate| {
            let mut drops = Vec::new();
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            peer.send(HAVE, &setup.pieces.to_be_bytes()).unwrap();
            drops.push((
                "have 65 of 65 pieces (outgoing)".to_string(),
                peer.closed_within(AT_ONCE * 5),
            ));
            let mut peer = RawPeer::dial(port, setup.info_hash);
            peer.read_handshake();
            peer.send(HAVE, &u32::MAX.to_be_bytes()).unwrap();
            drops.push((
                "have 2^32-1 (incoming)".to_string(),
                peer.closed_within(AT_ONCE * 5),
            ));
            gate.open();
            Hostile {
                drops,
                note: String::new(),
            }
        },
        AT_ONCE,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "have for a piece that does not exist");
        },
    );
}

/// A peer we dial that breaks the protocol on every connection is dialed again later each
/// time (10 s, then 20 s, as after failed dials), and after the third breach no more. Before,
/// each connection that had got past the handshake counted as a good dial, and the address was
/// redialed every 10 s for as long as the session ran.
#[test]
fn a_peer_breaking_the_protocol_each_time_is_redialed_later_each_time_then_banned() {
    const WATCH_AFTER_BAN: Duration = Duration::from_secs(25);
    run_case(
        "violations",
        |setup, listener, _port, gate| {
            let started = Instant::now();
            let mut dials: Vec<Duration> = Vec::new();
            let mut drops = Vec::new();
            while dials.len() < 3 {
                let stream = accept_within(&listener, Duration::from_secs(40))
                    .unwrap_or_else(|| panic!("dialed only at {dials:?}"));
                dials.push(started.elapsed());
                let mut peer = RawPeer { stream };
                peer.read_handshake();
                let answer = handshake([0; 8], setup.info_hash, unique_peer_id());
                peer.stream.write_all(&answer).unwrap();
                peer.send(HAVE, &setup.pieces.to_be_bytes()).unwrap();
                drops.push((
                    format!("have 65 of 65 pieces (dial {})", dials.len()),
                    peer.closed_within(AT_ONCE * 5),
                ));
                gate.open();
            }
            let fourth = accept_within(&listener, WATCH_AFTER_BAN);
            let at: Vec<String> = dials
                .iter()
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .collect();
            assert!(
                fourth.is_none(),
                "dialed again after the third breach (dials at {at:?})"
            );
            let waits = [dials[1] - dials[0], dials[2] - dials[1]];
            assert!(
                waits[0] >= Duration::from_secs(9) && waits[1] >= Duration::from_secs(19),
                "redials did not back off: dials at {at:?}"
            );
            Hostile {
                drops,
                note: format!(
                    "dialed at {}, not again in the {} s after",
                    at.join(", "),
                    WATCH_AFTER_BAN.as_secs()
                ),
            }
        },
        AT_ONCE,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "have for a piece that does not exist");
            assert!(
                log.contains(&format!("{hostile}: banned after 3 protocol violations")),
                "not banned:\n{log}"
            );
        },
    );
}

#[test]
fn unrequested_blocks_are_never_written_and_end_the_connection() {
    let blocks_sent = Arc::new(Mutex::new(0usize));
    let sent = blocks_sent.clone();
    run_case(
        "unrequested",
        move |setup, listener, port, gate| {
            // It never unchokes us, so nothing is ever asked of it; it sends every block of the
            // torrent, each with one byte flipped, as fast as it can.
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            let started = Instant::now();
            let mut n = 0;
            for (index, begin, length) in setup.blocks() {
                let mut data = setup.block(index, begin, length).to_vec();
                data[0] ^= 0xff;
                if peer
                    .stream
                    .write_all(&piece_frame(index, begin, &data))
                    .is_err()
                {
                    break;
                }
                n += 1;
            }
            *sent.lock().unwrap() = n;
            let closed = peer.closed_within(AT_ONCE * 5);
            let mut drops = vec![(
                format!("unrequested blocks before any piece ({n} written into the socket)"),
                closed.map(|_| started.elapsed()),
            )];
            // Again once every piece is verified: a second peer dials in, waits until the
            // downloader has announced every piece, then sends every block with a bad byte.
            let mut late = RawPeer::dial(port, setup.info_hash);
            late.read_handshake();
            gate.open();
            let mut verified = vec![false; setup.pieces as usize];
            while verified.contains(&false) {
                match late.read(Duration::from_secs(30)) {
                    Ok((HAVE, p)) => verified[word(&p, 0) as usize] = true,
                    Ok((BITFIELD, p)) => {
                        for (i, v) in verified.iter_mut().enumerate() {
                            *v |= p[i / 8] & (0x80 >> (i % 8)) != 0;
                        }
                    }
                    Ok(_) => {}
                    Err(end) => panic!("waiting for every piece: {end:?}"),
                }
            }
            let started = Instant::now();
            let mut n = 0;
            for (index, begin, length) in setup.blocks() {
                let mut data = setup.block(index, begin, length).to_vec();
                data[0] ^= 0xff;
                if late
                    .stream
                    .write_all(&piece_frame(index, begin, &data))
                    .is_err()
                {
                    break;
                }
                n += 1;
            }
            drops.push((
                format!("unrequested blocks after completion ({n} written into the socket)"),
                late.closed_within(AT_ONCE * 5).map(|_| started.elapsed()),
            ));
            Hostile {
                drops,
                note: String::new(),
            }
        },
        AT_ONCE,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "too many blocks we did not request");
            // The limit's worth (17 blocks) was read before the hang-up (the summary is
            // printed before the second peer's blocks come).
            let wasted = summary["wasted"].as_u64().unwrap();
            assert!(wasted >= 17 * u64::from(BLOCK), "wasted {wasted}");
            assert_eq!(
                log.matches("too many blocks we did not request").count(),
                2,
                "{log}"
            );
        },
    );
    assert!(*blocks_sent.lock().unwrap() >= 17);
}

#[test]
fn bad_pieces_from_one_peer_get_it_banned() {
    run_case(
        "bad-hash",
        |setup, listener, _port, gate| {
            // Serves what is asked, but the first block of each of the first 5 pieces it
            // serves has a byte flipped; then honest data.
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            peer.send(BITFIELD, &setup.full_bitfield()).unwrap();
            peer.send(UNCHOKE, &[]).unwrap();
            let mut corrupted: Vec<u32> = Vec::new();
            let mut last_bad = Instant::now();
            let mut served = 0;
            let closed = loop {
                match peer.read(Duration::from_secs(10)) {
                    Ok((REQUEST, p)) => {
                        let (index, begin, length) = (word(&p, 0), word(&p, 4), word(&p, 8));
                        let mut data = setup.block(index, begin, length).to_vec();
                        if corrupted.len() < 5 && begin == 0 && !corrupted.contains(&index) {
                            corrupted.push(index);
                            data[100] ^= 0x01;
                            last_bad = Instant::now();
                        }
                        if peer
                            .stream
                            .write_all(&piece_frame(index, begin, &data))
                            .is_err()
                        {
                            break Some(last_bad.elapsed());
                        }
                        served += 1;
                    }
                    Ok(_) => {}
                    Err(End::Closed) => break Some(last_bad.elapsed()),
                    Err(End::Quiet) => break None,
                }
            };
            gate.open();
            Hostile {
                drops: vec![(
                    format!(
                        "{} pieces with a bad block (pieces {corrupted:?}), {served} blocks served",
                        corrupted.len()
                    ),
                    closed,
                )],
                note: String::new(),
            }
        },
        Duration::from_secs(5),
        |summary, log, hostile| {
            assert!(
                log.contains(&format!("{hostile}: banned after 3 bad pieces")),
                "not banned:\n{log}"
            );
            let failures = summary["hash_failures"].as_u64().unwrap();
            assert!((3..=5).contains(&failures), "{failures} hash failures");
            // The honest seed took no strike: it was never banned.
            assert_eq!(log.matches("banned after").count(), 1, "{log}");
        },
    );
}

/// A peer that connects to the downloader itself (it is not dialed) and serves bad pieces is
/// banned by its host: back from another port, it is closed at once. Banned by address alone
/// (a port its own system picked), it started over with each new connection.
#[test]
fn a_banned_peer_that_connected_to_us_is_not_let_back_in_from_another_port() {
    run_case(
        "incoming-ban",
        |setup, listener, port, gate| {
            // Not dialed: it dials the downloader.
            drop(listener);
            common::wait_listening(port, "pow download");
            let mut peer = RawPeer::connect(port, setup.info_hash);
            peer.send(BITFIELD, &setup.full_bitfield()).unwrap();
            peer.send(UNCHOKE, &[]).unwrap();
            let mut served = 0;
            let mut last = Instant::now();
            let closed = loop {
                match peer.read(Duration::from_secs(10)) {
                    Ok((REQUEST, p)) => {
                        let (index, begin, length) = (word(&p, 0), word(&p, 4), word(&p, 8));
                        let mut data = setup.block(index, begin, length).to_vec();
                        data[100] ^= 0x01;
                        last = Instant::now();
                        if peer
                            .stream
                            .write_all(&piece_frame(index, begin, &data))
                            .is_err()
                        {
                            break Some(last.elapsed());
                        }
                        served += 1;
                    }
                    Ok(_) => {}
                    Err(End::Closed) => break Some(last.elapsed()),
                    Err(End::Quiet) => break None,
                }
            };
            let mut back = RawPeer::dial(port, setup.info_hash);
            // At once: the idle timeout (3 s) would close it too, later.
            let back_closed = back.closed_within(AT_ONCE);
            gate.open();
            Hostile {
                drops: vec![
                    (format!("every block bad ({served} served)"), closed),
                    ("back from another port".to_string(), back_closed),
                ],
                note: String::new(),
            }
        },
        Duration::from_secs(5),
        |_summary, log, _hostile| {
            assert!(
                log.contains("banned after 3 bad pieces; no more connections from 127.0.0.1"),
                "{log}"
            );
        },
    );
}

/// A peer that connected to us serves `pieces` whole pieces, every block corrupted, on a new
/// connection; returns the connection (still open) and how many blocks it served.
fn serve_bad_pieces(setup: &Setup, port: u16, pieces: usize) -> (RawPeer, usize) {
    let mut peer = RawPeer::connect(port, setup.info_hash);
    peer.send(BITFIELD, &setup.full_bitfield()).unwrap();
    peer.send(UNCHOKE, &[]).unwrap();
    let mut served_of: std::collections::HashMap<u32, u32> = Default::default();
    let mut served = 0;
    while served_of
        .values()
        .filter(|&&n| n == PIECE_LEN / BLOCK)
        .count()
        < pieces
    {
        match peer.read(Duration::from_secs(10)) {
            Ok((REQUEST, p)) => {
                let (index, begin, length) = (word(&p, 0), word(&p, 4), word(&p, 8));
                let mut data = setup.block(index, begin, length).to_vec();
                data[100] ^= 0x01;
                peer.stream
                    .write_all(&piece_frame(index, begin, &data))
                    .unwrap();
                *served_of.entry(index).or_default() += 1;
                served += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("the downloader stopped asking after {served} blocks: {e:?}"),
        }
    }
    (peer, served)
}

/// Bad pieces from a peer that connected to us count against its host across connections:
/// counted by address, one that sent two, went, and came back from another port for one more
/// (and again, for ever) was never banned.
#[test]
fn bad_pieces_count_against_a_peer_that_connected_to_us_across_its_connections() {
    run_case(
        "incoming-strikes",
        |setup, listener, port, gate| {
            drop(listener);
            common::wait_listening(port, "pow download");
            let (first, served) = serve_bad_pieces(setup, port, 2);
            // Its two pieces checked (and struck) before it goes.
            std::thread::sleep(Duration::from_millis(500));
            drop(first);
            let (mut back, more) = serve_bad_pieces(setup, port, 1);
            let closed = back.closed_within(AT_ONCE);
            gate.open();
            Hostile {
                drops: vec![(
                    format!(
                        "two bad pieces ({served} blocks), then one from another port ({more})"
                    ),
                    closed,
                )],
                note: String::new(),
            }
        },
        Duration::from_secs(5),
        |_summary, log, _hostile| {
            assert!(
                log.contains("banned after 3 bad pieces; no more connections from 127.0.0.1"),
                "{log}"
            );
        },
    );
}

/// A block that answers a request with the right piece and offset but not the length asked
/// (here half of it) ends the connection at once. It used to be counted as wasted while the
/// request stayed booked to the peer, its pipeline slot free again: a peer answering every
/// request so booked every block of the torrent and was never dropped.
#[test]
fn blocks_of_another_length_than_asked_end_the_connection() {
    run_case(
        "wrong-length",
        |setup, listener, _port, gate| {
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            peer.send(BITFIELD, &setup.full_bitfield()).unwrap();
            peer.send(UNCHOKE, &[]).unwrap();
            let mut answered = 0;
            let mut last = Instant::now();
            let closed = loop {
                match peer.read(Duration::from_secs(10)) {
                    Ok((REQUEST, p)) => {
                        let (index, begin, length) = (word(&p, 0), word(&p, 4), word(&p, 8));
                        let data = &setup.block(index, begin, length)[..length as usize / 2];
                        last = Instant::now();
                        if peer
                            .stream
                            .write_all(&piece_frame(index, begin, data))
                            .is_err()
                        {
                            break Some(last.elapsed());
                        }
                        answered += 1;
                    }
                    Ok(_) => {}
                    Err(End::Closed) => break Some(last.elapsed()),
                    Err(End::Quiet) => break None,
                }
            };
            gate.open();
            Hostile {
                drops: vec![(
                    format!("blocks of half the length asked ({answered} answers)"),
                    closed,
                )],
                note: String::new(),
            }
        },
        AT_ONCE,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "sent a block of another length than asked");
        },
    );
}

/// A peer that slips a bad block into pieces an honest seed serves the rest of: each such piece
/// fails and is fetched again from the honest seed, and once it verifies, the block that differs
/// from the good one names its sender, which is banned; the honest seed takes no strike.
/// Striking every sender (as before) banned the honest seed with it after three such pieces,
/// and the download could not finish.
#[test]
fn a_bad_block_in_a_piece_others_served_bans_only_its_sender() {
    const CHOKE: u8 = 0;
    run_case(
        "smart-ban",
        |setup, listener, _port, gate| {
            // Answers only the first block of the first 3 pieces it is asked for, each with a
            // byte flipped, then chokes: the rest of those pieces comes from the honest seed.
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            peer.send(BITFIELD, &setup.full_bitfield()).unwrap();
            peer.send(UNCHOKE, &[]).unwrap();
            let mut poisoned: Vec<u32> = Vec::new();
            while poisoned.len() < 3 {
                match peer.read(Duration::from_secs(10)) {
                    Ok((REQUEST, p)) => {
                        let (index, begin, length) = (word(&p, 0), word(&p, 4), word(&p, 8));
                        if begin == 0 && !poisoned.contains(&index) {
                            let mut data = setup.block(index, begin, length).to_vec();
                            data[100] ^= 0x01;
                            peer.stream
                                .write_all(&piece_frame(index, begin, &data))
                                .unwrap();
                            poisoned.push(index);
                        }
                    }
                    Ok(_) => {}
                    Err(end) => panic!("waiting for requests: {end:?}"),
                }
            }
            peer.send(CHOKE, &[]).unwrap();
            gate.open();
            let closed = peer.closed_within(Duration::from_secs(20));
            Hostile {
                drops: vec![(
                    format!(
                        "a bad first block in pieces {poisoned:?}, the rest from the honest seed"
                    ),
                    closed,
                )],
                note: String::new(),
            }
        },
        Duration::from_secs(5),
        |summary, log, hostile| {
            assert!(
                log.contains(&format!("{hostile}: banned: its block at 0 of piece")),
                "not banned by its block:\n{log}"
            );
            assert_eq!(summary["hash_failures"], 3, "{summary}");
            // The honest seed took no strike: it was never banned.
            assert_eq!(log.matches(": banned").count(), 1, "{log}");
            // The failed pieces were fetched again at once (0.01 s here). Before, the honest
            // seed, told `not interested` while the last pieces were being checked, was not
            // told `interested` again when they failed: it sat idle until the idle timeout
            // closed it, and the download waited for a redial (12 s).
            let seconds = summary["seconds"].as_f64().unwrap();
            assert!(
                seconds < 5.0,
                "the failed pieces waited: {seconds:.2} s\n{log}"
            );
        },
    );
}

/// A peer that answers only the first block of each piece it is asked for, at once and always
/// with the same wrong bytes, while an honest seed sends that block a little later: in end-game
/// its block wins every attempt at a piece the honest seed sends the rest of. Each such
/// attempt failed with blocks from both, which strikes nobody (smart ban waits for the piece to
/// verify), and the one-piece download never ended. Now both go on parole after the first:
/// whole pieces of their own. The honest seed's verifies, and the block that differs bans the
/// hostile peer. (When the hostile peer opens the piece first, it stalls after its bad block
/// until the snub timeout gives the rest to the honest seed, and one more attempt fails: 5-12 s
/// here instead of 0.6.)
#[test]
fn a_peer_that_poisons_every_attempt_at_a_piece_cannot_keep_it_from_verifying() {
    let setup = Setup::of_length("parole", PIECE_LEN as usize);
    assert_eq!(setup.pieces, 1);
    let gate = Gate::default();
    gate.open();
    let honest = honest_seed_slow_on_first_blocks(&setup, gate, Duration::from_millis(300));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hostile_addr = listener.local_addr().unwrap();
    let mut download = Downloader::start(&setup, &[hostile_addr, honest]);
    let poisoned = std::thread::scope(|scope| {
        let setup = &setup;
        let hostile = scope.spawn(move || {
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            peer.send(BITFIELD, &setup.full_bitfield()).unwrap();
            peer.send(UNCHOKE, &[]).unwrap();
            let mut poisoned = 0;
            loop {
                match peer.read(Duration::from_secs(30)) {
                    Ok((REQUEST, p)) if word(&p, 4) == 0 => {
                        let (index, length) = (word(&p, 0), word(&p, 8));
                        let mut data = setup.block(index, 0, length).to_vec();
                        data[100] ^= 0x01;
                        let sent = peer.stream.write_all(&piece_frame(index, 0, &data));
                        if sent.is_err() {
                            return poisoned;
                        }
                        poisoned += 1;
                    }
                    Ok(_) => {}
                    Err(_) => return poisoned,
                }
            }
        });
        let summary = download.summary(Duration::from_secs(40));
        // The ban follows the piece's verdict by a read of it, which may come after the
        // summary.
        let banned = format!("{hostile_addr}: banned");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !download.log().contains(&banned) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = download.log();
        println!(
            "parole: complete in {:.2} s, {} hash failures",
            summary["seconds"].as_f64().unwrap(),
            summary["hash_failures"]
        );
        assert_eq!(summary["complete"], true, "{summary}");
        assert!(log.contains(&banned), "the hostile peer is banned:\n{log}");
        assert_eq!(
            log.matches(": banned").count(),
            1,
            "the honest seed is not:\n{log}"
        );
        drop(download);
        hostile.join().unwrap()
    });
    println!("parole: the hostile peer sent {poisoned} bad first blocks");
    assert!(poisoned >= 1);
}

/// A peer that has every piece the downloader still wants (not all: it lacks the last, which
/// the downloader already has on disk), unchokes it, and then sends nothing but keep-alives.
/// Its requests time out (snubbed), yet it stays a lender; the honest seed, spared while
/// lenders have the pieces, must still be asked. It never was: the seed had sent nothing, so
/// its best rate was 0, and "the lenders send less than half the seed's best rate" never held.
#[test]
fn a_lender_that_sends_nothing_does_not_keep_the_seed_from_being_asked() {
    const NOT_INTERESTED: u8 = 3;
    run_prepared_case(
        "silent-lender",
        |setup| {
            // The last piece already downloaded: zeros before it, its bytes in place.
            let last = 64 * PIECE_LEN as usize;
            let mut on_disk = vec![0u8; PAYLOAD_LEN];
            on_disk[last..].copy_from_slice(&setup.payload[last..]);
            std::fs::create_dir_all(setup.out_dir()).unwrap();
            std::fs::write(setup.out_dir().join("payload.bin"), on_disk).unwrap();
        },
        |setup, listener, _port, gate| {
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            let mut bits = setup.full_bitfield();
            bits[8] = 0; // piece 64 of 65
            peer.send(BITFIELD, &bits).unwrap();
            peer.send(UNCHOKE, &[]).unwrap();
            // The seed unchokes once the downloader is asking this peer: a lender by then.
            let mut requests = peer.wait_for(REQUEST).len();
            gate.open();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                match peer.read(Duration::from_secs(1)) {
                    Ok((REQUEST, _)) => requests += 1,
                    Ok((NOT_INTERESTED, _)) => break,
                    Ok(_) => {}
                    Err(End::Quiet) => {
                        if peer.stream.write_all(&[0; 4]).is_err() {
                            break;
                        }
                    }
                    Err(End::Closed) => break,
                }
            }
            Hostile {
                drops: Vec::new(),
                note: format!("the silent lender was sent {requests} requests"),
            }
        },
        AT_ONCE,
        |summary, log, _hostile| {
            no_hash_failures(summary);
            let seconds = summary["seconds"].as_f64().unwrap();
            assert!(
                seconds < 10.0,
                "the seed was asked late: {seconds:.2} s\n{log}"
            );
        },
    );
}

#[test]
fn a_request_flood_while_choked_ends_the_connection() {
    run_case(
        "flood",
        |setup, listener, _port, gate| {
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            peer.send(INTERESTED, &[]).unwrap();
            let mut burst = Vec::new();
            let blocks = setup.blocks();
            for i in 0..10_000 {
                let (index, begin, length) = blocks[i % blocks.len()];
                let mut p = index.to_be_bytes().to_vec();
                p.extend_from_slice(&begin.to_be_bytes());
                p.extend_from_slice(&length.to_be_bytes());
                burst.extend_from_slice(&frame(REQUEST, &p));
            }
            let started = Instant::now();
            // pow may hang up before it has read everything: a failed write is expected.
            let _ = peer.stream.write_all(&burst);
            let closed = peer.closed_within(AT_ONCE * 5);
            gate.open();
            Hostile {
                drops: vec![(
                    "10,000 requests while choked".to_string(),
                    closed.map(|_| started.elapsed()),
                )],
                note: String::new(),
            }
        },
        AT_ONCE,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "too many requests while choked");
            assert_eq!(summary["uploaded"], 0);
        },
    );
}

#[test]
fn a_handshake_for_another_torrent_is_dropped_at_once() {
    run_case(
        "wrong-hash",
        |setup, listener, port, gate| {
            let mut other = setup.info_hash;
            other[0] ^= 0xff;
            let mut drops = Vec::new();
            let mut peer = RawPeer::accept(&listener, setup.info_hash, other);
            let sent = Instant::now();
            drops.push((
                "answer with another info-hash (outgoing)".to_string(),
                peer.closed_within(AT_ONCE * 5).map(|_| sent.elapsed()),
            ));
            let mut peer = RawPeer::dial(port, other);
            let sent = Instant::now();
            drops.push((
                "dial with another info-hash (incoming)".to_string(),
                peer.closed_within(AT_ONCE * 5).map(|_| sent.elapsed()),
            ));
            gate.open();
            Hostile {
                drops,
                note: String::new(),
            }
        },
        AT_ONCE,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "handshake for another torrent");
            assert!(
                summary["received_by_peer"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["peer"] != hostile.to_string()),
                "{summary}"
            );
        },
    );
}

#[test]
fn a_peer_that_stops_mid_message_is_dropped_after_the_idle_timeout() {
    run_case(
        "stall",
        |setup, listener, _port, gate| {
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            peer.send(BITFIELD, &setup.full_bitfield()).unwrap();
            peer.send(UNCHOKE, &[]).unwrap();
            let (index, begin, length) = peer.next_request(Duration::from_secs(10));
            let whole = piece_frame(index, begin, setup.block(index, begin, length));
            peer.stream.write_all(&whole[..whole.len() / 2]).unwrap();
            let stalled = Instant::now();
            // The honest seed may serve now; this peer sends nothing more, ever.
            gate.open();
            let closed = peer.closed_within(IDLE_TIMEOUT + TICK_SLACK + Duration::from_secs(5));
            Hostile {
                drops: vec![(
                    "half a piece message, then silence".to_string(),
                    closed.map(|_| stalled.elapsed()),
                )],
                note: String::new(),
            }
        },
        IDLE_TIMEOUT + TICK_SLACK,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "silent for too long");
            // Its blocks went to the honest seed: the download did not wait for the timeout.
            let seconds = summary["seconds"].as_f64().unwrap();
            assert!(seconds < IDLE_TIMEOUT.as_secs_f64(), "took {seconds} s");
        },
    );
}

#[test]
fn a_peer_sending_one_byte_a_second_is_not_waited_for() {
    run_case(
        "trickle",
        |setup, listener, _port, gate| {
            let mut peer = RawPeer::accept(&listener, setup.info_hash, setup.info_hash);
            peer.send(BITFIELD, &setup.full_bitfield()).unwrap();
            peer.send(UNCHOKE, &[]).unwrap();
            let (index, begin, length) = peer.next_request(Duration::from_secs(10));
            let whole = piece_frame(index, begin, setup.block(index, begin, length));
            gate.open();
            let started = Instant::now();
            let limit = IDLE_TIMEOUT + TICK_SLACK + Duration::from_secs(5);
            let mut sent = 0;
            let mut closed = None;
            for byte in &whole {
                if peer.stream.write_all(&[*byte]).is_err() {
                    closed = Some(started.elapsed());
                    break;
                }
                sent += 1;
                // A second between bytes, reading (and dropping) what the downloader sends;
                // EOF or a reset means it hung up.
                if peer.closed_within(Duration::from_secs(1)).is_some() {
                    closed = Some(started.elapsed());
                    break;
                }
                if started.elapsed() > limit {
                    break;
                }
            }
            Hostile {
                drops: vec![(
                    format!("1 byte/s ({sent} of a {}-byte message sent)", whole.len()),
                    closed,
                )],
                note: String::new(),
            }
        },
        IDLE_TIMEOUT + TICK_SLACK,
        |summary, log, hostile| {
            no_hash_failures(summary);
            assert_closed_for(log, hostile, "silent for too long");
            let seconds = summary["seconds"].as_f64().unwrap();
            assert!(seconds < IDLE_TIMEOUT.as_secs_f64(), "took {seconds} s");
        },
    );
}
