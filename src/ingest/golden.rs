//! The golden retrieval set and recall@k: the yardstick a new index must meet before it serves.
//!
//! The set lives in `data/retrieval/golden.jsonl` (format and provenance in
//! `data/retrieval/README.md`) and is embedded as [`BUILTIN`]. Each line is a customer-style query
//! and the series ids a good retriever must return in its top k. [`recall_at`] runs every query
//! through a [`Retriever`] and scores it; [`compare`] lines up two scores (the live index and a
//! shadow build) and names the queries that got worse, which is what an ingest gate needs to
//! refuse a regressing index.
//!
//! Inputs: the set's text and a retriever. Outputs: a [`Recall`] (mean and per query) and a list
//! of [`Regression`]s. Failure policy: a malformed set is an error naming its line; a failed
//! search aborts the run with the retriever's own [`RetrievalError`] (a recall computed without
//! some queries would look better than it is).

use std::collections::{HashMap, HashSet};

use mangaassist_protocols::ports::{RetrievalError, Retriever};
use serde::{Deserialize, Serialize};

/// The shipped golden set, `data/retrieval/golden.jsonl`, embedded in the binary.
pub const BUILTIN: &str = include_str!("../../data/retrieval/golden.jsonl");

/// Slack for float comparisons in [`compare`], so a drop of exactly `max_drop` is not flagged
/// because of rounding (1.0 - 0.9 is not exactly 0.1).
const EPSILON: f64 = 1e-9;

/// One query of the golden set and what a good retriever must return for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenQuery {
    /// What the customer typed, as they typed it (typos included).
    pub query: String,
    /// Series ids that must appear in the top k; non-empty, no repeats.
    pub expected: Vec<String>,
}

/// Why a golden set could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// A line is not a valid golden query object.
    #[error("golden line {line}: {source}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What serde said.
        source: serde_json::Error,
    },
    /// A line's query is empty or only whitespace.
    #[error("golden line {line}: empty query")]
    EmptyQuery {
        /// 1-based line number.
        line: usize,
    },
    /// A line expects no series, so its recall would be undefined.
    #[error("golden line {line}: `expected` is empty")]
    NoExpected {
        /// 1-based line number.
        line: usize,
    },
    /// A line lists the same series twice, which would let recall exceed what was found.
    #[error("golden line {line}: series `{id}` is expected twice")]
    RepeatedExpected {
        /// 1-based line number.
        line: usize,
        /// The repeated id.
        id: String,
    },
    /// Two lines carry the same query; [`compare`] matches queries by text, so they must differ.
    #[error("golden line {line}: query `{query}` already on line {first}")]
    DuplicateQuery {
        /// 1-based line number of the second one.
        line: usize,
        /// 1-based line number of the first one.
        first: usize,
        /// The query.
        query: String,
    },
    /// The set has no queries.
    #[error("golden set is empty")]
    Empty,
}

/// Parses a golden set: one JSON object per line, blank lines skipped.
pub fn parse(text: &str) -> Result<Vec<GoldenQuery>, GoldenError> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let q: GoldenQuery =
            serde_json::from_str(raw).map_err(|source| GoldenError::Line { line, source })?;
        if q.query.trim().is_empty() {
            return Err(GoldenError::EmptyQuery { line });
        }
        if q.expected.is_empty() {
            return Err(GoldenError::NoExpected { line });
        }
        let mut ids = HashSet::new();
        for id in &q.expected {
            if !ids.insert(id.as_str()) {
                return Err(GoldenError::RepeatedExpected {
                    line,
                    id: id.clone(),
                });
            }
        }
        if let Some(&first) = seen.get(&q.query) {
            return Err(GoldenError::DuplicateQuery {
                line,
                first,
                query: q.query,
            });
        }
        seen.insert(q.query.clone(), line);
        out.push(q);
    }
    if out.is_empty() {
        return Err(GoldenError::Empty);
    }
    Ok(out)
}

/// The shipped golden set ([`BUILTIN`]), parsed.
pub fn builtin() -> Result<Vec<GoldenQuery>, GoldenError> {
    parse(BUILTIN)
}

/// How one query scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryRecall {
    /// The query text.
    pub query: String,
    /// `|expected ∩ top k| / |expected|`, in `0.0..=1.0`.
    pub recall: f64,
    /// The ids the retriever returned, best first (at most k).
    pub got: Vec<String>,
    /// Expected ids that were not in `got`, in the set's order; what a report shows for a miss.
    pub missed: Vec<String>,
}

/// Recall@k of a retriever over a golden set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recall {
    /// How many results per query were scored.
    pub k: usize,
    /// Mean of the per-query recalls (every query weighs the same); 0.0 for an empty set.
    pub mean: f64,
    /// One entry per query, in the set's order.
    pub per_query: Vec<QueryRecall>,
}

impl Recall {
    /// The queries that did not find everything they expected.
    pub fn misses(&self) -> impl Iterator<Item = &QueryRecall> {
        self.per_query.iter().filter(|q| !q.missed.is_empty())
    }
}

/// Scores one query: the share of `expected` found in `got`, and which ids were missed.
fn score(expected: &[String], got: &[String]) -> (f64, Vec<String>) {
    let missed: Vec<String> = expected
        .iter()
        .filter(|id| !got.contains(id))
        .cloned()
        .collect();
    if expected.is_empty() {
        return (0.0, missed);
    }
    let found = expected.len() - missed.len();
    (found as f64 / expected.len() as f64, missed)
}

/// Runs every query of `set` through `retriever` and computes recall@`k`.
///
/// Per query, recall is `|expected ∩ top k| / |expected|`; the set's recall is the mean over
/// queries. Queries run one after another, so the figure does not depend on the retriever's
/// behaviour under concurrency. With `k == 0` every recall is 0. The first failed search aborts the
/// run.
pub async fn recall_at(
    retriever: &dyn Retriever,
    set: &[GoldenQuery],
    k: usize,
) -> Result<Recall, RetrievalError> {
    let mut per_query = Vec::with_capacity(set.len());
    for q in set {
        let docs = if k == 0 {
            Vec::new()
        } else {
            retriever.search(&q.query, k).await?
        };
        let got: Vec<String> = docs.into_iter().take(k).map(|d| d.series_id).collect();
        let (recall, missed) = score(&q.expected, &got);
        per_query.push(QueryRecall {
            query: q.query.clone(),
            recall,
            got,
            missed,
        });
    }
    let mean = if per_query.is_empty() {
        0.0
    } else {
        per_query.iter().map(|q| q.recall).sum::<f64>() / per_query.len() as f64
    };
    Ok(Recall { k, mean, per_query })
}

/// A query that scored worse on the shadow index than on the live one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Regression {
    /// The query text.
    pub query: String,
    /// Its recall on the live index.
    pub live: f64,
    /// Its recall on the shadow index (0.0 when the shadow run lacks the query).
    pub shadow: f64,
    /// Expected ids the shadow index missed, so a report can say what went away.
    pub shadow_missed: Vec<String>,
}

impl Regression {
    /// How much recall was lost (`live - shadow`).
    pub fn lost(&self) -> f64 {
        self.live - self.shadow
    }
}

/// The queries whose recall drops by more than `max_drop` (absolute, e.g. 0.10) from `live` to
/// `shadow`, in `live`'s order.
///
/// Both runs should come from the same set at the same k; queries are matched by text. A query
/// of `live` missing from `shadow` counts as recall 0 there. Improvements and drops of at most
/// `max_drop` are not reported.
pub fn compare(live: &Recall, shadow: &Recall, max_drop: f64) -> Vec<Regression> {
    let shadow_by_query: HashMap<&str, &QueryRecall> = shadow
        .per_query
        .iter()
        .map(|q| (q.query.as_str(), q))
        .collect();
    live.per_query
        .iter()
        .filter_map(|l| {
            let (shadow_recall, shadow_missed) = match shadow_by_query.get(l.query.as_str()) {
                Some(s) => (s.recall, s.missed.clone()),
                None => (0.0, Vec::new()),
            };
            (l.recall - shadow_recall > max_drop + EPSILON).then(|| Regression {
                query: l.query.clone(),
                live: l.recall,
                shadow: shadow_recall,
                shadow_missed,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use mangaassist_protocols::catalog::parse_jsonl;
    use mangaassist_protocols::turn::RetrievedDoc;

    /// Answers every query with the same ids, or fails.
    struct Fixed(Result<Vec<&'static str>, RetrievalError>);

    #[async_trait]
    impl Retriever for Fixed {
        async fn search(
            &self,
            _query: &str,
            limit: usize,
        ) -> Result<Vec<RetrievedDoc>, RetrievalError> {
            let ids = self.0.clone()?;
            Ok(ids
                .into_iter()
                .take(limit)
                .map(|id| RetrievedDoc {
                    series_id: id.to_string(),
                    title: id.to_string(),
                    author: String::new(),
                    genres: Vec::new(),
                    demographic: String::new(),
                    volumes: 1,
                    synopsis: String::new(),
                    score: 1.0,
                })
                .collect())
        }
    }

    fn q(query: &str, expected: &[&str]) -> GoldenQuery {
        GoldenQuery {
            query: query.to_string(),
            expected: expected.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn recall_of(pairs: &[(&str, f64)]) -> Recall {
        Recall {
            k: 5,
            mean: 0.0,
            per_query: pairs
                .iter()
                .map(|(query, recall)| QueryRecall {
                    query: query.to_string(),
                    recall: *recall,
                    got: Vec::new(),
                    missed: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn parses_lines_and_skips_blanks() {
        let set = parse(
            "{\"query\": \"berserk\", \"expected\": [\"berserk\"]}\n\n\
             {\"query\": \"tite kubo\", \"expected\": [\"bleach\", \"burn-the-witch\"]}\n",
        )
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set[1], q("tite kubo", &["bleach", "burn-the-witch"]));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let ok = "{\"query\": \"a\", \"expected\": [\"x\"]}";
        let cases = [
            (format!("{ok}\nnot json"), "golden line 2:"),
            (
                format!("{ok}\n\n{{\"query\": \"b\", \"expected\": [\"x\"], \"extra\": 1}}"),
                "golden line 3:",
            ),
            (
                format!("{ok}\n{{\"query\": \"  \", \"expected\": [\"x\"]}}"),
                "golden line 2: empty query",
            ),
            (
                format!("{ok}\n{{\"query\": \"b\", \"expected\": []}}"),
                "golden line 2: `expected` is empty",
            ),
            (
                format!("{ok}\n{{\"query\": \"b\", \"expected\": [\"y\", \"y\"]}}"),
                "golden line 2: series `y` is expected twice",
            ),
            (
                format!("{ok}\n{ok}"),
                "golden line 2: query `a` already on line 1",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
        assert!(matches!(parse("\n \n"), Err(GoldenError::Empty)));
    }

    #[test]
    fn every_expected_id_is_in_the_builtin_catalog() {
        let catalog = parse_jsonl(crate::runtime::BUILTIN_CATALOG).unwrap();
        let ids: HashSet<&str> = catalog.iter().map(|s| s.id.as_str()).collect();
        let set = builtin().unwrap();
        assert!(set.len() >= 60, "only {} golden queries", set.len());
        for g in &set {
            for id in &g.expected {
                assert!(ids.contains(id.as_str()), "{:?}: unknown id {id}", g.query);
            }
        }
    }

    #[tokio::test]
    async fn recall_is_the_mean_of_per_query_shares() {
        let retriever = Fixed(Ok(vec!["a", "b", "c", "d", "e", "f"]));
        let set = [
            q("all found", &["a", "b"]),
            q("half found", &["b", "z"]),
            q("beyond k", &["f"]),
            q("one of three", &["c", "y", "x"]),
        ];
        let r = recall_at(&retriever, &set, 5).await.unwrap();
        let per: Vec<f64> = r.per_query.iter().map(|p| p.recall).collect();
        assert_eq!(per, [1.0, 0.5, 0.0, 1.0 / 3.0]);
        assert!((r.mean - (1.0 + 0.5 + 0.0 + 1.0 / 3.0) / 4.0).abs() < 1e-12);
        assert_eq!(r.per_query[0].got, ["a", "b", "c", "d", "e"]);
        assert_eq!(r.per_query[1].missed, ["z"]);
        assert_eq!(r.per_query[3].missed, ["y", "x"]);
        assert_eq!(r.misses().count(), 3);

        let r = recall_at(&retriever, &set, 6).await.unwrap();
        assert_eq!(r.per_query[2].recall, 1.0);
        let r = recall_at(&retriever, &set, 0).await.unwrap();
        assert_eq!(r.mean, 0.0);
    }

    #[tokio::test]
    async fn a_failed_search_fails_the_run() {
        let retriever = Fixed(Err(RetrievalError::Unavailable("down".to_string())));
        let err = recall_at(&retriever, &[q("x", &["a"])], 5)
            .await
            .unwrap_err();
        assert_eq!(err, RetrievalError::Unavailable("down".to_string()));
    }

    #[test]
    fn compare_flags_drops_beyond_the_margin_only() {
        let live = recall_of(&[("same", 1.0), ("small", 1.0), ("big", 1.0), ("up", 0.5)]);
        let shadow = recall_of(&[("same", 1.0), ("small", 0.9), ("big", 0.5), ("up", 1.0)]);
        let regressions = compare(&live, &shadow, 0.10);
        assert_eq!(regressions.len(), 1, "{regressions:?}");
        assert_eq!(regressions[0].query, "big");
        assert_eq!(regressions[0].lost(), 0.5);

        assert!(compare(&live, &live, 0.0).is_empty());

        let partial = recall_of(&[("same", 1.0)]);
        let gone: Vec<String> = compare(&live, &partial, 0.10)
            .into_iter()
            .map(|r| r.query)
            .collect();
        assert_eq!(gone, ["small", "big", "up"]);
    }

    /// The shipped tantivy retriever on the shipped set. The floor sits a little below the figure
    /// measured when the set was written (see `data/retrieval/README.md`); a retriever change that
    /// falls below it must explain why.
    #[tokio::test]
    async fn shipped_tantivy_retriever_meets_the_recall_floor() {
        const FLOOR: f64 = 0.90;
        let catalog = parse_jsonl(crate::runtime::BUILTIN_CATALOG).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let retriever =
            crate::backends::tantivy::TantivyRetriever::open_or_build(&catalog, dir.path())
                .unwrap();
        let set = builtin().unwrap();
        let r = recall_at(&retriever, &set, 5).await.unwrap();
        let misses: Vec<String> = r
            .misses()
            .map(|m| {
                format!(
                    "  {:?}: recall {:.2}, missed {:?}, got {:?}",
                    m.query, m.recall, m.missed, m.got
                )
            })
            .collect();
        println!("recall@5 = {:.4}\n{}", r.mean, misses.join("\n"));
        assert!(
            r.mean >= FLOOR,
            "recall@5 {:.4} < {FLOOR}; misses:\n{}",
            r.mean,
            misses.join("\n")
        );
    }
}
