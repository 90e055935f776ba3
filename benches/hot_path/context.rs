//! Context assembly for a long session: [`context::assemble`] as the turn's `fit()` calls it
//! (the grounding items cloned into the call), with the default [`ContextBudget`].
//!
//! The session has 80 turns: the oldest 20 are folded into its rolling summary, the newest 60
//! are in memory ([`TranscriptView::recent`]), and its preferences are rebuilt from all 80, as a
//! session restored from its transcript is ([`SessionMemory::rebuild`]). Each turn is a customer
//! message of 2 to 69 characters (a fixed cycle of 12, a third of them greetings or navigation)
//! and an answer of 200 characters. With the default budget (8 verbatim turns, a 400-token
//! summary) the 52 turns outside the window are summarized or dropped, and the summary is cut to
//! fit: the compressed case. `assemble_empty_history` is the same request with no history, for
//! comparison, and `summarize_52_turns` is what assembly used to redo on every turn:
//! [`memory::summarize_turn`] over the 52 turns outside the verbatim window. A session now
//! keeps each turn's line in its [`memory::History`], worked out once when the turn joins;
//! `assemble_60_turns_cold` builds that history inside the loop, which is what every assembly
//! cost before (the lines of all 60 turns, and a copy of them).

use std::hint::black_box;

use criterion::Criterion;
use mangaassist_actors::context::{self, ContextBudget, TranscriptView};
use mangaassist_actors::memory::{self, SessionMemory};
use mangaassist_protocols::frame::FinishReason;
use mangaassist_protocols::memory::{Preferences, SessionSummary};
use mangaassist_protocols::turn::{ContextItem, Intent, RetrievedDoc, TurnRecord, Usage};
use mangaassist_protocols::{SessionId, TurnId, UserId};

/// Turns in the session's transcript.
const TURNS: u32 = 80;
/// Turns the session holds in memory (the rest are in the summary).
const IN_MEMORY: usize = 60;

/// Customer messages, cycled: preferences, names, numbers, and some navigation.
const MESSAGES: [&str; 12] = [
    "hi",
    "I love fantasy manga with a slow, gentle pace, something like Frieren",
    "show me more",
    "how many volumes does Witch Hat Atelier have so far?",
    "I don't like horror, and nothing too gory please",
    "is Vinland Saga finished? my budget is under 900 yen per volume",
    "thanks",
    "what about something shorter, at most 10 volumes",
    "do you have Mushishi in English?",
    "my daughter is 12, is Yotsuba okay for her?",
    "yes",
    "any sports manga like Haikyu that is still in stock?",
];

/// Answer prose to cut the answers from.
const ANSWER: &str = "Frieren: Beyond Journey's End is a quiet fantasy about an elf mage who \
outlives her party; 13 volumes so far at 820 yen each, in stock. Witch Hat Atelier has 12 \
volumes and lovely ink work; it is in stock too. ";

fn record(index: u32) -> TurnRecord {
    let answer: String = ANSWER
        .chars()
        .cycle()
        .skip(index as usize * 7)
        .take(200)
        .collect();
    TurnRecord {
        session_id: SessionId::parse("s-bench").expect("session id"),
        user_id: UserId::parse("reader").expect("user id"),
        turn_id: TurnId::parse(&format!("t{index}")).expect("turn id"),
        index,
        user_text: MESSAGES[index as usize % MESSAGES.len()].to_owned(),
        answer_text: answer,
        intent: Intent::Recommend,
        started_at_ms: 1_764_576_000_000 + u64::from(index) * 60_000,
        finished_at_ms: 1_764_576_004_000 + u64::from(index) * 60_000,
        usage: Usage {
            input_tokens: 1_500,
            output_tokens: 60,
        },
        finish_reason: FinishReason::Stop,
        retrieval_mode: None,
    }
}

fn item(series_id: &str, title: &str, genres: &[&str], volumes: u32, score: f32) -> ContextItem {
    ContextItem {
        doc: RetrievedDoc {
            series_id: series_id.into(),
            title: title.into(),
            author: "Kanehito Yamada & Tsukasa Abe".into(),
            genres: genres.iter().map(|g| (*g).to_owned()).collect(),
            demographic: "shonen".into(),
            volumes,
            synopsis: "After the hero's party defeats the Demon King, the elf mage sets out \
                       again to understand the humans she travelled with."
                .into(),
            score,
        },
        price_jpy: Some(820),
        stock: Some(4),
    }
}

/// Five grounding items, best first, all with price and stock.
fn items() -> Vec<ContextItem> {
    vec![
        item(
            "frieren",
            "Frieren: Beyond Journey's End",
            &["fantasy", "adventure"],
            13,
            0.92,
        ),
        item(
            "witch-hat-atelier",
            "Witch Hat Atelier",
            &["fantasy"],
            12,
            0.88,
        ),
        item(
            "mushishi",
            "Mushishi",
            &["supernatural", "slice-of-life"],
            10,
            0.81,
        ),
        item(
            "yotsuba",
            "Yotsuba&!",
            &["comedy", "slice-of-life"],
            15,
            0.74,
        ),
        item("haikyu", "Haikyu!!", &["sports"], 45, 0.70),
    ]
}

/// Builds the session once, prints what assembly did with it, then benches assembly.
pub fn bench(c: &mut Criterion) {
    let all: Vec<TurnRecord> = (0..TURNS).map(record).collect();
    let budget = ContextBudget::default();
    let memory = SessionMemory::rebuild(&all, IN_MEMORY, budget.summary_tokens);
    let recent = &all[all.len() - IN_MEMORY..];
    let history = memory::History::new(recent.to_vec());
    let items = items();
    let text = "Can you recommend a finished fantasy series, at most 12 volumes, in English?";
    let view = TranscriptView {
        recent: &history,
        summary: &memory.summary,
        preferences: &memory.preferences,
    };
    let (_, report) = context::assemble(Intent::Recommend, text, view, items.clone(), budget);
    eprintln!(
        "context/assemble_60_turns: {report:?} (summary lines held: {}, preferences: {:?})",
        memory.summary.lines.len(),
        memory.preferences.render(budget.preference_tokens)
    );
    let empty_summary = SessionSummary::default();
    let no_history = memory::History::default();
    let no_preferences = Preferences::default();
    let empty = TranscriptView {
        recent: &no_history,
        summary: &empty_summary,
        preferences: &no_preferences,
    };

    let mut group = c.benchmark_group("context");
    group.bench_function("assemble_60_turns", |b| {
        b.iter(|| {
            context::assemble(
                Intent::Recommend,
                black_box(text),
                black_box(view),
                items.clone(),
                budget,
            )
        })
    });
    group.bench_function("assemble_60_turns_cold", |b| {
        b.iter(|| {
            let history = memory::History::new(black_box(recent).to_vec());
            let view = TranscriptView {
                recent: &history,
                ..view
            };
            context::assemble(
                Intent::Recommend,
                black_box(text),
                view,
                items.clone(),
                budget,
            )
        })
    });
    group.bench_function("assemble_empty_history", |b| {
        b.iter(|| {
            context::assemble(
                Intent::Recommend,
                black_box(text),
                black_box(empty),
                items.clone(),
                budget,
            )
        })
    });
    let outside_window = &recent[..recent.len() - budget.max_history_turns];
    group.bench_function("summarize_52_turns", |b| {
        b.iter(|| {
            black_box(outside_window)
                .iter()
                .filter_map(memory::summarize_turn)
                .count()
        })
    });
    group.finish();
}
