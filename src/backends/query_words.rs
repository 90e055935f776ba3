//! Shop-talk filler removed from a customer's message before it becomes a catalog query, the
//! same for every retrieval backend (tantivy, OpenSearch), so they rank on the same words.

/// Words of shop talk that say how a customer asks, not what they want ("any", "manga",
/// "recommend", "volumes"). Left in, they outscore the words that matter: "any horror manga with
/// few volumes" would rank by "manga" and "volumes" in synopses instead of by "horror".
pub const QUERY_STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "af",
    "an",
    "and",
    "any",
    "anything",
    "are",
    "available",
    "best",
    "book",
    "books",
    "buy",
    "can",
    "cheap",
    "could",
    "cost",
    "do",
    "does",
    "find",
    "for",
    "get",
    "give",
    "good",
    "got",
    "have",
    "hello",
    "hey",
    "hi",
    "how",
    "i",
    "im",
    "in",
    "is",
    "it",
    "its",
    "like",
    "looking",
    "manga",
    "mangas",
    "many",
    "me",
    "more",
    "much",
    "my",
    "need",
    "new",
    "of",
    "on",
    "or",
    "other",
    "please",
    "pls",
    "plz",
    "price",
    "read",
    "rec",
    "recommend",
    "recommendation",
    "recommendations",
    "recs",
    "series",
    "show",
    "similar",
    "some",
    "something",
    "stock",
    "suggest",
    "tell",
    "thanks",
    "that",
    "the",
    "there",
    "this",
    "title",
    "titles",
    "to",
    "u",
    "vol",
    "vols",
    "volume",
    "volumes",
    "wanna",
    "want",
    "what",
    "which",
    "with",
    "would",
    "you",
    "your",
];

/// The query without shop-talk filler; the whole query when nothing else is left.
pub fn content_words(query: &str) -> String {
    let kept: Vec<&str> = query
        .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .filter(|w| !w.is_empty())
        .filter(|w| {
            let lower = w.to_lowercase();
            !QUERY_STOP_WORDS.contains(&lower.trim_matches('\'').replace('\'', "").as_str())
        })
        .collect();
    if kept.is_empty() {
        query.to_owned()
    } else {
        kept.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shop_talk_is_dropped_from_queries() {
        assert_eq!(
            content_words("any horror manga with few volumes?"),
            "horror few"
        );
        assert_eq!(content_words("recommend something like Frieren"), "Frieren");
        assert_eq!(content_words("how much is one piece vol 3"), "one piece 3");
        assert_eq!(content_words("i'm looking for JoJo's"), "JoJo's");
        // Nothing but filler: search with what was said rather than nothing.
        assert_eq!(content_words("show me some manga"), "show me some manga");
    }
}
