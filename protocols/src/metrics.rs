//! Typed metric events. Stages emit these to the metrics-sink with a non-blocking `try_send`;
//! only the sink turns them into histograms and counters, so no business code formats a metric
//! name and every label comes from a closed enum.

use serde::{Deserialize, Serialize};

use crate::frame::ErrorCode;
use crate::turn::{EnrichmentField, Intent};

/// The seven actor kinds. Chaos rules, restart counts and spans name actors by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// One per session: owns the conversation and runs its turns.
    Session,
    /// Decides the intent.
    Classifier,
    /// Looks up store facts.
    Enricher,
    /// Searches the catalog.
    Retriever,
    /// Opens model streams.
    Generator,
    /// One per stream: turns stream events into frames.
    ChunkForwarder,
    /// Aggregates metric events.
    MetricsSink,
}

impl ActorKind {
    /// Every kind.
    pub const ALL: [ActorKind; 7] = [
        ActorKind::Session,
        ActorKind::Classifier,
        ActorKind::Enricher,
        ActorKind::Retriever,
        ActorKind::Generator,
        ActorKind::ChunkForwarder,
        ActorKind::MetricsSink,
    ];

    /// The label and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Session => "session",
            ActorKind::Classifier => "classifier",
            ActorKind::Enricher => "enricher",
            ActorKind::Retriever => "retriever",
            ActorKind::Generator => "generator",
            ActorKind::ChunkForwarder => "chunk_forwarder",
            ActorKind::MetricsSink => "metrics_sink",
        }
    }

    /// Parses the label spelling (also accepts `chunk-forwarder`, `metrics-sink`).
    pub fn parse(s: &str) -> Option<Self> {
        let norm = s.replace('-', "_");
        Self::ALL.into_iter().find(|k| k.as_str() == norm)
    }
}

/// A pipeline stage whose latency is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Intent classification.
    Classify,
    /// Catalog search.
    Retrieve,
    /// Mandatory enrichment (the preflight).
    Enrich,
    /// Context assembly.
    Assemble,
    /// Transcript write before `done`.
    TranscriptWrite,
}

impl Stage {
    /// Every stage.
    pub const ALL: [Stage; 5] = [
        Stage::Classify,
        Stage::Retrieve,
        Stage::Enrich,
        Stage::Assemble,
        Stage::TranscriptWrite,
    ];

    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Classify => "classify",
            Stage::Retrieve => "retrieve",
            Stage::Enrich => "enrich",
            Stage::Assemble => "assemble",
            Stage::TranscriptWrite => "transcript_write",
        }
    }
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    /// `done` with finish_reason stop.
    Completed,
    /// `done` with finish_reason cancelled.
    Cancelled,
    /// Ended by an `error` frame.
    Failed,
}

impl TurnOutcome {
    /// Every outcome.
    pub const ALL: [TurnOutcome; 3] = [
        TurnOutcome::Completed,
        TurnOutcome::Cancelled,
        TurnOutcome::Failed,
    ];

    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnOutcome::Completed => "completed",
            TurnOutcome::Cancelled => "cancelled",
            TurnOutcome::Failed => "failed",
        }
    }
}

/// Which front a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// `GET /ws`.
    WebSocket,
    /// The newline-delimited JSON TCP listener.
    Tcp,
}

impl Transport {
    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Tcp => "tcp",
        }
    }
}

/// One thing worth counting. Durations are microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricEvent {
    /// A turn was accepted and classified.
    TurnStarted {
        /// Its intent.
        intent: Intent,
    },
    /// A turn ended.
    TurnFinished {
        /// Its intent.
        intent: Intent,
        /// How.
        outcome: TurnOutcome,
    },
    /// First token frame written to the socket, measured from the `user_message` arriving.
    FirstToken {
        /// Time to first token.
        ttft_us: u64,
    },
    /// Time between two consecutive token frames of one turn written to the socket.
    ChunkGap {
        /// The gap.
        gap_us: u64,
    },
    /// An `error` frame was sent.
    ErrorSent {
        /// Its code.
        code: ErrorCode,
    },
    /// A stage finished (successfully or not).
    StageLatency {
        /// Which.
        stage: Stage,
        /// How long.
        us: u64,
    },
    /// A mandatory enrichment field missed its budget and was left out.
    EnrichmentOmitted {
        /// Which field.
        field: EnrichmentField,
    },
    /// A supervisor restarted a failed actor.
    ActorRestarted {
        /// Which kind.
        actor: ActorKind,
    },
    /// A client connection opened or closed.
    Connection {
        /// Through which front.
        transport: Transport,
        /// True on open, false on close.
        opened: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_kind_parses_both_spellings() {
        for k in ActorKind::ALL {
            assert_eq!(ActorKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(
            ActorKind::parse("chunk-forwarder"),
            Some(ActorKind::ChunkForwarder)
        );
        assert_eq!(ActorKind::parse("nobody"), None);
    }
}
