//! The per-connection outbound queue: the last hop of the token path before the socket.
//!
//! Frames are encoded once, by whoever produces them, and queued as text with a [`Mark`] that lets
//! the socket writer time what it writes (TTFT, chunk gaps) without parsing. The queue is bounded;
//! a producer that cannot queue within the slow-client timeout closes the connection with
//! [`CloseReason::SlowConsumer`] instead of buffering without limit.
//!
//! The chunk-forwarder does not wait on a full queue: it [`Outbound::try_reserve`]s a place, and
//! when there is none it coalesces the next tokens into one pending frame while it
//! [`Outbound::reserve`]s (see `forwarder.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mangaassist_protocols::ServerFrame;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the writer should time when it writes a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Nothing to time.
    Plain,
    /// `turn_started`: the turn's clock started at `received_at` (the `user_message` arrival).
    TurnStart {
        /// When the user message was read from the socket.
        received_at: Instant,
    },
    /// A `token` frame: time to first token, or the gap since the previous one.
    Token,
    /// The turn's last frame (`done` or `error`): stop timing.
    TurnEnd,
}

/// One encoded frame waiting for the socket.
#[derive(Debug)]
pub struct OutFrame {
    /// JSON text of the frame.
    pub text: String,
    /// What to time.
    pub mark: Mark,
}

/// Why a connection was closed by the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client stopped reading; the queue stayed full past the slow-client timeout.
    SlowConsumer,
    /// The runtime is shutting down.
    ServerShutdown,
    /// No frame went either way for the idle timeout.
    IdleTimeout,
    /// The session's user was erased.
    UserErased,
    /// `hello` was refused for its token.
    Unauthorized,
    /// The client resumed this connection's session on a new connection (this one had not
    /// noticed it dropped).
    Superseded,
}

/// The queue is gone: the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection closed")]
pub struct Closed;

/// State every clone of one connection's [`Outbound`] shares.
#[derive(Debug)]
struct Shared {
    /// The first reason given for closing.
    reason: OnceLock<CloseReason>,
    /// When the connection opened.
    opened: Instant,
    /// Milliseconds after `opened` of the last frame read or written.
    last_activity_ms: AtomicU64,
    /// A turn was accepted and its last frame is not written yet (what a draining shutdown
    /// waits for).
    turn_open: AtomicBool,
    /// Woken when a turn's last frame is written.
    turn_written: Notify,
}

/// Producer side of a connection's outbound queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Bounded queue to the socket writer.
    tx: mpsc::Sender<OutFrame>,
    /// Cancelled when the connection must close; the reader and writer watch it.
    closing: CancellationToken,
    /// Close reason and activity clock, shared by every clone.
    shared: Arc<Shared>,
    /// How long a producer may wait for queue space before the client counts as slow.
    slow_client_timeout: Duration,
}

impl Outbound {
    /// A queue of `capacity` frames and the receiver the socket writer drains.
    pub fn channel(
        capacity: usize,
        slow_client_timeout: Duration,
    ) -> (Self, mpsc::Receiver<OutFrame>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                closing: CancellationToken::new(),
                shared: Arc::new(Shared {
                    reason: OnceLock::new(),
                    opened: Instant::now(),
                    last_activity_ms: AtomicU64::new(0),
                    turn_open: AtomicBool::new(false),
                    turn_written: Notify::new(),
                }),
                slow_client_timeout,
            },
            rx,
        )
    }

    /// Queues an encoded frame, waiting at most the slow-client timeout for space.
    pub async fn send_text(&self, text: String, mark: Mark) -> Result<(), Closed> {
        let frame = OutFrame { text, mark };
        // Fast path: no timer when there is room.
        let frame = match self.tx.try_send(frame) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Closed),
            Err(mpsc::error::TrySendError::Full(f)) => f,
        };
        tokio::select! {
            sent = tokio::time::timeout(self.slow_client_timeout, self.tx.send(frame)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Closed),
                Err(_elapsed) => {
                    self.close(CloseReason::SlowConsumer);
                    Err(Closed)
                }
            },
            () = self.closing.cancelled() => Err(Closed),
        }
    }

    /// A place in the queue if one is free now; `Ok(None)` when the queue is full.
    pub fn try_reserve(&self) -> Result<Option<Place<'_>>, Closed> {
        match self.tx.try_reserve() {
            Ok(permit) => Ok(Some(Place(permit))),
            Err(mpsc::error::TrySendError::Full(())) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(())) => Err(Closed),
        }
    }

    /// Waits for a place in the queue (cancel-safe: dropping the future gives up no place), or
    /// for the connection to close. The caller bounds the wait (the slow-client policy).
    pub async fn reserve(&self) -> Result<Place<'_>, Closed> {
        // A closing connection takes nothing more, even when its queue has room.
        tokio::select! {
            biased;
            () = self.closing.cancelled() => Err(Closed),
            permit = self.tx.reserve() => permit.map(Place).map_err(|_| Closed),
        }
    }

    /// How long the queue may stay full before the client counts as slow.
    pub fn slow_client_timeout(&self) -> Duration {
        self.slow_client_timeout
    }

    /// Encodes and queues a frame.
    pub async fn send(&self, frame: &ServerFrame, mark: Mark) -> Result<(), Closed> {
        self.send_text(frame.encode(), mark).await
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.shared.reason.set(reason);
        self.closing.cancel();
    }

    /// Notes that a frame was read or written at `now` (for the idle timeout).
    pub fn touch(&self, now: Instant) {
        let ms = u64::try_from(
            now.saturating_duration_since(self.shared.opened)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        self.shared
            .last_activity_ms
            .fetch_max(ms, Ordering::Relaxed);
    }

    /// When a frame was last read or written (the opening, if none yet).
    pub fn last_activity(&self) -> Instant {
        self.shared.opened
            + Duration::from_millis(self.shared.last_activity_ms.load(Ordering::Relaxed))
    }

    /// Returns once no frame has been read or written for `limit` (never when `None`).
    pub async fn idle_for(&self, limit: Option<Duration>) {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        loop {
            let deadline = self.last_activity() + limit;
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// A turn was accepted on this connection: until its last frame is written,
    /// [`Outbound::turn_idle`] waits.
    pub fn turn_opened(&self) {
        self.shared.turn_open.store(true, Ordering::Release);
    }

    /// The socket writer wrote a turn's last frame (`done` or `error`).
    pub fn turn_last_frame_written(&self) {
        self.shared.turn_open.store(false, Ordering::Release);
        self.shared.turn_written.notify_waiters();
    }

    /// Returns once no turn of this connection is streaming: at once when none is, else when
    /// the streaming turn's last frame has been written to the socket.
    pub async fn turn_idle(&self) {
        crate::wait_for(&self.shared.turn_written, || {
            (!self.shared.turn_open.load(Ordering::Acquire)).then_some(())
        })
        .await;
    }

    /// The token the connection's tasks watch to know it is closing.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Whether `other` is a clone of this connection's queue.
    pub fn same_connection(&self, other: &Outbound) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Why the server closed the connection, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason.get().copied()
    }
}

/// A reserved place in a connection's outbound queue: queueing into it cannot wait or fail.
#[derive(Debug)]
pub struct Place<'a>(mpsc::Permit<'a, OutFrame>);

impl Place<'_> {
    /// Queues an encoded frame in the reserved place.
    pub fn send_text(self, text: String, mark: Mark) {
        self.0.send(OutFrame { text, mark });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_closes_as_slow_consumer() {
        let (out, _rx) = Outbound::channel(1, Duration::from_secs(5));
        out.send_text("a".into(), Mark::Plain).await.unwrap();
        let t0 = Instant::now();
        assert_eq!(out.send_text("b".into(), Mark::Plain).await, Err(Closed));
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        assert_eq!(out.close_reason(), Some(CloseReason::SlowConsumer));
        assert!(out.closing().is_cancelled());
    }

    #[tokio::test]
    async fn places_are_reserved_without_waiting_or_waited_for() {
        let (out, mut rx) = Outbound::channel(1, Duration::from_secs(5));
        out.try_reserve()
            .unwrap()
            .unwrap()
            .send_text("a".into(), Mark::Token);
        assert!(out.try_reserve().unwrap().is_none(), "full");
        let waited = tokio::time::timeout(Duration::from_millis(20), out.reserve()).await;
        assert!(waited.is_err(), "reserve waits while the queue is full");
        assert_eq!(rx.recv().await.unwrap().text, "a");
        out.reserve()
            .await
            .unwrap()
            .send_text("b".into(), Mark::Token);
        assert_eq!(rx.recv().await.unwrap().text, "b");
        out.close(CloseReason::SlowConsumer);
        assert_eq!(out.reserve().await.err(), Some(Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_is_measured_from_the_last_frame_either_way() {
        let (out, _rx) = Outbound::channel(4, Duration::from_secs(5));
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        out.touch(Instant::now());
        out.idle_for(Some(Duration::from_secs(3))).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(5),
            "3 s after the last touch"
        );
        let never = tokio::time::timeout(Duration::from_secs(3600), out.idle_for(None)).await;
        assert!(never.is_err(), "no limit, never idle");
    }

    #[tokio::test]
    async fn frames_arrive_in_order() {
        let (out, mut rx) = Outbound::channel(4, Duration::from_secs(5));
        out.send(&ServerFrame::Pong, Mark::Plain).await.unwrap();
        out.send_text("x".into(), Mark::Token).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().text, r#"{"type":"pong"}"#);
        assert_eq!(rx.recv().await.unwrap().mark, Mark::Token);
    }
}
