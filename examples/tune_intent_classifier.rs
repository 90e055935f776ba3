//! Model selection for the trained intent classifier: 5-fold cross-validation on the training
//! split only (the eval split is kept for the final figure, `mangaassist eval`).
//!
//! ```sh
//! cargo run --release --example tune_intent_classifier
//! ```

use mangaassist::backends::ngram_classifier::{
    BUILTIN_TRAIN, FeatureConfig, Labelled, NgramClassifier, TrainParams, parse_dataset,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let train = parse_dataset(BUILTIN_TRAIN)?;
    let shipped = FeatureConfig::default();
    let candidates = [
        (
            "char 1-4, words, pairs",
            FeatureConfig {
                char_min: 1,
                char_max: 4,
                ..shipped
            },
        ),
        ("char 2-5, words, pairs", shipped),
        (
            "char 3-5, words, pairs",
            FeatureConfig {
                char_min: 3,
                ..shipped
            },
        ),
        (
            "char 2-5, words",
            FeatureConfig {
                bigrams: false,
                ..shipped
            },
        ),
    ];
    for (name, features) in candidates {
        for learning_rate in [1.0, 3.0] {
            let params = TrainParams {
                learning_rate,
                ..TrainParams::default()
            };
            let mut right = 0;
            for fold in 0..5 {
                let (held, fit): (Vec<_>, Vec<_>) =
                    train.iter().enumerate().partition(|(i, _)| i % 5 == fold);
                let fit: Vec<Labelled> = fit.into_iter().map(|(_, e)| e.clone()).collect();
                let model = NgramClassifier::train_with(&fit, params, features);
                right += held
                    .iter()
                    .filter(|(_, e)| model.classify_text(&e.text).intent == e.intent)
                    .count();
            }
            println!(
                "{name:<24} lr {learning_rate}: 5-fold CV accuracy {:.3}",
                right as f64 / train.len() as f64
            );
        }
    }
    Ok(())
}
