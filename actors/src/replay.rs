//! A turn's replay buffer: the frames of the streaming (or last) turn of a session, kept so a
//! client whose connection dropped can reconnect with `hello.resume_from {turn_id, seq}` and
//! receive what it missed, then the rest of the stream.
//!
//! One producer writes a turn's frames at any moment: the turn task (`turn_started`, `append`,
//! `done` or `error`) or, between them, the turn's chunk-forwarder (`token`). The producer
//! [`TurnLog::record`]s each frame as it queues it for the connection, so the buffer's order is
//! the wire order. A resume is a [`TurnLog::request`]: when the turn is over, the caller gets the
//! frames and sends them itself; while it streams, the request is handed to the producer, which
//! sends the missed frames to the new connection before its next frame and goes on there. No
//! frame is sent twice or skipped, because one task does both.
//!
//! The buffer is bounded in bytes (`server.replay_buffer_bytes`): the oldest frames go first,
//! and a resume that needs one of them is refused with `resume_expired`. Recording a frame is
//! a copy and a push under an uncontended lock; it never waits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use mangaassist_protocols::TurnId;
use mangaassist_protocols::frame::ResumeFrom;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::outbound::{Mark, Outbound};

/// One recorded frame.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Its position in the turn.
    pub seq: u64,
    /// Its JSON text.
    pub text: String,
    /// How the socket writer times it.
    pub mark: Mark,
}

/// A new connection taking over a streaming turn, with the frames it missed.
#[derive(Debug)]
pub struct Handover {
    /// The new connection.
    pub outbound: Outbound,
    /// The frames to send it first, oldest first.
    pub missed: Vec<Logged>,
}

/// What became of a resume request.
#[derive(Debug)]
pub enum Requested {
    /// The turn is over: send these frames (its end included) yourself.
    Ended(Vec<Logged>),
    /// The turn is streaming: its producer sends the missed frames and goes on.
    HandedOver,
    /// Frames the client needs were dropped from the buffer.
    Expired {
        /// The newest dropped seq.
        dropped_through: u64,
    },
    /// The turn ended over the resume window ago and its frames were let go.
    Released,
}

#[derive(Debug)]
struct Inner {
    frames: VecDeque<Logged>,
    bytes: usize,
    /// The newest seq evicted to keep within the limit.
    dropped_through: Option<u64>,
    /// The turn's last frame is recorded: no producer is left.
    ended: bool,
    /// A resume waiting for the producer's next step.
    pending: Option<(Outbound, ResumeFrom)>,
    /// The connection the turn streams to: the one it started on, then each that took it over.
    current: Outbound,
    /// The seq after the newest recorded frame.
    next_seq: u64,
    /// The frames were let go ([`Retention`]).
    released: bool,
}

/// The replay buffer of one turn. Shared by the session (which asks for resumes) and the turn's
/// producers (which record frames).
#[derive(Debug)]
pub struct TurnLog {
    turn_id: TurnId,
    max_bytes: usize,
    inner: Mutex<Inner>,
    /// Signalled when a resume is handed to the producer.
    resumed: Notify,
}

impl TurnLog {
    /// An empty buffer for `turn_id`, streaming to `outbound`, holding at most `max_bytes` of
    /// frame text (the newest frame is always kept, whatever its size).
    pub fn new(turn_id: TurnId, max_bytes: usize, outbound: Outbound) -> Self {
        Self {
            turn_id,
            max_bytes,
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                bytes: 0,
                dropped_through: None,
                ended: false,
                pending: None,
                current: outbound,
                next_seq: 0,
                released: false,
            }),
            resumed: Notify::new(),
        }
    }

    /// The turn this buffer is for.
    pub fn turn_id(&self) -> &TurnId {
        &self.turn_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the frame `seq` the producer is about to queue; `last` marks the turn's end.
    /// Returns the resume waiting for the producer, if one is: the producer then sends
    /// [`Handover::missed`] (this frame included) to the new connection instead of queueing
    /// this frame on the old one.
    pub fn record(&self, seq: u64, text: &str, mark: Mark, last: bool) -> Option<Handover> {
        let mut inner = self.lock();
        let handover = inner.pending.take().map(|(outbound, from)| {
            let mut missed = missed(&inner.frames, &from);
            if from.wants(seq) {
                missed.push(Logged {
                    seq,
                    text: text.to_owned(),
                    mark,
                });
            }
            inner.current = outbound.clone();
            Handover { outbound, missed }
        });
        inner.next_seq = inner.next_seq.max(seq + 1);
        inner.bytes += text.len();
        inner.frames.push_back(Logged {
            seq,
            text: text.to_owned(),
            mark,
        });
        while inner.bytes > self.max_bytes && inner.frames.len() > 1 {
            if let Some(old) = inner.frames.pop_front() {
                inner.bytes -= old.text.len();
                inner.dropped_through = Some(old.seq);
            }
        }
        if last {
            inner.ended = true;
        }
        handover
    }

    /// A client resumes the turn on `outbound` from `from`.
    pub fn request(&self, outbound: Outbound, from: ResumeFrom) -> Requested {
        let mut inner = self.lock();
        if inner.released {
            return Requested::Released;
        }
        if let Some(dropped) = inner.dropped_through
            && from.wants(dropped)
        {
            return Requested::Expired {
                dropped_through: dropped,
            };
        }
        if inner.ended {
            return Requested::Ended(missed(&inner.frames, &from));
        }
        // A newer resume replaces one the producer has not taken (its connection is gone too).
        inner.pending = Some((outbound, from));
        drop(inner);
        self.resumed.notify_one();
        Requested::HandedOver
    }

    /// Waits until a resume is handed to the producer (cancel-safe; a resume handed over while
    /// nobody waited is seen by the next wait or the next [`TurnLog::record`]).
    pub async fn resumed(&self) {
        self.resumed.notified().await;
    }

    /// The resume waiting for the producer, taken between frames.
    pub fn take_handover(&self) -> Option<Handover> {
        let mut inner = self.lock();
        let (outbound, from) = inner.pending.take()?;
        let missed = missed(&inner.frames, &from);
        inner.current = outbound.clone();
        Some(Handover { outbound, missed })
    }

    /// The connection the turn streams to now.
    pub fn current(&self) -> Outbound {
        self.lock().current.clone()
    }

    /// The seq after the newest recorded frame (0 before any).
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Lets the frames go: the turn ended over the resume window ago.
    pub fn release(&self) {
        let mut inner = self.lock();
        inner.released = true;
        inner.frames = VecDeque::new();
        inner.bytes = 0;
    }

    /// Whether the frames were let go.
    pub fn is_released(&self) -> bool {
        self.lock().released
    }

    /// Frames held now and bytes they take (for tests and metrics).
    pub fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.frames.len(), inner.bytes)
    }
}

/// Lets ended turns' buffers go once the resume window after their end has passed: one queue
/// for the process, swept by one periodic task (the runtime's), not a timer per turn. Every entry waits
/// the same window, so the queue is in due order.
#[derive(Debug, Default)]
pub struct Retention {
    due: Mutex<VecDeque<(Instant, Weak<TurnLog>)>>,
}

impl Retention {
    /// A new, empty queue.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `log`'s turn has ended: let its frames go at `until`.
    pub fn keep_until(&self, log: &Arc<TurnLog>, until: Instant) {
        self.lock().push_back((until, Arc::downgrade(log)));
    }

    /// Releases every buffer due by `now`; how many were still held.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut released = 0;
        let mut due = self.lock();
        while due.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, log)) = due.pop_front()
                && let Some(log) = log.upgrade()
            {
                log.release();
                released += 1;
            }
        }
        released
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Weak<TurnLog>)>> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn missed(frames: &VecDeque<Logged>, from: &ResumeFrom) -> Vec<Logged> {
    frames
        .iter()
        .filter(|f| from.wants(f.seq))
        .cloned()
        .collect()
}

/// Sends `missed` to the new connection in order; false if it closed meanwhile.
///
/// Replayed frames are not timed (their time to first token and gaps were the old
/// connection's): `turn_started` and `token` go as plain frames, and the new connection's
/// writer times gaps from the first live token on. The turn's end keeps its mark, which tells a
/// draining shutdown that the turn is written.
pub async fn send_missed(outbound: &Outbound, missed: Vec<Logged>) -> bool {
    for f in missed {
        let mark = match f.mark {
            Mark::TurnEnd => Mark::TurnEnd,
            Mark::Plain | Mark::Token | Mark::TurnStart { .. } => Mark::Plain,
        };
        if outbound.send_text(f.text, mark).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn from(seq: Option<u64>) -> ResumeFrom {
        ResumeFrom {
            turn_id: TurnId::parse("t").unwrap(),
            seq,
        }
    }

    fn seqs(frames: &[Logged]) -> Vec<u64> {
        frames.iter().map(|f| f.seq).collect()
    }

    fn log(max_bytes: usize) -> TurnLog {
        let (out, _rx) = Outbound::channel(1, Duration::from_secs(1));
        TurnLog::new(TurnId::parse("t").unwrap(), max_bytes, out)
    }

    #[test]
    fn an_ended_turn_replays_what_the_client_missed() {
        let log = log(1024);
        for seq in 0..5 {
            assert!(log.record(seq, "frame", Mark::Plain, seq == 4).is_none());
        }
        let (out, _rx) = Outbound::channel(8, Duration::from_secs(1));
        match log.request(out.clone(), from(Some(2))) {
            Requested::Ended(missed) => assert_eq!(seqs(&missed), [3, 4]),
            other => panic!("{other:?}"),
        }
        match log.request(out, from(None)) {
            Requested::Ended(missed) => assert_eq!(seqs(&missed), [0, 1, 2, 3, 4]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_streaming_turn_hands_the_resume_to_its_producer_at_the_next_frame() {
        let log = log(1024);
        for seq in 0..3 {
            log.record(seq, "frame", Mark::Token, false);
        }
        let (out, _rx) = Outbound::channel(8, Duration::from_secs(1));
        assert!(matches!(
            log.request(out.clone(), from(Some(0))),
            Requested::HandedOver
        ));
        let handover = log
            .record(3, "frame", Mark::Token, false)
            .expect("handed over");
        assert!(handover.outbound.same_connection(&out));
        assert!(
            log.current().same_connection(&out),
            "the turn follows the new connection"
        );
        assert_eq!(log.next_seq(), 4);
        assert_eq!(seqs(&handover.missed), [1, 2, 3], "the new frame included");
        assert!(log.record(4, "frame", Mark::Token, false).is_none(), "once");
        // Between frames, the producer takes it itself.
        log.request(out, from(Some(4)));
        assert!(log.take_handover().unwrap().missed.is_empty());
    }

    #[test]
    fn the_buffer_keeps_the_newest_bytes_and_refuses_a_resume_that_needs_a_dropped_frame() {
        let log = log(10);
        for seq in 0..5 {
            log.record(seq, "abcd", Mark::Token, false);
        }
        assert_eq!(log.held(), (2, 8), "the two newest frames fit in 10 bytes");
        let (out, _rx) = Outbound::channel(8, Duration::from_secs(1));
        match log.request(out.clone(), from(Some(1))) {
            Requested::Expired { dropped_through } => assert_eq!(dropped_through, 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            log.request(out, from(Some(2))),
            Requested::HandedOver
        ));
        // One frame larger than the limit is still kept: the newest frame is never lost.
        log.record(5, "a frame longer than ten bytes", Mark::Token, false);
        assert_eq!(log.held().0, 1);
    }

    #[test]
    fn ended_turns_are_let_go_once_their_window_passes() {
        let retention = Retention::new();
        let (early, late) = (Arc::new(log(1024)), Arc::new(log(1024)));
        early.record(0, "frame", Mark::Plain, true);
        late.record(0, "frame", Mark::Plain, true);
        let t0 = Instant::now();
        retention.keep_until(&early, t0 + Duration::from_secs(1));
        retention.keep_until(&late, t0 + Duration::from_secs(2));
        assert_eq!(retention.sweep(t0), 0, "nothing due yet");
        assert_eq!(retention.sweep(t0 + Duration::from_secs(1)), 1);
        assert!(early.is_released() && !late.is_released());
        assert_eq!(early.held(), (0, 0), "its memory is given back");
        let (out, _rx) = Outbound::channel(1, Duration::from_secs(1));
        assert!(matches!(
            early.request(out, from(None)),
            Requested::Released
        ));
        drop(late);
        assert_eq!(
            retention.sweep(t0 + Duration::from_secs(5)),
            0,
            "a session that is gone took its buffer with it"
        );
        assert!(retention.is_empty());
    }
}
