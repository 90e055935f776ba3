//! Typed payloads of a turn, in the order they appear: intent, retrieved documents, enrichment,
//! the assembled model request, stream events, usage, and the transcript record.

use serde::{Deserialize, Serialize};

use crate::frame::FinishReason;
use crate::ids::{SessionId, TurnId, UserId};

/// What the user wants from this message (see data/intents/README.md for the definitions).
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

/// How a turn was grounded: the `retrieval_mode` of `turn_started`, metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrievalMode {
    /// The search answered with at least one document: the answer is grounded on them.
    Grounded,
    /// The search found nothing, failed, or missed its budget: the fallback template answers
    /// with a caveat, invents nothing, and offers to search again or browse.
    Fallback,
    /// The intent needs no catalog search (greetings, thanks, account questions).
    #[default]
    Skipped,
}

impl RetrievalMode {
    /// Every mode.
    pub const ALL: [RetrievalMode; 3] = [
        RetrievalMode::Grounded,
        RetrievalMode::Fallback,
        RetrievalMode::Skipped,
    ];

    /// The wire and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RetrievalMode::Grounded => "grounded",
            RetrievalMode::Fallback => "fallback",
            RetrievalMode::Skipped => "skipped",
        }
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

/// An enrichment field: one store fact about a series, served by an enrichment source.
///
/// Which fields a turn needs, and which of them it cannot answer without, is configured per intent
/// ([`FieldPlan`]). The series id itself is always mandatory and comes from retrieval, so it is not
/// a field here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrichmentField {
    /// Price per volume.
    Price,
    /// Units in stock.
    Stock,
    /// Cover art URL.
    CoverUrl,
    /// A short review blurb.
    ReviewBlurb,
    /// Related series.
    Related,
}

impl EnrichmentField {
    /// Every field, in label order.
    pub const ALL: [EnrichmentField; 5] = [
        EnrichmentField::Price,
        EnrichmentField::Stock,
        EnrichmentField::CoverUrl,
        EnrichmentField::ReviewBlurb,
        EnrichmentField::Related,
    ];

    /// The label and config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrichmentField::Price => "price",
            EnrichmentField::Stock => "stock",
            EnrichmentField::CoverUrl => "cover_url",
            EnrichmentField::ReviewBlurb => "review_blurb",
            EnrichmentField::Related => "related",
        }
    }

    /// Parses the label spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for EnrichmentField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of enrichment fields (a bit set: copying it is free).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FieldSet(u8);

impl FieldSet {
    /// No field.
    pub const EMPTY: FieldSet = FieldSet(0);
    /// Every field.
    pub const ALL: FieldSet = FieldSet(0b1_1111);

    /// The set of `fields`.
    pub fn of(fields: &[EnrichmentField]) -> Self {
        fields.iter().fold(Self::EMPTY, |s, &f| s.with(f))
    }

    /// This set plus `field`.
    #[must_use]
    pub fn with(self, field: EnrichmentField) -> Self {
        FieldSet(self.0 | field.bit())
    }

    /// Whether `field` is in the set.
    pub fn contains(self, field: EnrichmentField) -> bool {
        self.0 & field.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Fields in both sets.
    #[must_use]
    pub fn intersection(self, other: FieldSet) -> Self {
        FieldSet(self.0 & other.0)
    }

    /// Fields in either set.
    #[must_use]
    pub fn union(self, other: FieldSet) -> Self {
        FieldSet(self.0 | other.0)
    }

    /// The fields, in label order.
    pub fn iter(self) -> impl Iterator<Item = EnrichmentField> {
        EnrichmentField::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }
}

impl std::fmt::Display for FieldSet {
    /// Comma-separated label spellings (`price,stock`), empty for the empty set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, field) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(field.as_str())?;
        }
        Ok(())
    }
}

impl Serialize for FieldSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for FieldSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fields = Vec::<EnrichmentField>::deserialize(d)?;
        Ok(FieldSet::of(&fields))
    }
}

/// The enrichment one intent asks for.
///
/// **Mandatory** fields are looked up before the stream, in parallel with retrieval, under the
/// preflight budget: the answer is wrong without them, so one that misses the budget is omitted
/// and the prompt says so. **Deferrable** fields only add to the answer: they are looked up beside
/// the stream and arrive in the `product_cards` append, or not at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldPlan {
    /// Needed before the first token.
    pub mandatory: FieldSet,
    /// Welcome after the last token.
    pub deferrable: FieldSet,
}

/// Store facts for one series. `None` means unknown or not asked for: the answer must not
/// invent it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrichment {
    /// Series slug.
    pub series_id: String,
    /// Price per volume in yen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_jpy: Option<u32>,
    /// Units in stock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock: Option<u32>,
    /// Cover art URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cover_url: Option<String>,
    /// A short review blurb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_blurb: Option<String>,
    /// Ids of related series, closest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<Vec<String>>,
}

impl Enrichment {
    /// An entry with no facts (an unknown id).
    pub fn unknown(series_id: impl Into<String>) -> Self {
        Self {
            series_id: series_id.into(),
            ..Self::default()
        }
    }

    /// Whether the entry holds `field`.
    pub fn has(&self, field: EnrichmentField) -> bool {
        match field {
            EnrichmentField::Price => self.price_jpy.is_some(),
            EnrichmentField::Stock => self.stock.is_some(),
            EnrichmentField::CoverUrl => self.cover_url.is_some(),
            EnrichmentField::ReviewBlurb => self.review_blurb.is_some(),
            EnrichmentField::Related => self.related.is_some(),
        }
    }

    /// The same entry with only `fields` kept.
    #[must_use]
    pub fn only(mut self, fields: FieldSet) -> Self {
        use EnrichmentField as F;
        if !fields.contains(F::Price) {
            self.price_jpy = None;
        }
        if !fields.contains(F::Stock) {
            self.stock = None;
        }
        if !fields.contains(F::CoverUrl) {
            self.cover_url = None;
        }
        if !fields.contains(F::ReviewBlurb) {
            self.review_blurb = None;
        }
        if !fields.contains(F::Related) {
            self.related = None;
        }
        self
    }

    /// Fills every field `self` lacks from `other` (same series).
    pub fn merge(&mut self, other: Enrichment) {
        self.price_jpy = self.price_jpy.or(other.price_jpy);
        self.stock = self.stock.or(other.stock);
        if self.cover_url.is_none() {
            self.cover_url = other.cover_url;
        }
        if self.review_blurb.is_none() {
            self.review_blurb = other.review_blurb;
        }
        if self.related.is_none() {
            self.related = other.related;
        }
    }
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
    /// The session the call serves; the model policy buckets canaries by it. `None` outside a
    /// session (evaluation, tools): such calls go to the task's primary model.
    pub session: Option<SessionId>,
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
    /// Cover art URL: deferrable, present when it arrived before the append deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cover_url: Option<String>,
    /// Review blurb: deferrable, as above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_blurb: Option<String>,
    /// Related series ids: deferrable, as above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<Vec<String>>,
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
    /// How it was grounded (absent in records written before the transcript kept it).
    #[serde(default)]
    pub retrieval_mode: Option<RetrievalMode>,
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
