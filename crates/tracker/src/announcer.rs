//! Multitracker announcing (BEP 12) and the announce loop: events, intervals, back-off.

use crate::{AnnounceRequest, AnnounceResponse, Client, Error, Event, InfoHash, PeerId};
use rand::seq::SliceRandom;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Timing rules of the announce loop.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Used when the tracker sends no `interval`.
    pub default_interval: Duration,
    /// Never re-announce more often than this, whatever the tracker says.
    pub min_interval_floor: Duration,
    /// Never wait longer than this between announces.
    pub max_interval: Duration,
    /// First retry delay after a failed round; doubles with each further failure.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Time allowed for the final `stopped` announce.
    pub stop_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            default_interval: Duration::from_secs(1800),
            min_interval_floor: Duration::from_secs(30),
            max_interval: Duration::from_secs(3 * 3600),
            backoff_base: Duration::from_secs(15),
            backoff_max: Duration::from_secs(30 * 60),
            stop_timeout: Duration::from_secs(5),
        }
    }
}

/// When to announce next after a successful announce: the tracker's `interval` (or the
/// default), never less than its `min interval` nor our floor, never more than our maximum.
pub fn reannounce_delay(resp: &AnnounceResponse, t: &Timing) -> Duration {
    let interval = resp
        .interval
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(t.default_interval);
    let min = min_interval(resp, t);
    interval.min(t.max_interval).max(min)
}

/// The least time between two announces to this tracker (also for event-triggered ones).
pub fn min_interval(resp: &AnnounceResponse, t: &Timing) -> Duration {
    let tracker_min = resp
        .min_interval
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(Duration::ZERO);
    tracker_min.min(t.max_interval).max(t.min_interval_floor)
}

/// Retry delay after `failures` consecutive failed rounds (1 = first failure):
/// `base * 2^(failures-1)` capped at `backoff_max`, then jittered into [75 %, 100 %].
pub fn backoff_delay(failures: u32, t: &Timing, rng: &mut impl Rng) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let d = t
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(t.backoff_max);
    d.mul_f64(rng.random_range(0.75..=1.0))
}

#[derive(Debug)]
struct Tracker {
    url: String,
    tracker_id: Option<Vec<u8>>,
    /// This tracker has acknowledged our `started`.
    started: bool,
    /// Announces to it that failed in a row, and when a round may ask it again.
    failures: u32,
    retry_at: Option<Instant>,
}

/// The trackers of one torrent in BEP 12 tiers, with per-tracker state.
#[derive(Debug)]
pub struct Tiers {
    tiers: Vec<Vec<Tracker>>,
}

impl Tiers {
    /// Shuffles each tier once, as BEP 12 asks. Empty tiers and duplicate URLs are dropped.
    pub fn new(tiers: Vec<Vec<String>>, rng: &mut impl Rng) -> Tiers {
        let mut seen = std::collections::HashSet::new();
        let tiers = tiers
            .into_iter()
            .map(|mut tier| {
                tier.shuffle(rng);
                tier.into_iter()
                    .filter(|u| seen.insert(u.clone()))
                    .map(|url| Tracker {
                        url,
                        tracker_id: None,
                        started: false,
                        failures: 0,
                        retry_at: None,
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|t| !t.is_empty())
            .collect();
        Tiers { tiers }
    }

    /// The URLs in the order they will be tried.
    pub fn urls(&self) -> Vec<Vec<String>> {
        self.tiers
            .iter()
            .map(|t| t.iter().map(|x| x.url.clone()).collect())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }
}

/// What to send: counters and the torrent's identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
}

/// The successful tracker's answer for one round.
#[derive(Debug, Clone)]
pub struct Announced {
    pub url: String,
    pub response: AnnounceResponse,
}

/// One torrent's announcing state across its trackers.
pub struct Announcer {
    pub client: Arc<Client>,
    pub tiers: Tiers,
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub key: u32,
    pub numwant: Option<u32>,
    /// `completed` is owed to the trackers (set by [`Announcer::mark_completed`]).
    completed_pending: bool,
    /// How long a tracker that failed is passed over ([`backoff_delay`] of its failures in a
    /// row; [`spawn`] sets the loop's own).
    pub tracker_backoff: Timing,
}

impl Announcer {
    pub fn new(
        client: Arc<Client>,
        tiers: Tiers,
        info_hash: InfoHash,
        peer_id: PeerId,
        port: u16,
    ) -> Announcer {
        Announcer {
            client,
            tiers,
            info_hash,
            peer_id,
            port,
            key: rand::random(),
            numwant: Some(50),
            completed_pending: false,
            tracker_backoff: Timing::default(),
        }
    }

    /// The download finished: the next announce carries `completed` (sent once).
    pub fn mark_completed(&mut self) {
        self.completed_pending = true;
    }

    /// One BEP 12 round: tiers in order, trackers within a tier in order; the first that
    /// answers is moved to the front of its tier and its answer returned. A tracker that
    /// failed is passed over until its back-off ends, unless every tracker is in back-off: a
    /// dead or silent tracker in an earlier tier cost its whole timeout (105 s for a silent UDP
    /// one) before the tracker that answers, in every round, and in each early announce. `stopping` sends
    /// `stopped` to every tracker that saw our `started` (as libtorrent does: after a
    /// fail-over, the trackers before it would list us until they time us out), all at once
    /// (a dead one must not use up the stop's time), and returns the first answer.
    pub async fn announce(
        &mut self,
        progress: Progress,
        stopping: bool,
    ) -> Result<Announced, Error> {
        if stopping {
            return self.announce_stopped(progress).await;
        }
        let mut last_err: Option<Error> = None;
        let now = Instant::now();
        let resting = |tr: &Tracker| tr.retry_at.is_some_and(|at| at > now);
        let any_due = self.tiers.tiers.iter().flatten().any(|tr| !resting(tr));
        for ti in 0..self.tiers.tiers.len() {
            for i in 0..self.tiers.tiers[ti].len() {
                let tr = &self.tiers.tiers[ti][i];
                if any_due && resting(tr) {
                    continue;
                }
                let event = if !tr.started {
                    Event::Started
                } else if self.completed_pending {
                    Event::Completed
                } else {
                    Event::None
                };
                let req = self.request(tr, progress, event);
                let url = tr.url.clone();
                match self.client.announce(&url, &req).await {
                    Ok(response) => {
                        if let Some(w) = &response.warning {
                            tracing::warn!(tracker = %url, "tracker warning: {w}");
                        }
                        tracing::debug!(tracker = %url, ?event, peers = response.peers.len(), "announced");
                        let tier = &mut self.tiers.tiers[ti];
                        let mut tr = tier.remove(i);
                        (tr.failures, tr.retry_at) = (0, None);
                        if let Some(id) = &response.tracker_id {
                            tr.tracker_id = Some(id.clone());
                        }
                        match event {
                            Event::Started => tr.started = true,
                            Event::Stopped => tr.started = false,
                            Event::Completed => self.completed_pending = false,
                            Event::None => {}
                        }
                        tier.insert(0, tr);
                        return Ok(Announced { url, response });
                    }
                    Err(e) => {
                        tracing::info!(tracker = %url, ?event, "announce failed: {e}");
                        last_err = Some(e);
                        let tr = &mut self.tiers.tiers[ti][i];
                        tr.failures = tr.failures.saturating_add(1);
                        let rest =
                            backoff_delay(tr.failures, &self.tracker_backoff, &mut rand::rng());
                        tr.retry_at = Some(Instant::now() + rest);
                    }
                }
            }
        }
        Err(Error::AllFailed(Box::new(last_err.unwrap_or(
            Error::Malformed("no tracker to announce to".into()),
        ))))
    }
}

impl Announcer {
    /// The announce to `tr` with `event` (no peers asked for with `stopped`).
    fn request(&self, tr: &Tracker, progress: Progress, event: Event) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: self.info_hash,
            peer_id: self.peer_id,
            port: self.port,
            uploaded: progress.uploaded,
            downloaded: progress.downloaded,
            left: progress.left,
            event,
            numwant: match event {
                Event::Stopped => Some(0),
                _ => self.numwant,
            },
            key: self.key,
            tracker_id: tr.tracker_id.clone(),
        }
    }

    /// `stopped`, at once, to every tracker that saw `started`; the first answer in tier order.
    /// A `completed` still owed goes first, to each of them on its own: asked tracker by
    /// tracker, a dead first one used up the stop's time and no tracker heard either.
    async fn announce_stopped(&mut self, progress: Progress) -> Result<Announced, Error> {
        let mut asked = tokio::task::JoinSet::new();
        for (ti, tier) in self.tiers.tiers.iter().enumerate() {
            for (i, tr) in tier.iter().enumerate().filter(|(_, tr)| tr.started) {
                let completed = self
                    .completed_pending
                    .then(|| self.request(tr, progress, Event::Completed));
                let stopped = self.request(tr, progress, Event::Stopped);
                let (client, url) = (self.client.clone(), tr.url.clone());
                asked.spawn(async move {
                    let completed = match completed {
                        Some(req) => Some(client.announce(&url, &req).await),
                        None => None,
                    };
                    if let Some(Err(e)) = &completed {
                        tracing::info!(tracker = %url, "announcing completed failed: {e}");
                    }
                    let completed = matches!(completed, Some(Ok(_)));
                    let answer = client.announce(&url, &stopped).await;
                    ((ti, i), url, completed, answer)
                });
            }
        }
        let mut answers = Vec::new();
        let mut last_err = None;
        while let Some(done) = asked.join_next().await {
            let Ok((at, url, completed, answer)) = done else {
                continue;
            };
            if completed {
                self.completed_pending = false;
            }
            match answer {
                Ok(response) => {
                    tracing::debug!(tracker = %url, "announced stopped");
                    self.tiers.tiers[at.0][at.1].started = false;
                    answers.push((at, Announced { url, response }));
                }
                Err(e) => {
                    tracing::info!(tracker = %url, "announcing stopped failed: {e}");
                    last_err = Some(e);
                }
            }
        }
        answers.sort_by_key(|(at, _)| *at);
        match answers.into_iter().next() {
            Some((_, answer)) => Ok(answer),
            None => Err(Error::AllFailed(Box::new(
                last_err.unwrap_or(Error::Malformed("no tracker saw started".into())),
            ))),
        }
    }
}

/// What the announce loop reports.
#[derive(Debug)]
pub enum Update {
    /// A round succeeded; the next regular one is in `next_in`.
    Peers {
        url: String,
        peers: Vec<SocketAddr>,
        complete: Option<u32>,
        incomplete: Option<u32>,
        next_in: Duration,
    },
    /// Every tracker failed; the next try is in `retry_in` (back-off).
    Failed {
        error: String,
        failures: u32,
        retry_in: Duration,
    },
    /// `stopped` was sent (or could not be) and the loop ended.
    Stopped,
}

enum Command {
    Completed,
    Reannounce,
    Stop,
}

/// Asks a running announce loop for its next announce as soon as `min interval` allows (a
/// download without peers: a tracker's regular interval is often 30 minutes).
#[derive(Clone)]
pub struct Reannouncer(mpsc::WeakUnboundedSender<Command>);

impl Reannouncer {
    pub fn reannounce(&self) {
        if let Some(commands) = self.0.upgrade() {
            let _ = commands.send(Command::Reannounce);
        }
    }
}

/// Controls a running announce loop. Dropping it stops the loop (with `stopped`).
pub struct AnnounceHandle {
    commands: mpsc::UnboundedSender<Command>,
    pub updates: mpsc::UnboundedReceiver<Update>,
    pub task: tokio::task::JoinHandle<()>,
}

impl AnnounceHandle {
    /// The download finished: announce `completed` (as soon as `min interval` allows).
    pub fn completed(&self) {
        let _ = self.commands.send(Command::Completed);
    }
    /// Asks for early announces on behalf of a task that watches the swarm; it does not keep
    /// the loop alive (dropping this handle still stops it).
    pub fn reannouncer(&self) -> Reannouncer {
        Reannouncer(self.commands.downgrade())
    }
    /// Send `stopped` and end the loop; waits for it.
    pub async fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        while let Some(u) = self.updates.recv().await {
            if matches!(u, Update::Stopped) {
                break;
            }
        }
        let _ = (&mut self.task).await;
    }
}

/// The loop's end: `stopped` to the trackers (each after the `completed` still owed), within
/// the stop timeout, then [`Update::Stopped`].
async fn announce_stopped(
    announcer: &mut Announcer,
    progress: &watch::Receiver<Progress>,
    timing: &Timing,
    up_tx: &mpsc::UnboundedSender<Update>,
) {
    let p = *progress.borrow();
    // A download that stops right after it completed (before `min interval` allowed the
    // `completed` announce) still owes it: trackers count downloads by it (scrape's
    // `downloaded`). `announce(.., true)` sends it.
    let _ = tokio::time::timeout(timing.stop_timeout, announcer.announce(p, true)).await;
    let _ = up_tx.send(Update::Stopped);
}

/// Starts the announce loop: `started` first, re-announces at the interval (never faster than
/// `min interval`), `completed` once when told, `stopped` on [`AnnounceHandle::stop`] or drop,
/// exponential back-off with jitter while every tracker fails.
pub fn spawn(
    mut announcer: Announcer,
    progress: watch::Receiver<Progress>,
    timing: Timing,
) -> AnnounceHandle {
    announcer.tracker_backoff = timing.clone();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut failures: u32 = 0;
        // earliest time the next announce is allowed, and when the regular one is due
        let mut earliest = Instant::now();
        let mut due;
        // Asked early for peers (a download that nobody sends to) with none coming of it, each
        // early announce waits twice as long as the one before, up to the regular interval: a
        // stalled download asked a UDP tracker (which tells no `min interval`) every 30 s, for
        // as long as it ran.
        let mut early_at = Instant::now();
        let mut early_in_a_row: u32 = 0;
        let mut brought_forward = false;
        let mut rng = rand::rngs::StdRng::from_os_rng();
        loop {
            let p = *progress.borrow();
            // A stop is heard during the round too: trackers are asked one after another, and
            // a UDP tracker that never answers takes 105 s (15 + 30 + 60), so Ctrl-C waited
            // minutes. Other commands wait for the round's end.
            let (round, asked) = {
                let round = announcer.announce(p, false);
                tokio::pin!(round);
                let mut asked = Vec::new();
                let round = loop {
                    tokio::select! {
                        result = &mut round => break Some(result),
                        cmd = cmd_rx.recv() => match cmd {
                            Some(Command::Stop) | None => break None,
                            Some(other) => asked.push(other),
                        }
                    }
                };
                (round, asked)
            };
            let Some(round) = round else {
                // A `completed` told during the round, then the stop: still owed.
                if asked.iter().any(|cmd| matches!(cmd, Command::Completed)) {
                    announcer.mark_completed();
                }
                announce_stopped(&mut announcer, &progress, &timing, &up_tx).await;
                return;
            };
            match round {
                Ok(a) => {
                    failures = 0;
                    let next = reannounce_delay(&a.response, &timing);
                    let min = min_interval(&a.response, &timing);
                    earliest = Instant::now() + min;
                    early_in_a_row = match brought_forward {
                        true => early_in_a_row.saturating_add(1),
                        false => 0,
                    };
                    early_at = Instant::now() + min.saturating_mul(1 << early_in_a_row.min(16));
                    due = Instant::now() + next;
                    let _ = up_tx.send(Update::Peers {
                        url: a.url,
                        peers: a.response.peers,
                        complete: a.response.complete,
                        incomplete: a.response.incomplete,
                        next_in: next,
                    });
                }
                Err(e) => {
                    failures += 1;
                    let retry = backoff_delay(failures, &timing, &mut rng);
                    // Debug, not warn: the `Failed` update below is what the user is told of
                    // (pow's commands print it), once.
                    tracing::debug!(
                        "announce failed ({failures} in a row), retry in {retry:?}: {e}"
                    );
                    due = Instant::now() + retry;
                    let _ = up_tx.send(Update::Failed {
                        error: e.to_string(),
                        failures,
                        retry_in: retry,
                    });
                }
            }
            // The commands that came during the round, then the wait for the next regular
            // announce, or a command.
            let mut asked = asked.into_iter().map(Some);
            brought_forward = false;
            let stop = loop {
                let cmd = match asked.next() {
                    Some(cmd) => cmd,
                    None => tokio::select! {
                        _ = tokio::time::sleep_until(due) => break false,
                        cmd = cmd_rx.recv() => cmd,
                    },
                };
                match cmd {
                    Some(Command::Completed) => {
                        announcer.mark_completed();
                        if failures == 0 {
                            due = due.min(earliest);
                            brought_forward = false;
                        }
                    }
                    Some(Command::Reannounce) => {
                        if failures == 0 && early_at < due {
                            due = early_at;
                            brought_forward = true;
                        }
                    }
                    Some(Command::Stop) | None => break true,
                }
            };
            if stop {
                announce_stopped(&mut announcer, &progress, &timing, &up_tx).await;
                return;
            }
        }
    });
    AnnounceHandle {
        commands: cmd_tx,
        updates: up_rx,
        task,
    }
}

use rand::SeedableRng;

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(interval: Option<u32>, min: Option<u32>) -> AnnounceResponse {
        AnnounceResponse {
            interval,
            min_interval: min,
            ..Default::default()
        }
    }

    #[test]
    fn interval_rules() {
        let t = Timing::default();
        let s = Duration::from_secs;
        assert_eq!(reannounce_delay(&resp(Some(900), None), &t), s(900));
        // min interval wins over a shorter interval
        assert_eq!(reannounce_delay(&resp(Some(60), Some(120)), &t), s(120));
        // our floor wins over a tracker asking for hammering
        assert_eq!(reannounce_delay(&resp(Some(0), Some(0)), &t), s(30));
        assert_eq!(reannounce_delay(&resp(Some(5), None), &t), s(30));
        // missing interval: the default
        assert_eq!(reannounce_delay(&resp(None, None), &t), s(1800));
        // absurd intervals are capped
        assert_eq!(
            reannounce_delay(&resp(Some(u32::MAX), None), &t),
            s(3 * 3600)
        );
        assert_eq!(min_interval(&resp(Some(900), Some(300)), &t), s(300));
        assert_eq!(min_interval(&resp(Some(900), None), &t), s(30));
        let fast = Timing {
            min_interval_floor: Duration::from_millis(100),
            ..Timing::default()
        };
        assert_eq!(reannounce_delay(&resp(Some(1), None), &fast), s(1));
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let t = Timing::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for failures in 1..=12u32 {
            let full = Duration::from_secs(15)
                .saturating_mul(1 << (failures - 1))
                .min(Duration::from_secs(1800));
            let mut seen = std::collections::HashSet::new();
            for _ in 0..50 {
                let d = backoff_delay(failures, &t, &mut rng);
                assert!(d <= full && d >= full.mul_f64(0.75), "{failures}: {d:?}");
                seen.insert(d);
            }
            assert!(seen.len() > 1, "jitter");
        }
        assert!(backoff_delay(1000, &t, &mut rng) <= Duration::from_secs(1800));
    }

    #[test]
    fn tiers_are_shuffled_once_and_deduplicated() {
        let urls: Vec<String> = (0..8).map(|i| format!("http://t{i}/announce")).collect();
        let mut orders = std::collections::HashSet::new();
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let tiers = Tiers::new(
                vec![
                    urls.clone(),
                    vec![],
                    vec![urls[0].clone(), "udp://x:1".into()],
                ],
                &mut rng,
            );
            let got = tiers.urls();
            assert_eq!(got.len(), 2);
            let mut sorted = got[0].clone();
            sorted.sort();
            assert_eq!(sorted, urls);
            assert_eq!(got[1], vec!["udp://x:1".to_string()]);
            orders.insert(got[0].clone());
        }
        assert!(orders.len() > 1);
    }
}
