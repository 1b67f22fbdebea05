//! What the estate inventory reads from the Admin API: one walk over the organization's lists
//! (projects, and per active project its keys, service accounts and people; admin keys; users)
//! and the audit log's key and service-account events since a time. Rate limits are waited out
//! page by page ([`OpenAi::walk_patiently`]), so a large organization's walk does not start over.

use reqwest::Method;
use serde_json::Value;

use super::OpenAi;
use super::transport::{PAGE_LIMIT, Paging, Patience};
use crate::engine::ActionError;

/// One page is asked for again up to 8 times after a 429 or a 5xx; a list may take up to
/// 20,000 pages (2,000,000 objects: the first read of a large organization's audit log).
const PATIENCE: Patience = Patience {
    retries: 8,
    max_pages: 20_000,
};

/// The audit-log event types that change what the inventory knows between passes.
pub const WATCHED_EVENTS: &[&str] = &[
    "api_key.created",
    "api_key.updated",
    "api_key.deleted",
    "service_account.created",
    "service_account.updated",
    "service_account.deleted",
];

/// The lists of one walk, as OpenAI answered them.
#[derive(Debug, Default)]
pub struct EstateLists {
    /// Every project, archived ones included.
    pub projects: Vec<Value>,
    /// (project id, key) for every active project.
    pub keys: Vec<(String, Value)>,
    /// (project id, service account) for every active project.
    pub service_accounts: Vec<(String, Value)>,
    /// (project id, project user) for every active project.
    pub project_users: Vec<(String, Value)>,
    pub admin_keys: Vec<Value>,
    pub users: Vec<Value>,
    /// (project id, its data settings) for every active project.
    pub settings: Vec<(String, ProjectSettings)>,
    /// Key id → what it used over the last [`USAGE_DAYS`] days.
    pub usage: std::collections::BTreeMap<String, super::Capabilities>,
}

/// Days of usage a pass reads for the keys' capabilities (passes overlap: what a key used is
/// kept as a union, so a window longer than the interval loses nothing).
pub(super) const USAGE_DAYS: i64 = 7;

/// What decides where a project's data goes, as OpenAI answered; `None` where OpenAI refused
/// to say (an endpoint this organization does not have, a role that may not read it).
#[derive(Debug, Default)]
pub struct ProjectSettings {
    /// `ProjectHostedToolPermissions`.
    pub hosted_tools: Option<Value>,
    /// `ProjectModelPermissions`.
    pub model_permissions: Option<Value>,
    /// `ProjectDataRetention`.
    pub data_retention: Option<Value>,
    /// The project's certificates.
    pub certificates: Option<Vec<Value>>,
}

/// A setting's answer, or `None` when OpenAI refused it for good (a rate limit or an outage
/// that outlasts the patience fails the walk instead: a pass must not take "could not read"
/// for "changed").
fn setting<T>(answer: Result<T, ActionError>, what: &str) -> Result<Option<T>, ActionError> {
    match answer {
        Ok(value) => Ok(Some(value)),
        Err(error) if !error.is_retryable() => {
            tracing::debug!(%error, what, "a project setting cannot be read; left unknown");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

impl OpenAi {
    async fn list(&self, segments: &[&str], about: &str) -> Result<Vec<Value>, ActionError> {
        let request = self.request(Method::GET, segments, about)?;
        Ok(self
            .walk_patiently(&request, Paging::Cursor, PAGE_LIMIT, PATIENCE)
            .await?)
    }

    /// Walks the organization's lists.
    pub async fn estate(&self) -> Result<EstateLists, ActionError> {
        let mut lists = EstateLists::default();
        let request = self
            .request(Method::GET, &["organization", "projects"], "projects")?
            .query("include_archived", true);
        lists.projects = self
            .walk_patiently(&request, Paging::Cursor, PAGE_LIMIT, PATIENCE)
            .await?;
        let active: Vec<String> = lists
            .projects
            .iter()
            .filter(|project| project["status"] != "archived")
            .filter_map(|project| project["id"].as_str().map(str::to_owned))
            .collect();
        for project in &active {
            let request = self
                .request(
                    Method::GET,
                    &["organization", "projects", project, "api_keys"],
                    format!("API keys of project {project}"),
                )?
                .query("owner_project_access", "any");
            for key in self
                .walk_patiently(&request, Paging::Cursor, PAGE_LIMIT, PATIENCE)
                .await?
            {
                lists.keys.push((project.clone(), key));
            }
            for account in self
                .list(
                    &["organization", "projects", project, "service_accounts"],
                    &format!("service accounts of project {project}"),
                )
                .await?
            {
                lists.service_accounts.push((project.clone(), account));
            }
            for user in self
                .list(
                    &["organization", "projects", project, "users"],
                    &format!("people of project {project}"),
                )
                .await?
            {
                lists.project_users.push((project.clone(), user));
            }
            let settings = self.project_settings(project).await?;
            lists.settings.push((project.clone(), settings));
        }
        lists.admin_keys = self
            .list(&["organization", "admin_api_keys"], "admin API keys")
            .await?;
        lists.users = self
            .list(&["organization", "users"], "organization users")
            .await?;
        let until = chrono::Utc::now().timestamp();
        lists.usage = self
            .capabilities_by_key(until - USAGE_DAYS * 86_400, until)
            .await?;
        Ok(lists)
    }

    async fn object(&self, segments: &[&str], about: &str) -> Result<Value, ActionError> {
        let request = self.request(Method::GET, segments, about)?;
        Ok(self.json_patiently(&request, PATIENCE.retries).await?)
    }

    async fn project_settings(&self, project: &str) -> Result<ProjectSettings, ActionError> {
        let path = |leaf: &'static str| ["organization", "projects", project, leaf];
        Ok(ProjectSettings {
            hosted_tools: setting(
                self.object(
                    &path("hosted_tool_permissions"),
                    &format!("hosted tools of project {project}"),
                )
                .await,
                "hosted tools",
            )?,
            model_permissions: setting(
                self.object(
                    &path("model_permissions"),
                    &format!("model permissions of project {project}"),
                )
                .await,
                "model permissions",
            )?,
            data_retention: setting(
                self.object(
                    &path("data_retention"),
                    &format!("data retention of project {project}"),
                )
                .await,
                "data retention",
            )?,
            certificates: setting(
                self.list(
                    &path("certificates"),
                    &format!("certificates of project {project}"),
                )
                .await,
                "certificates",
            )?,
        })
    }

    /// The audit log's [`WATCHED_EVENTS`] with `effective_at` at or after `since` (Unix
    /// seconds), oldest first.
    pub async fn watched_events_since(&self, since: i64) -> Result<Vec<Value>, ActionError> {
        let mut request = self
            .request(
                Method::GET,
                &["organization", "audit_logs"],
                "audit log events",
            )?
            .query("effective_at[gte]", since);
        for event_type in WATCHED_EVENTS {
            request = request.query("event_types[]", event_type);
        }
        let mut events = self
            .walk_patiently(&request, Paging::Cursor, PAGE_LIMIT, PATIENCE)
            .await?;
        // OpenAI lists newest first.
        events.reverse();
        events.sort_by_key(|event| event["effective_at"].as_i64().unwrap_or(i64::MIN));
        Ok(events)
    }
}
