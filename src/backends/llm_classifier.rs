//! The LLM intent classifier: any [`ModelBackend`] (Bedrock, an OpenAI-compatible server) asked
//! to name one intent label.
//!
//! The prompt lists the five labels with their definitions (data/intents/README.md) and asks for
//! the label alone. The answer is streamed like any other, collected (with a deadline), and
//! parsed leniently: the first of the five labels that appears as a word wins, whatever the
//! casing or punctuation around it ("Intent: purchase_intent." is fine, and so are `purchase
//! intent` and `purchase-intent`). An answer naming no label is `other`, with confidence 0, and
//! counted as unparsed by the caller's metrics. A failed or late model call is an error: the
//! model policy decides what runs instead (the local classifier is the degradation tier).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use mangaassist_protocols::SessionId;
use mangaassist_protocols::ports::{
    ClassifyError, IntentClassifier, ModelBackend, ModelError, ModelEvent,
};
use mangaassist_protocols::turn::{
    ChatMessage, Classification, Intent, ModelRequest, Role, estimate_tokens,
};

/// The instructions sent as the system prompt.
pub const PROMPT: &str = "You route messages in a manga store's shopping chat. Classify the \
customer's message into exactly one intent and answer with the intent label only.\n\
browse: exploring a category or the shop with no specific target (\"show me horror\", \"what's new in seinen\").\n\
search: looking for a specific title, author or volume (\"do you have berserk\", \"vinland saga vol 5\").\n\
recommend: asking for suggestions from their taste (\"something like frieren\", \"recs pls\").\n\
purchase_intent: price, stock, cart, checkout, shipping or buying a product (\"how much is one piece 3\", \"in stock?\").\n\
other: greetings, thanks, account and order questions, complaints, off-topic, anything else.\n\
Labels: browse, search, recommend, purchase_intent, other.";

/// Bytes of answer read before giving up on a model that ignores the token cap.
const MAX_ANSWER_BYTES: usize = 64;

/// An intent classifier backed by a chat model.
pub struct LlmClassifier {
    model: Arc<dyn ModelBackend>,
    deadline: Duration,
}

impl LlmClassifier {
    /// Classifies with `model`, giving each call `deadline` to finish its answer.
    pub fn new(model: Arc<dyn ModelBackend>, deadline: Duration) -> Self {
        Self { model, deadline }
    }
}

/// The first intent label named in `answer` as a word, or `None`.
pub fn parse_label(answer: &str) -> Option<Intent> {
    let norm: String = answer
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                ' '
            }
        })
        .collect();
    let words: Vec<&str> = norm.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        let found = match *w {
            "browse" => Some(Intent::Browse),
            "search" => Some(Intent::Search),
            "recommend" => Some(Intent::Recommend),
            "purchase" if words.get(i + 1) == Some(&"intent") => Some(Intent::PurchaseIntent),
            "other" => Some(Intent::Other),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

impl LlmClassifier {
    async fn ask(
        &self,
        session: Option<&SessionId>,
        text: &str,
    ) -> Result<Classification, ClassifyError> {
        let request = ModelRequest {
            intent: Intent::Other,
            system: PROMPT.to_owned(),
            messages: vec![ChatMessage {
                role: Role::User,
                content: text.to_owned(),
            }],
            context: Vec::new(),
            constraints: Vec::new(),
            estimated_input_tokens: estimate_tokens(PROMPT) + estimate_tokens(text),
            session: session.cloned(),
        };
        let info = self.model.info();
        let mut stream = self.model.stream(request);
        let collect = async {
            let mut answer = String::new();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(ModelEvent::Token(t)) => {
                        answer.push_str(&t);
                        // A label is a few tokens (the request caps them); a model that rambles
                        // past this is cut off rather than paid for.
                        if answer.len() > MAX_ANSWER_BYTES {
                            break;
                        }
                    }
                    Ok(ModelEvent::Usage(_)) => {}
                    Err(e) => return Err(ClassifyError::Model(e)),
                }
            }
            Ok(answer)
        };
        let answer = tokio::time::timeout(self.deadline, collect)
            .await
            .map_err(|_| {
                ClassifyError::Model(ModelError::Timeout(format!(
                    "{} did not answer within {} ms",
                    info.model_id,
                    self.deadline.as_millis()
                )))
            })??;
        Ok(match parse_label(&answer) {
            Some(intent) => Classification {
                intent,
                confidence: 1.0,
                classifier: info.model_id,
            },
            None => Classification {
                intent: Intent::Other,
                confidence: 0.0,
                classifier: info.model_id,
            },
        })
    }
}

#[async_trait]
impl IntentClassifier for LlmClassifier {
    async fn classify(&self, text: &str) -> Result<Classification, ClassifyError> {
        self.ask(None, text).await
    }

    async fn classify_in(
        &self,
        session: &SessionId,
        text: &str,
    ) -> Result<Classification, ClassifyError> {
        self.ask(Some(session), text).await
    }
}

#[cfg(test)]
mod tests {
    use mangaassist_protocols::frame::ModelInfo;
    use mangaassist_protocols::ports::{ModelError, ModelStream};
    use mangaassist_protocols::turn::Usage;

    use super::*;

    /// A model that answers with fixed tokens (or an error), checking it got the prompt.
    struct Canned(Vec<Result<&'static str, ModelError>>);

    impl ModelBackend for Canned {
        fn info(&self) -> ModelInfo {
            ModelInfo {
                backend: "test".into(),
                model_id: "canned-v1".into(),
                simulated: false,
            }
        }

        fn stream(&self, request: ModelRequest) -> ModelStream {
            assert_eq!(request.system, PROMPT);
            assert_eq!(request.messages.len(), 1);
            let events: Vec<Result<ModelEvent, ModelError>> = self
                .0
                .iter()
                .map(|r| r.clone().map(|t| ModelEvent::Token(t.to_owned())))
                .chain(std::iter::once(Ok(ModelEvent::Usage(Usage::default()))))
                .collect();
            Box::pin(futures_util::stream::iter(events))
        }
    }

    async fn classify(
        tokens: Vec<Result<&'static str, ModelError>>,
    ) -> Result<Classification, ClassifyError> {
        LlmClassifier::new(Arc::new(Canned(tokens)), Duration::from_secs(1))
            .classify("how much is frieren?")
            .await
    }

    #[test]
    fn labels_are_parsed_leniently() {
        assert_eq!(parse_label("purchase_intent"), Some(Intent::PurchaseIntent));
        assert_eq!(
            parse_label("Intent: Purchase-Intent."),
            Some(Intent::PurchaseIntent)
        );
        assert_eq!(parse_label(" SEARCH\n"), Some(Intent::Search));
        assert_eq!(parse_label("I think browse"), Some(Intent::Browse));
        assert_eq!(parse_label("purchase"), None, "half a label is no label");
        assert_eq!(parse_label("researching"), None, "whole words only");
        assert_eq!(parse_label(""), None);
    }

    #[tokio::test]
    async fn a_streamed_label_is_the_intent() {
        let c = classify(vec![Ok("purch"), Ok("ase_"), Ok("intent")])
            .await
            .unwrap();
        assert_eq!(c.intent, Intent::PurchaseIntent);
        assert_eq!(c.classifier, "canned-v1");
        assert_eq!(c.confidence, 1.0);
    }

    #[tokio::test]
    async fn an_unknown_label_is_other_with_no_confidence() {
        let c = classify(vec![Ok("shopping")]).await.unwrap();
        assert_eq!(c.intent, Intent::Other);
        assert_eq!(c.confidence, 0.0);
    }

    #[tokio::test]
    async fn a_failed_model_is_an_error_for_the_policy_to_handle() {
        let e = classify(vec![Err(ModelError::Throttled("slow down".into()))])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("throttled"), "{e}");
    }
}
