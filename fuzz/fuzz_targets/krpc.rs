#![no_main]
//! A UDP datagram as a DHT node reads it: no panic, and a message read back from its own
//! encoding is stable (the first encoding may normalise: IPv4-mapped peers, long names).

use libfuzzer_sys::fuzz_target;
use pow_dht::krpc::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let once = Message::decode(&message.encode()).expect("our own encoding");
        let twice = Message::decode(&once.encode()).expect("our own encoding");
        assert_eq!(once, twice);
    }
});
