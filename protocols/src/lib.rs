//! # mangaassist-protocols
//!
//! The vocabulary every other MangaAssist crate speaks. Nothing here opens a socket or needs a
//! tokio runtime; it is types, codecs and traits.
//!
//! - [`ids`]: newtype ids (`SessionId`, `TurnId`, `UserId`, `TraceId`), cheap to clone (`Arc<str>`),
//!   validated on the way in.
//! - [`frame`]: wire protocol v1. [`frame::ClientFrame`] is decoded from one JSON text frame with
//!   [`frame::decode_client`]; [`frame::ServerFrame`] encodes to one. Decoding has its own small
//!   error type, [`frame::FrameError`], whose [`frame::ErrorCode`] is the stable code clients see.
//! - [`catalog`]: the catalog record (`Series`) shared by the retriever, enrichment and the
//!   simulated model.
//! - [`turn`]: the typed payloads that travel between actors during a turn: intents, retrieved
//!   documents, enrichment facts, the assembled model request, stream events and usage.
//! - [`memory`]: what a session remembers beyond its verbatim turns: stated preferences and a
//!   rolling summary.
//! - [`metrics`]: typed metric events sent to the metrics-sink (never formatted metric names).
//! - [`ports`]: the traits a backend implements — [`ports::ModelBackend`], [`ports::Retriever`],
//!   [`ports::EnrichmentSource`], [`ports::IntentClassifier`], [`ports::TranscriptStore`] — each
//!   with its own error enum.

pub mod catalog;
pub mod frame;
pub mod ids;
pub mod memory;
pub mod metrics;
pub mod ports;
pub mod turn;

pub use frame::{ClientFrame, ErrorCode, FrameError, PROTOCOL_VERSION, ServerFrame};

/// Milliseconds since the Unix epoch, now (0 on a clock before 1970): the one clock of every
/// stored timestamp (transcripts, profiles, audit records, token claims).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
pub use ids::{SessionId, TraceId, TurnId, UserId};
