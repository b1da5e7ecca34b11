#![no_main]
//! Datagrams as one uTP connection reads them, on the accepting or the dialing side (the first
//! byte chooses), each preceded by its length byte: no panic and no stuck accounting, whatever
//! the packets claim (acks of packets never sent, selective acks far past the window, FINs,
//! resets, a zero window), while the application writes, reads and time passes.

use libfuzzer_sys::fuzz_target;
use pow_utp::conn::{Connection, State, RECV_BUFFER};
use pow_utp::packet::{self, Header, Kind};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&side, mut rest)) = data.split_first() else {
        return;
    };
    let mut now = Instant::now();
    let mut conn = if side & 1 == 0 {
        let syn = Header {
            kind: Kind::Syn,
            conn_id: 1000,
            timestamp: 0,
            timestamp_diff: 0,
            wnd: 1 << 20,
            seq: 1,
            ack: 0,
        };
        Connection::accept(&syn, 500, RECV_BUFFER, now)
    } else {
        Connection::dial(1000, RECV_BUFFER, now)
    };
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        if let Ok(p) = packet::decode(datagram) {
            conn.on_packet(&p, now);
        }
        conn.write(&[7u8; 3000], now);
        let _ = conn.read(usize::MAX, now);
        now += Duration::from_millis(len as u64 * 7);
        conn.on_tick(now);
        conn.outgoing.clear();
        if conn.state == State::Closed {
            assert!(conn.send_room() == 0);
        }
    }
});
