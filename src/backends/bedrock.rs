//! Amazon Bedrock as the chat model: a [`ModelBackend`] over the `ConverseStream` API of
//! `aws-sdk-bedrockruntime`, with the runtime's own deadlines and retry rules.
//!
//! # Request mapping
//!
//! One [`ModelRequest`] is one `ConverseStream` call on the pinned
//! [`BedrockSettings::model_id`]:
//! - `system` becomes one `SystemContentBlock::Text` (left out when empty);
//! - `messages` become `Message`s with one `ContentBlock::Text` each, role user or assistant.
//!   Bedrock wants a conversation that opens with the user and alternates roles, with no blank
//!   text, so empty messages are dropped, leading assistant messages are dropped, and consecutive
//!   messages of one role are joined with a blank line;
//! - `inferenceConfig` carries [`BedrockSettings::max_tokens`] and
//!   [`BedrockSettings::temperature`] when set.
//!
//! `context` and `constraints` are not sent: the prompt assembler already rendered them into
//! `system`.
//!
//! # Event mapping
//!
//! - `contentBlockDelta` with text -> [`ModelEvent::Token`] (empty and non-text deltas are skipped);
//! - `metadata` usage -> [`ModelEvent::Usage`] (input and output tokens), after which the stream
//!   ends;
//! - `messageStop` marks the answer complete. The usage event is sent once both `messageStop` and
//!   `metadata` arrived; should the response end (or stall) after `messageStop` without
//!   `metadata`, the usage falls back to the request's estimated input tokens and the number of
//!   text deltas received.
//! - `messageStart`, `contentBlockStart`, `contentBlockStop` and unknown events are ignored.
//!
//! # Deadlines ([`Deadlines`])
//!
//! - `first_token`: per attempt, from sending the request to the first text delta (response
//!   headers and leading events included). Past it the attempt fails with
//!   `Timeout("first token")`, which is retried like a throttle.
//! - `chunk_gap`: after the first token, how long each wait for the next event may last, measured
//!   from when the consumer asks for it (a slow consumer does not count against the provider).
//!   Past it: `Timeout("chunk gap")`.
//! - `total`: from the first poll of the stream to its end, retries and backoff included. Past
//!   it: `Timeout("total")`.
//!
//! # Retry rules ([`RetryPolicy`])
//!
//! The SDK's own retries are disabled (and so is its stalled-stream protection: the deadlines
//! above own stalls). This backend retries itself, and **only before the first token**: once a
//! token was handed out, a failure ends the stream and is never retried here. Retryable before
//! the first token: `ThrottlingException`, `ServiceUnavailableException`,
//! `ModelNotReadyException`, `InternalServerException`, `modelStreamErrorException`, a
//! first-token timeout, and a connection that failed or broke. Between attempts it sleeps an
//! exponential backoff with full jitter (uniform in `0..=min(max, base * 2^(n-1))` before retry
//! `n`), and never past the total deadline. `max_attempts` counts the first attempt too.
//!
//! # Failure mapping ([`ModelError`])
//!
//! - throttling, service unavailable, model not ready, with retries exhausted ->
//!   [`ModelError::Throttled`] (the provider could not take the call now: retry later or fall
//!   back);
//! - first-token, chunk-gap, total deadlines -> [`ModelError::Timeout`] with `"first token"`,
//!   `"chunk gap"` or `"total"`; Bedrock's own `ModelTimeoutException` -> `Timeout` with its text;
//! - everything else -> [`ModelError::Stream`]: a refused request (validation, access denied,
//!   unknown model), a connection that broke, a response cut before `messageStop`, an in-stream
//!   exception (`modelStreamErrorException` and any other after the first token), a malformed
//!   frame (bad CRC, garbage bytes, undecodable payload).
//!
//! A failure is always the last item: the stream never ends cleanly after one.
//!
//! # Cancellation
//!
//! The stream owns the SDK's event receiver and with it the HTTP response body. Dropping the
//! [`ModelStream`] drops both, which closes the HTTP/1 connection or resets the HTTP/2 stream at
//! once: Bedrock stops generating and no connection with an unread body goes back to the pool.

use std::sync::Arc;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Region, StalledStreamProtectionConfig};
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, SdkError};
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamError;
use aws_sdk_bedrockruntime::operation::converse_stream::builders::ConverseStreamFluentBuilder;
use aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver;
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ContentBlockDelta, ConversationRole, ConverseStreamOutput,
    InferenceConfiguration, Message, SystemContentBlock, TokenUsage,
};
use futures_util::stream;
use mangaassist_protocols::frame::ModelInfo;
use mangaassist_protocols::ports::{ModelBackend, ModelError, ModelEvent, ModelStream, TokenCount};
use mangaassist_protocols::turn::{ChatMessage, ModelRequest, Role, Usage};
use tokio::time::{Instant, timeout_at};

/// Settings of the Bedrock backend, from `[model.bedrock]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BedrockSettings {
    /// The pinned model id (or inference profile), e.g.
    /// `anthropic.claude-3-haiku-20240307-v1:0`: never a floating alias, so answers do not change
    /// under the runtime's feet.
    pub model_id: String,
    /// AWS region; `None` takes it from the standard chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Endpoint override (a VPC endpoint, a test server); `None` uses the regional endpoint.
    pub endpoint_url: Option<String>,
    /// First-token, chunk-gap and total deadlines.
    pub deadlines: Deadlines,
    /// Retries before the first token.
    pub retry: RetryPolicy,
    /// `inferenceConfig.maxTokens`; `None` leaves the model default.
    pub max_tokens: Option<i32>,
    /// `inferenceConfig.temperature`; `None` leaves the model default.
    pub temperature: Option<f32>,
}

impl BedrockSettings {
    /// Settings for `model_id` with default deadlines and retries, region and credentials from
    /// the standard chain, and model-default inference parameters.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            region: None,
            endpoint_url: None,
            deadlines: Deadlines::default(),
            retry: RetryPolicy::default(),
            max_tokens: None,
            temperature: None,
        }
    }
}

pub use super::model_limits::{Deadlines, RetryPolicy};

/// A [`ModelBackend`] answering through Bedrock `ConverseStream`.
#[derive(Debug, Clone)]
pub struct BedrockBackend {
    /// The SDK client, with SDK retries and stalled-stream protection off.
    client: Client,
    /// Model id, deadlines, retries and inference parameters.
    settings: BedrockSettings,
    /// `CountTokens` answers by a hash of the counted text (system prompt and messages).
    counts: Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>,
}

/// Token counts kept per backend; the cache is emptied when it reaches this.
const COUNT_CACHE_ENTRIES: usize = 4_096;

impl BedrockBackend {
    /// A backend with region and credentials from the standard AWS chain (environment, profile,
    /// web identity, container and instance metadata); `settings.region` and
    /// `settings.endpoint_url` override the chain when set.
    pub async fn new(settings: BedrockSettings) -> Self {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).retry_config(RetryConfig::disabled());
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let shared = loader.load().await;
        Self::with_config(settings, aws_sdk_bedrockruntime::Config::from(&shared))
    }

    /// A backend on an explicit SDK config (tests, custom credential providers or HTTP
    /// clients). `settings.region` and `settings.endpoint_url` still override it when set;
    /// SDK retries and stalled-stream protection are switched off whatever the config says.
    pub fn with_config(settings: BedrockSettings, config: aws_sdk_bedrockruntime::Config) -> Self {
        let mut builder = config
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(region) = &settings.region {
            builder = builder.region(Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        Self {
            client: Client::from_conf(builder.build()),
            settings,
            counts: Arc::default(),
        }
    }

    /// `CountTokens` for the Converse form of `request`, cached by a hash of its text.
    async fn count(&self, request: &ModelRequest) -> Result<Option<u32>, ModelError> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        request.system.hash(&mut h);
        for m in &request.messages {
            (m.role as u8).hash(&mut h);
            m.content.hash(&mut h);
        }
        let key = h.finish();
        let cached = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .copied();
        if let Some(n) = cached {
            return Ok(Some(n));
        }
        let mut input = aws_sdk_bedrockruntime::types::ConverseTokensRequest::builder();
        if !request.system.is_empty() {
            input = input.system(SystemContentBlock::Text(request.system.clone()));
        }
        for (role, text) in conversation(&request.messages) {
            let message = Message::builder()
                .role(role)
                .content(ContentBlock::Text(text))
                .build()
                .map_err(|e| ModelError::Stream(format!("cannot build a Bedrock message: {e}")))?;
            input = input.messages(message);
        }
        let call = self
            .client
            .count_tokens()
            .model_id(self.settings.model_id.clone())
            .input(aws_sdk_bedrockruntime::types::CountTokensInput::Converse(
                input.build(),
            ))
            .send();
        let out = tokio::time::timeout(self.settings.deadlines.first_token, call)
            .await
            .map_err(|_| ModelError::Timeout("CountTokens did not answer in time".into()))?
            .map_err(|e| ModelError::Stream(format!("CountTokens: {}", DisplayErrorContext(&e))))?;
        let n = u32::try_from(out.input_tokens()).unwrap_or(0);
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.len() >= COUNT_CACHE_ENTRIES {
            counts.clear();
        }
        counts.insert(key, n);
        Ok(Some(n))
    }

    /// The settings this backend runs with.
    pub fn settings(&self) -> &BedrockSettings {
        &self.settings
    }

    /// The `ConverseStream` call for `request`, ready to send (and to clone per attempt).
    fn converse_request(
        &self,
        request: &ModelRequest,
    ) -> Result<ConverseStreamFluentBuilder, String> {
        let mut call = self
            .client
            .converse_stream()
            .model_id(self.settings.model_id.clone());
        if !request.system.is_empty() {
            call = call.system(SystemContentBlock::Text(request.system.clone()));
        }
        for (role, text) in conversation(&request.messages) {
            let message = Message::builder()
                .role(role)
                .content(ContentBlock::Text(text))
                .build()
                .map_err(|e| format!("cannot build a Bedrock message: {e}"))?;
            call = call.messages(message);
        }
        if self.settings.max_tokens.is_some() || self.settings.temperature.is_some() {
            call = call.inference_config(
                InferenceConfiguration::builder()
                    .set_max_tokens(self.settings.max_tokens)
                    .set_temperature(self.settings.temperature)
                    .build(),
            );
        }
        Ok(call)
    }
}

impl ModelBackend for BedrockBackend {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            backend: "bedrock".to_string(),
            model_id: self.settings.model_id.clone(),
            simulated: false,
        }
    }

    fn count_tokens<'a>(&'a self, request: &'a ModelRequest) -> TokenCount<'a> {
        Box::pin(self.count(request))
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let call = match self.converse_request(&request) {
            Ok(call) => call,
            Err(message) => {
                return Box::pin(stream::once(
                    async move { Err(ModelError::Stream(message)) },
                ));
            }
        };
        let call = Call {
            request: call,
            deadlines: self.settings.deadlines,
            retry: self.settings.retry,
            estimated_input_tokens: request.estimated_input_tokens,
            total_at: None,
            receiver: None,
            deltas: 0,
            stopped: false,
            usage: None,
            finished: false,
        };
        Box::pin(stream::unfold(call, |mut call| async move {
            let item = call.next().await?;
            Some((item, call))
        }))
    }
}

/// The messages as Bedrock accepts them: user first, roles alternating, no blank text.
fn conversation(messages: &[ChatMessage]) -> Vec<(ConversationRole, String)> {
    let mut out: Vec<(Role, String)> = Vec::new();
    for message in messages {
        if message.content.trim().is_empty() || (out.is_empty() && message.role != Role::User) {
            continue;
        }
        match out.last_mut() {
            Some((role, text)) if *role == message.role => {
                text.push_str("\n\n");
                text.push_str(&message.content);
            }
            _ => out.push((message.role, message.content.clone())),
        }
    }
    out.into_iter()
        .map(|(role, text)| {
            let role = match role {
                Role::User => ConversationRole::User,
                Role::Assistant => ConversationRole::Assistant,
            };
            (role, text)
        })
        .collect()
}

/// The SDK's receiver of `ConverseStream` events.
type Receiver = EventReceiver<ConverseStreamOutput, ConverseStreamOutputError>;

/// An attempt or read that failed, and whether another attempt may help.
struct Failure {
    /// What the consumer sees if this is the last word.
    error: ModelError,
    /// True when retrying can help (only consulted before the first token).
    retryable: bool,
}

impl Failure {
    fn retryable(error: ModelError) -> Self {
        Self {
            error,
            retryable: true,
        }
    }

    fn fatal(error: ModelError) -> Self {
        Self {
            error,
            retryable: false,
        }
    }
}

/// What the next wait for an event is bounded by.
#[derive(Clone, Copy)]
enum Wait {
    /// Before the first token: the attempt's deadline and its timeout label.
    FirstToken(Instant, &'static str),
    /// After it: the chunk gap and the total deadline.
    Flowing,
}

/// One model stream: the state carried between its items.
struct Call {
    /// The request, cloned for every attempt.
    request: ConverseStreamFluentBuilder,
    /// Deadlines.
    deadlines: Deadlines,
    /// Retries before the first token.
    retry: RetryPolicy,
    /// Input tokens reported when Bedrock sends no usage.
    estimated_input_tokens: u32,
    /// End of the total deadline; set on the first poll.
    total_at: Option<Instant>,
    /// The open response, once the first token arrived; dropping it closes the response.
    receiver: Option<Receiver>,
    /// Text deltas received (the fallback output token count).
    deltas: u32,
    /// `messageStop` arrived: the answer is complete.
    stopped: bool,
    /// Usage from `metadata`, once it arrived.
    usage: Option<Usage>,
    /// The last item (usage or a failure) was sent.
    finished: bool,
}

impl Call {
    /// The next item of the stream; `None` after usage or a failure.
    async fn next(&mut self) -> Option<Result<ModelEvent, ModelError>> {
        if self.finished {
            return None;
        }
        let total_at = *self
            .total_at
            .get_or_insert_with(|| Instant::now() + self.deadlines.total);
        let item = match self.receiver.take() {
            None => self.open(total_at).await,
            Some(mut rx) => {
                let item = self.pump(&mut rx, Wait::Flowing, total_at).await;
                if matches!(item, Ok(ModelEvent::Token(_))) {
                    self.receiver = Some(rx);
                }
                item.map_err(|f| f.error)
            }
        };
        if !matches!(item, Ok(ModelEvent::Token(_))) {
            self.finished = true;
            self.receiver = None;
        }
        Some(item)
    }

    /// Attempts the call until the first token (or a complete empty answer), retrying with
    /// backoff while the failures are retryable, attempts remain and the total deadline allows.
    async fn open(&mut self, total_at: Instant) -> Result<ModelEvent, ModelError> {
        let max_attempts = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let failure = match self.attempt(total_at).await {
                Ok(event) => return Ok(event),
                Err(failure) => failure,
            };
            if !failure.retryable || attempt >= max_attempts {
                return Err(gave_up(failure.error, attempt));
            }
            let delay = self.retry.backoff(attempt);
            if Instant::now() + delay >= total_at {
                return Err(gave_up(failure.error, attempt));
            }
            tracing::debug!(
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %failure.error,
                "bedrock call failed before the first token; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One attempt: send, then read events until the first token under the first-token deadline.
    async fn attempt(&mut self, total_at: Instant) -> Result<ModelEvent, Failure> {
        self.deltas = 0;
        self.stopped = false;
        self.usage = None;
        let first_at = Instant::now() + self.deadlines.first_token;
        let (deadline, label) = if total_at <= first_at {
            (total_at, "total")
        } else {
            (first_at, "first token")
        };
        let output = match timeout_at(deadline, self.request.clone().send()).await {
            Err(_) => return Err(Failure::retryable(ModelError::Timeout(label.to_string()))),
            Ok(Err(err)) => return Err(send_failure(err)),
            Ok(Ok(output)) => output,
        };
        let mut rx = output.stream;
        let event = self
            .pump(&mut rx, Wait::FirstToken(deadline, label), total_at)
            .await?;
        if matches!(event, ModelEvent::Token(_)) {
            self.receiver = Some(rx);
        }
        Ok(event)
    }

    /// Reads events until one is worth handing out: a token, or the final usage.
    async fn pump(
        &mut self,
        rx: &mut Receiver,
        wait: Wait,
        total_at: Instant,
    ) -> Result<ModelEvent, Failure> {
        let before_first = matches!(wait, Wait::FirstToken(..));
        loop {
            let (deadline, label) = match wait {
                Wait::FirstToken(at, label) => (at, label),
                Wait::Flowing => {
                    let gap_at = Instant::now() + self.deadlines.chunk_gap;
                    if total_at <= gap_at {
                        (total_at, "total")
                    } else {
                        (gap_at, "chunk gap")
                    }
                }
            };
            let received = match timeout_at(deadline, rx.recv()).await {
                Ok(received) => received,
                // The answer is complete; only its metadata is late.
                Err(_) if self.stopped => return Ok(ModelEvent::Usage(self.final_usage())),
                Err(_) => {
                    return Err(Failure {
                        error: ModelError::Timeout(label.to_string()),
                        retryable: before_first,
                    });
                }
            };
            match received {
                Ok(Some(event)) => {
                    if let Some(item) = self.on_event(event) {
                        return Ok(item);
                    }
                }
                Ok(None) if self.stopped => return Ok(ModelEvent::Usage(self.final_usage())),
                Ok(None) => {
                    return Err(Failure {
                        error: ModelError::Stream(
                            "bedrock response ended before messageStop".to_string(),
                        ),
                        retryable: before_first,
                    });
                }
                Err(err) => return Err(receive_failure(err, before_first)),
            }
        }
    }

    /// Folds one event into the state; returns the item it yields, if any.
    fn on_event(&mut self, event: ConverseStreamOutput) -> Option<ModelEvent> {
        match event {
            ConverseStreamOutput::ContentBlockDelta(delta) => match delta.delta {
                Some(ContentBlockDelta::Text(text)) if !text.is_empty() => {
                    self.deltas += 1;
                    Some(ModelEvent::Token(text))
                }
                _ => None,
            },
            ConverseStreamOutput::MessageStop(_) => {
                self.stopped = true;
                self.usage.map(ModelEvent::Usage)
            }
            ConverseStreamOutput::Metadata(metadata) => {
                let usage = metadata
                    .usage()
                    .map(usage_of)
                    .unwrap_or_else(|| self.estimated_usage());
                self.usage = Some(usage);
                self.stopped.then_some(ModelEvent::Usage(usage))
            }
            _ => None,
        }
    }

    /// Usage from `metadata`, or the estimate when none arrived.
    fn final_usage(&self) -> Usage {
        self.usage.unwrap_or_else(|| self.estimated_usage())
    }

    /// The request's estimated input tokens and one output token per text delta.
    fn estimated_usage(&self) -> Usage {
        Usage {
            input_tokens: self.estimated_input_tokens,
            output_tokens: self.deltas,
        }
    }
}

/// Bedrock's token counts (never negative in practice; clamped at 0).
fn usage_of(usage: &TokenUsage) -> Usage {
    Usage {
        input_tokens: u32::try_from(usage.input_tokens()).unwrap_or(0),
        output_tokens: u32::try_from(usage.output_tokens()).unwrap_or(0),
    }
}

/// The error the consumer sees once retrying stopped after `attempts` attempts.
fn gave_up(error: ModelError, attempts: u32) -> ModelError {
    match error {
        ModelError::Throttled(text) if attempts > 1 => {
            ModelError::Throttled(format!("{text} (gave up after {attempts} attempts)"))
        }
        other => other,
    }
}

/// Classifies a failed `send` (before any event arrived).
fn send_failure(err: SdkError<ConverseStreamError>) -> Failure {
    match &err {
        SdkError::ServiceError(context) => {
            let service = context.err();
            let text = service.to_string();
            match service {
                ConverseStreamError::ThrottlingException(_)
                | ConverseStreamError::ServiceUnavailableException(_)
                | ConverseStreamError::ModelNotReadyException(_) => {
                    Failure::retryable(ModelError::Throttled(text))
                }
                ConverseStreamError::InternalServerException(_)
                | ConverseStreamError::ModelStreamErrorException(_) => {
                    Failure::retryable(ModelError::Stream(text))
                }
                ConverseStreamError::ModelTimeoutException(_) => {
                    Failure::fatal(ModelError::Timeout(text))
                }
                _ => Failure::fatal(ModelError::Stream(format!(
                    "bedrock refused the request: {text}"
                ))),
            }
        }
        SdkError::DispatchFailure(dispatch) if dispatch.is_io() || dispatch.is_timeout() => {
            Failure::retryable(ModelError::Stream(format!(
                "bedrock unreachable: {}",
                DisplayErrorContext(&err)
            )))
        }
        SdkError::TimeoutError(_) => Failure::retryable(ModelError::Stream(format!(
            "bedrock call timed out in the SDK: {}",
            DisplayErrorContext(&err)
        ))),
        _ => Failure::fatal(ModelError::Stream(format!(
            "bedrock call failed: {}",
            DisplayErrorContext(&err)
        ))),
    }
}

/// Classifies a failed read of the event stream.
fn receive_failure<R: std::fmt::Debug>(
    err: SdkError<ConverseStreamOutputError, R>,
    before_first: bool,
) -> Failure {
    match &err {
        SdkError::ServiceError(context) => {
            let service = context.err();
            let text = format!("bedrock stream exception: {service}");
            if !before_first {
                return Failure::fatal(ModelError::Stream(text));
            }
            match service {
                ConverseStreamOutputError::ThrottlingException(_)
                | ConverseStreamOutputError::ServiceUnavailableException(_) => {
                    Failure::retryable(ModelError::Throttled(service.to_string()))
                }
                ConverseStreamOutputError::ModelStreamErrorException(_)
                | ConverseStreamOutputError::InternalServerException(_) => {
                    Failure::retryable(ModelError::Stream(text))
                }
                _ => Failure::fatal(ModelError::Stream(text)),
            }
        }
        // The connection broke mid-body: worth another attempt only if nothing was sent yet.
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Failure {
            error: ModelError::Stream(format!(
                "bedrock stream broke: {}",
                DisplayErrorContext(&err)
            )),
            retryable: before_first,
        },
        // Undecodable frames (bad CRC, garbage, bad payload) or a body error.
        _ => Failure::fatal(ModelError::Stream(format!(
            "bedrock stream broke: {}",
            DisplayErrorContext(&err)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.to_string(),
        }
    }

    #[test]
    fn conversation_starts_with_the_user_and_alternates() {
        let messages = [
            msg(Role::Assistant, "Welcome!"),
            msg(Role::User, "hi"),
            msg(Role::User, "any horror?"),
            msg(Role::Assistant, "  "),
            msg(Role::Assistant, "Try Uzumaki."),
            msg(Role::User, "price?"),
        ];
        let got = conversation(&messages);
        assert_eq!(
            got,
            vec![
                (ConversationRole::User, "hi\n\nany horror?".to_string()),
                (ConversationRole::Assistant, "Try Uzumaki.".to_string()),
                (ConversationRole::User, "price?".to_string()),
            ]
        );
    }
}
