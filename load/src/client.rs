//! One session's connection and its turns, spoken exactly as a real client would.
//!
//! [`Connection::open`] dials the WebSocket, sends `hello` and waits for `welcome`.
//! [`Connection::turn`] sends one `user_message` and reads frames until that turn's `done` or
//! `error`; every arrival goes through a [`TurnTracker`], which checks the protocol (turn id, `seq`
//! rising by one from `turn_started`) and times the stream with a [`TurnTimer`].
//! [`Connection::idle`] holds a connection open, answering pings, until told to stop.
//!
//! Server frames are parsed with the server's own [`ServerFrame`] type: a frame this build does
//! not understand is a protocol error, never a silently skipped line. Nothing here aggregates;
//! outcomes ([`TurnRecord`], [`OpenError`], [`IdleEnd`]) know how to count themselves into
//! [`RunStats`], and the scenario decides what to do next.

use std::borrow::Cow;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mangaassist_protocols::frame::{ErrorFrame, ModelInfo};
use mangaassist_protocols::{ErrorCode, PROTOCOL_VERSION, ServerFrame, TurnId};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};
use tokio_util::sync::CancellationToken;

use crate::stats::{RunStats, TurnTimer, TurnTiming};

/// Per-connection WebSocket read buffer (tungstenite's default is 128 KiB).
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// How long a polite close (send `Close`, wait for the server's) may take before we just drop.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The client socket type.
type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The frames this client sends; the protocol crate only decodes client frames, so the encoding
/// lives here, next to its only user.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outgoing<'a> {
    /// Opens a new session.
    Hello {
        /// [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The credential (`--token`); the server refuses a `hello` without one.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
    },
    /// Starts a turn.
    UserMessage {
        /// `t<N>`.
        turn_id: &'a str,
        /// The query.
        text: &'a str,
    },
}

impl Outgoing<'_> {
    fn to_message(&self) -> Message {
        // Two string fields and an integer: serialization cannot fail, but stay total anyway.
        Message::text(serde_json::to_string(self).unwrap_or_default())
    }
}

/// Why a session never reached `welcome`.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// TCP connect or the WebSocket upgrade failed.
    #[error("connect failed: {0}")]
    Connect(#[from] tokio_tungstenite::tungstenite::Error),
    /// No `welcome` within the connect timeout.
    #[error("no welcome within {0:?}")]
    Timeout(Duration),
    /// The server answered `hello` with an `error` frame.
    #[error("hello refused: {code}: {message}", code = .0.code.as_str(), message = .0.message)]
    Refused(ErrorFrame),
    /// A frame that is not `welcome`, `keepalive` or `pong` arrived before `welcome`.
    #[error("protocol error before welcome: {0}")]
    Protocol(String),
    /// The server closed the connection before `welcome`.
    #[error("connection closed before welcome")]
    Closed,
}

impl OpenError {
    /// Counts this failure: one connect failure, plus the error frame or protocol error it was.
    pub fn record_into(&self, stats: &mut RunStats) {
        stats.connect_failures += 1;
        match self {
            OpenError::Refused(e) => stats.count_error_frame(e.code),
            OpenError::Protocol(_) => stats.protocol_errors += 1,
            OpenError::Connect(_) | OpenError::Timeout(_) | OpenError::Closed => {}
        }
        stats.sample_failure(self.to_string());
    }
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEnd {
    /// `done` arrived.
    Done,
    /// An `error` frame for this turn (or for no turn) arrived.
    Error {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// A frame broke the protocol; the stream can no longer be trusted.
    Protocol(String),
    /// The connection closed or failed mid-turn.
    Dropped(String),
    /// Neither `done` nor `error` within the per-turn timeout.
    TimedOut(Duration),
    /// The run's deadline (`--max-secs`) arrived first.
    Cancelled,
}

impl TurnEnd {
    /// Whether the session can send its next turn on the same connection.
    pub fn session_continues(&self) -> bool {
        match self {
            TurnEnd::Done => true,
            TurnEnd::Error { code, .. } => {
                !matches!(code, ErrorCode::SlowConsumer | ErrorCode::ServerShutdown)
            }
            TurnEnd::Protocol(_)
            | TurnEnd::Dropped(_)
            | TurnEnd::TimedOut(_)
            | TurnEnd::Cancelled => false,
        }
    }

    /// True for any end but `done` and the run's own deadline.
    pub fn is_failure(&self) -> bool {
        !matches!(self, TurnEnd::Done | TurnEnd::Cancelled)
    }

    /// True when the client stopped reading a turn the server had not ended: the run's deadline
    /// or the per-turn timeout. Such a turn keeps the gaps it saw and notes its open wait.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, TurnEnd::Cancelled | TurnEnd::TimedOut(_))
    }
}

/// One finished turn: what was measured and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRecord {
    /// Its id (`t<N>`).
    pub turn_id: TurnId,
    /// Timing figures.
    pub timing: TurnTiming,
    /// How it ended.
    pub end: TurnEnd,
}

impl TurnRecord {
    /// Records the timing and counts the outcome.
    pub fn record_into(&self, stats: &mut RunStats) {
        stats.record_timing(&self.timing);
        if self.end.is_incomplete() {
            stats.record_incomplete(&self.timing);
        }
        let turn = self.turn_id.as_str();
        if !self.end.session_continues() {
            match &self.end {
                TurnEnd::Error { code, .. } => stats.count_disconnect(code.as_str()),
                TurnEnd::Dropped(_) => stats.count_disconnect("connection_lost"),
                TurnEnd::Protocol(_) => stats.count_disconnect("protocol_error"),
                TurnEnd::TimedOut(_) => stats.count_disconnect("turn_timeout"),
                TurnEnd::Done | TurnEnd::Cancelled => {}
            }
        }
        match &self.end {
            TurnEnd::Done => stats.turns_ok += 1,
            TurnEnd::Error { code, message } => {
                stats.turns_error += 1;
                stats.count_error_frame(*code);
                stats.sample_failure(format!("turn {turn}: error {}: {message}", code.as_str()));
            }
            TurnEnd::Protocol(why) => {
                stats.turns_protocol += 1;
                stats.protocol_errors += 1;
                stats.sample_failure(format!("turn {turn}: protocol error: {why}"));
            }
            TurnEnd::Dropped(why) => {
                stats.turns_dropped += 1;
                stats.dropped_connections += 1;
                stats.sample_failure(format!("turn {turn}: connection dropped: {why}"));
            }
            TurnEnd::TimedOut(after) => {
                stats.turns_timed_out += 1;
                stats.sample_failure(format!("turn {turn}: no done/error within {after:?}"));
            }
            TurnEnd::Cancelled => stats.turns_cut += 1,
        }
    }
}

/// Follows the frames of one turn: checks them against the protocol and times them.
#[derive(Debug)]
pub struct TurnTracker {
    /// The turn every frame must name.
    turn_id: TurnId,
    /// The `seq` the next frame of the turn must carry (0 is `turn_started`).
    next_seq: u64,
    /// Timing of the turn.
    timer: TurnTimer,
}

impl TurnTracker {
    /// Follows turn `turn_id`, whose `user_message` was sent at `sent`.
    pub fn new(turn_id: TurnId, sent: Instant) -> Self {
        Self {
            turn_id,
            next_seq: 0,
            timer: TurnTimer::new(sent),
        }
    }

    /// A text frame arrived at `at`; returns the turn's end when this frame ends it.
    pub fn on_text(&mut self, text: &str, at: Instant) -> Option<TurnEnd> {
        // Fast path for the frame that is 98% of the traffic: a token is checked from borrowed
        // fields (type, turn_id, seq) without building a `ServerFrame`, so the measuring tool
        // spends less of the CPU it shares with the server. Anything else takes the full decode.
        if let Ok(peek) = serde_json::from_str::<TokenPeek<'_>>(text)
            && peek.kind == "token"
            && let (Some(turn_id), Some(seq)) = (peek.turn_id, peek.seq)
        {
            let checked = self.check_raw("token", &turn_id, Some(seq));
            return match checked {
                Ok(()) => {
                    self.timer.on_token(at);
                    None
                }
                Err(why) => Some(TurnEnd::Protocol(why)),
            };
        }
        match serde_json::from_str::<ServerFrame>(text) {
            Ok(frame) => self.on_frame(frame, at),
            Err(e) => Some(TurnEnd::Protocol(format!(
                "undecodable frame ({e}): {}",
                text.chars().take(120).collect::<String>()
            ))),
        }
    }

    /// A decoded frame arrived at `at`; returns the turn's end when this frame ends it.
    pub fn on_frame(&mut self, frame: ServerFrame, at: Instant) -> Option<TurnEnd> {
        let checked = match frame {
            ServerFrame::Keepalive | ServerFrame::Pong => Ok(None),
            ServerFrame::Welcome { .. } => Err("`welcome` during a turn".to_owned()),
            ServerFrame::Erased { .. } => Err("`erased` during a turn".to_owned()),
            ServerFrame::TurnStarted { turn_id, seq, .. }
            | ServerFrame::Append { turn_id, seq, .. } => self
                .check("turn_started/append", &turn_id, Some(seq))
                .map(|()| None),
            ServerFrame::Token { turn_id, seq, .. } => {
                self.check("token", &turn_id, Some(seq)).map(|()| {
                    self.timer.on_token(at);
                    None
                })
            }
            ServerFrame::Done { turn_id, seq, .. } => {
                self.check("done", &turn_id, Some(seq)).map(|()| {
                    self.timer.on_done(at);
                    Some(TurnEnd::Done)
                })
            }
            // An error naming no turn (busy, slow_consumer, server_shutdown...) ends this one too:
            // only one turn is in flight per connection.
            ServerFrame::Error(e) => {
                let named = e
                    .turn_id
                    .as_ref()
                    .map_or(Ok(()), |t| self.check("error", t, e.seq));
                named.map(|()| {
                    Some(TurnEnd::Error {
                        code: e.code,
                        message: e.message,
                    })
                })
            }
        };
        checked.unwrap_or_else(|why| Some(TurnEnd::Protocol(why)))
    }

    fn check(&mut self, what: &str, turn_id: &TurnId, seq: Option<u64>) -> Result<(), String> {
        self.check_raw(what, turn_id.as_str(), seq)
    }

    fn check_raw(&mut self, what: &str, turn_id: &str, seq: Option<u64>) -> Result<(), String> {
        if turn_id != self.turn_id.as_str() {
            return Err(format!(
                "`{what}` for turn {turn_id} while waiting on {}",
                self.turn_id
            ));
        }
        if let Some(seq) = seq {
            if seq != self.next_seq {
                return Err(format!(
                    "`{what}` with seq {seq}; expected {}",
                    self.next_seq
                ));
            }
            self.next_seq += 1;
        }
        Ok(())
    }

    /// Ends the turn with `end`, decided at `at`; an incomplete end
    /// ([`TurnEnd::is_incomplete`]) notes how long the turn had been waiting.
    pub fn finish(mut self, end: TurnEnd, at: Instant) -> TurnRecord {
        if end.is_incomplete() {
            self.timer.abandon(at);
        }
        TurnRecord {
            turn_id: self.turn_id,
            timing: self.timer.finish(),
            end,
        }
    }
}

/// The fields of a server frame the token fast path needs, borrowed from the text.
#[derive(Deserialize)]
struct TokenPeek<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    turn_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
}

/// Why [`Connection::idle`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleEnd {
    /// Told to stop.
    Cancelled,
    /// The server closed the connection or it failed.
    Dropped(String),
    /// The server sent an `error` frame.
    Error(ErrorCode, String),
    /// The server sent something unexpected on an idle session.
    Protocol(String),
}

impl IdleEnd {
    /// Counts an unexpected end (anything but [`IdleEnd::Cancelled`]).
    pub fn record_into(&self, stats: &mut RunStats) {
        match self {
            IdleEnd::Cancelled => {}
            IdleEnd::Dropped(why) => {
                stats.dropped_connections += 1;
                stats.sample_failure(format!("idle connection dropped: {why}"));
            }
            IdleEnd::Error(code, message) => {
                stats.dropped_connections += 1;
                stats.count_error_frame(*code);
                stats.sample_failure(format!(
                    "idle connection got error {}: {message}",
                    code.as_str()
                ));
            }
            IdleEnd::Protocol(why) => {
                stats.dropped_connections += 1;
                stats.protocol_errors += 1;
                stats.sample_failure(format!("idle connection: protocol error: {why}"));
            }
        }
    }
}

/// An open session: the socket after `welcome`.
pub struct Connection {
    /// The WebSocket.
    ws: WsStream,
    /// Connect + upgrade + hello -> welcome.
    connect_latency: Duration,
    /// What `welcome` said about the model.
    model: ModelInfo,
}

impl Connection {
    /// Connects to `url`, says `hello` and waits for `welcome`, all within `limit`.
    pub async fn open(url: &str, token: Option<&str>, limit: Duration) -> Result<Self, OpenError> {
        let start = Instant::now();
        timeout(limit, Self::handshake(url, token, start))
            .await
            .map_err(|_| OpenError::Timeout(limit))?
    }

    async fn handshake(url: &str, token: Option<&str>, start: Instant) -> Result<Self, OpenError> {
        // Nagle off: a user_message must leave now, or TTFT measures the kernel, not the server.
        // tungstenite zero-fills its whole read buffer on every read: the 128 KiB default made
        // memset the client's top cost. Frames here are a few hundred bytes.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let (mut ws, _response) = connect_async_with_config(url, Some(config), true).await?;
        ws.send(
            Outgoing::Hello {
                protocol: PROTOCOL_VERSION,
                token,
            }
            .to_message(),
        )
        .await?;
        loop {
            let text = match ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Err(OpenError::Closed),
                Some(Err(e)) => return Err(OpenError::Connect(e)),
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Binary(_))) => {
                    return Err(OpenError::Protocol("binary frame".into()));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            };
            match serde_json::from_str::<ServerFrame>(&text) {
                Ok(ServerFrame::Welcome { model, .. }) => {
                    return Ok(Self {
                        ws,
                        connect_latency: start.elapsed(),
                        model,
                    });
                }
                Ok(ServerFrame::Keepalive | ServerFrame::Pong) => {}
                Ok(ServerFrame::Error(e)) => return Err(OpenError::Refused(e)),
                Ok(other) => {
                    return Err(OpenError::Protocol(format!(
                        "expected welcome, got {}",
                        frame_name(&other)
                    )));
                }
                Err(e) => return Err(OpenError::Protocol(format!("undecodable frame: {e}"))),
            }
        }
    }

    /// Connect + upgrade + `hello` -> `welcome`.
    pub fn connect_latency(&self) -> Duration {
        self.connect_latency
    }

    /// The model `welcome` announced.
    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// Sends `user_message` and reads until the turn's `done` or `error`, `limit` elapses, or
    /// `cancel` fires.
    pub async fn turn(
        &mut self,
        turn_id: TurnId,
        text: &str,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> TurnRecord {
        let msg = Outgoing::UserMessage {
            turn_id: turn_id.as_str(),
            text,
        }
        .to_message();
        let sent = Instant::now();
        let mut tracker = TurnTracker::new(turn_id, sent);
        if let Err(e) = self.ws.send(msg).await {
            return tracker.finish(
                TurnEnd::Dropped(format!("send failed: {e}")),
                Instant::now(),
            );
        }
        let deadline = sleep_until(sent + limit);
        tokio::pin!(deadline);
        let end = loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => break TurnEnd::Cancelled,
                () = &mut deadline => break TurnEnd::TimedOut(limit),
                next = self.ws.next() => next,
            };
            let at = Instant::now();
            match next {
                None => break TurnEnd::Dropped("connection closed".into()),
                Some(Err(e)) => break TurnEnd::Dropped(e.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    break TurnEnd::Dropped(format!(
                        "server sent close{}",
                        frame
                            .map(|f| format!(" ({}: {})", f.code, f.reason))
                            .unwrap_or_default()
                    ));
                }
                Some(Ok(Message::Binary(_))) => break TurnEnd::Protocol("binary frame".into()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(t))) => {
                    if let Some(end) = tracker.on_text(&t, at) {
                        break end;
                    }
                }
            }
        };
        tracker.finish(end, Instant::now())
    }

    /// Holds the connection open and idle (reading, so pings get their pongs) until `cancel`
    /// fires or the connection ends.
    pub async fn idle(&mut self, cancel: &CancellationToken) -> IdleEnd {
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return IdleEnd::Cancelled,
                next = self.ws.next() => next,
            };
            match next {
                None | Some(Ok(Message::Close(_))) => {
                    return IdleEnd::Dropped("connection closed".into());
                }
                Some(Err(e)) => return IdleEnd::Dropped(e.to_string()),
                Some(Ok(Message::Binary(_))) => return IdleEnd::Protocol("binary frame".into()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerFrame>(&t) {
                    Ok(ServerFrame::Keepalive | ServerFrame::Pong) => {}
                    Ok(ServerFrame::Error(e)) => return IdleEnd::Error(e.code, e.message),
                    Ok(other) => {
                        return IdleEnd::Protocol(format!("unexpected {}", frame_name(&other)));
                    }
                    Err(e) => return IdleEnd::Protocol(format!("undecodable frame: {e}")),
                },
            }
        }
    }

    /// Closes politely: sends `Close` and drains until the server's, for at most a second.
    pub async fn close(mut self) {
        let _ = timeout(CLOSE_GRACE, async {
            if self.ws.close(None).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}

/// The wire name of a frame, for messages.
fn frame_name(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Welcome { .. } => "welcome",
        ServerFrame::TurnStarted { .. } => "turn_started",
        ServerFrame::Token { .. } => "token",
        ServerFrame::Append { .. } => "append",
        ServerFrame::Done { .. } => "done",
        ServerFrame::Error(_) => "error",
        ServerFrame::Keepalive => "keepalive",
        ServerFrame::Pong => "pong",
        ServerFrame::Erased { .. } => "erased",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::OpenWait;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tid(s: &str) -> TurnId {
        TurnId::parse(s).unwrap()
    }

    #[test]
    fn outgoing_frames_match_the_protocol() {
        let hello = serde_json::to_string(&Outgoing::Hello {
            protocol: 1,
            token: None,
        })
        .unwrap();
        assert_eq!(hello, r#"{"type":"hello","protocol":1}"#);
        let msg = serde_json::to_string(&Outgoing::UserMessage {
            turn_id: "t3",
            text: "hi \"there\"",
        })
        .unwrap();
        assert_eq!(
            msg,
            r#"{"type":"user_message","turn_id":"t3","text":"hi \"there\""}"#
        );
        let decoded = mangaassist_protocols::frame::decode_client(&msg, 1024).unwrap();
        assert!(matches!(
            decoded,
            mangaassist_protocols::ClientFrame::UserMessage(_)
        ));
    }

    #[test]
    fn tracker_times_a_scripted_turn() {
        let t0 = Instant::now();
        let mut tr = TurnTracker::new(tid("t1"), t0);
        let script = [
            (1, r#"{"type":"keepalive"}"#),
            (
                3,
                r#"{"type":"turn_started","turn_id":"t1","seq":0,"intent":"search","trace_id":"1-5759e988-bd862e3fe1be46a994272793"}"#,
            ),
            (
                10,
                r#"{"type":"token","turn_id":"t1","seq":1,"text":"We "}"#,
            ),
            (
                12,
                r#"{"type":"token","turn_id":"t1","seq":2,"text":"have "}"#,
            ),
            (
                17,
                r#"{"type":"token","turn_id":"t1","seq":3,"text":"it."}"#,
            ),
            (
                18,
                r#"{"type":"append","turn_id":"t1","seq":4,"kind":"product_cards","items":[]}"#,
            ),
        ];
        for (at, text) in script {
            assert_eq!(tr.on_text(text, t0 + ms(at)), None, "{text}");
        }
        let done = r#"{"type":"done","turn_id":"t1","seq":5,"usage":{"input_tokens":9,"output_tokens":3},"finish_reason":"stop","trace_id":"1-5759e988-bd862e3fe1be46a994272793"}"#;
        assert_eq!(tr.on_text(done, t0 + ms(20)), Some(TurnEnd::Done));
        let rec = tr.finish(TurnEnd::Done, t0 + ms(20));
        assert_eq!(rec.timing.open_wait, None);
        assert_eq!(rec.timing.ttft, Some(ms(10)));
        assert_eq!(rec.timing.gaps, vec![ms(2), ms(5)]);
        assert_eq!(rec.timing.latency, Some(ms(20)));
        assert_eq!(rec.timing.tokens, 3);
    }

    #[test]
    fn cut_turn_keeps_its_gaps() {
        let t0 = Instant::now();
        let mut tr = TurnTracker::new(tid("t1"), t0);
        let started = r#"{"type":"turn_started","turn_id":"t1","seq":0,"intent":"search","trace_id":"1-5759e988-bd862e3fe1be46a994272793"}"#;
        assert_eq!(tr.on_text(started, t0 + ms(3)), None);
        for (at, seq) in [(10, 1), (2_010, 2), (4_010, 3)] {
            let token = format!(r#"{{"type":"token","turn_id":"t1","seq":{seq},"text":"x"}}"#);
            assert_eq!(tr.on_text(&token, t0 + ms(at)), None);
        }
        assert!(TurnEnd::Cancelled.is_incomplete());
        assert!(TurnEnd::TimedOut(ms(1)).is_incomplete());
        assert!(!TurnEnd::Done.is_incomplete());
        assert!(!TurnEnd::Dropped("x".into()).is_incomplete());
        let rec = tr.finish(TurnEnd::Cancelled, t0 + ms(5_000));
        assert_eq!(rec.timing.gaps, vec![ms(2_000), ms(2_000)]);
        assert_eq!(rec.timing.open_wait, Some(OpenWait::NextToken(ms(990))));
        let mut stats = RunStats::new().unwrap();
        rec.record_into(&mut stats);
        assert_eq!(stats.turns_cut, 1);
        assert_eq!(stats.gap.len(), 2);
        assert_eq!(stats.incomplete_gaps, 2);
        assert_eq!(stats.open_gap.len(), 1);
        // A turn that ended on its own notes no open wait.
        let tr = TurnTracker::new(tid("t1"), t0);
        let rec = tr.finish(TurnEnd::Dropped("gone".into()), t0 + ms(5));
        assert_eq!(rec.timing.open_wait, None);
    }

    #[test]
    fn tracker_ends_on_error_frames() {
        let t0 = Instant::now();
        let mut tr = TurnTracker::new(tid("t2"), t0);
        let end = tr.on_text(
            r#"{"type":"error","turn_id":"t2","code":"busy","message":"a turn is streaming"}"#,
            t0,
        );
        let end = end.unwrap();
        assert_eq!(
            end,
            TurnEnd::Error {
                code: ErrorCode::Busy,
                message: "a turn is streaming".into()
            }
        );
        assert!(end.session_continues());
        let mut tr = TurnTracker::new(tid("t2"), t0);
        let end = tr
            .on_text(
                r#"{"type":"error","code":"slow_consumer","message":"bye"}"#,
                t0,
            )
            .unwrap();
        assert!(
            !end.session_continues(),
            "slow_consumer closes the connection"
        );
    }

    #[test]
    fn tracker_flags_protocol_errors() {
        let t0 = Instant::now();
        let cases = [
            "not json",
            r#"{"type":"mystery"}"#,
            r#"{"type":"token","turn_id":"t9","seq":0,"text":"x"}"#,
            r#"{"type":"token","turn_id":"t1","seq":4,"text":"x"}"#,
            r#"{"type":"welcome","session_id":"s1","protocol":1,"model":{"backend":"simulated","model_id":"m","simulated":true},"resumed_turns":0}"#,
            r#"{"type":"error","turn_id":"t7","code":"internal","message":"x"}"#,
        ];
        for text in cases {
            let mut tr = TurnTracker::new(tid("t1"), t0);
            let end = tr.on_text(text, t0);
            assert!(matches!(end, Some(TurnEnd::Protocol(_))), "{text}: {end:?}");
        }
    }

    #[test]
    fn outcomes_count_into_stats() {
        let mut stats = RunStats::new().unwrap();
        let rec = |end| TurnRecord {
            turn_id: tid("t1"),
            timing: TurnTiming::default(),
            end,
        };
        rec(TurnEnd::Done).record_into(&mut stats);
        rec(TurnEnd::Error {
            code: ErrorCode::Timeout,
            message: "slow".into(),
        })
        .record_into(&mut stats);
        rec(TurnEnd::Protocol("bad".into())).record_into(&mut stats);
        rec(TurnEnd::Dropped("gone".into())).record_into(&mut stats);
        rec(TurnEnd::TimedOut(ms(5))).record_into(&mut stats);
        rec(TurnEnd::Cancelled).record_into(&mut stats);
        OpenError::Timeout(ms(1)).record_into(&mut stats);
        assert_eq!(stats.turns_ok, 1);
        assert_eq!(stats.turns_failed(), 4);
        assert_eq!(stats.turns_cut, 1);
        assert_eq!(stats.error_frames.get("timeout"), Some(&1));
        assert_eq!(stats.protocol_errors, 1);
        assert_eq!(stats.dropped_connections, 1);
        assert_eq!(stats.connect_failures, 1);
        assert_eq!(stats.failure_samples.len(), 5);
    }
}
