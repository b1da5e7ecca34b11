#![no_main]
//! One peer's message handling in the engine (`Peer::handle`, the request pipeline and serving)
//! driven by arbitrary bytes after the handshake, against a small torrent half on disk. The first
//! byte says whether the fast extension and the extension protocol were negotiated. Nothing may
//! panic; errors end the session as they would end the connection.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pow_engine::fuzzing::peer_session(data);
});
