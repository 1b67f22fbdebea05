//! Console sessions, held in memory only (a restart signs everyone out). A session id is 32
//! random bytes sent once, in the `Set-Cookie` of the sign-in; the table keeps only its
//! SHA-256, so a dump of the process's memory holds no cookie that works. Each session has its
//! own CSRF token, which every write made with the cookie must echo in `X-CSRF-Token`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Role;

/// The cookie's name. The `__Host-` prefix (only with `Secure`) binds it to this origin and
/// path `/`; on a loopback listener without TLS the plain name is used.
pub(crate) const COOKIE: &str = "quench_session";
pub(crate) const HOST_COOKIE: &str = "__Host-quench_session";

/// The most sessions held; signing in past it ends the one closest to its end.
const MAX_SESSIONS: usize = 10_000;

/// A signed-in person.
#[derive(Clone)]
pub(crate) struct Session {
    /// Who: a verified email (single sign-on) or an API token's name (token sign-in).
    pub(crate) person: String,
    pub(crate) role: Role,
    /// How they signed in: `token` or `oidc`.
    pub(crate) method: &'static str,
    /// Echoed by the page in `X-CSRF-Token` on every write.
    pub(crate) csrf: String,
    pub(crate) expires: Instant,
    /// With single sign-on: the ID token, the hint of the provider's logout (never shown,
    /// logged or stored).
    pub(crate) id_token: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("person", &self.person)
            .field("role", &self.role)
            .field("method", &self.method)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub(crate) fn csrf_matches(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// The session table.
#[derive(Debug)]
pub(crate) struct Sessions {
    ttl: Duration,
    table: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            table: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session; returns the cookie value (the only copy of the session id) and the
    /// session.
    pub(crate) fn open(
        &self,
        person: String,
        role: Role,
        method: &'static str,
    ) -> (String, Session) {
        let id = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let session = Session {
            person,
            role,
            method,
            csrf: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>()),
            expires: Instant::now() + self.ttl,
            id_token: None,
        };
        let mut table = self.lock();
        let now = Instant::now();
        table.retain(|_, session| session.expires > now);
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(hash, _)| *hash)
        {
            table.remove(&oldest);
        }
        table.insert(hash(&id), session.clone());
        (id, session)
    }

    /// As [`Sessions::open`], for a person signed in through single sign-on with `id_token`.
    pub(crate) fn open_sso(
        &self,
        person: String,
        role: Role,
        id_token: String,
    ) -> (String, Session) {
        let (id, mut session) = self.open(person, role, "oidc");
        session.id_token = Some(id_token);
        if let Some(stored) = self.lock().get_mut(&hash(&id)) {
            stored.id_token = session.id_token.clone();
        }
        (id, session)
    }

    /// The live session a cookie value names.
    pub(crate) fn get(&self, cookie: &str) -> Option<Session> {
        let key = hash(cookie);
        let mut table = self.lock();
        match table.get(&key) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                table.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session a cookie value names (sign-out); whether there was one.
    pub(crate) fn close(&self, cookie: &str) -> bool {
        self.lock().remove(&hash(cookie)).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn hash(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only_until_it_is_closed() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (cookie, session) = sessions.open("ann@example.com".into(), Role::Approver, "token");
        let found = sessions.get(&cookie).expect("found");
        assert_eq!(found.person, "ann@example.com");
        assert!(found.csrf_matches(&session.csrf));
        assert!(!found.csrf_matches("forged"));
        assert!(!found.csrf_matches(""));
        assert!(sessions.get("not-a-session").is_none());
        assert!(sessions.close(&cookie));
        assert!(sessions.get(&cookie).is_none());
        assert!(!sessions.close(&cookie));
    }

    #[test]
    fn an_expired_session_is_not_found() {
        let sessions = Sessions::new(Duration::ZERO);
        let (cookie, _) = sessions.open("ann@example.com".into(), Role::Admin, "token");
        assert!(sessions.get(&cookie).is_none());
    }

    #[test]
    fn two_sessions_have_different_ids_and_csrf_tokens() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (one, first) = sessions.open("a".into(), Role::Viewer, "token");
        let (two, second) = sessions.open("a".into(), Role::Viewer, "token");
        assert_ne!(one, two);
        assert_ne!(first.csrf, second.csrf);
        assert!(one.len() >= 43);
    }
}
