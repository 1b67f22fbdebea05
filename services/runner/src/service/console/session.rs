//! Console sessions. A session id is 32 random bytes sent once, in the `Set-Cookie` of the
//! sign-in; the table keeps only its SHA-256, so neither a dump of the process's memory nor of
//! the table holds a cookie that works.
//!
//! Everything secret about a session is derived from the cookie, so the table holds nothing
//! that could act for the person:
//! - the CSRF token, which every write made with the cookie must echo in `X-CSRF-Token`, is
//!   an HMAC of a fixed label keyed by the cookie;
//! - a single sign-on's ID token (the hint of the provider's logout) is sealed with AES-256-GCM
//!   under a key derived from the cookie the same way.
//!
//! The table is this process's memory on a single runner (a restart signs everyone out), or
//! the NATS KV bucket `QUENCH_CONSOLE` in cluster mode, so that every runner knows every
//! session: a page served by any runner, a request forwarded between runners, and a failover
//! all keep the person signed in, and a sign-out through any runner ends the session on all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, stream};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Role;

/// The cookie's name. The `__Host-` prefix (only with `Secure`) binds it to this origin and
/// path `/`; on a loopback listener without TLS the plain name is used.
pub(crate) const COOKIE: &str = "quench_session";
pub(crate) const HOST_COOKIE: &str = "__Host-quench_session";

/// The most sessions held; signing in past it ends the one closest to its end (in the
/// shared table: the oldest).
const MAX_SESSIONS: usize = 10_000;

/// The bucket of the sessions shared by a cluster's runners.
pub(crate) const BUCKET: &str = "QUENCH_CONSOLE";

/// The longest session `[console] session_ttl` allows: the shared table's `max_age`.
const LONGEST: Duration = Duration::from_secs(30 * 24 * 3600);

/// A stored session is at most this large (an ID token is a few KiB at most).
const MAX_RECORD: i32 = 16 * 1024;

const CSRF_LABEL: &[u8] = b"quench console csrf v1";
const ID_TOKEN_LABEL: &[u8] = b"quench console id_token v1";

/// How a person signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Method {
    Token,
    Oidc,
}

impl Method {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Token => "token",
            Method::Oidc => "oidc",
        }
    }
}

/// A signed-in person.
#[derive(Clone)]
pub(crate) struct Session {
    /// Who: a verified email (single sign-on) or an API token's name (token sign-in).
    pub(crate) person: String,
    pub(crate) role: Role,
    pub(crate) method: Method,
    /// Echoed by the page in `X-CSRF-Token` on every write.
    pub(crate) csrf: String,
    /// With single sign-on: the ID token, the hint of the provider's logout (never shown or
    /// logged, and stored only sealed).
    pub(crate) id_token: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("person", &self.person)
            .field("role", &self.role)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub(crate) fn csrf_matches(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// What the table keeps of a session: nothing that acts for the person without the cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    person: String,
    role: Role,
    method: Method,
    /// Milliseconds since the Unix epoch.
    expires: u64,
    /// The ID token sealed under a key derived from the cookie (nonce, ciphertext and tag,
    /// base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

/// The shared table cannot be read or written (NATS unreachable).
#[derive(Debug, thiserror::Error)]
#[error("console sessions cannot be reached: {0}")]
pub struct Unavailable(String);

/// Where the sessions are kept.
#[derive(Debug)]
enum Table {
    Memory(Mutex<HashMap<[u8; 32], Record>>),
    Shared(Box<kv::Store>),
}

/// The session table.
#[derive(Debug)]
pub(crate) struct Sessions {
    ttl: Duration,
    table: Table,
}

impl Sessions {
    /// A table in this process's memory.
    pub(crate) fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            table: Table::Memory(Mutex::new(HashMap::new())),
        }
    }

    /// The table every runner of a cluster shares (see [`bucket`]).
    pub(crate) async fn shared(
        jetstream: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Sessions, Unavailable> {
        Ok(Sessions {
            ttl,
            table: Table::Shared(Box::new(bucket(jetstream, replicas).await?)),
        })
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session (with single sign-on, keeping its `id_token` sealed); returns the cookie
    /// value (the only copy of the session id) and the session.
    pub(crate) async fn open(
        &self,
        person: String,
        role: Role,
        method: Method,
        id_token: Option<String>,
    ) -> Result<(String, Session), Unavailable> {
        let cookie = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let record = Record {
            person,
            role,
            method,
            expires: now_ms()
                .saturating_add(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)),
            id_token: id_token.as_deref().and_then(|token| seal(&cookie, token)),
        };
        let key = hash(&cookie);
        match &self.table {
            Table::Memory(table) => {
                let mut table = lock(table);
                let now = now_ms();
                table.retain(|_, record| record.expires > now);
                if table.len() >= MAX_SESSIONS
                    && let Some(oldest) = table
                        .iter()
                        .min_by_key(|(_, record)| record.expires)
                        .map(|(hash, _)| *hash)
                {
                    table.remove(&oldest);
                }
                table.insert(key, record.clone());
            }
            Table::Shared(kv) => {
                let value = serde_json::to_vec(&record).map_err(|e| Unavailable(e.to_string()))?;
                kv.put(hex::encode(key), value.into())
                    .await
                    .map_err(|error| Unavailable(error.to_string()))?;
            }
        }
        let session = materialize(&cookie, record);
        Ok((cookie, session))
    }

    /// The live session a cookie value names.
    pub(crate) async fn get(&self, cookie: &str) -> Result<Option<Session>, Unavailable> {
        let key = hash(cookie);
        let record = match &self.table {
            Table::Memory(table) => lock(table).get(&key).cloned(),
            Table::Shared(kv) => kv
                .get(hex::encode(key))
                .await
                .map_err(|error| Unavailable(error.to_string()))?
                // A value that does not parse is no session (the bucket is the runners' own).
                .and_then(|value| serde_json::from_slice::<Record>(&value).ok()),
        };
        match record {
            Some(record) if record.expires > now_ms() => Ok(Some(materialize(cookie, record))),
            Some(_) => {
                self.close(cookie).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Ends the session a cookie value names (sign-out).
    pub(crate) async fn close(&self, cookie: &str) -> Result<(), Unavailable> {
        let key = hash(cookie);
        match &self.table {
            Table::Memory(table) => {
                lock(table).remove(&key);
            }
            Table::Shared(kv) => {
                kv.purge(hex::encode(key))
                    .await
                    .map_err(|error| Unavailable(error.to_string()))?;
            }
        }
        Ok(())
    }
}

/// The KV bucket [`BUCKET`] the runners of a cluster share their console sessions in, made
/// when missing: one value per session, the oldest dropped past [`MAX_SESSIONS`].
pub async fn bucket(
    jetstream: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, Unavailable> {
    // Made as a stream rather than through `create_key_value`, which cannot bound the number
    // of values nor drop the oldest.
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{BUCKET}"),
            description: Some("quench console sessions (hashed ids, no secrets)".to_owned()),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages: i64::try_from(MAX_SESSIONS).unwrap_or(i64::MAX),
            max_messages_per_subject: 1,
            max_message_size: MAX_RECORD,
            max_age: LONGEST,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|error| Unavailable(error.to_string()))?;
    jetstream
        .get_key_value(BUCKET)
        .await
        .map_err(|error| Unavailable(error.to_string()))
}

fn lock(
    table: &Mutex<HashMap<[u8; 32], Record>>,
) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Record>> {
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The session a record and its cookie make: the CSRF token derived, the ID token unsealed.
fn materialize(cookie: &str, record: Record) -> Session {
    Session {
        csrf: URL_SAFE_NO_PAD.encode(derive(cookie, CSRF_LABEL)),
        id_token: record
            .id_token
            .as_deref()
            .and_then(|sealed| unseal(cookie, sealed)),
        person: record.person,
        role: record.role,
        method: record.method,
    }
}

fn hash(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

/// A 256-bit value only the cookie's holder can compute: HMAC-SHA256 of `label` keyed by the
/// cookie (its 256 random bits).
fn derive(cookie: &str, label: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, cookie.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::hmac::sign(&key, label).as_ref());
    out
}

fn sealing_key(cookie: &str) -> Option<LessSafeKey> {
    let key = UnboundKey::new(&AES_256_GCM, &derive(cookie, ID_TOKEN_LABEL)).ok()?;
    Some(LessSafeKey::new(key))
}

/// `secret` sealed under the cookie's key: a random nonce, then ciphertext and tag.
fn seal(cookie: &str, secret: &str) -> Option<String> {
    let key = sealing_key(cookie)?;
    let nonce = rand::random::<[u8; NONCE_LEN]>();
    let mut data = secret.as_bytes().to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .ok()?;
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&data);
    Some(URL_SAFE_NO_PAD.encode(sealed))
}

/// What [`seal`] sealed, if `cookie` is the cookie it was sealed under.
fn unseal(cookie: &str, sealed: &str) -> Option<String> {
    let key = sealing_key(cookie)?;
    let sealed = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, data) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = data.to_vec();
    let plain = key.open_in_place(nonce, Aad::empty(), &mut data).ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|runtime| runtime.block_on(future))
            .unwrap_or_else(|error| panic!("runtime: {error}"))
    }

    #[test]
    fn a_session_is_found_by_its_cookie_only_until_it_is_closed() {
        block_on(async {
            let sessions = Sessions::new(Duration::from_secs(60));
            let (cookie, session) = sessions
                .open(
                    "ann@example.com".into(),
                    Role::Approver,
                    Method::Token,
                    None,
                )
                .await
                .expect("open");
            let found = sessions.get(&cookie).await.expect("get").expect("found");
            assert_eq!(found.person, "ann@example.com");
            assert!(found.csrf_matches(&session.csrf));
            assert!(!found.csrf_matches("forged"));
            assert!(!found.csrf_matches(""));
            assert!(sessions.get("not-a-session").await.expect("get").is_none());
            sessions.close(&cookie).await.expect("close");
            assert!(sessions.get(&cookie).await.expect("get").is_none());
        });
    }

    #[test]
    fn an_expired_session_is_not_found() {
        block_on(async {
            let sessions = Sessions::new(Duration::ZERO);
            let (cookie, _) = sessions
                .open("ann@example.com".into(), Role::Admin, Method::Token, None)
                .await
                .expect("open");
            assert!(sessions.get(&cookie).await.expect("get").is_none());
        });
    }

    #[test]
    fn two_sessions_have_different_ids_and_csrf_tokens() {
        block_on(async {
            let sessions = Sessions::new(Duration::from_secs(60));
            let (one, first) = sessions
                .open("a".into(), Role::Viewer, Method::Token, None)
                .await
                .expect("open");
            let (two, second) = sessions
                .open("a".into(), Role::Viewer, Method::Token, None)
                .await
                .expect("open");
            assert_ne!(one, two);
            assert_ne!(first.csrf, second.csrf);
            assert!(one.len() >= 43);
        });
    }

    #[test]
    fn the_table_keeps_no_cookie_csrf_token_or_id_token() {
        block_on(async {
            let sessions = Sessions::new(Duration::from_secs(60));
            let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJl";
            let (cookie, session) = sessions
                .open(
                    "ann@example.com".into(),
                    Role::Admin,
                    Method::Oidc,
                    Some(token.to_owned()),
                )
                .await
                .expect("open");
            assert_eq!(session.id_token.as_deref(), Some(token));
            let Table::Memory(table) = &sessions.table else {
                panic!("memory table");
            };
            let stored =
                serde_json::to_string(&lock(table).values().collect::<Vec<_>>()).expect("json");
            for secret in [
                cookie.as_str(),
                session.csrf.as_str(),
                token,
                "c2lnbmF0dXJl",
            ] {
                assert!(!stored.contains(secret), "{secret} in {stored}");
            }
            let found = sessions.get(&cookie).await.expect("get").expect("found");
            assert_eq!(found.id_token.as_deref(), Some(token));
            assert_eq!(found.method, Method::Oidc);
        });
    }

    proptest::proptest! {
        /// Whatever the shared bucket holds under a session's key — it is the runners' own, but
        /// a value is read as hostile all the same — parsing it never panics, and a sealed value
        /// not made under the cookie opens to nothing.
        #[test]
        fn hostile_stored_values_open_no_session(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            sealed in ".{0,300}",
        ) {
            let _ = serde_json::from_slice::<Record>(&bytes);
            proptest::prop_assert_eq!(unseal("a-cookie", &sealed), None);
        }
    }

    #[test]
    fn a_sealed_id_token_opens_only_with_its_cookie() {
        let sealed = seal("cookie-one", "the id token").expect("sealed");
        assert_eq!(
            unseal("cookie-one", &sealed).as_deref(),
            Some("the id token")
        );
        assert_eq!(unseal("cookie-two", &sealed), None);
        let mut tampered = URL_SAFE_NO_PAD.decode(&sealed).expect("base64");
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            unseal("cookie-one", &URL_SAFE_NO_PAD.encode(tampered)),
            None
        );
        for hostile in ["", "AA", "!!!", &"A".repeat(5000)] {
            assert_eq!(unseal("cookie-one", hostile), None);
        }
        assert_ne!(seal("c", "t"), seal("c", "t"), "a fresh nonce every time");
    }
}
