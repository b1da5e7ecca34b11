//! Micro-benchmarks of the hot paths (#6): bencode and metainfo parse of large torrents, wire
//! decode of piece messages, SHA-1 of pieces, a storage write+hash across a file boundary, and
//! the picker with 1,000 peers and 100,000 pieces.
//!
//!   cargo bench --bench micro -- --warm-up-time 1 --measurement-time 3
//!   bash benches/micro.sh      # the same, next to `openssl speed` for SHA-1

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pow_bencode::{dict, Value};
use pow_metainfo::Metainfo;
use pow_picker::Picker;
use pow_storage::Storage;
use pow_wire::{Bitfield, Decoder, Message};
use sha1::{Digest, Sha1};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

const PIECE: u64 = 256 * 1024;

/// A multi-file torrent with `pieces` pieces of 256 KiB over `files` equal files.
fn torrent(pieces: u64, files: u64) -> Vec<u8> {
    let total = pieces * PIECE;
    let file_len = total / files;
    let list: Vec<Value> = (0..files)
        .map(|i| {
            let len = if i == files - 1 {
                total - file_len * (files - 1)
            } else {
                file_len
            };
            dict([
                ("length", Value::Int(len as i64)),
                (
                    "path",
                    Value::List(vec![
                        Value::str("dir"),
                        Value::str(&format!("file{i:05}.bin")),
                    ]),
                ),
            ])
        })
        .collect();
    // Distinct, cheap piece hashes: the counter's bytes repeated.
    let mut hashes = Vec::with_capacity(pieces as usize * 20);
    for i in 0..pieces {
        let b = (i as u32).to_le_bytes();
        for _ in 0..5 {
            hashes.extend_from_slice(&b);
        }
    }
    dict([
        ("announce", Value::str("http://tracker.example/announce")),
        (
            "info",
            dict([
                ("files", Value::List(list)),
                ("name", Value::str("bench")),
                ("piece length", Value::Int(PIECE as i64)),
                ("pieces", Value::Bytes(hashes)),
            ]),
        ),
    ])
    .encode()
}

fn metainfo_parse(c: &mut Criterion) {
    let bytes = torrent(100_000, 100);
    let mut g = c.benchmark_group("metainfo");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("bencode_decode_100k_pieces", |b| {
        b.iter(|| pow_bencode::decode(black_box(&bytes)).unwrap().raw.len())
    });
    g.bench_function("metainfo_parse_100k_pieces", |b| {
        b.iter(|| {
            Metainfo::from_bytes(black_box(&bytes))
                .unwrap()
                .piece_hashes
                .len()
        })
    });
    g.finish();

    // One timed parse of a 2,000,000-piece (40 MB of hashes, 500 GiB) torrent. Target: < 1 s.
    let big = torrent(2_000_000, 1_000);
    let start = Instant::now();
    let meta = Metainfo::from_bytes(&big).unwrap();
    let took = start.elapsed();
    assert_eq!(meta.piece_hashes.len(), 2_000_000);
    println!(
        "metainfo: 2,000,000-piece torrent ({:.1} MB) parsed once in {:.0} ms (target < 1000 ms)",
        big.len() as f64 / 1e6,
        took.as_secs_f64() * 1e3
    );
}

fn wire_decode(c: &mut Criterion) {
    const BLOCK: usize = 16 * 1024;
    const MESSAGES: usize = 1024; // 16 MiB of blocks
    let mut stream = BytesMut::new();
    let data = bytes::Bytes::from(vec![0x5a; BLOCK]);
    for i in 0..MESSAGES as u32 {
        Message::Piece {
            index: i / 16,
            begin: (i % 16) * BLOCK as u32,
            data: data.clone(),
        }
        .encode(&mut stream);
    }
    let stream = stream.freeze();
    let decoder = Decoder::new(100_000);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    // The decoder alone: the whole stream already buffered (frames are split off, not copied).
    g.bench_function("decode_piece_messages_buffered", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let mut n = 0;
                while let Some(m) = decoder.decode(&mut buf).unwrap() {
                    n += matches!(m, Message::Piece { .. }) as usize;
                }
                assert_eq!(n, MESSAGES);
            },
            BatchSize::LargeInput,
        )
    });
    // As the engine sees it: 64 KiB socket reads appended to a buffer, decoded as they come.
    g.bench_function("decode_piece_messages_64k_reads", |b| {
        b.iter(|| {
            let mut buf = BytesMut::with_capacity(256 * 1024);
            let mut n = 0;
            for chunk in stream.chunks(64 * 1024) {
                buf.extend_from_slice(chunk);
                while let Some(m) = decoder.decode(&mut buf).unwrap() {
                    n += matches!(m, Message::Piece { .. }) as usize;
                }
            }
            assert_eq!(n, MESSAGES);
        })
    });
    g.finish();
}

fn sha1_pieces(c: &mut Criterion) {
    let piece = vec![0xa5u8; PIECE as usize];
    let mut g = c.benchmark_group("sha1");
    g.throughput(Throughput::Bytes(PIECE));
    g.bench_function("sha1_256k_piece", |b| {
        b.iter(|| Sha1::digest(black_box(&piece)))
    });
    g.finish();
}

fn storage_write_hash(c: &mut Criterion) {
    // Two files; piece 1 (256 KiB) starts 128 KiB before the boundary and ends 128 KiB after it.
    let a_len = PIECE + PIECE / 2;
    let b_len = PIECE + PIECE / 2;
    let piece: Vec<u8> = (0..PIECE).map(|i| (i * 7 % 251) as u8).collect();
    let mut hashes = vec![0u8; 60];
    hashes[20..40].copy_from_slice(&Sha1::digest(&piece));
    let bytes = dict([(
        "info",
        dict([
            (
                "files",
                Value::List(vec![
                    dict([
                        ("length", Value::Int(a_len as i64)),
                        ("path", Value::List(vec![Value::str("a.bin")])),
                    ]),
                    dict([
                        ("length", Value::Int(b_len as i64)),
                        ("path", Value::List(vec![Value::str("b.bin")])),
                    ]),
                ]),
            ),
            ("name", Value::str("span")),
            ("piece length", Value::Int(PIECE as i64)),
            ("pieces", Value::Bytes(hashes)),
        ]),
    )])
    .encode();
    let meta = Arc::new(Metainfo::from_bytes(&bytes).unwrap());
    let index = meta.geometry.piece(1).unwrap();
    assert_eq!(
        meta.geometry.piece_spans(index).len(),
        2,
        "piece 1 spans both files"
    );
    let dir = std::env::temp_dir().join(format!("pow-bench-storage-{}", std::process::id()));
    let storage = Storage::new(meta, &dir).unwrap();
    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Bytes(PIECE));
    g.bench_function("write_16k_blocks_and_verify_piece_across_files", |b| {
        b.iter(|| {
            for (i, block) in piece.chunks(16 * 1024).enumerate() {
                storage
                    .write_block(index, (i * 16 * 1024) as u32, block)
                    .unwrap();
            }
            assert!(storage.verify_piece(index).unwrap());
        })
    });
    g.finish();
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}

fn picker(c: &mut Criterion) {
    const PIECES: u32 = 100_000;
    const PEERS: u64 = 1_000;
    let meta = Metainfo::from_bytes(&torrent(u64::from(PIECES), 1)).unwrap();
    let mut have = Bitfield::new(PIECES);
    // Past the random-first phase, so picks are rarest-first.
    for i in 0..8 {
        have.set(i * 10_007);
    }
    // Each peer has about half the pieces (a xorshift stream per peer), 50 of them are seeds.
    let peers: Vec<Bitfield> = (0..PEERS)
        .map(|p| {
            if p < 50 {
                return Bitfield::full(PIECES);
            }
            let mut bits = Bitfield::new(PIECES);
            let mut x = p.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for i in 0..PIECES {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x & 1 == 1 {
                    bits.set(i);
                }
            }
            bits
        })
        .collect();
    // A fresh picker with every peer connected (the picker is not Clone; this is setup, untimed).
    let fresh = || {
        let mut p = Picker::new(meta.geometry.clone(), have.clone());
        for bits in &peers {
            p.peer_connected(bits);
        }
        p
    };
    let mut g = c.benchmark_group("picker");
    // About 1-2 s per iteration here: 10 samples keep the group under a minute.
    g.sample_size(10);
    // Every peer asks for 16 blocks (one whole 256 KiB piece): 1,000 rarest-first choices.
    g.throughput(Throughput::Elements(PEERS));
    g.bench_function("pick_16_blocks_each_of_1000_peers", |b| {
        b.iter_batched(
            fresh,
            |mut p| {
                for (key, bits) in peers.iter().enumerate() {
                    let blocks = p.pick(key as u64, bits, 16);
                    assert_eq!(blocks.len(), 16);
                }
                p
            },
            BatchSize::LargeInput,
        )
    });
    // The whole cycle for each peer's piece: pick, 16 blocks received, verified.
    g.bench_function("pick_receive_verify_piece_each_of_1000_peers", |b| {
        b.iter_batched(
            fresh,
            |mut p| {
                for (key, bits) in peers.iter().enumerate() {
                    let key = key as u64;
                    let blocks = p.pick(key, bits, 16);
                    for block in &blocks {
                        p.block_received(key, block.piece.get(), block.begin, block.length);
                    }
                    p.piece_verified(blocks[0].piece.get());
                }
                p
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    metainfo_parse,
    wire_decode,
    sha1_pieces,
    storage_write_hash,
    picker
);
criterion_main!(benches);
