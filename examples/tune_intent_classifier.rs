//! Model selection for the trained intent classifier: 5-fold cross-validation on the training
//! split only (the eval split is kept for the final figure, `mangaassist eval`).
//!
//! ```sh
//! cargo run --release --example tune_intent_classifier               # what each change is worth
//! TUNE=grid cargo run --release --example tune_intent_classifier     # the grid the defaults came from
//! TUNE=errors cargo run --release --example tune_intent_classifier   # held-out mistakes, shipped setting
//! ```
//!
//! Example `i` of `data/intents/train.jsonl` is held out in fold `i % 5`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mangaassist::backends::ngram_classifier::{
    BUILTIN_TRAIN, CatalogNames, FeatureConfig, Labelled, NgramClassifier, TrainParams,
    parse_dataset,
};
use mangaassist::runtime::BUILTIN_CATALOG;
use mangaassist_protocols::catalog::parse_jsonl;
use mangaassist_protocols::turn::Intent;

/// Folds of the cross-validation.
const FOLDS: usize = 5;

/// What one setting scored across the folds.
struct Scores {
    /// Share of held-out examples classified right.
    accuracy: f64,
    /// Per intent, in `Intent::ALL` order.
    recall: [f64; Intent::ALL.len()],
    /// Share of held-out examples moved across the shop / `other` line.
    misroute: f64,
}

/// 5-fold cross-validation of one setting; `on_error` sees every held-out mistake.
fn cross_validate(
    train: &[Labelled],
    params: TrainParams,
    features: FeatureConfig,
    names: &Arc<CatalogNames>,
    mut on_error: impl FnMut(&Labelled, Intent),
) -> Scores {
    let mut right = 0;
    let mut misrouted = 0;
    let mut per_class = [(0usize, 0usize); Intent::ALL.len()];
    for fold in 0..FOLDS {
        let (held, fit): (Vec<_>, Vec<_>) = train
            .iter()
            .enumerate()
            .partition(|(i, _)| i % FOLDS == fold);
        let fit: Vec<Labelled> = fit.into_iter().map(|(_, e)| e.clone()).collect();
        let model = NgramClassifier::train_with(&fit, params, features, names.clone());
        for (_, e) in held {
            let got = model.classify_text(&e.text).intent;
            let c = Intent::ALL.iter().position(|&i| i == e.intent).unwrap_or(0);
            per_class[c].1 += 1;
            if got == e.intent {
                right += 1;
                per_class[c].0 += 1;
            } else {
                on_error(e, got);
                if (got == Intent::Other) != (e.intent == Intent::Other) {
                    misrouted += 1;
                }
            }
        }
    }
    let n = train.len() as f64;
    Scores {
        accuracy: right as f64 / n,
        recall: per_class.map(|(r, t)| r as f64 / t.max(1) as f64),
        misroute: misrouted as f64 / n,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What the runtime pays once at startup: parsing the shipped files, building the catalog
    // names, training.
    let t0 = Instant::now();
    let builtin = NgramClassifier::builtin();
    let startup = t0.elapsed();
    let train = parse_dataset(BUILTIN_TRAIN)?;
    let catalog = CatalogNames::builtin();
    let titles_only = Arc::new(CatalogNames::new(&parse_jsonl(BUILTIN_CATALOG)?, &[]));
    let none = Arc::new(CatalogNames::empty());
    let shipped = FeatureConfig::default();
    let params = TrainParams::default();
    let v1_features = FeatureConfig {
        char_min: 2,
        char_max: 5,
        words: true,
        bigrams: true,
        catalog: false,
        length: false,
        catalog_weight: 1.0,
    };
    let v1_params = TrainParams {
        epochs: 30,
        learning_rate: 3.0,
        l2: 1e-5,
        ..params
    };
    println!("5-fold CV on {} training queries", train.len());
    let report = |name: &str, params: TrainParams, features: FeatureConfig, names| {
        let s = cross_validate(&train, params, features, names, |_, _| {});
        let r = s.recall;
        println!(
            "{name:<64} accuracy {:.3}  misroute {:.3}  recall b/s/r/p/o {:.2}/{:.2}/{:.2}/{:.2}/{:.2}",
            s.accuracy, s.misroute, r[0], r[1], r[2], r[3], r[4]
        );
        (s.accuracy, s.misroute)
    };
    match std::env::var("TUNE").as_deref() {
        // Every setting of the grid, then the ten best: the defaults are the first of them.
        Ok("grid") => {
            let mut results = Vec::new();
            for char_min in [1, 2] {
                for catalog_weight in [1.0, 2.0, 3.0] {
                    for learning_rate in [3.0, 6.0, 10.0] {
                        for l2 in [3e-4, 1e-3, 3e-3, 1e-2] {
                            for epochs in [20, 30] {
                                let features = FeatureConfig {
                                    char_min,
                                    catalog_weight,
                                    ..shipped
                                };
                                let params = TrainParams {
                                    epochs,
                                    learning_rate,
                                    l2,
                                    ..params
                                };
                                let name = format!(
                                    "char {char_min}-{}, catalog x{catalog_weight}, ep {epochs} lr {learning_rate} l2 {l2}",
                                    shipped.char_max
                                );
                                let scores = report(&name, params, features, &catalog);
                                results.push((scores, name));
                            }
                        }
                    }
                }
            }
            // Best accuracy first; on a tie, fewer misroutes (the gate's other figure).
            results.sort_by(|a, b| b.0.0.total_cmp(&a.0.0).then(a.0.1.total_cmp(&b.0.1)));
            println!("best ten:");
            for ((acc, misroute), name) in results.iter().take(10) {
                println!("  accuracy {acc:.4}  misroute {misroute:.4}  {name}");
            }
        }
        // The shipped setting's held-out mistakes, grouped by label.
        Ok("errors") => {
            let mut errors = Vec::new();
            cross_validate(&train, params, shipped, &catalog, |e, got| {
                errors.push(format!("{:?} -> {got:?}: {}", e.intent, e.text));
            });
            errors.sort();
            for e in &errors {
                println!("  {e}");
            }
        }
        // What each change from v1 is worth.
        _ => {
            report(
                "v1 (char 2-5, words, pairs; v1 training)",
                v1_params,
                v1_features,
                &none,
            );
            report("v1 features, shipped training", params, v1_features, &none);
            let with_names = FeatureConfig {
                catalog: true,
                ..v1_features
            };
            report(
                "+ catalog names (titles/authors/genres only)",
                params,
                with_names,
                &titles_only,
            );
            report("+ catalog names and aliases", params, with_names, &catalog);
            report(
                "shipped (+ length, char 1-5, catalog weight)",
                params,
                shipped,
                &catalog,
            );
            // A classification with the shipped model, over the training messages.
            let mut per_message: Vec<Duration> = train
                .iter()
                .map(|e| {
                    let t = Instant::now();
                    std::hint::black_box(builtin.classify_text(&e.text));
                    t.elapsed()
                })
                .collect();
            per_message.sort_unstable();
            let at = |q: f64| per_message[((per_message.len() - 1) as f64 * q) as usize];
            println!(
                "NgramClassifier::builtin() {:.0} ms (parse, catalog names, training); classify p50 {:?} p99 {:?}",
                startup.as_secs_f64() * 1e3,
                at(0.5),
                at(0.99),
            );
        }
    }
    Ok(())
}
