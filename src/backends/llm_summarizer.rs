//! The `summarization` task served by a model: the turns leaving a session's memory go to the
//! model the policy routes the task to, which answers one line per turn worth remembering
//! (`turn N: ...`). When the policy serves the task in-process (the simulated model stands in for
//! answers and cannot summarize), there is no model call and the session's extractive summary
//! stands alone. The session runs this beside the turns: the extractive lines apply at once, the
//! model's lines replace them for the same turns when they arrive.

use std::sync::Arc;

use async_trait::async_trait;
use mangaassist_protocols::SessionId;
use mangaassist_protocols::memory::SummaryLine;
use mangaassist_protocols::metrics::TaskType;
use mangaassist_protocols::ports::{ModelError, Summarizer};
use mangaassist_protocols::turn::TurnRecord;

use super::llm_preferences::ask;
use crate::policy::router::ModelRouter;

const INSTRUCTIONS: &str = "You keep the memory of a manga shop's chat assistant. For each turn \
below, write one short line with what the customer said that the assistant must remember later: \
preferences, constraints, names, numbers. Skip turns with nothing to remember. Answer only with \
lines of the form `turn N: ...`, N being the turn's number as given.";

/// The turns as the model reads them: `turn N: customer said: ...` (N counted from 1).
pub fn turns_text(turns: &[TurnRecord]) -> String {
    let mut out = String::from("Turns to summarize:\n");
    for t in turns {
        out.push_str(&format!(
            "turn {}: customer said: {}\n",
            t.index + 1,
            t.user_text.trim()
        ));
    }
    out
}

/// Parses `turn N: text` lines, keeping only turns that were asked about (N counted from 1);
/// other lines are ignored. Texts are cut to 200 characters.
pub fn parse_lines(answer: &str, turns: &[TurnRecord]) -> Vec<SummaryLine> {
    let mut out: Vec<SummaryLine> = Vec::new();
    for line in answer.lines() {
        let line = line.trim().trim_start_matches(['-', '*', ' ']);
        let Some(rest) = line
            .strip_prefix("turn ")
            .or_else(|| line.strip_prefix("Turn "))
        else {
            continue;
        };
        let Some((n, text)) = rest.split_once(':') else {
            continue;
        };
        let (Ok(n), text) = (n.trim().parse::<u32>(), text.trim()) else {
            continue;
        };
        let Some(turn) = n
            .checked_sub(1)
            .filter(|i| turns.iter().any(|t| t.index == *i))
        else {
            continue;
        };
        if text.is_empty() || out.iter().any(|l| l.turn == turn) {
            continue;
        }
        out.push(SummaryLine {
            turn,
            text: text.chars().take(200).collect(),
        });
    }
    out.sort_by_key(|l| l.turn);
    out
}

/// [`Summarizer`] through the policy router.
pub struct RoutedSummarizer(pub Arc<ModelRouter>);

#[async_trait]
impl Summarizer for RoutedSummarizer {
    async fn summarize(
        &self,
        session: &SessionId,
        turns: &[TurnRecord],
    ) -> Result<Option<Vec<SummaryLine>>, ModelError> {
        let task = TaskType::Summarization;
        if turns.is_empty() || self.0.serves_locally(task, Some(session)) {
            return Ok(None);
        }
        let answer = ask(
            &self.0,
            task,
            session,
            INSTRUCTIONS.to_owned(),
            turns_text(turns),
        )
        .await?;
        Ok(Some(parse_lines(&answer, turns)))
    }
}

#[cfg(test)]
mod tests {
    use mangaassist_protocols::frame::FinishReason;
    use mangaassist_protocols::turn::{Intent, Usage};
    use mangaassist_protocols::{TurnId, UserId};

    use super::*;

    fn turn(i: u32, text: &str) -> TurnRecord {
        TurnRecord {
            session_id: SessionId::parse("s").unwrap(),
            user_id: UserId::parse("reader").unwrap(),
            turn_id: TurnId::parse(&format!("t{i}")).unwrap(),
            index: i,
            user_text: text.into(),
            answer_text: String::new(),
            intent: Intent::Other,
            started_at_ms: 0,
            finished_at_ms: 0,
            usage: Usage::default(),
            finish_reason: FinishReason::Stop,
            retrieval_mode: None,
        }
    }

    #[test]
    fn lines_are_kept_only_for_the_turns_asked_about() {
        let turns = [turn(2, "no horror"), turn(3, "hi")];
        assert!(turns_text(&turns).contains("turn 3: customer said: no horror"));
        let answer = "Here you go:\n- turn 3: dislikes horror\nturn 9: invented\nTurn 4: nothing\nturn 3: again\nturn x: bad";
        assert_eq!(
            parse_lines(answer, &turns),
            [
                SummaryLine {
                    turn: 2,
                    text: "dislikes horror".into()
                },
                SummaryLine {
                    turn: 3,
                    text: "nothing".into()
                },
            ]
        );
        assert!(parse_lines("I cannot", &turns).is_empty());
    }
}
