//! Context assembly: turns a transcript view, grounding items and the current message into a
//! [`ModelRequest`] that fits a token budget. Pure functions, no storage types: the session hands
//! it plain records, its preferences and its rolling summary.
//!
//! The budget is split into slots, filled in this order:
//!
//! 1. **system** instructions and constraint framing, and the **current request**: always sent;
//! 2. **preferences**: the customer's stated preferences, at most `preference_tokens` (default
//!    200), never compressed away;
//! 3. **retrieved** context: the grounding items, best first; items that do not fit are trimmed
//!    (lowest score first) and counted;
//! 4. **summary**: what older turns said worth keeping (the session's rolling summary, plus a
//!    line per informative in-memory turn outside the verbatim window), at most `summary_tokens`;
//! 5. **recent** turns verbatim, newest first, at most `max_history_turns`, in what is left.
//!
//! Compression, and what the [`AssemblyReport`] counts: a greeting or pure navigation ("hi",
//! "yes", "show me more") is never sent verbatim nor summarized (dropped); a turn outside the
//! verbatim window, or that did not fit it, is summarized when it carries a preference, a number
//! or a name, and dropped otherwise. The request never exceeds the budget: when even the fixed
//! slots do not fit, the preferences block shrinks, then the current message is cut, and the
//! report says so.

use std::fmt::Write as _;

use mangaassist_protocols::memory::{Preferences, SessionSummary};
use mangaassist_protocols::turn::{
    ChatMessage, Constraint, ContextItem, Intent, ModelRequest, Role, TurnRecord, estimate_tokens,
};

use crate::memory;

/// Limits for one request.
#[derive(Debug, Clone, Copy)]
pub struct ContextBudget {
    /// Most prompt tokens (estimated) sent to the model.
    pub max_input_tokens: u32,
    /// Most recent turns sent verbatim.
    pub max_history_turns: usize,
    /// Most tokens of the preferences block.
    pub preference_tokens: u32,
    /// Most tokens of the summary of older turns.
    pub summary_tokens: u32,
}

impl Default for ContextBudget {
    fn default() -> Self {
        Self {
            max_input_tokens: 8_000,
            max_history_turns: 8,
            preference_tokens: 200,
            summary_tokens: 400,
        }
    }
}

/// What a conversation brings to assembly: recent turns, the summary of older ones, and the
/// customer's preferences.
#[derive(Debug, Clone, Copy)]
pub struct TranscriptView<'a> {
    /// Turns the session holds in memory, oldest first, with their summary lines.
    pub recent: &'a memory::History,
    /// The rolling summary of turns older than `recent`.
    pub summary: &'a SessionSummary,
    /// Stated preferences.
    pub preferences: &'a Preferences,
}

/// Tokens each slot took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotUsage {
    /// Instructions and constraint framing.
    pub system: u32,
    /// The preferences block.
    pub preferences: u32,
    /// The grounding items.
    pub retrieved: u32,
    /// The summary block.
    pub summary: u32,
    /// Verbatim turns.
    pub history: u32,
    /// The current message.
    pub request: u32,
}

/// What assembly did, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AssemblyReport {
    /// History turns included verbatim.
    pub history_included: usize,
    /// In-memory turns represented by a summary line instead.
    pub history_summarized: usize,
    /// In-memory turns left out entirely (navigation, nothing to keep, or no room).
    pub history_dropped: usize,
    /// Lines of the session's rolling summary sent (turns older than memory).
    pub summary_lines: usize,
    /// Grounding items left out for lack of budget.
    pub items_trimmed: usize,
    /// Characters cut from the current message because even the fixed slots did not fit.
    pub request_chars_cut: usize,
    /// Estimated prompt tokens.
    pub estimated_tokens: u32,
    /// The budget it had.
    pub budget_tokens: u32,
    /// Per slot.
    pub slots: SlotUsage,
}

impl AssemblyReport {
    /// Estimated tokens over the budget, 0.0-1.0.
    pub fn utilization(&self) -> f64 {
        if self.budget_tokens == 0 {
            return 1.0;
        }
        (f64::from(self.estimated_tokens) / f64::from(self.budget_tokens)).min(1.0)
    }

    /// Whether anything was left out or condensed.
    pub fn compressed(&self) -> bool {
        self.history_summarized > 0
            || self.history_dropped > 0
            || self.items_trimmed > 0
            || self.request_chars_cut > 0
    }
}

const INSTRUCTIONS: &str = "You are MangaAssist, the shopping assistant of an online manga store. \
Answer the customer's latest message in a friendly, concise way. Use only the catalog entries \
below for titles, authors, volume counts, prices and stock; never invent them. Quote prices in \
yen per volume exactly as given.";

/// The constraints implied by what arrived in budget.
pub fn constraints_for(intent: Intent, items: &[ContextItem]) -> Vec<Constraint> {
    let mut out = Vec::new();
    if items.is_empty() {
        if intent.wants_retrieval() {
            out.push(Constraint::NoGrounding);
        }
        return out;
    }
    if items.iter().any(|i| i.price_jpy.is_none()) {
        out.push(Constraint::NoPrice);
    }
    if items.iter().any(|i| i.stock.is_none()) {
        out.push(Constraint::NoStock);
    }
    out
}

/// The fallback template: retrieval found nothing usable (no hits, an unreachable backend, a
/// missed budget), so the answer acknowledges its limited context, answers only with a caveat and
/// offers to search again or browse.
const FALLBACK_INSTRUCTIONS: &str = "You are MangaAssist, the shopping assistant of an online \
manga store. The catalog search returned nothing for the customer's latest message, so you have \
no catalog entries to rely on. Say plainly that you could not find it in the catalog. Do not \
name, recommend or describe any title, author, volume count, price or stock from memory. If \
general help is possible, give it only with that caveat. Offer to search again with different \
words, or to browse by genre or demographic.";

/// The grounding block line of one item.
fn item_line(it: &ContextItem) -> String {
    let d = &it.doc;
    let mut s = format!(
        "- [{}] {} by {}; {}; {}; {} volumes; {}",
        d.series_id,
        d.title,
        d.author,
        d.demographic,
        d.genres.join(", "),
        d.volumes,
        d.synopsis
    );
    match it.price_jpy {
        Some(p) => {
            let _ = write!(s, "; price: {p} yen per volume");
        }
        None => s.push_str("; price: unavailable"),
    }
    match it.stock {
        Some(n) => {
            let _ = write!(s, "; in stock: {n}");
        }
        None => s.push_str("; stock: unavailable"),
    }
    s.push('\n');
    s
}

const ITEMS_HEADER: &str = "\n\nCatalog entries:\n";

/// Renders the system prompt: instructions, the grounding block, then the constraint framing.
/// Without grounding for an intent that needed it ([`Constraint::NoGrounding`]), the
/// instructions are the fallback template.
pub fn system_prompt(items: &[ContextItem], constraints: &[Constraint]) -> String {
    let lines: Vec<String> = items.iter().map(item_line).collect();
    render_system(&lines, constraints, "", "")
}

fn render_system(
    item_lines: &[String],
    constraints: &[Constraint],
    preferences: &str,
    summary: &str,
) -> String {
    let mut s = String::with_capacity(512 + item_lines.iter().map(String::len).sum::<usize>());
    if constraints.contains(&Constraint::NoGrounding) {
        s.push_str(FALLBACK_INSTRUCTIONS);
    } else {
        s.push_str(INSTRUCTIONS);
    }
    if !item_lines.is_empty() {
        s.push_str(ITEMS_HEADER);
        for line in item_lines {
            s.push_str(line);
        }
    }
    if !constraints.is_empty() {
        s.push_str("\nRules for this answer:\n");
        for c in constraints {
            let _ = writeln!(s, "- {}", c.framing());
        }
    }
    if !preferences.is_empty() {
        s.push('\n');
        s.push_str(preferences);
    }
    if !summary.is_empty() {
        s.push('\n');
        s.push_str(summary);
    }
    s
}

/// Tokens of a block joined to the system prompt with a newline (0 when empty).
fn block_tokens(block: &str) -> u32 {
    if block.is_empty() {
        0
    } else {
        estimate_tokens(block) + 1
    }
}

/// Tokens of one verbatim turn.
fn turn_tokens(t: &TurnRecord) -> u32 {
    estimate_tokens(&t.user_text) + estimate_tokens(&t.answer_text)
}

/// Assembles one request within `budget` (see the module docs for the slots and their order).
pub fn assemble(
    intent: Intent,
    user_text: &str,
    view: TranscriptView<'_>,
    items: Vec<ContextItem>,
    budget: ContextBudget,
) -> (ModelRequest, AssemblyReport) {
    let max = budget.max_input_tokens;
    let constraints = constraints_for(intent, &items);
    let mut report = AssemblyReport {
        budget_tokens: max,
        ..AssemblyReport::default()
    };

    // 1. System instructions and framing, and the request: always.
    let base = render_system(&[], &constraints, "", "");
    report.slots.system = estimate_tokens(&base);
    let mut request = user_text.to_owned();
    report.slots.request = estimate_tokens(&request);

    // 2. Preferences, within their slot and what is left.
    let room = |used: u32| max.saturating_sub(used);
    // (Each block is joined with a newline, counted in its slot.)
    let mut prefs = view.preferences.render(
        budget
            .preference_tokens
            .min(room(report.slots.system + report.slots.request))
            .saturating_sub(1),
    );
    report.slots.preferences = block_tokens(&prefs);
    let fixed = report.slots.system + report.slots.preferences + report.slots.request;
    if fixed > max {
        // Even without preferences the request is too long: cut it to fit.
        prefs.clear();
        report.slots.preferences = 0;
        let keep_tokens = room(report.slots.system);
        let keep_chars = (u64::from(keep_tokens) * 7 / 2) as usize;
        let cut: String = request.chars().take(keep_chars).collect();
        report.request_chars_cut = request.chars().count() - cut.chars().count();
        request = cut;
        report.slots.request = estimate_tokens(&request);
    }
    let mut used = report.slots.system + report.slots.preferences + report.slots.request;

    // 3. Retrieved items, best first, while they fit.
    let mut kept_items = Vec::with_capacity(items.len());
    let mut item_lines = Vec::with_capacity(items.len());
    let header = estimate_tokens(ITEMS_HEADER);
    for it in items {
        let line = item_line(&it);
        let cost = estimate_tokens(&line) + if item_lines.is_empty() { header } else { 0 };
        if used + cost <= max {
            used += cost;
            report.slots.retrieved += cost;
            item_lines.push(line);
            kept_items.push(it);
        } else {
            report.items_trimmed += 1;
        }
    }

    // 4 and 5. Verbatim turns (newest first, within the window and the room left after the
    //    summary's reservation), then the summary of everything else.
    // Positions in `recent`, which is oldest first.
    let recent = view.recent.turns();
    let window_start = recent.len().saturating_sub(budget.max_history_turns);
    let reserve = budget.summary_tokens.min(room(used));
    let mut verbatim: Vec<&TurnRecord> = Vec::new();
    let mut left_out: Vec<usize> = (0..window_start).collect();
    let mut history_room = room(used + reserve);
    let mut full = false;
    for (at, t) in recent.iter().enumerate().skip(window_start).rev() {
        if memory::is_navigation(&t.user_text) {
            left_out.push(at);
            continue;
        }
        let cost = turn_tokens(t);
        if full || cost > history_room {
            full = true;
            left_out.push(at);
            continue;
        }
        history_room -= cost;
        verbatim.push(t);
    }
    verbatim.reverse();
    left_out.sort_unstable();
    report.slots.history = verbatim.iter().map(|t| turn_tokens(t)).sum();
    used += report.slots.history;

    let mut summary = view.summary.clone();
    let stored_lines = summary.lines.len();
    let mut summarized: Vec<u32> = Vec::new();
    for at in left_out {
        if let Some(line) = view.recent.line(at) {
            summarized.push(recent[at].index);
            summary.lines.push(line.clone());
        }
    }
    let summary_room = budget.summary_tokens.min(room(used));
    let summary_text = memory::trim_oldest(&mut summary, |text| block_tokens(text) <= summary_room);
    let sent: Vec<u32> = summary.lines.iter().map(|l| l.turn).collect();
    report.history_summarized = summarized.iter().filter(|i| sent.contains(i)).count();
    report.summary_lines = sent.len() - report.history_summarized;
    debug_assert!(report.summary_lines <= stored_lines);
    report.history_included = verbatim.len();
    report.history_dropped = recent.len() - verbatim.len() - report.history_summarized;
    report.slots.summary = block_tokens(&summary_text);
    used += report.slots.summary;

    let system = render_system(&item_lines, &constraints, &prefs, &summary_text);
    let mut messages = Vec::with_capacity(verbatim.len() * 2 + 1);
    for turn in &verbatim {
        messages.push(ChatMessage {
            role: Role::User,
            content: turn.user_text.clone(),
        });
        messages.push(ChatMessage {
            role: Role::Assistant,
            content: turn.answer_text.clone(),
        });
    }
    messages.push(ChatMessage {
        role: Role::User,
        content: request,
    });
    // The whole request, measured as sent (never more than the slots' sum).
    let estimated = estimate_tokens(&system)
        + messages
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum::<u32>();
    debug_assert!(estimated <= used, "{estimated} > {used}");
    report.estimated_tokens = estimated;
    let used = estimated;
    (
        ModelRequest {
            intent,
            system,
            messages,
            context: kept_items,
            constraints,
            estimated_input_tokens: used,
            session: None,
        },
        report,
    )
}

#[cfg(test)]
mod tests {
    use mangaassist_protocols::frame::FinishReason;
    use mangaassist_protocols::memory::{PreferenceUpdate, Statement, SummaryLine};
    use mangaassist_protocols::turn::{RetrievedDoc, Usage};
    use mangaassist_protocols::{SessionId, TurnId, UserId};

    use super::*;

    fn item_scored(id: &str, score: f32, price: Option<u32>) -> ContextItem {
        ContextItem {
            doc: RetrievedDoc {
                series_id: id.into(),
                title: "Frieren".into(),
                author: "Kanehito Yamada & Tsukasa Abe".into(),
                genres: vec!["fantasy".into()],
                demographic: "shonen".into(),
                volumes: 13,
                synopsis: "An elf mage outlives her party.".into(),
                score,
            },
            price_jpy: price,
            stock: Some(3),
        }
    }

    fn item(price: Option<u32>) -> ContextItem {
        item_scored("frieren", 1.0, price)
    }

    fn turn_text(i: u32, user: &str, answer_chars: usize) -> TurnRecord {
        TurnRecord {
            session_id: SessionId::parse("s").unwrap(),
            user_id: UserId::parse("reader").unwrap(),
            turn_id: TurnId::parse(&format!("t{i}")).unwrap(),
            index: i,
            user_text: user.into(),
            answer_text: "a".repeat(answer_chars),
            intent: Intent::Search,
            started_at_ms: 0,
            finished_at_ms: 0,
            usage: Usage::default(),
            finish_reason: FinishReason::Stop,
            retrieval_mode: None,
        }
    }

    fn turn(i: u32, chars: usize) -> TurnRecord {
        turn_text(i, &"u".repeat(chars), chars)
    }

    struct Memory {
        summary: SessionSummary,
        preferences: Preferences,
    }

    impl Memory {
        fn empty() -> Self {
            Self {
                summary: SessionSummary::default(),
                preferences: Preferences::default(),
            }
        }

        fn view<'a>(&'a self, recent: &'a memory::History) -> TranscriptView<'a> {
            TranscriptView {
                recent,
                summary: &self.summary,
                preferences: &self.preferences,
            }
        }
    }

    fn budget(max: u32) -> ContextBudget {
        ContextBudget {
            max_input_tokens: max,
            ..ContextBudget::default()
        }
    }

    /// Estimated tokens of the request as it would be sent.
    fn measured(req: &ModelRequest) -> u32 {
        estimate_tokens(&req.system)
            + req
                .messages
                .iter()
                .map(|m| estimate_tokens(&m.content))
                .sum::<u32>()
    }

    #[test]
    fn missing_price_adds_framing_and_constraint() {
        let m = Memory::empty();
        let (req, _) = assemble(
            Intent::PurchaseIntent,
            "how much?",
            m.view(&memory::History::default()),
            vec![item(None)],
            ContextBudget::default(),
        );
        assert_eq!(req.constraints, vec![Constraint::NoPrice]);
        assert!(req.system.contains("Do not state a specific price"));
        assert!(req.system.contains("price: unavailable"));
        let (req, _) = assemble(
            Intent::PurchaseIntent,
            "how much?",
            m.view(&memory::History::default()),
            vec![item(Some(500))],
            ContextBudget::default(),
        );
        assert!(req.constraints.is_empty());
        assert!(req.system.contains("price: 500 yen per volume"));
    }

    #[test]
    fn empty_retrieval_is_framed() {
        let m = Memory::empty();
        let (req, _) = assemble(
            Intent::Search,
            "zzz",
            m.view(&memory::History::default()),
            vec![],
            ContextBudget::default(),
        );
        assert_eq!(req.constraints, vec![Constraint::NoGrounding]);
        assert!(
            req.system.starts_with(FALLBACK_INSTRUCTIONS),
            "{}",
            req.system
        );
        assert!(req.system.contains("search again"));
        // Control: a greeting needs no search, and gets the normal instructions.
        let (req, _) = assemble(
            Intent::Other,
            "hi",
            m.view(&memory::History::default()),
            vec![],
            ContextBudget::default(),
        );
        assert!(req.constraints.is_empty());
        assert!(req.system.starts_with(INSTRUCTIONS));
    }

    #[test]
    fn history_fills_the_budget_newest_first() {
        let m = Memory::empty();
        let history: Vec<TurnRecord> = (0..5).map(|i| turn(i, 70)).collect(); // 20+20 tokens each
        let base = assemble(
            Intent::Other,
            "hi",
            m.view(&memory::History::default()),
            vec![],
            budget(8_000),
        )
        .1
        .estimated_tokens;
        let b = ContextBudget {
            max_input_tokens: base + 2 * 40 + 10,
            summary_tokens: 0,
            ..ContextBudget::default()
        };
        let (req, report) = assemble(
            Intent::Other,
            "hi",
            m.view(&memory::History::new(history.clone())),
            vec![],
            b,
        );
        assert_eq!(report.history_included, 2);
        // "uuuu..." says nothing worth a summary line: the three older turns are dropped.
        assert_eq!((report.history_summarized, report.history_dropped), (0, 3));
        assert!(report.estimated_tokens <= b.max_input_tokens);
        // The two newest turns, oldest first, then the current message.
        assert_eq!(req.messages.len(), 5);
        assert_eq!(req.messages[4].content, "hi");
        assert_eq!(measured(&req), report.estimated_tokens);
    }

    #[test]
    fn the_window_caps_verbatim_turns_and_the_rest_is_summarized_or_dropped() {
        let m = Memory::empty();
        let mut history: Vec<TurnRecord> = (0..20).map(|i| turn(i, 7)).collect();
        history[2] = turn_text(2, "I hate horror manga and want at most 4 volumes", 7);
        history[5] = turn_text(5, "do you have Frieren?", 7);
        history[18] = turn_text(18, "thanks!", 7);
        let (req, report) = assemble(
            Intent::Other,
            "hi",
            m.view(&memory::History::new(history.clone())),
            vec![],
            ContextBudget::default(),
        );
        // The window is the newest 8; the greeting in it is skipped, not sent.
        assert_eq!(report.history_included, 7);
        assert_eq!(report.history_summarized, 2);
        assert_eq!(report.history_dropped, 11);
        assert!(report.compressed());
        assert!(
            req.system.contains("(turn 3) I hate horror manga"),
            "{}",
            req.system
        );
        assert!(
            req.system.contains("(turn 6) do you have Frieren?"),
            "{}",
            req.system
        );
        assert!(!req.messages.iter().any(|m| m.content == "thanks!"));
    }

    #[test]
    fn preferences_are_always_sent_and_never_over_their_slot() {
        let mut m = Memory::empty();
        let mut statements = vec![
            Statement::DislikesGenre("horror".into()),
            Statement::MaxVolumes(4),
        ];
        for i in 0..8 {
            statements.push(Statement::LikesTitle(format!(
                "a long liked title number {i}"
            )));
        }
        m.preferences.apply(&PreferenceUpdate { statements }, 2);
        let history: Vec<TurnRecord> = (0..30).map(|i| turn(i, 400)).collect();
        let b = ContextBudget {
            max_input_tokens: 1_500,
            preference_tokens: 60,
            ..ContextBudget::default()
        };
        let (req, report) = assemble(
            Intent::Recommend,
            "recommend something",
            m.view(&memory::History::new(history.clone())),
            vec![item(Some(500))],
            b,
        );
        assert!(
            req.system.contains("Dislikes genres: horror"),
            "{}",
            req.system
        );
        assert!(req.system.contains("At most 4 volumes"), "{}", req.system);
        assert!(report.slots.preferences <= 60, "{report:?}");
        assert!(report.estimated_tokens <= 1_500, "{report:?}");
        assert!(
            report.history_included < 8,
            "the turns made room for the preferences"
        );
        assert_eq!(measured(&req), report.estimated_tokens);
    }

    #[test]
    fn the_rolling_summary_is_sent_and_trimmed_oldest_first() {
        let mut m = Memory::empty();
        for i in 0..40 {
            m.summary.lines.push(SummaryLine {
                turn: i,
                text: format!("the customer asked about Series Number {i} in detail"),
            });
        }
        m.summary.turns_covered = 40;
        let b = ContextBudget {
            summary_tokens: 100,
            ..ContextBudget::default()
        };
        let (req, report) = assemble(
            Intent::Other,
            "hi",
            m.view(&memory::History::default()),
            vec![],
            b,
        );
        assert!(report.slots.summary <= 100, "{report:?}");
        assert!(
            report.summary_lines > 0 && report.summary_lines < 40,
            "{report:?}"
        );
        assert!(req.system.contains("Series Number 39"), "newest kept");
        assert!(!req.system.contains("Series Number 0 "), "oldest dropped");
    }

    #[test]
    fn items_that_do_not_fit_are_trimmed_lowest_score_first() {
        let m = Memory::empty();
        let items: Vec<ContextItem> = (0..10)
            .map(|i| item_scored(&format!("s{i}"), 10.0 - i as f32, Some(500)))
            .collect();
        let one = estimate_tokens(&item_line(&items[0]));
        // The request with one item, then room for exactly two more.
        let with_one = assemble(
            Intent::Search,
            "find",
            m.view(&memory::History::default()),
            vec![items[0].clone()],
            budget(8_000),
        )
        .1
        .estimated_tokens;
        let b = budget(with_one + 2 * one + 1);
        let (req, report) = assemble(
            Intent::Search,
            "find",
            m.view(&memory::History::default()),
            items,
            b,
        );
        assert_eq!(report.items_trimmed, 7, "{report:?}");
        let kept: Vec<&str> = req
            .context
            .iter()
            .map(|i| i.doc.series_id.as_str())
            .collect();
        assert_eq!(kept, ["s0", "s1", "s2"]);
        assert!(report.estimated_tokens <= b.max_input_tokens);
    }

    #[test]
    fn a_request_longer_than_the_budget_is_cut_never_sent_whole() {
        let mut m = Memory::empty();
        m.preferences.apply(
            &PreferenceUpdate {
                statements: vec![Statement::DislikesGenre("horror".into())],
            },
            0,
        );
        let huge = "x".repeat(10_000);
        let b = ContextBudget {
            max_input_tokens: 256,
            preference_tokens: 50,
            summary_tokens: 50,
            max_history_turns: 8,
        };
        let (req, report) = assemble(
            Intent::Other,
            &huge,
            m.view(&memory::History::default()),
            vec![],
            b,
        );
        assert!(report.request_chars_cut > 0, "{report:?}");
        assert!(report.estimated_tokens <= 256, "{report:?}");
        assert_eq!(measured(&req), report.estimated_tokens);
        assert!((report.utilization() - f64::from(report.estimated_tokens) / 256.0).abs() < 1e-9);
        // At the edge: exactly the fixed slots fit, nothing is cut.
        let (_, fits) = assemble(
            Intent::Other,
            "hi",
            m.view(&memory::History::default()),
            vec![],
            b,
        );
        assert_eq!(fits.request_chars_cut, 0);
        assert!(!fits.compressed());
    }

    #[test]
    fn every_budget_from_tiny_to_large_is_respected() {
        let mut m = Memory::empty();
        m.preferences.apply(
            &PreferenceUpdate {
                statements: vec![
                    Statement::DislikesGenre("horror".into()),
                    Statement::MaxVolumes(4),
                ],
            },
            0,
        );
        let history: Vec<TurnRecord> = (0..32)
            .map(|i| turn_text(i, &format!("tell me about Series {i} please"), 200))
            .collect();
        let items: Vec<ContextItem> = (0..5)
            .map(|i| item_scored(&format!("s{i}"), 5.0 - i as f32, Some(500)))
            .collect();
        for max in (200..4_000).step_by(37) {
            let b = ContextBudget {
                max_input_tokens: max,
                preference_tokens: 60,
                summary_tokens: 80,
                max_history_turns: 8,
            };
            let (req, report) = assemble(
                Intent::Search,
                "and this one?",
                m.view(&memory::History::new(history.clone())),
                items.clone(),
                b,
            );
            assert!(report.estimated_tokens <= max, "{max}: {report:?}");
            assert_eq!(measured(&req), report.estimated_tokens, "{max}");
            assert_eq!(
                report.history_included + report.history_summarized + report.history_dropped,
                32,
                "{max}: every in-memory turn is accounted for"
            );
        }
    }
}
