//! A small trained intent classifier: multinomial logistic regression over hashed character
//! n-grams and word n-grams.
//!
//! Why this shape: shop chat is short, misspelt, slangy and often mixes Japanese and English
//! ("frieren volum 3", "ワンピース 105巻 ある?"). Character n-grams see through typos and need no
//! tokenizer for Japanese; word unigrams and bigrams carry phrases ("how much", "in stock").
//! A linear model over them trains in milliseconds on a few hundred labelled queries, classifies
//! in microseconds, and never fails: it is the local tier the model policy degrades to.
//!
//! Features, for a text lowercased and padded with one space on each side:
//! - character n-grams of 2 to 5 characters (`c:` namespace);
//! - words (letters and digits, anything else separates them) and adjacent word pairs (`w:`,
//!   `b:` namespaces);
//!
//! each hashed (FNV-1a) into [`DIMENSIONS`] buckets, binary, then L2-normalized. Training is plain
//! SGD on the softmax cross-entropy with L2 regularization, a decaying learning rate and a
//! fixed-seed shuffle, so the same examples always give the same model. The confidence reported
//! is the softmax probability of the winning intent.
//!
//! The runtime trains it once per process from `data/intents/train.jsonl`, built into the binary
//! ([`NgramClassifier::builtin`]); `mangaassist eval` measures it on `data/intents/eval.jsonl`.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use mangaassist_protocols::ports::{ClassifyError, IntentClassifier};
use mangaassist_protocols::turn::{Classification, Intent};
use serde::Deserialize;

/// Hash buckets per intent. 2^17 keeps collisions rare for a few thousand distinct n-grams while
/// the weights stay at 2.5 MiB.
pub const DIMENSIONS: usize = 1 << 17;

/// The training split shipped in `data/intents/train.jsonl`, built into the binary.
pub const BUILTIN_TRAIN: &str = include_str!("../../data/intents/train.jsonl");

/// The model id this classifier reports (`local_classifier` backend in the policy).
pub const MODEL_ID: &str = "ngram-logreg-v1";

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
    fn default() -> Self {
        Self {
            epochs: 30,
            learning_rate: 3.0,
            l2: 1e-5,
            seed: 0x6d61_6e67_6173_7369,
        }
    }
}

/// The trained model.
pub struct NgramClassifier {
    features: FeatureConfig,
    /// `weights[class * DIMENSIONS + bucket]`.
    weights: Vec<f32>,
    bias: [f32; CLASSES],
}

impl std::fmt::Debug for NgramClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NgramClassifier")
            .field("dimensions", &DIMENSIONS)
            .field("bias", &self.bias)
            .finish_non_exhaustive()
    }
}

/// A sparse, L2-normalized feature vector: (bucket, value), buckets unique.
type Features = Vec<(u32, f32)>;

fn fnv1a(namespace: u8, bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(namespace).chain(bytes) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn bucket(h: u64) -> u32 {
    // DIMENSIONS is a power of two well under u32::MAX.
    (h % DIMENSIONS as u64) as u32
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
}

impl Default for FeatureConfig {
    /// Chosen by 5-fold cross-validation on the training split
    /// (`cargo run --release --example tune_intent_classifier`).
    fn default() -> Self {
        Self {
            char_min: 2,
            char_max: 5,
            words: true,
            bigrams: true,
        }
    }
}

/// The features of `text`.
fn features(text: &str, cfg: &FeatureConfig) -> Features {
    let lower: Vec<char> = std::iter::once(' ')
        .chain(text.chars().flat_map(char::to_lowercase))
        .chain(std::iter::once(' '))
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    let mut buckets: Vec<u32> = Vec::with_capacity(lower.len() * 4 + 16);
    let mut utf8 = [0u8; 4];
    for n in cfg.char_min..=cfg.char_max {
        for gram in lower.windows(n) {
            if n == 1 && gram[0] == ' ' {
                continue;
            }
            let bytes = gram
                .iter()
                .flat_map(|c| c.encode_utf8(&mut utf8).as_bytes().to_vec());
            buckets.push(bucket(fnv1a(b'c', bytes)));
        }
    }
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if cfg.words {
        for w in &words {
            buckets.push(bucket(fnv1a(b'w', w.bytes())));
        }
    }
    if cfg.bigrams {
        for pair in words.windows(2) {
            let joined = format!("{} {}", pair[0], pair[1]);
            buckets.push(bucket(fnv1a(b'b', joined.bytes())));
        }
    }
    buckets.sort_unstable();
    buckets.dedup();
    let norm = (buckets.len().max(1) as f32).sqrt();
    buckets.into_iter().map(|b| (b, 1.0 / norm)).collect()
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
    /// Trains on `examples`.
    pub fn train(examples: &[Labelled], params: TrainParams) -> Self {
        Self::train_with(examples, params, FeatureConfig::default())
    }

    /// Trains on `examples` with a feature set of its own.
    pub fn train_with(examples: &[Labelled], params: TrainParams, cfg: FeatureConfig) -> Self {
        let mut model = Self {
            features: cfg,
            weights: vec![0.0; CLASSES * DIMENSIONS],
            bias: [0.0; CLASSES],
        };
        let mut data: Vec<(Features, usize)> = examples
            .iter()
            .map(|e| (features(&e.text, &cfg), class(e.intent)))
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

    /// The model trained on the shipped training split, once per process.
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
        let p = self.probabilities(&features(text, &self.features));
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
        let a = features("frieren volume 3", &cfg);
        let norm: f32 = a.iter().map(|(_, v)| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        let b: std::collections::HashSet<u32> = features("frieren volum 3", &cfg)
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
            !features("ワンピース 105巻", &cfg).is_empty(),
            "no tokenizer needed"
        );
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
        // Measured 0.830 (2026-12-01, docs/benchmarks.md); the target is 0.90. This
        // guards against regressions, it does not claim the target.
        let eval = parse_dataset(include_str!("../../data/intents/eval.jsonl")).unwrap();
        let m = NgramClassifier::builtin();
        let right = eval
            .iter()
            .filter(|e| m.classify_text(&e.text).intent == e.intent)
            .count();
        let accuracy = right as f64 / eval.len() as f64;
        assert!(accuracy >= 0.80, "eval accuracy {accuracy:.3}");
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
