//! Blocks a peer sent us, after the picker booked them: written to disk, fed to the peer's
//! in-order piece hashes, and the pieces they complete decided.
//!
//! A peer's socket loop writes and hashes each read's blocks itself. Asked to
//! ([`crate::EngineConfig::writer_after_busy`], off by default), once that takes the set time in
//! a second it hands them to a [`Writer`] instead: a thread of the blocking pool of its own that
//! writes and hashes while the loop goes on receiving. On one connection
//! the two are about equal work (a socket read and decode, against a `pwrite` and SHA-1), so
//! done on one task they cap a single peer at what one core can both receive and hash. The channel
//! between them is bounded ([`QUEUED_BATCHES`]): a disk slower than the peer stops the loop from
//! reading, and TCP slows the peer down. Batches are handled in the order sent, so a peer's
//! blocks reach the hashes in the order they would have inline.

use crate::inorder::InOrderHashes;
use crate::peer::verify_piece;
use crate::Inner;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Batches (one socket read's blocks each, at most about 256 KiB) waiting for a writer.
const QUEUED_BATCHES: usize = 8;

/// A block booked with the picker, to be written.
pub(crate) struct Unwritten {
    pub index: u32,
    pub begin: u32,
    pub data: Bytes,
    /// The picker has every block of the piece's current attempt with this one.
    pub piece_done: bool,
    /// Every block of that attempt came from this peer.
    pub sole: bool,
}

/// The blocking thread that writes and hashes one peer's blocks.
pub(crate) struct Writer {
    tx: mpsc::Sender<Vec<Unwritten>>,
    thread: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts the thread, which takes over the peer's in-order `hashes`; it ends when the
    /// writer is [`Writer::finish`]ed or dropped.
    pub(crate) fn start(inner: Arc<Inner>, mut hashes: InOrderHashes) -> Writer {
        inner.stats.writer_threads.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Vec<Unwritten>>(QUEUED_BATCHES);
        let runtime = tokio::runtime::Handle::current();
        let thread = tokio::task::spawn_blocking(move || {
            // Pieces that need a read-back check are spawned on the runtime from here.
            let _runtime = runtime.enter();
            while let Some(mut blocks) = rx.blocking_recv() {
                // After a write error the download is over (`Inner::failed`); the batches
                // still queued are released, not written.
                let _ = write_blocks(&inner, &mut hashes, &mut blocks);
            }
        });
        Writer { tx, thread }
    }

    /// Queues `blocks`, waiting while [`QUEUED_BATCHES`] are queued.
    pub(crate) async fn send(&self, blocks: Vec<Unwritten>) -> Result<(), &'static str> {
        self.tx
            .send(blocks)
            .await
            .map_err(|_| "the writer thread stopped")
    }

    /// Waits until every block sent is written and hashed.
    pub(crate) async fn finish(self) {
        drop(self.tx);
        let _ = self.thread.await;
    }
}

/// Writes `blocks` (emptied, capacity kept), each run of consecutive blocks of a piece with one
/// vectored write, then feeds them to their in-order hashes and decides the pieces they
/// complete. On a write error every block not written is released to the picker, the pieces
/// completed before it are still decided, and the error is recorded in `Inner::failed`.
pub(crate) fn write_blocks(
    inner: &Arc<Inner>,
    hashes: &mut InOrderHashes,
    blocks: &mut Vec<Unwritten>,
) -> Result<(), String> {
    if let Some(failed) = inner.failed.borrow().clone() {
        release(inner, blocks);
        return Err(failed.error);
    }
    // In piece order: seeds that read blocks from disk concurrently (rqbit, libtorrent) send a
    // piece's blocks a little out of order, and a block out of order costs its piece the
    // in-order hash (a read-back check: the piece read and hashed a second time). Sorted, a
    // read's blocks also make longer runs for one write.
    blocks.sort_unstable_by_key(|b| (b.index, b.begin));
    // Decided after every block is written and hashed: a piece's last block to arrive need
    // not sort last.
    let mut done = Vec::new();
    let mut start = 0;
    while start < blocks.len() {
        let first = &blocks[start];
        let mut end = start + 1;
        let mut next = first.begin + first.data.len() as u32;
        while end < blocks.len() && blocks[end].index == first.index && blocks[end].begin == next {
            next += blocks[end].data.len() as u32;
            end += 1;
        }
        let run = &blocks[start..end];
        let piece = inner
            .metainfo
            .geometry
            .piece(first.index)
            .expect("picker checked");
        let parts: Vec<&[u8]> = run.iter().map(|b| &b.data[..]).collect();
        let result = inner.storage.write_run(piece, first.begin, &parts);
        inner.written(first.index, run.len() as u32);
        if let Err(e) = result {
            // A disk error is not the peer's fault, but the download cannot go on without it.
            // This run and the ones after it were booked, not written.
            tracing::error!("write failed: {e}");
            let not_written: Vec<u32> = blocks[start..].iter().map(|b| b.index).collect();
            let mut failed: Vec<u32> = blocks[start..end].iter().map(|b| b.index).collect();
            failed.dedup();
            for &index in &failed {
                inner.lock().picker.piece_failed(index);
            }
            blocks.drain(..end);
            release(inner, blocks);
            // Pieces the runs before this one completed are on disk whole, unless a later
            // block of theirs is among those not written: decided before the download is
            // failed, so that the resume file saved as it ends counts a good one (a piece
            // that needs a read-back check may still be decided after that save).
            for (index, sole) in done {
                if !not_written.contains(&index) {
                    decide(inner, hashes, index, sole);
                }
            }
            inner.fail_download("write", &e);
            return Err(e.to_string());
        }
        for block in run {
            hashes.feed(block.index, block.begin, &block.data);
            if block.piece_done {
                done.push((block.index, block.sole));
            }
        }
        start = end;
    }
    for (index, sole) in done {
        decide(inner, hashes, index, sole);
    }
    blocks.clear();
    Ok(())
}

/// Booked blocks that will not be written: their pieces go back to the picker, and whoever
/// waits for them to be written stops waiting.
fn release(inner: &Arc<Inner>, blocks: &mut Vec<Unwritten>) {
    let mut failed: Vec<u32> = blocks.iter().map(|b| b.index).collect();
    failed.sort_unstable();
    failed.dedup();
    for &index in &failed {
        inner.lock().picker.piece_failed(index);
    }
    for block in blocks.drain(..) {
        inner.written(block.index, 1);
    }
}

/// A piece's last block is written: its in-order hash decides it, or a read-back check.
fn decide(inner: &Arc<Inner>, hashes: &mut InOrderHashes, index: u32, sole: bool) {
    let geometry = &inner.metainfo.geometry;
    let piece = geometry.piece(index).expect("picker checked");
    let size = geometry.piece_size(piece);
    // The attempt is all this peer's blocks, and they were hashed from byte 0 in order after
    // they were written: exactly the bytes on disk. Anything else (other peers' blocks, a gap,
    // a mismatch) is decided by reading the piece back.
    let good_in_order = match hashes.finish(index, size) {
        Some(sha) if sole => &sha == inner.metainfo.piece_hash(piece),
        _ => false,
    };
    if good_in_order {
        inner
            .stats
            .hashed_as_received
            .fetch_add(1, Ordering::Relaxed);
        crate::peer::record_verdict(inner, index, true, None);
    } else {
        tokio::spawn(verify_piece(inner.clone(), index));
    }
}
