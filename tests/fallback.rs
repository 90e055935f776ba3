//! A search that finds nothing is a designed state, shown end to end down to the turn's span.
//!
//! Its own test binary: it captures spans with a thread-local subscriber, and tracing's
//! per-callsite interest is process-wide, so a test beside it on another thread that reaches the
//! same callsites first (with no subscriber) could leave this one's `turn` span unrecorded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use mangaassist_protocols::ServerFrame;

/// What a `fmt` subscriber writes, kept for assertions on spans.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    /// The fields of every closed span named `name`, in closing order: for the line
    /// `INFO turn{a=1}:retrieve{hits=0}: target: close time.busy=..` and `retrieve`, `hits=0`.
    fn closed(&self, name: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).to_string();
        text.lines()
            .filter_map(|l| {
                let (head, _) = l.split_once(": close time.busy=")?;
                let (path, _target) = head.split_once(" INFO ")?.1.rsplit_once(": ")?;
                let last = path.rsplit("}:").next()?;
                let fields = last.strip_prefix(name)?;
                Some(
                    fields
                        .trim_start_matches('{')
                        .trim_end_matches('}')
                        .to_owned(),
                )
            })
            .collect()
    }
}

/// A search that finds nothing is a designed state: `turn_started` says `fallback`, the answer
/// carries the caveat and invents no title, and the metrics and the turn's span say so. Controls:
/// a catalog question is `grounded` and cites what it found; a greeting is `skipped`.
#[tokio::test]
async fn zero_hits_answer_from_the_fallback_template_and_say_so() {
    use mangaassist_protocols::turn::RetrievalMode;

    // The test's runtime is single-threaded: every actor's task runs under this subscriber.
    let spans = Captured::default();
    let _tracing = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(spans.clone())
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let server = start().await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    let mode = |r: &TurnResult| match r.frames.first() {
        Some(ServerFrame::TurnStarted { retrieval_mode, .. }) => *retrieval_mode,
        other => panic!("expected turn_started, got {other:?}"),
    };

    let nothing = run_turn(&mut c, "do you have qzxvbnm wqrtyp").await;
    assert_streamed(&nothing);
    assert_eq!(
        mode(&nothing),
        RetrievalMode::Fallback,
        "{:?}",
        nothing.frames[0]
    );
    let answer = nothing.answer();
    assert!(answer.contains("couldn't find"), "{answer}");
    assert!(
        nothing.cards().is_none(),
        "no product cards without grounding"
    );

    let found = run_turn(&mut c, "do you have frieren").await;
    assert_eq!(mode(&found), RetrievalMode::Grounded);
    assert!(found.answer().contains("Frieren"), "{}", found.answer());

    let hello = run_turn(&mut c, "thanks, bye").await;
    assert_eq!(mode(&hello), RetrievalMode::Skipped);
    // The transcript keeps each turn's mode.
    let modes: Vec<_> = transcript(&server, &session)
        .await
        .iter()
        .map(|t| t.retrieval_mode)
        .collect();
    assert_eq!(
        modes,
        [
            Some(RetrievalMode::Fallback),
            Some(RetrievalMode::Grounded),
            Some(RetrievalMode::Skipped)
        ]
    );

    // One `turn` span per turn, each tagged with its mode; a `retrieve` span for the two that
    // searched, with the hits each found.
    let turns = spans.closed("turn");
    assert_eq!(turns.len(), 3, "{turns:#?}");
    for (fields, want) in turns.iter().zip(["fallback", "grounded", "skipped"]) {
        assert!(
            fields.ends_with(&format!("retrieval_mode=\"{want}\"")),
            "{want}: {fields}"
        );
    }
    let searches = spans.closed("retrieve");
    assert_eq!(
        searches,
        [
            "path_type=\"critical_sync\" outcome=\"ok\" attempts=1 hits=0",
            "path_type=\"critical_sync\" outcome=\"ok\" attempts=1 hits=1"
        ]
    );

    let m = metrics_text(&server).await;
    for (mode, n) in [("fallback", 1.0), ("grounded", 1.0), ("skipped", 1.0)] {
        let series = format!("turns_by_retrieval_mode_total{{retrieval_mode=\"{mode}\"}}");
        assert_eq!(metric(&m, &series), n, "{series}\n{m}");
    }
    // Two searching answers, one of which names what it found.
    assert_eq!(metric(&m, "rag_answers_total{cited=\"true\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "rag_answers_total{cited=\"false\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "retrieved_chunk_count_count"), 2.0, "{m}");
    assert_eq!(
        metric(&m, "retrieved_chunk_count{quantile=\"0.5\"}"),
        0.0,
        "{m}"
    );
}
