//! # mangaassist
//!
//! The MangaAssist runtime: streaming RAG chat on supervised actors.
//!
//! - [`config`]: TOML settings, parsed raw then validated into [`config::Config`].
//! - [`backends`]: one file per port implementation (simulated model, local classifiers, tantivy,
//!   embedded enrichment, embedded transcript store; Bedrock, OpenAI-compatible, OpenSearch, the
//!   HTTP catalog API, the Redis-backed cache) and the catalog loader.
//! - [`runtime`]: builds the backends, starts the supervision tree and the fronts; the entry point
//!   for embedding ([`runtime::Runtime::start`]).
//! - [`front`]: the HTTP listener (`/ws`, `/metrics`, `/healthz`, `/readyz`) and the raw TCP
//!   listener; both turn bytes into frames, frames into typed session messages.
//! - [`auth`]: the signed bearer tokens every connection presents in `hello`.
//! - [`chat`]: the terminal client behind `mangaassist chat`.
//! - [`eval`]: the intent-classifier evaluation gate behind `mangaassist eval`.
//! - [`ingest`]: versioned catalog indexes behind an alias, blue/green ingest with validation
//!   gates, rollback, and the golden retrieval set, behind `mangaassist ingest`.
//! - [`policy`]: the model-tier policy and the router every model call goes through.
//! - [`telemetry`]: the logging subscriber and the span exporters (OTLP, X-Ray, stdout).

pub mod auth;
pub mod backends;
pub mod chat;
pub mod config;
pub mod erasure;
pub mod eval;
pub mod front;
pub mod ingest;
pub mod policy;
pub mod runtime;
pub mod telemetry;
