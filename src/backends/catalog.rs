//! The catalog on disk and in memory: loading `data/catalog.jsonl`, fingerprinting a catalog, and
//! synthesizing large deterministic catalogs.
//!
//! Every embedded backend (tantivy retriever, embedded enrichment, simulated model) works from one
//! `Vec<Series>`, so this module is where that vector comes from. The fingerprint keys the on-disk
//! index cache: the same catalog content always maps to the same index directory, and any change
//! to any record yields a new one. Synthetic catalogs feed load tests and ingest benchmarks, which
//! need tens of thousands of plausible records that are identical from run to run for a seed.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use mangaassist_protocols::catalog::{CatalogError, Series, parse_jsonl};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// Why a catalog file could not be loaded. Both variants name the file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogLoadError {
    /// The file could not be read.
    #[error("cannot read catalog {}: {source}", path.display())]
    Read {
        /// The catalog file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid catalog.
    #[error("invalid catalog {}: {source}", path.display())]
    Parse {
        /// The catalog file.
        path: PathBuf,
        /// Which line was wrong and why.
        source: CatalogError,
    },
}

/// Reads and parses a JSON Lines catalog file.
///
/// Blocking file IO: call it at startup or from `spawn_blocking`, not on an async task.
pub fn load_catalog(path: &Path) -> Result<Vec<Series>, CatalogLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| CatalogLoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_jsonl(&text).map_err(|source| CatalogLoadError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64: small, dependency-free and stable across platforms and releases, which is all a
/// cache key needs (this is not a defence against crafted collisions).
struct Fnv1a(u64);

impl Fnv1a {
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
}

impl Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A stable 16-hex-digit hash of the catalog's content, in record order.
///
/// Hashes each record's JSON serialization followed by a newline (the same bytes `write_jsonl`
/// writes), so any change to any field, or to the order of records, changes the fingerprint.
pub fn catalog_fingerprint(series: &[Series]) -> String {
    let mut hasher = Fnv1a(FNV_OFFSET);
    for s in series {
        // Serializing plain strings and integers into a sink that never fails cannot fail; if
        // it ever did, the record would simply contribute fewer bytes to the hash.
        let _ = serde_json::to_writer(&mut hasher, s);
        hasher.update(b"\n");
    }
    format!("{:016x}", hasher.0)
}

/// Writes records as JSON Lines; returns how many were written.
pub fn write_jsonl(
    series: impl Iterator<Item = Series>,
    out: &mut impl Write,
) -> std::io::Result<usize> {
    let mut n = 0;
    for s in series {
        serde_json::to_writer(&mut *out, &s)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    Ok(n)
}

/// The fixed genre vocabulary (of the shipped catalog and of synthetic records).
pub use mangaassist_protocols::catalog::GENRES;

/// Demographics with their relative weights (shonen is the most common in real catalogs).
const DEMOGRAPHICS: [(&str, u32); 5] = [
    ("shonen", 40),
    ("seinen", 25),
    ("shojo", 15),
    ("josei", 12),
    ("kodomo", 8),
];

const ADJECTIVES: [&str; 40] = [
    "Crimson",
    "Silent",
    "Broken",
    "Hidden",
    "Golden",
    "Midnight",
    "Frozen",
    "Burning",
    "Last",
    "Wandering",
    "Iron",
    "Paper",
    "Hollow",
    "Eternal",
    "Scarlet",
    "Azure",
    "Lonely",
    "Wild",
    "Secret",
    "Shattered",
    "Velvet",
    "Cursed",
    "Radiant",
    "Distant",
    "Fallen",
    "Gentle",
    "Restless",
    "Sleeping",
    "Electric",
    "Ashen",
    "Violet",
    "Thousand",
    "Forgotten",
    "Crystal",
    "Savage",
    "Quiet",
    "Shining",
    "Rusted",
    "Little",
    "Endless",
];

const NOUNS: [&str; 48] = [
    "Lantern",
    "Blade",
    "Academy",
    "Garden",
    "Witch",
    "Knight",
    "Dragon",
    "Harbor",
    "Festival",
    "Kitchen",
    "Sword",
    "Tower",
    "River",
    "Moon",
    "Shrine",
    "Circuit",
    "Detective",
    "Orchestra",
    "Station",
    "Kingdom",
    "Ghost",
    "Samurai",
    "Bakery",
    "Clinic",
    "Engine",
    "Forest",
    "Mirror",
    "Pilot",
    "Rival",
    "Shadow",
    "Storm",
    "Summer",
    "Theater",
    "Village",
    "Wolf",
    "Alchemist",
    "Archive",
    "Beast",
    "Carnival",
    "Dojo",
    "Empire",
    "Frontier",
    "Guardian",
    "Hunter",
    "Idol",
    "Labyrinth",
    "Oracle",
    "Phantom",
];

const PLACES: [&str; 20] = [
    "North",
    "Abyss",
    "Eastern Sea",
    "Lost City",
    "Stars",
    "Old Capital",
    "Deep Woods",
    "Sky",
    "Last Station",
    "Night Market",
    "Hidden Valley",
    "Red Desert",
    "Floating Isles",
    "Underworld",
    "Border",
    "Northern Lights",
    "Sunken Temple",
    "Glass Coast",
    "Empty Throne",
    "Tenth District",
];

const SUFFIXES: [&str; 20] = [
    "Zero",
    "Chronicle",
    "Saga",
    "Diary",
    "Requiem",
    "Rhapsody",
    "Protocol",
    "Legacy",
    "Stories",
    "Gambit",
    "Rising",
    "Days",
    "Records",
    "Ballad",
    "Club",
    "Overdrive",
    "Season",
    "Hearts",
    "Tales",
    "Online",
];

const ROLES: [&str; 12] = [
    "Roommate",
    "Bodyguard",
    "Teacher",
    "Neighbor",
    "Rival",
    "Fiance",
    "Apprentice",
    "Butler",
    "Landlady",
    "Partner",
    "Senpai",
    "Familiar",
];

const FAMILY_NAMES: [&str; 40] = [
    "Sato",
    "Suzuki",
    "Takahashi",
    "Tanaka",
    "Watanabe",
    "Ito",
    "Yamamoto",
    "Nakamura",
    "Kobayashi",
    "Kato",
    "Yoshida",
    "Yamada",
    "Sasaki",
    "Yamaguchi",
    "Matsumoto",
    "Inoue",
    "Kimura",
    "Hayashi",
    "Shimizu",
    "Yamazaki",
    "Mori",
    "Abe",
    "Ikeda",
    "Hashimoto",
    "Ishikawa",
    "Ogawa",
    "Fujita",
    "Okada",
    "Goto",
    "Hasegawa",
    "Murakami",
    "Kondo",
    "Ishii",
    "Saito",
    "Sakamoto",
    "Endo",
    "Aoki",
    "Fujii",
    "Nishimura",
    "Fukuda",
];

const GIVEN_NAMES: [&str; 40] = [
    "Haruto", "Yui", "Sota", "Aoi", "Ren", "Hina", "Yuto", "Mei", "Kaito", "Sakura", "Riku",
    "Yuna", "Daiki", "Emi", "Kenji", "Rin", "Takeshi", "Nanami", "Shin", "Akane", "Hiroshi", "Mio",
    "Jun", "Kaori", "Naoki", "Ayumi", "Tomo", "Chihiro", "Makoto", "Saki", "Kazuki", "Noriko",
    "Ryo", "Miyu", "Satoshi", "Asuka", "Isamu", "Hikari", "Yusuke", "Keiko",
];

const HEROES: [&str; 16] = [
    "a reluctant swordsman",
    "a retired detective",
    "a shy high school student",
    "an apprentice witch",
    "a disgraced chef",
    "a rookie pilot",
    "an amnesiac android",
    "a stubborn village doctor",
    "a runaway princess",
    "a washed-up idol",
    "a young martial artist",
    "a cynical office worker",
    "a wandering monk",
    "a teenage hacker",
    "a former assassin",
    "a lonely ghost",
];

const GOALS: [&str; 16] = [
    "protect a cursed relic",
    "win a national tournament",
    "solve a string of impossible murders",
    "rebuild a ruined family business",
    "find a way back home",
    "break an ancient curse",
    "uncover a conspiracy at the top",
    "earn a place among the elite",
    "cook for the most demanding guests",
    "survive one more winter",
    "repay an old debt",
    "keep a dangerous secret",
    "reunite a scattered band",
    "stop a war before it starts",
    "open the strangest shop in town",
    "learn what it means to be human",
];

const SETTINGS: [&str; 16] = [
    "a city of endless rain",
    "a crumbling mountain kingdom",
    "a seaside town in summer",
    "a floating fortress",
    "a prestigious boarding school",
    "the back streets of Tokyo",
    "a world after the collapse",
    "a haunted countryside inn",
    "a colony on a distant moon",
    "the imperial court of a bygone era",
    "a hospital that never sleeps",
    "an underground fighting circuit",
    "a sprawling night market",
    "a labyrinth beneath the capital",
    "a quiet suburban neighborhood",
    "a kingdom ruled by dragons",
];

const VERBS: [&str; 6] = [
    "must",
    "sets out to",
    "struggles to",
    "is forced to",
    "vows to",
    "teams up with strangers to",
];

const STATUSES: [&str; 2] = ["completed", "ongoing"];

/// Picks one element; the arrays above are non-empty constants, so the fallback never shows.
fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or("")
}

/// The iterator behind [`synthesize`]; remembers titles so every one is unique.
struct Synthesizer {
    /// Deterministic for a seed.
    rng: StdRng,
    /// 1-based number of the next record.
    next: usize,
    /// How many records to produce in all.
    count: usize,
    /// How often each base title was drawn, to number repeats.
    seen_titles: HashMap<String, u32>,
}

impl Synthesizer {
    fn base_title(&mut self) -> String {
        let rng = &mut self.rng;
        match rng.random_range(0..6u8) {
            0 => format!(
                "{} {} of the {}",
                pick(rng, &ADJECTIVES),
                pick(rng, &NOUNS),
                pick(rng, &PLACES)
            ),
            1 => format!(
                "{} {} {}",
                pick(rng, &NOUNS),
                pick(rng, &NOUNS),
                pick(rng, &SUFFIXES)
            ),
            2 => format!("The {} {}", pick(rng, &ADJECTIVES), pick(rng, &NOUNS)),
            3 => format!("My {} Is a {}", pick(rng, &ROLES), pick(rng, &NOUNS)),
            4 => format!(
                "{}: {} {}",
                pick(rng, &NOUNS),
                pick(rng, &ADJECTIVES),
                pick(rng, &SUFFIXES)
            ),
            _ => format!(
                "{} {} {}",
                pick(rng, &ADJECTIVES),
                pick(rng, &NOUNS),
                pick(rng, &SUFFIXES)
            ),
        }
    }

    fn unique_title(&mut self) -> String {
        let base = self.base_title();
        let n = self.seen_titles.entry(base.clone()).or_insert(0);
        *n += 1;
        // Base titles never end in a digit, so "{base} {n}" cannot collide with another base.
        if *n == 1 { base } else { format!("{base} {n}") }
    }

    fn person(&mut self) -> String {
        let rng = &mut self.rng;
        format!("{} {}", pick(rng, &GIVEN_NAMES), pick(rng, &FAMILY_NAMES))
    }

    fn record(&mut self, n: usize) -> Series {
        let title = self.unique_title();
        let author = if self.rng.random_bool(0.12) {
            format!("{} & {}", self.person(), self.person())
        } else {
            self.person()
        };
        let genre_count = self.rng.random_range(1..=3usize);
        let genres: Vec<String> = GENRES
            .choose_multiple(&mut self.rng, genre_count)
            .map(|g| (*g).to_string())
            .collect();
        let total: u32 = DEMOGRAPHICS.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.random_range(0..total);
        let mut demographic = DEMOGRAPHICS[0].0;
        for (name, weight) in DEMOGRAPHICS {
            if roll < weight {
                demographic = name;
                break;
            }
            roll -= weight;
        }
        // Cubing a uniform draw skews toward short runs: median about 16 volumes, max 120.
        let u: f64 = self.rng.random();
        let volumes = 1 + (119.0 * u * u * u).round() as u32;
        let year = self.rng.random_range(1968..=2025u16);
        let ongoing_chance = if year >= 2015 { 0.7 } else { 0.15 };
        let status = if self.rng.random_bool(ongoing_chance) {
            STATUSES[1]
        } else {
            STATUSES[0]
        };
        let rng = &mut self.rng;
        let synopsis = format!(
            "In {}, {} {} {}.",
            pick(rng, &SETTINGS),
            pick(rng, &HEROES),
            pick(rng, &VERBS),
            pick(rng, &GOALS)
        );
        let price_jpy = self.rng.random_range(440..=1800u32);
        let stock = if self.rng.random_bool(0.08) {
            0
        } else {
            self.rng.random_range(1..=250u32)
        };
        Series {
            id: format!("syn-{n:07}"),
            title,
            author,
            genres,
            demographic: demographic.to_string(),
            volumes,
            status: status.to_string(),
            year,
            synopsis,
            price_jpy,
            stock,
        }
    }
}

impl Iterator for Synthesizer {
    type Item = Series;

    fn next(&mut self) -> Option<Series> {
        if self.next > self.count {
            return None;
        }
        let n = self.next;
        self.next += 1;
        Some(self.record(n))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count + 1).saturating_sub(self.next);
        (left, Some(left))
    }
}

/// `count` plausible synthetic series, identical for the same `seed`.
///
/// Ids are `syn-0000001`, `syn-0000002`, ...; titles are unique (a repeated title gets a number
/// appended); genres come from [`GENRES`]; volumes run 1..=120 skewed short; price 440..=1800
/// yen; stock 0..=250. Records are generated lazily, so a million of them cost no memory beyond
/// the set of titles seen.
pub fn synthesize(count: usize, seed: u64) -> impl Iterator<Item = Series> {
    Synthesizer {
        rng: StdRng::seed_from_u64(seed),
        next: 1,
        count,
        seen_titles: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn synthesize_is_deterministic_and_unique() {
        let a: Vec<Series> = synthesize(10_000, 7).collect();
        let b: Vec<Series> = synthesize(10_000, 7).collect();
        assert_eq!(a.len(), 10_000);
        assert_eq!(a, b);
        let c: Vec<Series> = synthesize(100, 8).collect();
        assert_ne!(a[..100], c[..]);

        let titles: HashSet<&str> = a.iter().map(|s| s.title.as_str()).collect();
        assert_eq!(titles.len(), a.len(), "titles must be unique");
        let ids: HashSet<&str> = a.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids.len(), a.len());
        assert_eq!(a[0].id, "syn-0000001");

        for s in &a {
            assert!((1..=120).contains(&s.volumes), "{s:?}");
            assert!((440..=1800).contains(&s.price_jpy), "{s:?}");
            assert!(s.stock <= 250);
            assert!(!s.genres.is_empty() && s.genres.len() <= 3);
            assert!(s.genres.iter().all(|g| GENRES.contains(&g.as_str())));
            assert!(s.synopsis.ends_with('.'));
        }
        let mut vols: Vec<u32> = a.iter().map(|s| s.volumes).collect();
        vols.sort_unstable();
        assert!(vols[vols.len() / 2] < 30, "volumes should skew short");
    }

    #[test]
    fn jsonl_round_trips_through_parse_and_load() {
        let series: Vec<Series> = synthesize(50, 1).collect();
        let mut buf = Vec::new();
        let n = write_jsonl(series.clone().into_iter(), &mut buf).unwrap();
        assert_eq!(n, 50);
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(parse_jsonl(&text).unwrap(), series);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.jsonl");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(load_catalog(&path).unwrap(), series);
    }

    #[test]
    fn load_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl");
        let err = load_catalog(&missing).unwrap_err();
        assert!(matches!(err, CatalogLoadError::Read { .. }));
        assert!(err.to_string().contains("nope.jsonl"), "{err}");

        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{not json}\n").unwrap();
        let err = load_catalog(&bad).unwrap_err();
        assert!(matches!(err, CatalogLoadError::Parse { .. }));
        assert!(err.to_string().contains("bad.jsonl"), "{err}");
    }

    #[test]
    fn fingerprint_is_stable_and_content_sensitive() {
        let series: Vec<Series> = synthesize(20, 3).collect();
        let fp = catalog_fingerprint(&series);
        assert_eq!(fp.len(), 16);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fp, catalog_fingerprint(&series.clone()));

        let mut changed = series.clone();
        changed[5].stock += 1;
        assert_ne!(fp, catalog_fingerprint(&changed));
        let mut reordered = series.clone();
        reordered.swap(0, 1);
        assert_ne!(fp, catalog_fingerprint(&reordered));
        assert_ne!(fp, catalog_fingerprint(&series[..19]));
    }
}
