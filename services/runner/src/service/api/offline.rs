//! A playbook's offline tests (`quench test`) run from the console against the editor's text,
//! before it is applied: the test files in the playbooks directory's `tests/` that name a
//! playbook of the same name, or one test file sent with the request. The same runner as
//! `quench test` (a temporary store, a manual clock, scripted actions): nothing leaves the
//! process, nothing is applied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::State;
use axum::response::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, Body, ErrorBody};
use crate::config::Role;
use crate::service::playbooks::declared_name;
use crate::testing::{self, TestFile};

/// Longest a request's tests may run before the answer gives up on them.
const TEST_TIME: Duration = Duration::from_secs(60);

/// A playbook's text to test, and optionally the test file to run against it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct TestRequest {
    /// The playbook's YAML (e.g. the editor's text, not yet applied).
    pub(crate) source: String,
    /// A test file's YAML (`quench test`'s format; its `playbook` is ignored). Without it, the
    /// test files in the playbooks directory's `tests/` whose playbook has the same name run.
    #[serde(default)]
    pub(crate) tests: Option<String>,
}

/// What the tests found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct TestRun {
    pub(crate) playbook: String,
    pub(crate) files: Vec<TestFileResult>,
    /// Cases that passed and failed, over every file.
    pub(crate) passed: usize,
    pub(crate) failed: usize,
}

/// One test file's cases, or why it could not run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct TestFileResult {
    pub(crate) file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    pub(crate) cases: Vec<TestCaseResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct TestCaseResult {
    pub(crate) name: String,
    pub(crate) passed: bool,
    /// What did not meet the case's expectations.
    pub(crate) failures: Vec<String>,
}

/// Run a playbook's offline tests against the given text, without applying it.
#[utoipa::path(post, path = "/api/v1/test", tag = "playbooks",
    request_body = TestRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The tests ran (role editor): `failed` counts the cases that failed", body = TestRun),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 422, description = "The playbook does not compile (`diagnostics`), or the test file does not follow the format (`invalid_tests`)", body = ErrorBody),
        (status = 503, description = "The tests ran longer than a minute", body = ErrorBody)
    ))]
pub(super) async fn test(
    State(api): State<Api>,
    caller: Caller,
    Body(request): Body<TestRequest>,
) -> Result<Json<TestRun>, ApiError> {
    caller.require(Role::Editor)?;
    // One test run at a time: each is a whole engine.
    let permit = api
        .inner
        .testing
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let library = api.inner.library.clone();
    let checked = {
        let source = request.source.clone();
        tokio::task::spawn_blocking(move || library.check(&source, "<request>"))
            .await
            .map_err(|error| ApiError::Internal(format!("the check stopped: {error}")))?
    };
    let (Some(playbook), _) = checked else {
        return Err(ApiError::InvalidPlaybook(checked.1));
    };
    let files = match &request.tests {
        Some(text) => {
            let file = TestFile::parse("<request>", text).map_err(|report| ApiError::Refused {
                status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_tests",
                message: report,
            })?;
            vec![(PathBuf::from("<request>"), file)]
        }
        None => naming(&api.inner.library.dir().join("tests"), &playbook.name),
    };
    let source = request.source;
    let name = playbook.name.clone();
    let running = tokio::task::spawn_blocking(move || {
        let files = run_files(files, &source);
        drop(permit);
        files
    });
    let files = tokio::time::timeout(TEST_TIME, running)
        .await
        .map_err(|_| {
            ApiError::Unavailable(format!(
                "the tests of {name} ran longer than {} s",
                TEST_TIME.as_secs()
            ))
        })?
        .map_err(|error| ApiError::Internal(format!("the tests stopped: {error}")))?;
    let (passed, failed) =
        files
            .iter()
            .flat_map(|file| &file.cases)
            .fold((0, 0), |(passed, failed), case| {
                if case.passed {
                    (passed + 1, failed)
                } else {
                    (passed, failed + 1)
                }
            });
    tracing::info!(playbook = %playbook.name, by = %caller.name, passed, failed, "playbook tests run through the API");
    Ok(Json(TestRun {
        playbook: playbook.name.clone(),
        files,
        passed,
        failed,
    }))
}

/// The test files in `dir` whose playbook file declares the name `name` (a test file that
/// cannot be read or parsed belongs to no playbook we can tell, and is left out).
fn naming(dir: &Path, name: &str) -> Vec<(PathBuf, TestFile)> {
    if !dir.is_dir() {
        return Vec::new();
    }
    let Ok(paths) = testing::collect(&[dir.to_path_buf()]) else {
        return Vec::new();
    };
    paths
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            let file = TestFile::parse(&path.display().to_string(), &text).ok()?;
            // The name the file declares, whether or not it compiles (it may be the refused
            // file the editor is fixing).
            let source = std::fs::read_to_string(testing::playbook_of(&path, &file)).ok()?;
            (declared_name(&source)? == name).then_some((path, file))
        })
        .collect()
}

/// Runs each file's cases against `source` on a runtime of its own (this is a blocking thread).
fn run_files(files: Vec<(PathBuf, TestFile)>, source: &str) -> Vec<TestFileResult> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return vec![TestFileResult {
                file: String::new(),
                error: Some(format!("cannot start the test runtime: {error}")),
                cases: Vec::new(),
            }];
        }
    };
    files
        .into_iter()
        .map(|(path, file)| {
            let shown = path.display().to_string();
            let report = runtime
                .block_on(testing::run_with_source(
                    &path,
                    &file,
                    Path::new("<editor>"),
                    source,
                ))
                .map_err(|error| error.to_string());
            match report {
                Ok(report) => TestFileResult {
                    file: shown,
                    error: None,
                    cases: report
                        .cases
                        .into_iter()
                        .map(|case| TestCaseResult {
                            name: case.name,
                            passed: case.failures.is_empty(),
                            failures: case.failures,
                        })
                        .collect(),
                },
                Err(error) => TestFileResult {
                    file: shown,
                    error: Some(error),
                    cases: Vec::new(),
                },
            }
        })
        .collect()
}
