//! Retrieval quality on the shipped catalog: shop-style questions find what they ask for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mangaassist::backends::tantivy::TantivyRetriever;
use mangaassist::runtime::BUILTIN_CATALOG;
use mangaassist_protocols::catalog::parse_jsonl;

fn retriever() -> (TantivyRetriever, tempfile::TempDir) {
    let catalog = parse_jsonl(BUILTIN_CATALOG).unwrap();
    let dir = tempfile::tempdir().unwrap();
    (
        TantivyRetriever::open_or_build(&catalog, dir.path()).unwrap(),
        dir,
    )
}

fn ids(r: &TantivyRetriever, q: &str, k: usize) -> Vec<String> {
    r.search_blocking(q, k)
        .unwrap()
        .into_iter()
        .map(|d| d.series_id)
        .collect()
}

#[test]
fn named_titles_rank_first() {
    let (r, _dir) = retriever();
    for (q, id) in [
        ("do you have frieren?", "frieren-beyond-journeys-end"),
        ("how much is chainsaw man", "chainsaw-man"),
        ("is vinland saga in stock", "vinland-saga"),
        ("berserk pls", "berserk"),
    ] {
        let got = ids(&r, q, 3);
        assert_eq!(got.first().map(String::as_str), Some(id), "{q}: {got:?}");
    }
}

#[test]
fn a_genre_question_finds_that_genre() {
    let (r, _dir) = retriever();
    let docs = r
        .search_blocking("any horror manga with few volumes?", 5)
        .unwrap();
    assert_eq!(docs.len(), 5);
    for d in &docs {
        assert!(
            d.genres.iter().any(|g| g == "horror"),
            "{} is not horror",
            d.title
        );
    }
}
