//! Hooks for the `peer_session` fuzz target: one peer's message handling driven without a
//! socket, against a small torrent whose first half is on disk.

use crate::{EngineConfig, Torrent};
use pow_metainfo::create::{create, CreateOptions};
use pow_metainfo::Metainfo;
use pow_picker::Picker;
use pow_storage::Storage;
use pow_wire::Bitfield;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// 8 pieces of 16 KiB plus a short one.
const CONTENT_LEN: usize = 8 * 16384 + 1000;

struct Fixture {
    metainfo: Arc<Metainfo>,
    data: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pow-peer-fuzz-{}", std::process::id()));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("fuzz dir");
        let content: Vec<u8> = (0..CONTENT_LEN).map(|i| (i * 7 % 251) as u8).collect();
        let file = data.join("payload.bin");
        std::fs::write(&file, &content).expect("fuzz payload");
        let options = CreateOptions {
            piece_length: Some(16384),
            threads: Some(1),
            ..CreateOptions::default()
        };
        let metainfo = Arc::new(create(&file, &options).expect("fuzz torrent").metainfo);
        Fixture { metainfo, data }
    })
}

/// Runs one fuzz input: its first byte sets whether the fast extension and the extension
/// protocol were negotiated; the rest is the peer's byte stream after the handshake.
pub fn peer_session(input: &[u8]) {
    let Some((&flags, stream)) = input.split_first() else {
        return;
    };
    let fixture = fixture();
    // A runtime per input, dropped with every task the session left: an input then frees all
    // it allocated, so libFuzzer's leak check (a heap scan after any input that does not) stays
    // quiet. With one shared runtime, tasks left from each input made every input pay for a scan:
    // 121 inputs/s against 2,324.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let storage = Arc::new(Storage::new(fixture.metainfo.clone(), &fixture.data).expect("storage"));
    let pieces = fixture.metainfo.geometry.piece_count();
    let mut have = Bitfield::new(pieces);
    for piece in 0..pieces / 2 {
        have.set(piece);
    }
    let picker = Picker::new(fixture.metainfo.geometry.clone(), have);
    // The fuzzed peer fills the only slot, so the addresses its peer exchange names are
    // remembered but never dialed: an input must not reach the network (nor could it: the
    // runtime has no IO driver).
    let config = EngineConfig {
        max_peers: 1,
        ..EngineConfig::default()
    };
    let torrent = runtime
        .block_on(Torrent::start(storage, picker, config))
        .expect("session");
    crate::peer::fuzz_session(&torrent.inner, flags & 1 != 0, flags & 2 != 0, stream);
    torrent.shutdown();
    // Let spawned work (piece verification) run to its end.
    runtime.block_on(async {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    });
}
