//! One uTP connection as a state machine, no I/O: packets in ([`Connection::on_packet`],
//! then one [`Connection::flush`] for the batch), time passing ([`Connection::on_tick`]),
//! bytes written and read by the application; the datagrams to send collect in
//! [`Connection::outgoing`].
//!
//! Congestion control is LEDBAT as BEP 29 describes it: the window grows while the one-way
//! delay the peer measures stays under [`TARGET_DELAY`] and shrinks as it passes it, halves
//! on a loss (three duplicate acks, or packets selectively acked past a hole), and falls to
//! one packet on a timeout. Sequence numbers count packets, not bytes, and wrap at 2^16.

use crate::packet::{self, Header, Kind, Packet, HEADER};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

/// Largest datagram we send: under any Ethernet path MTU with IPv4/IPv6 and UDP headers.
pub const MAX_PACKET: usize = 1400;
/// Payload per data packet, leaving room for a selective-ack extension.
pub const MAX_PAYLOAD: usize = MAX_PACKET - HEADER - 2 - MAX_SACK_BYTES;
/// The selective ack covers up to this many bytes' worth of packets (8 each) past a hole.
const MAX_SACK_BYTES: usize = 16;
/// Bytes the application may write ahead of what is sent (the send buffer).
pub const SEND_BUFFER: usize = 512 * 1024;
/// Bytes received and not yet read by the application, in order or not: the largest window we
/// offer (a connection is given its own, at most this, when it is made).
pub const RECV_BUFFER: usize = 1024 * 1024;
/// LEDBAT's target queuing delay: the window grows below it and shrinks above it.
const TARGET_DELAY: Duration = Duration::from_millis(100);
/// Window growth per round trip when there is no queuing delay at all (libutp's figure).
const MAX_GAIN_PER_RTT: f64 = 3000.0;
const MIN_WINDOW: usize = MAX_PACKET;
const MAX_WINDOW: usize = 4 * 1024 * 1024;
const INITIAL_WINDOW: usize = 16 * MAX_PACKET;
const INITIAL_RTO: Duration = Duration::from_secs(1);
const MIN_RTO: Duration = Duration::from_millis(500);
const MAX_RTO: Duration = Duration::from_secs(16);
/// Timeouts in a row without any ack before the connection is given up (about a minute).
const MAX_TIMEOUTS: u32 = 6;
/// A SYN is sent this many times, an RTO apart (1 s, then 2 s), before the dial fails: 3 s,
/// as libtorrent's uTP connect timeout, so a peer without uTP costs little.
const SYN_TRIES: u32 = 2;
/// Packets received past a hole that we keep (beyond that they are dropped, and resent).
const MAX_REORDER: u16 = 1024;
/// Sent when nothing else was for this long, so NATs and the peer keep the connection.
const KEEPALIVE: Duration = Duration::from_secs(29);
/// How long one-way delay samples count for the base delay (LEDBAT's "base history").
const BASE_DELAY_WINDOW: Duration = Duration::from_secs(120);
/// Delay samples kept for the base delay are at least this far apart.
const DELAY_SAMPLE_SPACING: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// We sent a SYN and wait for its ack.
    SynSent,
    Connected,
    /// Nothing more will be sent or received (both FINs acked, a reset, or an error).
    Closed,
}

struct Sent {
    seq: u16,
    kind: Kind,
    payload: Bytes,
    sent_at: Instant,
    transmissions: u32,
    /// Selectively acked: arrived, but behind a hole.
    sacked: bool,
    /// Taken for lost on a timeout: sent again before new data, as the window allows.
    lost: bool,
}

pub struct Connection {
    pub state: State,
    pub recv_id: u16,
    pub send_id: u16,
    /// The next sequence number we send with.
    seq_nr: u16,
    /// The last sequence number received in order.
    ack_nr: u16,
    epoch: Instant,

    unsent: BytesMut,
    inflight: VecDeque<Sent>,
    /// Payload bytes sent and not acked (selectively acked and lost ones excluded).
    inflight_bytes: usize,
    /// Packets in flight marked `lost`: while none, sending skips the search for them.
    lost_packets: usize,
    window: usize,
    /// The window grows by every byte acked (slow start) up to here, and by LEDBAT's rule
    /// past it.
    slow_start_until: usize,
    peer_window: usize,
    rtt: Option<Duration>,
    rtt_var: Duration,
    rto: Duration,
    /// When the oldest unacked packet times out.
    rto_deadline: Option<Instant>,
    timeouts: u32,
    dup_acks: u32,
    last_ack: u16,
    /// No further halving of the window for losses until this sequence number is acked.
    recovery_until: Option<u16>,
    close_requested: bool,
    fin_sent: bool,

    reorder: HashMap<u16, Option<Bytes>>,
    reorder_bytes: usize,
    /// Bytes we hold for the application at most, in order or not (the window we offer).
    recv_buffer: usize,
    pub readable: BytesMut,
    /// The peer's FIN is received and every packet before it: reads end.
    pub eof: bool,
    fin_seq: Option<u16>,
    pub error: Option<io::ErrorKind>,
    need_ack: bool,
    advertised: usize,
    /// Our clock minus the peer's, at its last packet (sent back as `timestamp_diff`).
    reply_micros: u32,
    delay_samples: VecDeque<(Instant, u32)>,
    our_delay: Duration,
    last_sent: Instant,
    /// When the peer last sent anything.
    last_heard: Instant,
    syn_tries: u32,

    /// Datagrams to send, in order.
    pub outgoing: Vec<Vec<u8>>,
}

/// `a` comes before `b` in wrapping sequence space.
fn seq_before(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) < 0
}

/// `a` comes before `b` on a wrapping 32-bit microsecond clock.
fn micros_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Connection {
    fn new(
        recv_id: u16,
        send_id: u16,
        seq_nr: u16,
        ack_nr: u16,
        state: State,
        receive_buffer: usize,
        now: Instant,
    ) -> Self {
        let receive_buffer = receive_buffer.min(RECV_BUFFER);
        Connection {
            state,
            recv_id,
            send_id,
            seq_nr,
            ack_nr,
            epoch: now,
            unsent: BytesMut::new(),
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            lost_packets: 0,
            window: INITIAL_WINDOW,
            slow_start_until: MAX_WINDOW,
            peer_window: RECV_BUFFER,
            rtt: None,
            rtt_var: Duration::ZERO,
            rto: INITIAL_RTO,
            rto_deadline: None,
            timeouts: 0,
            dup_acks: 0,
            last_ack: seq_nr.wrapping_sub(1),
            recovery_until: None,
            close_requested: false,
            fin_sent: false,
            reorder: HashMap::new(),
            reorder_bytes: 0,
            recv_buffer: receive_buffer,
            readable: BytesMut::new(),
            eof: false,
            fin_seq: None,
            error: None,
            need_ack: false,
            advertised: receive_buffer,
            reply_micros: 0,
            delay_samples: VecDeque::new(),
            our_delay: Duration::ZERO,
            last_sent: now,
            last_heard: now,
            syn_tries: 0,
            outgoing: Vec::new(),
        }
    }

    /// The dialing end: sends a SYN announcing `recv_id`, the id the peer will send to.
    /// `receive_buffer` (at most [`RECV_BUFFER`]) is the window it offers from the SYN on:
    /// what the UDP socket underneath can queue, so that a window's burst is not dropped
    /// there before we read it.
    pub fn dial(recv_id: u16, receive_buffer: usize, now: Instant) -> Self {
        let mut conn = Connection::new(
            recv_id,
            recv_id.wrapping_add(1),
            1,
            0,
            State::SynSent,
            receive_buffer,
            now,
        );
        conn.send_new(Kind::Syn, Bytes::new(), now);
        conn
    }

    /// The accepting end of `syn`, answered at once; `seq_nr` is our random first number,
    /// `receive_buffer` the window offered, as for [`Connection::dial`].
    pub fn accept(syn: &Header, seq_nr: u16, receive_buffer: usize, now: Instant) -> Self {
        let mut conn = Connection::new(
            syn.conn_id.wrapping_add(1),
            syn.conn_id,
            seq_nr,
            syn.seq,
            State::Connected,
            receive_buffer,
            now,
        );
        conn.note_timestamp(syn.timestamp, now);
        conn.peer_window = syn.wnd as usize;
        conn.need_ack = true;
        conn.flush(now);
        conn
    }

    fn micros(&self, now: Instant) -> u32 {
        now.duration_since(self.epoch).as_micros() as u32
    }

    fn note_timestamp(&mut self, theirs: u32, now: Instant) {
        self.reply_micros = self.micros(now).wrapping_sub(theirs);
    }

    fn receive_window(&self) -> usize {
        self.recv_buffer
            .saturating_sub(self.readable.len() + self.reorder_bytes)
    }

    /// Room in the send buffer.
    pub fn send_room(&self) -> usize {
        if self.close_requested || self.state == State::Closed {
            0
        } else {
            SEND_BUFFER.saturating_sub(self.unsent.len())
        }
    }

    pub fn write(&mut self, data: &[u8], now: Instant) -> usize {
        let n = data.len().min(self.send_room());
        self.unsent.extend_from_slice(&data[..n]);
        self.flush(now);
        n
    }

    /// Takes up to `max` bytes received in order; a reader that opens the window again tells
    /// the peer at once, so a sender stopped by a full window does not wait for a timeout.
    pub fn read(&mut self, max: usize, now: Instant) -> Bytes {
        let n = max.min(self.readable.len());
        let data = self.readable.split_to(n).freeze();
        let window = self.receive_window();
        if self.state == State::Connected
            && self.advertised < self.recv_buffer / 2
            && window >= self.advertised + self.recv_buffer / 4
        {
            self.need_ack = true;
            self.flush(now);
        }
        data
    }

    /// Ends our side once everything written is sent (a FIN after the last data packet).
    pub fn close(&mut self, now: Instant) {
        if !self.close_requested {
            self.close_requested = true;
            self.flush(now);
        }
    }

    /// Whether our side was closed ([`Connection::close`]): nothing more may be written.
    pub fn close_requested(&self) -> bool {
        self.close_requested
    }

    /// Our FIN is acked (or the connection is closed): nothing of ours is left to deliver.
    pub fn done_sending(&self) -> bool {
        self.state == State::Closed || (self.fin_sent && self.inflight.is_empty())
    }

    fn fail(&mut self, kind: io::ErrorKind) {
        if self.state != State::Closed {
            self.error.get_or_insert(kind);
            self.state = State::Closed;
        }
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.lost_packets = 0;
        self.unsent.clear();
    }

    fn datagram(&mut self, kind: Kind, seq: u16, payload: &[u8], now: Instant) -> Vec<u8> {
        let window = self.receive_window();
        self.advertised = window;
        let header = Header {
            kind,
            conn_id: if kind == Kind::Syn {
                self.recv_id
            } else {
                self.send_id
            },
            timestamp: self.micros(now),
            timestamp_diff: self.reply_micros,
            wnd: window as u32,
            seq,
            ack: self.ack_nr,
        };
        let mask = self.sack_mask();
        let mut out = Vec::with_capacity(HEADER + 2 + MAX_SACK_BYTES + payload.len());
        packet::encode(&header, mask.as_deref(), payload, &mut out);
        self.last_sent = now;
        self.need_ack = false;
        out
    }

    /// Which packets after `ack_nr + 1` we hold (up to 128 of them), when we hold any: as
    /// few 4-byte words as cover the furthest.
    fn sack_mask(&self) -> Option<Vec<u8>> {
        if self.reorder.is_empty() {
            return None;
        }
        let mut mask = vec![0u8; MAX_SACK_BYTES];
        let mut used = 0;
        for i in 0..(MAX_SACK_BYTES * 8) as u16 {
            if self.reorder.contains_key(&self.ack_nr.wrapping_add(2 + i)) {
                mask[(i / 8) as usize] |= 1 << (i % 8);
                used = i as usize / 8 + 1;
            }
        }
        mask.truncate(used.div_ceil(4).max(1) * 4);
        Some(mask)
    }

    fn send_new(&mut self, kind: Kind, payload: Bytes, now: Instant) {
        let seq = self.seq_nr;
        self.seq_nr = self.seq_nr.wrapping_add(1);
        let datagram = self.datagram(kind, seq, &payload, now);
        self.outgoing.push(datagram);
        self.inflight_bytes += payload.len();
        self.inflight.push_back(Sent {
            seq,
            kind,
            payload,
            sent_at: now,
            transmissions: 1,
            sacked: false,
            lost: false,
        });
        self.rto_deadline.get_or_insert(now + self.rto);
    }

    fn resend(&mut self, index: usize, now: Instant) {
        let (kind, seq, payload) = {
            let sent = &mut self.inflight[index];
            sent.transmissions += 1;
            sent.sent_at = now;
            if std::mem::take(&mut sent.lost) {
                self.inflight_bytes += sent.payload.len();
                self.lost_packets -= 1;
            }
            (sent.kind, sent.seq, sent.payload.clone())
        };
        let datagram = self.datagram(kind, seq, &payload, now);
        self.outgoing.push(datagram);
    }

    /// Sends what the windows allow, then an ack if one is owed and nothing carried it.
    pub fn flush(&mut self, now: Instant) {
        if self.state == State::SynSent || self.error.is_some() {
            return;
        }
        let window = self.window.min(self.peer_window);
        // One packet may always be in flight, or a zero window would never reopen.
        let fits = |inflight: usize, len: usize| inflight == 0 || inflight + len <= window;
        let mut i = 0;
        while self.lost_packets > 0 {
            let Some(index) = self.inflight.range(i..).position(|s| s.lost) else {
                break;
            };
            let index = i + index;
            if !fits(self.inflight_bytes, self.inflight[index].payload.len()) {
                return self.flush_ack(now);
            }
            self.resend(index, now);
            i = index + 1;
        }
        while !self.unsent.is_empty() {
            let len = self.unsent.len().min(MAX_PAYLOAD);
            if !fits(self.inflight_bytes, len) {
                break;
            }
            let payload = self.unsent.split_to(len).freeze();
            self.send_new(Kind::Data, payload, now);
        }
        if self.unsent.is_empty() && self.close_requested && !self.fin_sent {
            self.fin_sent = true;
            self.send_new(Kind::Fin, Bytes::new(), now);
        }
        self.flush_ack(now);
    }

    fn flush_ack(&mut self, now: Instant) {
        if self.need_ack {
            let datagram = self.datagram(Kind::State, self.seq_nr, &[], now);
            self.outgoing.push(datagram);
        }
    }

    /// Takes one packet in. It sends nothing itself, not even the ack it owes: the caller
    /// [`flush`](Connection::flush)es once it has handed over every packet that arrived
    /// together, so a burst of data packets is acked once (libutp's deferred acks), not once
    /// a packet, which cost the receiver a `sendto` for every datagram it read.
    pub fn on_packet(&mut self, p: &Packet<'_>, now: Instant) {
        let h = &p.header;
        if self.state == State::Closed {
            if self.error.is_none() && matches!(h.kind, Kind::Data | Kind::Fin) {
                // Closed cleanly, but our last ack was lost: the peer sends again.
                self.need_ack = true;
            }
            return;
        }
        if h.kind == Kind::Reset {
            self.fail(io::ErrorKind::ConnectionReset);
            return;
        }
        self.last_heard = now;
        self.note_timestamp(h.timestamp, now);
        if h.timestamp_diff != 0 {
            self.delay_sample(h.timestamp_diff, now);
        }
        // A state packet that changes the window is an update, not a duplicate ack (as in TCP):
        // counted, three of them (a reader opening its window in steps) resent a packet that
        // was not lost and halved the window.
        let window_update = self.peer_window != h.wnd as usize;
        self.peer_window = h.wnd as usize;
        match (self.state, h.kind) {
            (State::SynSent, Kind::State) => {
                // The answer's seq_nr is the first the peer will send data with (libutp and
                // libtorrent do not count the answer itself).
                self.ack_nr = h.seq.wrapping_sub(1);
                self.state = State::Connected;
            }
            (State::SynSent, _) => return,
            (_, Kind::Syn) => {
                // Our answer was lost: the peer dials again.
                self.need_ack = true;
                return;
            }
            _ => {}
        }
        self.on_ack(
            h.ack,
            p.sack,
            h.kind == Kind::State && p.payload.is_empty() && !window_update,
            now,
        );
        if matches!(h.kind, Kind::Data | Kind::Fin) {
            self.on_data(h, p.payload);
        }
        if self.fin_sent && self.inflight.is_empty() && self.eof {
            self.state = State::Closed;
        }
    }

    fn delay_sample(&mut self, sample: u32, now: Instant) {
        while self
            .delay_samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > BASE_DELAY_WINDOW)
        {
            self.delay_samples.pop_front();
        }
        // Keep the samples a minimum over the window needs: each newer one is at most as big.
        // Compared as the 32-bit microsecond clocks they come from, which wrap: samples near 0
        // (two clocks started together, pow to pow) straddle it, and one just below it read as
        // 71 minutes of delay and cut the window.
        while self
            .delay_samples
            .back()
            .is_some_and(|(_, s)| !micros_before(*s, sample))
        {
            self.delay_samples.pop_back();
        }
        // And at most one a second: a peer whose timestamps only grow would otherwise add one
        // per packet (hundreds of MB in the window). The minimum's age is then off by at most
        // that second.
        let recent = self
            .delay_samples
            .back()
            .is_some_and(|(at, _)| now.duration_since(*at) < DELAY_SAMPLE_SPACING);
        if !recent {
            self.delay_samples.push_back((now, sample));
        }
        let base = self.delay_samples.front().map_or(sample, |(_, s)| *s);
        let above_base = if micros_before(sample, base) {
            0
        } else {
            sample.wrapping_sub(base)
        };
        self.our_delay = Duration::from_micros(u64::from(above_base));
    }

    fn on_ack(&mut self, ack: u16, sack: Option<&[u8]>, pure_ack: bool, now: Instant) {
        if seq_before(self.seq_nr.wrapping_sub(1), ack) {
            // An ack of a packet not sent yet (libutp ignores those too) took everything in
            // flight, the FIN included, for delivered.
            return;
        }
        let mut acked_bytes = 0usize;
        let mut progressed = false;
        while let Some(front) = self.inflight.front() {
            if seq_before(ack, front.seq) {
                break;
            }
            let sent = self.inflight.pop_front().expect("front");
            progressed = true;
            if sent.lost {
                self.lost_packets -= 1;
            } else if !sent.sacked {
                self.inflight_bytes -= sent.payload.len();
                acked_bytes += sent.payload.len();
            }
            if sent.transmissions == 1 {
                self.rtt_sample(now.duration_since(sent.sent_at));
            }
        }
        let mut highest_sacked = None;
        if let Some(mask) = sack {
            for (i, byte) in mask.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) == 0 {
                        continue;
                    }
                    let seq = ack.wrapping_add(2 + (i * 8 + bit) as u16);
                    // In flight are consecutive numbers from the oldest unacked one.
                    let Some(oldest) = self.inflight.front().map(|s| s.seq) else {
                        break;
                    };
                    let index = usize::from(seq.wrapping_sub(oldest));
                    if let Some(sent) = self.inflight.get_mut(index) {
                        if !sent.sacked {
                            sent.sacked = true;
                            if std::mem::take(&mut sent.lost) {
                                self.lost_packets -= 1;
                            } else {
                                self.inflight_bytes -= sent.payload.len();
                            }
                            acked_bytes += sent.payload.len();
                        }
                        highest_sacked = Some(seq);
                    }
                }
            }
        }
        if progressed {
            self.timeouts = 0;
            self.dup_acks = 0;
            self.rto_deadline = (!self.inflight.is_empty()).then(|| now + self.rto);
            if self
                .recovery_until
                .is_some_and(|until| !seq_before(ack, until))
            {
                self.recovery_until = None;
            }
        } else if pure_ack && ack == self.last_ack && !self.inflight.is_empty() {
            self.dup_acks += 1;
        }
        self.last_ack = ack;
        if acked_bytes > 0 {
            self.grow_window(acked_bytes);
        }
        self.resend_lost(highest_sacked, now);
    }

    fn rtt_sample(&mut self, sample: Duration) {
        match self.rtt {
            None => {
                self.rtt = Some(sample);
                self.rtt_var = sample / 2;
            }
            Some(rtt) => {
                let delta = rtt.abs_diff(sample);
                self.rtt_var = (self.rtt_var * 3 + delta) / 4;
                self.rtt = Some((rtt * 7 + sample) / 8);
            }
        }
        let rtt = self.rtt.expect("set");
        self.rto = (rtt + self.rtt_var * 4).clamp(MIN_RTO, MAX_RTO);
    }

    fn grow_window(&mut self, acked: usize) {
        let target = TARGET_DELAY.as_secs_f64();
        let off_target = ((target - self.our_delay.as_secs_f64()) / target).clamp(-1.0, 1.0);
        if self.window < self.slow_start_until && off_target > 0.5 {
            self.window += acked;
        } else {
            let gain = MAX_GAIN_PER_RTT * off_target * acked as f64 / self.window.max(acked) as f64;
            self.window = (self.window as f64 + gain) as usize;
        }
        self.window = self.window.clamp(MIN_WINDOW, MAX_WINDOW);
    }

    fn on_loss(&mut self) {
        if self.recovery_until.is_none() {
            self.window = (self.window / 2).max(MIN_WINDOW);
            self.slow_start_until = self.window;
            self.recovery_until = Some(self.seq_nr);
        }
    }

    /// Resends packets the acks show lost: the oldest after three duplicate acks, and any
    /// with three or more selectively acked packets after it; each at most once a round trip.
    fn resend_lost(&mut self, highest_sacked: Option<u16>, now: Instant) {
        let recent = self.rtt.unwrap_or(MIN_RTO);
        let mut lost = Vec::new();
        if self.dup_acks >= 3 {
            if let Some(i) = self.inflight.iter().position(|s| !s.sacked) {
                lost.push(i);
            }
            self.dup_acks = 0;
        }
        if let Some(highest) = highest_sacked {
            let mut sacked_after = 0;
            for (i, sent) in self.inflight.iter().enumerate().rev() {
                if seq_before(highest, sent.seq) {
                    continue;
                }
                if sent.sacked {
                    sacked_after += 1;
                } else if sacked_after >= 3 && !lost.contains(&i) {
                    lost.push(i);
                }
            }
        }
        let mut any = false;
        for i in lost {
            if now.duration_since(self.inflight[i].sent_at) >= recent
                || self.inflight[i].transmissions == 1
            {
                self.resend(i, now);
                any = true;
            }
        }
        if any {
            self.on_loss();
        }
    }

    fn on_data(&mut self, h: &Header, payload: &[u8]) {
        self.need_ack = true;
        let distance = h.seq.wrapping_sub(self.ack_nr);
        if distance == 0 || distance > MAX_REORDER {
            return; // a duplicate (acked again), or too far ahead to keep
        }
        if self.eof || self.fin_seq.is_some_and(|fin| seq_before(fin, h.seq)) {
            return; // past the end the peer gave: a reader that saw the end would get more
        }
        if distance == 1 && h.kind == Kind::Data && self.reorder.is_empty() {
            // The common case, the next packet with none waiting behind a hole: straight to
            // the readable bytes, without a copy of its own in the reorder map. Unless it is
            // past the window we offered (the reader has stopped): dropped, as TCP drops
            // what its window cannot take, and sent again once the reader opens the window.
            if payload.len() > self.receive_window() {
                return;
            }
            self.ack_nr = h.seq;
            self.readable.extend_from_slice(payload);
            return;
        }
        if h.kind == Kind::Fin {
            self.fin_seq = Some(h.seq);
            self.reorder.insert(h.seq, None);
        } else if !self.reorder.contains_key(&h.seq) {
            // The window already counts what waits in the reorder map: adding it again here
            // dropped every packet past a hole once half the buffer was held, resends into
            // later holes included, so a burst loss cost one RTO per hole.
            if distance > 1 && payload.len() > self.receive_window() {
                return;
            }
            // The packet that fills the hole is not held to the window (the packets behind
            // it may fill that, and would then never drain), but to what waits for the
            // reader: else a peer that kept one packet past a hole (an empty one will do)
            // had every in-order packet taken whatever the window, without limit.
            if distance == 1 && self.readable.len() + payload.len() > self.recv_buffer {
                return;
            }
            self.reorder_bytes += payload.len();
            self.reorder
                .insert(h.seq, Some(Bytes::copy_from_slice(payload)));
        }
        while let Some(next) = self.reorder.remove(&self.ack_nr.wrapping_add(1)) {
            self.ack_nr = self.ack_nr.wrapping_add(1);
            match next {
                Some(data) => {
                    self.reorder_bytes -= data.len();
                    self.readable.extend_from_slice(&data);
                }
                None => {
                    self.eof = true;
                    self.reorder.clear();
                    self.reorder_bytes = 0;
                    break;
                }
            }
        }
    }

    /// Timeouts: a SYN or the oldest packet unacked for an RTO is sent again and the window
    /// falls to one packet; a keep-alive when nothing was sent for a while.
    pub fn on_tick(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.rto_deadline.is_some_and(|deadline| now >= deadline) {
            if self.state == State::SynSent {
                self.syn_tries += 1;
                if self.syn_tries >= SYN_TRIES {
                    self.fail(io::ErrorKind::TimedOut);
                    return;
                }
            } else {
                // A probe into a window the peer closed, which it answered, is dropped by
                // design, not lost (libutp does not count it either): counted, a peer whose
                // reader stalled for about a minute lost its connection.
                let probing = self.inflight.front().is_some_and(|oldest| {
                    self.peer_window < oldest.payload.len().max(1)
                        && self.last_heard >= oldest.sent_at
                });
                if !probing {
                    self.timeouts += 1;
                }
                if self.timeouts > MAX_TIMEOUTS {
                    self.fail(io::ErrorKind::TimedOut);
                    return;
                }
                // Everything unacked is taken for lost and sent again from one packet up,
                // doubling each round trip to half the window we had.
                self.slow_start_until = (self.window / 2).max(MIN_WINDOW);
                self.window = MIN_WINDOW;
                for sent in self.inflight.iter_mut().filter(|s| !s.sacked && !s.lost) {
                    sent.lost = true;
                    self.inflight_bytes -= sent.payload.len();
                    self.lost_packets += 1;
                }
            }
            self.rto = (self.rto * 2).min(MAX_RTO);
            if self.state == State::SynSent {
                self.resend(0, now);
            }
            self.rto_deadline = Some(now + self.rto);
        }
        if self.state == State::Connected && now.duration_since(self.last_sent) >= KEEPALIVE {
            self.need_ack = true;
        }
        self.flush(now);
    }

    #[cfg(test)]
    fn next_expected(&self) -> u16 {
        self.ack_nr.wrapping_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Moves datagrams between two connections, dropping, duplicating and reordering some,
    /// until both are idle or `limit` of simulated time has passed.
    struct Link {
        a: Connection,
        b: Connection,
        now: Instant,
        rng: rand::rngs::StdRng,
        loss: f64,
        reorder: f64,
        in_flight: Vec<(bool, Instant, Vec<u8>)>,
        delay: Duration,
    }

    impl Link {
        fn new(loss: f64, reorder: f64, seed: u64) -> Link {
            let now = Instant::now();
            let a = Connection::dial(100, RECV_BUFFER, now);
            let b_placeholder = Connection::new(0, 0, 0, 0, State::Closed, RECV_BUFFER, now);
            let mut link = Link {
                a,
                b: b_placeholder,
                now,
                rng: rand::rngs::StdRng::seed_from_u64(seed),
                loss,
                reorder,
                in_flight: Vec::new(),
                delay: Duration::from_millis(5),
            };
            let syn = link.a.outgoing.remove(0);
            let p = packet::decode(&syn).unwrap();
            assert_eq!(p.header.kind, Kind::Syn);
            assert_eq!(p.header.conn_id, 100);
            link.b = Connection::accept(&p.header, 5000, RECV_BUFFER, now);
            link
        }

        fn collect(&mut self) {
            let now = self.now;
            for (to_b, conn) in [(true, &mut self.a), (false, &mut self.b)] {
                for d in conn.outgoing.drain(..) {
                    if self.rng.random_bool(self.loss) {
                        continue;
                    }
                    let jitter = if self.rng.random_bool(self.reorder) {
                        Duration::from_millis(self.rng.random_range(0..20))
                    } else {
                        Duration::ZERO
                    };
                    self.in_flight.push((to_b, now + self.delay + jitter, d));
                }
            }
        }

        fn step(&mut self) {
            self.collect();
            self.now += Duration::from_millis(1);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|(_, at, _)| *at <= now);
            self.in_flight = later;
            for (to_b, _, d) in due {
                let p = packet::decode(&d).unwrap();
                let conn = if to_b { &mut self.b } else { &mut self.a };
                assert_eq!(
                    p.header.conn_id, conn.recv_id,
                    "packet sent to the right id"
                );
                conn.on_packet(&p, now);
            }
            self.a.flush(now);
            self.b.flush(now);
            if now
                .duration_since(self.a.epoch)
                .as_millis()
                .is_multiple_of(10)
            {
                self.a.on_tick(now);
                self.b.on_tick(now);
            }
        }
    }

    fn transfer(loss: f64, reorder: f64, seed: u64, size: usize) -> Duration {
        let mut link = Link::new(loss, reorder, seed);
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        let back: Vec<u8> = (0..size / 3).map(|i| (i * 13) as u8).collect();
        let (mut written, mut written_back) = (0, 0);
        let (mut got, mut got_back) = (Vec::new(), Vec::new());
        let start = link.now;
        while !(link.a.state == State::Closed && link.b.state == State::Closed) {
            assert!(
                link.now.duration_since(start) < Duration::from_secs(600),
                "stuck: a {:?} b {:?} got {} of {}",
                link.a.state,
                link.b.state,
                got.len(),
                size
            );
            let now = link.now;
            if link.a.state == State::Connected {
                written += link.a.write(&data[written..], now);
                if written == data.len() {
                    link.a.close(now);
                }
            }
            written_back += link.b.write(&back[written_back..], now);
            if written_back == back.len() {
                link.b.close(now);
            }
            got.extend_from_slice(&link.b.read(70_000, now));
            got_back.extend_from_slice(&link.a.read(70_000, now));
            link.step();
            if link.a.error.is_some() || link.b.error.is_some() {
                let c = if link.a.error.is_some() {
                    &link.a
                } else {
                    &link.b
                };
                panic!("failed at {:?}: got {} back {} inflight {} first {:?} ack_nr(a) {} ack_nr(b) {} seq a {} seq b {} window {} peer {} timeouts {} state {:?}",
                    link.now.duration_since(start), got.len(), got_back.len(), c.inflight.len(),
                    c.inflight.front().map(|s| (s.seq, s.kind, s.transmissions, s.sacked)), link.a.ack_nr, link.b.ack_nr,
                    link.a.seq_nr, link.b.seq_nr, c.window, c.peer_window, c.timeouts, c.state);
            }
        }
        assert!(
            link.a.error.is_none() && link.b.error.is_none(),
            "{:?} {:?}",
            link.a.error,
            link.b.error
        );
        assert!(link.a.eof && link.b.eof);
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
        assert!(got_back == back, "bytes back differ");
        link.now.duration_since(start)
    }

    #[test]
    fn a_clean_link_carries_both_ways_and_closes() {
        let took = transfer(0.0, 0.0, 1, 3 << 20);
        eprintln!("3 MiB on a clean 10 ms link: {took:?} simulated");
        assert!(took < Duration::from_secs(20), "{took:?}");
    }

    #[test]
    fn loss_and_reordering_are_survived() {
        for seed in 0..6 {
            transfer(0.03, 0.2, seed, 1 << 20);
        }
        transfer(0.25, 0.3, 99, 200_000);
    }

    #[test]
    fn the_answer_to_a_syn_names_the_first_data_packet() {
        let now = Instant::now();
        let mut a = Connection::dial(7, RECV_BUFFER, now);
        let syn = a.outgoing.remove(0);
        let syn = packet::decode(&syn).unwrap();
        assert_eq!((syn.header.seq, syn.header.ack), (1, 0));
        let mut b = Connection::accept(&syn.header, 40_000, RECV_BUFFER, now);
        let answer = b.outgoing.remove(0);
        let answer = packet::decode(&answer).unwrap();
        assert_eq!(answer.header.kind, Kind::State);
        assert_eq!(
            (answer.header.seq, answer.header.ack, answer.header.conn_id),
            (40_000, 1, 7)
        );
        a.on_packet(&answer, now);
        assert_eq!(a.state, State::Connected);
        assert_eq!(a.next_expected(), 40_000);
        b.write(b"hello", now);
        let data = b.outgoing.remove(0);
        let data = packet::decode(&data).unwrap();
        assert_eq!(
            (data.header.kind, data.header.seq, data.header.conn_id),
            (Kind::Data, 40_000, 7)
        );
        a.on_packet(&data, now);
        assert_eq!(&a.read(100, now)[..], b"hello");
    }

    /// A dialer `a` and the connection `b` that accepted its SYN (`b`'s answer not yet read).
    fn dialed(now: Instant) -> (Connection, Connection) {
        let mut a = Connection::dial(7, RECV_BUFFER, now);
        let syn = a.outgoing.remove(0);
        let b = Connection::accept(
            &packet::decode(&syn).unwrap().header,
            40_000,
            RECV_BUFFER,
            now,
        );
        (a, b)
    }

    #[test]
    fn a_burst_of_data_packets_is_acked_once() {
        let now = Instant::now();
        let (mut a, mut b) = dialed(now);
        let answer = b.outgoing.remove(0);
        a.on_packet(&packet::decode(&answer).unwrap(), now);
        a.write(&[5u8; 20 * MAX_PAYLOAD], now);
        let burst = std::mem::take(&mut a.outgoing);
        assert_eq!(burst.len(), 16, "the initial window's packets");
        for datagram in &burst {
            b.on_packet(&packet::decode(datagram).unwrap(), now);
        }
        assert!(b.outgoing.is_empty(), "on_packet sends nothing itself");
        b.flush(now);
        assert_eq!(b.outgoing.len(), 1, "one ack for the burst");
        let ack = packet::decode(&b.outgoing[0]).unwrap();
        assert_eq!(
            (ack.header.kind, ack.header.ack),
            (Kind::State, a.seq_nr.wrapping_sub(1))
        );
        assert_eq!(b.read(usize::MAX, now).len(), 16 * MAX_PAYLOAD);
    }

    #[test]
    fn packets_past_a_hole_are_kept_up_to_the_whole_receive_buffer() {
        let now = Instant::now();
        let (_, mut b) = dialed(now);
        let conn_id = b.recv_id;
        let data_packet = |seq: u16| {
            let header = Header {
                kind: Kind::Data,
                conn_id,
                timestamp: 0,
                timestamp_diff: 0,
                wnd: RECV_BUFFER as u32,
                seq,
                ack: 40_000,
            };
            let mut out = Vec::new();
            packet::encode(&header, None, &[seq as u8; MAX_PAYLOAD], &mut out);
            out
        };
        // The first data packet (seq 2) is lost; 700 after it (930 KiB) arrive.
        for seq in 3..703 {
            b.on_packet(&packet::decode(&data_packet(seq)).unwrap(), now);
        }
        b.on_packet(&packet::decode(&data_packet(2)).unwrap(), now);
        let got = b.read(usize::MAX, now);
        assert_eq!(
            got.len(),
            701 * MAX_PAYLOAD,
            "every packet past the hole was kept"
        );
    }

    /// From the SYN and its answer on, not only from the first packet after them: a peer
    /// that sent a whole 1 MiB window at once into a socket that queues 200 KB lost its tail.
    #[test]
    fn the_window_offered_from_the_syn_on_is_the_receive_buffer_given() {
        let now = Instant::now();
        let mut a = Connection::dial(7, 200_000, now);
        let syn = a.outgoing.remove(0);
        let syn = packet::decode(&syn).unwrap();
        assert_eq!((syn.header.kind, syn.header.wnd), (Kind::Syn, 200_000));
        let mut b = Connection::accept(&syn.header, 40_000, 150_000, now);
        let answer = b.outgoing.remove(0);
        let answer = packet::decode(&answer).unwrap();
        assert_eq!(
            (answer.header.kind, answer.header.wnd),
            (Kind::State, 150_000)
        );
        a.on_packet(&answer, now);
        assert_eq!(a.peer_window, 150_000);
        b.need_ack = true;
        b.flush(now);
        let ack = packet::decode(b.outgoing.last().unwrap()).unwrap();
        assert_eq!(ack.header.wnd, 150_000);
        let c = Connection::dial(8, usize::MAX, now);
        assert_eq!(
            c.receive_window(),
            RECV_BUFFER,
            "never more than RECV_BUFFER"
        );
    }

    /// A data packet of the connection `b` accepted from `dialed`, carrying `timestamp_diff`.
    fn data_packet(b: &Connection, seq: u16, timestamp_diff: u32, payload: &[u8]) -> Vec<u8> {
        let header = Header {
            kind: Kind::Data,
            conn_id: b.recv_id,
            timestamp: 0,
            timestamp_diff,
            wnd: RECV_BUFFER as u32,
            seq,
            ack: 40_000,
        };
        let mut out = Vec::new();
        packet::encode(&header, None, payload, &mut out);
        out
    }

    /// A peer whose timestamps only grow (each sample larger than the last) keeps at most
    /// one delay sample a second: it used to add one per packet for the 120 s window.
    #[test]
    fn growing_delay_samples_are_kept_one_a_second() {
        let mut now = Instant::now();
        let (_, mut b) = dialed(now);
        for i in 0..100_000u32 {
            let datagram = data_packet(&b, 2, 1_000 + i, b"");
            b.on_packet(&packet::decode(&datagram).unwrap(), now);
            now += Duration::from_micros(100); // 10 s in all
        }
        assert!(
            b.delay_samples.len() <= 11,
            "{} samples",
            b.delay_samples.len()
        );
        assert_eq!(
            b.delay_samples.front().unwrap().1,
            1_000,
            "the minimum is kept"
        );
    }

    /// Three acks that only change the window (a reader opening it in steps) are window
    /// updates, not duplicate acks: nothing is resent, the window is not halved.
    #[test]
    fn window_updates_are_not_duplicate_acks() {
        let now = Instant::now();
        let (mut a, mut b) = dialed(now);
        let answer = b.outgoing.remove(0);
        a.on_packet(&packet::decode(&answer).unwrap(), now);
        a.write(&[5u8; 4 * MAX_PAYLOAD], now);
        a.outgoing.clear();
        let window = a.window;
        for wnd in [100_000u32, 200_000, 300_000] {
            let header = Header {
                kind: Kind::State,
                conn_id: a.recv_id,
                timestamp: 0,
                timestamp_diff: 0,
                wnd,
                seq: 40_000,
                ack: 1,
            };
            let mut out = Vec::new();
            packet::encode(&header, None, b"", &mut out);
            a.on_packet(&packet::decode(&out).unwrap(), now);
        }
        assert_eq!(a.dup_acks, 0);
        assert!(a.outgoing.is_empty(), "resent {} packets", a.outgoing.len());
        assert_eq!(a.window, window);
    }

    /// Delay samples on either side of the 32-bit clock's wrap are compared as close: one just
    /// below it, after one just above, is the smaller delay (it read as 71 minutes more).
    #[test]
    fn delay_samples_across_the_clock_wrap_are_close() {
        let mut now = Instant::now();
        let (_, mut b) = dialed(now);
        b.delay_sample(5, now);
        now += Duration::from_secs(2);
        b.delay_sample(u32::MAX - 10, now);
        assert_eq!(b.our_delay, Duration::ZERO);
        assert_eq!(
            b.delay_samples.front().unwrap().1,
            u32::MAX - 10,
            "the new base"
        );
        now += Duration::from_secs(2);
        b.delay_sample(5, now);
        assert_eq!(b.our_delay, Duration::from_micros(16));
    }

    /// In-order data past the window offered is dropped, not taken: a peer that ignores the
    /// window cannot grow what waits for a reader that stopped (it used to grow without
    /// bound; only packets past a hole were held to the window).
    #[test]
    fn in_order_data_past_the_window_is_dropped() {
        let now = Instant::now();
        let mut a = Connection::dial(7, RECV_BUFFER, now);
        let syn = a.outgoing.remove(0);
        let mut b = Connection::accept(&packet::decode(&syn).unwrap().header, 40_000, 100_000, now);
        for seq in 2..200u16 {
            let datagram = data_packet(&b, seq, 0, &[seq as u8; MAX_PAYLOAD]);
            b.on_packet(&packet::decode(&datagram).unwrap(), now);
        }
        let taken = b.readable.len();
        assert!(taken <= 100_000, "{taken} bytes held");
        assert_eq!(taken, 100_000 / MAX_PAYLOAD * MAX_PAYLOAD);
        // Read, the window opens, and the next packet in order is taken.
        assert_eq!(b.read(usize::MAX, now).len(), taken);
        let next = b.ack_nr.wrapping_add(1);
        let datagram = data_packet(&b, next, 0, &[1; MAX_PAYLOAD]);
        b.on_packet(&packet::decode(&datagram).unwrap(), now);
        assert_eq!(b.readable.len(), MAX_PAYLOAD);
    }

    /// One packet kept past a hole (an empty one does) used to let every in-order packet
    /// after it in whatever the window said: a peer could grow what waits for a reader that
    /// stopped without limit. Now that is held to the receive buffer too.
    #[test]
    fn a_packet_past_a_hole_does_not_open_the_window_to_in_order_data() {
        let now = Instant::now();
        let mut a = Connection::dial(7, RECV_BUFFER, now);
        let syn = a.outgoing.remove(0);
        let mut b = Connection::accept(&packet::decode(&syn).unwrap().header, 40_000, 100_000, now);
        let past_the_hole = data_packet(&b, 1_000, 0, b"");
        b.on_packet(&packet::decode(&past_the_hole).unwrap(), now);
        for seq in 2..900u16 {
            let datagram = data_packet(&b, seq, 0, &[seq as u8; MAX_PAYLOAD]);
            b.on_packet(&packet::decode(&datagram).unwrap(), now);
        }
        let held = b.readable.len() + b.reorder_bytes;
        assert!(held <= 100_000, "{held} bytes held");
    }

    /// Data past the FIN is not the stream's: a reader that saw its end got more after it.
    #[test]
    fn data_after_the_fin_is_not_delivered() {
        let now = Instant::now();
        let (_, mut b) = dialed(now);
        let header = Header {
            kind: Kind::Fin,
            conn_id: b.recv_id,
            timestamp: 0,
            timestamp_diff: 0,
            wnd: RECV_BUFFER as u32,
            seq: 2,
            ack: 39_999,
        };
        let mut fin = Vec::new();
        packet::encode(&header, None, b"", &mut fin);
        b.on_packet(&packet::decode(&fin).unwrap(), now);
        assert!(b.eof);
        let after = data_packet(&b, 3, 0, b"more");
        b.on_packet(&packet::decode(&after).unwrap(), now);
        assert!(b.read(usize::MAX, now).is_empty());
    }

    /// An ack of a packet we never sent takes nothing out of flight (it took everything, the
    /// FIN included, for delivered).
    #[test]
    fn an_ack_of_a_packet_never_sent_is_ignored() {
        let now = Instant::now();
        let (mut a, mut b) = dialed(now);
        let answer = b.outgoing.remove(0);
        a.on_packet(&packet::decode(&answer).unwrap(), now);
        a.write(&[5u8; 4 * MAX_PAYLOAD], now);
        let in_flight = a.inflight.len();
        assert_eq!(in_flight, 4);
        let header = Header {
            kind: Kind::State,
            conn_id: a.recv_id,
            timestamp: 0,
            timestamp_diff: 0,
            wnd: RECV_BUFFER as u32,
            seq: 40_000,
            ack: a.seq_nr.wrapping_add(100),
        };
        let mut ack = Vec::new();
        packet::encode(&header, None, b"", &mut ack);
        a.on_packet(&packet::decode(&ack).unwrap(), now);
        assert_eq!(a.inflight.len(), in_flight);
        // Its true ack still counts.
        let header = Header {
            ack: a.seq_nr.wrapping_sub(1),
            ..header
        };
        let mut ack = Vec::new();
        packet::encode(&header, None, b"", &mut ack);
        a.on_packet(&packet::decode(&ack).unwrap(), now);
        assert!(a.inflight.is_empty());
    }

    /// A peer that keeps answering with a closed window (its reader stalled) is probed, not
    /// given up on: each probe it drops used to count as a timeout, and the connection failed
    /// after about a minute.
    #[test]
    fn a_peer_that_answers_with_a_closed_window_is_not_timed_out() {
        let mut now = Instant::now();
        let (mut a, mut b) = dialed(now);
        let answer = b.outgoing.remove(0);
        a.on_packet(&packet::decode(&answer).unwrap(), now);
        a.write(&[5u8; 8 * MAX_PAYLOAD], now);
        let closed = |a: &Connection| {
            let header = Header {
                kind: Kind::State,
                conn_id: a.recv_id,
                timestamp: 0,
                timestamp_diff: 0,
                wnd: 0,
                seq: 40_000,
                ack: 1, // the SYN: none of the data
            };
            let mut out = Vec::new();
            packet::encode(&header, None, b"", &mut out);
            out
        };
        for _ in 0..3_000 {
            now += Duration::from_millis(100); // 300 s in all
            a.on_tick(now);
            if !std::mem::take(&mut a.outgoing).is_empty() {
                // Whatever came (a probe), the peer answers: no room.
                a.on_packet(&packet::decode(&closed(&a)).unwrap(), now);
            }
        }
        assert!(
            a.error.is_none(),
            "{:?} after {} timeouts",
            a.error,
            a.timeouts
        );
        // Once it stops answering, it is given up on as before.
        for _ in 0..3_000 {
            now += Duration::from_millis(100);
            a.on_tick(now);
        }
        assert_eq!(a.error, Some(io::ErrorKind::TimedOut));
    }

    #[test]
    fn an_unanswered_syn_fails_the_dial() {
        let mut now = Instant::now();
        let mut a = Connection::dial(7, RECV_BUFFER, now);
        for _ in 0..100 {
            now += Duration::from_millis(250);
            a.on_tick(now);
        }
        assert_eq!(a.error, Some(io::ErrorKind::TimedOut));
        assert_eq!(a.outgoing.len(), SYN_TRIES as usize);
    }

    #[test]
    fn a_reset_ends_the_connection() {
        let now = Instant::now();
        let mut a = Connection::dial(7, RECV_BUFFER, now);
        let reset = Header {
            kind: Kind::Reset,
            conn_id: 7,
            timestamp: 0,
            timestamp_diff: 0,
            wnd: 0,
            seq: 0,
            ack: 0,
        };
        a.on_packet(
            &Packet {
                header: reset,
                sack: None,
                payload: b"",
            },
            now,
        );
        assert_eq!(a.error, Some(io::ErrorKind::ConnectionReset));
    }
}
