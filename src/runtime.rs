//! The runtime: loads the model-tier policy, builds the backends, starts the supervision tree,
//! binds the fronts.
//!
//! ```text
//! workers supervisor (permanent children, restart intensity 50 / 10 s)
//!   ├─ metrics-sink      (first, so every other start can be counted)
//!   ├─ classifier ─ retriever ─ enricher ─ generator
//!        └───────── both through one ModelRouter (the model-tier policy) ─────┘
//! sessions supervisor (transient children: one session actor per connection)
//!   └─ session ─┬─ chunk-forwarder (temporary, one per stream)
//! fronts: HTTP (/ws, /metrics, /healthz, /readyz) and TCP, connection tasks owned by a TaskTracker
//! ```
//!
//! [`Runtime::start`] binds the listeners (`/healthz` answers from then on), then warms up: one
//! dry run through the classifier, the catalog search, the enrichment source and (when simulated)
//! the answer model's stream, so the index's
//! files, the connection pools and the caches have served a request. Then `/readyz` answers 200
//! and `warm_capacity_ready` is 1, and `start` returns. [`Runtime::shutdown`] stops accepting,
//! lets streaming turns finish within `server.shutdown_grace_ms`, closes connections with
//! `server_shutdown`, then stops sessions and workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::serve::ListenerExt as _;
use mangaassist_actors::background::Background;
use mangaassist_actors::chaos::Chaos;
use mangaassist_actors::classifier::{ClassifierActor, Classify};
use mangaassist_actors::enricher::{Enrich, EnricherActor};
use mangaassist_actors::generator::{Generate, GeneratorActor};
use mangaassist_actors::metrics_sink::{MetricsHandle, MetricsSink, MetricsSinkArgs};
use mangaassist_actors::retriever::{RetrieverActor, Search};
use mangaassist_actors::session::SessionRegistry;
use mangaassist_actors::supervisor::{
    ChildSpec, Restart, RestartIntensity, Supervisor, SupervisorArgs, SupervisorMsg, WorkerSlot,
};
use mangaassist_actors::turn::Pipeline;
use mangaassist_actors::worker::WorkerArgs;
use mangaassist_protocols::catalog::{Series, parse_jsonl};
use mangaassist_protocols::frame::ModelInfo;
use mangaassist_protocols::metrics::{ActorKind, TaskType};
use mangaassist_protocols::ports::{EnrichmentSource, ProfileStore, Retriever, TranscriptStore};
use ractor::{Actor, ActorRef};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backends::cache::TwoTierCache;
use crate::backends::catalog::load_catalog;
use crate::backends::chaos::{ChaosEnrichment, ChaosRetriever};
use crate::backends::embedded_enrichment::{EmbeddedEnrichment, WithCatalogNames};
use crate::backends::embedded_store::EmbeddedTranscriptStore;
use crate::backends::http_catalog::HttpCatalog;
use crate::backends::models::ModelFactory;
use crate::backends::opensearch::OpenSearchRetriever;
use crate::backends::redis_store::{RedisStoreSettings, RedisTranscriptStore};
use crate::config::{
    Config, EnrichmentSourceConfig, RetrievalBackendConfig, TranscriptStoreConfig,
};
use crate::front::{FrontLimits, FrontState, http, tcp};
use crate::ingest::tantivy_store::{DEFAULT_ALIAS_POLL, LiveRetriever};
use crate::policy::router::{ModelRouter, PolicySource, RoutedClassifier, RoutedModel};

/// The catalog shipped in `data/catalog.jsonl`, built into the binary so `serve` runs anywhere.
pub const BUILTIN_CATALOG: &str = include_str!("../data/catalog.jsonl");

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The catalog could not be read or parsed.
    #[error("catalog: {0}")]
    Catalog(String),
    /// The search index could not be opened or built.
    #[error("search index under {dir}: {message}")]
    Index {
        /// Index root.
        dir: PathBuf,
        /// What failed.
        message: String,
    },
    /// The transcript database could not be opened.
    #[error("transcript store {path}: {message}")]
    Store {
        /// Database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// The retrieval backend could not be set up.
    #[error("retrieval: {0}")]
    Retrieval(String),
    /// The EMF output file could not be opened.
    #[error("metrics.emf_output {path}: {source}")]
    Emf {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The token signing secret could not be set up.
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::SetupError),
    /// The enrichment source or its cache could not be set up.
    #[error("enrichment: {0}")]
    Enrichment(String),
    /// The model-tier policy file is invalid or its audit log unusable.
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// An actor could not be spawned.
    #[error("actor system: {0}")]
    Actors(String),
}

/// A running runtime.
pub struct Runtime {
    /// Where the HTTP listener is bound (useful with port 0).
    pub http_addr: SocketAddr,
    /// Where the TCP listener is bound.
    pub tcp_addr: SocketAddr,
    /// Mailbox chaos, for tests and (later) the admin routes.
    pub chaos: Arc<Chaos>,
    /// The shared pipeline.
    pub pipeline: Pipeline,
    /// Sessions open now.
    pub registry: Arc<SessionRegistry>,
    /// Who answered when the runtime started (the policy's answer-synthesis primary; a reload
    /// may change it: [`Runtime::router`] knows the current one).
    pub model: ModelInfo,
    /// Every model call goes through it.
    pub router: Arc<ModelRouter>,
    /// Checks the token of every `hello`, and mints them (tests, the start banner).
    pub auth: Arc<crate::auth::Authenticator>,
    workers: ActorRef<SupervisorMsg>,
    sessions: ActorRef<SupervisorMsg>,
    cache: Arc<TwoTierCache>,
    /// `/readyz`: false again once shutdown begins.
    ready: Arc<AtomicBool>,
    /// Cancelled when shutdown begins (see [`FrontState::draining`]).
    draining: CancellationToken,
    /// Cancelled at the drain deadline, and for everything else that stops with the runtime.
    shutdown: CancellationToken,
    /// Listeners and watchers.
    tasks: TaskTracker,
    /// One task per connection.
    connections: TaskTracker,
    /// `server.shutdown_grace_ms`.
    drain_grace: Duration,
    background_grace: Duration,
}

fn actors_err(e: impl std::fmt::Display) -> StartError {
    StartError::Actors(e.to_string())
}

impl Runtime {
    /// Builds everything from `config` and starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let catalog: Vec<Series> = match &config.catalog {
            Some(path) => load_catalog(path).map_err(|e| StartError::Catalog(e.to_string()))?,
            None => parse_jsonl(BUILTIN_CATALOG).map_err(|e| StartError::Catalog(e.to_string()))?,
        };
        let catalog = Arc::new(catalog);
        let auth = Arc::new(crate::auth::Authenticator::resolve(
            config.auth_secret.as_ref(),
            &config.data_dir,
        )?);
        // The policy is checked before anything binds: an invalid one stops the start.
        let settings = &config.policy;
        let policy_file = settings.file.clone().or_else(|| {
            let default = PathBuf::from(crate::config::DEFAULT_POLICY_FILE);
            default.exists().then_some(default)
        });
        let policy = match policy_file {
            Some(file) => {
                let dir = settings.audit_dir.clone();
                let store = tokio::task::spawn_blocking(move || {
                    crate::policy::PolicyStore::open(file, dir.as_deref())
                })
                .await
                .map_err(actors_err)??;
                Some(Arc::new(store))
            }
            None => {
                tracing::info!(
                    "no policy file: running the built-in policy (every model in-process)"
                );
                None
            }
        };
        let policy_source = match &policy {
            Some(store) => PolicySource::Store(store.clone()),
            None => PolicySource::fixed(crate::policy::builtin()?),
        };

        // Backends. The embedded index's live version is opened (built as v1 on a fresh data dir)
        // before readiness; `mangaassist ingest` swaps versions behind the alias
        // (docs/ingest.md). OpenSearch is read through its alias; nothing is asked of it here,
        // so an unreachable cluster makes turns fall back rather than the start fail.
        let index_root = config.data_dir.join("index");
        let (retriever, live): (Arc<dyn Retriever>, Option<LiveRetriever>) =
            match &config.retrieval_backend {
                RetrievalBackendConfig::Tantivy => {
                    let catalog = catalog.clone();
                    let root = index_root.clone();
                    let live =
                        tokio::task::spawn_blocking(move || LiveRetriever::open(&root, &catalog))
                            .await
                            .map_err(actors_err)?
                            .map_err(|e| StartError::Index {
                                dir: index_root.clone(),
                                message: e.to_string(),
                            })?;
                    (Arc::new(live.clone()), Some(live))
                }
                RetrievalBackendConfig::OpenSearch(settings) => (
                    Arc::new(
                        OpenSearchRetriever::new(settings.clone())
                            .map_err(|e| StartError::Retrieval(e.to_string()))?,
                    ),
                    None,
                ),
            };
        // One store object serves transcripts and profiles (erased and expired together).
        let (transcripts, profiles): (Arc<dyn TranscriptStore>, Arc<dyn ProfileStore>) =
            match &config.transcript_store {
                TranscriptStoreConfig::Embedded => {
                    let store_path = config.data_dir.join("transcripts.redb");
                    let store = Arc::new(
                        EmbeddedTranscriptStore::open_with_linger(
                            &store_path,
                            config.transcript_commit_linger,
                        )
                        .map_err(|e| StartError::Store {
                            path: store_path.clone(),
                            message: e.to_string(),
                        })?,
                    );
                    (store.clone(), store)
                }
                TranscriptStoreConfig::Redis {
                    url,
                    key_prefix,
                    timeout,
                } => {
                    let store = Arc::new(
                        RedisTranscriptStore::connect(RedisStoreSettings {
                            url: url.clone(),
                            key_prefix: key_prefix.clone(),
                            timeout: *timeout,
                            ttl: config.inactivity_ttl,
                        })
                        .await
                        .map_err(|e| StartError::Store {
                            path: url.into(),
                            message: e.to_string(),
                        })?,
                    );
                    (store.clone(), store)
                }
            };
        let embedded = EmbeddedEnrichment::new(&catalog, config.enrichment_latency);
        let source: Arc<dyn EnrichmentSource> = match &config.enrichment_source {
            EnrichmentSourceConfig::Embedded => Arc::new(embedded),
            EnrichmentSourceConfig::Http(http) => Arc::new(WithCatalogNames {
                names: embedded,
                inner: Arc::new(
                    HttpCatalog::new(http.clone())
                        .map_err(|e| StartError::Enrichment(e.to_string()))?,
                ),
            }),
        };

        // Workers, under one supervisor with an explicit restart policy.
        let chaos = Chaos::new();
        if !config.chaos.is_empty() {
            chaos.set(config.chaos.clone());
        }
        let metrics_slot = WorkerSlot::empty();
        let metrics = MetricsHandle::new(metrics_slot.clone(), config.metrics_queue);
        // The one owner of the work beside the turns: shadow calls, deferrable lookups, model
        // refinements. Bounded; it sheds rather than queues.
        let background = Background::new(config.background_max_in_flight, metrics.clone());
        // Every model call goes through the policy: routing, canary, fallback, shadow, reports.
        let router = ModelRouter::new(
            policy_source,
            ModelFactory::new(config.model, settings.limits),
            metrics.clone(),
            settings.shadow_in_flight,
            background.clone(),
        );
        router.warm().await;
        let model_info = router.info(TaskType::AnswerSynthesis);
        // Enricher -> cache (memory, then Redis) -> source chaos -> the source: injected source
        // latency is what a cache miss pays, as a slow real dependency would be.
        let cache = Arc::new(
            TwoTierCache::start(
                Arc::new(ChaosEnrichment {
                    inner: source,
                    chaos: chaos.clone(),
                }),
                config.cache.clone(),
                metrics.clone(),
            )
            .await
            .map_err(|e| StartError::Enrichment(e.to_string()))?,
        );
        let classifier_slot = WorkerSlot::empty();
        let retriever_slot = WorkerSlot::empty();
        let enricher_slot = WorkerSlot::empty();
        let generator_slot = WorkerSlot::empty();
        // The answer model as the policy routes it: the generator streams from it, turns ask it
        // for exact token counts.
        let answer_model: Arc<dyn mangaassist_protocols::ports::ModelBackend> =
            Arc::new(RoutedModel {
                router: router.clone(),
                task: TaskType::AnswerSynthesis,
            });
        let emf = match &config.emf {
            None => None,
            Some(s) => Some(mangaassist_actors::emf::EmfOutput {
                identity: mangaassist_actors::emf::EmfIdentity {
                    service_name: config.tracing.service_name.clone(),
                    environment: s.environment.clone(),
                },
                interval: s.interval,
                lines: crate::telemetry::spawn_emf_writer(s.file.as_deref()).map_err(|source| {
                    StartError::Emf {
                        path: s.file.clone().unwrap_or_else(|| PathBuf::from("stdout")),
                        source,
                    }
                })?,
            }),
        };
        let children = vec![
            ChildSpec::new(
                ActorKind::MetricsSink,
                Restart::Permanent,
                || MetricsSink,
                MetricsSinkArgs {
                    handle: metrics.clone(),
                    chaos: chaos.clone(),
                    low_hits: config.low_hits,
                    emf,
                },
                metrics_slot,
            ),
            ChildSpec::new(
                ActorKind::Classifier,
                Restart::Permanent,
                ClassifierActor::default,
                WorkerArgs {
                    service: Arc::new(Classify(Arc::new(RoutedClassifier(router.clone())))),
                    chaos: chaos.clone(),
                },
                classifier_slot.clone(),
            ),
            ChildSpec::new(
                ActorKind::Retriever,
                Restart::Permanent,
                RetrieverActor::default,
                WorkerArgs {
                    service: Arc::new(Search(Arc::new(ChaosRetriever {
                        inner: retriever,
                        chaos: chaos.clone(),
                    }))),
                    chaos: chaos.clone(),
                },
                retriever_slot.clone(),
            ),
            ChildSpec::new(
                ActorKind::Enricher,
                Restart::Permanent,
                EnricherActor::default,
                WorkerArgs {
                    service: Arc::new(Enrich(cache.clone())),
                    chaos: chaos.clone(),
                },
                enricher_slot.clone(),
            ),
            ChildSpec::new(
                ActorKind::Generator,
                Restart::Permanent,
                GeneratorActor::default,
                WorkerArgs {
                    service: Arc::new(Generate(answer_model.clone())),
                    chaos: chaos.clone(),
                },
                generator_slot.clone(),
            ),
        ];
        let (workers, _) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                name: "workers",
                children,
                intensity: RestartIntensity::default(),
                metrics: Some(metrics.clone()),
            },
        )
        .await
        .map_err(actors_err)?;
        let (sessions, _) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                name: "sessions",
                children: Vec::new(),
                intensity: RestartIntensity {
                    max_restarts: 1_000,
                    within: Duration::from_secs(10),
                },
                metrics: Some(metrics.clone()),
            },
        )
        .await
        .map_err(actors_err)?;

        let pipeline = Pipeline {
            trace_context: Arc::new(crate::telemetry::OtelTraceContext),
            classifier: classifier_slot,
            retriever: retriever_slot,
            enricher: enricher_slot,
            generator: generator_slot,
            metrics,
            transcripts,
            profiles,
            erasures: Arc::default(),
            preference_model: Arc::new(crate::backends::llm_preferences::RoutedPreferences(
                router.clone(),
            )),
            summary_model: Arc::new(crate::backends::llm_summarizer::RoutedSummarizer(
                router.clone(),
            )),
            token_counter: answer_model,
            chaos: chaos.clone(),
            background: background.clone(),
            replays: mangaassist_actors::replay::Retention::new(),
            settings: Arc::new(config.turn.clone()),
        };

        // Fronts.
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let http_listener = bind(config.listen).await?;
        let tcp_listener = bind(config.tcp_listen).await?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let tcp_addr = tcp_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.tcp_listen,
                source,
            })?;

        let shutdown = CancellationToken::new();
        let draining = CancellationToken::new();
        let tasks = TaskTracker::new();
        let connections = TaskTracker::new();
        if let Some(live) = &live {
            live.watch(DEFAULT_ALIAS_POLL, shutdown.clone(), &tasks);
        }
        if let Some(store) = &policy {
            crate::policy::store::watch(
                store.clone(),
                settings.debounce,
                shutdown.clone(),
                &tasks,
            )?;
            #[cfg(unix)]
            crate::policy::store::sighup(store.clone(), shutdown.clone(), &tasks)?;
        }
        expire_inactive(
            pipeline.transcripts.clone(),
            config.inactivity_ttl,
            shutdown.clone(),
            &tasks,
        );
        let replays = pipeline.replays.clone();
        every(REPLAY_SWEEP, shutdown.clone(), &tasks, move || {
            replays.sweep(tokio::time::Instant::now());
            std::future::ready(())
        });
        let registry = SessionRegistry::with_limits(config.session_limits);
        let ready = Arc::new(AtomicBool::new(false));
        let front = FrontState {
            pipeline: pipeline.clone(),
            sessions: sessions.clone(),
            registry: registry.clone(),
            limits: FrontLimits {
                max_frame_bytes: config.max_frame_bytes,
                outbound_queue: config.outbound_queue,
                slow_client_timeout: config.slow_client_timeout,
                idle_timeout: config.idle_timeout,
                max_messages_per_sec: config.max_messages_per_sec,
                max_turn_chars: config.max_turn_chars,
            },
            router: router.clone(),
            ready: ready.clone(),
            draining: draining.clone(),
            shutdown: shutdown.clone(),
            tasks: connections.clone(),
            policy: policy.clone(),
            data_dir: config.data_dir.clone(),
            auth: auth.clone(),
        };
        let app = http::router(front.clone());
        let stop = draining.clone();
        tasks.spawn(async move {
            // Token frames are small and latency-bound: no Nagle delay on any connection.
            let listener = http_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "http listener failed");
            }
        });
        tasks.spawn(tcp::serve(tcp_listener, front));

        // `/healthz` answers from here on; `/readyz` once the warm-up has been through the
        // pipeline.
        warm_up(&pipeline, &router).await;
        ready.store(true, Ordering::Release);
        tracing::info!(%http_addr, %tcp_addr, model = %model_info.model_id, simulated = model_info.simulated, series = catalog.len(), "ready");
        Ok(Self {
            http_addr,
            tcp_addr,
            chaos,
            pipeline,
            registry,
            model: model_info,
            router,
            auth,
            workers,
            sessions,
            cache,
            ready,
            draining,
            shutdown,
            tasks,
            connections,
            drain_grace: config.shutdown_grace,
            background_grace: config.background_grace,
        })
    }

    /// A token cancelled when shutdown begins.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, closes every connection with `server_shutdown`, stops the actors.
    pub async fn shutdown(self) {
        // Drain: not ready, no new connections; each connection closes with `server_shutdown`
        // once its streaming turn has written its last frame (at once when it has none).
        self.ready.store(false, Ordering::Release);
        self.draining.cancel();
        self.connections.close();
        let streaming = self.registry.len();
        if streaming > 0 {
            tracing::info!(
                sessions = streaming,
                grace_ms = self.drain_grace.as_millis() as u64,
                "draining: open sessions close as their turns end"
            );
        }
        if tokio::time::timeout(self.drain_grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = self.drain_grace.as_millis() as u64,
                "turns still streaming at the drain deadline (server.shutdown_grace_ms): ending them with server_shutdown"
            );
        }
        self.shutdown.cancel();
        self.tasks.close();
        let closed = async {
            self.connections.wait().await;
            self.tasks.wait().await;
        };
        if tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .is_err()
        {
            tracing::warn!("connections did not close within 10 s");
        }
        // Sessions first (they use the workers), then the background jobs (some ask the
        // workers), then the workers.
        let stop = |sup: ActorRef<SupervisorMsg>| async move {
            let _ = sup
                .call(SupervisorMsg::Shutdown, Some(Duration::from_secs(10)))
                .await;
            let _ = sup.stop_and_wait(None, Some(Duration::from_secs(5))).await;
        };
        stop(self.sessions).await;
        let cut = self
            .pipeline
            .background
            .shutdown(self.background_grace)
            .await;
        if cut > 0 {
            tracing::warn!(
                jobs = cut,
                grace_ms = self.background_grace.as_millis() as u64,
                "background jobs cut at shutdown"
            );
        }
        stop(self.workers).await;
        self.cache.shutdown().await;
    }
}

/// How often ended turns' replay buffers past their resume window are let go.
const REPLAY_SWEEP: Duration = Duration::from_secs(1);

/// How often idle sessions are looked for (and once at start).
const EXPIRY_SWEEP: Duration = Duration::from_secs(3600);

/// Runs `job` at once and then every `period`, until `shutdown`, on `tasks`.
fn every<F, Fut>(period: Duration, shutdown: CancellationToken, tasks: &TaskTracker, mut job: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            job().await;
        }
    });
}

/// Deletes sessions idle past `ttl` at start and then every [`EXPIRY_SWEEP`], until `shutdown`.
fn expire_inactive(
    transcripts: Arc<dyn TranscriptStore>,
    ttl: Duration,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    every(EXPIRY_SWEEP, shutdown, tasks, move || {
        let transcripts = transcripts.clone();
        async move {
            match transcripts.expire_inactive(ttl).await {
                Ok(e) if e.sessions > 0 => tracing::info!(
                    sessions = e.sessions,
                    turns = e.turns,
                    ttl_days = ttl.as_secs() / 86_400,
                    "expired idle sessions"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "idle-session expiry failed"),
            }
        }
    });
}

/// Query of the warm-up's dry run.
const WARM_UP_QUERY: &str = "frieren";

/// Longest the warm-up waits for each stage before going on without it.
const WARM_UP_STAGE: Duration = Duration::from_secs(10);

/// One dry run through the pipeline before the runtime calls itself ready: the classifier (when
/// the policy serves it locally: the warm-up never pays for a model call), a catalog search
/// (the index's files and the OpenSearch pool), an enrichment lookup of what it found (the
/// source and the Redis pool), and the first token of a simulated answer stream. A stage that fails or is slow is logged and the warm-up goes on:
/// the service answers without it, as a turn would.
async fn warm_up(pipeline: &Pipeline, router: &ModelRouter) {
    use mangaassist_actors::classifier::ClassifierMsg;
    use mangaassist_actors::enricher::EnricherMsg;
    use mangaassist_actors::retriever::RetrieverMsg;
    use mangaassist_protocols::metrics::TaskType;
    use mangaassist_protocols::turn::FieldSet;
    let started = std::time::Instant::now();
    let session = mangaassist_protocols::SessionId::new_random();
    if router.serves_locally(TaskType::IntentClassification, Some(&session)) {
        let classified = pipeline
            .classifier
            .call(WARM_UP_STAGE, |reply| ClassifierMsg::Classify {
                session,
                text: Arc::from(WARM_UP_QUERY),
                reply,
                span: tracing::Span::none(),
            })
            .await;
        if !matches!(classified, Ok(Ok(_))) {
            tracing::warn!("warm-up: the classifier did not answer");
        }
    }
    let found = pipeline
        .retriever
        .call(WARM_UP_STAGE, |reply| RetrieverMsg::Search {
            query: Arc::from(WARM_UP_QUERY),
            limit: 5,
            reply,
        })
        .await;
    let series_ids: Vec<String> = match found {
        Ok(Ok(docs)) => docs.into_iter().map(|d| d.series_id).collect(),
        _ => {
            tracing::warn!("warm-up: the catalog search did not answer; serving without it");
            Vec::new()
        }
    };
    if !series_ids.is_empty() {
        let looked_up = pipeline
            .enricher
            .call(WARM_UP_STAGE, |reply| EnricherMsg::Lookup {
                series_ids,
                fields: FieldSet::ALL,
                reply,
                span: tracing::Span::current(),
                path_type: mangaassist_actors::turn::CRITICAL_SYNC,
            })
            .await;
        if !matches!(looked_up, Ok(Ok(_))) {
            tracing::warn!("warm-up: the enrichment lookup did not answer");
        }
    }
    // The generator, when the answer model is the simulated one (never a paid call): one
    // stream opened, its first token read, then cancelled.
    if router.serves_locally(TaskType::AnswerSynthesis, None) {
        use mangaassist_actors::generator::GeneratorMsg;
        use mangaassist_protocols::turn::{ChatMessage, Intent, ModelRequest, Role, StreamEvent};
        let (events, mut rx) = tokio::sync::mpsc::channel(16);
        let cancel = tokio_util::sync::CancellationToken::new();
        let request = ModelRequest {
            intent: Intent::Other,
            system: String::new(),
            messages: vec![ChatMessage {
                role: Role::User,
                content: WARM_UP_QUERY.to_owned(),
            }],
            context: Vec::new(),
            constraints: Vec::new(),
            estimated_input_tokens: 3,
            session: None,
        };
        let opened = pipeline
            .generator
            .call(WARM_UP_STAGE, |reply| GeneratorMsg::Open {
                request,
                events,
                cancel: cancel.clone(),
                reply,
                span: tracing::Span::none(),
            })
            .await;
        let streamed = opened.is_ok()
            && tokio::time::timeout(WARM_UP_STAGE, rx.recv())
                .await
                .ok()
                .flatten()
                .is_some_and(|event| matches!(event, StreamEvent::Token(_)));
        cancel.cancel();
        if !streamed {
            tracing::warn!("warm-up: the simulated model did not stream");
        }
    }
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "warm: classifier, index, enrichment and the simulated stream have served one request"
    );
}
