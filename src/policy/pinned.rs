//! What "pinned" means, per backend. A pinned id names one immutable model build, so the same
//! policy file means the same model tomorrow. Floating names (`latest`, family aliases, ids that
//! a provider re-points) are rejected. docs/policy.md states the rules with examples.
//!
//! - `bedrock`: `[region.]provider.model-...-vN` or `-vN:M` (optionally `:CTXk`), e.g.
//!   `anthropic.claude-3-haiku-20240307-v1:0`, `us.anthropic.claude-3-5-sonnet-20240620-v1:0`,
//!   `amazon.titan-text-express-v1`. A foundation-model or inference-profile ARN is checked by its
//!   trailing id; other ARNs (application profiles, provisioned models) hide the model version
//!   and are rejected. No `latest` segment anywhere.
//! - `openai`: an explicit `name:tag` whose tag is not `latest` (Ollama, vLLM, `ft:` fine-tunes),
//!   or a dated snapshot ending `-YYYY-MM-DD`, `-YYYYMMDD` or `-MMDD` (`gpt-4o-2024-08-06`,
//!   `gpt-4-0613`). A bare family name (`gpt-4o`) is an alias OpenAI re-points; `*-latest` and
//!   `*:latest` float by name.
//! - `simulated`: exactly [`SIMULATED_ID`].
//! - `local_classifier`: one of [`LOCAL_CLASSIFIER_IDS`].

use crate::policy::Backend;

/// The simulated model's only id (what `backends::simulated` reports).
pub const SIMULATED_ID: &str = "mangaassist-simulated-v1";

/// The in-process classifiers: the n-gram logistic regression and the keyword rules.
pub const LOCAL_CLASSIFIER_IDS: [&str; 2] = ["ngram-logreg-v2", "keyword-rules-v1"];

/// Why an id is not pinned. The message says what would be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Empty string.
    #[error("empty model id")]
    Empty,
    /// `latest` anywhere in the id.
    #[error("`latest` is not a pinned version")]
    Latest,
    /// A name the provider re-points (family alias, ARN without a version).
    #[error("alias, not a pinned id: {0}")]
    Alias(String),
    /// The right shape but no version.
    #[error("unversioned: {0}")]
    Unversioned(String),
    /// Not one of the fixed ids of a built-in backend.
    #[error("not a {backend} id; expected {expected}")]
    NotFixed {
        /// The backend.
        backend: Backend,
        /// The accepted ids.
        expected: String,
    },
    /// Characters no provider uses.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Accepts `id` if it is pinned for `backend`.
pub fn check(backend: Backend, id: &str) -> Result<(), PinError> {
    if id.trim().is_empty() {
        return Err(PinError::Empty);
    }
    match backend {
        Backend::Bedrock => check_bedrock(id),
        Backend::Openai => check_openai(id),
        Backend::Simulated => fixed(backend, id, &[SIMULATED_ID]),
        Backend::LocalClassifier => fixed(backend, id, &LOCAL_CLASSIFIER_IDS),
    }
}

fn fixed(backend: Backend, id: &str, allowed: &[&str]) -> Result<(), PinError> {
    if allowed.contains(&id) {
        Ok(())
    } else {
        Err(PinError::NotFixed {
            backend,
            expected: allowed.join(" or "),
        })
    }
}

fn has_latest_segment(id: &str) -> bool {
    id.to_ascii_lowercase()
        .split(['.', '-', ':', '/', '_'])
        .any(|seg| seg == "latest")
}

fn check_bedrock(id: &str) -> Result<(), PinError> {
    if has_latest_segment(id) {
        return Err(PinError::Latest);
    }
    if let Some(rest) = id.strip_prefix("arn:") {
        // arn:PARTITION:bedrock:REGION:ACCOUNT:TYPE/ID
        let resource = rest.splitn(5, ':').nth(4).unwrap_or("");
        return match resource.split_once('/') {
            Some(("foundation-model" | "inference-profile", model)) => check_bedrock_id(model),
            Some((kind, _)) => Err(PinError::Alias(format!(
                "a {kind} ARN does not show which model version it runs; use the versioned model id"
            ))),
            None => Err(PinError::Malformed(
                "ARN without a resource type".to_string(),
            )),
        };
    }
    check_bedrock_id(id)
}

fn check_bedrock_id(id: &str) -> Result<(), PinError> {
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || ".-:".contains(*c)))
    {
        return Err(PinError::Malformed(format!(
            "character {c:?}; Bedrock ids are lowercase letters, digits, '.', '-', ':'"
        )));
    }
    if !id.contains('.') {
        return Err(PinError::Alias(
            "no provider prefix; write provider.model-...-vN, e.g. \
             anthropic.claude-3-haiku-20240307-v1:0"
                .to_string(),
        ));
    }
    // Strip an optional context-window suffix (`:48k`, `:200k`), then the `:M` minor.
    let mut rest = id;
    if let Some((head, ctx)) = rest.rsplit_once(':')
        && ctx.len() > 1
        && ctx.ends_with('k')
        && ctx[..ctx.len() - 1].bytes().all(|b| b.is_ascii_digit())
    {
        rest = head;
    }
    if let Some((head, minor)) = rest.rsplit_once(':') {
        if minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PinError::Unversioned(format!(
                "`:{minor}` is not a numeric revision; end with -vN or -vN:M"
            )));
        }
        rest = head;
    }
    let major = rest.rsplit_once("-v").map(|(_, v)| v).unwrap_or("");
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PinError::Unversioned(
            "no -vN or -vN:M version suffix, e.g. anthropic.claude-3-haiku-20240307-v1:0"
                .to_string(),
        ));
    }
    Ok(())
}

fn is_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

fn ends_with_snapshot(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    let n = parts.len();
    // -YYYY-MM-DD
    if n >= 4
        && is_digits(parts[n - 3], 4)
        && is_digits(parts[n - 2], 2)
        && is_digits(parts[n - 1], 2)
    {
        return true;
    }
    // -YYYYMMDD or -MMDD
    n >= 2 && (is_digits(parts[n - 1], 8) || is_digits(parts[n - 1], 4))
}

fn check_openai(id: &str) -> Result<(), PinError> {
    if has_latest_segment(id) {
        return Err(PinError::Latest);
    }
    if id.chars().any(char::is_whitespace) {
        return Err(PinError::Malformed("whitespace in id".to_string()));
    }
    if let Some((_, tag)) = id.rsplit_once(':') {
        if tag.is_empty() {
            return Err(PinError::Unversioned(
                "empty tag after ':'; name the tag, e.g. llama3.1:8b-instruct-q4_K_M".to_string(),
            ));
        }
        return Ok(());
    }
    if ends_with_snapshot(id) {
        Ok(())
    } else {
        Err(PinError::Alias(
            "a bare model name is re-pointed by the provider (and means :latest on Ollama); \
             pin a dated snapshot such as gpt-4o-2024-08-06 or an explicit name:tag"
                .to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bedrock_ids() {
        for ok in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "anthropic.claude-3-opus-20240229-v1:0",
            "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
            "amazon.titan-text-express-v1",
            "anthropic.claude-3-haiku-20240307-v1:0:48k",
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
        ] {
            assert_eq!(check(Backend::Bedrock, ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check(Backend::Bedrock, "anthropic.claude-latest"),
            Err(PinError::Latest)
        );
        assert!(matches!(
            check(Backend::Bedrock, "claude-3-haiku"),
            Err(PinError::Alias(_))
        ));
        assert!(matches!(
            check(Backend::Bedrock, "anthropic.claude-3-haiku-20240307"),
            Err(PinError::Unversioned(_))
        ));
        assert!(matches!(
            check(Backend::Bedrock, "anthropic.claude-3-haiku-20240307-v1:x"),
            Err(PinError::Unversioned(_))
        ));
        assert!(matches!(
            check(
                Backend::Bedrock,
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
            ),
            Err(PinError::Alias(_))
        ));
        assert!(matches!(
            check(Backend::Bedrock, "Anthropic.Claude-v2"),
            Err(PinError::Malformed(_))
        ));
    }

    #[test]
    fn openai_ids() {
        for ok in [
            "gpt-4o-2024-08-06",
            "gpt-4-0613",
            "gpt-3.5-turbo-0125",
            "llama3.1:8b",
            "ft:gpt-4o-mini-2024-07-18:acme::abc123",
        ] {
            assert_eq!(check(Backend::Openai, ok), Ok(()), "{ok}");
        }
        for latest in ["latest", "llama3:latest", "chatgpt-4o-latest"] {
            assert_eq!(check(Backend::Openai, latest), Err(PinError::Latest));
        }
        assert!(matches!(
            check(Backend::Openai, "gpt-4o"),
            Err(PinError::Alias(_))
        ));
        assert!(matches!(
            check(Backend::Openai, "llama3:"),
            Err(PinError::Unversioned(_))
        ));
    }

    #[test]
    fn fixed_ids() {
        assert_eq!(check(Backend::Simulated, SIMULATED_ID), Ok(()));
        assert!(check(Backend::Simulated, "sim").is_err());
        assert_eq!(check(Backend::LocalClassifier, "ngram-logreg-v2"), Ok(()));
        assert!(check(Backend::LocalClassifier, "bert").is_err());
        assert_eq!(check(Backend::Openai, "  "), Err(PinError::Empty));
    }
}
