//! Fast extension (BEP 6, issue #11 acceptance 3): a libtorrent seed says have-all to pow; a
//! `pow seed` says have-all to a peer that set the fast bit (and a bitfield to one that did
//! not), and rejects a request made while choked instead of dropping it in silence.

mod common;

use common::raw_peer::{request_payload, End, RawPeer, BITFIELD, INTERESTED, PIECE, UNCHOKE};
use common::{pow, same_bytes, Lab, TempDir};
use std::time::Duration;

const HAVE_ALL: u8 = 0x0E;
const REJECT: u8 = 0x10;

#[test]
fn a_libtorrent_seed_says_have_all_to_pow() {
    let lab = Lab::new("fast-lt");
    let (data, torrent) = lab.payload("16M", &[]);
    let (ok, _, err) = lab.script(
        "seed.sh",
        &[
            "libtorrent",
            torrent.to_str().unwrap(),
            data.parent().unwrap().to_str().unwrap(),
        ],
    );
    assert!(ok, "seed.sh libtorrent: {err}");
    let out = lab.work.path().join("out");
    let o = pow()
        .arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(&out)
        .args(["--port", "51205", "--bind", "127.0.0.1", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let bytes = same_bytes(&data, &out.join(data.file_name().unwrap())).unwrap();
    println!(
        "libtorrent -> pow: {bytes} bytes, have-all messages received {}, rejects {}",
        report["have_all_received"], report["rejects_received"]
    );
    assert_eq!(report["have_all_received"], 1, "{report}");
}

#[test]
fn pow_seed_says_have_all_and_rejects_requests_while_choking() {
    let work = TempDir::new("fast-seed");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let content: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(data.join("fast.bin"), &content).unwrap();
    let torrent = work.path().join("fast.torrent");
    let created = pow()
        .args(["torrent", "create"])
        .arg(data.join("fast.bin"))
        .arg("-o")
        .arg(&torrent)
        .args(["--piece-length", "65536"])
        .output()
        .unwrap();
    assert!(created.status.success());
    let info_hash = pow_metainfo::Metainfo::from_file(&torrent)
        .unwrap()
        .info_hash
        .0;
    let port = common::free_port();
    let mut seed = pow()
        .arg("seed")
        .arg(&torrent)
        .arg("--data")
        .arg(&data)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "pow seed did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A fast peer: have-all instead of a bitfield, and a reject for a request while choked.
    let mut fast_bit = [0u8; 8];
    fast_bit[7] |= 0x04;
    let (mut fast, theirs) = RawPeer::connect_reserved(port, info_hash, fast_bit);
    assert_ne!(theirs[7] & 0x04, 0, "pow sets the fast bit");
    assert_ne!(theirs[5] & 0x10, 0, "pow sets the extension protocol bit");
    let (first, _) = fast.read(Duration::from_secs(10)).unwrap();
    assert_eq!(first, HAVE_ALL, "a seed says have-all to a fast peer");
    let asked = request_payload(3, 16384, 16384);
    fast.send(common::raw_peer::REQUEST, &asked).unwrap();
    let mut seen = Vec::new();
    let rejected = loop {
        match fast.read(Duration::from_secs(10)) {
            Ok((REJECT, payload)) => break payload,
            Ok((id, _)) => seen.push(id),
            Err(end) => panic!("no reject for a request while choked: {end:?} after {seen:?}"),
        }
    };
    assert_eq!(rejected, asked, "the reject names the request");
    fast.send(INTERESTED, &[]).unwrap();
    fast.wait_for(UNCHOKE);
    fast.send(common::raw_peer::REQUEST, &asked).unwrap();
    let block = loop {
        let (id, payload) = fast.read(Duration::from_secs(10)).expect("the block");
        if id == PIECE {
            break payload;
        }
    };
    assert_eq!(&block[8..], &content[3 * 65536 + 16384..3 * 65536 + 32768]);
    println!(
        "fast peer: have-all, reject for a request while choked, then the block once unchoked"
    );

    // A peer without the fast bit: a bitfield, and the same request is ignored, not rejected.
    let mut plain = RawPeer::connect(port, info_hash);
    let (first, _) = plain.read(Duration::from_secs(10)).unwrap();
    assert_eq!(first, BITFIELD);
    plain.send(common::raw_peer::REQUEST, &asked).unwrap();
    let (later, end) = plain.drain(Duration::from_secs(1));
    let _ = seed.kill();
    let _ = seed.wait();
    assert!(!later.contains(&REJECT), "{later:?}");
    assert_eq!(end, End::Quiet);
    println!("plain peer: bitfield; the request while choked is ignored, connection kept");
}
