//! Backends: one file per implementation of a port trait from `mangaassist_protocols::ports`.
//!
//! Embedded defaults (no service needed): [`simulated`] model, [`local_classifier`],
//! [`tantivy`] retriever over the shipped [`catalog`], [`embedded_enrichment`] source, and the
//! [`embedded_store`] durable transcript store. [`chaos`] wraps sources with injectable latency.
//!
//! Real backends: [`http_catalog`] (a third-party catalog API as the enrichment source), the
//! two-tier enrichment [`cache`] (in-process, plus Redis when configured), [`opensearch`] (the
//! catalog retriever on an OpenSearch cluster), [`bedrock`] and [`openai`] models.

pub mod bedrock;
pub mod cache;
pub mod catalog;
pub mod chaos;
pub mod embedded_enrichment;
pub mod embedded_store;
pub mod http_catalog;
mod http_util;
pub mod llm_classifier;
pub mod llm_preferences;
pub mod llm_summarizer;
pub mod local_classifier;
pub mod model_limits;
pub mod models;
pub mod ngram_classifier;
pub mod observed;
pub mod openai;
pub mod opensearch;
pub mod query_words;
pub mod redis_store;
pub mod simulated;
pub mod tantivy;
