#![no_main]
//! What a hostile or broken tracker can send: a whole HTTP response (head, Content-Length or
//! chunked body, then the bencoded announce/scrape body) and UDP reply datagrams. The first
//! byte picks which; nothing may panic, and the body cap must hold.

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let _ = runtime()
                .block_on(pow_tracker::fuzzing::http_announce_response(rest, 4096));
        }
        1 => {
            let _ = pow_tracker::parse_announce(rest);
            let _ = pow_tracker::parse_scrape(rest);
        }
        _ => {
            if rest.len() >= 5 {
                let tid = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                pow_tracker::fuzzing::udp_reply(&rest[4..], tid, usize::from(rest[4] % 8));
            }
        }
    }
});
