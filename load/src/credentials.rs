//! What each load session presents in `hello`.
//!
//! With the server's secret (`--auth-secret`, or `MANGAASSIST_AUTH_SECRET` as the server reads
//! it), every session signs its own token for its own user, `load-{index}`: a run of 10,000
//! sessions is 10,000 users, as real traffic is, and the server's per-user session limit
//! (`server.max_sessions_per_user`) applies to each as it would to a person. With only a token
//! (`--token`), every session is that token's one user.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// How long a minted token is valid: longer than any run.
const MINTED_TTL: Duration = Duration::from_secs(86_400);

/// What the sessions present in `hello`.
#[derive(Clone, Default)]
pub enum Credentials {
    /// Nothing: a server with authentication refuses every session.
    #[default]
    None,
    /// One token for every session, so one user.
    Shared(Arc<str>),
    /// Each session signs a token for user `load-{index}` with the server's HMAC secret.
    PerSession(Arc<EncodingKey>),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
}

impl Credentials {
    /// Per-session tokens when there is a secret, else the shared token, else none. Fails on
    /// an empty secret, which no HMAC key can be.
    pub fn new(token: Option<String>, secret: Option<String>) -> anyhow::Result<Self> {
        Ok(match (secret, token) {
            (Some(secret), _) => {
                let key = EncodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| anyhow::anyhow!("--auth-secret: {e}"))?;
                Self::PerSession(Arc::new(key))
            }
            (None, Some(token)) => Self::Shared(token.into()),
            (None, None) => Self::None,
        })
    }

    /// The token session `index` presents.
    pub fn token(&self, index: u64) -> Option<Cow<'_, str>> {
        match self {
            Self::None => None,
            Self::Shared(token) => Some(Cow::Borrowed(token)),
            Self::PerSession(key) => sign(key, &format!("load-{index}"), None).map(Cow::Owned),
        }
    }

    /// An admin token (for `/admin/chaos`), when the secret is known.
    pub fn admin_token(&self) -> Option<String> {
        match self {
            Self::PerSession(key) => sign(key, "admin", Some("admin")),
            Self::None | Self::Shared(_) => None,
        }
    }
}

/// A token for `sub` (with `role`, for an admin token), valid for [`MINTED_TTL`].
fn sign(key: &EncodingKey, sub: &str, role: Option<&str>) -> Option<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub,
        iat: now,
        exp: now + MINTED_TTL.as_secs(),
        role,
    };
    // HS256 over a serializable struct: signing with an HMAC key cannot fail.
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).ok()
}

/// Never prints a token or the secret.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "Credentials::None",
            Self::Shared(_) => "Credentials::Shared(..)",
            Self::PerSession(_) => "Credentials::PerSession(..)",
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Decoded {
        sub: String,
        exp: u64,
    }

    #[test]
    fn with_a_secret_each_session_is_its_own_user() {
        let secret = "load-test-secret-of-at-least-thirty-two-bytes";
        let creds = Credentials::new(Some("ignored".into()), Some(secret.into())).unwrap();
        let key = DecodingKey::from_secret(secret.as_bytes()).unwrap();
        let validation = Validation::new(Algorithm::HS256);
        for index in [0, 7, 9_999] {
            let token = creds.token(index).unwrap();
            let claims = jsonwebtoken::decode::<Decoded>(token.as_bytes(), &key, &validation)
                .unwrap()
                .claims;
            assert_eq!(claims.sub, format!("load-{index}"));
            assert!(claims.exp > 0);
        }
        // Signed with another secret, it does not verify.
        let other =
            Credentials::new(None, Some("another-secret-of-at-least-thirty-two-b".into())).unwrap();
        assert!(
            jsonwebtoken::decode::<Decoded>(other.token(0).unwrap().as_bytes(), &key, &validation)
                .is_err()
        );
    }

    #[test]
    fn with_a_secret_an_admin_token_says_its_role() {
        #[derive(Deserialize)]
        struct Admin {
            sub: String,
            role: String,
        }
        let secret = "load-test-secret-of-at-least-thirty-two-bytes";
        let key = DecodingKey::from_secret(secret.as_bytes()).unwrap();
        let admin = Credentials::new(None, Some(secret.into()))
            .unwrap()
            .admin_token()
            .unwrap();
        let claims = jsonwebtoken::decode::<Admin>(
            admin.as_bytes(),
            &key,
            &Validation::new(Algorithm::HS256),
        )
        .unwrap()
        .claims;
        assert_eq!(
            (claims.sub.as_str(), claims.role.as_str()),
            ("admin", "admin")
        );
        // Without the secret there is none to give, and session tokens carry no role.
        assert_eq!(
            Credentials::new(Some("tok".into()), None)
                .unwrap()
                .admin_token(),
            None
        );
        let session = Credentials::new(None, Some(secret.into())).unwrap();
        let token = session.token(1).unwrap();
        assert!(
            jsonwebtoken::decode::<Admin>(
                token.as_bytes(),
                &key,
                &Validation::new(Algorithm::HS256)
            )
            .is_err()
        );
    }

    #[test]
    fn a_shared_token_is_everyones_and_debug_shows_neither() {
        let creds = Credentials::new(Some("tok".into()), None).unwrap();
        assert_eq!(creds.token(3).as_deref(), Some("tok"));
        assert_eq!(Credentials::default().token(3), None);
        let secret =
            Credentials::new(None, Some("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t".into())).unwrap();
        assert!(Credentials::new(None, Some(String::new())).is_err());
        assert!(!format!("{creds:?} {secret:?}").contains("tok"));
        assert!(!format!("{secret:?}").contains("s3cr3t"));
    }
}
