//! A small trained intent classifier: multinomial logistic regression over hashed character
//! n-grams, word n-grams and what the message names from the catalog.
//!
//! Why this shape: shop chat is short, misspelt, slangy and often mixes Japanese and English
//! ("frieren volum 3", "ワンピース 105巻 ある?"). Character n-grams see through typos and need no
//! tokenizer for Japanese; word unigrams and bigrams carry phrases ("how much", "in stock").
//! A linear model over them trains in milliseconds on a few thousand labelled queries, classifies
//! in microseconds, and never fails: it is the local tier the model policy degrades to.
//!
//! What n-grams cannot learn from a few thousand queries is the catalog: 476 series, their
//! authors, and the Japanese, romanized and abbreviated names customers use for them. A bare
//! "Planetes" or "ドラゴンボール" looks to them like any unknown word, and "is ⟨title⟩ in stock"
//! only generalizes to the titles the training set happens to name. So the classifier also reads
//! each message against [`CatalogNames`]: the titles, authors, genres and demographics of
//! `data/catalog.jsonl` plus the aliases of `data/intents/catalog_aliases.jsonl`, found in one
//! Aho-Corasick pass (Latin names as whole words, Japanese names anywhere in the text).
//!
//! Features, for a text lowercased and padded with one space on each side:
//! - character n-grams of [`FeatureConfig::char_min`] to [`FeatureConfig::char_max`] characters
//!   (`c:` namespace);
//! - words (letters and digits, anything else separates them) and adjacent word pairs (`w:`,
//!   `b:` namespaces);
//! - catalog names (`k:` namespace): which kinds of name the message holds (title, author,
//!   genre), how many other words it has (none but volume words such as "vol 3" or "巻" means
//!   the message is only a name), two titles or more; and the word on each side of a name with
//!   the name replaced by its kind (`m:` namespace: "like ⟨title⟩", "⟨title⟩ box"), so a
//!   phrasing learnt with one title carries to all ([`FeatureConfig::catalog`]);
//! - the message's length in words, bucketed (`l:` namespace);
//!
//! each hashed (FNV-1a) into [`DIMENSIONS`] buckets, binary (catalog and length features weigh
//! [`FeatureConfig::catalog_weight`]), then L2-normalized. Training is plain SGD on the softmax
//! cross-entropy with L2 regularization, a decaying learning rate and a fixed-seed shuffle, so
//! the same examples always give the same model. The confidence reported is the softmax
//! probability of the winning intent. Features, catalog weight and training settings were
//! chosen by 5-fold cross-validation on the training split
//! (`examples/tune_intent_classifier.rs`), never on the eval split.
//!
//! The runtime trains it once per process from `data/intents/train.jsonl`, the shipped catalog
//! and the alias file, all built into the binary ([`NgramClassifier::builtin`]: about 70 ms in
//! a release build); `mangaassist eval` measures it on `data/intents/eval.jsonl`.

use std::sync::{Arc, OnceLock};

use aho_corasick::AhoCorasick;
use async_trait::async_trait;
use mangaassist_protocols::catalog::{Series, parse_jsonl};
use mangaassist_protocols::ports::{ClassifyError, IntentClassifier};
use mangaassist_protocols::turn::{Classification, Intent};
use serde::Deserialize;

/// Hash buckets per intent. 2^17 keeps collisions rare for a few thousand distinct n-grams while
/// the weights stay at 2.5 MiB.
pub const DIMENSIONS: usize = 1 << 17;

/// The training split shipped in `data/intents/train.jsonl`, built into the binary.
pub const BUILTIN_TRAIN: &str = include_str!("../../data/intents/train.jsonl");

/// The model id this classifier reports (`local_classifier` backend in the policy).
pub const MODEL_ID: &str = "ngram-logreg-v2";

const CLASSES: usize = Intent::ALL.len();

/// One labelled query, as a line of `data/intents/*.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Labelled {
    /// What the customer typed.
    pub text: String,
    /// The intent it expresses.
    pub intent: Intent,
}

/// Why a labelled set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A line is not `{"text": ..., "intent": ...}` with a known intent.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What serde said.
        message: String,
    },
    /// No examples at all.
    #[error("the dataset has no examples")]
    Empty,
}

/// Parses a JSON Lines labelled set; blank lines are skipped.
pub fn parse_dataset(text: &str) -> Result<Vec<Labelled>, DatasetError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ex: Labelled = serde_json::from_str(line).map_err(|e| DatasetError::Line {
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(ex);
    }
    if out.is_empty() {
        return Err(DatasetError::Empty);
    }
    Ok(out)
}

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainParams {
    /// Passes over the data.
    pub epochs: usize,
    /// Initial learning rate (decays as 1 / (1 + epoch / 4)).
    pub learning_rate: f32,
    /// L2 penalty per update.
    pub l2: f32,
    /// Shuffle seed.
    pub seed: u64,
}

impl Default for TrainParams {
    /// Chosen by 5-fold cross-validation on the training split
    /// (`TUNE=grid cargo run --release --example tune_intent_classifier`).
    fn default() -> Self {
        Self {
            epochs: 20,
            learning_rate: 6.0,
            l2: 3e-3,
            seed: 0x6d61_6e67_6173_7369,
        }
    }
}

/// What kind of catalog name a span of the message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NameKind {
    /// A series title, one part of a title with a subtitle ("Demon Slayer", "Kimetsu no
    /// Yaiba"), or one of its other names ("鬼滅の刃", "kny").
    Title,
    /// An author's full name, family name or Japanese name.
    Author,
    /// A genre or demographic of the catalog's vocabulary, or a synonym ("horror", "ホラー",
    /// "shonen").
    Genre,
}

impl NameKind {
    /// The placeholder word that stands for the name in the `k:` and `m:` features.
    fn placeholder(self) -> &'static str {
        match self {
            Self::Title => "\u{1}title",
            Self::Author => "\u{1}author",
            Self::Genre => "\u{1}genre",
        }
    }
}

/// The other names of catalog entries shipped in `data/intents/catalog_aliases.jsonl`, built
/// into the binary: Japanese and romanized titles, fan abbreviations, Japanese author names,
/// genre synonyms.
pub const BUILTIN_ALIASES: &str = include_str!("../../data/intents/catalog_aliases.jsonl");

/// What one line of the alias file gives other names to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// A series, by its catalog id.
    Series(String),
    /// An author, as the catalog's `author` field spells them (one name of a `Writer & Artist`
    /// pair).
    Author(String),
    /// A genre or demographic of the catalog.
    Genre(String),
}

/// One line of the alias file: other names of one series, author or genre.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aliases {
    /// What is named.
    pub of: Named,
    /// Its other names, as customers type them.
    pub aliases: Vec<String>,
}

/// A line of the alias file as written: exactly one of the three keys is set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAliases {
    #[serde(default)]
    series: Option<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    genre: Option<String>,
    aliases: Vec<String>,
}

impl RawAliases {
    fn validate(self) -> Result<Aliases, String> {
        let of = match (self.series, self.author, self.genre) {
            (Some(id), None, None) => Named::Series(id),
            (None, Some(author), None) => Named::Author(author),
            (None, None, Some(genre)) => Named::Genre(genre),
            _ => return Err("expected exactly one of `series`, `author`, `genre`".to_owned()),
        };
        if self.aliases.is_empty() || self.aliases.iter().any(|n| words_of(n).is_empty()) {
            return Err(
                "`aliases` must hold at least one name, each with a letter or digit".into(),
            );
        }
        Ok(Aliases {
            of,
            aliases: self.aliases,
        })
    }
}

/// Parses the alias file (JSON Lines; blank lines are skipped).
pub fn parse_aliases(text: &str) -> Result<Vec<Aliases>, DatasetError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| DatasetError::Line {
            line: i + 1,
            message,
        };
        let raw: RawAliases = serde_json::from_str(line).map_err(|e| error(e.to_string()))?;
        out.push(raw.validate().map_err(error)?);
    }
    Ok(out)
}

/// Shortest single-word catalog name matched; shorter ones ("Ao", "Real", "Oda") are ordinary
/// chat words far too often. Names of two or more words, and aliases, are matched at any length.
const MIN_SINGLE_WORD_CHARS: usize = 5;

/// Catalog titles that are everyday English, so seeing them in a message says nothing about a
/// title ("another one", "happy to help", "oh great"): not matched.
const EVERYDAY_NAMES: [&str; 19] = [
    "another",
    "happy",
    "happiness",
    "given",
    "touch",
    "major",
    "orange",
    "sunny",
    "rainbow",
    "innocent",
    "sanctuary",
    "blame",
    "bastard",
    "whistle",
    "sensor",
    "your name",
    "look back",
    "oh great",
    "perfect world",
];

/// Words that may sit next to a name without making the message more than a name: volume
/// markers and numbers ("berserk vol 3", "ワンピース 105巻").
fn is_volume_word(word: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    digits(word)
        || matches!(
            word,
            "vol" | "vols" | "volume" | "volumes" | "volum" | "v" | "巻" | "manga" | "漫画"
        )
        || word.strip_suffix('巻').is_some_and(digits)
        || word.strip_prefix('v').is_some_and(digits)
        || word.strip_prefix("vol").is_some_and(digits)
}

/// Whether `c` belongs to scripts written without spaces between words (from U+3000 up: CJK
/// punctuation, kana, kanji, fullwidth forms), so a name in it is matched inside a longer run
/// of text.
fn is_cjk(c: char) -> bool {
    c >= '\u{3000}'
}

/// Lowercase words of letters and digits, as the `w:` and `b:` features see them.
fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// One word folded for name matching: apostrophes already dropped, accents stripped, and the
/// long vowels romanization spells several ways collapsed ("shounen", "shōnen" and "shonen"
/// all fold to "shonen"; "haikyuu" to "haikyu").
fn fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        let c = match c {
            'ā' | 'â' | 'ä' | 'à' | 'á' => 'a',
            'ē' | 'ê' | 'é' | 'è' => 'e',
            'ī' | 'î' | 'ï' => 'i',
            'ō' | 'ô' | 'ö' | 'ó' => 'o',
            'ū' | 'û' | 'ü' | 'ú' => 'u',
            c => c,
        };
        let prev = out.chars().last();
        match (prev, c) {
            (Some('o'), 'u' | 'o') | (Some('u'), 'u') => {}
            _ => out.push(c),
        }
    }
    out
}

/// A message or a name as the matcher sees it: lowercase, apostrophes dropped ("jojo's" is
/// "jojos"), folded words separated by one space.
fn match_form(text: &str) -> String {
    let lower: String = text
        .chars()
        .filter(|c| !matches!(c, '\'' | '’' | '`'))
        .flat_map(char::to_lowercase)
        .collect();
    let words: Vec<String> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(fold)
        .collect();
    words.join(" ")
}

/// One piece of a message as the catalog features see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// A word that is not part of a name (folded).
    Word(String),
    /// A whole catalog name, whatever its length.
    Name(NameKind),
}

/// Catalog names the features look for: titles, authors, genres and demographics, and their
/// aliases.
pub struct CatalogNames {
    /// What each pattern of `matcher` is and whether it is matched inside longer text (names in
    /// kana or kanji); patterns are sorted longest first, so a longer name claims its text
    /// before a shorter one inside it can.
    patterns: Vec<(NameKind, bool)>,
    /// Finds every name in a message in one pass (`None` when there are no names or the
    /// automaton could not be built: the catalog features are then simply absent).
    matcher: Option<AhoCorasick>,
}

impl std::fmt::Debug for CatalogNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogNames")
            .field("names", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

impl CatalogNames {
    /// No names: the model sees n-grams only.
    pub fn empty() -> Self {
        Self {
            patterns: Vec::new(),
            matcher: None,
        }
    }

    /// The names in `catalog`, with the `aliases` of the series, authors and genres it has
    /// (aliases of anything else are ignored).
    pub fn new(catalog: &[Series], aliases: &[Aliases]) -> Self {
        let mut names: Vec<(String, NameKind)> = Vec::new();
        // A name of the catalog itself: single words must be long and not everyday English.
        let add_catalog = |names: &mut Vec<(String, NameKind)>, name: &str, kind| {
            let form = match_form(name);
            let long_enough = form.contains(' ') || form.chars().count() >= MIN_SINGLE_WORD_CHARS;
            if long_enough && !EVERYDAY_NAMES.contains(&form.as_str()) {
                names.push((form, kind));
            }
        };
        let mut authors: Vec<&str> = Vec::new();
        let mut genres: Vec<&str> = Vec::new();
        for s in catalog {
            add_catalog(&mut names, &s.title, NameKind::Title);
            // "Demon Slayer: Kimetsu no Yaiba" is asked for by either half.
            if s.title.contains(':') {
                for part in s.title.split(':') {
                    add_catalog(&mut names, part, NameKind::Title);
                }
            }
            if let Some(rest) = s.title.strip_prefix("The ") {
                add_catalog(&mut names, rest, NameKind::Title);
            }
            for author in s.author.split(['&', ',']).map(str::trim) {
                authors.push(author);
                add_catalog(&mut names, author, NameKind::Author);
                let form = match_form(author);
                if let Some((_, family)) = form.rsplit_once(' ') {
                    add_catalog(&mut names, family, NameKind::Author);
                }
            }
            for genre in s.genres.iter().chain([&s.demographic]) {
                genres.push(genre);
                add_catalog(&mut names, genre, NameKind::Genre);
            }
        }
        for a in aliases {
            let kind = match &a.of {
                Named::Series(id) if catalog.iter().any(|s| &s.id == id) => NameKind::Title,
                Named::Author(author) if authors.contains(&author.as_str()) => NameKind::Author,
                Named::Genre(genre) if genres.contains(&genre.as_str()) => NameKind::Genre,
                // Not in this catalog: nothing to name.
                _ => continue,
            };
            for alias in &a.aliases {
                let form = match_form(alias);
                if form.chars().any(is_cjk) && form.contains(' ') {
                    // Japanese is typed without the spaces a "・" or "☆" became.
                    names.push((form.replace(' ', ""), kind));
                }
                names.push((form, kind));
            }
        }
        // Longest first; a name that is both a title and an author keeps the title.
        names.retain(|(n, _)| !n.is_empty());
        names.sort_by(|a, b| {
            b.0.len()
                .cmp(&a.0.len())
                .then_with(|| a.0.cmp(&b.0))
                .then_with(|| a.1.cmp(&b.1))
        });
        names.dedup_by(|a, b| a.0 == b.0);
        let matcher = if names.is_empty() {
            None
        } else {
            AhoCorasick::new(names.iter().map(|(n, _)| n.as_str()))
                .inspect_err(|e| tracing::warn!(error = %e, "catalog name matcher unavailable"))
                .ok()
        };
        Self {
            patterns: names
                .iter()
                .map(|(n, k)| (*k, n.chars().any(is_cjk)))
                .collect(),
            matcher,
        }
    }

    /// The names of the catalog built into the binary (`data/catalog.jsonl`) and the shipped
    /// aliases, once per process.
    pub fn builtin() -> Arc<Self> {
        static NAMES: OnceLock<Arc<CatalogNames>> = OnceLock::new();
        NAMES
            .get_or_init(|| {
                // Both files are checked by unit tests; without them the model still works on
                // n-grams alone.
                let catalog = parse_jsonl(crate::runtime::BUILTIN_CATALOG).unwrap_or_default();
                let aliases = parse_aliases(BUILTIN_ALIASES).unwrap_or_default();
                Arc::new(Self::new(&catalog, &aliases))
            })
            .clone()
    }

    /// `text` as pieces: every name found (Latin names as whole words, Japanese ones anywhere)
    /// becomes one [`Piece::Name`], longest name first, each character claimed once; the rest
    /// stays words.
    fn pieces(&self, text: &str) -> Vec<Piece> {
        let haystack = match_form(text);
        let words = |s: &str| -> Vec<Piece> {
            s.split(' ')
                .filter(|w| !w.is_empty())
                .map(|w| Piece::Word(w.to_owned()))
                .collect()
        };
        let Some(matcher) = &self.matcher else {
            return words(&haystack);
        };
        // A Latin name is a whole word: a space, a Japanese character ("csm好き") or the end of
        // the text on each side.
        let boundary = |c: Option<char>| c.is_none_or(|c| c == ' ' || is_cjk(c));
        let whole_word = |start: usize, end: usize| {
            boundary(haystack[..start].chars().next_back())
                && boundary(haystack[end..].chars().next())
        };
        let mut hits: Vec<(usize, usize, usize)> = matcher
            .find_overlapping_iter(&haystack)
            .filter(|m| {
                let (_, inside_text) = self.patterns[m.pattern().as_usize()];
                inside_text || whole_word(m.start(), m.end())
            })
            .map(|m| (m.pattern().as_usize(), m.start(), m.end()))
            .collect();
        hits.sort_unstable();
        let mut claimed: Vec<(usize, usize, NameKind)> = Vec::new();
        for (pattern, start, end) in hits {
            if claimed.iter().all(|&(s, e, _)| end <= s || e <= start) {
                claimed.push((start, end, self.patterns[pattern].0));
            }
        }
        claimed.sort_unstable_by_key(|c| c.0);
        let mut out = Vec::new();
        let mut at = 0;
        for (start, end, kind) in claimed {
            out.extend(words(&haystack[at..start]));
            out.push(Piece::Name(kind));
            at = end;
        }
        out.extend(words(&haystack[at..]));
        out
    }
}

/// The trained model.
pub struct NgramClassifier {
    features: FeatureConfig,
    names: Arc<CatalogNames>,
    /// `weights[class * DIMENSIONS + bucket]`.
    weights: Vec<f32>,
    bias: [f32; CLASSES],
}

impl std::fmt::Debug for NgramClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NgramClassifier")
            .field("dimensions", &DIMENSIONS)
            .field("features", &self.features)
            .field("names", &self.names)
            .field("bias", &self.bias)
            .finish_non_exhaustive()
    }
}

/// A sparse, L2-normalized feature vector: (bucket, value), buckets unique.
type Features = Vec<(u32, f32)>;

/// FNV-1a, fed piece by piece, so a character n-gram extends the hash of its prefix instead of
/// hashing its characters again.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    /// A hash of the feature namespace byte alone.
    fn new(namespace: u8) -> Self {
        Self(0xcbf2_9ce4_8422_2325).bytes(&[namespace])
    }

    fn bytes(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    fn char(self, c: char) -> Self {
        let mut utf8 = [0u8; 4];
        self.bytes(c.encode_utf8(&mut utf8).as_bytes())
    }

    /// The hash bucket: DIMENSIONS is a power of two well under u32::MAX.
    fn bucket(self) -> u32 {
        (self.0 % DIMENSIONS as u64) as u32
    }
}

/// The bucket of one whole feature string.
fn bucket(namespace: u8, feature: &str) -> u32 {
    Fnv::new(namespace).bytes(feature.as_bytes()).bucket()
}

/// Which features a model uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureConfig {
    /// Shortest character n-gram.
    pub char_min: usize,
    /// Longest character n-gram.
    pub char_max: usize,
    /// Word unigrams.
    pub words: bool,
    /// Adjacent word pairs.
    pub bigrams: bool,
    /// Catalog names ([`CatalogNames`]): which kinds the message names (title, author, genre),
    /// how many other words it has (none but volume words: the message is only a name), whether
    /// it names two titles, and the word on each side of every name with the name replaced by
    /// its kind (`m:`).
    pub catalog: bool,
    /// The message's length in words, bucketed (1, 2, 3, 4-6, 7+).
    pub length: bool,
    /// Value of each catalog and length feature before normalization (n-grams have 1).
    pub catalog_weight: f32,
}

impl Default for FeatureConfig {
    /// Chosen by 5-fold cross-validation on the training split
    /// (`cargo run --release --example tune_intent_classifier`, `TUNE=grid` for the grid).
    fn default() -> Self {
        Self {
            char_min: 1,
            char_max: 5,
            words: true,
            bigrams: true,
            catalog: true,
            length: true,
            catalog_weight: 2.0,
        }
    }
}

/// The features of `text`.
fn features(text: &str, cfg: &FeatureConfig, names: &CatalogNames) -> Features {
    let lower: Vec<char> = std::iter::once(' ')
        .chain(text.chars().flat_map(char::to_lowercase))
        .chain(std::iter::once(' '))
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    let mut buckets: Vec<u32> = Vec::with_capacity(lower.len() * 5 + 16);
    for (i, &first) in lower.iter().enumerate() {
        let mut h = Fnv::new(b'c');
        for (n, &c) in (1..=cfg.char_max).zip(&lower[i..]) {
            h = h.char(c);
            if n >= cfg.char_min && !(n == 1 && first == ' ') {
                buckets.push(h.bucket());
            }
        }
    }
    let words = words_of(text);
    if cfg.words {
        for w in &words {
            buckets.push(bucket(b'w', w));
        }
    }
    if cfg.bigrams {
        for pair in words.windows(2) {
            let h = Fnv::new(b'b').bytes(pair[0].as_bytes()).bytes(b" ");
            buckets.push(h.bytes(pair[1].as_bytes()).bucket());
        }
    }
    let plain = buckets.len();
    if cfg.catalog {
        catalog_features(text, names, &mut buckets);
    }
    if cfg.length {
        let len = match words.len() {
            0 => "0",
            1 => "1",
            2 => "2",
            3 => "3",
            4..=6 => "4-6",
            _ => "7+",
        };
        buckets.push(bucket(b'l', len));
    }
    let mut weighted: Vec<(u32, f32)> = buckets
        .iter()
        .enumerate()
        .map(|(i, &b)| (b, if i < plain { 1.0 } else { cfg.catalog_weight }))
        .collect();
    weighted.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    weighted.dedup_by_key(|f| f.0);
    let norm = weighted
        .iter()
        .map(|f| f.1 * f.1)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    for f in &mut weighted {
        f.1 /= norm;
    }
    weighted
}

/// The `k:` and `m:` features of a message (see [`FeatureConfig::catalog`]).
fn catalog_features(text: &str, names: &CatalogNames, out: &mut Vec<u32>) {
    let pieces = names.pieces(text);
    let mut kinds: Vec<NameKind> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Name(kind) => Some(*kind),
            Piece::Word(_) => None,
        })
        .collect();
    if kinds.is_empty() {
        return;
    }
    kinds.sort_unstable();
    kinds.dedup();
    let rest = pieces
        .iter()
        .filter(|p| matches!(p, Piece::Word(w) if !is_volume_word(w)))
        .count();
    let mut push = |ns: u8, s: &str| out.push(bucket(ns, s));
    let around = match rest {
        0 => "only",
        1 => "+1",
        2 => "+2",
        _ => "+3",
    };
    for kind in &kinds {
        push(b'k', kind.placeholder());
        push(b'k', &format!("{}{around}", kind.placeholder()));
    }
    let set: Vec<&str> = kinds.iter().map(|k| k.placeholder()).collect();
    let set = set.join(" ");
    push(b'k', &set);
    // Two titles or more: a comparison ("naruto or bleach") or a list.
    if pieces
        .iter()
        .filter(|p| **p == Piece::Name(NameKind::Title))
        .nth(1)
        .is_some()
    {
        push(b'k', "\u{1}title \u{1}title");
    }
    if rest == 0 {
        push(b'k', &format!("only {set}"));
    }
    // The word on each side of a name, the name replaced by its kind.
    let word = |i: Option<usize>| match i.and_then(|i| pieces.get(i)) {
        Some(Piece::Word(w)) => w.as_str(),
        Some(Piece::Name(kind)) => kind.placeholder(),
        None => "",
    };
    for (i, p) in pieces.iter().enumerate() {
        if let Piece::Name(kind) = p {
            let name = kind.placeholder();
            push(b'm', &format!("{} {name}", word(i.checked_sub(1))));
            push(b'm', &format!("{name} {}", word(Some(i + 1))));
        }
    }
}

/// A deterministic xorshift64* generator for the training shuffle.
struct Shuffle(u64);

impl Shuffle {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

fn class(intent: Intent) -> usize {
    Intent::ALL
        .iter()
        .position(|&i| i == intent)
        .unwrap_or(CLASSES - 1)
}

impl NgramClassifier {
    /// Trains on `examples` with the default features and the built-in catalog's names.
    pub fn train(examples: &[Labelled], params: TrainParams) -> Self {
        Self::train_with(
            examples,
            params,
            FeatureConfig::default(),
            CatalogNames::builtin(),
        )
    }

    /// Trains on `examples` with a feature set and catalog names of its own.
    pub fn train_with(
        examples: &[Labelled],
        params: TrainParams,
        cfg: FeatureConfig,
        names: Arc<CatalogNames>,
    ) -> Self {
        let mut model = Self {
            features: cfg,
            weights: vec![0.0; CLASSES * DIMENSIONS],
            bias: [0.0; CLASSES],
            names,
        };
        let mut data: Vec<(Features, usize)> = examples
            .iter()
            .map(|e| (features(&e.text, &cfg, &model.names), class(e.intent)))
            .collect();
        let mut rng = Shuffle(params.seed | 1);
        for epoch in 0..params.epochs {
            rng.shuffle(&mut data);
            let lr = params.learning_rate / (1.0 + epoch as f32 / 4.0);
            for (x, y) in &data {
                let p = model.probabilities(x);
                for (c, &pc) in p.iter().enumerate() {
                    let grad = pc - if c == *y { 1.0 } else { 0.0 };
                    let row = &mut model.weights[c * DIMENSIONS..(c + 1) * DIMENSIONS];
                    for &(b, v) in x {
                        let w = &mut row[b as usize];
                        *w -= lr * (grad * v + params.l2 * *w);
                    }
                    model.bias[c] -= lr * grad * 0.1;
                }
            }
        }
        model
    }

    /// The model trained on the shipped training split, with the shipped catalog's names, once
    /// per process.
    pub fn builtin() -> Arc<Self> {
        static MODEL: OnceLock<Arc<NgramClassifier>> = OnceLock::new();
        MODEL
            .get_or_init(|| {
                // The shipped file is checked by a unit test; an empty model answers `other`.
                let examples = parse_dataset(BUILTIN_TRAIN).unwrap_or_default();
                Arc::new(Self::train(&examples, TrainParams::default()))
            })
            .clone()
    }

    fn probabilities(&self, x: &Features) -> [f32; CLASSES] {
        let mut z = self.bias;
        for (c, zc) in z.iter_mut().enumerate() {
            let row = &self.weights[c * DIMENSIONS..(c + 1) * DIMENSIONS];
            *zc += x.iter().map(|&(b, v)| row[b as usize] * v).sum::<f32>();
        }
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for zc in &mut z {
            *zc = (*zc - max).exp();
            sum += *zc;
        }
        z.map(|e| e / sum)
    }

    /// Classifies one message.
    pub fn classify_text(&self, text: &str) -> Classification {
        let p = self.probabilities(&features(text, &self.features, &self.names));
        let (best, &confidence) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((CLASSES - 1, &0.0));
        Classification {
            intent: Intent::ALL[best],
            confidence,
            classifier: MODEL_ID.to_owned(),
        }
    }
}

#[async_trait]
impl IntentClassifier for NgramClassifier {
    async fn classify(&self, text: &str) -> Result<Classification, ClassifyError> {
        Ok(self.classify_text(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(text: &str, intent: Intent) -> Labelled {
        Labelled {
            text: text.into(),
            intent,
        }
    }

    #[test]
    fn features_are_normalized_and_typo_tolerant() {
        let cfg = FeatureConfig::default();
        let names = CatalogNames::builtin();
        let a = features("frieren volume 3", &cfg, &names);
        let norm: f32 = a.iter().map(|(_, v)| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        let b: std::collections::HashSet<u32> = features("frieren volum 3", &cfg, &names)
            .iter()
            .map(|f| f.0)
            .collect();
        let shared = a.iter().filter(|f| b.contains(&f.0)).count();
        assert!(
            shared * 2 > a.len(),
            "a typo keeps most n-grams: {shared}/{}",
            a.len()
        );
        assert!(
            !features("ワンピース 105巻", &cfg, &names).is_empty(),
            "no tokenizer needed"
        );
    }

    #[test]
    fn catalog_names_are_found_whole_word_longest_first() {
        let names = CatalogNames::builtin();
        let show = |text: &str| -> String {
            names
                .pieces(text)
                .iter()
                .map(|p| match p {
                    Piece::Word(w) => w.clone(),
                    Piece::Name(NameKind::Title) => "T".into(),
                    Piece::Name(NameKind::Author) => "A".into(),
                    Piece::Name(NameKind::Genre) => "G".into(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(show("Dragon Ball Super vol 3"), "T vol 3");
        assert_eq!(show("kimetsu no yaiba"), "T", "half of a subtitled title");
        assert_eq!(show("anything by naoki urasawa"), "anything by A");
        assert_eq!(show("urasawa"), "A", "a family name alone");
        assert_eq!(show("show me horror"), "show me G");
        assert_eq!(show("naruto or bleach"), "T or T");
        assert_eq!(show("bleached"), "bleached", "whole words only");
        assert_eq!(
            show("is it real"),
            "is it real",
            "short titles are not names"
        );
        assert_eq!(
            show("another one"),
            "another one",
            "everyday words are not names"
        );
        assert_eq!(show("JoJo's part 3"), "T part 3", "apostrophes dropped");
        assert_eq!(show("HAIKYUU!! vol 4"), "T vol 4", "long vowels folded");
        assert_eq!(show("shounen"), "G");
        assert_eq!(
            show("ワンピース105巻ある?"),
            "T 105巻ある",
            "Japanese inside text"
        );
        assert_eq!(show("鬼滅の刃 全巻セット"), "T 全巻セット");
        assert_eq!(
            show("csm好きな人"),
            "T 好きな人",
            "a Latin name next to Japanese"
        );
        assert_eq!(
            show("jjk vol 0"),
            "T vol 0",
            "an abbreviation from the alias file"
        );
        let empty = CatalogNames::empty();
        assert_eq!(empty.pieces("Berserk"), [Piece::Word("berserk".into())]);
    }

    #[test]
    fn the_shipped_alias_file_names_only_what_the_catalog_has() {
        let catalog = parse_jsonl(crate::runtime::BUILTIN_CATALOG).unwrap();
        let aliases = parse_aliases(BUILTIN_ALIASES).unwrap();
        assert!(aliases.len() > 400);
        for a in &aliases {
            let known = match &a.of {
                Named::Series(id) => catalog.iter().any(|s| &s.id == id),
                Named::Author(author) => catalog
                    .iter()
                    .any(|s| s.author.split(['&', ',']).any(|n| n.trim() == author)),
                Named::Genre(genre) => catalog
                    .iter()
                    .any(|s| s.genres.contains(genre) || &s.demographic == genre),
            };
            assert!(known, "{a:?} is not in data/catalog.jsonl");
        }
        let two_keys = "{\"series\":\"x\",\"genre\":\"y\",\"aliases\":[\"z\"]}";
        let e = parse_aliases(two_keys).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("exactly one"), "{e}");
        assert!(parse_aliases("{\"series\":\"x\",\"aliases\":[\"!!\"]}").is_err());
        assert!(parse_aliases("{\"series\":\"x\",\"aliases\":[]}").is_err());
    }

    #[test]
    fn a_message_that_is_only_a_title_gets_its_own_feature() {
        let cfg = FeatureConfig::default();
        let names = CatalogNames::builtin();
        let only = bucket(b'k', "only \u{1}title");
        let has = |text: &str| features(text, &cfg, &names).iter().any(|f| f.0 == only);
        assert!(has("Planetes"));
        assert!(has("witch hat atelier vol 12"));
        assert!(!has("is planetes in stock"));
        assert!(!has("hello"));
    }

    #[test]
    fn learns_a_toy_set_and_is_deterministic() {
        let train = vec![
            ex("how much is it", Intent::PurchaseIntent),
            ex("price of one piece", Intent::PurchaseIntent),
            ex("is it in stock", Intent::PurchaseIntent),
            ex("hello", Intent::Other),
            ex("hi there", Intent::Other),
            ex("thanks bye", Intent::Other),
            ex("recommend something like monster", Intent::Recommend),
            ex("any recs", Intent::Recommend),
            ex("show me horror", Intent::Browse),
            ex("browse romance", Intent::Browse),
            ex("do you have berserk", Intent::Search),
            ex("looking for vinland saga", Intent::Search),
        ];
        let m = NgramClassifier::train(&train, TrainParams::default());
        for e in &train {
            assert_eq!(m.classify_text(&e.text).intent, e.intent, "{}", e.text);
        }
        assert_eq!(
            m.classify_text("how much is berserk").intent,
            Intent::PurchaseIntent
        );
        let again = NgramClassifier::train(&train, TrainParams::default());
        assert_eq!(m.weights, again.weights, "same data, same model");
        let c = m.classify_text("hello");
        assert!(c.confidence > 0.2 && c.confidence <= 1.0);
        assert_eq!(c.classifier, MODEL_ID);
    }

    #[test]
    fn the_shipped_model_holds_its_measured_accuracy_on_the_eval_split() {
        // Measured 0.936 (2026-12-01, docs/benchmarks.md); the target is 0.90. A
        // change that drops the shipped model under the target fails here.
        let eval = parse_dataset(include_str!("../../data/intents/eval.jsonl")).unwrap();
        let m = NgramClassifier::builtin();
        let right = eval
            .iter()
            .filter(|e| m.classify_text(&e.text).intent == e.intent)
            .count();
        let accuracy = right as f64 / eval.len() as f64;
        assert!(accuracy >= 0.90, "eval accuracy {accuracy:.3}");
    }

    #[test]
    fn the_readme_counts_match_the_files() {
        let readme = include_str!("../../data/intents/README.md");
        let train = parse_dataset(BUILTIN_TRAIN).unwrap();
        let eval = parse_dataset(include_str!("../../data/intents/eval.jsonl")).unwrap();
        let aliases = parse_aliases(BUILTIN_ALIASES).unwrap();
        // The cells of the table row that starts with `first`, markdown emphasis dropped.
        let row = |first: &str| -> Vec<String> {
            let line = readme
                .lines()
                .find(|l| l.starts_with(first))
                .unwrap_or_else(|| panic!("README has no row {first}"));
            line.split('|')
                .map(|c| c.trim().replace("**", ""))
                .filter(|c| !c.is_empty())
                .skip(1)
                .collect()
        };
        assert_eq!(row("| `train.jsonl`")[0], train.len().to_string());
        assert_eq!(row("| `eval.jsonl`")[0], eval.len().to_string());
        assert_eq!(
            row("| `catalog_aliases.jsonl`")[0],
            aliases.len().to_string()
        );
        let share = |rows: &[Labelled], intent: Intent| {
            let n = rows.iter().filter(|e| e.intent == intent).count();
            format!("{n} ({:.1}%)", 100.0 * n as f64 / rows.len() as f64)
        };
        for intent in Intent::ALL {
            let cells = row(&format!("| `{}`", intent.as_str()));
            assert_eq!(
                cells,
                [share(&train, intent), share(&eval, intent)],
                "{intent:?}"
            );
        }
        assert_eq!(
            row("| **total**"),
            [train.len().to_string(), eval.len().to_string()]
        );
        // The definitions of the README's check script.
        fn japanese(c: char) -> bool {
            matches!(c, '\u{3040}'..='\u{30ff}' | '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}')
        }
        fn emoji(c: char) -> bool {
            c >= '\u{1f000}' || ('\u{2600}'..='\u{27bf}').contains(&c)
        }
        let count = |rows: &[Labelled], f: fn(&str) -> bool| {
            rows.iter().filter(|e| f(&e.text)).count().to_string()
        };
        type Style = (&'static str, fn(&str) -> bool);
        let checks: [Style; 5] = [
            ("| 1-2 words", |t| t.split_whitespace().count() <= 2),
            ("| contain Japanese script", |t| t.chars().any(japanese)),
            ("| contain an emoji", |t| t.chars().any(emoji)),
            ("| 15 words or more", |t| t.split_whitespace().count() >= 15),
            ("| all lowercase", |t| t == t.to_lowercase()),
        ];
        for (first, f) in checks {
            assert_eq!(row(first), [count(&train, f), count(&eval, f)], "{first}");
        }
    }

    #[test]
    fn datasets_are_checked_line_by_line() {
        assert!(matches!(parse_dataset("\n"), Err(DatasetError::Empty)));
        let e = parse_dataset(
            "{\"text\":\"hi\",\"intent\":\"other\"}\n{\"text\":\"x\",\"intent\":\"shopping\"}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("shopping"), "{e}");
    }
}
