//! The embedded enrichment source: an [`EnrichmentSource`] that serves price and stock from the
//! catalog's store fields, with an injectable latency profile.
//!
//! Enrichment is the dependency the runtime must never let stall the stream, so the embedded
//! default is not instant: every lookup waits a random delay drawn from a [`LatencyProfile`]
//! (2-8 ms by default), and chaos and budget tests widen that profile past the enrichment budget
//! to prove the omission path. The delay is a tokio sleep, so paused-time tests control it.
//!
//! [`EmbeddedEnrichment::mentioned`] finds series the user named outright, so their facts can be
//! fetched while retrieval is still running. It is a linear scan over titles normalized once at
//! construction, cheap enough to call on the session's task.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use mangaassist_protocols::catalog::Series;
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource};
use mangaassist_protocols::turn::Enrichment;
use rand::Rng;

/// Shortest normalized title [`EmbeddedEnrichment::mentioned`] will match; shorter ones ("Ao",
/// "K") appear inside ordinary chat far too often.
const MIN_TITLE_CHARS: usize = 4;

/// Most ids [`EmbeddedEnrichment::mentioned`] returns.
const MAX_MENTIONED: usize = 3;

/// How long each lookup call waits before answering: uniform in `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyProfile {
    /// Shortest delay.
    pub min: Duration,
    /// Longest delay (taken as `min` when smaller than it).
    pub max: Duration,
}

impl LatencyProfile {
    /// No delay at all.
    pub fn none() -> Self {
        Self {
            min: Duration::ZERO,
            max: Duration::ZERO,
        }
    }

    /// One delay drawn from the profile.
    pub fn sample(&self) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        rand::rng().random_range(self.min..=self.max)
    }
}

impl Default for LatencyProfile {
    /// 2-8 ms: an in-region key-value lookup.
    fn default() -> Self {
        Self {
            min: Duration::from_millis(2),
            max: Duration::from_millis(8),
        }
    }
}

/// Store facts of one series.
#[derive(Debug, Clone, Copy)]
struct Facts {
    price_jpy: u32,
    stock: u32,
}

/// Serves price and stock from an in-memory copy of the catalog.
#[derive(Debug, Clone)]
pub struct EmbeddedEnrichment {
    /// Series id -> store facts.
    facts: HashMap<String, Facts>,
    /// (normalized title padded with one space each side, series id), longest title first.
    titles: Vec<(String, String)>,
    /// Delay per lookup call.
    latency: LatencyProfile,
}

/// Lowercase, letters and digits only, words separated by one space.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars().flat_map(char::to_lowercase) {
        if ch.is_alphanumeric() {
            out.push(ch);
        } else if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

impl EmbeddedEnrichment {
    /// Copies the store fields and normalized titles out of `catalog`.
    pub fn new(catalog: &[Series], latency: LatencyProfile) -> Self {
        let facts = catalog
            .iter()
            .map(|s| {
                let facts = Facts {
                    price_jpy: s.price_jpy,
                    stock: s.stock,
                };
                (s.id.clone(), facts)
            })
            .collect();
        let mut titles: Vec<(String, String)> = catalog
            .iter()
            .map(|s| (normalize(&s.title), s.id.clone()))
            .filter(|(t, _)| t.chars().count() >= MIN_TITLE_CHARS)
            .map(|(t, id)| (format!(" {t} "), id))
            .collect();
        // Longest first, so "Dragon Ball Super" claims its words before "Dragon Ball" can.
        titles.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self {
            facts,
            titles,
            latency,
        }
    }

    /// The facts for each id in order, without the latency profile.
    fn facts_for(&self, series_ids: &[String]) -> Vec<Enrichment> {
        series_ids
            .iter()
            .map(|id| {
                let facts = self.facts.get(id);
                Enrichment {
                    series_id: id.clone(),
                    price_jpy: facts.map(|f| f.price_jpy),
                    stock: facts.map(|f| f.stock),
                }
            })
            .collect()
    }
}

#[async_trait]
impl EnrichmentSource for EmbeddedEnrichment {
    async fn lookup(&self, series_ids: &[String]) -> Result<Vec<Enrichment>, EnrichmentError> {
        let delay = self.latency.sample();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(self.facts_for(series_ids))
    }

    /// Ids of series whose title appears in `text` as whole words (case and punctuation ignored,
    /// titles of at least four characters), longest titles first, at most three. A matched title
    /// masks its words, so a shorter title inside it is not reported too.
    fn mentioned(&self, text: &str) -> Vec<String> {
        let mut haystack = format!(" {} ", normalize(text));
        let mut found: Vec<String> = Vec::new();
        for (title, id) in &self.titles {
            if found.len() >= MAX_MENTIONED {
                break;
            }
            if title.len() > haystack.len() {
                continue;
            }
            if let Some(at) = haystack.find(title.as_str()) {
                if !found.contains(id) {
                    found.push(id.clone());
                }
                // Keep the boundary spaces so neighbouring titles still match whole words.
                let inner = at + 1..at + title.len() - 1;
                haystack.replace_range(inner.clone(), &"|".repeat(inner.len()));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(id: &str, title: &str, price: u32, stock: u32) -> Series {
        Series {
            id: id.to_string(),
            title: title.to_string(),
            author: "A".to_string(),
            genres: vec!["action".to_string()],
            demographic: "shonen".to_string(),
            volumes: 1,
            status: "ongoing".to_string(),
            year: 2000,
            synopsis: "s".to_string(),
            price_jpy: price,
            stock,
        }
    }

    fn catalog() -> Vec<Series> {
        vec![
            series("one-piece", "One Piece", 528, 12),
            series("dragon-ball", "Dragon Ball", 484, 0),
            series("dragon-ball-super", "Dragon Ball Super", 528, 7),
            series("kaguya", "Kaguya-sama: Love Is War", 594, 3),
            series("ao", "Ao", 500, 1),
            series("nana", "NANA", 460, 2),
            series("monster", "Monster", 1100, 5),
        ]
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn lookup_keeps_order_and_marks_unknown_ids() {
        let e = EmbeddedEnrichment::new(&catalog(), LatencyProfile::none());
        let got = e
            .lookup(&ids(&["monster", "nope", "one-piece"]))
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                Enrichment {
                    series_id: "monster".into(),
                    price_jpy: Some(1100),
                    stock: Some(5)
                },
                Enrichment {
                    series_id: "nope".into(),
                    price_jpy: None,
                    stock: None
                },
                Enrichment {
                    series_id: "one-piece".into(),
                    price_jpy: Some(528),
                    stock: Some(12)
                },
            ]
        );
        assert!(e.lookup(&[]).await.unwrap().is_empty());
    }

    #[test]
    fn mentioned_finds_whole_word_titles() {
        let e = EmbeddedEnrichment::new(&catalog(), LatencyProfile::none());
        assert_eq!(
            e.mentioned("how much is One Piece vol 3??"),
            ids(&["one-piece"])
        );
        assert_eq!(
            e.mentioned("is kaguya sama love is war out?"),
            ids(&["kaguya"])
        );
        // Longest first, and the shorter title inside it is masked.
        assert_eq!(
            e.mentioned("dragon ball super or one piece"),
            ids(&["dragon-ball-super", "one-piece"])
        );
        assert_eq!(
            e.mentioned("Dragon Ball, then Dragon Ball Super"),
            ids(&["dragon-ball-super", "dragon-ball"])
        );
        // Whole words only, and titles under four characters never match.
        assert!(e.mentioned("someone pieces it together").is_empty());
        assert!(e.mentioned("ao").is_empty());
        assert!(e.mentioned("bananas").is_empty());
        assert_eq!(e.mentioned("NANA!"), ids(&["nana"]));
        // At most three, no duplicates.
        let many = e.mentioned("one piece, nana, monster, dragon ball, one piece");
        assert_eq!(many.len(), 3);
        let mut dedup = many.clone();
        dedup.dedup();
        assert_eq!(dedup, many);
        assert!(e.mentioned("").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn latency_profile_is_honoured() {
        let profile = LatencyProfile {
            min: Duration::from_millis(30),
            max: Duration::from_millis(50),
        };
        let e = EmbeddedEnrichment::new(&catalog(), profile);
        for _ in 0..20 {
            let start = tokio::time::Instant::now();
            let got = e.lookup(&ids(&["nana"])).await.unwrap();
            let waited = start.elapsed();
            assert_eq!(got[0].price_jpy, Some(460));
            assert!(
                waited >= Duration::from_millis(30) && waited <= Duration::from_millis(50),
                "{waited:?}"
            );
        }

        let fixed = EmbeddedEnrichment::new(
            &catalog(),
            LatencyProfile {
                min: Duration::from_millis(900),
                max: Duration::from_millis(900),
            },
        );
        let start = tokio::time::Instant::now();
        fixed.lookup(&ids(&["nana", "ao"])).await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(900),
            "one delay per call"
        );

        let none = EmbeddedEnrichment::new(&catalog(), LatencyProfile::none());
        let start = tokio::time::Instant::now();
        none.lookup(&ids(&["nana"])).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn default_profile_is_two_to_eight_ms() {
        let p = LatencyProfile::default();
        for _ in 0..100 {
            let d = p.sample();
            assert!(d >= Duration::from_millis(2) && d <= Duration::from_millis(8));
        }
    }
}
