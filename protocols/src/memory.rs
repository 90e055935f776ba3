//! What a session remembers beyond its verbatim turns: the customer's stated preferences, and a
//! rolling summary of turns too old to send word for word.
//!
//! [`Preferences`] is a small structured object, not prose: each fact keeps the turn it came
//! from, a later statement overrides an earlier one ("I like horror after all" removes horror from
//! the dislikes), and it renders to a block of bounded size that context assembly always sends.
//! [`Preferences::allows`] is the same facts applied to a catalog document, so a disliked genre
//! or an over-long series never reaches the prompt in the first place.

use serde::{Deserialize, Serialize};

use crate::turn::{RetrievedDoc, estimate_tokens};

/// A fact and the turn (index in the session) that stated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noted<T> {
    /// The fact.
    pub value: T,
    /// The turn index it came from.
    pub turn: u32,
}

/// What the customer said they like, dislike and need. Every list holds lowercase values without
/// duplicates; a value is in at most one of a liked/disliked pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// Genres from the catalog vocabulary the customer likes.
    pub liked_genres: Vec<Noted<String>>,
    /// Genres the customer does not want.
    pub disliked_genres: Vec<Noted<String>>,
    /// Titles (as the customer wrote them) the customer likes.
    pub liked_titles: Vec<Noted<String>>,
    /// Titles the customer does not want.
    pub disliked_titles: Vec<Noted<String>>,
    /// Longest series (in volumes) the customer wants.
    pub max_volumes: Option<Noted<u32>>,
    /// Most the customer wants to spend per volume, in yen.
    pub budget_jpy: Option<Noted<u32>>,
    /// The reader's age.
    pub reader_age: Option<Noted<u32>>,
    /// The language the customer reads in (`english`, `japanese`, ...).
    pub language: Option<Noted<String>>,
}

/// What one message said, to be merged into [`Preferences`]: statements in message order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferenceUpdate {
    /// The statements, in the order they were made.
    pub statements: Vec<Statement>,
}

impl PreferenceUpdate {
    /// True when the message stated nothing.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}

/// One stated preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// Likes a genre (lowercase, from the vocabulary).
    LikesGenre(String),
    /// Does not want a genre.
    DislikesGenre(String),
    /// Likes a title.
    LikesTitle(String),
    /// Does not want a title.
    DislikesTitle(String),
    /// At most this many volumes.
    MaxVolumes(u32),
    /// At most this many yen per volume.
    BudgetJpy(u32),
    /// The reader's age.
    ReaderAge(u32),
    /// Reads in this language.
    Language(String),
}

fn put(list: &mut Vec<Noted<String>>, value: &str, turn: u32) {
    list.retain(|n| n.value != value);
    list.push(Noted {
        value: value.to_owned(),
        turn,
    });
}

fn remove(list: &mut Vec<Noted<String>>, value: &str) {
    list.retain(|n| n.value != value);
}

/// Most entries kept per list; the oldest go first.
const MAX_PER_LIST: usize = 8;

impl Preferences {
    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == Preferences::default()
    }

    /// Applies `update`, stated at turn `turn`: later statements win over earlier ones.
    pub fn apply(&mut self, update: &PreferenceUpdate, turn: u32) {
        for s in &update.statements {
            match s {
                Statement::LikesGenre(g) => {
                    remove(&mut self.disliked_genres, g);
                    put(&mut self.liked_genres, g, turn);
                }
                Statement::DislikesGenre(g) => {
                    remove(&mut self.liked_genres, g);
                    put(&mut self.disliked_genres, g, turn);
                }
                Statement::LikesTitle(t) => {
                    remove(&mut self.disliked_titles, t);
                    put(&mut self.liked_titles, t, turn);
                }
                Statement::DislikesTitle(t) => {
                    remove(&mut self.liked_titles, t);
                    put(&mut self.disliked_titles, t, turn);
                }
                Statement::MaxVolumes(n) => self.max_volumes = Some(Noted { value: *n, turn }),
                Statement::BudgetJpy(n) => self.budget_jpy = Some(Noted { value: *n, turn }),
                Statement::ReaderAge(n) => self.reader_age = Some(Noted { value: *n, turn }),
                Statement::Language(l) => {
                    self.language = Some(Noted {
                        value: l.clone(),
                        turn,
                    });
                }
            }
        }
        for list in [
            &mut self.liked_genres,
            &mut self.disliked_genres,
            &mut self.liked_titles,
            &mut self.disliked_titles,
        ] {
            let extra = list.len().saturating_sub(MAX_PER_LIST);
            list.drain(..extra);
        }
    }

    /// Whether a catalog document respects the hard preferences: none of its genres disliked,
    /// its title not disliked, no more volumes than the maximum. Likes, budget, age and language
    /// inform the answer but exclude nothing.
    pub fn allows(&self, doc: &RetrievedDoc) -> bool {
        self.excludes_why(doc).is_none()
    }

    /// Why `doc` is excluded (`"horror"`, `"13 volumes > 4"`), or `None`.
    pub fn excludes_why(&self, doc: &RetrievedDoc) -> Option<String> {
        for g in &doc.genres {
            let g = g.to_lowercase();
            if self.disliked_genres.iter().any(|d| d.value == g) {
                return Some(g);
            }
        }
        let title = doc.title.to_lowercase();
        if let Some(t) = self
            .disliked_titles
            .iter()
            .find(|t| !t.value.is_empty() && title.contains(&t.value))
        {
            return Some(t.value.clone());
        }
        match &self.max_volumes {
            Some(max) if doc.volumes > max.value => {
                Some(format!("{} volumes > {}", doc.volumes, max.value))
            }
            _ => None,
        }
    }

    /// The block context assembly sends, at most `max_tokens` (estimated) long: one line per
    /// kind of fact; list entries are dropped oldest first until it fits. Empty when nothing is
    /// known.
    pub fn render(&self, max_tokens: u32) -> String {
        if self.is_empty() {
            return String::new();
        }
        let mut lists: Vec<(&str, Vec<&str>)> = vec![
            ("Dislikes genres", names(&self.disliked_genres)),
            ("Does not want", names(&self.disliked_titles)),
            ("Likes genres", names(&self.liked_genres)),
            ("Likes", names(&self.liked_titles)),
        ];
        let mut scalars = Vec::new();
        if let Some(n) = &self.max_volumes {
            scalars.push(format!("At most {} volumes per series", n.value));
        }
        if let Some(n) = &self.budget_jpy {
            scalars.push(format!("Budget: at most {} yen per volume", n.value));
        }
        if let Some(n) = &self.reader_age {
            scalars.push(format!("Reader's age: {}", n.value));
        }
        if let Some(l) = &self.language {
            scalars.push(format!("Reads in {}", l.value));
        }
        loop {
            let mut out = String::from("Customer preferences (always respect them):\n");
            for line in &scalars {
                out.push_str("- ");
                out.push_str(line);
                out.push('\n');
            }
            for (label, values) in &lists {
                if !values.is_empty() {
                    out.push_str(&format!("- {label}: {}\n", values.join(", ")));
                }
            }
            if estimate_tokens(&out) <= max_tokens {
                return out;
            }
            // Drop the oldest entry of the longest list; likes go before dislikes.
            // (`max_by_key` returns the last of equals: the likes, listed last.)
            let longest = lists
                .iter_mut()
                .max_by_key(|(_, v)| v.len())
                .filter(|(_, v)| !v.is_empty());
            match longest {
                Some((_, v)) => {
                    v.remove(0);
                }
                None if !scalars.is_empty() => {
                    scalars.pop();
                }
                None => return String::new(),
            }
        }
    }
}

fn names(list: &[Noted<String>]) -> Vec<&str> {
    list.iter().map(|n| n.value.as_str()).collect()
}

/// One line of a session summary: what a turn said that is worth keeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryLine {
    /// The turn index.
    pub turn: u32,
    /// The kept words.
    pub text: String,
}

/// A rolling summary of the turns older than the verbatim window, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// Kept lines, oldest first.
    pub lines: Vec<SummaryLine>,
    /// Turns folded into the summary so far (kept or not).
    pub turns_covered: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(title: &str, genres: &[&str], volumes: u32) -> RetrievedDoc {
        RetrievedDoc {
            series_id: title.to_lowercase().replace(' ', "-"),
            title: title.into(),
            author: "A".into(),
            genres: genres.iter().map(|g| (*g).to_owned()).collect(),
            demographic: "seinen".into(),
            volumes,
            synopsis: String::new(),
            score: 1.0,
        }
    }

    fn update(s: Vec<Statement>) -> PreferenceUpdate {
        PreferenceUpdate { statements: s }
    }

    #[test]
    fn later_statements_override_earlier_ones() {
        let mut p = Preferences::default();
        p.apply(
            &update(vec![
                Statement::DislikesGenre("horror".into()),
                Statement::MaxVolumes(4),
            ]),
            3,
        );
        assert!(!p.allows(&doc("Uzumaki", &["horror"], 3)));
        assert!(!p.allows(&doc("Long One", &["comedy"], 12)));
        assert!(p.allows(&doc("Short Comedy", &["comedy"], 4)));
        assert_eq!(p.disliked_genres[0].turn, 3);

        p.apply(
            &update(vec![
                Statement::LikesGenre("horror".into()),
                Statement::MaxVolumes(20),
            ]),
            9,
        );
        assert!(p.disliked_genres.is_empty());
        assert_eq!(
            p.liked_genres[0],
            Noted {
                value: "horror".into(),
                turn: 9
            }
        );
        assert!(p.allows(&doc("Uzumaki", &["horror"], 3)));
        assert!(p.allows(&doc("Long One", &["comedy"], 12)));
    }

    #[test]
    fn disliked_titles_match_inside_the_title() {
        let mut p = Preferences::default();
        p.apply(&update(vec![Statement::DislikesTitle("berserk".into())]), 0);
        assert_eq!(
            p.excludes_why(&doc("Berserk Deluxe", &["fantasy"], 14)),
            Some("berserk".into())
        );
        assert!(p.allows(&doc("Frieren", &["fantasy"], 13)));
    }

    #[test]
    fn the_block_fits_its_budget_and_keeps_the_hard_facts_longest() {
        let mut p = Preferences::default();
        assert_eq!(p.render(200), "");
        let mut s = vec![
            Statement::DislikesGenre("horror".into()),
            Statement::MaxVolumes(4),
        ];
        for i in 0..8 {
            s.push(Statement::LikesTitle(format!(
                "a fairly long liked title number {i}"
            )));
        }
        p.apply(&update(s), 1);
        let full = p.render(1_000);
        assert!(full.contains("Dislikes genres: horror"), "{full}");
        assert!(full.contains("At most 4 volumes"), "{full}");
        assert!(
            full.contains("number 0") && full.contains("number 7"),
            "{full}"
        );
        let small = p.render(60);
        assert!(estimate_tokens(&small) <= 60, "{small}");
        assert!(small.contains("Dislikes genres: horror"), "{small}");
        assert!(small.contains("At most 4 volumes"), "{small}");
        assert!(
            !small.contains("number 0") && small.contains("number 7"),
            "{small}"
        );
        assert_eq!(p.render(5), "", "nothing fits: nothing, never a torn block");
    }

    #[test]
    fn lists_stay_bounded() {
        let mut p = Preferences::default();
        let s = (0..20)
            .map(|i| Statement::LikesTitle(format!("t{i}")))
            .collect();
        p.apply(&update(s), 0);
        assert_eq!(p.liked_titles.len(), MAX_PER_LIST);
        assert_eq!(p.liked_titles[0].value, "t12");
    }
}
