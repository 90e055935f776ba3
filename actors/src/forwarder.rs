//! # chunk-forwarder
//!
//! **Role**: one per stream. Turns the turn's [`StreamEvent`]s into `token` frames on the
//! connection's outbound queue, numbering them, and accumulates the answer for the transcript.
//! **Inputs**: the receiving half of the turn's bounded token channel (given at spawn); the
//! actor sends itself one [`ForwarderMsg::Run`] and forwards the whole stream in that handler.
//! Mailbox chaos is applied before every chunk, as if each chunk were a mailbox message; the
//! tokens themselves never travel through the (unbounded) ractor mailbox.
//! **Outputs**: frames to [`Outbound`], and one [`Forwarded`] outcome to the turn when the stream
//! ends.
//! When the connection closes mid-stream it cancels the turn (the model stops at once) and reports
//! what was sent and the partial usage, so the turn is still recorded.
//! **Failure policy**: temporary: never restarted. If it fails, the turn's outcome channel closes
//! and the turn ends with an `internal` error frame. Between receiving a token and queueing its
//! frame it awaits nothing but the outbound queue (whose slow-client policy bounds that wait),
//! except in the deliberately wrong `--enrichment-mode inline` ([`InlineLookup`]).

use std::sync::Arc;
use std::time::Duration;

use mangaassist_protocols::frame::FinishReason;
use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::turn::{FieldSet, StreamEvent, Usage};
use mangaassist_protocols::{ServerFrame, TurnId};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::chaos::Chaos;
use crate::enricher::EnricherMsg;
use crate::outbound::{Mark, Outbound};
use crate::supervisor::WorkerSlot;

/// How long a forwarder whose connection closed waits for the model's partial usage.
const WIND_DOWN: Duration = Duration::from_secs(1);

/// How a stream ended, as the forwarder saw it.
#[derive(Debug)]
pub enum Forwarded {
    /// The model finished (or the turn was cancelled) and every token was queued.
    Finished {
        /// The answer as sent.
        answer: String,
        /// Token counts.
        usage: Usage,
        /// Stop or cancelled.
        finish_reason: FinishReason,
        /// The seq the next frame of this turn takes.
        next_seq: u64,
    },
    /// The model failed mid-way.
    Failed {
        /// What went wrong.
        message: String,
        /// The seq the error frame takes.
        next_seq: u64,
    },
    /// The connection closed under the stream. The model was stopped; `answer` is what had been
    /// queued for the client, `usage` what the model reported on stopping (if it did in time).
    Disconnected {
        /// The part of the answer queued before the connection closed.
        answer: String,
        /// Partial token counts.
        usage: Option<Usage>,
    },
}

/// Messages of a chunk-forwarder.
#[derive(Debug)]
pub enum ForwarderMsg {
    /// Forward the stream (sent to itself once, at start).
    Run,
}

/// Arguments of a chunk-forwarder.
pub struct ForwarderArgs {
    /// The turn whose stream this is.
    pub turn_id: TurnId,
    /// The turn's bounded token channel.
    pub events: mpsc::Receiver<StreamEvent>,
    /// The connection's outbound queue.
    pub outbound: Outbound,
    /// Seq of the first token frame (`turn_started` took 0).
    pub first_seq: u64,
    /// Where the outcome goes.
    pub done: oneshot::Sender<Forwarded>,
    /// Mailbox chaos.
    pub chaos: Arc<Chaos>,
    /// While no token has come yet, a `keepalive` frame goes out after this much silence.
    pub keepalive: Duration,
    /// The turn's cancellation: cancelled here when the connection goes away.
    pub cancel: CancellationToken,
    /// `--enrichment-mode inline` only: look enrichment up before every token frame.
    pub inline_enrichment: Option<InlineLookup>,
}

/// The anti-pattern of `--enrichment-mode inline`: an enrichment lookup awaited between a token
/// and its frame. Never used by default; it exists so the stall it causes can be measured.
pub struct InlineLookup {
    /// The enricher.
    pub enricher: WorkerSlot<EnricherMsg>,
    /// The series the turn is about.
    pub series_ids: Vec<String>,
    /// The intent's mandatory fields.
    pub fields: FieldSet,
}

/// How long an inline lookup may hold a token (it has no budget: that is the point).
const INLINE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The chunk-forwarder actor.
#[derive(Debug, Default)]
pub struct ForwarderActor;

/// State of one stream.
pub struct ForwarderState {
    turn_id: TurnId,
    events: mpsc::Receiver<StreamEvent>,
    outbound: Outbound,
    next_seq: u64,
    answer: String,
    done: Option<oneshot::Sender<Forwarded>>,
    chaos: Arc<Chaos>,
    keepalive: Duration,
    cancel: CancellationToken,
    inline_enrichment: Option<InlineLookup>,
}

impl ForwarderState {
    /// Forwards the whole stream, one frame per event, until it ends or the connection closes.
    ///
    /// Per chunk: mailbox chaos, receive, encode, queue. The cancellation future of the
    /// connection is registered once for the stream, not once per chunk.
    async fn forward(&mut self) -> Forwarded {
        let closing = self.outbound.closing().clone();
        let closed = closing.cancelled();
        tokio::pin!(closed);
        let mut waiting_for_first = true;
        loop {
            self.chaos.before(ActorKind::ChunkForwarder, "chunk").await;
            let event = if waiting_for_first {
                // Time to first token can be long (cold model, slow preflight): keep proxies'
                // idle timers from cutting a healthy stream.
                loop {
                    tokio::select! {
                        biased;
                        event = self.events.recv() => break event,
                        () = &mut closed => return self.wind_down().await,
                        () = tokio::time::sleep(self.keepalive) => {
                            if self.outbound.send(&ServerFrame::Keepalive, Mark::Plain).await.is_err() {
                                return self.wind_down().await;
                            }
                        }
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    event = self.events.recv() => event,
                    () = &mut closed => return self.wind_down().await,
                }
            };
            waiting_for_first = false;
            match event {
                Some(StreamEvent::Token(text)) => {
                    if let Some(inline) = &self.inline_enrichment {
                        let series_ids = inline.series_ids.clone();
                        let fields = inline.fields;
                        let _ = inline
                            .enricher
                            .call(INLINE_LOOKUP_TIMEOUT, |reply| EnricherMsg::Lookup {
                                series_ids,
                                fields,
                                reply,
                            })
                            .await;
                    }
                    let sent_len = self.answer.len();
                    self.answer.push_str(&text);
                    let frame = ServerFrame::Token {
                        turn_id: self.turn_id.clone(),
                        seq: self.next_seq,
                        text,
                    };
                    self.next_seq += 1;
                    if self.outbound.send(&frame, Mark::Token).await.is_err() {
                        self.answer.truncate(sent_len);
                        return self.wind_down().await;
                    }
                }
                Some(StreamEvent::End {
                    usage,
                    finish_reason,
                }) => {
                    return Forwarded::Finished {
                        answer: std::mem::take(&mut self.answer),
                        usage,
                        finish_reason,
                        next_seq: self.next_seq,
                    };
                }
                Some(StreamEvent::Failed { message }) => {
                    return Forwarded::Failed {
                        message,
                        next_seq: self.next_seq,
                    };
                }
                None => {
                    return Forwarded::Failed {
                        message: "generation stopped without finishing".into(),
                        next_seq: self.next_seq,
                    };
                }
            }
        }
    }

    /// The connection is gone: stop the model at once and collect its partial usage.
    async fn wind_down(&mut self) -> Forwarded {
        self.cancel.cancel();
        let answer = std::mem::take(&mut self.answer);
        // The generation task answers cancellation with `End` straight away; tokens it had
        // already produced were never sent and are not part of the answer.
        let usage = tokio::time::timeout(WIND_DOWN, async {
            loop {
                match self.events.recv().await {
                    Some(StreamEvent::Token(_)) => {}
                    Some(StreamEvent::End { usage, .. }) => return Some(usage),
                    Some(StreamEvent::Failed { .. }) | None => return None,
                }
            }
        })
        .await
        .unwrap_or(None);
        Forwarded::Disconnected { answer, usage }
    }

    fn finish(&mut self, myself: &ActorRef<ForwarderMsg>, outcome: Forwarded) {
        if let Some(done) = self.done.take() {
            let _ = done.send(outcome);
        }
        myself.stop(None);
    }
}

impl Actor for ForwarderActor {
    type Msg = ForwarderMsg;
    type State = ForwarderState;
    type Arguments = ForwarderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(ForwarderMsg::Run)?;
        Ok(ForwarderState {
            turn_id: args.turn_id,
            events: args.events,
            outbound: args.outbound,
            next_seq: args.first_seq,
            answer: String::new(),
            done: Some(args.done),
            chaos: args.chaos,
            keepalive: args.keepalive,
            cancel: args.cancel,
            inline_enrichment: args.inline_enrichment,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        _msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let outcome = state.forward().await;
        state.finish(&myself, outcome);
        Ok(())
    }
}
