//! The replay cache: signatures the gateway accepted, so the same signed request is not accepted
//! twice. One cache per endpoint that signs a timestamp (Slack, findings; GitHub signs none), so
//! a flood on one endpoint cannot refuse another's requests, and within it a budget per client
//! (a Slack team; a findings client address), so one client cannot refuse the others.
//!
//! A signature can be replayed only while its timestamp is inside the window
//! ([`MAX_SKEW_SECS`] either way), so each entry is kept exactly until its own timestamp leaves
//! it, and no longer: the entries are ordered by that moment and expire one by one.
//!
//! Full is refused, not evicted: forgetting a signature that is still fresh would let it be
//! replayed, so a cache (or a client's share of it) that is full refuses new signatures of that
//! endpoint (or that client) with 503 until its oldest entries expire. Memory is bounded by the
//! budgets: 100 to 200 bytes per entry (a hash map and a B-tree of 32-byte MACs).
//!
//! Why not a cache crate (moka, quick_cache): they stay within their capacity by evicting, which
//! here would reopen the window for a replay, and they cannot count entries per client. Two std
//! collections do the job exactly.

use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::Duration;

use quench_common::config::ReplayBudget;

use crate::refusal::{Refusal, Scope};
use crate::signature::{MAX_SKEW_SECS, Verified};

/// The accepted signatures of one endpoint.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    budget: ReplayBudget,
    /// Turns a client (a team id, an address) into a fixed-size key, so a long client name
    /// costs no memory; keyed per process, so nobody can aim two names at one key.
    clients: RandomState,
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Every remembered signature: the last second its timestamp is fresh, and its client.
    by_mac: HashMap<[u8; 32], Remembered>,
    /// The same entries in the order they expire.
    by_expiry: BTreeSet<(i64, [u8; 32])>,
    /// Entries per client; a client with none has no key.
    per_client: HashMap<u64, usize>,
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    last_fresh: i64,
    client: u64,
}

impl ReplayCache {
    pub(crate) fn new(budget: ReplayBudget) -> ReplayCache {
        ReplayCache {
            budget,
            clients: RandomState::new(),
            inner: Mutex::new(Seen::default()),
        }
    }

    /// The budget this cache was built with.
    pub(crate) fn budget(&self) -> ReplayBudget {
        self.budget
    }

    /// Records a verified signature for `client`; refuses one already recorded (409), or a new
    /// one when the endpoint's or the client's budget is full (503 with `Retry-After`).
    pub(crate) fn admit(
        &self,
        verified: Verified,
        client: impl Hash,
        now: i64,
    ) -> Result<(), Refusal> {
        let client = self.clients.hash_one(client);
        let mut seen = self.lock();
        seen.expire(now);
        if seen.by_mac.contains_key(&verified.mac) {
            return Err(Refusal::Replayed);
        }
        let full = if seen.by_mac.len() >= self.budget.entries {
            Some(Scope::Endpoint)
        } else if seen.per_client.get(&client).copied().unwrap_or(0) >= self.budget.per_client {
            Some(Scope::Client)
        } else {
            None
        };
        if let Some(scope) = full {
            return Err(Refusal::ReplayFull {
                scope,
                retry_after: seen.next_expiry(now),
            });
        }
        let last_fresh = verified.timestamp + MAX_SKEW_SECS;
        seen.by_mac
            .insert(verified.mac, Remembered { last_fresh, client });
        seen.by_expiry.insert((last_fresh, verified.mac));
        *seen.per_client.entry(client).or_default() += 1;
        Ok(())
    }

    /// Forgets an admitted signature whose request then failed on the gateway's side, so the
    /// caller's retry of the very same request is not taken for a replay.
    pub(crate) fn forget(&self, verified: &Verified) {
        let mut seen = self.lock();
        let matches = seen
            .by_mac
            .get(&verified.mac)
            .is_some_and(|remembered| remembered.last_fresh == verified.timestamp + MAX_SKEW_SECS);
        if matches {
            seen.remove(verified.mac);
        }
    }

    /// Drops the entries whose timestamp has left the window; returns how many remain.
    pub(crate) fn expire(&self, now: i64) -> usize {
        let mut seen = self.lock();
        seen.expire(now);
        seen.by_mac.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // The structures are consistent between statements, so a panic elsewhere while holding
        // the lock leaves nothing half-done.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Seen {
    fn expire(&mut self, now: i64) {
        while let Some(&(last_fresh, mac)) = self.by_expiry.first() {
            if last_fresh >= now {
                break;
            }
            self.remove(mac);
        }
    }

    fn remove(&mut self, mac: [u8; 32]) {
        let Some(remembered) = self.by_mac.remove(&mac) else {
            return;
        };
        self.by_expiry.remove(&(remembered.last_fresh, mac));
        if let MapEntry::Occupied(mut count) = self.per_client.entry(remembered.client) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }

    /// When the oldest entry expires and makes room (for a client that is full, a hint: its
    /// own oldest entry may expire later).
    fn next_expiry(&self, now: i64) -> Duration {
        let seconds = self
            .by_expiry
            .first()
            .map_or(1, |&(last_fresh, _)| last_fresh + 1 - now);
        Duration::from_secs(seconds.clamp(1, 2 * MAX_SKEW_SECS) as u64)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn signed(mac: u8, timestamp: i64) -> Verified {
        Verified {
            mac: [mac; 32],
            timestamp,
        }
    }

    fn budget(entries: usize, per_client: usize) -> ReplayBudget {
        ReplayBudget {
            entries,
            per_client,
        }
    }

    #[test]
    fn repeats_are_refused_until_their_own_timestamp_leaves_the_window() {
        let cache = ReplayCache::new(budget(10, 10));
        let now = 1_000_000;
        // Signed 250 s ago: fresh for 50 s more. Signed 100 s ahead: fresh for 400 s.
        let old = signed(1, now - 250);
        let ahead = signed(2, now + 100);
        assert_eq!(cache.admit(old, "T1", now), Ok(()));
        assert_eq!(cache.admit(ahead, "T1", now), Ok(()));
        assert_eq!(cache.admit(old, "T2", now + 1), Err(Refusal::Replayed));
        assert_eq!(cache.expire(now + 50), 2, "still fresh at its last second");
        assert_eq!(
            cache.expire(now + 51),
            1,
            "gone once its timestamp is stale"
        );
        assert_eq!(cache.admit(ahead, "T1", now + 399), Err(Refusal::Replayed));
        assert_eq!(cache.expire(now + 401), 0);
    }

    #[test]
    fn a_full_client_is_refused_while_others_and_the_endpoint_have_room() {
        let cache = ReplayCache::new(budget(3, 2));
        let now = 1_000_000;
        assert_eq!(cache.admit(signed(1, now - 100), "T1", now), Ok(()));
        assert_eq!(cache.admit(signed(2, now), "T1", now), Ok(()));
        assert_eq!(
            cache.admit(signed(3, now), "T1", now),
            Err(Refusal::ReplayFull {
                scope: Scope::Client,
                retry_after: Duration::from_secs(201),
            })
        );
        assert_eq!(cache.admit(signed(3, now), "T2", now), Ok(()));
        assert_eq!(
            cache.admit(signed(4, now), "T3", now),
            Err(Refusal::ReplayFull {
                scope: Scope::Endpoint,
                retry_after: Duration::from_secs(201),
            })
        );
        // A failed request's signature is forgotten: its client has room again.
        cache.forget(&signed(2, now));
        assert_eq!(cache.admit(signed(4, now), "T1", now), Ok(()));
        // The oldest expires: the endpoint has room again.
        assert_eq!(cache.admit(signed(5, now), "T3", now + 201), Ok(()));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Admit { mac: u8, age: i64, client: u8 },
        Forget { mac: u8, age: i64 },
        Wait(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        let age = -MAX_SKEW_SECS..=MAX_SKEW_SECS;
        prop_oneof![
            // Few signatures and mostly short waits, so repeats near the end of a window are common.
            4 => (0u8..16, age.clone(), 0u8..4).prop_map(|(mac, age, client)| Step::Admit { mac, age, client }),
            1 => (0u8..16, age).prop_map(|(mac, age)| Step::Forget { mac, age }),
            2 => (0i64..8).prop_map(Step::Wait),
            1 => (0i64..400).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Under any sequence of requests, forgets and waits: the cache and every client stay
        /// within budget, the indexes agree, a fresh signature is never accepted twice, and a
        /// refusal for room names a wait of at least a second.
        #[test]
        fn the_cache_stays_within_its_budget_and_never_accepts_a_fresh_repeat(
            entries in 1usize..12,
            per_client in 1usize..12,
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let per_client = per_client.min(entries);
            let cache = ReplayCache::new(budget(entries, per_client));
            let mut now = 1_000_000;
            // What a correct cache must refuse: signature → last fresh second, while admitted.
            let mut accepted: HashMap<u8, i64> = HashMap::new();
            for step in steps {
                match step {
                    Step::Admit { mac, age, client } => {
                        let verified = signed(mac, now - age);
                        let result = cache.admit(verified, client, now);
                        let fresh_repeat = accepted.get(&mac).is_some_and(|&last| last >= now);
                        match result {
                            Ok(()) => {
                                prop_assert!(!fresh_repeat, "a fresh signature was accepted twice");
                                accepted.insert(mac, verified.timestamp + MAX_SKEW_SECS);
                            }
                            Err(Refusal::Replayed) => prop_assert!(fresh_repeat),
                            Err(Refusal::ReplayFull { retry_after, .. }) => {
                                prop_assert!(retry_after >= Duration::from_secs(1));
                            }
                            Err(other) => prop_assert!(false, "unexpected {other:?}"),
                        }
                    }
                    Step::Forget { mac, age } => {
                        let verified = signed(mac, now - age);
                        cache.forget(&verified);
                        if accepted.get(&mac) == Some(&(verified.timestamp + MAX_SKEW_SECS)) {
                            accepted.remove(&mac);
                        }
                    }
                    Step::Wait(seconds) => now += seconds,
                }
                let seen = cache.lock();
                prop_assert!(seen.by_mac.len() <= entries);
                prop_assert_eq!(seen.by_mac.len(), seen.by_expiry.len());
                prop_assert_eq!(seen.per_client.values().sum::<usize>(), seen.by_mac.len());
                prop_assert!(seen.per_client.values().all(|&count| (1..=per_client).contains(&count)));
            }
        }
    }
}
