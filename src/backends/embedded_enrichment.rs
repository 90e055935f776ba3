//! The embedded enrichment source: an [`EnrichmentSource`] that serves every enrichment field from
//! an in-memory copy of the catalog, with an injectable latency profile.
//!
//! Price and stock are the catalog's store fields. The deferrable fields are derived, and say so:
//! the cover URL points into the reserved `.invalid` domain, the review blurb is composed from the
//! series' own facts (status, demographic, genres, volumes, year), and related series are the
//! closest by shared genres (Jaccard), same demographic first. They exercise the deferrable path
//! end to end; a real deployment points `enrichment.source = "http"` at its catalog API instead.
//!
//! Enrichment is the dependency the runtime must never let stall the stream, so the embedded
//! default is not instant: every lookup waits a random delay drawn from a [`LatencyProfile`]
//! (2-8 ms by default), and chaos and budget tests widen that profile past the enrichment budget
//! to prove the omission path. The delay is a tokio sleep, so paused-time tests control it.
//!
//! [`EmbeddedEnrichment::mentioned`] finds series the user named outright, so their facts can be
//! fetched while retrieval is still running. It is one Aho-Corasick pass over titles normalized once at
//! construction, cheap enough to call on the session's task.

use std::collections::HashMap;
use std::time::Duration;

use aho_corasick::AhoCorasick;
use async_trait::async_trait;
use mangaassist_protocols::catalog::Series;
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource};
use mangaassist_protocols::turn::{Enrichment, EnrichmentField, FieldSet};
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

/// Related series per lookup.
const MAX_RELATED: usize = 3;

/// Store facts of one series, and what the derived fields are computed from.
#[derive(Debug, Clone)]
struct Facts {
    price_jpy: u32,
    stock: u32,
    title: String,
    status: String,
    demographic: String,
    genres: Vec<String>,
    volumes: u32,
    year: u16,
}

/// Serves price and stock from an in-memory copy of the catalog.
#[derive(Debug, Clone)]
pub struct EmbeddedEnrichment {
    /// Series id -> store facts.
    facts: HashMap<String, Facts>,
    /// Every id, in catalog order (ties in relatedness go to the earlier one).
    order: Vec<String>,
    /// (normalized title, series id), longest title first; pattern ids of `matcher` index it.
    titles: Vec<(String, String)>,
    /// Finds every title in a normalized message in one pass (`None` only if the automaton
    /// could not be built, which leaves name resolution to retrieval).
    matcher: Option<AhoCorasick>,
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
                    title: s.title.clone(),
                    status: s.status.clone(),
                    demographic: s.demographic.clone(),
                    genres: s.genres.clone(),
                    volumes: s.volumes,
                    year: s.year,
                };
                (s.id.clone(), facts)
            })
            .collect();
        let order = catalog.iter().map(|s| s.id.clone()).collect();
        let mut titles: Vec<(String, String)> = catalog
            .iter()
            .map(|s| (normalize(&s.title), s.id.clone()))
            .filter(|(t, _)| t.chars().count() >= MIN_TITLE_CHARS)
            .collect();
        // Longest first, so "Dragon Ball Super" claims its words before "Dragon Ball" can.
        titles.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        // Standard match kind, so overlapping matches are all reported and ranked below.
        let matcher = AhoCorasick::new(titles.iter().map(|(t, _)| t.as_str()))
            .inspect_err(|e| tracing::warn!(error = %e, "title matcher unavailable"))
            .ok();
        Self {
            facts,
            order,
            titles,
            matcher,
            latency,
        }
    }

    /// The `fields` of each id in order, without the latency profile.
    fn facts_for(&self, series_ids: &[String], fields: FieldSet) -> Vec<Enrichment> {
        use EnrichmentField as F;
        series_ids
            .iter()
            .map(|id| {
                let Some(f) = self.facts.get(id) else {
                    return Enrichment::unknown(id.as_str());
                };
                Enrichment {
                    series_id: id.clone(),
                    price_jpy: fields.contains(F::Price).then_some(f.price_jpy),
                    stock: fields.contains(F::Stock).then_some(f.stock),
                    cover_url: fields
                        .contains(F::CoverUrl)
                        .then(|| format!("https://covers.mangaassist.invalid/{id}/volume-1.jpg")),
                    review_blurb: fields.contains(F::ReviewBlurb).then(|| blurb(f)),
                    related: fields.contains(F::Related).then(|| self.related(id, f)),
                }
            })
            .collect()
    }

    /// The closest series by shared genres (Jaccard), same demographic breaking ties; one pass
    /// over the catalog, done only when `related` is asked for.
    fn related(&self, id: &str, of: &Facts) -> Vec<String> {
        let mut scored: Vec<(u32, usize)> = self
            .order
            .iter()
            .enumerate()
            .filter(|(_, other)| other.as_str() != id)
            .filter_map(|(i, other)| {
                let o = self.facts.get(other)?;
                let shared = of.genres.iter().filter(|g| o.genres.contains(g)).count();
                if shared == 0 {
                    return None;
                }
                let union = of.genres.len() + o.genres.len() - shared;
                // Jaccard in thousandths, plus a small bonus for the same demographic.
                let score = (shared * 1000 / union.max(1)) as u32
                    + if o.demographic == of.demographic {
                        100
                    } else {
                        0
                    };
                Some((score, i))
            })
            .collect();
        scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .take(MAX_RELATED)
            .map(|(_, i)| self.order[i].clone())
            .collect()
    }
}

/// A one-line blurb composed from the series' own facts.
fn blurb(f: &Facts) -> String {
    let kind = match f.genres.as_slice() {
        [] => f.demographic.clone(),
        [one] => format!("{one} {}", f.demographic),
        [a, b, ..] => format!("{a} and {b} {}", f.demographic),
    };
    let volumes = if f.volumes == 1 { "volume" } else { "volumes" };
    let run = if f.status == "completed" {
        format!("complete in {} {volumes}", f.volumes)
    } else {
        format!("{} {volumes} so far", f.volumes)
    };
    format!(
        "{}: {} {kind} series since {}, {run}.",
        f.title,
        article(&kind),
        f.year
    )
}

fn article(phrase: &str) -> &'static str {
    match phrase.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

#[async_trait]
impl EnrichmentSource for EmbeddedEnrichment {
    async fn lookup(
        &self,
        series_ids: &[String],
        fields: FieldSet,
    ) -> Result<Vec<Enrichment>, EnrichmentError> {
        let delay = self.latency.sample();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(self.facts_for(series_ids, fields))
    }

    fn name(&self) -> &'static str {
        "embedded_catalog"
    }

    /// Ids of series whose title appears in `text` as whole words (case and punctuation ignored,
    /// titles of at least four characters), longest titles first, at most three. A matched title
    /// masks its words, so a shorter title inside it is not reported too.
    fn mentioned(&self, text: &str) -> Vec<String> {
        let Some(matcher) = &self.matcher else {
            return Vec::new();
        };
        let haystack = normalize(text);
        let bytes = haystack.as_bytes();
        let whole_word = |start: usize, end: usize| {
            (start == 0 || bytes[start - 1] == b' ') && (end == bytes.len() || bytes[end] == b' ')
        };
        // Every whole-word occurrence of every title, in one pass over the message.
        let mut hits: Vec<(usize, usize, usize)> = matcher
            .find_overlapping_iter(&haystack)
            .filter(|m| whole_word(m.start(), m.end()))
            .map(|m| (m.pattern().as_usize(), m.start(), m.end()))
            .collect();
        // Longest title first (pattern order); a title inside a longer one already claimed
        // does not count again.
        hits.sort_unstable();
        let mut claimed: Vec<(usize, usize)> = Vec::new();
        let mut found: Vec<String> = Vec::new();
        for (pattern, start, end) in hits {
            if found.len() >= MAX_MENTIONED {
                break;
            }
            if claimed.iter().any(|&(s, e)| start < e && s < end) {
                continue;
            }
            claimed.push((start, end));
            let id = &self.titles[pattern].1;
            if !found.contains(id) {
                found.push(id.clone());
            }
        }
        found
    }
}

/// A source that serves facts by id but cannot resolve names (a third-party catalog API), with
/// names resolved against the embedded catalog's titles, so the series a user names are still
/// looked up in parallel with retrieval.
pub struct WithCatalogNames {
    /// Resolves names; its own facts are never served.
    pub names: EmbeddedEnrichment,
    /// Serves the facts.
    pub inner: std::sync::Arc<dyn EnrichmentSource>,
}

#[async_trait]
impl EnrichmentSource for WithCatalogNames {
    async fn lookup(
        &self,
        series_ids: &[String],
        fields: FieldSet,
    ) -> Result<Vec<Enrichment>, EnrichmentError> {
        self.inner.lookup(series_ids, fields).await
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn mentioned(&self, text: &str) -> Vec<String> {
        self.names.mentioned(text)
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
        let mandatory = FieldSet::of(&[EnrichmentField::Price, EnrichmentField::Stock]);
        let got = e
            .lookup(&ids(&["monster", "nope", "one-piece"]), mandatory)
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                Enrichment {
                    price_jpy: Some(1100),
                    stock: Some(5),
                    ..Enrichment::unknown("monster")
                },
                Enrichment::unknown("nope"),
                Enrichment {
                    price_jpy: Some(528),
                    stock: Some(12),
                    ..Enrichment::unknown("one-piece")
                },
            ]
        );
        assert!(e.lookup(&[], mandatory).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn deferrable_fields_are_served_only_when_asked() {
        let mut cat = catalog();
        cat[0].genres = vec!["action".into(), "adventure".into()];
        cat[1].genres = vec!["action".into(), "adventure".into()];
        cat[5].genres = vec!["romance".into()];
        cat[5].demographic = "josei".into();
        cat[5].status = "completed".into();
        let e = EmbeddedEnrichment::new(&cat, LatencyProfile::none());
        let got = e
            .lookup(
                &ids(&["one-piece"]),
                FieldSet::of(&[EnrichmentField::Related]),
            )
            .await
            .unwrap();
        assert_eq!(got[0].price_jpy, None, "not asked for");
        assert_eq!(got[0].cover_url, None);
        let related = got[0].related.clone().unwrap();
        assert_eq!(related[0], "dragon-ball", "same genres rank first");
        assert!(!related.contains(&"one-piece".to_string()), "never itself");
        assert!(!related.contains(&"nana".to_string()), "no shared genre");
        assert!(related.len() <= MAX_RELATED);

        let all = e.lookup(&ids(&["nana"]), FieldSet::ALL).await.unwrap();
        let nana = &all[0];
        assert_eq!(nana.price_jpy, Some(460));
        assert!(nana.cover_url.as_deref().unwrap().contains("/nana/"));
        assert_eq!(
            nana.review_blurb.as_deref(),
            Some("NANA: a romance josei series since 2000, complete in 1 volume.")
        );
        assert_eq!(
            nana.related.as_deref(),
            Some(&[][..]),
            "asked, none related"
        );
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
            let got = e.lookup(&ids(&["nana"]), FieldSet::ALL).await.unwrap();
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
        fixed
            .lookup(&ids(&["nana", "ao"]), FieldSet::ALL)
            .await
            .unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(900),
            "one delay per call"
        );

        let none = EmbeddedEnrichment::new(&catalog(), LatencyProfile::none());
        let start = tokio::time::Instant::now();
        none.lookup(&ids(&["nana"]), FieldSet::ALL).await.unwrap();
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
