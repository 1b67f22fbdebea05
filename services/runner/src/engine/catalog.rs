//! The playbook catalog: the current set (by name), every version seen (by content hash; runs
//! keep the version they started with, recompiled from its stored source when it is not
//! loaded), which playbooks are disabled, and the schedules paused for want of credentials.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;

use super::{Engine, Error};
use crate::playbook::{self, Playbook};
use crate::store::{AuditDraft, Batch, Key};

/// The playbooks an engine knows.
#[derive(Debug, Default)]
pub(super) struct Catalog {
    /// The current playbooks, by name.
    playbooks: RwLock<Arc<BTreeMap<String, Arc<Playbook>>>>,
    /// Every version seen, by content hash (runs keep theirs).
    versions: Mutex<HashMap<String, Arc<Playbook>>>,
}

impl Engine {
    /// Makes `playbooks` the current set. Each version is stored by content hash; a playbook
    /// whose current version changes (new, edited, or rolled back) gets a history entry and an
    /// audit entry naming `loaded_by`, and one that leaves the set an audit entry too. Runs
    /// already open keep the version they started with.
    pub async fn load_playbooks(
        &self,
        playbooks: Vec<Playbook>,
        loaded_by: &str,
    ) -> Result<(), Error> {
        let now = self.now();
        let previous = self.playbooks();
        let mut batch = Batch::new();
        let mut set = BTreeMap::new();
        let partitions = self.inner.config.partition.count;
        if partitions > 1
            && let Some(playbook) = playbooks.iter().find(|playbook| {
                matches!(playbook.trigger, crate::playbook::Trigger::Finding(_))
                    && !crate::playbook::is_finding_key(&playbook.key)
            })
        {
            return Err(Error::KeyAcrossPartitions {
                playbook: playbook.name.clone(),
                partitions,
            });
        }
        for playbook in playbooks {
            let playbook = Arc::new(playbook);
            if !self
                .inner
                .store
                .contains(Key::PlaybookVersion(&playbook.version))?
            {
                batch.put(
                    Key::PlaybookVersion(&playbook.version),
                    &playbook.source.as_ref(),
                );
            }
            let current = self.inner.store.current_playbook_version(&playbook.name)?;
            if current.as_deref() != Some(playbook.version.as_str()) {
                batch.put(Key::PlaybookHistory(&playbook.name, now), &playbook.version);
                batch.put(Key::PlaybookLoadedBy(&playbook.name, now), &loaded_by);
                let mut draft = AuditDraft::new(
                    now,
                    "playbook_loaded",
                    serde_json::json!({"by": loaded_by, "previous": current}),
                );
                draft.playbook = Some(playbook.name.clone());
                draft.version = Some(playbook.version.clone());
                batch.audit(draft);
            }
            self.versions()
                .insert(playbook.version.clone(), playbook.clone());
            set.insert(playbook.name.clone(), playbook);
        }
        for (name, playbook) in previous.iter() {
            if !set.contains_key(name) {
                let mut draft = AuditDraft::new(
                    now,
                    "playbook_removed",
                    serde_json::json!({"by": loaded_by}),
                );
                draft.playbook = Some(name.clone());
                draft.version = Some(playbook.version.clone());
                batch.audit(draft);
            }
        }
        self.inner.store.commit(batch).await?;
        *self
            .inner
            .catalog
            .playbooks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
        // A new or changed schedule may fall due before the timer loop's current sleep ends.
        self.inner.timers.notify_one();
        Ok(())
    }

    /// Whether a playbook starts new runs (it does unless an operator disabled it).
    pub fn is_enabled(&self, name: &str) -> Result<bool, Error> {
        Ok(!self.inner.store.contains(Key::PlaybookDisabled(name))?)
    }

    /// Names of the disabled playbooks.
    pub fn disabled_playbooks(&self) -> Result<std::collections::BTreeSet<String>, Error> {
        Ok(self
            .inner
            .store
            .disabled_playbooks::<Value>()?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Enables or disables a playbook (a disabled one starts no new runs; its open runs go on).
    /// Persisted and audited with `actor`; returns false when it was already so.
    pub async fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
        actor: &quench_proto::Actor,
    ) -> Result<bool, Error> {
        // Serialized with intake, so a batch sees the flag before or after, never half.
        let _intake = self.inner.intake.lock().await;
        if self.is_enabled(name)? == enabled {
            return Ok(false);
        }
        let now = self.now();
        let mut batch = Batch::new();
        if enabled {
            batch.delete(Key::PlaybookDisabled(name));
        } else {
            batch.put(
                Key::PlaybookDisabled(name),
                &serde_json::json!({"at": now, "by": actor.id}),
            );
        }
        let kind = if enabled {
            "playbook_enabled"
        } else {
            "playbook_disabled"
        };
        let mut draft = AuditDraft::new(now, kind, serde_json::json!({}));
        draft.playbook = Some(name.to_owned());
        draft.actor = Some(serde_json::to_value(actor).unwrap_or(Value::Null));
        batch.audit(draft);
        self.inner.store.commit(batch).await?;
        Ok(true)
    }

    /// A playbook version (content hash), from the cache or recompiled from its stored source.
    pub fn playbook_version(&self, version: &str) -> Result<Arc<Playbook>, Error> {
        self.version(version)
    }

    /// The scheduled playbooks that are paused here, with why (see [`EngineConfig::unavailable`]).
    pub fn paused_schedules(&self) -> Vec<(String, String)> {
        self.playbooks()
            .values()
            .filter(|playbook| matches!(playbook.trigger, playbook::Trigger::Schedule(_)))
            .filter_map(|playbook| {
                playbook
                    .blocked_by(&self.inner.config.unavailable, self.inner.config.mode)
                    .map(|why| (playbook.name.clone(), why))
            })
            .collect()
    }

    /// The names of the approver groups the config defines (`group:<name>`).
    pub fn group_names(&self) -> std::collections::BTreeSet<String> {
        self.inner.config.groups.keys().cloned().collect()
    }

    pub fn playbooks(&self) -> Arc<BTreeMap<String, Arc<Playbook>>> {
        self.inner
            .catalog
            .playbooks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(super) fn versions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Playbook>>> {
        self.inner
            .catalog
            .versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The playbook a run is pinned to, from the cache or recompiled from its stored source.
    pub(super) fn version(&self, version: &str) -> Result<Arc<Playbook>, Error> {
        if let Some(playbook) = self.versions().get(version) {
            return Ok(playbook.clone());
        }
        let source: String = self
            .inner
            .store
            .get(Key::PlaybookVersion(version))?
            .ok_or_else(|| Error::UnknownVersion {
                version: version.to_owned(),
            })?;
        let compiled = playbook::compile(&source);
        let playbook = compiled.playbook.ok_or_else(|| Error::Recompile {
            version: version.to_owned(),
            message: compiled
                .diagnostics
                .first()
                .map_or_else(String::new, |d| d.message.clone()),
        })?;
        let playbook = Arc::new(playbook);
        self.versions().insert(version.to_owned(), playbook.clone());
        Ok(playbook)
    }
}
