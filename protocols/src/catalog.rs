//! The catalog record: one manga series as shipped in `data/catalog.jsonl`.
//!
//! Facts about the work (title, author, genres, volumes) are what retrieval indexes; the store
//! fields (`price_jpy`, `stock`) are what enrichment serves. Keeping both in one record lets the
//! embedded defaults run from a single file, while the runtime still treats them as two sources.

use serde::{Deserialize, Serialize};

/// The genre vocabulary: every catalog record's genres come from it (data/README.md).
pub const GENRES: [&str; 24] = [
    "action",
    "adventure",
    "comedy",
    "drama",
    "fantasy",
    "horror",
    "mystery",
    "psychological",
    "romance",
    "sci-fi",
    "slice-of-life",
    "sports",
    "supernatural",
    "thriller",
    "historical",
    "isekai",
    "mecha",
    "music",
    "cooking",
    "school",
    "martial-arts",
    "crime",
    "medical",
    "post-apocalyptic",
];

/// One series in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    /// Stable slug, e.g. `one-piece`.
    pub id: String,
    /// Common English or romanized title.
    pub title: String,
    /// Author, or `Writer & Artist`.
    pub author: String,
    /// Genres from a fixed vocabulary (see data/README.md).
    pub genres: Vec<String>,
    /// shonen, shojo, seinen, josei or kodomo.
    pub demographic: String,
    /// Tankobon volumes published.
    pub volumes: u32,
    /// `completed` or `ongoing`.
    pub status: String,
    /// Year serialization began.
    pub year: u16,
    /// One or two sentences on the premise.
    pub synopsis: String,
    /// Price per volume in yen (store field, synthetic in the shipped data).
    pub price_jpy: u32,
    /// Units in stock (store field, synthetic in the shipped data).
    pub stock: u32,
}

/// Why a catalog could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A line is not a valid series record.
    #[error("line {line}: {source}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What serde said.
        source: serde_json::Error,
    },
    /// Two records share an id.
    #[error("line {line}: duplicate series id `{id}`")]
    Duplicate {
        /// 1-based line number of the second one.
        line: usize,
        /// The id.
        id: String,
    },
    /// The catalog has no records.
    #[error("catalog is empty")]
    Empty,
    /// A record names no series id.
    #[error("line {line}: the series id is empty")]
    EmptyId {
        /// 1-based line number.
        line: usize,
    },
}

/// Parses a JSON Lines catalog (blank lines are skipped).
pub fn parse_jsonl(text: &str) -> Result<Vec<Series>, CatalogError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let s: Series = serde_json::from_str(line).map_err(|source| CatalogError::Line {
            line: i + 1,
            source,
        })?;
        if !seen.insert(s.id.clone()) {
            return Err(CatalogError::Duplicate {
                line: i + 1,
                id: s.id,
            });
        }
        out.push(s);
    }
    if out.is_empty() {
        return Err(CatalogError::Empty);
    }
    Ok(out)
}

/// One record of a catalog change feed (`mangaassist ingest --changes FILE`), as JSON Lines:
///
/// ```text
/// {"op":"upsert","series":{"id":"one-piece","title":"One Piece",...}}
/// {"op":"delete","id":"old-series"}
/// ```
///
/// Changes are keyed by series id and applied in order, so replaying a feed is idempotent: an
/// upsert replaces whatever the index holds under its id, a delete of an absent id does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Insert the series, or replace the one with its id.
    Upsert {
        /// The whole record, as in the catalog.
        series: Series,
    },
    /// Remove the series with this id.
    Delete {
        /// The series id.
        id: String,
    },
}

impl Change {
    /// The series id the change is about.
    pub fn id(&self) -> &str {
        match self {
            Change::Upsert { series } => &series.id,
            Change::Delete { id } => id,
        }
    }
}

/// What applying changes did to an index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCounts {
    /// Upserts of an id the index did not hold.
    pub inserted: u64,
    /// Upserts that replaced a document.
    pub updated: u64,
    /// Deletes that removed a document.
    pub deleted: u64,
    /// Deletes of an id the index did not hold (nothing to do).
    pub missing: u64,
}

impl ChangeCounts {
    /// Changes counted.
    pub fn total(&self) -> u64 {
        self.inserted + self.updated + self.deleted + self.missing
    }
}

impl std::ops::AddAssign for ChangeCounts {
    fn add_assign(&mut self, o: Self) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.missing += o.missing;
    }
}

/// Parses a JSON Lines change feed (blank lines are skipped). An empty id is refused; the same id
/// may appear many times (a feed carries every change, in order).
pub fn parse_changes_jsonl(text: &str) -> Result<Vec<Change>, CatalogError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let c: Change = serde_json::from_str(line).map_err(|source| CatalogError::Line {
            line: i + 1,
            source,
        })?;
        if c.id().trim().is_empty() {
            return Err(CatalogError::EmptyId { line: i + 1 });
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"id":"a","title":"A","author":"X","genres":["action"],"demographic":"shonen","volumes":3,"status":"completed","year":2001,"synopsis":"s","price_jpy":500,"stock":1}"#;

    #[test]
    fn parses_and_rejects_duplicates() {
        assert_eq!(parse_jsonl(LINE).unwrap().len(), 1);
        let dup = format!("{LINE}\n\n{LINE}\n");
        assert!(matches!(
            parse_jsonl(&dup),
            Err(CatalogError::Duplicate { line: 3, .. })
        ));
        assert!(matches!(parse_jsonl("\n"), Err(CatalogError::Empty)));
        assert!(matches!(
            parse_jsonl("{\"id\":1}"),
            Err(CatalogError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn parses_a_change_feed_in_order() {
        let feed = format!(
            "{{\"op\":\"upsert\",\"series\":{LINE}}}\n\n{{\"op\":\"delete\",\"id\":\"a\"}}\n"
        );
        let changes = parse_changes_jsonl(&feed).unwrap();
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[0], Change::Upsert { series } if series.id == "a"));
        assert_eq!(changes[1], Change::Delete { id: "a".into() });
        assert_eq!(parse_changes_jsonl("").unwrap(), Vec::new());
    }

    #[test]
    fn a_bad_change_names_its_line() {
        for (bad, want) in [
            (
                "{\"op\":\"remove\",\"id\":\"a\"}",
                "unknown variant `remove`",
            ),
            ("{\"op\":\"delete\"}", "missing field `id`"),
            (
                "{\"op\":\"delete\",\"id\":\"a\",\"x\":1}",
                "unknown field `x`",
            ),
            (
                "{\"op\":\"upsert\",\"series\":{\"id\":\"a\"}}",
                "missing field",
            ),
            ("{\"id\":\"a\"}", "missing field `op`"),
        ] {
            let text = format!("{{\"op\":\"delete\",\"id\":\"ok\"}}\n{bad}\n");
            let err = parse_changes_jsonl(&text).unwrap_err().to_string();
            assert!(
                err.starts_with("line 2: ") && err.contains(want),
                "{bad}: {err}"
            );
        }
        let err = parse_changes_jsonl("{\"op\":\"delete\",\"id\":\" \"}").unwrap_err();
        assert_eq!(err.to_string(), "line 1: the series id is empty");
    }
}
