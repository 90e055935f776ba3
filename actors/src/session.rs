//! # session
//!
//! **Role**: one per session. Owns the conversation: its recent history, which turn is
//! streaming, and the task that runs it.
//! **Inputs**: [`SessionMsg`] from the connection (user messages, cancels) and from its own turn
//! tasks (`TurnEnded`).
//! **Outputs**: a turn task per accepted message ([`crate::turn::run_turn`]), which writes the
//! turn's frames to the connection's [`Outbound`]; `error` frames go out through the connection
//! when a message is refused (the reply says why).
//! **Failure policy**: transient child of the sessions supervisor: restarted with the same
//! arguments if it fails, reloading its history from the transcript store; a normal stop (the
//! connection closed) is final. If it fails while a turn streams, the turn is cancelled and ends
//! with an `internal` error frame (see [`SessionState`]'s `Drop`). Its chunk-forwarders are linked
//! to it as temporary children: their failures end their turn, never the session.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use mangaassist_protocols::frame::{ErrorCode, ResumeFrom, UserMessage};
use mangaassist_protocols::metrics::{ActorKind, BackgroundJob, MetricEvent};
use mangaassist_protocols::turn::TurnRecord;
use mangaassist_protocols::{SessionId, TurnId, UserId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::memory::{self, SessionMemory};
use crate::outbound::{CloseReason, Outbound};
use crate::replay::{Requested, TurnLog};
use crate::supervisor::WorkerSlot;
use crate::turn::{ASYNC_BACKGROUND, Pipeline, TurnControl, TurnCtx, run_turn};
use mangaassist_protocols::memory::{PreferenceUpdate, Preferences, SummaryLine};

impl SessionState {
    /// Replaces the memory and hands it to the profile saver.
    fn set_memory(&mut self, memory: SessionMemory) {
        self.memory = Arc::new(memory);
        let _ = self.memory_tx.send(self.memory.clone());
    }
}

/// Starts the session's profile saver: every new memory sent on the returned channel is saved,
/// newest first wins (a memory replaced while an older one is being saved is saved next, the
/// ones in between are skipped), off the session's mailbox. Changed preferences are also saved
/// as the user's, for their next new session. It ends when the session is gone, after saving
/// the last memory it was given, and saves nothing once its user has been erased.
fn save_profiles(
    args: &SessionArgs,
    first: Arc<SessionMemory>,
) -> tokio::sync::watch::Sender<Arc<SessionMemory>> {
    let mut saved_preferences = first.preferences.clone();
    let (tx, mut rx) = tokio::sync::watch::channel(first);
    rx.mark_unchanged();
    let store = args.pipeline.profiles.clone();
    let erasures = args.pipeline.erasures.clone();
    let (user, session) = (args.user_id.clone(), args.session_id.clone());
    let started_ms = mangaassist_protocols::unix_ms();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            // Held until both saves answered: an erasure of this user waits for them.
            let Some(_writing) = erasures.begin_write(&user, started_ms) else {
                return;
            };
            let m = rx.borrow_and_update().clone();
            let profile = mangaassist_protocols::ports::Profile {
                preferences: m.preferences.clone(),
                summary: m.summary.clone(),
            };
            if let Err(e) = store.save_profile(&user, &session, &profile).await {
                tracing::warn!(session = %session, error = %e, "session profile not saved");
            }
            if m.preferences != saved_preferences {
                match store.save_user_preferences(&user, &m.preferences).await {
                    Ok(()) => saved_preferences = m.preferences.clone(),
                    Err(e) => {
                        tracing::warn!(session = %session, error = %e, "user preferences not saved");
                    }
                }
            }
        }
    });
    tx
}

/// What a session with no turn and no profile of its own starts with: the preferences its user
/// stated in earlier sessions. A store failure is logged and the session starts empty.
async fn carried_over(args: &SessionArgs) -> SessionMemory {
    let preferences = match args
        .pipeline
        .profiles
        .load_user_preferences(&args.user_id)
        .await
    {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(
                session = %args.session_id,
                error = %e,
                "the user's preferences could not be loaded; the session starts without them"
            );
            Preferences::default()
        }
    };
    if !preferences.is_empty() {
        tracing::info!(
            session = %args.session_id,
            "preferences carried over from the user's earlier sessions"
        );
    }
    SessionMemory {
        preferences,
        summary: Default::default(),
    }
}

/// Asks the `preference_extraction` model (when the policy routes the task to one) to read
/// `text`; its answer comes back as [`SessionMsg::PreferencesRefined`]. Nothing waits for it: a
/// failure or a slow model leaves the local extraction in place. The job is the background
/// owner's, not the session's (closing a session must not wait for a model): it ends by itself
/// within the extractor's deadline, and its answer is dropped if the session is gone by then.
/// `parent` is the message's span.
fn refine_preferences(
    args: &SessionArgs,
    myself: &ActorRef<SessionMsg>,
    text: &str,
    index: u32,
    parent: &tracing::Span,
) {
    let model = args.pipeline.preference_model.clone();
    let (me, session, text) = (myself.clone(), args.session_id.clone(), text.to_owned());
    let span = crate::hop_span!(
        parent: parent,
        "preferences.refine",
        path_type = ASYNC_BACKGROUND,
        task_type = "preference_extraction",
    );
    let job = async move {
        match model.extract(&session, &text).await {
            Ok(Some(update)) if !update.is_empty() => {
                let _ = me.send_message(SessionMsg::PreferencesRefined { index, update });
            }
            Ok(_) => {}
            Err(e) => tracing::info!(
                session = %session,
                turn = index,
                error = %e,
                "preference extraction by model failed; the local extraction stands"
            ),
        }
    };
    args.pipeline
        .background
        .spawn(BackgroundJob::PreferenceRefinement, job.instrument(span));
}

/// Asks the `summarization` model (when the policy routes the task to one) for the lines of
/// `turns`, which just left memory; its answer comes back as [`SessionMsg::SummaryRefined`].
/// Like [`refine_preferences`], nothing waits for it and a failure keeps the extractive lines.
fn refine_summary(args: &SessionArgs, myself: &ActorRef<SessionMsg>, turns: Vec<TurnRecord>) {
    let model = args.pipeline.summary_model.clone();
    let (me, session) = (myself.clone(), args.session_id.clone());
    let span = tracing::info_span!(
        "summary.refine",
        path_type = ASYNC_BACKGROUND,
        task_type = "summarization",
    );
    let job = async move {
        match model.summarize(&session, &turns).await {
            Ok(Some(lines)) if !lines.is_empty() => {
                let _ = me.send_message(SessionMsg::SummaryRefined { lines });
            }
            Ok(_) => {}
            Err(e) => tracing::info!(
                session = %session,
                error = %e,
                "summarization by model failed; the extractive summary stands"
            ),
        }
    };
    args.pipeline
        .background
        .spawn(BackgroundJob::SummaryRefinement, job.instrument(span));
}

/// A refused message: becomes an `error` frame on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

/// Messages of a session.
pub enum SessionMsg {
    /// The connection attached; replies with how many turns the transcript already holds.
    Attach(RpcReplyPort<u32>),
    /// Start a turn; replies once it runs, or with why not.
    UserMessage {
        /// The message.
        message: UserMessage,
        /// When it was read from the socket.
        received_at: Instant,
        /// The front's span of the message, parent of the turn's.
        span: tracing::Span,
        /// Accepted, or refused.
        reply: RpcReplyPort<Result<(), Refusal>>,
    },
    /// Cancel the streaming turn.
    Cancel {
        /// Which turn.
        turn_id: TurnId,
        /// Whether it was streaming.
        reply: RpcReplyPort<Result<(), Refusal>>,
    },
    /// A turn is over (sent by its task just before the turn's last frame goes out, so a client
    /// that answers that frame at once finds the session free).
    TurnEnded {
        /// Which turn.
        turn_id: TurnId,
        /// Its transcript record, when it completed.
        record: Option<TurnRecord>,
    },
    /// The preference-extraction model's reading of the message of turn `index` (it runs beside
    /// the turn; the local extraction was applied when the message arrived).
    PreferencesRefined {
        /// The turn whose message it read.
        index: u32,
        /// What it found.
        update: PreferenceUpdate,
    },
    /// The summarization model's lines for turns that left memory; they replace the extractive
    /// lines of the same turns.
    SummaryRefined {
        /// The new lines.
        lines: Vec<SummaryLine>,
    },
    /// The connection closed: cancel what runs, let it record itself, release the session for
    /// other connections, answer, and stop.
    Close(RpcReplyPort<()>),
    /// The connection dropped without closing (a network error, a client that stopped
    /// reading): when resume is on and the session has a turn to resume, it detaches instead of
    /// closing: its turn streams on into the replay buffer and the session waits the resume
    /// window for its client. Replies whether it detached (else it closed, as for `Close`).
    Detach(RpcReplyPort<bool>),
    /// The resume window of detachment `generation` passed: close, unless a client came back.
    DetachExpired {
        /// Which detachment.
        generation: u64,
    },
    /// A client resumed the detached session on a new connection; replies with the turns the
    /// session holds, or `None` when it is no longer detached (it closed, or its user was
    /// erased): the connection opens the session afresh.
    Reattach {
        /// The new connection.
        outbound: Outbound,
        /// Turns held, or `None`.
        reply: RpcReplyPort<Option<u32>>,
    },
    /// After `welcome`: send the frames of `from.turn_id` the client missed (then the rest of
    /// the stream, if it is still streaming), or `resume_expired` when they are not held.
    Resume {
        /// Where the client left off.
        from: ResumeFrom,
        /// Answered once the missed frames are queued (or handed to the streaming turn).
        reply: RpcReplyPort<()>,
    },
}

/// The connection a session streams to. A client that resumes the session replaces it; every
/// incarnation of the session shares it, so a session restarted after a resume streams to the
/// connection that holds it now, not the one it was opened on.
#[derive(Debug, Clone)]
pub struct AttachedTo(Arc<Mutex<Outbound>>);

impl AttachedTo {
    /// Attached to `outbound`.
    pub fn new(outbound: Outbound) -> Self {
        Self(Arc::new(Mutex::new(outbound)))
    }

    /// The connection now.
    pub fn get(&self) -> Outbound {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, outbound: Outbound) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = outbound;
    }
}

/// Arguments of a session (cloned on restart).
#[derive(Clone)]
pub struct SessionArgs {
    /// The session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// Shared pipeline.
    pub pipeline: Pipeline,
    /// The connection's outbound queue (replaced when a client resumes the session).
    pub outbound: AttachedTo,
    /// Held for as long as any incarnation of this session may run (the supervisor keeps these
    /// arguments until the session stops for good), so the session cannot be opened elsewhere
    /// while its last turn is still being recorded.
    pub lease: Arc<SessionLease>,
}

/// Longest a closing session waits for its turn to be recorded before it stops anyway.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The session actor.
#[derive(Debug, Default)]
pub struct SessionActor;

/// A streaming turn.
struct ActiveTurn {
    turn_id: TurnId,
    control: TurnControl,
}

/// State of one session.
pub struct SessionState {
    args: SessionArgs,
    /// Recent turns, oldest first; shared with the turn task without copying.
    history: memory::History,
    /// Preferences and the summary of turns older than `history`; replaced, never mutated in
    /// place, so a running turn keeps the copy it started with.
    memory: Arc<SessionMemory>,
    /// The session's profile saver: the newest memory, saved in the background.
    memory_tx: tokio::sync::watch::Sender<Arc<SessionMemory>>,
    /// Index the next turn takes.
    next_index: u32,
    /// The streaming turn, if any: at most one per session.
    active: Option<ActiveTurn>,
    /// Owner of this session's turn tasks.
    tasks: TaskTracker,
    /// The replay buffer of the streaming or last turn (with resume on).
    log: Option<Arc<TurnLog>>,
    /// While detached: which detachment (a resume window that passes after the client came
    /// back, or after a later detachment began, is ignored).
    detached: Option<u64>,
    /// Detachments so far.
    generation: u64,
    /// When this incarnation started (an erasure after it ends a detached session).
    started_ms: u64,
}

impl SessionState {
    /// Cancels what runs, lets it record itself, releases the session for other connections,
    /// and stops.
    async fn close(&mut self, myself: &ActorRef<SessionMsg>, why: &str) {
        self.detached = None;
        // Let the cancelled turn record itself before the session is released.
        self.end_turns().await;
        self.args.lease.release();
        myself.stop(Some(why.into()));
    }

    /// Cancels the streaming turn, if any, and waits (at most [`CLOSE_GRACE`]) for the turn
    /// tasks to finish: a cancelled turn records itself as cancelled on its way out.
    async fn end_turns(&mut self) {
        if let Some(active) = self.active.take() {
            active.control.cancel.cancel();
        }
        self.tasks.close();
        if tokio::time::timeout(CLOSE_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(session = %self.args.session_id, "turn still running at close");
        }
    }

    /// Sends the frames of `from.turn_id` the client missed, or hands the resume to the turn
    /// that still streams; `resume_expired` when they are not held here.
    async fn resume(&mut self, from: ResumeFrom) {
        let outbound = self.args.outbound.get();
        let metrics = &self.args.pipeline.metrics;
        let turn = from.turn_id.clone();
        let expired = match &self.log {
            Some(log) if *log.turn_id() == turn => match log.request(outbound.clone(), from) {
                Requested::Ended(missed) => {
                    metrics.emit(MetricEvent::Resumed { replayed: true });
                    crate::replay::send_missed(&outbound, missed).await;
                    return;
                }
                Requested::HandedOver => {
                    // The turn streams here now: a draining shutdown waits for its end.
                    outbound.turn_opened();
                    metrics.emit(MetricEvent::Resumed { replayed: true });
                    return;
                }
                Requested::Expired { dropped_through } => format!(
                    "turn `{turn}`: frames up to seq {dropped_through} are no longer held \
                         (server.replay_buffer_bytes); its record is in the transcript once it ends"
                ),
                Requested::Released => not_held(&turn),
            },
            _ => not_held(&turn),
        };
        metrics.emit(MetricEvent::Resumed { replayed: false });

        metrics.emit(MetricEvent::ErrorSent {
            code: ErrorCode::ResumeExpired,
        });
        let frame = mangaassist_protocols::ServerFrame::error(
            Some(turn),
            None,
            ErrorCode::ResumeExpired,
            expired,
        );
        let _ = outbound.send(&frame, crate::outbound::Mark::Plain).await;
    }
}

fn not_held(turn: &TurnId) -> String {
    format!(
        "turn `{turn}` is not held here: it ended over server.resume_window_ms ago, or streamed \
         on another server; committed turns are in the session's transcript"
    )
}

impl Drop for SessionState {
    /// Runs on normal stop and while unwinding from a failure: a turn must not outlive the
    /// session actor that owns it, and must not end as if nothing happened.
    fn drop(&mut self) {
        if let Some(active) = self.active.take() {
            active.control.session_failed.store(true, Ordering::Release);
            active.control.cancel.cancel();
        }
        self.tasks.close();
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let all = args
            .pipeline
            .transcripts
            .load_session(&args.user_id, &args.session_id)
            .await?;
        let next_index = u32::try_from(all.len()).unwrap_or(u32::MAX);
        let in_memory = args.pipeline.settings.rolling_summary_after_turns;
        let keep = all.len().saturating_sub(in_memory);
        let summary_tokens = args.pipeline.settings.context.summary_tokens;
        // The saved profile when there is one (it holds what a model read too); else the memory
        // is rebuilt from the transcript with the local rules; a new session starts with what
        // its user said in earlier ones.
        let saved = args
            .pipeline
            .profiles
            .load_profile(&args.user_id, &args.session_id)
            .await?;
        let memory = match saved {
            Some(p) => SessionMemory {
                preferences: p.preferences,
                summary: p.summary,
            },
            None if all.is_empty() => carried_over(&args).await,
            None => SessionMemory::rebuild(&all, in_memory, summary_tokens),
        };
        if !all.is_empty() {
            tracing::info!(
                session = %args.session_id,
                turns = all.len(),
                preferences = !memory.preferences.is_empty(),
                summary_lines = memory.summary.lines.len(),
                "session memory restored"
            );
        }
        let memory = Arc::new(memory);
        let memory_tx = save_profiles(&args, memory.clone());
        Ok(SessionState {
            memory,
            memory_tx,
            args,
            history: memory::History::new(all[keep..].to_vec()),
            next_index,
            active: None,
            tasks: TaskTracker::new(),
            log: None,
            detached: None,
            generation: 0,
            started_ms: mangaassist_protocols::unix_ms(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let chaos = state.args.pipeline.chaos.clone();
        match msg {
            SessionMsg::Attach(reply) => {
                chaos.before(ActorKind::Session, "attach").await;
                let _ = reply.send(state.next_index);
            }
            SessionMsg::UserMessage {
                message,
                received_at,
                span,
                reply,
            } => {
                chaos.before(ActorKind::Session, "user_message").await;
                if let Some(active) = &state.active {
                    let _ = reply.send(Err(Refusal {
                        code: ErrorCode::Busy,
                        message: format!(
                            "turn `{}` is still streaming; wait for its `done` or send `cancel`",
                            active.turn_id
                        ),
                    }));
                    return Ok(());
                }
                let control = TurnControl::default();
                // What the message states is remembered before the turn runs, so its own answer
                // already respects it (and a failed turn does not lose it).
                refine_preferences(&state.args, &myself, &message.text, state.next_index, &span);
                let mut memory = (*state.memory).clone();
                if memory.note(&message.text, state.next_index) {
                    tracing::info!(
                        session = %state.args.session_id,
                        turn = state.next_index,
                        preferences = ?memory.preferences,
                        "preferences updated"
                    );
                    state.set_memory(memory);
                }
                let outbound = state.args.outbound.get();
                let log = state.args.pipeline.settings.resume.map(|resume| {
                    Arc::new(TurnLog::new(
                        message.turn_id.clone(),
                        resume.buffer_bytes,
                        outbound.clone(),
                    ))
                });
                state.log.clone_from(&log);
                let ctx = TurnCtx {
                    pipeline: state.args.pipeline.clone(),
                    session_id: state.args.session_id.clone(),
                    user_id: state.args.user_id.clone(),
                    index: state.next_index,
                    turn_id: message.turn_id.clone(),
                    text: Arc::from(message.text),
                    received_at,
                    history: state.history.clone(),
                    memory: state.memory.clone(),
                    outbound: outbound.clone(),
                    log,
                    control: control.clone(),
                    session: myself.get_cell(),
                    parent: span,
                };
                state.next_index += 1;
                state.active = Some(ActiveTurn {
                    turn_id: message.turn_id.clone(),
                    control,
                });
                // Until the turn's last frame is written, a draining shutdown waits for it.
                outbound.turn_opened();
                let me = myself.clone();
                let turn_id = message.turn_id;
                state.tasks.spawn(run_turn(ctx, move |record| {
                    let _ = me.send_message(SessionMsg::TurnEnded { turn_id, record });
                }));
                let _ = reply.send(Ok(()));
            }
            SessionMsg::Cancel { turn_id, reply } => {
                chaos.before(ActorKind::Session, "cancel").await;
                match &state.active {
                    Some(active) if active.turn_id == turn_id => {
                        active.control.cancel.cancel();
                        let _ = reply.send(Ok(()));
                    }
                    _ => {
                        let _ = reply.send(Err(Refusal {
                            code: ErrorCode::UnknownTurn,
                            message: format!("turn `{turn_id}` is not streaming"),
                        }));
                    }
                }
            }
            SessionMsg::PreferencesRefined { index, update } => {
                let mut memory = (*state.memory).clone();
                memory.preferences.apply(&update, index);
                if memory != *state.memory {
                    tracing::info!(
                        session = %state.args.session_id,
                        turn = index,
                        preferences = ?memory.preferences,
                        "preferences refined by the preference_extraction model"
                    );
                    state.set_memory(memory);
                }
            }
            SessionMsg::SummaryRefined { lines } => {
                let mut memory = (*state.memory).clone();
                let tokens = state.args.pipeline.settings.context.summary_tokens;
                let replaced = memory::replace_lines(&mut memory.summary, lines, tokens);
                tracing::info!(
                    session = %state.args.session_id,
                    lines = replaced,
                    "session summary refined by the summarization model"
                );
                state.set_memory(memory);
            }
            SessionMsg::TurnEnded { turn_id, record } => {
                if state.active.as_ref().is_some_and(|a| a.turn_id == turn_id) {
                    state.active = None;
                }
                // The ended turn's frames are kept for the resume window, then let go.
                if let (Some(resume), Some(log)) = (state.args.pipeline.settings.resume, &state.log)
                    && *log.turn_id() == turn_id
                {
                    state
                        .args
                        .pipeline
                        .replays
                        .keep_until(log, Instant::now() + resume.window);
                }
                if let Some(record) = record {
                    let in_memory = state.args.pipeline.settings.rolling_summary_after_turns;
                    let (kept, history) = state.history.push(record, in_memory);
                    if !history.is_empty() {
                        // Turns leaving memory go into the rolling summary.
                        let mut memory = (*state.memory).clone();
                        let tokens = state.args.pipeline.settings.context.summary_tokens;
                        let lines = memory::fold_into(&mut memory.summary, &history, tokens);
                        tracing::debug!(
                            session = %state.args.session_id,
                            turns = history.len(),
                            lines,
                            summary_lines = memory.summary.lines.len(),
                            "older turns folded into the session summary"
                        );
                        state.set_memory(memory);
                        refine_summary(&state.args, &myself, history);
                    }
                    state.history = kept;
                }
            }
            SessionMsg::Close(reply) => {
                state.close(&myself, "connection closed").await;
                let _ = reply.send(());
            }
            SessionMsg::Detach(reply) => {
                // With resume off, or nothing to resume (a reconnecting client then opens the
                // session afresh), a drop closes the session as a close does.
                let resumable = state.log.as_ref().is_some_and(|log| !log.is_released());
                let Some(resume) = state.args.pipeline.settings.resume.filter(|_| resumable) else {
                    state.close(&myself, "connection dropped").await;
                    let _ = reply.send(false);
                    return Ok(());
                };
                state.generation += 1;
                let generation = state.generation;
                state.detached = Some(generation);
                tracing::info!(
                    session = %state.args.session_id,
                    streaming = state.active.is_some(),
                    window_ms = resume.window.as_millis() as u64,
                    "connection dropped; the session waits for its client to resume"
                );
                myself.send_after(resume.window, move || SessionMsg::DetachExpired {
                    generation,
                });
                let _ = reply.send(true);
            }
            SessionMsg::DetachExpired { generation } => {
                if state.detached == Some(generation) {
                    tracing::info!(
                        session = %state.args.session_id,
                        "no client resumed the session within server.resume_window_ms; closing"
                    );
                    state.close(&myself, "resume window passed").await;
                }
            }
            SessionMsg::Reattach { outbound, reply } => {
                chaos.before(ActorKind::Session, "reattach").await;
                if state.detached.is_none() {
                    let _ = reply.send(None);
                    return Ok(());
                }
                if state
                    .args
                    .pipeline
                    .erasures
                    .erased_since(&state.args.user_id, state.started_ms)
                {
                    state.close(&myself, "user erased while detached").await;
                    let _ = reply.send(None);
                    return Ok(());
                }
                state.detached = None;
                state.args.outbound.set(outbound);
                tracing::info!(session = %state.args.session_id, "session resumed on a new connection");
                let _ = reply.send(Some(state.next_index));
            }
            SessionMsg::Resume { from, reply } => {
                state.resume(from).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    /// Stopped from outside (the runtime's shutdown stops every session) with a turn still
    /// streaming, which happens to a detached session waiting for its client: the turn ends as a
    /// closed connection's does, recorded as cancelled with what was generated, rather than as
    /// a failure (which is [`SessionState`]'s `Drop`, for a session that panicked).
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.active.is_some() {
            state.end_turns().await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Chunk-forwarders are temporary children: a failed one ends its own turn (the turn
        // task sees its outcome channel close), never the session.
        if let SupervisionEvent::ActorFailed(_, err) = event {
            tracing::warn!(error = %err, "chunk-forwarder failed; its turn ends with an error frame");
        }
        Ok(())
    }
}

/// Which sessions are open on some connection of this process, so one session is never driven
/// from two connections at once, and how many: a claim beyond [`SessionLimits`] is refused, so
/// an overload is shed at `hello` instead of queueing.
///
/// A std `Mutex` is right here: the critical sections are a hash-map insert or remove, never
/// held across an `.await`.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    open: Mutex<Open>,
    limits: SessionLimits,
    /// Woken when a session detaches or closes (what a superseding resume waits for).
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Open {
    /// Open sessions.
    sessions: HashMap<SessionId, Entry>,
    /// Open sessions per user, for the per-user limit.
    per_user: HashMap<UserId, usize>,
}

/// One open session.
#[derive(Debug)]
struct Entry {
    /// Whose it is.
    user: UserId,
    /// Its connection's outbound queue (to end it).
    outbound: Outbound,
    /// Set while the session is detached (its connection dropped; it waits for a resume).
    detached: Option<WorkerSlot<SessionMsg>>,
}

/// How many sessions may be open at once on this process (`0`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionLimits {
    /// In all (`server.max_sessions`).
    pub total: usize,
    /// For one user (`server.max_sessions_per_user`).
    pub per_user: usize,
}

/// Why a session could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Another connection holds the session.
    #[error("session `{0}` is open on another connection")]
    InUse(SessionId),
    /// The process holds as many sessions as it may.
    #[error("the server holds {max} sessions, its limit (server.max_sessions); try again later")]
    Full {
        /// The limit.
        max: usize,
    },
    /// The user holds as many sessions as they may.
    #[error(
        "user `{user}` has {max} sessions open, the limit per user \
         (server.max_sessions_per_user); close one first"
    )]
    UserFull {
        /// Whose sessions.
        user: UserId,
        /// The limit.
        max: usize,
    },
}

/// Proof that a session is open here; released by [`SessionLease::release`] or on drop.
#[derive(Debug)]
pub struct SessionLease {
    registry: Arc<SessionRegistry>,
    id: SessionId,
    /// Set once released, so a later drop cannot remove a newer lease of the same id.
    released: std::sync::atomic::AtomicBool,
}

impl SessionRegistry {
    /// A new, empty registry with no limits.
    pub fn new() -> Arc<Self> {
        Self::with_limits(SessionLimits::default())
    }

    /// A new, empty registry that refuses claims beyond `limits`.
    pub fn with_limits(limits: SessionLimits) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::default(),
            limits,
            changed: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `id` for `user` on the connection owning `outbound`. Refused if another connection
    /// holds it, or if the process or the user is at their limit.
    pub fn claim(
        self: &Arc<Self>,
        id: &SessionId,
        user: &UserId,
        outbound: &Outbound,
    ) -> Result<SessionLease, ClaimError> {
        let mut open = self.lock();
        if open.sessions.contains_key(id) {
            return Err(ClaimError::InUse(id.clone()));
        }
        let SessionLimits { total, per_user } = self.limits;
        if total != 0 && open.sessions.len() >= total {
            return Err(ClaimError::Full { max: total });
        }
        let of_user = open.per_user.get(user).copied().unwrap_or(0);
        if per_user != 0 && of_user >= per_user {
            return Err(ClaimError::UserFull {
                user: user.clone(),
                max: per_user,
            });
        }
        open.sessions.insert(
            id.clone(),
            Entry {
                user: user.clone(),
                outbound: outbound.clone(),
                detached: None,
            },
        );
        open.per_user.insert(user.clone(), of_user + 1);
        Ok(SessionLease {
            registry: self.clone(),
            id: id.clone(),
            released: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The connections of `user`'s open sessions, for ending them (an erasure).
    pub fn connections_of(&self, user: &UserId) -> Vec<(SessionId, Outbound)> {
        self.lock()
            .sessions
            .iter()
            .filter(|(_, e)| e.user == *user)
            .map(|(id, e)| (id.clone(), e.outbound.clone()))
            .collect()
    }

    /// The session `id`'s connection dropped and the session (at `slot`) waits for a resume.
    pub fn detach(&self, id: &SessionId, slot: WorkerSlot<SessionMsg>) {
        if let Some(e) = self.lock().sessions.get_mut(id) {
            e.detached = Some(slot);
        }
        self.changed.notify_waiters();
    }

    /// A client resumes session `id` while the connection holding it has not noticed that it
    /// dropped: that connection is closed as [`CloseReason::Superseded`] (it detaches the
    /// session), and within `timeout` the session's slot is taken over for the connection
    /// owning `outbound`, as [`SessionRegistry::take_detached`] does. `None` when the session is
    /// not `user`'s, closed instead of detaching, or did not detach in time.
    pub async fn supersede(
        &self,
        id: &SessionId,
        user: &UserId,
        outbound: &Outbound,
        timeout: std::time::Duration,
    ) -> Option<WorkerSlot<SessionMsg>> {
        {
            let open = self.lock();
            let e = open.sessions.get(id)?;
            if e.user != *user || e.outbound.same_connection(outbound) {
                return None;
            }
            e.outbound.close(CloseReason::Superseded);
        }
        // Detached (the slot), or closed instead (`None`).
        let settled = crate::wait_for(&self.changed, || {
            match self.take_detached(id, user, outbound) {
                Some(slot) => Some(Some(slot)),
                None if !self.lock().sessions.contains_key(id) => Some(None),
                None => None,
            }
        });
        tokio::time::timeout(timeout, settled).await.ok().flatten()
    }

    /// Takes over session `id` for `user` on the connection owning `outbound`, when it is
    /// detached: the session's slot, to send it [`SessionMsg::Reattach`]. `None` when it is not
    /// open here, is attached to a connection, or is another user's.
    pub fn take_detached(
        &self,
        id: &SessionId,
        user: &UserId,
        outbound: &Outbound,
    ) -> Option<WorkerSlot<SessionMsg>> {
        let mut open = self.lock();
        let e = open.sessions.get_mut(id)?;
        if e.user != *user {
            return None;
        }
        let slot = e.detached.take()?;
        e.outbound = outbound.clone();
        Some(slot)
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions `user` has open now.
    pub fn len_of(&self, user: &UserId) -> usize {
        self.lock().per_user.get(user).copied().unwrap_or(0)
    }

    fn remove(&self, id: &SessionId) {
        let mut open = self.lock();
        let Some(Entry { user, .. }) = open.sessions.remove(id) else {
            return;
        };
        self.changed.notify_waiters();
        if let std::collections::hash_map::Entry::Occupied(mut n) = open.per_user.entry(user) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

impl SessionLease {
    /// Frees the session for other connections (idempotent).
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.registry.remove(&self.id);
        }
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod registry_tests {
    use std::time::Duration;

    use super::*;

    fn claim(
        registry: &Arc<SessionRegistry>,
        session: &str,
        user: &str,
    ) -> Result<SessionLease, ClaimError> {
        let (outbound, _rx) = Outbound::channel(1, Duration::from_secs(1));
        registry.claim(
            &SessionId::parse(session).unwrap(),
            &UserId::parse(user).unwrap(),
            &outbound,
        )
    }

    #[test]
    fn claims_beyond_the_limits_are_refused_until_a_lease_is_released() {
        let registry = SessionRegistry::with_limits(SessionLimits {
            total: 3,
            per_user: 2,
        });
        let a1 = claim(&registry, "a1", "alice").unwrap();
        let _a2 = claim(&registry, "a2", "alice").unwrap();
        assert_eq!(
            claim(&registry, "a3", "alice").unwrap_err(),
            ClaimError::UserFull {
                user: UserId::parse("alice").unwrap(),
                max: 2
            }
        );
        assert!(matches!(
            claim(&registry, "a1", "bob"),
            Err(ClaimError::InUse(_))
        ));
        let _b1 = claim(&registry, "b1", "bob").unwrap();
        assert_eq!(
            claim(&registry, "b2", "bob").unwrap_err(),
            ClaimError::Full { max: 3 }
        );
        assert_eq!(
            (
                registry.len(),
                registry.len_of(&UserId::parse("alice").unwrap())
            ),
            (3, 2)
        );

        // A released lease frees its place, once: dropping it after release changes nothing.
        a1.release();
        assert_eq!(registry.len_of(&UserId::parse("alice").unwrap()), 1);
        let _a3 = claim(&registry, "a3", "alice").unwrap();
        drop(a1);
        assert_eq!(
            (
                registry.len(),
                registry.len_of(&UserId::parse("alice").unwrap())
            ),
            (3, 2)
        );
    }

    #[test]
    fn zero_means_no_limit() {
        let registry = SessionRegistry::new();
        let leases: Vec<_> = (0..100)
            .map(|i| claim(&registry, &format!("s{i}"), "alice").unwrap())
            .collect();
        assert_eq!(registry.len(), 100);
        drop(leases);
        assert!(registry.is_empty());
        assert_eq!(registry.len_of(&UserId::parse("alice").unwrap()), 0);
    }
}
