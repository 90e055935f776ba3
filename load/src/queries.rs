//! The built-in shop queries sessions send, mixing every intent the classifier knows.
//!
//! Session `s` sends query `(s + n) % len` as its turn `n`, so concurrent sessions are at different
//! points of the list and every intent is in flight at once.

/// ~20 realistic messages to a manga shop: search, browse, recommend, purchase and other.
pub const QUERIES: [&str; 20] = [
    // search
    "do you have chainsaw man",
    "is vinland saga in stock",
    "looking for the berserk deluxe edition",
    "do you carry spy x family",
    // browse
    "show me romance manga",
    "what horror manga do you have",
    "any new shonen series this month",
    "browse sports manga",
    // recommend
    "recommend something like frieren",
    "what should i read after attack on titan",
    "something similar to mushishi, calm and strange",
    "a cozy slice of life series for a beginner",
    // purchase
    "how much is one piece volume 3",
    "add jujutsu kaisen volume 1 to my cart",
    "can chainsaw man volume 12 ship today",
    "what does shipping cost for a box set",
    // other
    "hi",
    "where is my order",
    "thanks, that's all",
    "can you tell me a joke",
];

/// The text session `session` (0-based) sends as turn `turn` (1-based).
pub fn query_for(session: u64, turn: u64) -> &'static str {
    let len = QUERIES.len() as u64;
    QUERIES[((session % len + turn % len) % len) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_cycle_and_are_valid_messages() {
        assert_eq!(query_for(0, 1), QUERIES[1]);
        assert_eq!(query_for(0, 21), QUERIES[1]);
        assert_eq!(query_for(3, 1), QUERIES[4]);
        assert_eq!(
            query_for(u64::MAX, u64::MAX),
            query_for(u64::MAX % 20, u64::MAX % 20)
        );
        assert!(
            QUERIES
                .iter()
                .all(|q| !q.trim().is_empty() && q.len() < 200)
        );
    }
}
