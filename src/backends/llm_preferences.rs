//! The `preference_extraction` task served by a model: the message goes to the model the policy
//! routes the task to, with instructions to answer one JSON object; the answer becomes a
//! [`PreferenceUpdate`]. When the policy serves the task with a local classifier, there is no
//! model call and the session's rule-based extraction stands alone.
//!
//! The session runs this beside the turn (never before it): the local extraction applies at once,
//! the model's reading refines the preferences for the turns after. A failed, slow or
//! unparseable answer changes nothing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use mangaassist_protocols::SessionId;
use mangaassist_protocols::catalog::GENRES;
use mangaassist_protocols::memory::{PreferenceUpdate, Statement};
use mangaassist_protocols::metrics::TaskType;
use mangaassist_protocols::ports::{ModelError, ModelEvent, PreferenceExtractor};
use mangaassist_protocols::turn::{ChatMessage, Intent, ModelRequest, Role, estimate_tokens};
use serde::Deserialize;

use crate::policy::router::ModelRouter;

/// The instructions; the genre list is the catalog vocabulary.
fn instructions() -> String {
    format!(
        "Read the customer's message to a manga shop and extract only the preferences it states. \
         Answer with one JSON object and nothing else, with these optional keys: \
         likes_genres, dislikes_genres (lists, only from: {}), likes_titles, dislikes_titles \
         (lists of titles as written), max_volumes (integer), budget_jpy (integer, yen per \
         volume), reader_age (integer), language (a word). Leave out what the message does not \
         state; answer {{}} when it states nothing.",
        GENRES.join(", ")
    )
}

/// The model's answer.
#[derive(Debug, Default, Deserialize)]
struct Answer {
    #[serde(default)]
    likes_genres: Vec<String>,
    #[serde(default)]
    dislikes_genres: Vec<String>,
    #[serde(default)]
    likes_titles: Vec<String>,
    #[serde(default)]
    dislikes_titles: Vec<String>,
    max_volumes: Option<u32>,
    budget_jpy: Option<u32>,
    reader_age: Option<u32>,
    language: Option<String>,
}

/// Parses the model's answer: the first `{` to the last `}` (models wrap JSON in prose or code
/// fences), genres kept only when they are in the vocabulary, text lowercased and trimmed.
pub fn parse_answer(text: &str) -> Result<PreferenceUpdate, String> {
    let (Some(start), Some(end)) = (text.find('{'), text.rfind('}')) else {
        return Err(format!("no JSON object in {text:?}"));
    };
    if end < start {
        return Err(format!("no JSON object in {text:?}"));
    }
    let a: Answer = serde_json::from_str(&text[start..=end]).map_err(|e| e.to_string())?;
    let clean = |s: &str| s.trim().to_lowercase();
    let genre = |g: &String| {
        let g = clean(g).replace(' ', "-");
        GENRES.contains(&g.as_str()).then_some(g)
    };
    let mut statements = Vec::new();
    statements.extend(
        a.likes_genres
            .iter()
            .filter_map(genre)
            .map(Statement::LikesGenre),
    );
    statements.extend(
        a.dislikes_genres
            .iter()
            .filter_map(genre)
            .map(Statement::DislikesGenre),
    );
    let title = |t: &String| Some(clean(t)).filter(|t| !t.is_empty() && t.len() <= 80);
    statements.extend(
        a.likes_titles
            .iter()
            .filter_map(title)
            .map(Statement::LikesTitle),
    );
    statements.extend(
        a.dislikes_titles
            .iter()
            .filter_map(title)
            .map(Statement::DislikesTitle),
    );
    statements.extend(a.max_volumes.filter(|n| *n > 0).map(Statement::MaxVolumes));
    statements.extend(a.budget_jpy.filter(|n| *n > 0).map(Statement::BudgetJpy));
    statements.extend(
        a.reader_age
            .filter(|n| (5..=99).contains(n))
            .map(Statement::ReaderAge),
    );
    statements.extend(
        a.language
            .map(|l| clean(&l))
            .filter(|l| !l.is_empty() && l.len() <= 20)
            .map(Statement::Language),
    );
    Ok(PreferenceUpdate { statements })
}

/// Most time the model gets for one extraction.
const EXTRACTION_DEADLINE: Duration = Duration::from_secs(5);

/// One text call of `task` through the router: `system`, then `user`; the whole answer, within
/// [`EXTRACTION_DEADLINE`]. Shared by the model-served memory tasks.
pub(crate) async fn ask(
    router: &Arc<ModelRouter>,
    task: TaskType,
    session: &SessionId,
    system: String,
    user: String,
) -> Result<String, ModelError> {
    let request = ModelRequest {
        intent: Intent::Other,
        estimated_input_tokens: estimate_tokens(&system) + estimate_tokens(&user),
        system,
        messages: vec![ChatMessage {
            role: Role::User,
            content: user,
        }],
        context: Vec::new(),
        constraints: Vec::new(),
        session: Some(session.clone()),
    };
    let collect = async {
        let mut stream = router.stream(task, request);
        let mut answer = String::new();
        while let Some(ev) = stream.next().await {
            if let ModelEvent::Token(t) = ev? {
                answer.push_str(&t);
            }
        }
        Ok::<_, ModelError>(answer)
    };
    tokio::time::timeout(EXTRACTION_DEADLINE, collect)
        .await
        .map_err(|_| ModelError::Timeout(format!("{task} took too long")))?
}

/// [`PreferenceExtractor`] through the policy router.
pub struct RoutedPreferences(pub Arc<ModelRouter>);

#[async_trait]
impl PreferenceExtractor for RoutedPreferences {
    async fn extract(
        &self,
        session: &SessionId,
        text: &str,
    ) -> Result<Option<PreferenceUpdate>, ModelError> {
        let task = TaskType::PreferenceExtraction;
        if self.0.serves_locally(task, Some(session)) {
            return Ok(None);
        }
        let answer = ask(&self.0, task, session, instructions(), text.to_owned()).await?;
        parse_answer(&answer)
            .map(Some)
            .map_err(|e| ModelError::Stream(format!("unusable preference answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_leniently_and_keep_only_the_vocabulary() {
        let u = parse_answer(
            "Sure! ```json\n{\"dislikes_genres\": [\"Horror\", \"gore\"], \"max_volumes\": 4, \
             \"likes_titles\": [\" Frieren \"], \"reader_age\": 200}\n```",
        )
        .unwrap();
        assert_eq!(
            u.statements,
            [
                Statement::DislikesGenre("horror".into()),
                Statement::LikesTitle("frieren".into()),
                Statement::MaxVolumes(4),
            ]
        );
        assert!(parse_answer("{}").unwrap().is_empty());
        assert!(parse_answer("I cannot help with that").is_err());
        assert!(parse_answer("{\"max_volumes\": \"four\"}").is_err());
        assert_eq!(
            parse_answer("{\"likes_genres\": [\"slice of life\"]}")
                .unwrap()
                .statements,
            [Statement::LikesGenre("slice-of-life".into())]
        );
    }
}
