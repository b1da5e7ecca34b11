//! The upload rate limit of a session (`EngineConfig::max_upload_rate`): one token bucket of
//! bytes that every peer's task takes from before it reads a block from disk for its peer.
//! A block it cannot pay for waits in the peer's queue until the bucket has refilled enough,
//! so the limit holds for all peers together and no block is read early into memory.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct RateLimit {
    bytes_per_second: f64,
    /// Tokens the bucket holds at most: what may go out at once after an idle spell.
    burst: f64,
    bucket: Mutex<Bucket>,
}

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

    /// Takes `bytes` from the bucket, or tells how long until it holds that many.
    pub fn take(&self, bytes: u32) -> Result<(), Duration> {
        self.take_at(bytes, Instant::now())
    }

    fn take_at(&self, bytes: u32, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().expect("rate limit lock");
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.bytes_per_second).min(self.burst);
        bucket.refilled_at = bucket.refilled_at.max(now);
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
}
