//! The simulated model: a [`ModelBackend`] that streams a grounded, deterministic answer with
//! realistic timing and no network.
//!
//! `mangaassist serve` with no config answers through this backend, and every timing test and
//! load run uses it, so it has to behave like a real streaming model where the runtime can see the
//! difference: a configurable first-token delay, steady per-token pacing on an absolute schedule
//! (no drift accumulates however slowly the consumer polls), a final usage event, and generation
//! that stops when the stream is dropped. It also has to obey the prompt constraints exactly as a
//! well-behaved model would: the answer is composed only from `ModelRequest::context`, and it
//! never states a price or availability the request marked as unknown, nor names a title when
//! retrieval found nothing. Clients are told it is simulated through [`ModelInfo::simulated`].

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::stream;
use mangaassist_protocols::frame::ModelInfo;
use mangaassist_protocols::ports::{ModelBackend, ModelError, ModelEvent, ModelStream};
use mangaassist_protocols::turn::{Constraint, ContextItem, Intent, ModelRequest, Role, Usage};
use tokio::time::Instant;

/// Timing of the simulated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulatedConfig {
    /// From the first poll of the stream to the first token.
    pub first_token_delay: Duration,
    /// Between consecutive tokens.
    pub token_pacing: Duration,
}

impl Default for SimulatedConfig {
    /// 400 ms to the first token, then 25 ms per token: roughly a hosted model under light load.
    fn default() -> Self {
        Self {
            first_token_delay: Duration::from_millis(400),
            token_pacing: Duration::from_millis(25),
        }
    }
}

/// The built-in simulated model.
#[derive(Debug, Clone, Default)]
pub struct SimulatedModel {
    /// Timing applied to every stream.
    cfg: SimulatedConfig,
}

impl SimulatedModel {
    /// A simulated model with the given timing.
    pub fn new(cfg: SimulatedConfig) -> Self {
        Self { cfg }
    }

    /// The answer this model streams for `request`, whole. Deterministic: the same request always
    /// yields the same text.
    pub fn answer_text(request: &ModelRequest) -> String {
        compose(request)
    }
}

/// Splits text into word pieces that keep their leading space (`"Hi"`, `" there"`), about one
/// word per token. Concatenating the pieces gives back the text exactly.
pub fn word_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch == ' ' && !current.trim().is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// State carried between items of the stream.
struct Emitter {
    /// Tokens not sent yet.
    tokens: VecDeque<String>,
    /// Fixed timing.
    cfg: SimulatedConfig,
    /// When token 0 is due; set on the first poll.
    first_due: Option<Instant>,
    /// Tokens sent so far (also the index of the next one).
    sent: u32,
    /// Prompt tokens to report.
    input_tokens: u32,
    /// Set once the usage event has been sent.
    finished: bool,
}

impl Emitter {
    /// The next item of the stream and the state after it; `None` once usage was sent.
    async fn next_event(mut self) -> Option<(Result<ModelEvent, ModelError>, Self)> {
        if self.finished {
            return None;
        }
        let first_due = *self
            .first_due
            .get_or_insert_with(|| Instant::now() + self.cfg.first_token_delay);
        match self.tokens.pop_front() {
            Some(token) => {
                // Absolute schedule: token k is due at first_due + k * pacing, so a late poll
                // does not push every later token back.
                let due = first_due + self.cfg.token_pacing.saturating_mul(self.sent);
                // A token already due goes at once (a timer would round up to the next ms tick).
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                self.sent += 1;
                Some((Ok(ModelEvent::Token(token)), self))
            }
            None => {
                // An empty answer still honours the first-token delay before its usage.
                if first_due > Instant::now() {
                    tokio::time::sleep_until(first_due).await;
                }
                self.finished = true;
                let usage = Usage {
                    input_tokens: self.input_tokens,
                    output_tokens: self.sent,
                };
                Some((Ok(ModelEvent::Usage(usage)), self))
            }
        }
    }
}

impl ModelBackend for SimulatedModel {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            backend: "simulated".to_string(),
            model_id: "mangaassist-simulated-v1".to_string(),
            simulated: true,
        }
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let emitter = Emitter {
            tokens: word_pieces(&compose(&request)).into(),
            cfg: self.cfg,
            first_due: None,
            sent: 0,
            input_tokens: request.estimated_input_tokens,
            finished: false,
        };
        Box::pin(stream::unfold(emitter, Emitter::next_event))
    }
}

/// Most titles an answer names.
const MAX_TITLES: usize = 3;

fn has(request: &ModelRequest, c: Constraint) -> bool {
    request.constraints.contains(&c)
}

fn volumes_phrase(volumes: u32) -> String {
    if volumes == 1 {
        "1 volume".to_string()
    } else {
        format!("{volumes} volumes")
    }
}

/// The genre to describe an item by: one the customer asked for, if the item has it, else its
/// first ("any horror?" -> "Jujutsu Kaisen ... is a horror series", not "an action series").
fn genre_of<'a>(item: &'a ContextItem, asked: &str) -> &'a str {
    let asked = asked.to_lowercase();
    let genres = &item.doc.genres;
    genres
        .iter()
        .find(|g| !g.is_empty() && asked.contains(g.as_str()))
        .or_else(|| genres.first())
        .map(String::as_str)
        .filter(|g| !g.is_empty())
        .unwrap_or("manga")
}

/// "a" or "an" for the word that follows.
fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

fn last_user_text(request: &ModelRequest) -> &str {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .unwrap_or("")
}

fn looks_like_greeting(text: &str) -> bool {
    let lower = text.to_lowercase();
    let first = lower
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or("");
    matches!(
        first,
        "hi" | "hello" | "hey" | "yo" | "hiya" | "howdy" | "morning" | "evening" | "good"
    ) || ["こんにちは", "こんばんは", "おはよう"]
        .iter()
        .any(|g| text.contains(g))
}

/// The store facts the answer may state for one item: each only when known and not forbidden.
fn stated_facts(request: &ModelRequest, item: &ContextItem) -> (Option<u32>, Option<u32>) {
    let price = item
        .price_jpy
        .filter(|_| !has(request, Constraint::NoPrice));
    let stock = item.stock.filter(|_| !has(request, Constraint::NoStock));
    (price, stock)
}

/// The sentence stating an item's known facts, if any are known.
fn facts_sentence(price: Option<u32>, stock: Option<u32>) -> Option<String> {
    let availability = |units: u32| {
        if units == 0 {
            "currently out of stock"
        } else {
            "in stock"
        }
    };
    match (price, stock) {
        (Some(p), Some(units)) => Some(format!(
            "It is ¥{p} per volume and {}.",
            availability(units)
        )),
        (Some(p), None) => Some(format!("It is ¥{p} per volume.")),
        (None, Some(units)) => Some(format!("It is {}.", availability(units))),
        (None, None) => None,
    }
}

/// Where to look for what the answer could not state.
fn product_page_sentence(missing_price: bool, missing_stock: bool) -> Option<&'static str> {
    match (missing_price, missing_stock) {
        (true, true) => Some("Please check the product page for current pricing and availability."),
        (true, false) => Some("Please check the product page for current pricing."),
        (false, true) => Some("Please check the product page for availability."),
        (false, false) => None,
    }
}

fn compose(request: &ModelRequest) -> String {
    if request.intent == Intent::Other {
        return if looks_like_greeting(last_user_text(request)) {
            "Hello! I'm MangaAssist, the store's shopping assistant. I can find a series, suggest \
             something new, or check prices and availability. What are you in the mood to read?"
                .to_string()
        } else {
            "I'm MangaAssist, and I can help with finding manga, recommendations, prices and \
             availability in our store. Is there a series or genre I can help you with?"
                .to_string()
        };
    }
    let items: Vec<&ContextItem> = request.context.iter().take(MAX_TITLES).collect();
    if has(request, Constraint::NoGrounding) || items.is_empty() {
        return "I couldn't find anything matching that in our catalog. I can search again with \
                different words, or you can browse by genre, such as fantasy, romance or mystery. \
                Would you like me to try another search?"
            .to_string();
    }

    let asked = last_user_text(request);
    let mut parts: Vec<String> = Vec::new();
    match request.intent {
        Intent::Recommend => {
            parts.push("Here are a few picks from our catalog.".to_string());
            for (i, item) in items.iter().enumerate() {
                let doc = &item.doc;
                let genre = genre_of(item, asked);
                let sentence = if i == 0 {
                    format!(
                        "If you like {genre}, you may enjoy {} by {} ({}).",
                        doc.title,
                        doc.author,
                        volumes_phrase(doc.volumes)
                    )
                } else {
                    format!(
                        "If you are in the mood for {genre}, {} by {} is worth a look, with {}.",
                        doc.title,
                        doc.author,
                        volumes_phrase(doc.volumes)
                    )
                };
                parts.push(sentence);
            }
            parts.push(
                "Want more suggestions like these, or something in a different genre?".into(),
            );
        }
        Intent::Browse => {
            parts.push("Here are some series you could explore.".to_string());
            for item in &items {
                let doc = &item.doc;
                let genre = genre_of(item, asked);
                parts.push(format!(
                    "{} by {} is {} {genre} series with {}.",
                    doc.title,
                    doc.author,
                    article(genre),
                    volumes_phrase(doc.volumes)
                ));
            }
            parts.push("Would you like me to narrow it down by genre or length?".into());
        }
        Intent::Search | Intent::PurchaseIntent | Intent::Other => {
            parts.push(if request.intent == Intent::PurchaseIntent {
                "Here are the details for what you asked about.".to_string()
            } else {
                "Here is what I found in our catalog.".to_string()
            });
            let (mut missing_price, mut missing_stock) = (false, false);
            for item in &items {
                let doc = &item.doc;
                let genre = genre_of(item, asked);
                parts.push(format!(
                    "{} by {} is {} {genre} series with {}.",
                    doc.title,
                    doc.author,
                    article(genre),
                    volumes_phrase(doc.volumes)
                ));
                let (price, stock) = stated_facts(request, item);
                missing_price |= price.is_none();
                missing_stock |= stock.is_none();
                parts.extend(facts_sentence(price, stock));
            }
            parts.extend(product_page_sentence(missing_price, missing_stock).map(str::to_string));
            parts.push(if request.intent == Intent::PurchaseIntent {
                "Shall I add one of these to your cart?".into()
            } else {
                "Would you like details on a specific volume or similar series?".into()
            });
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod genre_tests {
    use mangaassist_protocols::turn::RetrievedDoc;

    use super::*;

    #[test]
    fn the_genre_asked_for_is_the_one_named() {
        let item = ContextItem {
            doc: RetrievedDoc {
                series_id: "jjk".into(),
                title: "Jujutsu Kaisen".into(),
                author: "Gege Akutami".into(),
                genres: vec!["action".into(), "horror".into()],
                demographic: "shonen".into(),
                volumes: 30,
                synopsis: String::new(),
                score: 1.0,
            },
            price_jpy: None,
            stock: None,
        };
        assert_eq!(genre_of(&item, "any Horror manga?"), "horror");
        assert_eq!(genre_of(&item, "something fun"), "action");
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use mangaassist_protocols::turn::{ChatMessage, RetrievedDoc};

    use super::*;

    fn item(title: &str, genre: &str, price: Option<u32>, stock: Option<u32>) -> ContextItem {
        ContextItem {
            doc: RetrievedDoc {
                series_id: title.to_lowercase().replace(' ', "-"),
                title: title.to_string(),
                author: "Eiichiro Oda".to_string(),
                genres: vec![genre.to_string(), "comedy".to_string()],
                demographic: "shonen".to_string(),
                volumes: 107,
                synopsis: "Pirates.".to_string(),
                score: 1.0,
            },
            price_jpy: price,
            stock,
        }
    }

    fn request(
        intent: Intent,
        context: Vec<ContextItem>,
        constraints: Vec<Constraint>,
    ) -> ModelRequest {
        ModelRequest {
            intent,
            system: String::new(),
            messages: vec![ChatMessage {
                role: Role::User,
                content: "how much is One Piece?".to_string(),
            }],
            context,
            constraints,
            estimated_input_tokens: 42,
            session: None,
        }
    }

    #[test]
    fn word_pieces_keep_leading_spaces() {
        let pieces = word_pieces("One Piece is great.");
        assert_eq!(pieces, vec!["One", " Piece", " is", " great."]);
        assert_eq!(pieces.concat(), "One Piece is great.");
        assert!(word_pieces("").is_empty());
    }

    #[test]
    fn info_is_labelled_simulated() {
        let info = SimulatedModel::default().info();
        assert_eq!(info.backend, "simulated");
        assert_eq!(info.model_id, "mangaassist-simulated-v1");
        assert!(info.simulated);
    }

    #[test]
    fn states_price_and_stock_when_known() {
        let req = request(
            Intent::PurchaseIntent,
            vec![item("One Piece", "adventure", Some(528), Some(12))],
            vec![],
        );
        let text = SimulatedModel::answer_text(&req);
        assert!(text.contains("¥528 per volume"), "{text}");
        assert!(text.contains("in stock"), "{text}");
        assert!(text.contains("One Piece by Eiichiro Oda"), "{text}");
        assert!(text.contains("107 volumes"), "{text}");
        assert!(text.trim_end().ends_with('?'), "{text}");
        assert_eq!(text, SimulatedModel::answer_text(&req), "deterministic");
    }

    #[test]
    fn no_price_constraint_never_states_a_price() {
        for intent in Intent::ALL {
            let req = request(
                intent,
                vec![
                    item("One Piece", "adventure", Some(528), Some(0)),
                    item("Blue Period", "drama", Some(693), None),
                ],
                vec![Constraint::NoPrice, Constraint::NoStock],
            );
            let text = SimulatedModel::answer_text(&req);
            assert!(!text.contains('¥'), "{intent:?}: {text}");
            assert!(!text.to_lowercase().contains("yen"), "{intent:?}: {text}");
            assert!(!text.contains("528") && !text.contains("693"), "{text}");
            assert!(
                !text.contains("in stock") && !text.contains("out of stock"),
                "{text}"
            );
        }
        let req = request(
            Intent::Search,
            vec![item("One Piece", "adventure", None, Some(3))],
            vec![],
        );
        let text = SimulatedModel::answer_text(&req);
        assert!(!text.contains('¥'), "{text}");
        assert!(text.contains("product page for current pricing"), "{text}");
        assert!(text.contains("in stock"), "{text}");
    }

    #[test]
    fn no_grounding_names_no_titles() {
        for intent in Intent::ALL {
            let req = request(
                intent,
                vec![item("One Piece", "adventure", Some(528), Some(1))],
                vec![Constraint::NoGrounding],
            );
            let text = SimulatedModel::answer_text(&req);
            assert!(!text.contains("One Piece"), "{text}");
            assert!(!text.contains('¥'), "{text}");
        }
        let text = SimulatedModel::answer_text(&request(
            Intent::Search,
            vec![],
            vec![Constraint::NoGrounding],
        ));
        assert!(text.contains("couldn't find anything"), "{text}");
    }

    #[test]
    fn other_intent_is_brief_and_names_no_titles() {
        let mut req = request(
            Intent::Other,
            vec![item("One Piece", "adventure", Some(528), Some(1))],
            vec![],
        );
        req.messages[0].content = "hi there".to_string();
        let text = SimulatedModel::answer_text(&req);
        assert!(text.starts_with("Hello!"), "{text}");
        assert!(!text.contains("One Piece"), "{text}");
    }

    #[test]
    fn recommend_uses_genres_and_caps_titles() {
        let req = request(
            Intent::Recommend,
            vec![
                item("A One", "horror", Some(1), Some(1)),
                item("B Two", "romance", Some(1), Some(1)),
                item("C Three", "mystery", Some(1), Some(1)),
                item("D Four", "sports", Some(1), Some(1)),
            ],
            vec![],
        );
        let text = SimulatedModel::answer_text(&req);
        assert!(
            text.contains("If you like horror, you may enjoy A One"),
            "{text}"
        );
        assert!(
            text.contains("romance") && text.contains("C Three"),
            "{text}"
        );
        assert!(!text.contains("D Four"), "at most three titles: {text}");
    }

    #[tokio::test(start_paused = true)]
    async fn stream_paces_tokens_on_an_absolute_schedule() {
        let model = SimulatedModel::new(SimulatedConfig {
            first_token_delay: Duration::from_millis(400),
            token_pacing: Duration::from_millis(25),
        });
        let req = request(
            Intent::PurchaseIntent,
            vec![item("One Piece", "adventure", Some(528), Some(5))],
            vec![],
        );
        let expected = SimulatedModel::answer_text(&req);
        let start = Instant::now();
        let mut stream = model.stream(req);

        let mut text = String::new();
        let mut arrivals = Vec::new();
        let mut usage = None;
        while let Some(event) = stream.next().await {
            let at = start.elapsed().as_millis();
            match event.unwrap() {
                ModelEvent::Token(t) => {
                    assert!(usage.is_none(), "usage must come last");
                    text.push_str(&t);
                    arrivals.push(at);
                    if arrivals.len() == 4 {
                        // A slow consumer: later tokens must not drift because of it.
                        tokio::time::sleep(Duration::from_millis(60)).await;
                    }
                }
                ModelEvent::Usage(u) => usage = Some((u, at)),
            }
        }
        assert_eq!(text, expected);
        assert!(arrivals.len() > 8, "{arrivals:?}");
        // Tokens 4 and 5 (due at 500 and 525 ms) were ready while the consumer slept until
        // 535 ms; token 6 is back on its 550 ms slot.
        assert_eq!(arrivals[..7], [400, 425, 450, 475, 535, 535, 550]);
        let n = arrivals.len();
        let last_due = 400 + 25 * (n as u128 - 1);
        assert_eq!(arrivals[n - 1], last_due);
        let (usage, at) = usage.expect("usage at the end");
        assert_eq!(at, last_due);
        assert_eq!(usage.input_tokens, 42);
        assert_eq!(usage.output_tokens, n as u32);
    }
}
