//! # generator
//!
//! **Role**: opens model streams and pumps their tokens into a turn's bounded token channel.
//! **Inputs**: [`GeneratorMsg::Open`] with the assembled [`ModelRequest`], the sending half of
//! the turn's bounded channel, and the turn's cancellation token.
//! **Outputs**: [`StreamEvent`]s on that channel, ending with exactly one `End` or `Failed` (or
//! nothing, if the forwarder went away first).
//! **Failure policy**: the actor only starts streams; each stream runs in a generation task owned
//! by the worker ([`crate::worker`]), so a restart of the actor (permanent child of the root
//! supervisor) does not cut streams already flowing. Cancellation drops the model stream at once,
//! which stops upstream generation, and reports the partial usage. The channel is bounded: a slow
//! forwarder slows this task, never the other way round, and nothing here awaits anything but the
//! model and the channel.

use std::sync::Arc;

use futures_util::StreamExt;
use mangaassist_protocols::frame::FinishReason;
use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::ports::{ModelBackend, ModelEvent};
use mangaassist_protocols::turn::{ModelRequest, StreamEvent, Usage};
use ractor::RpcReplyPort;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::worker::{Service, Worker};

/// Messages of the generator.
pub enum GeneratorMsg {
    /// Start streaming an answer.
    Open {
        /// The assembled request.
        request: ModelRequest,
        /// The turn's bounded token channel.
        events: mpsc::Sender<StreamEvent>,
        /// Cancelled when the client cancels or goes away.
        cancel: CancellationToken,
        /// Answered once the generation task runs.
        reply: RpcReplyPort<()>,
        /// The turn's `generate` span: the generation task runs in it.
        span: tracing::Span,
    },
}

/// The generator's work: one generation task per opened stream.
pub struct Generate(pub Arc<dyn ModelBackend>);

impl Service for Generate {
    type Msg = GeneratorMsg;
    const KIND: ActorKind = ActorKind::Generator;

    fn message_name(_: &GeneratorMsg) -> &'static str {
        "open"
    }

    fn serve(&self, msg: GeneratorMsg) -> impl Future<Output = ()> + Send + 'static {
        let GeneratorMsg::Open {
            request,
            events,
            cancel,
            reply,
            span,
        } = msg;
        let _ = reply.send(());
        tracing::Instrument::instrument(generate(self.0.clone(), request, events, cancel), span)
    }
}

/// The generator actor.
pub type GeneratorActor = Worker<Generate>;

/// One generation: model stream -> bounded channel, until the end, a failure or cancellation.
pub async fn generate(
    backend: Arc<dyn ModelBackend>,
    request: ModelRequest,
    events: mpsc::Sender<StreamEvent>,
    cancel: CancellationToken,
) {
    let input_tokens = request.estimated_input_tokens;
    let mut stream = backend.stream(request);
    let mut produced: u32 = 0;
    let mut reported: Option<Usage> = None;
    // Registered once for the whole stream, polled beside every await.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let cancelled_end = |produced| StreamEvent::End {
        usage: Usage {
            input_tokens,
            output_tokens: produced,
        },
        finish_reason: FinishReason::Cancelled,
    };
    let end = loop {
        let next = tokio::select! {
            biased;
            () = &mut cancelled => break cancelled_end(produced),
            next = stream.next() => next,
        };
        match next {
            Some(Ok(ModelEvent::Token(text))) => {
                produced = produced.saturating_add(1);
                tokio::select! {
                    biased;
                    () = &mut cancelled => break cancelled_end(produced),
                    sent = events.send(StreamEvent::Token(text)) => {
                        if sent.is_err() {
                            return; // The forwarder is gone; dropping the stream stops the model.
                        }
                    }
                }
            }
            Some(Ok(ModelEvent::Usage(u))) => reported = Some(u),
            Some(Err(e)) => {
                break StreamEvent::Failed {
                    message: e.to_string(),
                };
            }
            None => {
                break StreamEvent::End {
                    usage: reported.unwrap_or(Usage {
                        input_tokens,
                        output_tokens: produced,
                    }),
                    finish_reason: FinishReason::Stop,
                };
            }
        }
    };
    drop(stream);
    let _ = events.send(end).await;
}
