//! The local intent classifier: a table-driven weighted-feature scorer that needs no model and no
//! network.
//!
//! It is the embedded default and the deterministic fallback when the policy-bound model tier is
//! throttled, so it must be fast (microseconds), never fail, and be good enough on shop chat:
//! typos and slang ("recs pls", "wanna buy", "price?"), and mixed Japanese/English cues
//! ("おすすめ", "いくら", "在庫"). How it scores:
//!
//! 1. The text is lowercased; every character that is not a letter or digit becomes a space.
//!    Words are lightly stemmed (a plural `s` is dropped) on both sides of the match.
//! 2. Each entry of [`FEATURES`] is a word, a multi-word phrase (matched on adjacent words) or a
//!    non-ASCII cue (matched as a substring, since Japanese has no spaces); every hit adds its
//!    weight to its intent.
//! 3. A few structural cues the table cannot express: a volume number ("vol 3", "v12"),
//!    "like X" used as taste rather than "I'd like", mid-sentence capitalised words (titles), yen
//!    and dollar signs.
//! 4. A small prior breaks the no-evidence case toward `search` (a bare title is a search).
//!
//! The winner is the highest score; confidence is its softmax share. A trained model replaces
//! this later; until then, tuning means editing the table.

use std::collections::HashMap;

use async_trait::async_trait;
use mangaassist_protocols::ports::{ClassifyError, IntentClassifier};
use mangaassist_protocols::turn::{Classification, Intent};

use Intent::{Browse as B, Other as O, PurchaseIntent as P, Recommend as R, Search as S};

/// Weighted cues: `(cue, intent, weight)`. A cue with a space is a phrase; a cue with non-ASCII
/// characters is a substring cue; anything else is one word.
pub const FEATURES: &[(&str, Intent, f32)] = &[
    // search: a specific title, author or volume is sought
    ("do you have", S, 1.8),
    ("do you carry", S, 1.5),
    ("do u have", S, 1.5),
    ("carry", S, 1.0),
    ("looking for", S, 1.8),
    ("look for", S, 1.2),
    ("find", S, 1.5),
    ("search", S, 2.0),
    ("where", S, 0.8),
    ("vol", S, 1.0),
    ("volume", S, 1.0),
    ("chapter", S, 1.0),
    ("author", S, 1.2),
    ("written", S, 1.2),
    ("wrote", S, 1.8),
    ("anything by", S, 2.0),
    ("by", S, 0.5),
    ("titled", S, 1.8),
    ("called", S, 1.2),
    ("named", S, 1.0),
    ("is there", S, 0.8),
    ("the manga", S, 0.5),
    ("sequel", S, 1.0),
    ("latest", S, 0.8),
    ("next volume", S, 1.0),
    ("got", S, 0.4),
    // browse: exploring a category with no target
    ("browse", B, 2.5),
    ("show me", B, 1.0),
    ("show", B, 0.6),
    ("section", B, 1.8),
    ("category", B, 2.0),
    ("genre", B, 1.5),
    ("what genre", B, 1.5),
    ("list", B, 1.2),
    ("explore", B, 2.0),
    ("popular", B, 1.4),
    ("trending", B, 1.8),
    ("bestseller", B, 1.5),
    ("best seller", B, 1.5),
    ("new release", B, 1.2),
    ("new", B, 0.6),
    ("some", B, 0.6),
    ("any", B, 0.5),
    ("let me see", B, 1.0),
    ("see", B, 0.4),
    ("selection", B, 1.5),
    ("stuff", B, 0.6),
    ("top", B, 0.8),
    ("ranking", B, 1.5),
    ("what kind", B, 1.0),
    ("right now", B, 0.6),
    ("what", B, 0.3),
    ("manga", B, 0.2),
    ("series", B, 0.2),
    // recommend: suggestions from taste
    ("recommend", R, 3.0),
    ("recommendation", R, 3.0),
    ("recomend", R, 3.0),
    ("reccomend", R, 3.0),
    ("reccommend", R, 3.0),
    ("recomendation", R, 3.0),
    ("rec", R, 3.0),
    ("suggest", R, 2.5),
    ("suggestion", R, 2.5),
    ("should i read", R, 2.5),
    ("read next", R, 2.0),
    ("what should", R, 1.0),
    ("similar", R, 2.0),
    ("similar to", R, 0.8),
    ("liked", R, 1.5),
    ("loved", R, 1.5),
    ("love", R, 0.8),
    ("enjoy", R, 1.2),
    ("enjoyed", R, 1.5),
    ("fan of", R, 2.0),
    ("good", R, 0.6),
    ("best", R, 0.5),
    ("for someone who", R, 1.5),
    ("beginner", R, 1.0),
    ("into", R, 0.4),
    ("taste", R, 1.5),
    ("something", R, 0.8),
    ("what else", R, 1.5),
    ("else", R, 0.6),
    ("worth reading", R, 2.0),
    ("must read", R, 2.0),
    ("おすすめ", R, 3.0),
    ("オススメ", R, 3.0),
    ("お勧め", R, 3.0),
    ("お薦め", R, 3.0),
    ("似て", R, 2.0),
    // purchase_intent: price, stock, cart, checkout, shipping
    ("how much", P, 4.0),
    ("price", P, 3.5),
    ("pricing", P, 3.5),
    ("pric", P, 3.0),
    ("cost", P, 3.0),
    ("cheap", P, 2.5),
    ("cheapest", P, 3.0),
    ("expensive", P, 2.5),
    ("buy", P, 3.0),
    ("wanna buy", P, 1.0),
    ("purchase", P, 3.0),
    ("order", P, 1.5),
    ("preorder", P, 2.5),
    ("pre order", P, 2.5),
    ("cart", P, 3.5),
    ("add to cart", P, 1.0),
    ("checkout", P, 3.5),
    ("check out", P, 1.5),
    ("ship", P, 3.0),
    ("shipping", P, 3.0),
    ("deliver", P, 2.5),
    ("delivery", P, 2.5),
    ("stock", P, 3.0),
    ("in stock", P, 1.0),
    ("available", P, 1.5),
    ("availability", P, 2.5),
    ("sold out", P, 3.0),
    ("discount", P, 2.5),
    ("sale", P, 1.5),
    ("coupon", P, 2.5),
    ("pay", P, 2.0),
    ("payment", P, 2.0),
    ("box set", P, 2.0),
    ("whole set", P, 1.5),
    ("yen", P, 2.5),
    ("いくら", P, 4.0),
    ("値段", P, 4.0),
    ("価格", P, 4.0),
    ("在庫", P, 4.0),
    ("買", P, 3.0),
    ("カート", P, 4.0),
    ("送料", P, 4.0),
    ("円", P, 2.5),
    // other: greetings, account, off-topic, complaints
    ("hi", O, 2.5),
    ("hello", O, 2.5),
    ("hey", O, 1.5),
    ("sup", O, 2.0),
    ("what s up", O, 2.5),
    ("hiya", O, 2.5),
    ("yo", O, 1.5),
    ("good morning", O, 2.5),
    ("good evening", O, 2.5),
    ("thank", O, 2.5),
    ("thx", O, 2.5),
    ("ty", O, 1.5),
    ("bye", O, 2.5),
    ("goodbye", O, 2.5),
    ("password", O, 3.5),
    ("account", O, 3.0),
    ("login", O, 3.0),
    ("log in", O, 3.0),
    ("sign in", O, 3.0),
    ("email", O, 2.5),
    ("refund", O, 2.5),
    ("damaged", O, 3.0),
    ("broken", O, 2.0),
    ("complaint", O, 3.0),
    ("complain", O, 3.0),
    ("terrible", O, 2.0),
    ("unacceptable", O, 3.0),
    ("worst", O, 2.0),
    ("angry", O, 2.0),
    ("weather", O, 3.0),
    ("who are you", O, 3.0),
    ("are you", O, 1.0),
    ("bot", O, 1.5),
    ("human", O, 1.5),
    ("joke", O, 2.0),
    ("lol", O, 1.5),
    ("ok", O, 1.5),
    ("okay", O, 1.5),
    ("hm", O, 1.5),
    ("hmm", O, 1.5),
    ("cool", O, 1.2),
    ("nice", O, 1.0),
    ("change my", O, 1.5),
    ("cancel", O, 2.0),
    ("help", O, 0.5),
    ("what can you do", O, 3.0),
    ("customer service", O, 2.5),
    ("こんにちは", O, 3.5),
    ("こんばんは", O, 3.5),
    ("おはよう", O, 3.5),
    ("ありがとう", O, 3.5),
];

/// Genres and demographics (as normalized words or phrases): each adds [`CATEGORY_WEIGHT`] to
/// browse, and naming a category without naming a title adds [`CATEGORY_BONUS`] more.
pub const CATEGORIES: &[&str] = &[
    "shonen",
    "shounen",
    "seinen",
    "shojo",
    "shoujo",
    "josei",
    "kodomo",
    "action",
    "adventure",
    "comedy",
    "drama",
    "fantasy",
    "horror",
    "mystery",
    "psychological",
    "romance",
    "sci fi",
    "scifi",
    "slice of life",
    "sport",
    "supernatural",
    "thriller",
    "historical",
    "isekai",
    "mecha",
    "music",
    "cooking",
    "school",
    "martial art",
    "crime",
    "medical",
    "post apocalyptic",
];

/// Browse weight of one category cue.
const CATEGORY_WEIGHT: f32 = 1.2;

/// Extra browse weight when a category is named and no title seems to be.
const CATEGORY_BONUS: f32 = 0.6;

/// Score each intent starts with, in [`ORDER`]: no evidence at all reads as a bare title search.
const PRIOR: [f32; 5] = [0.0, 0.0, 0.4, 0.0, 0.3];

/// Scoring order; on equal scores the earlier intent wins.
const ORDER: [Intent; 5] = [P, R, S, B, O];

/// Words after which "like" means "want" ("I'd like", "would like") rather than taste.
const WANT_LIKE: [&str; 4] = ["would", "d", "look", "looks"];

/// Words before which "like" is clearly about taste ("I like", "something like").
const TASTE_LIKE: [&str; 15] = [
    "i",
    "something",
    "anything",
    "stuff",
    "more",
    "similar",
    "just",
    "really",
    "who",
    "u",
    "manga",
    "serie",
    "one",
    "book",
    "title",
];

fn slot(intent: Intent) -> usize {
    match intent {
        P => 0,
        R => 1,
        S => 2,
        B => 3,
        O => 4,
    }
}

/// Drops a plural or possessive `s` so "recs"/"rec", "genres"/"genre" match one table entry.
fn stem(word: &str) -> &str {
    if word.len() > 2 && word.ends_with('s') && !word.ends_with("ss") {
        &word[..word.len() - 1]
    } else {
        word
    }
}

/// "vol 3", "volume 12", "no 4", "v3", "vol3": a specific volume is named.
fn is_volume_ref(word: &str, next: Option<&str>) -> bool {
    let all_digits = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    let spaced = matches!(word, "vol" | "volume" | "v" | "no") && next.is_some_and(all_digits);
    let glued = word
        .strip_prefix("vol")
        .or_else(|| word.strip_prefix('v'))
        .is_some_and(all_digits);
    spaced || glued
}

/// Words after the first that start with a capital (not "I"): likely a title or an author.
fn capitalised_words(text: &str) -> usize {
    text.split_whitespace()
        .skip(1)
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .filter(|w| *w != "I" && !w.starts_with("I'"))
        .count()
}

/// Lowercase, letters and digits only, one space between words.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars().flat_map(char::to_lowercase) {
        if ch.is_alphanumeric() {
            out.push(ch);
        } else if !out.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// One table entry after compilation.
#[derive(Debug, Clone, Copy)]
struct Cue {
    /// Which intent it supports.
    intent: Intent,
    /// By how much.
    weight: f32,
    /// Whether it names a genre or demographic.
    category: bool,
}

/// The local, deterministic intent classifier.
#[derive(Debug, Clone)]
pub struct LocalClassifier {
    /// Stemmed single words.
    words: HashMap<String, Vec<Cue>>,
    /// Stemmed multi-word phrases, as word lists.
    phrases: Vec<(Vec<String>, Cue)>,
    /// Substring cues for scripts without spaces.
    substrings: Vec<(&'static str, Cue)>,
}

impl Default for LocalClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalClassifier {
    /// Builds the lookup tables from [`FEATURES`] and [`CATEGORIES`].
    pub fn new() -> Self {
        let mut words: HashMap<String, Vec<Cue>> = HashMap::new();
        let mut phrases = Vec::new();
        let mut substrings = Vec::new();
        let table = FEATURES.iter().map(|&(text, intent, weight)| {
            let cue = Cue {
                intent,
                weight,
                category: false,
            };
            (text, cue)
        });
        let categories = CATEGORIES.iter().map(|&text| {
            let cue = Cue {
                intent: B,
                weight: CATEGORY_WEIGHT,
                category: true,
            };
            (text, cue)
        });
        for (text, cue) in table.chain(categories) {
            if !text.is_ascii() {
                substrings.push((text, cue));
            } else if text.contains(' ') {
                let parts = text.split(' ').map(|w| stem(w).to_string()).collect();
                phrases.push((parts, cue));
            } else {
                words.entry(stem(text).to_string()).or_default().push(cue);
            }
        }
        Self {
            words,
            phrases,
            substrings,
        }
    }

    /// Raw scores per intent, in [`ORDER`].
    fn scores(&self, text: &str) -> [f32; 5] {
        let mut scores = PRIOR;
        let mut category = false;
        let mut add = |cue: Cue| {
            scores[slot(cue.intent)] += cue.weight;
            category |= cue.category;
        };
        let normalized = normalize(text);
        let words: Vec<&str> = normalized
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(stem)
            .collect();

        // Table cues.
        for word in &words {
            for &cue in self.words.get(*word).into_iter().flatten() {
                add(cue);
            }
        }
        for (phrase, cue) in &self.phrases {
            if words.windows(phrase.len()).any(|w| w == phrase.as_slice()) {
                add(*cue);
            }
        }
        let lower = text.to_lowercase();
        for &(needle, cue) in &self.substrings {
            if lower.contains(needle) {
                add(cue);
            }
        }

        // Structural cues.
        let mut cue = |intent: Intent, weight: f32| {
            add(Cue {
                intent,
                weight,
                category: false,
            })
        };
        for (i, word) in words.iter().enumerate() {
            let prev = i.checked_sub(1).and_then(|j| words.get(j)).copied();
            let next = words.get(i + 1).copied();
            if is_volume_ref(word, next) {
                cue(S, 0.8);
            }
            if *word == "like" {
                match prev {
                    Some(p) if WANT_LIKE.contains(&p) => cue(P, 0.5),
                    Some(p) if TASTE_LIKE.contains(&p) => cue(R, 2.2),
                    Some(_) if next.is_some() => cue(R, 1.0),
                    _ => {}
                }
            }
        }
        let capitalised = capitalised_words(text);
        if capitalised > 0 {
            cue(S, 0.5 * capitalised.min(2) as f32);
        }
        if words.iter().any(|w| w.bytes().all(|b| b.is_ascii_digit())) {
            // A bare number is usually a volume or a chapter.
            cue(S, 0.3);
        }
        if text.contains(['¥', '￥', '$']) {
            cue(P, 2.0);
        }
        if category && capitalised == 0 {
            scores[slot(B)] += CATEGORY_BONUS;
        }
        scores
    }

    /// Classifies one message synchronously (microseconds; safe on an async task).
    pub fn classify_text(&self, text: &str) -> Classification {
        let scores = self.scores(text);
        let mut best = 0;
        for i in 1..scores.len() {
            if scores[i] > scores[best] {
                best = i;
            }
        }
        let top = scores[best];
        let total: f32 = scores.iter().map(|s| (s - top).exp()).sum();
        let confidence = (1.0 / total).clamp(0.0, 1.0);
        Classification {
            intent: ORDER[best],
            confidence,
            classifier: "local".to_string(),
        }
    }
}

#[async_trait]
impl IntentClassifier for LocalClassifier {
    async fn classify(&self, text: &str) -> Result<Classification, ClassifyError> {
        Ok(self.classify_text(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELLED: &[(&str, Intent)] = &[
        // search
        ("Do you have Berserk?", S),
        ("looking for one piece vol 3", S),
        ("is there anything by Naoki Urasawa", S),
        ("Chainsaw Man volume 12", S),
        ("find me the manga Frieren", S),
        ("do u carry vagabond", S),
        ("who wrote Monster", S),
        ("search for attack on titan", S),
        ("vinland saga v5", S),
        // browse
        ("show me some horror manga", B),
        ("what fantasy series do you have in the shop", B),
        ("I want to browse romance titles", B),
        ("any new sports manga?", B),
        ("what's popular in seinen right now", B),
        ("list your isekai stuff", B),
        ("let me see the shojo section", B),
        ("what genres do you carry", B),
        // recommend
        ("can you recommend something like Monster?", R),
        ("recs pls, i loved vinland saga", R),
        ("what should I read next", R),
        ("I liked Frieren, what else would I enjoy", R),
        ("suggest a good mystery for a beginner", R),
        ("おすすめの漫画は？", R),
        ("any recommendations for someone who likes cooking manga", R),
        ("give me a rec", R),
        // purchase_intent
        ("how much is One Piece vol 3??", P),
        ("is Berserk in stock?", P),
        ("add to cart pls", P),
        ("wanna buy the whole set of Naruto", P),
        ("price?", P),
        ("what's the cheapest volume", P),
        ("do you ship to Canada", P),
        ("この漫画はいくらですか", P),
        ("在庫ありますか", P),
        ("I'd like to order the box set", P),
        // other
        ("hi", O),
        ("hello there!", O),
        ("こんにちは", O),
        ("I forgot my password", O),
        ("thanks, bye", O),
        ("what's the weather like today", O),
        ("my package arrived damaged, this is unacceptable", O),
        ("hm", O),
        ("who are you", O),
        ("how do I change my email address", O),
    ];

    #[test]
    fn labelled_examples_are_at_least_90_percent_right() {
        let c = LocalClassifier::new();
        let mut wrong = Vec::new();
        for &(text, want) in LABELLED {
            let got = c.classify_text(text);
            if got.intent != want {
                wrong.push(format!("{text:?}: want {want:?}, got {:?}", got.intent));
            }
        }
        for intent in Intent::ALL {
            assert!(LABELLED.iter().filter(|(_, i)| *i == intent).count() >= 6);
        }
        let right = LABELLED.len() - wrong.len();
        assert!(
            right * 10 >= LABELLED.len() * 9,
            "{right}/{} right; wrong: {wrong:#?}",
            LABELLED.len()
        );
    }

    #[test]
    fn exact_cases() {
        let c = LocalClassifier::new();
        assert_eq!(c.classify_text("how much is One Piece vol 3??").intent, P);
        assert_eq!(c.classify_text("recs pls").intent, R);
        assert_eq!(c.classify_text("おすすめ").intent, R);
        assert_eq!(c.classify_text("値段は？").intent, P);
        assert_eq!(c.classify_text("こんにちは").intent, O);
        assert_eq!(c.classify_text("browse horror").intent, B);
        assert_eq!(c.classify_text("Berserk").intent, S);
    }

    #[test]
    fn confidence_is_a_share_and_classifier_is_local() {
        let c = LocalClassifier::new();
        let strong = c.classify_text("how much does it cost, add to cart and checkout");
        assert_eq!(strong.classifier, "local");
        assert!(
            strong.confidence > 0.9 && strong.confidence <= 1.0,
            "{strong:?}"
        );
        let weak = c.classify_text("");
        assert!(weak.confidence > 0.0 && weak.confidence < 0.5, "{weak:?}");
        assert!(c.classify_text("%%%").confidence < 0.5);
    }

    #[tokio::test]
    async fn trait_delegates_to_the_sync_path() {
        let c = LocalClassifier::new();
        let got = c.classify("is it in stock?").await.unwrap();
        assert_eq!(got, c.classify_text("is it in stock?"));
    }
}
