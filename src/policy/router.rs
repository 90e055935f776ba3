//! The policy at work: every model call the pipeline makes goes through a [`ModelRouter`], which
//! reads the active policy at the start of the call and
//!
//! 1. **routes** it: the task's canary for `percent` of sessions (stable by session id), else the
//!    primary ([`Policy::route`]);
//! 2. **checks** the tier rules on the model that serves it ([`Policy::check`]):
//!    `policy_violation_total{rule}`, and a warning once per rule, task and model per policy
//!    version;
//! 3. **falls back** when the call fails *before its first token*: the failure kind (`throttled`,
//!    `timeout`, `error`) picks the next model from the task's chain ([`Policy::next_after`]);
//!    each step is logged and counted as `model_fallbacks_total{model_id="haiku-fallback-sonnet",
//!    reason}`. After the first token there is no fallback: a failure ends the turn with an
//!    `error` frame;
//! 4. **shadows** it: the task's shadow model gets the same request in a task of its own, its
//!    answer is compared with the primary's once both are in, disagreements are logged with both
//!    answers and counted (`shadow_comparisons_total`). The user only ever sees the primary, and
//!    nothing on the primary's path waits for the shadow;
//! 5. **reports** every call ([`Observed`]): `model_invocations_total`, latency, tokens, cost.
//!
//! Backends are built on first use from the policy's entry ([`ModelFactory`]) and kept while the
//! entry is unchanged, so a reload that edits a model's endpoint rebuilds just that model.
//!
//! [`RoutedModel`] is the [`ModelBackend`] of a text task (answer synthesis); [`RoutedClassifier`]
//! the [`IntentClassifier`] of intent classification. On the token path a routed stream adds one
//! branch per token (and a string append when a shadow compares): no await, no lock.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use async_trait::async_trait;
use futures_util::{Stream, StreamExt as _};
use mangaassist_actors::background::Background;
use mangaassist_actors::metrics_sink::MetricsHandle;
use mangaassist_protocols::SessionId;
use mangaassist_protocols::frame::ModelInfo;
use mangaassist_protocols::metrics::{BackgroundJob, MetricEvent, ModelOutcome, ShadowVerdict};
use mangaassist_protocols::ports::{
    ClassifyError, IntentClassifier, ModelBackend, ModelError, ModelEvent, ModelStream, TokenCount,
};
use mangaassist_protocols::turn::{Classification, ModelRequest};
use tokio::sync::{Semaphore, oneshot};

use crate::backends::models::{BuildError, ModelFactory};
use crate::backends::observed::{Observed, TokenPrice};
use crate::policy::store::Active;
use crate::policy::{
    Backend, Failure, ModelRef, Policy, PolicyStore, Route, TaskType, ViolationRule,
};

/// Answers whose word-level similarity (`similar`'s ratio, 0 to 1) is below this disagree.
pub const ANSWER_AGREEMENT: f32 = 0.5;

/// Longest answer quoted in a disagreement log line, in bytes.
const LOGGED_ANSWER_BYTES: usize = 1_000;

/// Where the active policy comes from.
#[derive(Clone)]
pub enum PolicySource {
    /// A file that reloads (watch, SIGHUP, admin, rollback).
    Store(Arc<PolicyStore>),
    /// A fixed policy: the built-in one when no file is configured, or one given by an embedder.
    Fixed(Arc<Active>),
}

impl PolicySource {
    /// A fixed policy, recorded as version 0.
    pub fn fixed(policy: Policy) -> Self {
        PolicySource::Fixed(Arc::new(Active {
            policy,
            version: 0,
            sha256: String::new(),
        }))
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Active> {
        match self {
            PolicySource::Store(store) => store.current(),
            PolicySource::Fixed(active) => active.clone(),
        }
    }
}

/// A backend built for one policy entry; rebuilt when the entry changes.
struct Built<T: ?Sized> {
    entry: ModelRef,
    backend: Arc<T>,
}

/// Routes, checks, falls back, shadows and reports every model call; see the module docs.
pub struct ModelRouter {
    policy: PolicySource,
    factory: ModelFactory,
    metrics: MetricsHandle,
    text: Mutex<HashMap<Arc<str>, Built<dyn ModelBackend>>>,
    classifiers: Mutex<HashMap<Arc<str>, Built<dyn IntentClassifier>>>,
    shadow_slots: Arc<Semaphore>,
    background: Background,
    warned: Mutex<HashSet<Warned>>,
}

/// A violation already logged: policy version, rule, task, model name.
type Warned = (u64, ViolationRule, TaskType, Arc<str>);

fn failure_of(e: &ModelError) -> Failure {
    match e {
        ModelError::Throttled(_) => Failure::Throttled,
        ModelError::Timeout(_) => Failure::Timeout,
        ModelError::Stream(_) => Failure::Error,
    }
}

fn classify_failure(e: &ClassifyError) -> Failure {
    match e {
        ClassifyError::Model(m) => failure_of(m),
        ClassifyError::Backend(_) => Failure::Error,
    }
}

/// The span of a shadow call: a child of the caller's (the turn's `generate` or `classify`), off
/// its path.
fn shadow_span(task: TaskType, shadow: &ModelRef) -> tracing::Span {
    mangaassist_actors::hop_span!(
        "shadow",
        path_type = mangaassist_actors::turn::ASYNC_BACKGROUND,
        task_type = task.as_str(),
        model_id = &*shadow.id,
    )
}

fn build_error(e: BuildError) -> ModelError {
    ModelError::Stream(e.to_string())
}

/// What a user is told a model is.
pub fn model_info(m: &ModelRef) -> ModelInfo {
    ModelInfo {
        backend: m.backend.as_str().to_owned(),
        model_id: m.id.to_string(),
        simulated: m.backend == Backend::Simulated,
    }
}

fn truncated(s: &str) -> &str {
    if s.len() <= LOGGED_ANSWER_BYTES {
        return s;
    }
    let mut end = LOGGED_ANSWER_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl ModelRouter {
    /// A router over `policy`, building backends with `factory`, reporting to `metrics`, running
    /// at most `shadow_in_flight` shadow calls at once (more are skipped and counted) as jobs of
    /// `background`.
    pub fn new(
        policy: PolicySource,
        factory: ModelFactory,
        metrics: MetricsHandle,
        shadow_in_flight: usize,
        background: Background,
    ) -> Arc<Self> {
        Arc::new(Self {
            policy,
            factory,
            metrics,
            text: Mutex::new(HashMap::new()),
            classifiers: Mutex::new(HashMap::new()),
            shadow_slots: Arc::new(Semaphore::new(shadow_in_flight)),
            background,
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// The policy in force now.
    pub fn active(&self) -> Arc<Active> {
        self.policy.current()
    }

    /// Builds the intent classifiers and answer models the active policy routes to (primary,
    /// canary, fallbacks), so the first turn does not pay for training the local classifier or
    /// loading the AWS configuration. A model that cannot be built is logged; its calls will fall
    /// back.
    pub async fn warm(&self) {
        let active = self.active();
        for task in [TaskType::IntentClassification, TaskType::AnswerSynthesis] {
            let t = active.policy.task(task);
            let mut models: Vec<&ModelRef> = vec![&t.primary];
            models.extend(t.canary.as_ref().map(|c| &c.model));
            models.extend(t.fallback.values().flatten());
            for m in models {
                let built = match task {
                    TaskType::IntentClassification => self.classifier(m).await.map(drop),
                    _ => self.text_model(task, m).await.map(drop),
                };
                if let Err(e) = built {
                    tracing::warn!(task = %task, error = %e, "model cannot be built; its calls will fall back");
                }
            }
        }
    }

    /// Who serves `task` for a session outside every canary: the primary.
    pub fn info(&self, task: TaskType) -> ModelInfo {
        model_info(&self.active().policy.task(task).primary)
    }

    /// Where a call of `task` goes: the canary or the primary, and the shadow.
    fn route(&self, active: &Active, task: TaskType, session: Option<&SessionId>) -> Route {
        match session {
            Some(s) => active.policy.route(task, s.as_str()),
            None => {
                let t = active.policy.task(task);
                Route {
                    model: t.primary.clone(),
                    canary: false,
                    shadow: t.shadow.clone(),
                }
            }
        }
    }

    /// Counts (and, once per policy version, logs) a tier rule `model` breaks on `task`.
    fn check(&self, version: u64, task: TaskType, model: &ModelRef) {
        let Some(v) = Policy::check(task, model) else {
            return;
        };
        self.metrics
            .emit(MetricEvent::PolicyViolation { rule: v.rule });
        let first = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((version, v.rule, task, model.name.clone()));
        if first {
            tracing::warn!(
                rule = v.rule.as_str(),
                task = %task,
                model = %model.name,
                model_id = %model.id,
                policy_version = version,
                "policy violation: model call breaks a tier rule (counted per call in policy_violation_total)"
            );
        }
    }

    /// The next model after `from` failed with `failure`, counted and logged; `None` when the
    /// chain is exhausted.
    fn fall_back(
        &self,
        active: &Active,
        task: TaskType,
        from: &ModelRef,
        failure: Failure,
        error: &dyn std::fmt::Display,
    ) -> Option<ModelRef> {
        let Some(next) = active.policy.next_after(task, from, failure) else {
            tracing::warn!(task = %task, model = %from.name, reason = failure.as_str(), %error, "model call failed; no fallback left");
            return None;
        };
        let label = crate::policy::fallback_label(from, &next);
        tracing::warn!(task = %task, model_id = %label, reason = failure.as_str(), %error, "model fallback");
        self.metrics.emit(MetricEvent::ModelFallback {
            task,
            label: Arc::from(label),
            reason: failure,
        });
        Some(next)
    }

    /// The reporting text backend for `m`, built on first use.
    async fn text_model(
        &self,
        task: TaskType,
        m: &ModelRef,
    ) -> Result<Arc<dyn ModelBackend>, BuildError> {
        if let Some(b) = cached(&self.text, m) {
            return Ok(b);
        }
        let inner = self.factory.model(m, task).await?;
        let backend: Arc<dyn ModelBackend> = Arc::new(Observed::reporting(
            inner,
            task,
            TokenPrice::from(m.price),
            self.metrics.clone(),
        ));
        store(&self.text, m, backend.clone());
        Ok(backend)
    }

    /// The classifier for `m`, built on first use. LLM classifiers report through their model.
    async fn classifier(&self, m: &ModelRef) -> Result<Arc<dyn IntentClassifier>, BuildError> {
        if let Some(b) = cached(&self.classifiers, m) {
            return Ok(b);
        }
        let classifier = if m.backend == Backend::LocalClassifier {
            self.factory.classifier(m).await?
        } else {
            let model = self.text_model(TaskType::IntentClassification, m).await?;
            Arc::new(crate::backends::llm_classifier::LlmClassifier::new(
                model,
                self.factory.limits().classify_deadline,
            ))
        };
        store(&self.classifiers, m, classifier.clone());
        Ok(classifier)
    }

    /// Opens a stream on `model`, following the fallback chain until a model produces its first
    /// event. Returns the stream and that event (`None`: the stream ended without one).
    async fn open(
        &self,
        active: &Active,
        task: TaskType,
        mut model: ModelRef,
        request: ModelRequest,
    ) -> Result<(ModelStream, Option<ModelEvent>), ModelError> {
        let mut request = Some(request);
        loop {
            self.check(active.version, task, &model);
            let attempt = match self.text_model(task, &model).await {
                Ok(backend) => {
                    // Kept for the next model only while the chain has one.
                    let last = Failure::ALL
                        .iter()
                        .all(|f| active.policy.next_after(task, &model, *f).is_none());
                    let this = match (last, request.as_ref()) {
                        (false, Some(r)) => r.clone(),
                        _ => request.take().ok_or_else(|| {
                            ModelError::Stream("no request left to send".to_owned())
                        })?,
                    };
                    let mut stream = backend.stream(this);
                    match stream.next().await {
                        Some(Ok(first)) => return Ok((stream, Some(first))),
                        // Ended without a word: an empty answer, not a failure.
                        None => return Ok((stream, None)),
                        Some(Err(e)) => e,
                    }
                }
                Err(e) => build_error(e),
            };
            match self.fall_back(active, task, &model, failure_of(&attempt), &attempt) {
                Some(next) => model = next,
                None => return Err(attempt),
            }
        }
    }

    /// Runs the shadow of a text call: the whole answer, then the comparison with the primary's.
    fn shadow_text(
        self: &Arc<Self>,
        task: TaskType,
        shadow: ModelRef,
        request: ModelRequest,
    ) -> Option<oneshot::Sender<String>> {
        let Ok(permit) = self.shadow_slots.clone().try_acquire_owned() else {
            self.shadow_verdict(task, &shadow, ShadowVerdict::Skipped);
            return None;
        };
        let (primary_tx, primary_rx) = oneshot::channel::<String>();
        let router = self.clone();
        let span = shadow_span(task, &shadow);
        let job = tracing::Instrument::instrument(
            async move {
                let _permit = permit;
                let answer = async {
                    let backend = router
                        .text_model(task, &shadow)
                        .await
                        .map_err(build_error)?;
                    let mut stream = backend.stream(request);
                    let mut text = String::new();
                    while let Some(event) = stream.next().await {
                        if let ModelEvent::Token(t) = event? {
                            text.push_str(&t);
                        }
                    }
                    Ok::<_, ModelError>(text)
                };
                let (answer, primary) = tokio::join!(answer, primary_rx);
                let verdict = match (&answer, &primary) {
                    (Err(e), _) => {
                        tracing::debug!(task = %task, shadow = %shadow.name, error = %e, "shadow call failed");
                        ShadowVerdict::ShadowFailed
                    }
                    (_, Err(_)) => ShadowVerdict::PrimaryIncomplete,
                    (Ok(shadow_answer), Ok(primary_answer)) => {
                        let ratio = similar::TextDiff::from_words(
                            primary_answer.as_str(),
                            shadow_answer.as_str(),
                        )
                        .ratio();
                        if ratio >= ANSWER_AGREEMENT {
                            ShadowVerdict::Agree
                        } else {
                            tracing::info!(
                                task = %task,
                                shadow = %shadow.name,
                                similarity = ratio,
                                primary = truncated(primary_answer),
                                shadow_answer = truncated(shadow_answer),
                                "shadow disagrees"
                            );
                            ShadowVerdict::Disagree
                        }
                    }
                };
                router.shadow_verdict(task, &shadow, verdict);
            },
            span,
        );
        // A shed job never runs: the primary's answer has nowhere to go.
        self.background
            .spawn(BackgroundJob::Shadow, job)
            .map(|_| primary_tx)
    }

    fn shadow_verdict(&self, task: TaskType, shadow: &ModelRef, verdict: ShadowVerdict) {
        self.metrics.emit(MetricEvent::ShadowCompared {
            task,
            model: shadow.name.clone(),
            verdict,
        });
    }

    /// One text call of `task`: see the module docs.
    pub fn stream(self: &Arc<Self>, task: TaskType, request: ModelRequest) -> ModelStream {
        let router = self.clone();
        let opened = async move {
            let active = router.active();
            let route = router.route(&active, task, request.session.as_ref());
            // The caller's span (a turn's `generate`) names the model the call went to.
            tracing::Span::current().record("model_id", &*route.model.id);
            let shadow = route
                .shadow
                .and_then(|s| router.shadow_text(task, s, request.clone()));
            let (stream, first) = router.open(&active, task, route.model, request).await?;
            Ok::<_, ModelError>(Routed {
                ended: first.is_none(),
                pending: first,
                stream,
                shadow: shadow.map(|tx| (tx, String::new())),
            })
        };
        Box::pin(RoutedStream(State::Opening(Box::pin(opened))))
    }

    /// Whether a call of `task` for `session` would go to an in-process model that cannot do
    /// the task's work: a local classifier, or the simulated model (a stand-in for answers, it
    /// cannot read or summarize). The caller's local implementation serves then.
    pub fn serves_locally(&self, task: TaskType, session: Option<&SessionId>) -> bool {
        let active = self.active();
        matches!(
            self.route(&active, task, session).model.backend,
            Backend::LocalClassifier | Backend::Simulated
        )
    }

    /// The prompt budget of the model a call of `task` for `session` would go to now: its
    /// context window less the tokens kept for the answer; `None` when the policy does not give
    /// the window.
    pub fn input_token_limit(&self, task: TaskType, session: Option<&SessionId>) -> Option<u32> {
        let active = self.active();
        let route = self.route(&active, task, session);
        route
            .model
            .context_tokens
            .map(|c| c.saturating_sub(crate::policy::OUTPUT_RESERVE_TOKENS))
    }

    /// The exact prompt tokens of `request` on the model a call of `task` would go to now
    /// (the primary, or the canary for the request's session); `None` when that model's provider
    /// cannot count.
    pub async fn count_tokens(
        &self,
        task: TaskType,
        request: &ModelRequest,
    ) -> Result<Option<u32>, ModelError> {
        let active = self.active();
        let route = self.route(&active, task, request.session.as_ref());
        match self.text_model(task, &route.model).await {
            Ok(backend) => backend.count_tokens(request).await,
            Err(e) => Err(build_error(e)),
        }
    }

    /// One classification: see the module docs.
    async fn classify(
        self: &Arc<Self>,
        session: Option<&SessionId>,
        text: &str,
    ) -> Result<Classification, ClassifyError> {
        let task = TaskType::IntentClassification;
        let active = self.active();
        let route = self.route(&active, task, session);
        let mut model = route.model;
        tracing::Span::current().record("model_id", &*model.id);
        let result = loop {
            self.check(active.version, task, &model);
            let attempt = match self.classifier(&model).await {
                Ok(c) => {
                    let started = Instant::now();
                    let verdict = c.classify(text).await;
                    if model.backend == Backend::LocalClassifier {
                        self.report_local(&model, started, verdict.is_ok());
                    }
                    verdict
                }
                Err(e) => Err(ClassifyError::Backend(e.to_string())),
            };
            match attempt {
                Ok(c) => break Ok(c),
                Err(e) => match self.fall_back(&active, task, &model, classify_failure(&e), &e) {
                    Some(next) => model = next,
                    None => break Err(e),
                },
            }
        };
        if let (Some(shadow), Ok(primary)) = (route.shadow, &result) {
            self.shadow_classify(shadow, text, primary.intent);
        }
        result
    }

    /// A local classifier's call, reported like a model's (free, no tokens).
    fn report_local(&self, model: &ModelRef, started: Instant, ok: bool) {
        self.metrics.emit(MetricEvent::ModelInvocation {
            task: TaskType::IntentClassification,
            model_id: model.id.clone(),
            outcome: if ok {
                ModelOutcome::Ok
            } else {
                ModelOutcome::Error
            },
            latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            input_tokens: 0,
            output_tokens: 0,
            cost_nano_usd: 0,
        });
    }

    /// Classifies `text` with the shadow in a task of its own and compares the labels.
    fn shadow_classify(
        self: &Arc<Self>,
        shadow: ModelRef,
        text: &str,
        primary: mangaassist_protocols::turn::Intent,
    ) {
        let task = TaskType::IntentClassification;
        let Ok(permit) = self.shadow_slots.clone().try_acquire_owned() else {
            self.shadow_verdict(task, &shadow, ShadowVerdict::Skipped);
            return;
        };
        let router = self.clone();
        let text = text.to_owned();
        let span = shadow_span(task, &shadow);
        let job = tracing::Instrument::instrument(
            async move {
                let _permit = permit;
                let answer = match router.classifier(&shadow).await {
                    Ok(c) => {
                        let started = Instant::now();
                        let answer = c.classify(&text).await;
                        if shadow.backend == Backend::LocalClassifier {
                            router.report_local(&shadow, started, answer.is_ok());
                        }
                        answer
                    }
                    Err(e) => Err(ClassifyError::Backend(e.to_string())),
                };
                let verdict = match answer {
                    Err(_) => ShadowVerdict::ShadowFailed,
                    Ok(c) if c.intent == primary => ShadowVerdict::Agree,
                    Ok(c) => {
                        tracing::info!(
                            task = %task,
                            shadow = %shadow.name,
                            text = truncated(&text),
                            primary = primary.as_str(),
                            shadow_answer = c.intent.as_str(),
                            "shadow disagrees"
                        );
                        ShadowVerdict::Disagree
                    }
                };
                router.shadow_verdict(task, &shadow, verdict);
            },
            span,
        );
        self.background.spawn(BackgroundJob::Shadow, job);
    }
}

fn cached<T: ?Sized>(map: &Mutex<HashMap<Arc<str>, Built<T>>>, m: &ModelRef) -> Option<Arc<T>> {
    let map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.get(&m.name)
        .filter(|b| b.entry == *m)
        .map(|b| b.backend.clone())
}

fn store<T: ?Sized>(map: &Mutex<HashMap<Arc<str>, Built<T>>>, m: &ModelRef, backend: Arc<T>) {
    map.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            m.name.clone(),
            Built {
                entry: m.clone(),
                backend,
            },
        );
}

type Opening = Pin<Box<dyn Future<Output = Result<Routed, ModelError>> + Send>>;

/// A stream past its first event.
struct Routed {
    stream: ModelStream,
    /// The first event, read while deciding on fallbacks; yielded first.
    pending: Option<ModelEvent>,
    /// The stream ended before its first event.
    ended: bool,
    /// The shadow waiting for the primary's answer, and that answer so far.
    shadow: Option<(oneshot::Sender<String>, String)>,
}

enum State {
    Opening(Opening),
    Streaming(Routed),
    Done,
}

/// A routed call as a stream: the opening (route, fallbacks) as a future, then the model's own
/// stream polled directly, so a token costs one extra branch.
struct RoutedStream(State);

impl Stream for RoutedStream {
    type Item = Result<ModelEvent, ModelError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let state = &mut self.get_mut().0;
        loop {
            match state {
                State::Done => return Poll::Ready(None),
                State::Opening(open) => match ready!(open.as_mut().poll(cx)) {
                    Ok(routed) => *state = State::Streaming(routed),
                    Err(e) => {
                        *state = State::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                State::Streaming(routed) => {
                    let event = match routed.pending.take() {
                        Some(first) => Some(Ok(first)),
                        None if routed.ended => None,
                        None => ready!(routed.stream.as_mut().poll_next(cx)),
                    };
                    match event {
                        Some(Ok(event)) => {
                            if let (Some((_, text)), ModelEvent::Token(t)) =
                                (&mut routed.shadow, &event)
                            {
                                text.push_str(t);
                            }
                            return Poll::Ready(Some(Ok(event)));
                        }
                        Some(Err(e)) => {
                            *state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                        None => {
                            if let Some((tx, text)) = routed.shadow.take() {
                                let _ = tx.send(text);
                            }
                            *state = State::Done;
                            return Poll::Ready(None);
                        }
                    }
                }
            }
        }
    }
}

/// The [`ModelBackend`] of one text task: every stream goes through the router.
pub struct RoutedModel {
    /// The router.
    pub router: Arc<ModelRouter>,
    /// The task its calls are for.
    pub task: TaskType,
}

impl ModelBackend for RoutedModel {
    fn info(&self) -> ModelInfo {
        self.router.info(self.task)
    }

    fn count_tokens<'a>(&'a self, request: &'a ModelRequest) -> TokenCount<'a> {
        Box::pin(self.router.count_tokens(self.task, request))
    }

    fn input_token_limit(&self, session: Option<&SessionId>) -> Option<u32> {
        self.router.input_token_limit(self.task, session)
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        self.router.stream(self.task, request)
    }
}

/// The [`IntentClassifier`] of the pipeline: every classification goes through the router.
pub struct RoutedClassifier(pub Arc<ModelRouter>);

#[async_trait]
impl IntentClassifier for RoutedClassifier {
    async fn classify(&self, text: &str) -> Result<Classification, ClassifyError> {
        self.0.classify(None, text).await
    }

    async fn classify_in(
        &self,
        session: &SessionId,
        text: &str,
    ) -> Result<Classification, ClassifyError> {
        self.0.classify(Some(session), text).await
    }
}
