//! Context assembly: turns a transcript view, grounding items and the current message into a
//! [`ModelRequest`] that fits a token budget. Pure functions, no storage types: the session hands
//! it plain records.
//!
//! Budget order: the system prompt (instructions, grounding, constraint framing) and the current
//! message always go in; recent turns fill what is left, newest first, and the rest are dropped
//! and counted in the [`AssemblyReport`].

use std::fmt::Write as _;

use mangaassist_protocols::turn::{
    ChatMessage, Constraint, ContextItem, Intent, ModelRequest, Role, TurnRecord, estimate_tokens,
};

/// Limits for one request.
#[derive(Debug, Clone, Copy)]
pub struct ContextBudget {
    /// Most prompt tokens (estimated) sent to the model.
    pub max_input_tokens: u32,
    /// Most recent turns considered for verbatim history.
    pub max_history_turns: usize,
}

impl Default for ContextBudget {
    fn default() -> Self {
        Self {
            max_input_tokens: 8_000,
            max_history_turns: 8,
        }
    }
}

/// What assembly did, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AssemblyReport {
    /// History turns included verbatim.
    pub history_included: usize,
    /// History turns left out for lack of budget.
    pub history_dropped: usize,
    /// Estimated prompt tokens.
    pub estimated_tokens: u32,
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

/// Renders the system prompt: instructions, the grounding block, then the constraint framing.
/// Without grounding for an intent that needed it ([`Constraint::NoGrounding`]), the
/// instructions are the fallback template.
pub fn system_prompt(items: &[ContextItem], constraints: &[Constraint]) -> String {
    let mut s = String::with_capacity(512 + items.len() * 256);
    if constraints.contains(&Constraint::NoGrounding) {
        s.push_str(FALLBACK_INSTRUCTIONS);
    } else {
        s.push_str(INSTRUCTIONS);
    }
    if !items.is_empty() {
        s.push_str("\n\nCatalog entries:\n");
        for it in items {
            let d = &it.doc;
            let _ = write!(
                s,
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
        }
    }
    if !constraints.is_empty() {
        s.push_str("\nRules for this answer:\n");
        for c in constraints {
            let _ = writeln!(s, "- {}", c.framing());
        }
    }
    s
}

/// Assembles one request. `history` is oldest first.
pub fn assemble(
    intent: Intent,
    user_text: &str,
    history: &[TurnRecord],
    items: Vec<ContextItem>,
    budget: ContextBudget,
) -> (ModelRequest, AssemblyReport) {
    let constraints = constraints_for(intent, &items);
    let system = system_prompt(&items, &constraints);
    let fixed = estimate_tokens(&system) + estimate_tokens(user_text);
    let mut left = budget.max_input_tokens.saturating_sub(fixed);

    let candidates = &history[history.len().saturating_sub(budget.max_history_turns)..];
    let mut kept: Vec<&TurnRecord> = Vec::new();
    for turn in candidates.iter().rev() {
        let cost = estimate_tokens(&turn.user_text) + estimate_tokens(&turn.answer_text);
        if cost > left {
            break;
        }
        left -= cost;
        kept.push(turn);
    }
    kept.reverse();
    let mut messages = Vec::with_capacity(kept.len() * 2 + 1);
    for turn in &kept {
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
        content: user_text.to_owned(),
    });
    let estimated = budget.max_input_tokens.saturating_sub(left).max(fixed);
    let report = AssemblyReport {
        history_included: kept.len(),
        history_dropped: history.len() - kept.len(),
        estimated_tokens: estimated,
    };
    (
        ModelRequest {
            intent,
            system,
            messages,
            context: items,
            constraints,
            estimated_input_tokens: estimated,
            session: None,
        },
        report,
    )
}

#[cfg(test)]
mod tests {
    use mangaassist_protocols::frame::FinishReason;
    use mangaassist_protocols::turn::{RetrievedDoc, Usage};
    use mangaassist_protocols::{SessionId, TurnId, UserId};

    use super::*;

    fn item(price: Option<u32>) -> ContextItem {
        ContextItem {
            doc: RetrievedDoc {
                series_id: "frieren".into(),
                title: "Frieren".into(),
                author: "Kanehito Yamada & Tsukasa Abe".into(),
                genres: vec!["fantasy".into()],
                demographic: "shonen".into(),
                volumes: 13,
                synopsis: "An elf mage outlives her party.".into(),
                score: 1.0,
            },
            price_jpy: price,
            stock: Some(3),
        }
    }

    fn turn(i: u32, chars: usize) -> TurnRecord {
        TurnRecord {
            session_id: SessionId::parse("s").unwrap(),
            user_id: UserId::anonymous(),
            turn_id: TurnId::parse(&format!("t{i}")).unwrap(),
            index: i,
            user_text: "u".repeat(chars),
            answer_text: "a".repeat(chars),
            intent: Intent::Search,
            started_at_ms: 0,
            finished_at_ms: 0,
            usage: Usage::default(),
            finish_reason: FinishReason::Stop,
        }
    }

    #[test]
    fn missing_price_adds_framing_and_constraint() {
        let (req, _) = assemble(
            Intent::PurchaseIntent,
            "how much?",
            &[],
            vec![item(None)],
            ContextBudget::default(),
        );
        assert_eq!(req.constraints, vec![Constraint::NoPrice]);
        assert!(req.system.contains("Do not state a specific price"));
        assert!(req.system.contains("price: unavailable"));
        let (req, _) = assemble(
            Intent::PurchaseIntent,
            "how much?",
            &[],
            vec![item(Some(500))],
            ContextBudget::default(),
        );
        assert!(req.constraints.is_empty());
        assert!(req.system.contains("price: 500 yen per volume"));
    }

    #[test]
    fn empty_retrieval_is_framed() {
        let (req, _) = assemble(Intent::Search, "zzz", &[], vec![], ContextBudget::default());
        assert_eq!(req.constraints, vec![Constraint::NoGrounding]);
        assert!(
            req.system.starts_with(FALLBACK_INSTRUCTIONS),
            "{}",
            req.system
        );
        assert!(req.system.contains("search again"));
        // Control: a greeting needs no search, and gets the normal instructions.
        let (req, _) = assemble(Intent::Other, "hi", &[], vec![], ContextBudget::default());
        assert!(req.constraints.is_empty());
        assert!(req.system.starts_with(INSTRUCTIONS));
    }

    #[test]
    fn history_fills_the_budget_newest_first() {
        let history: Vec<TurnRecord> = (0..5).map(|i| turn(i, 70)).collect(); // 20+20 tokens each
        let base = assemble(Intent::Other, "hi", &[], vec![], ContextBudget::default())
            .1
            .estimated_tokens;
        let budget = ContextBudget {
            max_input_tokens: base + 2 * 40 + 10,
            max_history_turns: 8,
        };
        let (req, report) = assemble(Intent::Other, "hi", &history, vec![], budget);
        assert_eq!(report.history_included, 2);
        assert_eq!(report.history_dropped, 3);
        assert!(report.estimated_tokens <= budget.max_input_tokens);
        // The two newest turns, oldest first, then the current message.
        assert_eq!(req.messages.len(), 5);
        assert_eq!(req.messages[4].content, "hi");
    }

    #[test]
    fn history_window_caps_turns_even_with_room() {
        let history: Vec<TurnRecord> = (0..20).map(|i| turn(i, 7)).collect();
        let (_, report) = assemble(
            Intent::Other,
            "hi",
            &history,
            vec![],
            ContextBudget::default(),
        );
        assert_eq!(report.history_included, 8);
        assert_eq!(report.history_dropped, 12);
    }
}
