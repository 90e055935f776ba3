//! Who a connection is: bearer tokens signed with the server's secret.
//!
//! A token is a JSON Web Token signed with HMAC-SHA256 (`HS256`): the claims are the user id
//! (`sub`), when it was issued (`iat`) and when it expires (`exp`), in Unix seconds. The format
//! is the standard one so that the front an embedder runs (in any language) can mint tokens
//! with its own JWT library and the same secret. `mangaassist token --user ID` mints one here.
//!
//! Every connection presents its token in `hello`; the user id of everything the connection
//! does (its session, its transcript, `erase_user`) is the token's subject and nothing the
//! client says otherwise. A missing, forged, expired or malformed token is answered with
//! `error {code: unauthorized}` and the connection closes.
//!
//! The secret comes from, in order: the environment variable [`SECRET_ENV`], `[auth] secret` in
//! the config file, or a development secret generated on first use and kept (mode 0600) in
//! `{data.dir}/auth/dev-secret`, so tokens survive a restart and `mangaassist chat` on the same
//! machine can mint its own. A deployment sets its own secret; the development one is announced
//! at start.
//!
//! Neither the secret nor a token is ever logged: [`Secret`] and the protocol's `BearerToken`
//! print only their length.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mangaassist_protocols::UserId;
use mangaassist_protocols::ids::IdError;
use serde::{Deserialize, Serialize};

/// The environment variable that holds the signing secret; it wins over `[auth] secret`.
pub const SECRET_ENV: &str = "MANGAASSIST_AUTH_SECRET";

/// The shortest secret accepted, in bytes: HS256 wants at least its hash size.
pub const MIN_SECRET_BYTES: usize = 32;

/// Clock skew tolerated between the minting front and this server when checking `exp`.
pub const LEEWAY_SECS: u64 = 30;

/// The user `mangaassist chat` and the start banner mint a token for by default.
pub const DEV_USER: &str = "dev";

/// A signing secret. Its `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Checks the length (at least [`MIN_SECRET_BYTES`]).
    pub fn new(secret: impl Into<String>) -> Result<Self, String> {
        let secret = secret.into();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "is {} bytes; a signing secret needs at least {MIN_SECRET_BYTES} (e.g. the output \
                 of `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        Ok(Self(secret))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// Where the signing secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `[auth] secret` in the config file.
    Config,
    /// The [`SECRET_ENV`] environment variable.
    Env,
    /// The development secret in this file, generated on first use.
    DevFile(PathBuf),
}

/// A configured secret and where it came from (`[auth]` after [`crate::config::Config::load`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredSecret {
    /// The secret.
    pub secret: Secret,
    /// [`SecretSource::Config`] or [`SecretSource::Env`].
    pub source: SecretSource,
}

/// The subject of admin tokens.
pub const ADMIN_SUBJECT: &str = "admin";

/// The claims of a token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user id ([`ADMIN_SUBJECT`] in an admin token).
    sub: String,
    /// Issued at, Unix seconds.
    iat: u64,
    /// Expires at, Unix seconds.
    exp: u64,
    /// `admin` in an admin token, absent in a user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
}

/// What a token is for, when it is not a user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Role {
    /// The admin routes (`/admin/*`), and nothing else.
    Admin,
}

/// Why a token was refused. The message is what the client reads in its `unauthorized` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `hello` carried no token.
    #[error(
        "hello needs a `token`: a JWT signed with the server's secret (mint one with \
         `mangaassist token --user ID`)"
    )]
    Missing,
    /// The token's `exp` is past.
    #[error("the token expired; mint a new one")]
    Expired,
    /// The signature does not verify with this server's secret.
    #[error("the token's signature does not verify with this server's secret")]
    Forged,
    /// Not a JWT, another algorithm than HS256, or claims missing or ill-typed.
    #[error("the token is not a valid HS256 JWT with `sub` and `exp`: {0}")]
    Malformed(String),
    /// `sub` is not a valid user id.
    #[error("the token's subject is not a valid user id: {0}")]
    BadSubject(IdError),
    /// An admin token in `hello`: it opens the admin routes, not sessions.
    #[error("an admin token does not open sessions; present a user's token")]
    AdminToken,
    /// A user's token on an admin route.
    #[error(
        "a user's token does not open the admin routes; mint an admin token with \
         `mangaassist token --admin`"
    )]
    NotAdmin,
}

/// Why the authenticator could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The development secret file could not be read or written.
    #[error("development secret {}: {source}", path.display())]
    DevFile {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The development secret file holds something that is not a usable secret.
    #[error("development secret {} {message}; delete it to generate a new one", path.display())]
    BadDevFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Mints and checks tokens with one secret.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    source: SecretSource,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator signing with `secret`.
    pub fn new(secret: &Secret, source: SecretSource) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let key = secret.0.as_bytes();
        let (Ok(encoding), Ok(decoding)) =
            (EncodingKey::from_secret(key), DecodingKey::from_secret(key))
        else {
            unreachable!("HMAC keys refuse only an empty secret, and a Secret is 32 bytes or more")
        };
        Self {
            encoding,
            decoding,
            validation,
            source,
        }
    }

    /// The configured secret, or else the development secret under `data_dir` (generated and
    /// saved with mode 0600 if there is none yet).
    pub fn resolve(
        configured: Option<&ConfiguredSecret>,
        data_dir: &Path,
    ) -> Result<Self, SetupError> {
        if let Some(c) = configured {
            return Ok(Self::new(&c.secret, c.source.clone()));
        }
        let path = dev_secret_path(data_dir);
        let secret = load_or_create_dev_secret(&path)?;
        Ok(Self::new(&secret, SecretSource::DevFile(path)))
    }

    /// Where the secret came from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// A token for `user`, valid for `ttl` from now.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> String {
        let now = unix_secs();
        self.mint_at(user, now, now.saturating_add(ttl.as_secs()))
    }

    /// A token for `user` issued at `iat` and expiring at `exp` (Unix seconds); tests use it
    /// for tokens that are already expired.
    pub fn mint_at(&self, user: &UserId, iat: u64, exp: u64) -> String {
        self.sign(&Claims {
            sub: user.as_str().to_owned(),
            iat,
            exp,
            role: None,
        })
    }

    /// An admin token, valid for `ttl` from now: it opens the admin routes (`/admin/*`, on
    /// loopback) and no session.
    pub fn mint_admin(&self, ttl: Duration) -> String {
        let now = unix_secs();
        self.sign(&Claims {
            sub: ADMIN_SUBJECT.to_owned(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            role: Some(Role::Admin),
        })
    }

    fn sign(&self, claims: &Claims) -> String {
        // HS256 over a serializable struct: signing with an HMAC key cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    fn claims(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Forged,
                _ => AuthError::Malformed(e.to_string()),
            })
    }

    /// The user a token names, if this server signed it, it has not expired, and it is a
    /// user's (not an admin token).
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let claims = self.claims(token)?;
        if claims.role.is_some() {
            return Err(AuthError::AdminToken);
        }
        UserId::parse(&claims.sub).map_err(AuthError::BadSubject)
    }

    /// Whether a token is an admin token this server signed that has not expired.
    pub fn verify_admin(&self, token: &str) -> Result<(), AuthError> {
        match self.claims(token)?.role {
            Some(Role::Admin) => Ok(()),
            None => Err(AuthError::NotAdmin),
        }
    }
}

/// The development secret's file under a data directory.
pub fn dev_secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join("auth").join("dev-secret")
}

/// Reads the development secret, or creates it: 32 random bytes, hex, mode 0600.
fn load_or_create_dev_secret(path: &Path) -> Result<Secret, SetupError> {
    let io = |source| SetupError::DevFile {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return Secret::new(text.trim()).map_err(|message| SetupError::BadDevFile {
                path: path.to_owned(),
                message,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let created = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    match created {
        Ok(mut f) => {
            f.write_all(hex.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Secret::new(hex).map_err(|message| SetupError::BadDevFile {
                path: path.to_owned(),
                message,
            })
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_dev_secret(path),
        Err(e) => Err(io(e)),
    }
}

/// Parses a token lifetime: a number and a unit, `s`, `m`, `h` or `d` (`90s`, `15m`, `1h`,
/// `7d`), at most 366 days.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a lifetime like 90s, 15m, 1h or 7d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d (e.g. 1h)")),
    };
    let secs = n.saturating_mul(unit_secs);
    if secs == 0 || secs > 366 * 86_400 {
        return Err(format!("`{s}` must be more than 0 and at most 366d"));
    }
    Ok(Duration::from_secs(secs))
}

fn unix_secs() -> u64 {
    mangaassist_protocols::unix_ms() / 1000
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn auth(secret: &str) -> Authenticator {
        Authenticator::new(&Secret::new(secret).unwrap(), SecretSource::Config)
    }

    const A: &str = "an-example-secret-of-at-least-32-bytes";
    const B: &str = "another-example-secret-32-bytes-long!!";

    #[test]
    fn a_minted_token_names_its_user() {
        let a = auth(A);
        let user = UserId::parse("alice").unwrap();
        let token = a.mint(&user, Duration::from_secs(60));
        assert_eq!(a.verify(&token), Ok(user));
    }

    #[test]
    fn forged_expired_and_malformed_tokens_are_refused_for_what_they_are() {
        let a = auth(A);
        let user = UserId::parse("alice").unwrap();
        let other = auth(B).mint(&user, Duration::from_secs(60));
        assert_eq!(a.verify(&other), Err(AuthError::Forged));
        let now = unix_secs();
        let expired = a.mint_at(&user, now - 3_600, now - LEEWAY_SECS - 5);
        assert_eq!(a.verify(&expired), Err(AuthError::Expired));
        // Within the leeway it still passes: clocks differ a little.
        let just = a.mint_at(&user, now - 3_600, now - 1);
        assert!(a.verify(&just).is_ok());
        assert!(matches!(
            a.verify("not-a-jwt"),
            Err(AuthError::Malformed(_))
        ));
        // A changed payload under the old signature is a forgery.
        let good = a.mint(&user, Duration::from_secs(60));
        let mut parts: Vec<&str> = good.split('.').collect();
        let mallory = a.mint(&UserId::parse("mallory").unwrap(), Duration::from_secs(60));
        let mallory_claims = mallory.split('.').nth(1).unwrap();
        parts[1] = mallory_claims;
        assert_eq!(a.verify(&parts.join(".")), Err(AuthError::Forged));
        // Other algorithms are not accepted, whatever the header says.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                sub: "alice".into(),
                iat: now,
                exp: now + 60,
                role: None,
            },
            &EncodingKey::from_secret(A.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(matches!(a.verify(&hs512), Err(AuthError::Malformed(_))));
        // A subject that is not a user id.
        let bad = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "has space".into(),
                iat: now,
                exp: now + 60,
                role: None,
            },
            &EncodingKey::from_secret(A.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(matches!(a.verify(&bad), Err(AuthError::BadSubject(_))));
    }

    #[test]
    fn admin_tokens_open_the_admin_routes_and_no_session() {
        let a = Authenticator::new(&Secret::new(A).unwrap(), SecretSource::Config);
        let admin = a.mint_admin(Duration::from_secs(60));
        assert_eq!(a.verify_admin(&admin), Ok(()));
        assert_eq!(a.verify(&admin), Err(AuthError::AdminToken));
        // The control: a user's token, even one whose subject is `admin`, is not an admin token.
        let user = a.mint(
            &UserId::parse(ADMIN_SUBJECT).unwrap(),
            Duration::from_secs(60),
        );
        assert_eq!(a.verify_admin(&user), Err(AuthError::NotAdmin));
        assert!(a.verify(&user).is_ok());
        // Another server's admin token is a forgery here.
        let b = Authenticator::new(
            &Secret::new("another-secret-of-at-least-thirty-two-bytes").unwrap(),
            SecretSource::Config,
        );
        assert_eq!(
            a.verify_admin(&b.mint_admin(Duration::from_secs(60))),
            Err(AuthError::Forged)
        );
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(Secret::new("short").is_err());
        let s = Secret::new(A).unwrap();
        assert!(!format!("{s:?}").contains("example"));
    }

    #[test]
    fn the_dev_secret_is_created_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = Authenticator::resolve(None, dir.path()).unwrap();
        let path = dev_secret_path(dir.path());
        assert_eq!(first.source(), &SecretSource::DevFile(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let user = UserId::parse("dev").unwrap();
        let token = first.mint(&user, Duration::from_secs(60));
        let second = Authenticator::resolve(None, dir.path()).unwrap();
        assert_eq!(
            second.verify(&token),
            Ok(user),
            "the same secret after a restart"
        );
        std::fs::write(&path, "short").unwrap();
        let err = Authenticator::resolve(None, dir.path()).unwrap_err();
        assert!(err.to_string().contains("delete it"), "{err}");
    }

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "1", "1w", "0s", "400d", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
