//! Builds the backend a policy [`ModelRef`] names: a Bedrock or OpenAI-compatible client, the
//! simulated model, or a local classifier. Shared by `serve` (the policy router) and
//! `mangaassist eval`.
//!
//! Construction is cheap after the first Bedrock model: the AWS configuration (region and
//! credentials from the standard chain) is loaded once and shared, so every Bedrock model reuses
//! one credentials cache. Building never calls the model; a bad endpoint or a missing credential
//! shows up as the first call's error, which the policy's fallback chain handles.

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use mangaassist_protocols::ports::{IntentClassifier, ModelBackend};
use tokio::sync::OnceCell;

use crate::backends::bedrock::{BedrockBackend, BedrockSettings};
use crate::backends::llm_classifier::LlmClassifier;
use crate::backends::local_classifier::LocalClassifier;
use crate::backends::model_limits::{Deadlines, RetryPolicy};
use crate::backends::ngram_classifier::{self, NgramClassifier};
use crate::backends::openai::{OpenAiBackend, OpenAiSettings};
use crate::backends::simulated::{SimulatedConfig, SimulatedModel};
use crate::policy::pinned::LOCAL_CLASSIFIER_IDS;
use crate::policy::{Backend, ModelRef, TaskType};

/// Answer tokens an LLM intent classifier may spend: a label is one to three tokens.
pub const LABEL_MAX_TOKENS: u32 = 16;

/// The weighted cue table of the first release.
pub const KEYWORD_RULES_ID: &str = "keyword-rules-v1";

/// Why a model could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The model's backend cannot serve what was asked (a local classifier asked to write text).
    #[error("model {model:?} ({backend} {id}): {message}")]
    Unsupported {
        /// Short name.
        model: String,
        /// Backend.
        backend: Backend,
        /// Pinned id.
        id: String,
        /// Why.
        message: String,
    },
    /// The model's settings are unusable (a bad URL, an API key variable that is not set).
    #[error("model {model:?} ({backend} {id}): {message}")]
    Settings {
        /// Short name.
        model: String,
        /// Backend.
        backend: Backend,
        /// Pinned id.
        id: String,
        /// Why.
        message: String,
    },
}

/// Limits every remote model call gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallLimits {
    /// First-token, chunk-gap and total deadlines.
    pub deadlines: Deadlines,
    /// Retries before the first token (throttling and timeouts); after them the policy's
    /// fallback chain takes over.
    pub retry: RetryPolicy,
    /// Time an LLM classifier has for its whole answer.
    pub classify_deadline: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            deadlines: Deadlines::default(),
            retry: RetryPolicy::default(),
            classify_deadline: Duration::from_millis(800),
        }
    }
}

/// Builds backends from policy entries.
pub struct ModelFactory {
    simulated: SimulatedConfig,
    limits: CallLimits,
    aws: OnceCell<aws_config::SdkConfig>,
    ngram: OnceCell<Arc<NgramClassifier>>,
}

impl ModelFactory {
    /// A factory whose simulated models pace like `simulated` and whose remote calls get `limits`.
    pub fn new(simulated: SimulatedConfig, limits: CallLimits) -> Self {
        Self {
            simulated,
            limits,
            aws: OnceCell::new(),
            ngram: OnceCell::new(),
        }
    }

    /// Uses `config` for every Bedrock model instead of loading the standard chain (embedders
    /// with their own credential provider, tests with static credentials).
    pub fn with_aws_config(mut self, config: aws_config::SdkConfig) -> Self {
        self.aws = OnceCell::new_with(Some(config));
        self
    }

    /// The limits remote calls get.
    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// A text model for `m`, set up for `task`: an intent label is asked for with
    /// [`LABEL_MAX_TOKENS`] and temperature 0 (short, repeatable, cheap); other tasks get the
    /// model's defaults.
    pub async fn model(
        &self,
        m: &ModelRef,
        task: TaskType,
    ) -> Result<Arc<dyn ModelBackend>, BuildError> {
        let label = task == TaskType::IntentClassification;
        let settings_err = |message: String| BuildError::Settings {
            model: m.name.to_string(),
            backend: m.backend,
            id: m.id.to_string(),
            message,
        };
        Ok(match m.backend {
            Backend::Simulated => Arc::new(SimulatedModel::new(self.simulated)),
            Backend::Bedrock => {
                let mut settings = BedrockSettings::new(&*m.id);
                settings.region = m.serving.region.as_deref().map(str::to_owned);
                settings.endpoint_url = m.serving.endpoint.as_deref().map(str::to_owned);
                settings.deadlines = self.limits.deadlines;
                settings.retry = self.limits.retry;
                if label {
                    settings.max_tokens = Some(LABEL_MAX_TOKENS as i32);
                    settings.temperature = Some(0.0);
                }
                let shared = self
                    .aws
                    .get_or_init(|| aws_config::defaults(BehaviorVersion::latest()).load())
                    .await;
                Arc::new(BedrockBackend::with_config(
                    settings,
                    aws_sdk_bedrockruntime::Config::from(shared),
                ))
            }
            Backend::Openai => {
                let Some(base) = m.serving.endpoint.as_deref() else {
                    return Err(settings_err("an openai model needs an endpoint".into()));
                };
                let mut settings = OpenAiSettings::new(base, &*m.id);
                if let Some(var) = m.serving.api_key_env.as_deref() {
                    let key = std::env::var(var).map_err(|_| {
                        settings_err(format!("api_key_env {var} is not set in the environment"))
                    })?;
                    settings.api_key = Some(key);
                }
                settings.deadlines = self.limits.deadlines;
                settings.retry = self.limits.retry;
                if label {
                    settings.max_tokens = Some(LABEL_MAX_TOKENS);
                    settings.temperature = Some(0.0);
                }
                Arc::new(OpenAiBackend::new(settings).map_err(|e| settings_err(e.to_string()))?)
            }
            Backend::LocalClassifier => {
                return Err(BuildError::Unsupported {
                    model: m.name.to_string(),
                    backend: m.backend,
                    id: m.id.to_string(),
                    message: "a local classifier names intents; it cannot write text".into(),
                });
            }
        })
    }

    /// An intent classifier for `m`: a local classifier, or the LLM classifier over a text model.
    pub async fn classifier(&self, m: &ModelRef) -> Result<Arc<dyn IntentClassifier>, BuildError> {
        if m.backend != Backend::LocalClassifier {
            let model = self.model(m, TaskType::IntentClassification).await?;
            return Ok(Arc::new(LlmClassifier::new(
                model,
                self.limits.classify_deadline,
            )));
        }
        match &*m.id {
            ngram_classifier::MODEL_ID => {
                let trained = self
                    .ngram
                    .get_or_init(|| async {
                        tokio::task::spawn_blocking(NgramClassifier::builtin)
                            .await
                            .unwrap_or_else(|_| NgramClassifier::builtin())
                    })
                    .await;
                Ok(trained.clone())
            }
            KEYWORD_RULES_ID => Ok(Arc::new(LocalClassifier::new())),
            other => Err(BuildError::Unsupported {
                model: m.name.to_string(),
                backend: m.backend,
                id: other.to_string(),
                message: format!(
                    "unknown local classifier; this build has {}",
                    LOCAL_CLASSIFIER_IDS.join(", ")
                ),
            }),
        }
    }
}
