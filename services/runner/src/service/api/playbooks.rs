//! Playbooks: what is loaded (and which files are refused, with their diagnostics), a version's
//! source, a name's history, applying a new version, and enabling or disabling a playbook.

use axum::extract::{Path, State};
use axum::response::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, Body, ErrorBody};
use crate::config::Role;
use crate::playbook::{Located, Playbook, Trigger};
use crate::service::playbooks::Refused;

/// A loaded playbook.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PlaybookSummary {
    pub(crate) name: String,
    /// The current version (content hash); new runs use it.
    pub(crate) version: String,
    /// False when disabled: it starts no new runs.
    pub(crate) enabled: bool,
    pub(crate) description: Option<String>,
    pub(crate) owner: Option<String>,
    /// `finding: <kinds>` or `schedule: <cron> <time zone>`.
    pub(crate) trigger: String,
    /// The file it was loaded from.
    pub(crate) file: Option<String>,
}

/// A playbook file the last load refused; the last good version of its playbook (if any)
/// keeps serving.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct RefusedFile {
    pub(crate) file: String,
    /// The playbook it declares, when that can be read.
    pub(crate) playbook: Option<String>,
    /// The version serving instead.
    pub(crate) serving: Option<String>,
    pub(crate) diagnostics: Vec<Located>,
    /// The file's text as the load read it (what the diagnostics point into).
    pub(crate) source: String,
}

/// What is loaded.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PlaybookList {
    pub(crate) playbooks: Vec<PlaybookSummary>,
    pub(crate) refused: Vec<RefusedFile>,
    /// When the playbooks directory was last read.
    pub(crate) loaded_at: Option<DateTime<Utc>>,
}

/// A loaded playbook with its source.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PlaybookDetail {
    #[serde(flatten)]
    pub(crate) playbook: PlaybookSummary,
    pub(crate) source: String,
}

/// One entry of a playbook's history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct HistoryEntry {
    pub(crate) version: String,
    /// When it became current.
    pub(crate) at: DateTime<Utc>,
    /// Who made it current: `api:<token name>` (an apply through the API), `quench serve` (read
    /// from the playbooks directory at start), `file change` or `SIGHUP` (a reload of the
    /// directory); `unknown` for versions recorded by a quench that did not keep this.
    pub(crate) by: String,
    /// It is the version new runs use.
    pub(crate) current: bool,
}

/// The versions a playbook name has had, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct History {
    pub(crate) name: String,
    pub(crate) versions: Vec<HistoryEntry>,
}

/// A stored version's source.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct VersionSource {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) source: String,
}

/// A playbook to apply.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct ApplyRequest {
    /// The YAML source.
    #[schema(
        example = "schema: quench.playbook/v1\nname: example\non:\n  finding:\n    kinds: [example.kind]\nsteps:\n  - id: say\n    uses: note\n    with:\n      message: noted\n"
    )]
    pub(crate) source: String,
    /// A name for the source in diagnostics (e.g. the client's file name).
    #[schema(example = "example.yaml")]
    pub(crate) file: Option<String>,
}

/// An applied playbook.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct AppliedView {
    pub(crate) name: String,
    pub(crate) version: String,
    /// False when this version was already current.
    pub(crate) changed: bool,
    /// Where it was written in the playbooks directory.
    pub(crate) file: String,
    pub(crate) warnings: Vec<Located>,
}

/// What compiling a playbook found; nothing was applied.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Checked {
    /// True when it compiles (warnings allowed): applying it would succeed.
    pub(crate) ok: bool,
    /// The playbook's name and the version it would have, when it compiles.
    pub(crate) name: Option<String>,
    pub(crate) version: Option<String>,
    /// Whether that version is already current.
    pub(crate) current: bool,
    /// Errors and warnings with line and column, in source order.
    pub(crate) diagnostics: Vec<Located>,
}

/// Whether a playbook starts new runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct EnabledView {
    pub(crate) name: String,
    pub(crate) enabled: bool,
    /// False when it already was so.
    pub(crate) changed: bool,
}

fn trigger(playbook: &Playbook) -> String {
    match &playbook.trigger {
        Trigger::Finding(finding) => format!("finding: {}", finding.kinds.join(", ")),
        Trigger::Schedule(schedule) => {
            format!("schedule: {} {}", schedule.line, schedule.timezone.name())
        }
    }
}

fn summary(api: &Api, playbook: &Playbook, enabled: bool) -> PlaybookSummary {
    let status = api.inner.library.status();
    let file = status
        .files
        .iter()
        .find(|file| file.playbook.as_deref() == Some(playbook.name.as_str()))
        .map(|file| file.path.display().to_string());
    PlaybookSummary {
        name: playbook.name.clone(),
        version: playbook.version.clone(),
        enabled,
        description: playbook.description.clone(),
        owner: playbook.owner.clone(),
        trigger: trigger(playbook),
        file,
    }
}

fn loaded(api: &Api, name: &str) -> Result<std::sync::Arc<Playbook>, ApiError> {
    api.inner
        .engine
        .playbooks()
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no playbook `{name}` is loaded")))
}

/// The loaded playbooks, and the files that were refused.
#[utoipa::path(get, path = "/api/v1/playbooks", tag = "playbooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Loaded and refused (role viewer)", body = PlaybookList),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn list(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<PlaybookList>, ApiError> {
    caller.require(Role::Viewer)?;
    let disabled = api.inner.engine.disabled_playbooks()?;
    let playbooks = api
        .inner
        .engine
        .playbooks()
        .values()
        .map(|playbook| summary(&api, playbook, !disabled.contains(&playbook.name)))
        .collect();
    let status = api.inner.library.status();
    let refused = status
        .files
        .iter()
        .filter(|file| file.refused())
        .map(|file| RefusedFile {
            file: file.path.display().to_string(),
            playbook: file.playbook.clone(),
            serving: file.serving.clone(),
            diagnostics: file.diagnostics.clone(),
            source: file.source.as_deref().unwrap_or_default().to_owned(),
        })
        .collect();
    Ok(Json(PlaybookList {
        playbooks,
        refused,
        loaded_at: status.loaded_at,
    }))
}

/// Apply a playbook: it is compiled as `quench validate` would; when it compiles it is written
/// into the playbooks directory and becomes current (audited with the token's name), else
/// every problem is returned.
#[utoipa::path(post, path = "/api/v1/playbooks", tag = "playbooks",
    request_body = ApplyRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied (role editor)", body = AppliedView),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 422, description = "It does not compile: `diagnostics` says why, with line and column", body = ErrorBody)
    ))]
pub(super) async fn apply(
    State(api): State<Api>,
    caller: Caller,
    Body(request): Body<ApplyRequest>,
) -> Result<Json<AppliedView>, ApiError> {
    caller.require(Role::Editor)?;
    let label = request.file.as_deref().unwrap_or("<request>");
    let by = format!("api:{}", caller.name);
    match api.inner.library.apply(&request.source, label, &by).await {
        Ok(applied) => {
            tracing::info!(playbook = %applied.name, version = %applied.version, by = %caller.name, changed = applied.changed, "playbook applied through the API");
            Ok(Json(AppliedView {
                name: applied.name,
                version: applied.version,
                changed: applied.changed,
                file: applied.file.display().to_string(),
                warnings: applied.warnings,
            }))
        }
        Err(Refused::Invalid(diagnostics)) => {
            crate::metrics::get()
                .playbook_loads
                .get_or_create(&crate::metrics::ResultLabel {
                    result: "refused".to_owned(),
                })
                .inc();
            Err(ApiError::InvalidPlaybook(diagnostics))
        }
        Err(Refused::Failed(message)) => Err(ApiError::Internal(message)),
    }
}

/// Compile a playbook without applying it: the same compiler and checks as `POST
/// /api/v1/playbooks` and `quench validate` (the configured groups, overlaps with the enabled
/// playbooks); what the console's editor calls as one types.
#[utoipa::path(post, path = "/api/v1/validate", tag = "playbooks",
    request_body = ApplyRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Compiled (role editor): `ok` says whether it would apply", body = Checked),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn validate(
    State(api): State<Api>,
    caller: Caller,
    Body(request): Body<ApplyRequest>,
) -> Result<Json<Checked>, ApiError> {
    caller.require(Role::Editor)?;
    let label = request.file.as_deref().unwrap_or("<request>");
    let library = api.inner.library.clone();
    let source = request.source;
    let label = label.to_owned();
    // Compiling is CPU work (templates, schemas): off the async workers.
    let (playbook, diagnostics) =
        tokio::task::spawn_blocking(move || library.check(&source, &label))
            .await
            .map_err(|error| ApiError::Internal(format!("the check stopped: {error}")))?;
    let current = playbook.as_ref().is_some_and(|playbook| {
        api.inner
            .engine
            .playbooks()
            .get(&playbook.name)
            .is_some_and(|loaded| loaded.version == playbook.version)
    });
    Ok(Json(Checked {
        ok: playbook.is_some(),
        name: playbook.as_ref().map(|playbook| playbook.name.clone()),
        version: playbook.as_ref().map(|playbook| playbook.version.clone()),
        current,
        diagnostics,
    }))
}

/// A loaded playbook and its current source.
#[utoipa::path(get, path = "/api/v1/playbooks/{name}", tag = "playbooks",
    params(("name" = String, Path, description = "Playbook name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The playbook (role viewer)", body = PlaybookDetail),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "Not loaded", body = ErrorBody)
    ))]
pub(super) async fn show(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PlaybookDetail>, ApiError> {
    caller.require(Role::Viewer)?;
    let playbook = loaded(&api, &name)?;
    let enabled = api.inner.engine.is_enabled(&name)?;
    Ok(Json(PlaybookDetail {
        playbook: summary(&api, &playbook, enabled),
        source: playbook.source.to_string(),
    }))
}

/// The versions a playbook has had, newest first, each with when and by whom it was made current.
#[utoipa::path(get, path = "/api/v1/playbooks/{name}/history", tag = "playbooks",
    params(("name" = String, Path, description = "Playbook name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Its versions (role viewer)", body = History),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "Never loaded", body = ErrorBody)
    ))]
pub(super) async fn history(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<History>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut entries = api.inner.engine.store().playbook_history(&name)?;
    if entries.is_empty() {
        return Err(ApiError::NotFound(format!(
            "playbook `{name}` has no history: it was never loaded"
        )));
    }
    let current = api
        .inner
        .engine
        .playbooks()
        .get(&name)
        .map(|playbook| playbook.version.clone());
    entries.reverse();
    let versions = entries
        .into_iter()
        .enumerate()
        .map(|(index, load)| HistoryEntry {
            current: index == 0 && current.as_deref() == Some(load.version.as_str()),
            version: load.version,
            at: load.at,
            by: load.by.unwrap_or_else(|| "unknown".to_owned()),
        })
        .collect();
    Ok(Json(History { name, versions }))
}

/// The source of one version of a playbook: a full version (`sha256:…`) or a unique prefix of
/// its hex digits, among the versions in the name's history.
#[utoipa::path(get, path = "/api/v1/playbooks/{name}/versions/{version}", tag = "playbooks",
    params(
        ("name" = String, Path, description = "Playbook name"),
        ("version" = String, Path, description = "`sha256:<hex>` or a unique prefix of the hex digits")
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The source (role viewer)", body = VersionSource),
        (status = 400, description = "The prefix matches several versions", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "No such version of this playbook", body = ErrorBody)
    ))]
pub(super) async fn version(
    State(api): State<Api>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionSource>, ApiError> {
    caller.require(Role::Viewer)?;
    let store = api.inner.engine.store();
    let wanted = version.strip_prefix("sha256:").unwrap_or(&version);
    let mut known: Vec<String> = store
        .playbook_history(&name)?
        .into_iter()
        .map(|load| load.version)
        .collect();
    known.sort();
    known.dedup();
    let matching: Vec<&String> = known
        .iter()
        .filter(|candidate| {
            let hex = candidate.strip_prefix("sha256:").unwrap_or(candidate);
            !wanted.is_empty() && hex.starts_with(wanted)
        })
        .collect();
    let found = match matching.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(ApiError::NotFound(format!(
                "playbook `{name}` has no version {version}"
            )));
        }
        many => {
            return Err(ApiError::BadRequest(format!(
                "{version} matches {} versions of `{name}`; give more digits",
                many.len()
            )));
        }
    };
    let source = store
        .playbook_source(&found)?
        .ok_or_else(|| ApiError::NotFound(format!("the source of {found} is not stored")))?;
    Ok(Json(VersionSource {
        name,
        version: found,
        source,
    }))
}

async fn set_enabled(
    api: &Api,
    caller: &Caller,
    name: String,
    enabled: bool,
) -> Result<Json<EnabledView>, ApiError> {
    caller.require(Role::Editor)?;
    loaded(api, &name)?;
    let changed = api
        .inner
        .engine
        .set_enabled(&name, enabled, &caller.actor())
        .await?;
    if changed {
        tracing::info!(playbook = %name, enabled, by = %caller.name, "playbook enabled or disabled through the API");
    }
    Ok(Json(EnabledView {
        name,
        enabled,
        changed,
    }))
}

/// Enable a playbook (audited with the token's name).
#[utoipa::path(post, path = "/api/v1/playbooks/{name}/enable", tag = "playbooks",
    params(("name" = String, Path, description = "Playbook name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Enabled (role editor)", body = EnabledView),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "Not loaded", body = ErrorBody)
    ))]
pub(super) async fn enable(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<EnabledView>, ApiError> {
    set_enabled(&api, &caller, name, true).await
}

/// Disable a playbook: it starts no new runs (open runs go on); persisted and audited with the
/// token's name.
#[utoipa::path(post, path = "/api/v1/playbooks/{name}/disable", tag = "playbooks",
    params(("name" = String, Path, description = "Playbook name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Disabled (role editor)", body = EnabledView),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "Not loaded", body = ErrorBody)
    ))]
pub(super) async fn disable(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<EnabledView>, ApiError> {
    set_enabled(&api, &caller, name, false).await
}
