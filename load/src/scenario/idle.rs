//! The `idle` scenario: what one idle session costs the server in resident memory.
//!
//! Reads the server's RSS (baseline), opens N sessions on a ramp (each says `hello`, receives
//! `welcome`, then only reads so pings get answered), waits until all have opened or failed, lets
//! the server settle for [`IdleConfig::settle`], reads the RSS, waits [`IdleConfig::reread_after`]
//! and reads it again. The per-session figure is (second reading - baseline) / sessions still open
//! at the second reading. The connections then stay open [`IdleConfig::hold`] longer (to look at
//! the server by hand, or to see an idle timeout drop them) and close.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ProgressTask, RssReading, ramp_at, read_rss};
use crate::client::{Connection, IdleEnd};
use crate::credentials::Credentials;
use crate::rss::RssSource;
use crate::stats::{Progress, Recorder, RunStats, StatsError};

/// Slack beyond ramp + connect timeout before the open phase gives up waiting.
const OPEN_SLACK: Duration = Duration::from_secs(5);

/// What an `idle` run does; built from the command line.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// `ws://host:port/path` of the server.
    pub url: String,
    /// What each session presents in `hello`.
    pub credentials: Credentials,
    /// Idle sessions to open.
    pub sessions: u64,
    /// Session starts are spread evenly over this.
    pub ramp: Duration,
    /// Connect + upgrade + hello -> welcome must finish within this.
    pub connect_timeout: Duration,
    /// Wait after the last session opened before the first reading.
    pub settle: Duration,
    /// Wait between the first and the second reading.
    pub reread_after: Duration,
    /// Keep the sessions open this much longer after the second reading.
    pub hold: Duration,
    /// Print the progress line to stderr once a second.
    pub progress: bool,
}

/// What an idle run measured.
#[derive(Debug, Clone)]
pub struct IdleOutcome {
    /// Connect latency histogram and failure counters.
    pub stats: RunStats,
    /// From the first connection attempt until every session had opened or failed.
    pub open_elapsed: Duration,
    /// Sessions still open at the second reading: the divisor of the per-session figure.
    pub open_at_measurement: u64,
    /// Sessions still open just before closing (after the hold).
    pub open_at_end: u64,
    /// Server RSS before any connection.
    pub baseline: RssReading,
    /// Server RSS after settling.
    pub first: RssReading,
    /// Server RSS [`IdleConfig::reread_after`] later; the figure used.
    pub second: RssReading,
}

impl IdleOutcome {
    /// Second reading minus baseline, in bytes (negative if the server shrank).
    pub fn delta_bytes(&self) -> Option<i64> {
        let (Ok(before), Ok(after)) = (&self.baseline, &self.second) else {
            return None;
        };
        Some(i64::try_from(*after).ok()? - i64::try_from(*before).ok()?)
    }

    /// Server bytes per idle session; `None` without both readings or without open sessions.
    pub fn bytes_per_session(&self) -> Option<f64> {
        if self.open_at_measurement == 0 {
            return None;
        }
        Some(self.delta_bytes()? as f64 / self.open_at_measurement as f64)
    }
}

/// Runs the scenario against `cfg.url`, reading server RSS from `rss`.
pub async fn execute(cfg: &IdleConfig, rss: &RssSource) -> Result<IdleOutcome, StatsError> {
    let baseline = read_rss(rss).await;
    let recorder = Arc::new(Recorder::new()?);
    let ticker = ProgressTask::spawn(
        Arc::clone(&recorder),
        cfg.sessions,
        false,
        cfg.progress,
        None,
    );
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    // Every session sends exactly one message here once it has opened or failed.
    let capacity = usize::try_from(cfg.sessions)
        .unwrap_or(usize::MAX)
        .clamp(1, 1 << 20);
    let (opened_tx, mut opened_rx) = mpsc::channel::<()>(capacity);

    let start = Instant::now();
    for index in 0..cfg.sessions {
        sleep_until(ramp_at(start, cfg.ramp, index, cfg.sessions)).await;
        tasks.spawn(idle_session(
            cfg.url.clone(),
            cfg.credentials.token(index).map(Cow::into_owned),
            cfg.connect_timeout,
            Arc::clone(&recorder),
            cancel.clone(),
            opened_tx.clone(),
        ));
    }
    drop(opened_tx);
    tasks.close();
    let _all_in = timeout(cfg.connect_timeout + OPEN_SLACK, async {
        let mut reported = 0;
        while reported < cfg.sessions && opened_rx.recv().await.is_some() {
            reported += 1;
        }
    })
    .await;
    let open_elapsed = start.elapsed();

    // With nothing open there is nothing to let settle or hold.
    let waits = recorder.progress.open_now() > 0;
    let pause = |d: Duration| sleep(if waits { d } else { Duration::ZERO });
    pause(cfg.settle).await;
    let first = read_rss(rss).await;
    pause(cfg.reread_after).await;
    let second = read_rss(rss).await;
    let open_at_measurement = recorder.progress.open_now();
    pause(cfg.hold).await;
    let open_at_end = recorder.progress.open_now();

    cancel.cancel();
    tasks.wait().await;
    ticker.stop().await;
    Ok(IdleOutcome {
        stats: recorder.snapshot(),
        open_elapsed,
        open_at_measurement,
        open_at_end,
        baseline,
        first,
        second,
    })
}

/// One idle session: open, report on `opened`, hold until `cancel`, close.
async fn idle_session(
    url: String,
    token: Option<String>,
    connect_timeout: Duration,
    rec: Arc<Recorder>,
    cancel: CancellationToken,
    opened: mpsc::Sender<()>,
) {
    let progress = &rec.progress;
    let mut conn = match Connection::open(&url, token.as_deref(), connect_timeout).await {
        Ok(conn) => conn,
        Err(e) => {
            rec.with(|s| e.record_into(s));
            Progress::bump(&progress.connect_failed);
            Progress::bump(&progress.errors);
            let _ = opened.send(()).await;
            return;
        }
    };
    rec.with(|s| s.record_connected(conn.connect_latency(), conn.model()));
    Progress::bump(&progress.connected);
    let _ = opened.send(()).await;
    drop(opened);

    let end = conn.idle(&cancel).await;
    if end != IdleEnd::Cancelled {
        rec.with(|s| end.record_into(s));
        Progress::bump(&progress.errors);
    }
    Progress::bump(&progress.closed);
    conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testserver::{Script, TestServer};

    #[tokio::test]
    async fn measures_idle_sessions() {
        let server = TestServer::start(Script::Silent).await;
        let cfg = IdleConfig {
            url: server.url(),
            credentials: Credentials::None,
            sessions: 20,
            ramp: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(2),
            settle: Duration::from_millis(50),
            reread_after: Duration::from_millis(20),
            hold: Duration::ZERO,
            progress: false,
        };
        let out = execute(&cfg, &RssSource::Proc(std::process::id()))
            .await
            .unwrap();
        assert_eq!(out.stats.sessions_connected, 20);
        assert_eq!(out.stats.connect_failures, 0);
        assert_eq!(out.stats.connect.len(), 20);
        assert_eq!(out.open_at_measurement, 20);
        assert_eq!(out.open_at_end, 20);
        assert!(out.baseline.is_ok() && out.first.is_ok() && out.second.is_ok());
        // The test server lives in this process, so the figure is real but noisy: just present.
        assert!(out.delta_bytes().is_some());
        assert!(out.bytes_per_session().is_some());
        assert_eq!(server.turns_seen(), 0);
    }

    #[test]
    fn per_session_figure_divides_by_open_sessions() {
        let out = IdleOutcome {
            stats: RunStats::new().unwrap(),
            open_elapsed: Duration::ZERO,
            open_at_measurement: 100,
            open_at_end: 100,
            baseline: Ok(50 * 1024 * 1024),
            first: Ok(60 * 1024 * 1024),
            second: Ok(50 * 1024 * 1024 + 1_024_000),
        };
        assert_eq!(out.delta_bytes(), Some(1_024_000));
        assert_eq!(out.bytes_per_session(), Some(10_240.0));
        let none = IdleOutcome {
            open_at_measurement: 0,
            ..out.clone()
        };
        assert_eq!(none.bytes_per_session(), None);
        let missing = IdleOutcome {
            second: Err("down".into()),
            ..out
        };
        assert_eq!(missing.bytes_per_session(), None);
    }
}
