//! One answer's body, paced on an absolute schedule.
//!
//! Role: play a pre-encoded [`Answer`] as a response body stream. The head goes out at once;
//! content chunk `i` (0-based) is due at `start + first_token + i * pacing` and is sent with
//! `tokio::time::sleep_until`, so a late wake-up never delays the chunks after it (no drift
//! accumulates); the tail follows the last chunk at once. A [`Disruption`] may cut the body or
//! pause it after half the chunks.
//!
//! Inputs: the shared [`Answer`], a [`Schedule`], a [`Disruption`], and a guard that lives as long
//! as the stream. Outputs: `Result<Bytes, io::Error>` items for `axum::body::Body::from_stream`;
//! each item is a clone of the shared bytes, so a chunk costs no allocation.
//!
//! Failure policy: a cut is an `io::Error` item, yielded when chunk `half` would have been due,
//! on which hyper aborts the connection without ending the chunked body (the client sees a
//! truncated stream after exactly `half` chunks). A client that goes away drops the
//! stream, and with it the guard.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream;
use tokio::time::{Instant, sleep_until};

use crate::wire::Answer;

/// When the content chunks are due, relative to the request's arrival.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// From the request to the first content chunk.
    pub first_token: Duration,
    /// Between consecutive content chunks.
    pub pacing: Duration,
    /// Content chunks per answer.
    pub chunks: u32,
}

impl Schedule {
    /// How many chunks go out before a [`Disruption`] strikes.
    pub fn half(&self) -> u32 {
        self.chunks / 2
    }

    /// When chunk `index` is due (or the tail, for an answer with no chunks), stall included.
    fn due(&self, start: Instant, index: u32, stall: Duration) -> Instant {
        let mut offset = self.first_token + self.pacing.saturating_mul(index);
        if index >= self.half() {
            offset += stall;
        }
        start + offset
    }
}

/// What goes wrong with a streamed answer, after [`Schedule::half`] chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruption {
    /// Nothing: the whole answer.
    None,
    /// The connection is aborted mid-body, when the next chunk was due.
    Cut,
    /// The body pauses this long, then resumes (later chunks shift by as much).
    Stall(Duration),
}

/// Where a stream is in its answer.
struct Cursor<G> {
    /// The bytes every stream shares.
    answer: Arc<Answer>,
    /// When chunks are due.
    schedule: Schedule,
    /// When the request arrived.
    start: Instant,
    /// The fault to play, if any.
    disruption: Disruption,
    /// The head went out.
    head_sent: bool,
    /// The next chunk to send; `schedule.chunks` means the tail.
    next: u32,
    /// Nothing more to send.
    finished: bool,
    /// Released when the body is dropped (finished, cut, or the client left).
    _guard: G,
}

/// The body of one streamed answer; `guard` is dropped with it.
pub fn body<G: Send + 'static>(
    answer: Arc<Answer>,
    schedule: Schedule,
    disruption: Disruption,
    guard: G,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let cursor = Cursor {
        answer,
        schedule,
        start: Instant::now(),
        disruption,
        head_sent: false,
        next: 0,
        finished: false,
        _guard: guard,
    };
    stream::unfold(cursor, |mut c| async move {
        if c.finished {
            return None;
        }
        if !c.head_sent {
            c.head_sent = true;
            let head = c.answer.head.clone();
            return Some((Ok(head), c));
        }
        if c.next == c.schedule.half() && c.disruption == Disruption::Cut {
            // The cut comes when the next chunk was due, and after one pending poll, so hyper
            // flushes the chunks already sent before it aborts the connection.
            sleep_until(c.schedule.due(c.start, c.next, Duration::ZERO)).await;
            tokio::task::yield_now().await;
            c.finished = true;
            let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "mock-model: injected cut");
            return Some((Err(cut), c));
        }
        let stall = match c.disruption {
            Disruption::Stall(pause) => pause,
            Disruption::None | Disruption::Cut => Duration::ZERO,
        };
        if c.next < c.schedule.chunks {
            sleep_until(c.schedule.due(c.start, c.next, stall)).await;
            c.next += 1;
            let chunk = c.answer.chunk.clone();
            return Some((Ok(chunk), c));
        }
        if c.schedule.chunks == 0 {
            // No chunks: the tail itself is the first token.
            sleep_until(c.schedule.due(c.start, 0, stall)).await;
        }
        c.finished = true;
        let tail = c.answer.tail.clone();
        Some((Ok(tail), c))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use futures_util::StreamExt;

    use super::*;

    fn answer() -> Arc<Answer> {
        Arc::new(Answer {
            head: Bytes::from_static(b"H"),
            chunk: Bytes::from_static(b"c"),
            tail: Bytes::from_static(b"T"),
        })
    }

    /// The items of an answer of four chunks due at once (this crate's tokio has no paused clock).
    async fn play(disruption: Disruption) -> Vec<Result<Bytes, io::Error>> {
        let schedule = Schedule {
            first_token: Duration::ZERO,
            pacing: Duration::ZERO,
            chunks: 4,
        };
        body(answer(), schedule, disruption, ()).collect().await
    }

    #[test]
    fn chunks_are_due_on_an_absolute_schedule_and_a_stall_shifts_the_second_half() {
        let schedule = Schedule {
            first_token: Duration::from_millis(50),
            pacing: Duration::from_millis(20),
            chunks: 4,
        };
        let start = Instant::now();
        let due = |i, stall| (schedule.due(start, i, stall) - start).as_millis();
        let none = Duration::ZERO;
        assert_eq!(
            (0..4).map(|i| due(i, none)).collect::<Vec<_>>(),
            [50, 70, 90, 110]
        );
        let stall = Duration::from_millis(500);
        assert_eq!(
            (0..4).map(|i| due(i, stall)).collect::<Vec<_>>(),
            [50, 70, 590, 610]
        );
    }

    #[tokio::test]
    async fn a_whole_answer_is_head_chunks_tail() {
        let bytes: Vec<u8> = play(Disruption::None)
            .await
            .into_iter()
            .flat_map(|b| b.unwrap().to_vec())
            .collect();
        assert_eq!(bytes, b"HccccT");
    }

    #[tokio::test]
    async fn a_cut_ends_with_an_error_after_half_the_chunks() {
        let items = play(Disruption::Cut).await;
        assert_eq!(items.len(), 4, "head, two chunks, the error: {items:?}");
        assert!(items[..3].iter().all(Result::is_ok));
        assert!(items[3].is_err());
    }
}
