//! Rate limits (`EngineConfig::upload_limit`, `download_limit`): token buckets of bytes.
//!
//! Upload: every peer's task pays before it reads a block from disk for its peer; a block it
//! cannot pay for waits in the peer's queue until the bucket has refilled enough, so no block is
//! read early into memory. Download: a peer's task pays for each socket read after it (what
//! arrived cannot be refused) and, owing, reads nothing more until the debt is paid off; TCP
//! then slows the sender down. Web seeds pay for each chunk of a response the same way.
//!
//! A bucket is shared through an `Arc`: by every peer of a session, and by every session that
//! is given the same one (`pow serve` caps all of its datasets together).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket of bytes; see the module documentation.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: f64,
    /// Tokens the bucket holds at most: what may go out at once after an idle spell.
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimit {
    /// Bursts of up to 20 ms worth, so the limit holds over short spans too (a new session
    /// does not start with a second's worth at line speed), and never less than 128 KiB
    /// (8 blocks of 16 KiB, the largest we serve), so a low limit still sends a few blocks
    /// per wake-up.
    pub fn new(bytes_per_second: u64) -> RateLimit {
        let rate = bytes_per_second.max(1) as f64;
        let burst = (rate / 50.0).max(128.0 * 1024.0);
        RateLimit {
            bytes_per_second: rate,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// The limit, bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second as u64
    }

    /// The most one socket read should take under this download limit: an eighth of a
    /// second's worth, from 4 KiB up to `most`. A read is paid after the fact, and the wait
    /// for a whole 256 KiB read at a low limit would outlast the idle and snub timeouts.
    pub(crate) fn read_cap(&self, most: usize) -> usize {
        ((self.bytes_per_second() / 8) as usize).clamp(4096, most.max(4096))
    }

    /// Takes `bytes` from the bucket, or tells how long until it holds that many.
    pub(crate) fn take(&self, bytes: u32) -> Result<(), Duration> {
        self.take_at(bytes, Instant::now())
    }

    /// Puts back `bytes` taken for a block that was not sent after all.
    pub(crate) fn refund(&self, bytes: u32) {
        let mut bucket = self.refilled(Instant::now());
        bucket.tokens = (bucket.tokens + f64::from(bytes)).min(self.burst);
    }

    /// Takes `bytes` that were already spent, into debt if need be: how long until the debt
    /// is paid off, if there is one.
    pub fn take_owing(&self, bytes: usize) -> Option<Duration> {
        self.take_owing_at(bytes, Instant::now())
    }

    fn take_owing_at(&self, bytes: usize, now: Instant) -> Option<Duration> {
        let mut bucket = self.refilled(now);
        bucket.tokens -= bytes as f64;
        (bucket.tokens < 0.0)
            .then(|| Duration::from_secs_f64(-bucket.tokens / self.bytes_per_second))
    }

    /// The bucket, refilled for the time up to `now`.
    fn refilled(&self, now: Instant) -> std::sync::MutexGuard<'_, Bucket> {
        let mut bucket = self.bucket.lock().expect("rate limit lock");
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.bytes_per_second).min(self.burst);
        bucket.refilled_at = bucket.refilled_at.max(now);
        bucket
    }

    fn take_at(&self, bytes: u32, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.refilled(now);
        let wanted = f64::from(bytes);
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            return Ok(());
        }
        let short = wanted - bucket.tokens;
        // At least a millisecond: many peers waking at once for a few bytes each would spin.
        Err(Duration::from_secs_f64(short / self.bytes_per_second).max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_pays_its_burst_then_asks_to_wait_for_the_rest() {
        let limit = RateLimit::new(50 << 20);
        let now = limit.bucket.lock().unwrap().refilled_at;
        let mut paid = 0u32;
        while limit.take_at(16384, now).is_ok() {
            paid += 16384;
        }
        // 20 ms of 50 MiB/s is 1 MiB.
        assert_eq!(paid, 1 << 20);
        let wait = limit.take_at(16384, now).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs_f64(16384.0 / 52428800.0).max(Duration::from_millis(1))
        );
        // After that wait the block is paid, and no sooner.
        assert!(limit
            .take_at(16384, now + Duration::from_micros(100))
            .is_err());
        assert_eq!(limit.take_at(16384, now + wait), Ok(()));
        // A low limit still pays 8 blocks at once.
        assert_eq!(RateLimit::new(1000).take(128 * 1024), Ok(()));
    }

    #[test]
    fn a_refund_pays_the_next_block_but_never_more_than_the_burst() {
        let limit = RateLimit::new(1000);
        assert_eq!(limit.take(128 * 1024), Ok(()));
        assert!(limit.take(16384).is_err());
        limit.refund(16384);
        assert_eq!(limit.take(16384), Ok(()));
        // Refunds on a full bucket are lost: it still holds one burst.
        limit.refund(128 * 1024);
        limit.refund(128 * 1024);
        assert_eq!(limit.take(128 * 1024), Ok(()));
        assert!(limit.take(16384).is_err());
    }

    #[test]
    fn over_a_second_it_pays_the_rate_and_the_burst_no_more() {
        let limit = RateLimit::new(4 << 20);
        let start = limit.bucket.lock().unwrap().refilled_at;
        let mut paid = 0u64;
        let mut now = start;
        while now < start + Duration::from_secs(1) {
            match limit.take_at(16384, now) {
                Ok(()) => paid += 16384,
                Err(wait) => now += wait,
            }
        }
        // 4 MiB in the second, plus the first burst (128 KiB), within one block.
        let expected = (4 << 20) + 131072;
        assert!(paid.abs_diff(expected) <= 16384, "paid {paid}");
        // An idle spell refills the bucket only up to the burst.
        now += Duration::from_secs(10);
        let mut burst = 0u64;
        while limit.take_at(16384, now).is_ok() {
            burst += 16384;
        }
        assert_eq!(burst, 131072);
    }

    #[test]
    fn reads_paid_after_the_fact_owe_the_time_the_rate_needs() {
        let limit = RateLimit::new(1 << 20);
        let start = limit.bucket.lock().unwrap().refilled_at;
        // The burst (128 KiB) covers the first read; the next 256 KiB is owed: 0.25 s.
        assert_eq!(limit.take_owing_at(128 * 1024, start), None);
        assert_eq!(
            limit.take_owing_at(256 * 1024, start),
            Some(Duration::from_millis(250))
        );
        // Reading on only when the debt is paid: over 4 s of simulated reads of 256 KiB,
        // 4 MiB arrive plus the first burst, within one read.
        let mut now = start + Duration::from_millis(250);
        let mut read = 0u64;
        while now < start + Duration::from_millis(250) + Duration::from_secs(4) {
            read += 256 * 1024;
            if let Some(wait) = limit.take_owing_at(256 * 1024, now) {
                now += wait;
            }
        }
        assert!(read.abs_diff(4 << 20) <= 256 * 1024, "read {read}");
    }
}
