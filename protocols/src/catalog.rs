//! The catalog record: one manga series as shipped in `data/catalog.jsonl`.
//!
//! Facts about the work (title, author, genres, volumes) are what retrieval indexes; the store
//! fields (`price_jpy`, `stock`) are what enrichment serves. Keeping both in one record lets the
//! embedded defaults run from a single file, while the runtime still treats them as two sources.

use serde::{Deserialize, Serialize};

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
    #[error("catalog line {line}: {source}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What serde said.
        source: serde_json::Error,
    },
    /// Two records share an id.
    #[error("catalog line {line}: duplicate series id `{id}`")]
    Duplicate {
        /// 1-based line number of the second one.
        line: usize,
        /// The id.
        id: String,
    },
    /// The catalog has no records.
    #[error("catalog is empty")]
    Empty,
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
}
