//! The local memory helpers of a session: a rule-and-pattern preference extractor, the test for
//! messages that carry nothing worth remembering (greetings, navigation), and an extractive
//! summarizer for turns older than the verbatim window. Pure functions, microseconds per message:
//! they run on the session's task, never on the token path.
//!
//! These are the `preference_extraction` and `summarization` tasks' local defaults; an
//! LLM-backed version would implement the same contracts.

use std::sync::{Arc, LazyLock};

use mangaassist_protocols::catalog::GENRES;
use mangaassist_protocols::memory::{
    PreferenceUpdate, Preferences, SessionSummary, Statement, SummaryLine,
};
use mangaassist_protocols::turn::{TurnRecord, estimate_tokens};
use regex::Regex;

/// Words that say the customer does not want something; checked before the likes ("don't like"
/// holds "like").
const DISLIKE_CUES: [&str; 17] = [
    "don't like",
    "dont like",
    "do not like",
    "don't want",
    "do not want",
    "dislike",
    "hate",
    "can't stand",
    "cannot stand",
    "not a fan of",
    "not into",
    "no more",
    "avoid",
    "tired of",
    "sick of",
    "not interested in",
    "nothing with",
];

/// Words that say the customer likes something.
const LIKE_CUES: [&str; 15] = [
    "love",
    "loved",
    "like",
    "liked",
    "enjoy",
    "enjoyed",
    "into",
    "fan of",
    "favorite",
    "favourite",
    "adore",
    "adored",
    "prefer",
    "want",
    "more of",
];

/// Other names of genres, to the vocabulary's.
const GENRE_ALIASES: [(&str, &str); 12] = [
    ("science fiction", "sci-fi"),
    ("sci fi", "sci-fi"),
    ("scifi", "sci-fi"),
    ("slice of life", "slice-of-life"),
    ("martial arts", "martial-arts"),
    ("post apocalyptic", "post-apocalyptic"),
    ("romcom", "romance"),
    ("rom-com", "romance"),
    ("scary", "horror"),
    ("gore", "horror"),
    ("sport", "sports"),
    ("robots", "mecha"),
];

#[allow(
    clippy::expect_used,
    reason = "a literal pattern: a typo fails every test of this module"
)]
static MAX_VOLUMES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?:(at most|no more than|not more than|maximum of|max(?:imum)?|up to|under|less than|fewer than|below)\s+(\d{1,4})\s*(?:volumes?|vols?\.?|books?)|(\d{1,4})\s*(?:volumes?|vols?\.?)\s*(?:or less|or fewer|max(?:imum)?|at most|tops))",
    )
    .expect("valid regex")
});

#[allow(
    clippy::expect_used,
    reason = "a literal pattern: a typo fails every test of this module"
)]
static BUDGET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?:(?:budget(?: is| of)?|under|below|less than|at most|no more than|max(?:imum)?|up to)\s*(?:¥|yen\s*)?(\d{2,6})\s*(?:yen|jpy|円)|(?:budget(?: is| of)?|under|below|less than|at most|no more than|up to)\s*¥\s*(\d{2,6}))",
    )
    .expect("valid regex")
});

#[allow(
    clippy::expect_used,
    reason = "a literal pattern: a typo fails every test of this module"
)]
static AGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?:\bi(?:'m| am)\s+(\d{1,2})(?:\s*(?:years? old|yo))?\b|\b(\d{1,2})[- ]year[- ]old\b|\bmy (?:son|daughter|kid|child|nephew|niece) is (\d{1,2})\b)",
    )
    .expect("valid regex")
});

#[allow(
    clippy::expect_used,
    reason = "a literal pattern: a typo fails every test of this module"
)]
static LANGUAGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:in|read(?:s|ing)?|only)\s+(english|japanese|french|spanish|german)\b")
        .expect("valid regex")
});

/// A capitalized run of words after a like or dislike cue, in the original text: a title.
#[allow(
    clippy::expect_used,
    reason = "a literal pattern: a typo fails every test of this module"
)]
static TITLE_AFTER_CUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(?:the manga |the series )?((?:[A-Z0-9][\w'’:!-]*)(?:\s+(?:of|the|no|to|and|in|on|at|for|with|from|a|[A-Z0-9][\w'’:!-]*)){0,6})")
        .expect("valid regex")
});

/// The genres named in `clause` (lowercase), vocabulary and aliases, each once, with the words
/// that named it.
fn genres_in(clause: &str) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for g in GENRES {
        let spaced = g.replace('-', " ");
        for word in [g.to_string(), spaced] {
            if contains_word(clause, &word) && !out.iter().any(|(o, _)| *o == g) {
                out.push((g, word));
            }
        }
    }
    for (alias, g) in GENRE_ALIASES {
        if contains_word(clause, alias) && !out.iter().any(|(o, _)| *o == g) {
            out.push((g, alias.to_string()));
        }
    }
    out
}

/// Whether `word` occurs in `text` with a non-alphanumeric character (or the edge) on each side.
fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        let edge = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
        edge(before) && (edge(after) || after == Some('s'))
    })
}

/// The title a cue introduces in `original` (same byte offsets as the lowercase clause), if the
/// words after the cue are capitalized.
fn title_after(original: &str, after: usize) -> Option<String> {
    let rest = original.get(after..)?;
    let caps = TITLE_AFTER_CUE.captures(rest)?;
    let title = caps.get(1)?.as_str().trim();
    let mut words: Vec<&str> = title.split_whitespace().collect();
    const CONNECTORS: [&str; 12] = [
        "of", "the", "no", "to", "and", "in", "on", "at", "for", "with", "from", "a",
    ];
    while words.last().is_some_and(|w| CONNECTORS.contains(w)) {
        words.pop();
    }
    let title = words
        .join(" ")
        .trim_end_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    const NOT_TITLES: [&str; 4] = ["i", "it", "manga", "anime"];
    (!title.is_empty() && title.len() <= 60 && !NOT_TITLES.contains(&title.as_str()))
        .then_some(title)
}

/// Splits a message into clauses at sentence punctuation and "but", keeping byte offsets.
fn clauses(lower: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = lower.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let cut = match bytes[i] {
            b'.' | b',' | b';' | b'!' | b'?' => Some(1),
            b' ' if lower[i..].starts_with(" but ") => Some(5),
            _ => None,
        };
        if let Some(len) = cut {
            out.push((start, &lower[start..i]));
            start = i + len;
            i += len;
        } else {
            i += 1;
        }
    }
    out.push((start, &lower[start..]));
    out
}

/// What a session remembers beyond its verbatim turns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionMemory {
    /// Stated preferences, always in context.
    pub preferences: Preferences,
    /// What the turns older than the session's in-memory history said.
    pub summary: SessionSummary,
}

impl SessionMemory {
    /// Rebuilt from a whole transcript (oldest first), as after a restart: the preferences of
    /// every turn in order, and the summary of the turns before the last `in_memory`.
    pub fn rebuild(all: &[TurnRecord], in_memory: usize, summary_tokens: u32) -> Self {
        let mut m = SessionMemory::default();
        for t in all {
            m.note(&t.user_text, t.index);
        }
        let older = all.len().saturating_sub(in_memory);
        fold_into(&mut m.summary, &all[..older], summary_tokens);
        m
    }

    /// Applies what a message (turn `index`) states; true when it stated something.
    pub fn note(&mut self, text: &str, index: u32) -> bool {
        let update = extract_preferences(text);
        self.preferences.apply(&update, index);
        !update.is_empty()
    }
}

/// The preferences stated in one message (rule and pattern based).
pub fn extract_preferences(text: &str) -> PreferenceUpdate {
    // Lowercasing ASCII keeps byte offsets aligned with `text` for title capture.
    let lower = text.to_ascii_lowercase().replace('’', "'");
    let original = text.replace('’', "'");
    let mut statements = Vec::new();
    for (offset, clause) in clauses(&lower) {
        let dislike = DISLIKE_CUES
            .iter()
            .find_map(|c| clause.find(c).map(|i| (i, c.len())));
        let like = || {
            LIKE_CUES
                .iter()
                .filter_map(|c| {
                    clause
                        .match_indices(c)
                        .find(|(i, _)| contains_word(&clause[*i..], c))
                        .map(|(i, _)| (i, c.len()))
                })
                .min()
        };
        // "no horror", "without romance": a dislike without a verb.
        let bare_no = |word: &str| {
            ["no ", "without ", "nothing ", "not "]
                .iter()
                .any(|p| contains_word(clause, &format!("{p}{word}")))
        };
        let genres = genres_in(clause);
        let (polarity, cue_end) = match (dislike, genres.iter().any(|(_, w)| bare_no(w))) {
            (Some((i, len)), _) => (Some(false), Some(i + len)),
            (None, true) => (Some(false), None),
            (None, false) => match like() {
                Some((i, len)) => (Some(true), Some(i + len)),
                None => (None, None),
            },
        };
        let Some(likes) = polarity else { continue };
        if !genres.is_empty() {
            for (g, _) in genres {
                statements.push(if likes {
                    Statement::LikesGenre(g.to_owned())
                } else {
                    Statement::DislikesGenre(g.to_owned())
                });
            }
        } else if let Some(end) = cue_end
            && let Some(title) = title_after(&original, offset + end)
        {
            statements.push(if likes {
                Statement::LikesTitle(title)
            } else {
                Statement::DislikesTitle(title)
            });
        }
    }
    if let Some(c) = MAX_VOLUMES.captures(&lower) {
        let strict = c
            .get(1)
            .is_some_and(|w| ["under", "less than", "fewer than", "below"].contains(&w.as_str()));
        let n: Option<u32> = c.get(2).or(c.get(3)).and_then(|m| m.as_str().parse().ok());
        if let Some(n) = n {
            let n = if strict { n.saturating_sub(1) } else { n };
            if n > 0 {
                statements.push(Statement::MaxVolumes(n));
            }
        }
    }
    if let Some(c) = BUDGET.captures(&lower)
        && let Some(n) = c.get(1).or(c.get(2)).and_then(|m| m.as_str().parse().ok())
    {
        statements.push(Statement::BudgetJpy(n));
    }
    if let Some(c) = AGE.captures(&lower)
        && let Some(n) = c
            .get(1)
            .or(c.get(2))
            .or(c.get(3))
            .and_then(|m| m.as_str().parse::<u32>().ok())
        && (5..=99).contains(&n)
    {
        statements.push(Statement::ReaderAge(n));
    }
    if let Some(c) = LANGUAGE.captures(&lower) {
        statements.push(Statement::Language(c[1].to_owned()));
    }
    PreferenceUpdate { statements }
}

/// Messages that carry nothing to remember: greetings, thanks, yes/no, "show me more".
const NAVIGATION: [&str; 28] = [
    "hi",
    "hello",
    "hey",
    "yo",
    "thanks",
    "thank you",
    "thx",
    "ok",
    "okay",
    "yes",
    "yeah",
    "yep",
    "no",
    "nope",
    "sure",
    "cool",
    "great",
    "nice",
    "more",
    "show me more",
    "more please",
    "next",
    "go on",
    "continue",
    "bye",
    "good morning",
    "good evening",
    "what else",
];

/// Whether a message is pure navigation or a greeting: nothing in it needs remembering.
pub fn is_navigation(text: &str) -> bool {
    let t = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .to_lowercase();
    NAVIGATION.contains(&t.as_str()) || t.is_empty()
}

/// Whether a turn carries something a summary must keep: a preference, a number, or a name
/// (a capitalized word past the first).
pub fn is_informative(text: &str) -> bool {
    if !extract_preferences(text).is_empty() {
        return true;
    }
    if text.chars().any(|c| c.is_ascii_digit()) {
        return true;
    }
    text.split_whitespace()
        .skip(1)
        .any(|w| w.chars().next().is_some_and(char::is_uppercase))
}

/// Longest summary line, in characters.
const LINE_CHARS: usize = 160;

/// The summary line of one turn: the customer's words, cut at a sentence or [`LINE_CHARS`];
/// `None` for a turn with nothing to keep ([`is_navigation`], or not [`is_informative`]).
pub fn summarize_turn(turn: &TurnRecord) -> Option<SummaryLine> {
    let text = turn.user_text.trim();
    if is_navigation(text) || !is_informative(text) {
        return None;
    }
    let mut kept: String = text.chars().take(LINE_CHARS).collect();
    if kept.len() < text.len() {
        kept.push('…');
    }
    Some(SummaryLine {
        turn: turn.index,
        text: kept,
    })
}

/// Folds `turns` (oldest first, older than the verbatim window) into `summary`, then drops its
/// oldest lines until it fits `max_tokens` when rendered. Returns how many turns gave a line.
pub fn fold_into(summary: &mut SessionSummary, turns: &[TurnRecord], max_tokens: u32) -> u32 {
    let mut added = 0;
    for t in turns {
        if t.index < summary.turns_covered {
            continue;
        }
        if let Some(line) = summarize_turn(t) {
            summary.lines.push(line);
            added += 1;
        }
        summary.turns_covered = t.index + 1;
    }
    trim_oldest(summary, |text| estimate_tokens(text) <= max_tokens);
    added
}

/// Puts `lines` (a model's summary of some turns) in place of the summary's lines for the same
/// turns, keeps the lines in turn order, then drops the oldest until the block fits
/// `max_tokens`. Returns how many lines were put in.
pub fn replace_lines(
    summary: &mut SessionSummary,
    lines: Vec<SummaryLine>,
    max_tokens: u32,
) -> usize {
    let n = lines.len();
    summary
        .lines
        .retain(|old| !lines.iter().any(|l| l.turn == old.turn));
    summary.lines.extend(lines);
    summary.lines.sort_by_key(|l| l.turn);
    trim_oldest(summary, |text| estimate_tokens(text) <= max_tokens);
    n
}

/// The summary block as sent to the model; empty when there is nothing.
pub fn render_summary(summary: &SessionSummary) -> String {
    render_lines(&summary.lines)
}

fn render_lines(lines: &[SummaryLine]) -> String {
    use std::fmt::Write as _;
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from("Earlier in this conversation, the customer said:\n");
    for l in lines {
        let _ = writeln!(out, "- (turn {}) {}", l.turn + 1, l.text);
    }
    out
}

/// Drops the oldest lines of `summary` until its block `fits` (or no line is left), and
/// returns the block. A block with fewer lines is never longer, so the fewest lines to drop
/// are found by bisection: a handful of renders, not one per line dropped.
pub fn trim_oldest(summary: &mut SessionSummary, fits: impl Fn(&str) -> bool) -> String {
    let whole = render_summary(summary);
    if fits(&whole) {
        return whole;
    }
    // Dropping `lo` lines does not fit; dropping `hi` does (all of them is accepted as is).
    let (mut lo, mut hi) = (0, summary.lines.len());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(&render_lines(&summary.lines[mid..])) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    summary.lines.drain(..hi);
    render_summary(summary)
}

/// The turns a session holds in memory, oldest first, each with its summary line
/// ([`summarize_turn`]) worked out once, when the turn joins: assembly needs the lines of every
/// turn outside the verbatim window on every turn, and the extractor behind them costs
/// microseconds per message. Cheap to clone.
#[derive(Debug, Clone)]
pub struct History {
    turns: Arc<[TurnRecord]>,
    lines: Arc<[Option<SummaryLine>]>,
}

impl Default for History {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl History {
    /// `turns` (oldest first), with their summary lines.
    pub fn new(turns: Vec<TurnRecord>) -> Self {
        let lines = turns.iter().map(summarize_turn).collect();
        Self {
            turns: turns.into(),
            lines,
        }
    }

    /// The turns, oldest first.
    pub fn turns(&self) -> &[TurnRecord] {
        &self.turns
    }

    /// The summary line of the turn at `position` in [`History::turns`], if it has one.
    pub fn line(&self, position: usize) -> Option<&SummaryLine> {
        self.lines.get(position)?.as_ref()
    }

    /// This history with `record` added, holding at most `keep` turns; and the turns that left
    /// it, oldest first.
    pub fn push(&self, record: TurnRecord, keep: usize) -> (Self, Vec<TurnRecord>) {
        let mut lines = self.lines.to_vec();
        lines.push(summarize_turn(&record));
        let mut turns = self.turns.to_vec();
        turns.push(record);
        let leave = turns.len().saturating_sub(keep);
        let kept = Self {
            turns: turns.split_off(leave).into(),
            lines: lines.split_off(leave).into(),
        };
        (kept, turns)
    }
}

#[cfg(test)]
mod tests {
    use mangaassist_protocols::frame::FinishReason;
    use mangaassist_protocols::turn::{Intent, Usage};
    use mangaassist_protocols::{SessionId, TurnId, UserId};

    use super::*;

    fn said(text: &str) -> Vec<Statement> {
        extract_preferences(text).statements
    }

    fn g(s: &str) -> Statement {
        Statement::DislikesGenre(s.into())
    }

    #[test]
    fn dislikes_and_likes_of_genres() {
        assert_eq!(said("I hate horror manga"), [g("horror")]);
        assert_eq!(
            said("honestly i don't like romance or sports"),
            [g("romance"), g("sports")]
        );
        assert_eq!(said("no horror please"), [g("horror")]);
        assert_eq!(said("nothing scary, my kid reads it"), [g("horror")]);
        assert_eq!(
            said("I love sci fi but I can't stand isekai."),
            [Statement::LikesGenre("sci-fi".into()), g("isekai")]
        );
        assert_eq!(
            said("I'm really into slice of life"),
            [Statement::LikesGenre("slice-of-life".into())]
        );
        // Controls: a genre without a stance, a stance without an object.
        assert!(said("do you have horror manga?").is_empty());
        assert!(said("what do you like?").is_empty());
        assert!(said("show me action").is_empty());
    }

    #[test]
    fn titles_after_a_cue_when_capitalized() {
        assert_eq!(
            said("I loved Berserk"),
            [Statement::LikesTitle("berserk".into())]
        );
        assert_eq!(
            said("I can't stand Attack on Titan anymore"),
            [Statement::DislikesTitle("attack on titan".into())]
        );
        assert!(said("I loved it").is_empty());
        assert_eq!(
            said("I liked Frieren and the rest"),
            [Statement::LikesTitle("frieren".into())]
        );
    }

    #[test]
    fn numbers_volumes_budget_age_language() {
        assert_eq!(
            said("series of at most 4 volumes"),
            [Statement::MaxVolumes(4)]
        );
        assert_eq!(said("under 5 volumes please"), [Statement::MaxVolumes(4)]);
        assert_eq!(said("10 volumes or less"), [Statement::MaxVolumes(10)]);
        assert_eq!(said("my budget is 800 yen"), [Statement::BudgetJpy(800)]);
        assert_eq!(said("under ¥700"), [Statement::BudgetJpy(700)]);
        assert_eq!(said("it's for my 12-year-old"), [Statement::ReaderAge(12)]);
        assert_eq!(said("I'm 15"), [Statement::ReaderAge(15)]);
        assert_eq!(
            said("I only read english"),
            [Statement::Language("english".into())]
        );
        assert!(said("do you have volume 4 of Frieren?").is_empty());
    }

    #[test]
    fn the_issue_s_turn_three() {
        assert_eq!(
            said("I hate horror manga, and I want series of at most 4 volumes."),
            [g("horror"), Statement::MaxVolumes(4)]
        );
    }

    #[test]
    fn navigation_carries_nothing() {
        for t in [
            "hi",
            "Thanks!",
            "yes",
            "show me more",
            "  ok. ",
            "More please",
        ] {
            assert!(is_navigation(t), "{t}");
        }
        for t in [
            "hi, I want Frieren",
            "yes the second one by Oda",
            "no horror",
        ] {
            assert!(!is_navigation(t), "{t}");
        }
    }

    fn turn(i: u32, text: &str) -> TurnRecord {
        TurnRecord {
            session_id: SessionId::parse("s").unwrap(),
            user_id: UserId::parse("reader").unwrap(),
            turn_id: TurnId::parse(&format!("t{i}")).unwrap(),
            index: i,
            user_text: text.into(),
            answer_text: "a".repeat(50),
            intent: Intent::Other,
            started_at_ms: 0,
            finished_at_ms: 0,
            usage: Usage::default(),
            finish_reason: FinishReason::Stop,
            retrieval_mode: None,
        }
    }

    #[test]
    fn trimming_by_bisection_drops_what_dropping_line_by_line_would() {
        let lines: Vec<SummaryLine> = (0..40)
            .map(|i| SummaryLine {
                turn: i,
                text: "x".repeat(5 + (i as usize * 7) % 60),
            })
            .collect();
        let whole = SessionSummary {
            lines,
            ..SessionSummary::default()
        };
        for max in [0, 1, 14, 15, 40, 100, 333, 500, 10_000] {
            let fits = |text: &str| estimate_tokens(text) <= max;
            let mut one_by_one = whole.clone();
            while !one_by_one.lines.is_empty() && !fits(&render_summary(&one_by_one)) {
                one_by_one.lines.remove(0);
            }
            let mut bisected = whole.clone();
            let text = trim_oldest(&mut bisected, fits);
            assert_eq!(bisected.lines, one_by_one.lines, "max {max}");
            assert_eq!(text, render_summary(&one_by_one), "max {max}");
        }
    }

    #[test]
    fn a_history_works_each_line_out_once_and_keeps_the_newest_turns() {
        let (history, left) = History::default().push(turn(0, "I hate horror manga"), 2);
        assert!(left.is_empty());
        let (history, left) = history.push(turn(1, "thanks"), 2);
        assert!(left.is_empty());
        let (history, left) = history.push(turn(2, "do you have Frieren?"), 2);
        assert_eq!(left.iter().map(|t| t.index).collect::<Vec<_>>(), [0]);
        assert_eq!(
            history.turns().iter().map(|t| t.index).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(history.line(0), None, "\"thanks\" has nothing to keep");
        assert_eq!(
            history.line(1),
            summarize_turn(&turn(2, "do you have Frieren?")).as_ref()
        );
        assert_eq!(history.line(2), None, "past the end");
        let rebuilt = History::new(history.turns().to_vec());
        assert_eq!(rebuilt.line(1), history.line(1));
    }

    #[test]
    fn the_summary_keeps_what_matters_within_its_budget() {
        let turns = vec![
            turn(0, "hi"),
            turn(1, "what do you have"),
            turn(2, "I hate horror manga"),
            turn(3, "thanks"),
            turn(4, "do you have Frieren?"),
        ];
        let mut s = SessionSummary::default();
        assert_eq!(fold_into(&mut s, &turns, 1_000), 2);
        assert_eq!(s.turns_covered, 5);
        let text = render_summary(&s);
        assert!(text.contains("(turn 3) I hate horror manga"), "{text}");
        assert!(text.contains("(turn 5) do you have Frieren?"), "{text}");
        assert!(
            !text.contains("thanks") && !text.contains("what do you have"),
            "{text}"
        );
        // Folding the same turns again adds nothing.
        assert_eq!(fold_into(&mut s, &turns, 1_000), 0);
        // A tight budget keeps the newest lines.
        let mut small = SessionSummary::default();
        fold_into(&mut small, &turns, 25);
        assert!(estimate_tokens(&render_summary(&small)) <= 25);
        assert_eq!(small.lines.len(), 1);
        assert_eq!(small.lines[0].turn, 4);
    }
}
