//! Typed payloads of a turn, in the order they appear: intent, retrieved documents, enrichment,
//! the assembled model request, stream events, usage, and the transcript record.

use serde::{Deserialize, Serialize};

use crate::frame::FinishReason;
use crate::ids::{SessionId, TurnId, UserId};

/// What the user wants from this message (see data/README.md for the definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Exploring a category with no specific target.
    Browse,
    /// A specific title, author or volume is sought.
    Search,
    /// Asks for suggestions from taste.
    Recommend,
    /// Price, stock, cart, checkout or shipping of a product.
    PurchaseIntent,
    /// Greetings, account, off-topic, complaints.
    Other,
}

impl Intent {
    /// Every intent, for exhaustive metric labels.
    pub const ALL: [Intent; 5] = [
        Intent::Browse,
        Intent::Search,
        Intent::Recommend,
        Intent::PurchaseIntent,
        Intent::Other,
    ];

    /// The wire and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Browse => "browse",
            Intent::Search => "search",
            Intent::Recommend => "recommend",
            Intent::PurchaseIntent => "purchase_intent",
            Intent::Other => "other",
        }
    }

    /// Whether answering this intent needs catalog retrieval at all.
    pub fn wants_retrieval(self) -> bool {
        !matches!(self, Intent::Other)
    }
}

/// A classifier's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The chosen intent.
    pub intent: Intent,
    /// Score of the chosen intent in 0..=1.
    pub confidence: f32,
    /// Which classifier decided (model id or `local`).
    pub classifier: String,
}

/// One catalog document found by retrieval: facts about the work only, no store fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievedDoc {
    /// Series slug.
    pub series_id: String,
    /// Title.
    pub title: String,
    /// Author(s).
    pub author: String,
    /// Genres.
    pub genres: Vec<String>,
    /// Demographic.
    pub demographic: String,
    /// Volumes published.
    pub volumes: u32,
    /// Premise.
    pub synopsis: String,
    /// Relevance score from the retriever.
    pub score: f32,
}

/// An enrichment field. Mandatory fields are looked up before the stream under a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrichmentField {
    /// Price per volume.
    Price,
    /// Units in stock.
    Stock,
}

impl EnrichmentField {
    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrichmentField::Price => "price",
            EnrichmentField::Stock => "stock",
        }
    }
}

/// Store facts for one series. `None` means unknown: the answer must not invent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrichment {
    /// Series slug.
    pub series_id: String,
    /// Price per volume in yen.
    pub price_jpy: Option<u32>,
    /// Units in stock.
    pub stock: Option<u32>,
}

/// A grounding item handed to the model: a document plus whatever enrichment arrived in budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextItem {
    /// The document.
    pub doc: RetrievedDoc,
    /// Price, if enrichment delivered it in budget.
    pub price_jpy: Option<u32>,
    /// Stock, if enrichment delivered it in budget.
    pub stock: Option<u32>,
}

/// A rule the answer must obey, rendered into the prompt as explicit framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// Price data missed its budget: state no price.
    NoPrice,
    /// Stock data missed its budget: state no availability.
    NoStock,
    /// Retrieval found nothing: answer with a caveat, invent no titles.
    NoGrounding,
}

impl Constraint {
    /// The framing sentence placed in the system prompt.
    pub fn framing(self) -> &'static str {
        match self {
            Constraint::NoPrice => {
                "Price data is not available for this request. Do not state a specific price. \
                 Direct the user to the product page for current pricing."
            }
            Constraint::NoStock => {
                "Stock data is not available for this request. Do not say whether an item is in \
                 stock. Direct the user to the product page for availability."
            }
            Constraint::NoGrounding => {
                "No catalog results were found for this request. Say so, do not invent titles, \
                 and offer to search again or browse by genre."
            }
        }
    }
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The customer.
    User,
    /// The assistant.
    Assistant,
}

/// One chat message in a model request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

/// Everything a model needs for one answer, assembled under a token budget.
///
/// `system` and `messages` are the prompt a real model reads; `context` and `constraints` are the
/// same facts in structured form, which the simulated model grounds its answer on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    /// The classified intent.
    pub intent: Intent,
    /// System prompt: instructions, grounding block, constraint framing.
    pub system: String,
    /// Recent turns then the current user message, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Grounding items.
    pub context: Vec<ContextItem>,
    /// Rules the answer must obey.
    pub constraints: Vec<Constraint>,
    /// Estimated prompt tokens (about 3.5 characters per token, rounded up).
    pub estimated_input_tokens: u32,
}

/// Token counts of a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

/// What travels the bounded channel from a generation task to its chunk-forwarder.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of answer text.
    Token(String),
    /// The stream is over: the model finished, or the turn was cancelled.
    End {
        /// Token counts (partial when cancelled).
        usage: Usage,
        /// Why it ended.
        finish_reason: FinishReason,
    },
    /// The model failed mid-way; the turn ends with an error frame, never a clean `done`.
    Failed {
        /// What went wrong, for the error frame.
        message: String,
    },
}

/// A product card in an `append` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductCard {
    /// Series slug.
    pub series_id: String,
    /// Title.
    pub title: String,
    /// Author(s).
    pub author: String,
    /// Volumes published.
    pub volumes: u32,
    /// Price per volume in yen, when known.
    pub price_jpy: Option<u32>,
    /// Units in stock, when known.
    pub stock: Option<u32>,
}

/// One finished turn as the transcript store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// Session.
    pub session_id: SessionId,
    /// User.
    pub user_id: UserId,
    /// Turn.
    pub turn_id: TurnId,
    /// Position in the session, from 0.
    pub index: u32,
    /// The user's message.
    pub user_text: String,
    /// The streamed answer, as sent.
    pub answer_text: String,
    /// Classified intent.
    pub intent: Intent,
    /// Unix milliseconds when the message arrived.
    pub started_at_ms: u64,
    /// Unix milliseconds when the stream ended.
    pub finished_at_ms: u64,
    /// Token counts.
    pub usage: Usage,
    /// How it ended.
    pub finish_reason: FinishReason,
}

/// Fast prompt-token estimate: about 3.5 characters per token, rounded up (errs high).
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count() as u64;
    u32::try_from((chars * 2).div_ceil(7)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimate_errs_high() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcdefg"), 2);
        assert_eq!(estimate_tokens(&"x".repeat(35)), 10);
    }

    #[test]
    fn intent_spelling_matches_serde() {
        for i in Intent::ALL {
            assert_eq!(
                serde_json::to_string(&i).unwrap(),
                format!("\"{}\"", i.as_str())
            );
        }
    }
}
