//! The model-tier policy: validation errors that name the task and the id, fallback walking,
//! canary split, cost, tier violations, and the store (reload, audit, watch, rollback, history)
//! on real files in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mangaassist::policy::cli::{self, Location, PolicyArgs, PolicyCommand};
use mangaassist::policy::file::parse_str;
use mangaassist::policy::store::{self, AuditLog};
use mangaassist::policy::{
    Backend, Failure, Policy, PolicyError, PolicyStore, ReloadSource, TaskType, Tier,
    ViolationRule, fallback_label,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const EXAMPLE: &str = include_str!("../policy.example.toml");

/// A small valid policy; tests edit it with `replace`.
const BASE: &str = r#"
[models.local]
backend = "local_classifier"
id = "ngram-logreg-v2"

[models.haiku]
backend = "bedrock"
id = "anthropic.claude-3-haiku-20240307-v1:0"

[models.sonnet]
backend = "bedrock"
id = "anthropic.claude-3-5-sonnet-20240620-v1:0"

[models.opus]
backend = "bedrock"
id = "anthropic.claude-3-opus-20240229-v1:0"

[models.simulated]
backend = "simulated"
id = "mangaassist-simulated-v1"

[tasks.intent_classification]
model = "local"
fallback.error = "haiku"

[tasks.moderation_precheck]
model = "haiku"

[tasks.slot_extraction]
model = "haiku"

[tasks.answer_synthesis]
model = "sonnet"
fallback.throttled = ["haiku", "simulated"]
fallback.timeout = "haiku"
canary = { model = "opus", percent = 10 }
shadow = { model = "haiku" }

[tasks.summarization]
model = "haiku"

[tasks.preference_extraction]
model = "haiku"
"#;

fn ok(text: &str) -> Policy {
    parse_str(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// The rendered errors of an invalid policy.
fn errors(text: &str) -> Vec<String> {
    match parse_str(text, "test.toml") {
        Err(PolicyError::Invalid { errors, .. }) => {
            errors.iter().map(ToString::to_string).collect()
        }
        Err(e) => panic!("expected validation errors, got {e}"),
        Ok(_) => panic!("expected validation errors, got a valid policy"),
    }
}

fn assert_one_error_mentions(text: &str, needles: &[&str]) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| needles.iter().all(|n| e.contains(n))),
        "no error mentions all of {needles:?}: {errs:#?}"
    );
}

#[test]
fn the_example_policy_validates_and_breaks_no_tier_rule() {
    let p = ok(EXAMPLE);
    assert_eq!(
        p.task(TaskType::AnswerSynthesis).primary.name.as_ref(),
        "sonnet"
    );
    assert!(p.violations().is_empty(), "{:?}", p.violations());
    for task in TaskType::ALL {
        assert!(p.summary().iter().any(|l| l.starts_with(task.as_str())));
    }
}

#[test]
fn base_policy_validates() {
    let p = ok(BASE);
    assert_eq!(p.model("haiku").unwrap().tier, Tier::Cheap);
    assert_eq!(p.model("opus").unwrap().tier, Tier::Premium);
    assert_eq!(p.model("local").unwrap().backend, Backend::LocalClassifier);
}

#[test]
fn latest_is_rejected_naming_task_and_id() {
    let text = BASE.replace(
        "anthropic.claude-3-haiku-20240307-v1:0",
        "anthropic.claude-3-haiku-latest",
    );
    assert_one_error_mentions(
        &text,
        &[
            "models.haiku.id",
            "anthropic.claude-3-haiku-latest",
            "moderation_precheck",
            "latest",
        ],
    );
}

#[test]
fn alias_is_rejected_naming_task_and_id() {
    let text = BASE.replace(
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "claude-3-5-sonnet",
    );
    assert_one_error_mentions(&text, &["claude-3-5-sonnet", "answer_synthesis", "alias"]);
}

#[test]
fn unversioned_id_is_rejected_naming_task_and_id() {
    let text = BASE.replace(
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-5-sonnet-20240620",
    );
    assert_one_error_mentions(
        &text,
        &[
            "anthropic.claude-3-5-sonnet-20240620",
            "answer_synthesis",
            "unversioned",
        ],
    );
}

#[test]
fn openai_latest_and_bare_names_are_rejected() {
    let text = BASE.replace(
        "[models.opus]\nbackend = \"bedrock\"\nid = \"anthropic.claude-3-opus-20240229-v1:0\"",
        "[models.opus]\nbackend = \"openai\"\nid = \"llama3:latest\"\ntier = \"premium\"",
    );
    assert_one_error_mentions(&text, &["llama3:latest", "answer_synthesis", "latest"]);
    let text = text.replace("llama3:latest", "gpt-4o");
    assert_one_error_mentions(&text, &["gpt-4o", "answer_synthesis", "alias"]);
}

#[test]
fn unknown_backend_is_rejected_naming_task_and_id() {
    let text = BASE.replace(
        "backend = \"bedrock\"\nid = \"anthropic.claude-3-5-sonnet",
        "backend = \"azure\"\nid = \"anthropic.claude-3-5-sonnet",
    );
    assert_one_error_mentions(
        &text,
        &[
            "models.sonnet.backend",
            "azure",
            "answer_synthesis",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
        ],
    );
}

#[test]
fn unknown_and_missing_tasks_are_rejected() {
    let text = BASE.replace("[tasks.summarization]", "[tasks.summarisation]");
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("tasks.summarisation") && e.contains("unknown task")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("tasks.summarization") && e.contains("no model")),
        "{errs:?}"
    );
}

#[test]
fn fallback_to_an_unknown_model_is_rejected() {
    let text = BASE.replace(
        "fallback.timeout = \"haiku\"",
        "fallback.timeout = \"gpt5\"",
    );
    assert_one_error_mentions(
        &text,
        &[
            "tasks.answer_synthesis.fallback.timeout",
            "gpt5",
            "unknown model",
        ],
    );
    let text = BASE.replace("fallback.timeout = \"haiku\"", "fallback.slow = \"haiku\"");
    assert_one_error_mentions(
        &text,
        &[
            "tasks.answer_synthesis.fallback.slow",
            "unknown failure kind",
        ],
    );
}

#[test]
fn canary_percent_over_100_is_rejected() {
    let text = BASE.replace("percent = 10", "percent = 150");
    assert_one_error_mentions(
        &text,
        &[
            "tasks.answer_synthesis.canary.percent",
            "150",
            "answer_synthesis",
        ],
    );
}

#[test]
fn a_looping_fallback_chain_is_rejected() {
    let text = BASE.replace(
        "fallback.throttled = [\"haiku\", \"simulated\"]",
        "fallback.throttled = [\"haiku\", \"sonnet\"]",
    );
    assert_one_error_mentions(
        &text,
        &["fallback.throttled", "loops", "sonnet -> haiku -> sonnet"],
    );
    let text = BASE.replace(
        "fallback.throttled = [\"haiku\", \"simulated\"]",
        "fallback.throttled = [\"haiku\", \"simulated\", \"haiku\"]",
    );
    assert_one_error_mentions(&text, &["loops", "haiku -> simulated -> haiku"]);
}

#[test]
fn a_local_classifier_cannot_write_the_answer() {
    let text = BASE.replace(
        "fallback.timeout = \"haiku\"",
        "fallback.timeout = \"local\"",
    );
    assert_one_error_mentions(
        &text,
        &[
            "tasks.answer_synthesis.fallback.timeout",
            "\"local\"",
            "ngram-logreg-v2",
            "cannot write text",
        ],
    );
    // Control: the same model is fine as a classification fallback.
    ok(&BASE.replace(
        "[tasks.intent_classification]\nmodel = \"local\"\nfallback.error = \"haiku\"",
        "[tasks.intent_classification]\nmodel = \"haiku\"\nfallback.error = \"local\"",
    ));
}

#[test]
fn where_a_model_is_served_is_checked_against_its_backend() {
    let gpt = "\n[models.gpt]\nbackend = \"openai\"\nid = \"gpt-4o-mini-2024-07-18\"\ntier = \"cheap\"\n\n[pricing.gpt]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.6\n";
    assert_one_error_mentions(
        &format!("{BASE}{gpt}"),
        &["models.gpt.endpoint", "gpt-4o-mini-2024-07-18", "base URL"],
    );
    let served = gpt.replace(
        "tier = \"cheap\"",
        "tier = \"cheap\"\nendpoint = \"http://127.0.0.1:8000/v1\"\napi_key_env = \"VLLM_KEY\"",
    );
    let p = ok(&format!("{BASE}{served}"));
    let m = p.model("gpt").unwrap();
    assert_eq!(
        m.serving.endpoint.as_deref(),
        Some("http://127.0.0.1:8000/v1")
    );
    assert_eq!(m.serving.api_key_env.as_deref(), Some("VLLM_KEY"));

    let text = BASE.replace(
        "id = \"ngram-logreg-v2\"",
        "id = \"ngram-logreg-v2\"\nendpoint = \"http://x\"",
    );
    assert_one_error_mentions(&text, &["models.local.endpoint", "in-process"]);
    let text = BASE.replace(
        "id = \"anthropic.claude-3-haiku-20240307-v1:0\"",
        "id = \"anthropic.claude-3-haiku-20240307-v1:0\"\nendpoint = \"vpc-endpoint\"\napi_key_env = \"K\"",
    );
    assert_one_error_mentions(&text, &["models.haiku.endpoint", "not an http"]);
    assert_one_error_mentions(&text, &["models.haiku.api_key_env", "openai models only"]);
    let text = BASE.replace(
        "id = \"anthropic.claude-3-haiku-20240307-v1:0\"",
        "id = \"anthropic.claude-3-haiku-20240307-v1:0\"\nregion = \"us-west-2\"\nendpoint = \"https://bedrock-runtime.us-west-2.amazonaws.com\"",
    );
    let p = ok(&text);
    assert_eq!(
        p.model("haiku").unwrap().serving.region.as_deref(),
        Some("us-west-2")
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = BASE
        .replace("percent = 10", "percent = 101")
        .replace(
            "fallback.timeout = \"haiku\"",
            "fallback.timeout = \"nope\"",
        )
        .replace("ngram-logreg-v2", "bert");
    assert!(errors(&text).len() >= 3, "{:#?}", errors(&text));
}

#[test]
fn unknown_keys_are_parse_errors() {
    let text = BASE.replace(
        "[tasks.slot_extraction]",
        "[tasks.slot_extraction]\ntemperature = 1",
    );
    let e = parse_str(&text, "test.toml").unwrap_err();
    assert!(matches!(e, PolicyError::Parse { .. }), "{e}");
    assert!(e.to_string().contains("temperature"), "{e}");
}

#[test]
fn fallback_chains_walk_in_order_and_end() {
    let p = ok(BASE);
    let t = TaskType::AnswerSynthesis;
    let sonnet = p.model("sonnet").unwrap().clone();
    let opus = p.model("opus").unwrap().clone();
    let haiku = p.model("haiku").unwrap().clone();
    let local = p.model("local").unwrap().clone();
    let simulated = p.model("simulated").unwrap().clone();

    assert_eq!(
        p.next_after(t, &sonnet, Failure::Throttled),
        Some(haiku.clone())
    );
    assert_eq!(
        p.next_after(t, &haiku, Failure::Throttled),
        Some(simulated.clone())
    );
    assert_eq!(p.next_after(t, &simulated, Failure::Throttled), None);
    // The canary starts the same chain.
    assert_eq!(
        p.next_after(t, &opus, Failure::Throttled),
        Some(haiku.clone())
    );
    assert_eq!(
        p.next_after(t, &sonnet, Failure::Timeout),
        Some(haiku.clone())
    );
    assert_eq!(p.next_after(t, &haiku, Failure::Timeout), None);
    assert_eq!(p.next_after(t, &sonnet, Failure::Error), None);
    // Degrade to the local classifier, then escalate back is not possible: no loops.
    let c = TaskType::IntentClassification;
    assert_eq!(p.next_after(c, &local, Failure::Error), Some(haiku.clone()));
    assert_eq!(p.next_after(c, &haiku, Failure::Error), None);

    assert_eq!(fallback_label(&sonnet, &haiku), "sonnet-fallback-haiku");
    assert_eq!(fallback_label(&local, &haiku), "local-fallback-haiku");
}

#[test]
fn canary_takes_about_its_percent_and_is_stable_per_session() {
    let p = ok(BASE);
    let again = ok(BASE);
    let t = TaskType::AnswerSynthesis;
    let n = 10_000;
    let mut canaries = 0;
    for i in 0..n {
        let session = format!("session-{i}");
        let r = p.route(t, &session);
        assert_eq!(r, p.route(t, &session), "same process, same answer");
        assert_eq!(
            r,
            again.route(t, &session),
            "another policy instance, same answer"
        );
        assert_eq!(r.shadow.as_ref().map(|m| &*m.name), Some("haiku"));
        if r.canary {
            assert_eq!(&*r.model.name, "opus");
            canaries += 1;
        } else {
            assert_eq!(&*r.model.name, "sonnet");
        }
    }
    let share = f64::from(canaries) / f64::from(n) * 100.0;
    assert!(
        (8.5..=11.5).contains(&share),
        "canary share {share}% for 10%"
    );

    // The bucket is a fixed hash: the same in every process and release.
    assert_eq!(
        mangaassist::policy::canary_bucket(t, "session-0"),
        mangaassist::policy::canary_bucket(t, "session-0")
    );
    // No canary on other tasks, 0% and 100% are exact.
    assert!(!p.route(TaskType::Summarization, "x").canary);
    let none = ok(&BASE.replace("percent = 10", "percent = 0"));
    let all = ok(&BASE.replace("percent = 10", "percent = 100"));
    for i in 0..1_000 {
        let s = format!("s{i}");
        assert!(!none.route(t, &s).canary);
        assert!(all.route(t, &s).canary);
    }
}

#[test]
fn cost_uses_the_pricing_table_and_family_defaults() {
    let p = ok(BASE);
    let haiku = p.model("haiku").unwrap();
    let sonnet = p.model("sonnet").unwrap();
    let opus = p.model("opus").unwrap();
    let local = p.model("local").unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(p.cost_usd(haiku, 1_000_000, 1_000_000), 1.5));
    assert!(close(p.cost_usd(sonnet, 1_000, 500), 0.003 + 0.0075));
    assert!(close(p.cost_usd(opus, 2_000_000, 0), 30.0));
    assert!(close(p.cost_usd(local, 5_000, 5_000), 0.0));

    let custom = ok(&format!(
        "{BASE}\n[pricing.haiku]\ninput_per_mtok = 0.8\noutput_per_mtok = 4.0\n"
    ));
    assert!(close(
        custom.cost_usd(custom.model("haiku").unwrap(), 1_000_000, 1_000_000),
        4.8
    ));

    let unknown = BASE.replace(
        "[models.opus]\nbackend = \"bedrock\"\nid = \"anthropic.claude-3-opus-20240229-v1:0\"",
        "[models.opus]\nbackend = \"bedrock\"\nid = \"amazon.titan-text-express-v1\"\ntier = \"standard\"",
    );
    assert_one_error_mentions(
        &unknown,
        &[
            "pricing.opus",
            "amazon.titan-text-express-v1",
            "no default price",
        ],
    );
    assert_one_error_mentions(
        &format!("{BASE}\n[pricing.nobody]\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\n"),
        &["pricing.nobody", "no model"],
    );
}

#[test]
fn tier_violations_on_load_and_per_call() {
    let p = ok(BASE);
    // BASE's canary puts opus (premium) on answer_synthesis: no rule against that.
    assert!(p.violations().is_empty(), "{:?}", p.violations());

    let bad = ok(&BASE
        .replace(
            "[tasks.moderation_precheck]\nmodel = \"haiku\"",
            "[tasks.moderation_precheck]\nmodel = \"opus\"",
        )
        .replace(
            "canary = { model = \"opus\", percent = 10 }",
            "canary = { model = \"simulated\", percent = 10 }",
        ));
    let v = bad.violations();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().any(|v| v.rule == ViolationRule::PremiumOnCheapTask
        && v.task == TaskType::ModerationPrecheck
        && &*v.model == "opus"));
    assert!(
        v.iter()
            .any(|v| v.rule == ViolationRule::CheapOnAnswerSynthesis
                && v.task == TaskType::AnswerSynthesis
                && &*v.model == "simulated")
    );

    // Per call: a fallback to haiku on answer_synthesis is flagged when it happens.
    let haiku = p.model("haiku").unwrap();
    let v = Policy::check(TaskType::AnswerSynthesis, haiku).unwrap();
    assert_eq!(v.rule.as_str(), "cheap_on_answer_synthesis");
    assert_eq!(
        Policy::check(TaskType::SlotExtraction, p.model("opus").unwrap())
            .unwrap()
            .rule
            .as_str(),
        "premium_on_cheap_task"
    );
    assert!(Policy::check(TaskType::Summarization, p.model("opus").unwrap()).is_none());
    assert!(Policy::check(TaskType::AnswerSynthesis, p.model("sonnet").unwrap()).is_none());
}

// ------------------------------------------------------------------------------------------
// Store
// ------------------------------------------------------------------------------------------

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Replaces the file the way many editors do: write a sibling, rename it over.
fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn with_haiku_answers(text: &str) -> String {
    text.replace(
        "[tasks.answer_synthesis]\nmodel = \"sonnet\"",
        "[tasks.answer_synthesis]\nmodel = \"sonnet\"\n# edited\n",
    )
    .replace(
        "[tasks.summarization]\nmodel = \"haiku\"",
        "[tasks.summarization]\nmodel = \"sonnet\"",
    )
}

#[test]
fn valid_reload_swaps_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    write(&path, BASE);
    let store = PolicyStore::open(&path, None).unwrap();
    assert_eq!(store.current().version, 1);
    assert_eq!(store.history().unwrap()[0].source, ReloadSource::Startup);

    // Unchanged content: nothing new recorded.
    let same = store.reload(ReloadSource::Sighup).unwrap();
    assert!(!same.recorded);
    assert_eq!(same.record.version, 1);
    assert_eq!(store.history().unwrap().len(), 1);

    write(&path, &with_haiku_answers(BASE));
    let a = store.reload(ReloadSource::Admin).unwrap();
    assert!(a.recorded);
    assert_eq!(a.record.version, 2);
    assert_eq!(a.record.source, ReloadSource::Admin);
    let active = store.current();
    assert_eq!(active.version, 2);
    assert_eq!(
        &*active.policy.task(TaskType::Summarization).primary.name,
        "sonnet"
    );

    let h = store.history().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[1].previous_sha256.as_deref(), Some(h[0].sha256.as_str()));
    assert_eq!(
        h[1].sha256,
        store::sha256_hex(&std::fs::read_to_string(&path).unwrap())
    );
    assert!(
        h[1].diff
            .task_lines
            .iter()
            .any(|l| l == "+ tasks.summarization: model = \"sonnet\""),
        "{:?}",
        h[1].diff
    );
    assert!(
        h[1].diff.summary().contains("summarization"),
        "{}",
        h[1].diff.summary()
    );
    // The admin routes answer with these as JSON.
    let shown = serde_json::to_value(&*store.current()).unwrap();
    assert_eq!(shown["version"], 2);
    assert_eq!(
        shown["policy"]["tasks"]["answer_synthesis"]["primary"]["name"],
        "sonnet"
    );
    assert_eq!(
        shown["policy"]["tasks"]["answer_synthesis"]["fallback"]["throttled"][0]["name"],
        "haiku"
    );
    let shown = serde_json::to_value(&a).unwrap();
    assert_eq!(shown["record"]["source"], "admin");
    assert_eq!(shown["recorded"], true);
    // Every version's content is kept.
    let audit = AuditLog::for_policy(&path, None);
    assert_eq!(audit.content(1).unwrap(), BASE);
    assert_eq!(audit.dir(), dir.path().join("policy.toml.history"));
    // A restart with the same file adopts the recorded version.
    let again = PolicyStore::open(&path, None).unwrap();
    assert_eq!(again.current().version, 2);
    assert_eq!(again.history().unwrap().len(), 2);
}

#[test]
fn invalid_reload_keeps_the_active_policy_and_is_not_audited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let audit_dir = dir.path().join("audit");
    write(&path, BASE);
    let store = PolicyStore::open(&path, Some(&audit_dir)).unwrap();
    let before = store.current();

    write(&path, &BASE.replace("percent = 10", "percent = 150"));
    let err = store.reload(ReloadSource::FileChange).unwrap_err();
    assert!(matches!(err, PolicyError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("canary.percent"), "{err}");
    assert!(Arc::ptr_eq(&before, &store.current()));
    assert_eq!(store.history().unwrap().len(), 1);

    write(&path, "not toml [");
    assert!(matches!(
        store.reload(ReloadSource::Sighup),
        Err(PolicyError::Parse { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        store.reload(ReloadSource::Sighup),
        Err(PolicyError::Read { .. })
    ));
    assert!(Arc::ptr_eq(&before, &store.current()));
    assert_eq!(store.history().unwrap().len(), 1);
    assert!(audit_dir.join("audit.jsonl").exists());
}

#[test]
fn rollback_restores_the_previous_content_and_audits_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    write(&path, BASE);
    let store = PolicyStore::open(&path, None).unwrap();
    let edited = with_haiku_answers(BASE);
    write(&path, &edited);
    store.reload(ReloadSource::FileChange).unwrap();

    let a = store.rollback(None).unwrap();
    assert!(a.recorded);
    assert_eq!(a.record.version, 3);
    assert_eq!(a.record.restored_from, Some(1));
    assert_eq!(a.record.source, ReloadSource::CliRollback);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), BASE);
    assert_eq!(store.current().version, 3);
    assert_eq!(
        &*store
            .current()
            .policy
            .task(TaskType::Summarization)
            .primary
            .name,
        "haiku"
    );

    // Explicit version, through the free function the CLI uses (no store needed), even when the
    // current file is broken.
    write(&path, "broken = [");
    let b = store::rollback(&path, None, Some(2)).unwrap();
    assert_eq!((b.record.version, b.record.restored_from), (4, Some(2)));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
    // The server's watcher then sees content already recorded: adopts v4, records nothing.
    let seen = store.reload(ReloadSource::FileChange).unwrap();
    assert!(!seen.recorded);
    assert_eq!(store.current().version, 4);

    let h = store.history().unwrap();
    assert_eq!(
        h.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(matches!(
        store::rollback(&path, None, Some(99)),
        Err(PolicyError::NoSuchVersion(99))
    ));
}

#[test]
fn rollback_with_no_history_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    write(&path, BASE);
    assert!(matches!(
        store::rollback(&path, None, None),
        Err(PolicyError::NothingToRollBack)
    ));
    let store = PolicyStore::open(&path, None).unwrap();
    assert!(matches!(
        store.rollback(None),
        Err(PolicyError::NothingToRollBack)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watch_picks_up_an_edit_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    write(&path, BASE);
    let store = Arc::new(PolicyStore::open(&path, None).unwrap());
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    store::watch(
        store.clone(),
        Duration::from_millis(100),
        shutdown.clone(),
        &tasks,
    )
    .unwrap();
    store::sighup(store.clone(), shutdown.clone(), &tasks).unwrap();

    // A real filesystem watch can only be observed in real time: poll with a deadline.
    async fn wait_for_version(store: &PolicyStore, version: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            if store.current().version == version {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    // In-place write.
    write(&path, &with_haiku_answers(BASE));
    assert!(
        wait_for_version(&store, 2).await,
        "in-place edit not picked up"
    );
    assert_eq!(store.history().unwrap()[1].source, ReloadSource::FileChange);

    // Editor-style replace by rename.
    write_by_rename(&path, &BASE.replace("percent = 10", "percent = 20"));
    assert!(
        wait_for_version(&store, 3).await,
        "rename-over edit not picked up"
    );

    // An invalid edit is ignored; the next valid one is picked up.
    write(&path, &BASE.replace("percent = 10", "percent = 200"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.current().version, 3);
    write(&path, &BASE.replace("percent = 10", "percent = 30"));
    assert!(
        wait_for_version(&store, 4).await,
        "edit after a rejected one not picked up"
    );
    assert_eq!(store.history().unwrap().len(), 4);

    shutdown.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(2), tasks.wait())
        .await
        .unwrap();
}

// ------------------------------------------------------------------------------------------
// CLI
// ------------------------------------------------------------------------------------------

fn run_cli(command: PolicyCommand) -> (Result<(), cli::CliError>, String) {
    let mut out = Vec::new();
    let r = cli::run(PolicyArgs { command }, &mut out);
    (r, String::from_utf8(out).unwrap())
}

#[test]
fn cli_validate_prints_ok_and_summary_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    write(&path, EXAMPLE);
    let (r, out) = run_cli(PolicyCommand::Validate { file: path.clone() });
    r.unwrap();
    assert!(out.starts_with("OK "), "{out}");
    assert!(out.contains("answer_synthesis -> sonnet"), "{out}");
    assert!(out.contains("canary 5% sonnet-v2"), "{out}");

    write(
        &path,
        &BASE
            .replace("percent = 10", "percent = 101")
            .replace("ngram-logreg-v2", "bert"),
    );
    let (r, _) = run_cli(PolicyCommand::Validate { file: path });
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("2 error(s)"), "{msg}");
    assert!(
        msg.contains("canary.percent") && msg.contains("\"bert\""),
        "{msg}"
    );
}

#[test]
fn cli_history_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    write(&path, BASE);
    let store = PolicyStore::open(&path, None).unwrap();
    write(&path, &with_haiku_answers(BASE));
    store.reload(ReloadSource::Sighup).unwrap();
    let location = || Location {
        file: path.clone(),
        audit_dir: None,
    };

    let (r, out) = run_cli(PolicyCommand::Rollback {
        version: None,
        location: location(),
    });
    r.unwrap();
    assert!(
        out.contains("restored v1") && out.contains("as v3"),
        "{out}"
    );

    let (r, out) = run_cli(PolicyCommand::History {
        location: location(),
        json: false,
    });
    r.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].contains("startup"), "{out}");
    assert!(
        lines[2].contains("sighup") && lines[2].contains("summarization"),
        "{out}"
    );
    assert!(
        lines[3].contains("cli_rollback") && lines[3].contains("restores v1"),
        "{out}"
    );
    let sha = store::sha256_hex(BASE);
    assert!(lines[1].contains(&sha[..12]), "{out}");

    let (r, out) = run_cli(PolicyCommand::History {
        location: location(),
        json: true,
    });
    r.unwrap();
    assert_eq!(out.lines().count(), 3);
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["sha256"].is_string() && v["version"].is_u64() && v["at"].is_string());
    }
}

// ---- through the running server -------------------------------------------------------------

mod common;

/// `[policy] file` in the server's config: shown and reloaded over the admin routes, refused when
/// invalid (the active version stays), and picked up by the file watch when edited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_reloads_and_watches_its_policy() {
    use common::{http, start_with};
    use mangaassist::config::PolicySettings;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    let example = std::fs::read_to_string("policy.example.toml").unwrap();
    std::fs::write(&file, &example).unwrap();
    let settings = PolicySettings {
        file: Some(file.clone()),
        debounce: Duration::from_millis(50),
        ..PolicySettings::default()
    };
    let server = start_with(move |c| c.policy = settings).await;

    let (status, body) = http(&server, "GET", "/admin/policy", "").await;
    assert_eq!(status, 200, "{body}");
    let active: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(active["version"], 1, "{body}");

    // An invalid file is refused with its errors named; version 1 stays active.
    std::fs::write(&file, example.replace("-v1:0", "")).unwrap();
    let (status, body) = http(&server, "POST", "/admin/policy/reload", "").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("pinned") || body.contains("version"),
        "{body}"
    );
    let (_, body) = http(&server, "GET", "/admin/policy", "").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["version"],
        1
    );

    // A valid edit is picked up by the file watch, without any request.
    std::fs::write(&file, format!("{example}\n# edited\n")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http(&server, "GET", "/admin/policy", "").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["version"] == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edit was never activated: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Without `[policy] file` the routes say so instead of inventing one.
#[tokio::test]
async fn without_a_policy_the_routes_answer_404() {
    let server = common::start().await;
    let (status, body) = common::http(&server, "POST", "/admin/policy/reload", "").await;
    assert_eq!(status, 404, "{body}");
}
