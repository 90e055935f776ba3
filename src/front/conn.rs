//! One client connection, transport-independent: the frame dispatcher ([`Connection`]) and the
//! socket writer's loop ([`write_loop`]).
//!
//! The reader side of each transport yields whole text frames (or "too large"); the connection
//! decodes them into [`ClientFrame`]s, binds a session on `hello`, and turns everything else into
//! typed session messages. A bad frame costs one `error` frame, nothing more.

use std::sync::Arc;
use std::time::Duration;

use mangaassist_actors::metrics_sink::MetricsHandle;
use mangaassist_actors::outbound::{CloseReason, Mark, OutFrame, Outbound};
use mangaassist_actors::session::{
    AttachedTo, ClaimError, Refusal, SessionActor, SessionArgs, SessionMsg,
};
use mangaassist_actors::supervisor::{CallError, ChildSpec, Restart, SupervisorMsg, WorkerSlot};
use mangaassist_protocols::frame::{
    ErrorCode, FrameError, Hello, ResumeFrom, UserMessage, decode_client,
};
use mangaassist_protocols::metrics::{
    ActorKind, DisconnectReason, GapBatch, MetricEvent, Transport,
};
use mangaassist_protocols::{
    ClientFrame, PROTOCOL_VERSION, ServerFrame, SessionId, TurnId, UserId,
};
use ractor::rpc::CallResult;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::FrontState;
use super::limit::{RateLimit, Verdict};

/// How long a closing connection may take to write the frames queued before its close.
const LAST_FRAMES_TIMEOUT: Duration = Duration::from_secs(1);

/// How long closing waits for the session to record its last turn and release itself.
const SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(6);

/// How long the front waits for a session actor to accept a message.
const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A session bound to this connection.
struct Bound {
    /// Which session.
    id: SessionId,
    /// Where the session actor lives (updated if it is restarted).
    actor: WorkerSlot<SessionMsg>,
    /// Whose session it is.
    user: UserId,
}

/// The transport-independent half of a connection.
pub struct Connection {
    state: FrontState,
    outbound: Outbound,
    transport: Transport,
    session: Option<Bound>,
    /// The caller's trace (`X-Amzn-Trace-Id` on the upgrade, or `hello.trace_header`).
    trace_header: Option<String>,
    /// `server.max_messages_per_sec`, when set.
    rate: Option<RateLimit>,
}

impl Connection {
    /// A new connection with its outbound queue; the caller runs [`write_loop`] on the receiver.
    pub fn open(state: FrontState, transport: Transport) -> (Self, mpsc::Receiver<OutFrame>) {
        let (outbound, rx) = Outbound::channel(
            state.limits.outbound_queue,
            state.limits.slow_client_timeout,
        );
        state.pipeline.metrics.emit(MetricEvent::Connection {
            transport,
            opened: true,
        });
        let rate = state
            .limits
            .max_messages_per_sec
            .map(|r| RateLimit::new(r, Instant::now()));
        let conn = Self {
            state,
            outbound,
            transport,
            session: None,
            trace_header: None,
            rate,
        };
        (conn, rx)
    }

    /// Every turn of this connection joins the trace this `X-Amzn-Trace-Id` value names.
    pub fn set_trace_header(&mut self, header: Option<String>) {
        self.trace_header = header;
    }

    /// The connection's outbound queue.
    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// Handles one text frame read at `received_at`.
    pub async fn on_text(&mut self, text: &str, received_at: Instant) {
        if !self.admit(received_at).await {
            return;
        }
        match decode_client(text, self.state.limits.max_frame_bytes) {
            Ok(frame) => self.on_frame(frame, received_at).await,
            Err(e) => self.reject(&e).await,
        }
    }

    /// A frame was larger than the limit (the transport stopped reading it at `len` bytes).
    pub async fn on_too_large(&mut self, len: usize) {
        if !self.admit(Instant::now()).await {
            return;
        }
        let e = FrameError::TooLarge {
            len,
            max: self.state.limits.max_frame_bytes,
        };
        self.reject(&e).await;
    }

    /// A line that is not valid UTF-8 (TCP; WebSocket text frames are checked by the WebSocket
    /// layer, which closes the connection as RFC 6455 requires).
    pub async fn on_not_utf8(&mut self) {
        if !self.admit(Instant::now()).await {
            return;
        }
        self.send_error(None, ErrorCode::BadRequest, "frame is not valid UTF-8")
            .await;
    }

    /// A frame the transport cannot carry as text (a binary WebSocket message).
    pub async fn on_binary(&mut self) {
        if !self.admit(Instant::now()).await {
            return;
        }
        self.send_error(
            None,
            ErrorCode::BadRequest,
            "binary frames are not supported; send JSON text frames",
        )
        .await;
    }

    /// Whether a frame received at `at` is within `server.max_messages_per_sec`. A frame over
    /// it is dropped, whatever it is; the client hears `rate_limited` at most once a second.
    async fn admit(&mut self, at: Instant) -> bool {
        let Some(rate) = &mut self.rate else {
            return true;
        };
        match rate.check(at) {
            Verdict::Admit => true,
            Verdict::Drop => false,
            Verdict::DropAndNotify => {
                let max = self.state.limits.max_messages_per_sec.unwrap_or_default();
                self.send_error(
                    None,
                    ErrorCode::RateLimited,
                    format!(
                        "more than {max} frames a second (server.max_messages_per_sec); frames \
                         over the rate are dropped"
                    ),
                )
                .await;
                false
            }
        }
    }

    async fn reject(&mut self, e: &FrameError) {
        self.state
            .pipeline
            .metrics
            .emit(MetricEvent::ErrorSent { code: e.code() });
        let _ = self.outbound.send(&e.to_server_frame(), Mark::Plain).await;
    }

    async fn send_error(
        &self,
        turn_id: Option<TurnId>,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.state
            .pipeline
            .metrics
            .emit(MetricEvent::ErrorSent { code });
        let frame = ServerFrame::error(turn_id, None, code, message);
        let _ = self.outbound.send(&frame, Mark::Plain).await;
    }

    async fn on_frame(&mut self, frame: ClientFrame, received_at: Instant) {
        match frame {
            ClientFrame::Ping => {
                let _ = self.outbound.send(&ServerFrame::Pong, Mark::Plain).await;
            }
            ClientFrame::Hello(hello) => self.on_hello(hello).await,
            ClientFrame::UserMessage(message) => self.on_user_message(message, received_at).await,
            ClientFrame::Cancel { turn_id } => self.on_cancel(turn_id).await,
            ClientFrame::EraseUser => self.on_erase_user().await,
        }
    }

    async fn on_hello(&mut self, hello: Hello) {
        if self.session.is_some() {
            return self
                .send_error(
                    None,
                    ErrorCode::HelloRequired,
                    "this connection already said hello",
                )
                .await;
        }
        if hello.resume_from.is_some() && hello.session_id.is_none() {
            return self
                .send_error(
                    None,
                    ErrorCode::BadRequest,
                    "`resume_from` needs `session_id`: the session whose turn to resume",
                )
                .await;
        }
        if hello.protocol != PROTOCOL_VERSION {
            return self
                .send_error(
                    None,
                    ErrorCode::UnsupportedProtocol,
                    format!(
                        "protocol {} is not supported; this server speaks {PROTOCOL_VERSION}",
                        hello.protocol
                    ),
                )
                .await;
        }
        let verified = match &hello.token {
            Some(token) => self.state.auth.verify(token.expose()),
            None => Err(crate::auth::AuthError::Missing),
        };
        let user = match verified {
            Ok(user) => user,
            Err(e) => {
                tracing::info!(transport = ?self.transport, reason = %e, "hello refused");
                self.send_error(None, ErrorCode::Unauthorized, e.to_string())
                    .await;
                self.outbound.close(CloseReason::Unauthorized);
                return;
            }
        };
        if let Some(session) = &hello.session_id {
            match self.state.pipeline.transcripts.session_owner(session).await {
                Ok(Some(owner)) if owner != user => {
                    tracing::warn!(%session, %user, "hello refused: the session is another user's");
                    return self
                        .send_error(
                            None,
                            ErrorCode::Forbidden,
                            format!("session `{session}` belongs to another user"),
                        )
                        .await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%session, error = %e, "could not look up the session's owner");
                    return self
                        .send_error(
                            None,
                            ErrorCode::Unavailable,
                            "could not check whose session this is; try again",
                        )
                        .await;
                }
            }
        }
        if hello.trace_header.is_some() {
            self.trace_header = hello.trace_header;
        }
        let resuming = hello.session_id.is_some();
        let session_id = hello.session_id.unwrap_or_else(SessionId::new_random);
        // A session whose connection dropped waits here for its client: take it over.
        if resuming
            && let Some((slot, resumed_turns)) = self
                .reattach(&session_id, &user, hello.resume_from.is_some())
                .await
        {
            return self
                .welcome(session_id, slot, user, resumed_turns, hello.resume_from)
                .await;
        }
        let lease = match self
            .state
            .registry
            .claim(&session_id, &user, &self.outbound)
        {
            Ok(lease) => lease,
            Err(e) => {
                let code = match e {
                    ClaimError::InUse(_) => ErrorCode::SessionInUse,
                    ClaimError::Full { .. } | ClaimError::UserFull { .. } => {
                        tracing::warn!(%user, error = %e, "hello shed");
                        ErrorCode::Overloaded
                    }
                };
                return self.send_error(None, code, e.to_string()).await;
            }
        };
        let slot = WorkerSlot::empty();
        let args = SessionArgs {
            session_id: session_id.clone(),
            user_id: user.clone(),
            pipeline: self.state.pipeline.clone(),
            outbound: AttachedTo::new(self.outbound.clone()),
            lease: Arc::new(lease),
        };
        let spec = ChildSpec::new(
            ActorKind::Session,
            Restart::Transient,
            || SessionActor,
            args,
            slot.clone(),
        );
        let started = self
            .state
            .sessions
            .call(
                |reply| SupervisorMsg::StartChild(spec, reply),
                Some(SESSION_CALL_TIMEOUT),
            )
            .await;
        if !matches!(started, Ok(CallResult::Success(Ok(_)))) {
            tracing::warn!(session = %session_id, "could not start session actor");
            return self
                .send_error(
                    None,
                    ErrorCode::Unavailable,
                    "could not open the session; try again",
                )
                .await;
        }
        let Ok(resumed_turns) = slot.call(SESSION_CALL_TIMEOUT, SessionMsg::Attach).await else {
            return self
                .send_error(
                    None,
                    ErrorCode::Unavailable,
                    "the session did not start; try again",
                )
                .await;
        };
        self.welcome(session_id, slot, user, resumed_turns, hello.resume_from)
            .await;
    }

    /// Takes over session `id` of `user` if it is detached here (its connection dropped and it
    /// waits for a resume). With `take_over` (the `hello` resumes a turn), a connection still
    /// holding the session is closed as superseded first: the server may not have noticed yet
    /// that it dropped. `None`: open the session afresh.
    async fn reattach(
        &self,
        id: &SessionId,
        user: &UserId,
        take_over: bool,
    ) -> Option<(WorkerSlot<SessionMsg>, u32)> {
        let registry = &self.state.registry;
        let slot = match registry.take_detached(id, user, &self.outbound) {
            Some(slot) => slot,
            None if take_over => {
                registry
                    .supersede(id, user, &self.outbound, SESSION_CLOSE_TIMEOUT)
                    .await?
            }
            None => return None,
        };
        let outbound = self.outbound.clone();
        match slot
            .call(SESSION_CALL_TIMEOUT, |reply| SessionMsg::Reattach {
                outbound,
                reply,
            })
            .await
        {
            Ok(Some(turns)) => Some((slot, turns)),
            _ => None,
        }
    }

    /// Binds the session, sends `welcome`, then the frames of `resume_from` the client missed.
    async fn welcome(
        &mut self,
        session_id: SessionId,
        slot: WorkerSlot<SessionMsg>,
        user: UserId,
        resumed_turns: u32,
        resume_from: Option<ResumeFrom>,
    ) {
        let welcome = ServerFrame::Welcome {
            session_id: session_id.clone(),
            protocol: PROTOCOL_VERSION,
            model: self
                .state
                .router
                .info(mangaassist_protocols::metrics::TaskType::AnswerSynthesis),
            resumed_turns,
        };
        let _ = self.outbound.send(&welcome, Mark::Plain).await;
        if let Some(from) = resume_from {
            let _ = slot
                .call(SESSION_CALL_TIMEOUT, |reply| SessionMsg::Resume {
                    from,
                    reply,
                })
                .await;
        }
        self.session = Some(Bound {
            id: session_id,
            actor: slot,
            user,
        });
    }

    async fn on_user_message(&mut self, message: UserMessage, received_at: Instant) {
        let turn_id = message.turn_id.clone();
        let max_chars = self.state.limits.max_turn_chars;
        if message.text.len() > max_chars && message.text.chars().nth(max_chars).is_some() {
            return self
                .send_error(
                    Some(turn_id),
                    ErrorCode::TextTooLong,
                    format!(
                        "`user_message.text` is longer than {max_chars} characters \
                         (server.max_turn_chars)"
                    ),
                )
                .await;
        }
        let Some(session) = &self.session else {
            return self
                .send_error(
                    Some(turn_id),
                    ErrorCode::HelloRequired,
                    "send `hello` before `user_message`",
                )
                .await;
        };
        let span = tracing::info_span!(
            "front.receive",
            otel.kind = "server",
            path_type = mangaassist_actors::turn::CRITICAL_SYNC,
            transport = self.transport.as_str(),
            turn = %turn_id,
        );
        if let Some(header) = &self.trace_header
            && !crate::telemetry::adopt_parent(&span, header)
        {
            tracing::debug!(header, "ignoring an X-Amzn-Trace-Id that does not parse");
        }
        let turn_span = span.clone();
        let result = session
            .actor
            .call(SESSION_CALL_TIMEOUT, |reply| SessionMsg::UserMessage {
                message,
                received_at,
                span: turn_span,
                reply,
            })
            .instrument(span)
            .await;
        self.answer_refusal(turn_id, result).await;
    }

    /// `erase_user`: the session's own user asks to be forgotten. Answered with `erased`; then
    /// every session of the user is ended, this one included.
    async fn on_erase_user(&mut self) {
        let Some(session) = &self.session else {
            return self
                .send_error(
                    None,
                    ErrorCode::HelloRequired,
                    "send `hello` before `erase_user`",
                )
                .await;
        };
        let user = session.user.clone();
        let open = crate::erasure::OpenSessions {
            registry: &self.state.registry,
            erasures: &self.state.pipeline.erasures,
            spare: Some(&self.outbound),
        };
        let erased = crate::erasure::erase_user(
            &user,
            crate::erasure::Requester::User,
            self.state.pipeline.transcripts.as_ref(),
            Some(open),
            &self.state.data_dir,
        )
        .await;
        match erased {
            Ok(report) => {
                let frame = ServerFrame::Erased {
                    user_id: user,
                    sessions: report.transcripts.sessions,
                    turns: report.transcripts.turns,
                    sessions_ended: report.sessions_ended,
                };
                let _ = self.outbound.send(&frame, Mark::Plain).await;
                crate::erasure::end(&self.outbound);
            }
            Err(e) => {
                self.send_error(None, ErrorCode::Internal, format!("erasure failed: {e}"))
                    .await;
            }
        }
    }

    async fn on_cancel(&mut self, turn_id: TurnId) {
        let Some(session) = &self.session else {
            return self
                .send_error(
                    Some(turn_id),
                    ErrorCode::HelloRequired,
                    "send `hello` before `cancel`",
                )
                .await;
        };
        let id = turn_id.clone();
        let result = session
            .actor
            .call(SESSION_CALL_TIMEOUT, |reply| SessionMsg::Cancel {
                turn_id: id,
                reply,
            })
            .await;
        self.answer_refusal(turn_id, result).await;
    }

    async fn answer_refusal(
        &self,
        turn_id: TurnId,
        result: Result<Result<(), Refusal>, CallError>,
    ) {
        let (code, message) = match result {
            Ok(Ok(())) => return,
            Ok(Err(refusal)) => (refusal.code, refusal.message),
            Err(CallError::Timeout) => (
                ErrorCode::Timeout,
                "the session did not answer in time".into(),
            ),
            Err(CallError::Unavailable) => (
                ErrorCode::Unavailable,
                "the session is restarting; try again".into(),
            ),
            Err(CallError::Failed) => (
                ErrorCode::Internal,
                "the session failed handling this message and has been restarted; try again".into(),
            ),
        };
        self.send_error(Some(turn_id), code, message).await;
    }

    /// The connection is over: stop the session and account for it. `seen` is how the reader
    /// saw it end; a reason the server gave for closing (slow consumer, shutdown) takes precedence.
    ///
    /// A connection that was closed on purpose (by the client, a shutdown, an erasure) closes
    /// its session. One that dropped (a read or write error, a client that stopped reading or
    /// went silent, a resume from another connection) detaches it, when resume is on: its turn
    /// streams on for the client to resume within `server.resume_window_ms`.
    pub async fn close(self, seen: DisconnectReason) {
        self.outbound.closing().cancel();
        let reason = match self.outbound.close_reason() {
            Some(CloseReason::SlowConsumer) => DisconnectReason::SlowConsumer,
            Some(CloseReason::ServerShutdown) => DisconnectReason::ServerShutdown,
            Some(CloseReason::IdleTimeout) => DisconnectReason::IdleTimeout,
            Some(CloseReason::UserErased) => DisconnectReason::UserErased,
            Some(CloseReason::Unauthorized) => DisconnectReason::Unauthorized,
            Some(CloseReason::Superseded) => DisconnectReason::Superseded,
            None => seen,
        };
        if let Some(session) = &self.session {
            let dropped = matches!(
                reason,
                DisconnectReason::Error
                    | DisconnectReason::SlowConsumer
                    | DisconnectReason::IdleTimeout
                    | DisconnectReason::Superseded
            );
            if dropped {
                let detached = session
                    .actor
                    .call(SESSION_CLOSE_TIMEOUT, SessionMsg::Detach)
                    .await;
                if matches!(detached, Ok(true)) {
                    self.state
                        .registry
                        .detach(&session.id, session.actor.clone());
                }
            } else {
                // Returns once the session's last turn is recorded and the session is free
                // again, so a client that reconnects after seeing this socket close can resume
                // it.
                let _ = session
                    .actor
                    .call(SESSION_CLOSE_TIMEOUT, SessionMsg::Close)
                    .await;
            }
        }
        let metrics = &self.state.pipeline.metrics;
        metrics.emit(MetricEvent::Disconnect { reason });
        metrics.emit(MetricEvent::Connection {
            transport: self.transport,
            opened: false,
        });
    }
}

/// The server is draining: once this connection's streaming turn (if any) has written its last
/// frame, or when the drain deadline passes (`state.shutdown`), the connection closes with
/// `server_shutdown`. Frames the client sends meanwhile are not read.
pub async fn drain(outbound: &Outbound, state: &FrontState) {
    tokio::select! {
        () = outbound.turn_idle() => {}
        () = state.shutdown.cancelled() => {}
        () = outbound.closing().cancelled() => {}
    }
    outbound.close(CloseReason::ServerShutdown);
}

/// Why the server ended a connection, as an error frame (sent best-effort before closing);
/// `None` when the frame that says why is already queued (`unauthorized` names what was wrong
/// with the token).
pub fn close_frame(reason: CloseReason) -> Option<ServerFrame> {
    Some(match reason {
        CloseReason::Unauthorized => return None,
        CloseReason::SlowConsumer => ServerFrame::error(
            None,
            None,
            ErrorCode::SlowConsumer,
            "the client did not read its frames fast enough; closing",
        ),
        CloseReason::ServerShutdown => ServerFrame::error(
            None,
            None,
            ErrorCode::ServerShutdown,
            "the server is shutting down",
        ),
        CloseReason::IdleTimeout => ServerFrame::error(
            None,
            None,
            ErrorCode::IdleTimeout,
            "no frame was read or written for server.idle_timeout_ms; closing",
        ),
        CloseReason::Superseded => ServerFrame::error(
            None,
            None,
            ErrorCode::SessionInUse,
            "the session was resumed on another connection; closing this one",
        ),
        CloseReason::UserErased => ServerFrame::error(
            None,
            None,
            ErrorCode::SessionEnded,
            "this user's data was erased; the session has ended",
        ),
    })
}

/// Times frames as they are written: TTFT from `turn_started`'s clock to the first token frame,
/// and the gap between consecutive token frames of the turn.
///
/// Gaps are sent to the metrics-sink in batches ([`GapBatch`]): one event per batch or per turn,
/// not one per token. Whatever a connection that closes mid-turn had measured is sent when the
/// timer is dropped, so stalled streams that the client gave up on still count.
#[derive(Debug)]
pub struct WriteTimer {
    metrics: MetricsHandle,
    received_at: Option<Instant>,
    last_token: Option<Instant>,
    gaps: GapBatch,
}

impl WriteTimer {
    /// A timer reporting to `metrics`.
    pub fn new(metrics: MetricsHandle) -> Self {
        Self {
            metrics,
            received_at: None,
            last_token: None,
            gaps: GapBatch::default(),
        }
    }

    /// Records that a frame with `mark` finished writing at `now`.
    pub fn written(&mut self, mark: Mark, now: Instant) {
        match mark {
            Mark::Plain => {}
            Mark::TurnStart { received_at } => {
                self.received_at = Some(received_at);
                self.last_token = None;
            }
            Mark::Token => {
                match (self.last_token, self.received_at) {
                    (Some(prev), _) => {
                        if self.gaps.push(micros(now.duration_since(prev))) {
                            self.flush();
                        }
                    }
                    (None, Some(received_at)) => self.metrics.emit(MetricEvent::FirstToken {
                        ttft_us: micros(now.duration_since(received_at)),
                    }),
                    // A turn resumed on this connection: its first token went out on another,
                    // so gaps are timed from here and there is no time to first token.
                    (None, None) => {}
                }
                self.last_token = Some(now);
            }
            Mark::TurnEnd => {
                self.flush();
                self.received_at = None;
                self.last_token = None;
            }
        }
    }

    /// Sends the gaps measured so far.
    fn flush(&mut self) {
        if !self.gaps.is_empty() {
            self.metrics.emit(MetricEvent::ChunkGaps(self.gaps.take()));
        }
    }
}

impl Drop for WriteTimer {
    fn drop(&mut self) {
        self.flush();
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Writes queued frames with `write` (which queues without flushing) and `flush`, batching what
/// is already queued into one flush, and times them as they leave. Returns when the queue closes,
/// a write fails, or the connection is closing.
pub async fn write_loop<W, F>(
    rx: &mut mpsc::Receiver<OutFrame>,
    outbound: &Outbound,
    state: &FrontState,
    mut sink: W,
) -> Result<W, ()>
where
    W: FrameSink<F>,
{
    let mut timer = WriteTimer::new(state.pipeline.metrics.clone());
    let mut marks: Vec<Mark> = Vec::with_capacity(16);
    loop {
        let first = tokio::select! {
            f = rx.recv() => f,
            () = outbound.closing().cancelled() => {
                // An erased user's connection first gets what was queued before the close (the
                // `erased` answer), a refused one its `unauthorized` error, a shutdown its last
                // turn's end and `server_shutdown`; a slow client would not read it. Bounded, so
                // a client that stopped reading cannot hold the close.
                if matches!(
                    outbound.close_reason(),
                    Some(
                        CloseReason::UserErased
                            | CloseReason::Unauthorized
                            | CloseReason::ServerShutdown
                    )
                ) {
                    let last = async {
                        while let Ok(f) = rx.try_recv() {
                            sink.feed(f.text).await?;
                        }
                        sink.flush().await
                    };
                    if !matches!(tokio::time::timeout(LAST_FRAMES_TIMEOUT, last).await, Ok(Ok(()))) {
                        return Err(());
                    }
                }
                return Ok(sink);
            }
        };
        let Some(first) = first else { return Ok(sink) };
        marks.clear();
        marks.push(first.mark);
        sink.feed(first.text).await.map_err(|_| ())?;
        while marks.len() < 64 {
            match rx.try_recv() {
                Ok(f) => {
                    marks.push(f.mark);
                    sink.feed(f.text).await.map_err(|_| ())?;
                }
                Err(_) => break,
            }
        }
        sink.flush().await.map_err(|_| ())?;
        let now = Instant::now();
        outbound.touch(now);
        for m in &marks {
            timer.written(*m, now);
            if matches!(m, Mark::TurnEnd) {
                outbound.turn_last_frame_written();
            }
        }
    }
}

/// A transport's write half, as [`write_loop`] drives it.
pub trait FrameSink<F>: Send {
    /// Queues one encoded frame without flushing.
    fn feed(&mut self, text: String) -> impl std::future::Future<Output = Result<(), F>> + Send;
    /// Flushes what was fed.
    fn flush(&mut self) -> impl std::future::Future<Output = Result<(), F>> + Send;
}
