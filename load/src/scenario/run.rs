//! The `run` scenario: N concurrent sessions, each sending M turns in sequence.
//!
//! Sessions open on a ramp spread over [`RunConfig::ramp`], each on its own connection; a session
//! sends turn `t<n>` with a built-in query ([`crate::queries`]), waits for its `done` or `error`,
//! thinks for [`RunConfig::think`] and goes on. The run ends when every session has sent its turns
//! or when [`RunConfig::max`] elapses, whichever is first; at the deadline in-flight turns are
//! abandoned (counted as cut, not as failures; the gaps they showed still count, as for turns
//! abandoned by [`RunConfig::turn_timeout`]) and what was measured is reported. The server's RSS
//! is read before the first connection, sampled each second, and read again after the last close.

use std::sync::Arc;
use std::time::Duration;

use mangaassist_protocols::TurnId;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ProgressTask, RssReading, ramp_at, read_rss};
use crate::client::{Connection, TurnEnd, TurnRecord};
use crate::credentials::Credentials;
use crate::openai::OpenAiSession;
use crate::queries::query_for;
use crate::rss::RssSource;
use crate::stats::{Progress, Recorder, RunStats, StatsError};

/// What the sessions talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// MangaAssist over WebSocket at [`RunConfig::url`] (protocol v1).
    WebSocket,
    /// An OpenAI-compatible streaming endpoint: a model server itself, or a gateway in front of
    /// one ([`crate::openai`]).
    OpenAi {
        /// Base URL up to `/v1`.
        base: String,
        /// The model name the endpoint knows.
        model: String,
        /// Sent as a bearer token when set.
        api_key: Option<String>,
    },
}

/// What a `run` does; built from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `ws://host:port/path` of the server.
    pub url: String,
    /// What the sessions talk to.
    pub upstream: Upstream,
    /// What each session presents in `hello`.
    pub credentials: Credentials,
    /// Concurrent sessions, one connection each.
    pub sessions: u64,
    /// Turns each session sends, one after another.
    pub turns: u64,
    /// Session starts are spread evenly over this.
    pub ramp: Duration,
    /// Pause between a turn's end and the next turn's send.
    pub think: Duration,
    /// The whole run stops after this, measured from the first connection attempt.
    pub max: Duration,
    /// A turn with neither `done` nor `error` after this is abandoned and its session closed.
    pub turn_timeout: Duration,
    /// Connect + upgrade + hello -> welcome must finish within this.
    pub connect_timeout: Duration,
    /// Print the progress line to stderr once a second.
    pub progress: bool,
    /// A mid-stream gap longer than this counts its turn as stalled (10x the model's pacing).
    pub stall_threshold: Option<Duration>,
    /// No session starts a new turn after this long from the run's start (turns in flight
    /// finish); `None` sends every turn. The flash-sale scenario ramps, then holds until it.
    pub send_for: Option<Duration>,
    /// A session that has sent its turns closes and its slot opens a new one, until the run
    /// stops: sessions churn at a steady rate for as long as the run lasts (the soak).
    pub repeat: bool,
}

/// Server RSS around a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRss {
    /// Before the first connection.
    pub before: RssReading,
    /// After every session closed.
    pub after: RssReading,
    /// Largest value seen: sampled once a second, plus before and after.
    pub peak: Option<u64>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Every histogram and counter.
    pub stats: RunStats,
    /// From the first connection attempt until the last session finished (or the deadline).
    pub elapsed: Duration,
    /// True when `max` cut the run short.
    pub stopped_by_max: bool,
    /// Server memory.
    pub rss: RunRss,
    /// One point per second: server RSS and CPU, sessions, turns, TTFT and gaps.
    pub timeline: Vec<super::TimelinePoint>,
}

/// Runs the scenario against `cfg.url`, reading server RSS from `rss`.
pub async fn execute(cfg: &RunConfig, rss: &RssSource) -> Result<RunOutcome, StatsError> {
    let before = read_rss(rss).await;
    let recorder = Arc::new(Recorder::with_stall_threshold(cfg.stall_threshold)?);
    let sampler = (!matches!(rss, RssSource::Unavailable(_))).then(|| rss.clone());
    let ticker = ProgressTask::spawn(
        Arc::clone(&recorder),
        cfg.sessions,
        true,
        cfg.progress,
        sampler,
    );
    let shared = Arc::new(cfg.clone());
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let start = Instant::now();
    let deadline = start + cfg.max;
    let send_until = cfg.send_for.map(|d| start + d);
    let http = match &cfg.upstream {
        Upstream::WebSocket => None,
        Upstream::OpenAi { .. } => Some(crate::openai::client(cfg.connect_timeout)?),
    };

    let mut stopped_by_max = false;
    for index in 0..cfg.sessions {
        tokio::select! {
            () = sleep_until(ramp_at(start, cfg.ramp, index, cfg.sessions)) => {}
            () = sleep_until(deadline) => {
                stopped_by_max = true;
                break;
            }
        }
        tasks.spawn(session(
            index,
            Arc::clone(&shared),
            Arc::clone(&recorder),
            cancel.clone(),
            send_until,
            http.clone(),
        ));
    }
    tasks.close();
    if !stopped_by_max {
        stopped_by_max = tokio::select! {
            () = tasks.wait() => false,
            () = sleep_until(deadline) => true,
        };
    }
    let elapsed = start.elapsed();
    if stopped_by_max {
        cancel.cancel();
        tasks.wait().await;
    }

    let sampled = ticker.stop().await;
    let after = read_rss(rss).await;
    let peak = [
        sampled.peak_rss,
        before.as_ref().ok().copied(),
        after.as_ref().ok().copied(),
    ]
    .into_iter()
    .flatten()
    .max();
    Ok(RunOutcome {
        stats: recorder.snapshot(),
        elapsed,
        stopped_by_max,
        rss: RunRss {
            before,
            after,
            peak,
        },
        timeline: sampled.timeline,
    })
}

/// One session on whichever upstream the run talks to.
async fn session(
    index: u64,
    cfg: Arc<RunConfig>,
    rec: Arc<Recorder>,
    cancel: CancellationToken,
    send_until: Option<Instant>,
    http: Option<reqwest::Client>,
) {
    loop {
        let connected = one_session(index, &cfg, &rec, &cancel, send_until, http.clone()).await;
        let over = cancel.is_cancelled() || send_until.is_some_and(|t| Instant::now() >= t);
        if !cfg.repeat || over {
            return;
        }
        if !connected {
            // A server that refuses connections is not hammered: one attempt a second per slot.
            tokio::select! {
                () = cancel.cancelled() => return,
                () = sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// One session from `hello` to close; false when it could not connect.
async fn one_session(
    index: u64,
    cfg: &RunConfig,
    rec: &Arc<Recorder>,
    cancel: &CancellationToken,
    send_until: Option<Instant>,
    http: Option<reqwest::Client>,
) -> bool {
    match &cfg.upstream {
        Upstream::WebSocket => ws_session(index, cfg, rec, cancel, send_until).await,
        Upstream::OpenAi {
            base,
            model,
            api_key,
        } => {
            let progress = &rec.progress;
            let Some(http) = http else {
                return false;
            };
            let client = OpenAiSession::new(http, base, model, api_key.as_deref());
            rec.with(|s| s.record_connected(Duration::ZERO, &client.model_info()));
            Progress::bump(&progress.connected);
            let mut client = client;
            turns(index, cfg, rec, cancel, send_until, &mut client).await;
            Progress::bump(&progress.closed);
            true
        }
    }
}

/// A session that can be asked one turn at a time.
pub trait Ask {
    /// Sends `text` as turn `turn_id` and follows it to its end, `limit` or `cancel`.
    fn ask(
        &mut self,
        turn_id: TurnId,
        text: &'static str,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> impl Future<Output = TurnRecord> + Send;
}

impl Ask for Connection {
    async fn ask(
        &mut self,
        turn_id: TurnId,
        text: &'static str,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> TurnRecord {
        self.turn(turn_id, text, limit, cancel).await
    }
}

impl Ask for OpenAiSession {
    async fn ask(
        &mut self,
        turn_id: TurnId,
        text: &'static str,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> TurnRecord {
        self.turn(turn_id, text, limit, cancel).await
    }
}

/// The turns of one session; stops early on `cancel`, when a turn's end leaves the session
/// unusable, or at `send_until` (no new turn starts after it).
async fn turns(
    index: u64,
    cfg: &RunConfig,
    rec: &Recorder,
    cancel: &CancellationToken,
    send_until: Option<Instant>,
    session: &mut impl Ask,
) {
    let progress = &rec.progress;
    for n in 1..=cfg.turns {
        if n > 1 && !cfg.think.is_zero() {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = sleep(cfg.think) => {}
            }
        }
        if send_until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let Ok(turn_id) = TurnId::parse(&format!("t{n}")) else {
            break;
        };
        let record = session
            .ask(turn_id, query_for(index, n), cfg.turn_timeout, cancel)
            .await;
        rec.with(|s| record.record_into(s));
        if record.end != TurnEnd::Cancelled {
            Progress::bump(&progress.turns_done);
        }
        if record.end == TurnEnd::Done {
            Progress::bump(&progress.turns_ok);
        } else if record.end.is_failure() {
            Progress::bump(&progress.errors);
        }
        if !record.end.session_continues() {
            break;
        }
    }
}

/// One WebSocket session: connect, say hello, send the turns, close. False when it could not
/// connect.
async fn ws_session(
    index: u64,
    cfg: &RunConfig,
    rec: &Recorder,
    cancel: &CancellationToken,
    send_until: Option<Instant>,
) -> bool {
    let progress = &rec.progress;
    let token = cfg.credentials.token(index);
    let opened = tokio::select! {
        () = cancel.cancelled() => return true,
        opened = Connection::open(&cfg.url, token.as_deref(), cfg.connect_timeout) => opened,
    };
    let mut conn = match opened {
        Ok(conn) => conn,
        Err(e) => {
            rec.with(|s| e.record_into(s));
            Progress::bump(&progress.connect_failed);
            Progress::bump(&progress.errors);
            return false;
        }
    };
    rec.with(|s| s.record_connected(conn.connect_latency(), conn.model()));
    Progress::bump(&progress.connected);
    turns(index, cfg, rec, cancel, send_until, &mut conn).await;
    conn.close().await;
    Progress::bump(&progress.closed);
    true
}

#[cfg(test)]
mod tests {
    //! End to end against a scripted in-test WebSocket server speaking protocol v1.

    use super::*;
    use crate::testserver::{Script, TestServer};

    fn config(url: String, sessions: u64, turns: u64) -> RunConfig {
        RunConfig {
            url,
            upstream: Upstream::WebSocket,
            credentials: Credentials::None,
            sessions,
            turns,
            ramp: Duration::from_millis(20),
            think: Duration::ZERO,
            max: Duration::from_secs(5),
            turn_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            progress: false,
            stall_threshold: None,
            send_for: None,
            repeat: false,
        }
    }

    #[tokio::test]
    async fn measures_a_scripted_server() {
        let server = TestServer::start(Script::Stream {
            tokens: 5,
            gap: Duration::from_millis(2),
        })
        .await;
        let cfg = config(server.url(), 2, 3);
        let out = execute(&cfg, &RssSource::Proc(std::process::id()))
            .await
            .unwrap();
        let s = &out.stats;
        assert!(!out.stopped_by_max);
        assert_eq!(s.sessions_connected, 2);
        assert_eq!(s.turns_ok, 6, "{:?}", s.failure_samples);
        assert_eq!(s.turns_failed(), 0);
        assert_eq!(s.tokens, 30);
        assert_eq!(s.ttft.len(), 6);
        assert_eq!(s.gap.len(), 24, "first token of each turn has no gap");
        assert_eq!(s.turn.len(), 6);
        assert_eq!(s.connect.len(), 2);
        let gap = s.gap.summary().unwrap();
        assert!(gap.p50_us >= 1_000, "server paces 2 ms: {gap:?}");
        assert!(gap.max_us < 1_000_000, "{gap:?}");
        let ttft = s.ttft.summary().unwrap();
        let turn = s.turn.summary().unwrap();
        assert!(
            turn.min_us >= ttft.min_us + 4 * 1_000,
            "4 gaps after the first token"
        );
        assert_eq!(s.server_model.as_ref().map(|m| m.simulated), Some(true));
        assert!(out.rss.before.is_ok() && out.rss.after.is_ok());
        assert!(out.rss.peak.is_some());
        assert_eq!(server.turns_seen(), 6);
    }

    #[tokio::test]
    async fn a_gap_over_the_threshold_is_a_stalled_stream() {
        let server = TestServer::start(Script::Stream {
            tokens: 5,
            gap: Duration::from_millis(20),
        })
        .await;
        let mut cfg = config(server.url(), 2, 2);
        cfg.stall_threshold = Some(Duration::from_millis(5));
        let out = execute(&cfg, &RssSource::Unavailable("test".into()))
            .await
            .unwrap();
        assert_eq!(out.stats.turns_ok, 4);
        assert_eq!(out.stats.stalled_turns, 4, "every turn has 20 ms gaps");
        // Control: the same stream against a threshold above its gaps.
        cfg.stall_threshold = Some(Duration::from_secs(1));
        let out = execute(&cfg, &RssSource::Unavailable("test".into()))
            .await
            .unwrap();
        assert_eq!(out.stats.turns_ok, 4);
        assert_eq!(out.stats.stalled_turns, 0);
    }

    #[tokio::test]
    async fn no_turn_starts_after_the_send_window() {
        let server = TestServer::start(Script::Stream {
            tokens: 2,
            gap: Duration::from_millis(1),
        })
        .await;
        let mut cfg = config(server.url(), 1, 1_000);
        cfg.think = Duration::from_millis(50);
        cfg.send_for = Some(Duration::from_millis(300));
        let out = execute(&cfg, &RssSource::Unavailable("test".into()))
            .await
            .unwrap();
        assert!(!out.stopped_by_max);
        let ok = out.stats.turns_ok;
        assert!((2..=10).contains(&ok), "about 300 ms / 50 ms turns: {ok}");
        assert_eq!(out.stats.turns_failed(), 0);
    }

    #[tokio::test]
    async fn counts_error_frames_and_protocol_errors() {
        let server = TestServer::start(Script::ErrorEveryOther).await;
        let out = execute(
            &config(server.url(), 1, 4),
            &RssSource::Unavailable("test".into()),
        )
        .await
        .unwrap();
        let s = &out.stats;
        assert_eq!(s.turns_ok, 2);
        assert_eq!(s.turns_error, 2);
        assert_eq!(s.error_frames.get("busy"), Some(&2));
        assert!(out.rss.before.is_err() && out.rss.peak.is_none());

        let server = TestServer::start(Script::BadFrame).await;
        let out = execute(
            &config(server.url(), 2, 3),
            &RssSource::Unavailable("test".into()),
        )
        .await
        .unwrap();
        let s = &out.stats;
        assert_eq!(s.protocol_errors, 2, "one per session, then it closes");
        assert_eq!(s.disconnects.get("protocol_error"), Some(&2));
        assert_eq!(s.turns_protocol, 2);
        assert_eq!(s.turns_ok, 0);
    }

    #[tokio::test]
    async fn stops_at_max_and_reports_what_it_has() {
        let server = TestServer::start(Script::Silent).await;
        let mut cfg = config(server.url(), 2, 3);
        cfg.max = Duration::from_millis(300);
        let started = Instant::now();
        let out = execute(&cfg, &RssSource::Unavailable("test".into()))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(out.stopped_by_max);
        assert_eq!(out.stats.sessions_connected, 2);
        assert_eq!(out.stats.turns_cut, 2);
        assert_eq!(out.stats.turns_failed(), 0);
    }

    #[tokio::test]
    async fn repeat_replaces_each_finished_session_until_the_run_stops() {
        let server = TestServer::start(Script::Stream {
            tokens: 3,
            gap: Duration::from_millis(2),
        })
        .await;
        let mut cfg = config(server.url(), 2, 2);
        cfg.repeat = true;
        cfg.max = Duration::from_millis(800);
        let out = execute(&cfg, &RssSource::Unavailable("test".into()))
            .await
            .unwrap();
        let s = &out.stats;
        assert!(out.stopped_by_max, "a repeating run ends at max");
        assert!(
            s.sessions_connected > 4,
            "new sessions replaced finished ones: {}",
            s.sessions_connected
        );
        assert!(s.turns_ok >= 2 * (s.sessions_connected - 2), "{s:?}");
        assert_eq!(s.turns_failed(), 0);
        // The control: without repeat, the same two slots run two sessions and stop.
        cfg.repeat = false;
        let out = execute(&cfg, &RssSource::Unavailable("test".into()))
            .await
            .unwrap();
        assert!(!out.stopped_by_max);
        assert_eq!(out.stats.sessions_connected, 2);
    }

    /// A server streaming `tokens` tokens `gap` apart: far longer than the tests let it run.
    async fn slow_stream() -> TestServer {
        TestServer::start(Script::Stream {
            tokens: 1_000,
            gap: Duration::from_millis(40),
        })
        .await
    }

    #[tokio::test]
    async fn turns_cut_by_max_secs_keep_their_gaps() {
        let server = slow_stream().await;
        let mut cfg = config(server.url(), 2, 3);
        cfg.max = Duration::from_millis(500);
        let out = execute(&cfg, &RssSource::Unavailable("test".into()))
            .await
            .unwrap();
        let s = &out.stats;
        assert!(out.stopped_by_max);
        assert_eq!(s.turns_ok, 0);
        assert_eq!(s.turns_cut, 2, "one in flight per session");
        assert_eq!(s.turns_incomplete(), 2);
        assert_eq!(s.turns_failed(), 0);
        assert_eq!(s.incomplete_with_tokens, 2);
        assert!(
            s.gap.len() >= 2,
            "gaps seen before the stop: {}",
            s.gap.len()
        );
        assert_eq!(
            s.incomplete_gaps,
            s.gap.len(),
            "every gap came from a cut turn"
        );
        assert_eq!(
            s.gap.len() + 2,
            s.tokens,
            "first token of each turn has no gap"
        );
        assert_eq!(s.open_gap.len(), 2, "each was waiting for its next token");
        assert!(s.gap.summary().unwrap().p50_us >= 20_000);
    }

    #[tokio::test]
    async fn timed_out_turns_keep_their_gaps() {
        let server = slow_stream().await;
        let mut cfg = config(server.url(), 2, 3);
        cfg.turn_timeout = Duration::from_millis(300);
        let out = execute(&cfg, &RssSource::Unavailable("test".into()))
            .await
            .unwrap();
        let s = &out.stats;
        assert!(!out.stopped_by_max);
        assert_eq!(s.turns_timed_out, 2, "then the session closes");
        assert_eq!(s.turns_failed(), 2);
        assert_eq!(s.turns_incomplete(), 2);
        assert!(s.gap.len() >= 2, "{}", s.gap.len());
        assert_eq!(s.incomplete_gaps, s.gap.len());
        assert_eq!(s.open_gap.len() + s.open_ttft.len(), 2);
    }

    #[tokio::test]
    async fn counts_connection_failures() {
        // A port that was just free: nothing listens there.
        let port = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = config(format!("ws://127.0.0.1:{port}/ws"), 3, 2);
        let out = execute(&cfg, &RssSource::Unavailable("test".into()))
            .await
            .unwrap();
        assert_eq!(out.stats.connect_failures, 3);
        assert_eq!(out.stats.sessions_connected, 0);
        assert_eq!(out.stats.turns_ok, 0);
    }
}
