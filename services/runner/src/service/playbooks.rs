//! The service's playbooks: loaded from `playbooks.dir` at start, again when a file there
//! changes (inotify through `notify`, debounced) or on SIGHUP, and applied through the admin
//! API. The directory stays the one source of truth: an applied playbook is written into it
//! (atomically, into the file that already holds that name, else `<name>.yaml`), so a restart or
//! the next reload serves the same thing.
//!
//! A file that does not compile is refused with its diagnostics — logged at ERROR, counted in
//! `quench_playbooks_refused`, shown by `GET /api/v1/playbooks` — and the last good version of
//! its playbook keeps serving: the one this process loaded from that file, or after a restart
//! the version the store last recorded for the name the file declares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::engine::Engine;
use crate::playbook::{self, Located, Playbook, Severity};

/// Quiet time after the last change in the directory before it is read again (editors write a
/// file in several steps).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What the last load said about one file.
#[derive(Debug, Clone)]
pub(crate) struct FileStatus {
    pub(crate) path: PathBuf,
    /// The playbook it defines (when it compiles, or the name it declares when it does not).
    pub(crate) playbook: Option<String>,
    /// The version it compiled to; `None` when refused.
    pub(crate) version: Option<String>,
    /// When refused: the version of its playbook that keeps serving, if any.
    pub(crate) serving: Option<String>,
    /// Errors (refused) or warnings.
    pub(crate) diagnostics: Vec<Located>,
    /// A refused file's text as read, for the console's editor; `None` for a loaded file
    /// (its source is the current version's).
    pub(crate) source: Option<Arc<str>>,
}

impl FileStatus {
    pub(crate) fn refused(&self) -> bool {
        self.version.is_none()
    }
}

/// The playbooks of one directory, as loaded.
#[derive(Debug, Clone)]
pub(crate) struct Library {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    engine: Engine,
    /// Serializes loads; holds the last good playbook compiled from each file.
    state: tokio::sync::Mutex<BTreeMap<PathBuf, Playbook>>,
    status: RwLock<Arc<Status>>,
}

/// The outcome of the last load.
#[derive(Debug, Default)]
pub(crate) struct Status {
    pub(crate) files: Vec<FileStatus>,
    pub(crate) loaded_at: Option<DateTime<Utc>>,
}

/// A playbook applied through the API.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) name: String,
    pub(crate) version: String,
    /// False when this version was already the current one.
    pub(crate) changed: bool,
    pub(crate) file: PathBuf,
    pub(crate) warnings: Vec<Located>,
}

/// Why an applied playbook was not taken.
#[derive(Debug)]
pub(crate) enum Refused {
    /// It does not compile.
    Invalid(Vec<Located>),
    /// It compiles but cannot be written or loaded.
    Failed(String),
}

impl Library {
    pub(crate) fn new(dir: PathBuf, engine: Engine) -> Library {
        Library {
            inner: Arc::new(Inner {
                dir,
                engine,
                state: tokio::sync::Mutex::new(BTreeMap::new()),
                status: RwLock::new(Arc::default()),
            }),
        }
    }

    /// The outcome of the last load.
    pub(crate) fn status(&self) -> Arc<Status> {
        self.inner
            .status
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the directory and makes what compiles the current set (refused files keep their
    /// last good version). `by` is recorded with each version that becomes current.
    pub(crate) async fn reload(&self, by: &str) -> Result<(), Error> {
        let mut last_good = self.inner.state.lock().await;
        let dir = &self.inner.dir;
        let groups = self.inner.engine.group_names();
        let mut loaded =
            playbook::load_paths(std::slice::from_ref(dir), Some(&groups)).map_err(|source| {
                Error::Playbooks {
                    dir: dir.display().to_string(),
                    source,
                }
            })?;
        let disabled = self.inner.engine.disabled_playbooks().unwrap_or_default();
        playbook::warn_overlaps(&mut loaded, |playbook| disabled.contains(&playbook.name));
        let mut set: BTreeMap<String, Playbook> = BTreeMap::new();
        let mut files = Vec::with_capacity(loaded.len());
        let mut refused = Vec::new();
        for file in &loaded {
            let diagnostics = file.report().located();
            match &file.compiled.playbook {
                Some(playbook) => {
                    if !file.compiled.diagnostics.is_empty() {
                        tracing::warn!(file = %file.path.display(), playbook = %playbook.name, "playbook loaded with warnings:\n{}", file.report().render(false));
                    }
                    last_good.insert(file.path.clone(), playbook.clone());
                    set.insert(playbook.name.clone(), playbook.clone());
                    files.push(FileStatus {
                        path: file.path.clone(),
                        playbook: Some(playbook.name.clone()),
                        version: Some(playbook.version.clone()),
                        serving: None,
                        diagnostics,
                        source: None,
                    });
                }
                None => {
                    tracing::error!(file = %file.path.display(), "playbook refused; its last good version (if any) keeps serving:\n{}", file.report().render(false));
                    refused.push((file, diagnostics));
                }
            }
        }
        // Second pass, so a refused file never displaces a good one of the same name.
        for (file, diagnostics) in refused {
            let declared = declared_name(&file.source);
            let fallback = match last_good.get(&file.path) {
                Some(playbook) => Some(playbook.clone()),
                None => match &declared {
                    Some(name) => self.stored_current(name),
                    None => None,
                },
            };
            let fallback = fallback.filter(|playbook| !set.contains_key(&playbook.name));
            files.push(FileStatus {
                path: file.path.clone(),
                playbook: fallback
                    .as_ref()
                    .map(|playbook| playbook.name.clone())
                    .or(declared),
                version: None,
                serving: fallback.as_ref().map(|playbook| playbook.version.clone()),
                diagnostics,
                source: Some(Arc::from(file.source.as_str())),
            });
            if let Some(playbook) = fallback {
                set.insert(playbook.name.clone(), playbook);
            }
        }
        let present: Vec<&PathBuf> = loaded.iter().map(|file| &file.path).collect();
        last_good.retain(|path, _| present.contains(&path));
        files.sort_by(|a, b| a.path.cmp(&b.path));
        self.commit(set.into_values().collect(), files, by).await
    }

    /// The playbooks directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Compiles `source` as `apply` would, changing nothing: the playbook when it compiles, and
    /// every diagnostic (errors, warnings, overlaps with the other enabled playbooks) located
    /// in `label`.
    pub(crate) fn check(&self, source: &str, label: &str) -> (Option<Playbook>, Vec<Located>) {
        let mut compiled = playbook::compile_with(source, Some(&self.inner.engine.group_names()));
        if let Some(applied) = &compiled.playbook {
            let current = self.inner.engine.playbooks();
            let disabled = self.inner.engine.disabled_playbooks().unwrap_or_default();
            let status = self.status();
            let origin = |name: &str| {
                status
                    .files
                    .iter()
                    .find(|file| file.playbook.as_deref() == Some(name))
                    .map(|file| file.path.as_path())
            };
            let others = current
                .values()
                .filter(|other| !disabled.contains(&other.name))
                .map(|other| (other.as_ref(), origin(&other.name)));
            let mut found = playbook::overlapping(applied, others);
            compiled.diagnostics.append(&mut found);
            compiled
                .diagnostics
                .sort_by_key(|diagnostic| (diagnostic.span.start, diagnostic.severity));
        }
        let diagnostics = playbook::Report {
            file: label,
            source,
            diagnostics: &compiled.diagnostics,
        }
        .located();
        (compiled.playbook, diagnostics)
    }

    /// Compiles `source`; when it compiles, writes it into the directory and makes it current,
    /// recorded as applied `by`.
    pub(crate) async fn apply(
        &self,
        source: &str,
        label: &str,
        by: &str,
    ) -> Result<Applied, Refused> {
        let (playbook, diagnostics) = self.check(source, label);
        let Some(playbook) = playbook else {
            return Err(Refused::Invalid(diagnostics));
        };
        let mut last_good = self.inner.state.lock().await;
        let status = self.status();
        let file = status
            .files
            .iter()
            .find(|file| file.playbook.as_deref() == Some(playbook.name.as_str()))
            .map(|file| file.path.clone())
            .unwrap_or_else(|| self.inner.dir.join(format!("{}.yaml", playbook.name)));
        let current = self.inner.engine.playbooks();
        let changed = current
            .get(&playbook.name)
            .is_none_or(|loaded| loaded.version != playbook.version);
        write_atomically(&file, source).map_err(|error| {
            Refused::Failed(format!("cannot write {}: {error}", file.display()))
        })?;
        last_good.insert(file.clone(), playbook.clone());
        let mut set: BTreeMap<String, Playbook> = current
            .iter()
            .map(|(name, loaded)| (name.clone(), Playbook::clone(loaded)))
            .collect();
        set.insert(playbook.name.clone(), playbook.clone());
        let mut files: Vec<FileStatus> = status
            .files
            .iter()
            .filter(|status| status.path != file)
            .cloned()
            .collect();
        files.push(FileStatus {
            path: file.clone(),
            playbook: Some(playbook.name.clone()),
            version: Some(playbook.version.clone()),
            serving: None,
            diagnostics: diagnostics.clone(),
            source: None,
        });
        files.sort_by(|a, b| a.path.cmp(&b.path));
        self.commit(set.into_values().collect(), files, by)
            .await
            .map_err(|error| Refused::Failed(error.to_string()))?;
        Ok(Applied {
            name: playbook.name,
            version: playbook.version,
            changed,
            file,
            warnings: diagnostics
                .into_iter()
                .filter(|diagnostic| diagnostic.severity == Severity::Warning)
                .collect(),
        })
    }

    async fn commit(
        &self,
        set: Vec<Playbook>,
        files: Vec<FileStatus>,
        by: &str,
    ) -> Result<(), Error> {
        let count = set.len();
        self.inner.engine.load_playbooks(set, by).await?;
        let refused = files.iter().filter(|file| file.refused()).count();
        let metrics = crate::metrics::get();
        metrics
            .playbook_loads
            .get_or_create(&crate::metrics::ResultLabel {
                result: if refused == 0 { "ok" } else { "refused" }.to_owned(),
            })
            .inc();
        metrics.playbooks_refused.set(refused as i64);
        metrics.playbooks_loaded.set(count as i64);
        tracing::info!(loaded = count, refused, dir = %self.inner.dir.display(), by, "playbooks loaded");
        *self
            .inner
            .status
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(Status {
            files,
            loaded_at: Some(self.inner.engine.now()),
        });
        Ok(())
    }

    /// The version the store last made current for `name` (after a restart, the last good one).
    fn stored_current(&self, name: &str) -> Option<Playbook> {
        let engine = &self.inner.engine;
        let version = engine.store().current_playbook_version(name).ok()??;
        engine
            .playbook_version(&version)
            .ok()
            .map(|playbook| Playbook::clone(&playbook))
    }

    /// Reloads on changes in the directory (debounced) and on SIGHUP, until shutdown.
    pub(crate) async fn watch(self, shutdown: CancellationToken) {
        let dir = self.inner.dir.clone();
        watch_and_reload(&dir, shutdown, move || vec![self.clone()]).await;
    }
}

/// Reloads the libraries `libraries` names at the time on changes in `dir` (debounced) and on
/// SIGHUP, until shutdown: one watcher for a process, however many partitions it serves (each
/// keeps a library of its own), since every watcher holds an inotify instance (128 a user by
/// default) and a signal handler.
pub(crate) async fn watch_and_reload(
    dir: &Path,
    shutdown: CancellationToken,
    libraries: impl Fn() -> Vec<Library>,
) {
    let (changes, mut changed) = mpsc::channel::<()>(1);
    let watcher = watch_dir(dir, changes);
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; playbooks reload on file changes only");
            None
        }
    };
    loop {
        let by = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(()) = changed.recv() => "file change",
            Some(()) = async {
                match &mut hangup {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
        };
        if by == "file change" {
            // Wait for the directory to be quiet.
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(DEBOUNCE) => break,
                    Some(()) = changed.recv() => {}
                }
            }
        }
        for library in libraries() {
            if let Err(error) = library.reload(by).await {
                tracing::error!(%error, "reloading playbooks failed; the current ones keep serving");
            }
        }
    }
    drop(watcher);
}

/// Watches a directory (not recursively); each change sends a signal (coalesced).
fn watch_dir(dir: &Path, changes: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            // Full means a reload is already due; it will read this change too.
            let _ = changes.try_send(());
        }
    };
    let watched = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map(|()| watcher)
    });
    match watched {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "cannot watch the playbooks directory; send SIGHUP to reload");
            None
        }
    }
}

/// The `name` a playbook source declares, when its YAML can be read.
pub(crate) fn declared_name(source: &str) -> Option<String> {
    playbook::yaml_value(source)
        .ok()?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// Writes through a temporary file in the same directory and renames it into place, so a
/// reader (or the watcher) never sees half a playbook.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("playbook");
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}
