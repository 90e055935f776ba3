//! The Redis transcript store: the [`TranscriptStore`] for a fleet of servers sharing Redis.
//!
//! Keys are namespaced by user, with the user id as a hash tag, so one user's keys live on one
//! Redis Cluster slot and can be found (and erased) together:
//!
//! ```text
//! {prefix}{alice}:sessions          SET of alice's session ids
//! {prefix}{alice}:turns:{session}   LIST of the session's turns, JSON, in append order
//! {prefix}{alice}:profile:{session} the session's profile (preferences, summary), JSON
//! {prefix}{alice}:preferences       alice's preferences across sessions, JSON
//! {prefix}owner:{session}           the session's owner (`alice`), looked up by session id alone
//! ```
//!
//! User ids cannot contain `{` or `}`, so `{alice}` never matches another user's keys (nor an
//! owner key). Every append refreshes the expiry of the keys to the inactivity TTL: Redis itself
//! deletes a session idle for longer, so [`TranscriptStore::expire_inactive`] has nothing to do
//! here. Erasing a user deletes the keys the set names (with each session's owner key) and then
//! every key matching `{prefix}{user}:*` (SCAN), so nothing of the user is left even if the set
//! missed one.
//!
//! Durability is Redis's: an append returns once Redis acknowledged the write, and survives a
//! crash of Redis as far as its persistence does (`appendonly yes` with `appendfsync everysec`
//! loses at most a second).

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface, ListInterface, SetsInterface};
use fred::types::Builder;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use futures_util::TryStreamExt;
use mangaassist_protocols::ids::{SessionId, UserId};
use mangaassist_protocols::memory::Preferences;
use mangaassist_protocols::ports::{Erased, Profile, ProfileStore, StoreError, TranscriptStore};
use mangaassist_protocols::turn::TurnRecord;

/// Delay between two attempts to reconnect, in milliseconds; attempts never stop.
const RECONNECT_DELAY_MS: u32 = 100;

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreSettings {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prepended to every key.
    pub key_prefix: String,
    /// Deadline of one operation.
    pub timeout: Duration,
    /// Sessions idle longer than this expire.
    pub ttl: Duration,
}

/// The Redis transcript store; see the module docs.
pub struct RedisTranscriptStore {
    client: Client,
    settings: RedisStoreSettings,
}

impl std::fmt::Debug for RedisTranscriptStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTranscriptStore")
            .field("url", &self.settings.url)
            .field("prefix", &self.settings.key_prefix)
            .finish()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

impl RedisTranscriptStore {
    /// Connects (waiting up to the timeout for the first connection: a transcript store that is
    /// not there is a start-up error, unlike a cache).
    pub async fn connect(settings: RedisStoreSettings) -> Result<Self, StoreError> {
        let config = RedisConfig::from_url(&settings.url).map_err(backend)?;
        // Reconnect forever (a Redis restart must not leave the store dead); a command issued
        // while reconnecting waits at most the operation timeout, then fails the turn's write.
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_constant(0, RECONNECT_DELAY_MS))
            .with_connection_config(|c| {
                c.connection_timeout = settings.timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = settings.timeout)
            .build()
            .map_err(backend)?;
        client.init().await.map_err(|e| {
            StoreError::Backend(format!(
                "cannot connect to the transcript store {}: {e}",
                settings.url
            ))
        })?;
        Ok(Self { client, settings })
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }

    fn user_tag(&self, user: &UserId) -> String {
        format!("{}{{{}}}", self.settings.key_prefix, user.as_str())
    }

    fn sessions_key(&self, user: &UserId) -> String {
        format!("{}:sessions", self.user_tag(user))
    }

    fn turns_key(&self, user: &UserId, session: &str) -> String {
        format!("{}:turns:{session}", self.user_tag(user))
    }

    fn profile_key(&self, user: &UserId, session: &str) -> String {
        format!("{}:profile:{session}", self.user_tag(user))
    }

    fn preferences_key(&self, user: &UserId) -> String {
        format!("{}:preferences", self.user_tag(user))
    }

    /// The session's owner, outside any user's tag: a lookup by session id alone. Erasure deletes
    /// it with the session (the user's session list names every one).
    fn owner_key(&self, session: &str) -> String {
        format!("{}owner:{session}", self.settings.key_prefix)
    }

    /// Lists `session` among `user`'s sessions, records its owner, and restarts the inactivity
    /// TTL of both.
    async fn touch_session(&self, user: &UserId, session: &str) -> Result<(), StoreError> {
        let _: () = self
            .client
            .set(
                self.owner_key(session),
                user.as_str(),
                Some(fred::types::Expiration::EX(self.ttl_secs())),
                None,
                false,
            )
            .await
            .map_err(backend)?;
        let sessions = self.sessions_key(user);
        let _: i64 = self
            .client
            .sadd(&sessions, session)
            .await
            .map_err(backend)?;
        let _: bool = self
            .client
            .expire(&sessions, self.ttl_secs(), None)
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.settings.ttl.as_secs().max(1)).unwrap_or(i64::MAX)
    }
}

#[async_trait]
impl ProfileStore for RedisTranscriptStore {
    async fn load_user_preferences(
        &self,
        user: &UserId,
    ) -> Result<Option<Preferences>, StoreError> {
        let raw: Option<String> = self
            .client
            .get(self.preferences_key(user))
            .await
            .map_err(backend)?;
        raw.map(|r| serde_json::from_str(&r).map_err(backend))
            .transpose()
    }

    async fn save_user_preferences(
        &self,
        user: &UserId,
        preferences: &Preferences,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(preferences).map_err(backend)?;
        let _: () = self
            .client
            .set(
                self.preferences_key(user),
                json,
                Some(fred::types::Expiration::EX(self.ttl_secs())),
                None,
                false,
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn load_profile(
        &self,
        user: &UserId,
        session: &SessionId,
    ) -> Result<Option<Profile>, StoreError> {
        let raw: Option<String> = self
            .client
            .get(self.profile_key(user, session.as_str()))
            .await
            .map_err(backend)?;
        raw.map(|r| serde_json::from_str(&r).map_err(backend))
            .transpose()
    }

    async fn save_profile(
        &self,
        user: &UserId,
        session: &SessionId,
        profile: &Profile,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(profile).map_err(backend)?;
        let ttl = self.ttl_secs();
        let _: () = self
            .client
            .set(
                self.profile_key(user, session.as_str()),
                json,
                Some(fred::types::Expiration::EX(ttl)),
                None,
                false,
            )
            .await
            .map_err(backend)?;
        self.touch_session(user, session.as_str()).await
    }
}

#[async_trait]
impl TranscriptStore for RedisTranscriptStore {
    async fn append(&self, record: TurnRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_string(&record).map_err(backend)?;
        let user = &record.user_id;
        let turns = self.turns_key(user, record.session_id.as_str());
        let _: i64 = self.client.rpush(&turns, bytes).await.map_err(backend)?;
        let _: bool = self
            .client
            .expire(&turns, self.ttl_secs(), None)
            .await
            .map_err(backend)?;
        self.touch_session(user, record.session_id.as_str()).await
    }

    async fn load_session(
        &self,
        user: &UserId,
        session: &SessionId,
    ) -> Result<Vec<TurnRecord>, StoreError> {
        let items: Vec<String> = self
            .client
            .lrange(self.turns_key(user, session.as_str()), 0, -1)
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let record: TurnRecord = serde_json::from_str(&item).map_err(backend)?;
            if record.user_id == *user {
                out.push(record);
            }
        }
        out.sort_by_key(|r| r.index);
        out.dedup_by_key(|r| r.index);
        Ok(out)
    }

    async fn session_owner(&self, session: &SessionId) -> Result<Option<UserId>, StoreError> {
        let owner: Option<String> = self
            .client
            .get(self.owner_key(session.as_str()))
            .await
            .map_err(backend)?;
        owner
            .map(|o| UserId::parse(&o).map_err(backend))
            .transpose()
    }

    async fn erase_user(&self, user: &UserId) -> Result<Erased, StoreError> {
        let mut erased = Erased::default();
        let sessions: Vec<String> = self
            .client
            .smembers(self.sessions_key(user))
            .await
            .map_err(backend)?;
        for session in &sessions {
            let key = self.turns_key(user, session);
            let turns: u64 = self.client.llen(&key).await.map_err(backend)?;
            let deleted: u64 = self.client.del(&key).await.map_err(backend)?;
            erased.sessions += deleted;
            erased.turns += turns;
            let profiles: u64 = self
                .client
                .del(self.profile_key(user, session))
                .await
                .map_err(backend)?;
            erased.profiles += profiles;
            // The owner key, unless the session id has since been another user's (it cannot be
            // reopened by another while this one's turns exist, but the key may have expired).
            let owner = self.owner_key(session);
            let named: Option<String> = self.client.get(&owner).await.map_err(backend)?;
            if named.as_deref() == Some(user.as_str()) {
                let _: u64 = self.client.del(&owner).await.map_err(backend)?;
            }
        }
        erased.user_preferences = self
            .client
            .del(self.preferences_key(user))
            .await
            .map_err(backend)?;
        // Whatever else carries the user's tag (a key the set missed).
        let pattern = format!("{}:*", self.user_tag(user));
        let stray: Vec<fred::types::Key> = self
            .client
            .scan_buffered(pattern, Some(100), None)
            .try_collect()
            .await
            .map_err(backend)?;
        for key in stray {
            let _: u64 = self.client.del(key).await.map_err(backend)?;
        }
        Ok(erased)
    }

    async fn expire_inactive(&self, _idle: Duration) -> Result<Erased, StoreError> {
        // Redis expires idle sessions itself (every append sets the keys' TTL).
        Ok(Erased::default())
    }
}
