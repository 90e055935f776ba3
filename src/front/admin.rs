//! Admin routes, answered only to clients on the loopback interface that present an admin
//! token (`Authorization: Bearer <token>`, minted with `mangaassist token --admin`; a user's
//! token is refused). A refusal is a JSON `{"error": ...}` naming what is wrong: 403 off
//! loopback, 401 for a missing, forged, expired or user's token.
//!
//! - `GET /admin/chaos`: the installed mailbox chaos rules.
//! - `POST /admin/chaos`: replace them with `{"rules": ["enricher=4000ms", ...]}` (or a bare JSON
//!   array of rule strings), in the syntax of `serve --chaos`.
//! - `DELETE /admin/chaos`: remove them all.
//! - `GET /admin/policy`: the active model-tier policy version (404 without `[policy] file`).
//! - `POST /admin/erase`: erase a user, `{"user_id": "..."}` (docs/memory.md).
//! - `POST /admin/policy/reload`: re-read and validate the policy file; an invalid file is
//!   refused (422, every error listed) and the active policy stays.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mangaassist_actors::chaos::{ChaosRule, parse_rule};

use super::FrontState;

/// The admin routes, behind the loopback and admin-token checks.
pub fn routes(state: &FrontState) -> Router<FrontState> {
    Router::new()
        .route("/admin/chaos", get(list).post(replace).delete(clear))
        .route("/admin/policy", get(policy_show))
        .route("/admin/policy/reload", axum::routing::post(policy_reload))
        .route("/admin/erase", axum::routing::post(erase))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_only))
}

/// Refuses every admin request whose peer is not on the loopback interface, or that does not
/// carry an admin token this server signed.
async fn admin_only(
    State(state): State<FrontState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(refusal) = refuse_remote(peer) {
        return refusal;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let verdict = match bearer {
        None => Err(
            "admin routes need `Authorization: Bearer <admin token>`; mint one with \
             `mangaassist token --admin`"
                .to_owned(),
        ),
        Some(token) => state
            .auth
            .verify_admin(token.trim())
            .map_err(|e| e.to_string()),
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(why) => {
            tracing::warn!(%peer, path = %request.uri().path(), reason = %why, "admin request refused");
            json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": why }),
            )
        }
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn refuse_remote(peer: SocketAddr) -> Option<Response> {
    (!peer.ip().is_loopback()).then(|| {
        json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "admin routes answer only on loopback"}),
        )
    })
}

fn no_policy() -> Response {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({"error": "no [policy] file is configured"}),
    )
}

async fn policy_show(State(state): State<FrontState>) -> Response {
    match &state.policy {
        Some(store) => json(
            StatusCode::OK,
            serde_json::to_value(&*store.current()).unwrap_or_default(),
        ),
        None => no_policy(),
    }
}

async fn policy_reload(State(state): State<FrontState>) -> Response {
    let Some(store) = state.policy.clone() else {
        return no_policy();
    };
    match tokio::task::spawn_blocking(move || store.reload(crate::policy::ReloadSource::Admin))
        .await
    {
        Ok(Ok(a)) => json(StatusCode::OK, serde_json::to_value(&a).unwrap_or_default()),
        Ok(Err(e)) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": e.to_string()}),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}

/// `POST /admin/erase` with `{"user_id": "..."}`: erases the user (see `crate::erasure`) and
/// answers with the audit record.
async fn erase(State(state): State<FrontState>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        user_id: mangaassist_protocols::UserId,
    }
    let user = match serde_json::from_slice::<Body>(&body) {
        Ok(b) => b.user_id,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("expected {{\"user_id\": \"...\"}}: {e}")}),
            );
        }
    };
    let open = crate::erasure::OpenSessions {
        registry: &state.registry,
        erasures: &state.pipeline.erasures,
        spare: None,
    };
    match crate::erasure::erase_user(
        &user,
        crate::erasure::Requester::Admin,
        state.pipeline.transcripts.as_ref(),
        Some(open),
        &state.data_dir,
    )
    .await
    {
        Ok(report) => json(
            StatusCode::OK,
            serde_json::to_value(&report).unwrap_or_default(),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}

fn rules_json(rules: &[ChaosRule]) -> serde_json::Value {
    serde_json::json!({"rules": rules.iter().map(ToString::to_string).collect::<Vec<_>>()})
}

async fn list(State(state): State<FrontState>) -> Response {
    json(StatusCode::OK, rules_json(&state.pipeline.chaos.rules()))
}

async fn clear(State(state): State<FrontState>) -> Response {
    state.pipeline.chaos.clear();
    tracing::warn!("chaos rules cleared");
    json(StatusCode::OK, rules_json(&[]))
}

/// Parses `{"rules": [..]}` or `[..]` into rules; the error names what is wrong.
pub fn parse_rules_body(body: &[u8]) -> Result<Vec<ChaosRule>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let list = match &value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(o) => match o.get("rules") {
            Some(serde_json::Value::Array(items)) => items,
            _ => return Err("expected {\"rules\": [\"ACTOR=DELAY\", ...]}".into()),
        },
        _ => return Err("expected {\"rules\": [\"ACTOR=DELAY\", ...]}".into()),
    };
    list.iter()
        .map(|item| {
            let text = item
                .as_str()
                .ok_or_else(|| format!("rule {item} is not a string"))?;
            parse_rule(text).map_err(|e| e.to_string())
        })
        .collect()
}

async fn replace(State(state): State<FrontState>, body: Bytes) -> Response {
    match parse_rules_body(&body) {
        Ok(rules) => {
            let shown = rules_json(&rules);
            tracing::warn!(rules = %shown, "chaos rules installed");
            state.pipeline.chaos.set(rules);
            json(StatusCode::OK, shown)
        }
        Err(message) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": message}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_or_say_why_not() {
        assert_eq!(
            parse_rules_body(br#"{"rules":["enricher=4s"]}"#)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            parse_rules_body(br#"["enricher=4s","retriever=1ms..2ms@0.5"]"#)
                .unwrap()
                .len(),
            2
        );
        assert!(parse_rules_body(b"nope").unwrap_err().contains("not JSON"));
        assert!(
            parse_rules_body(br#"{"rule":[]}"#)
                .unwrap_err()
                .contains("expected")
        );
        assert!(
            parse_rules_body(br#"["nobody=4s"]"#)
                .unwrap_err()
                .contains("unknown actor")
        );
    }

    #[test]
    fn only_loopback_peers_are_served() {
        assert!(refuse_remote("127.0.0.1:5000".parse().unwrap()).is_none());
        assert!(refuse_remote("[::1]:5000".parse().unwrap()).is_none());
        assert!(refuse_remote("192.0.2.7:5000".parse().unwrap()).is_some());
    }
}
