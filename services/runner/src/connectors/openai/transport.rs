//! Sending one request to OpenAI and classifying what comes back ([`classify`], the only place
//! where statuses become errors), walking paginated lists, and the checks on ids that go into
//! URL paths.

use std::collections::HashSet;

use reqwest::header::{AUTHORIZATION, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use super::OpenAi;
use crate::connectors::{retry_after, transport_error};
use crate::engine::ActionError;

/// Most pages one list may take, so a server that never stops saying `has_more` cannot keep a
/// step busy forever.
pub(super) const MAX_PAGES: usize = 1000;

/// Objects asked for per page of a cursor list (the spec's maximum).
pub(super) const PAGE_LIMIT: u32 = 100;

/// Longest id accepted from a playbook.
const MAX_ID_LENGTH: usize = 256;

/// One request to the Admin API, built before it is sent so a dry run can show it.
#[derive(Debug, Clone)]
pub(super) struct Request {
    method: Method,
    url: Url,
    query: Vec<(String, String)>,
    body: Option<Value>,
    /// What the request is about, for messages: "API key key_1 in project proj_1".
    about: String,
}

impl Request {
    /// Adds a query parameter (repeat the name for arrays, e.g. `event_types[]`).
    pub(super) fn query(mut self, name: &str, value: impl ToString) -> Request {
        self.query.push((name.to_owned(), value.to_string()));
        self
    }

    /// Sets the JSON body.
    pub(super) fn body(mut self, body: Value) -> Request {
        self.body = Some(body);
        self
    }

    /// What a dry run records: the method, the path under the host and the body. No header, so
    /// no credential.
    pub(super) fn describe(&self) -> Value {
        json!({
            "method": self.method.as_str(),
            "path": self.url.path(),
            "body": self.body,
        })
    }

    /// The URL path, for messages.
    pub(super) fn path(&self) -> &str {
        self.url.path()
    }

    fn target(&self) -> String {
        format!("{} {}", self.method, self.url.path())
    }
}

/// A successful answer.
#[derive(Debug)]
pub(super) enum Reply {
    /// 2xx, with the JSON body (`null` when empty).
    Done(Value),
    /// 404 to a DELETE: the object is not there (any more).
    Gone,
}

/// A failed request: the classified error and, when OpenAI answered, the status.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) status: Option<StatusCode>,
    pub(super) error: ActionError,
}

impl From<Failure> for ActionError {
    fn from(failure: Failure) -> ActionError {
        failure.error
    }
}

impl From<ActionError> for Failure {
    fn from(error: ActionError) -> Failure {
        Failure {
            status: None,
            error,
        }
    }
}

/// How a list says where its next page starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Paging {
    /// `{data, has_more, last_id}`; the next request sends `after=<last_id>`.
    Cursor,
    /// `{data, has_more, next_page}`; the next request sends `page=<next_page>` (usage).
    Page,
}

impl OpenAi {
    /// A request to `base URL / segments…`, each segment percent-encoded. Segments from a
    /// playbook must have passed [`id`] already; this check is the backstop for ids from
    /// OpenAI's own answers.
    pub(super) fn request(
        &self,
        method: Method,
        segments: &[&str],
        about: impl Into<String>,
    ) -> Result<Request, ActionError> {
        let mut url = self.base.clone();
        for segment in segments {
            if segment.is_empty() || matches!(*segment, "." | "..") {
                return Err(ActionError::permanent(format!(
                    "`{segment}` cannot be part of an OpenAI API path"
                )));
            }
        }
        url.path_segments_mut()
            .map_err(|()| ActionError::permanent("the OpenAI base URL cannot take a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(Request {
            method,
            url,
            query: Vec::new(),
            body: None,
            about: about.into(),
        })
    }

    /// Sends `request` and classifies the answer.
    pub(super) async fn send(&self, request: &Request) -> Result<Reply, Failure> {
        let Some(authorization) = &self.authorization else {
            return Err(Failure {
                status: None,
                error: ActionError::permanent(
                    "openai.admin_key is not configured, so quench cannot call the OpenAI Admin API (set it, or run the playbook in dry_run mode)",
                ),
            });
        };
        let mut builder = self
            .http
            .request(request.method.clone(), request.url.clone())
            .timeout(self.request_timeout)
            .header(AUTHORIZATION, authorization.clone());
        if let Some(organization) = &self.organization {
            builder = builder.header("OpenAI-Organization", organization.clone());
        }
        if !request.query.is_empty() {
            builder = builder.query(&request.query);
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let response = builder
            .send()
            .await
            .map_err(|error| Failure::from(transport_error("OpenAI", error)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|error| Failure::from(transport_error("OpenAI", error)))?;
        let reply = classify(request, status, &headers, &body);
        if let Err(failure) = &reply {
            tracing::debug!(
                method = %request.method,
                path = %quench_proto::redact_str(request.url.path()),
                status = status.as_u16(),
                retryable = failure.error.is_retryable(),
                "OpenAI request failed"
            );
        }
        reply
    }

    /// Sends a request whose success carries a JSON body.
    pub(super) async fn json(&self, request: &Request) -> Result<Value, Failure> {
        match self.send(request).await? {
            Reply::Done(body) => Ok(body),
            // Only DELETEs are `Gone`; a 404 elsewhere is already an error.
            Reply::Gone => Err(Failure::from(ActionError::permanent(format!(
                "OpenAI has no {}",
                request.about
            )))),
        }
    }

    /// Every item of a paginated list, following `has_more` for at most [`MAX_PAGES`] pages.
    /// A cursor OpenAI already gave once stops the walk with a permanent error: following it
    /// again would loop.
    pub(super) async fn walk(
        &self,
        request: &Request,
        paging: Paging,
        limit: u32,
    ) -> Result<Vec<Value>, Failure> {
        self.walk_patiently(request, paging, limit, 0).await
    }

    /// [`OpenAi::walk`], asking for a page again up to `patience` times when OpenAI answers
    /// it with a retryable failure (429 and 5xx), after its `Retry-After` or a backoff: a
    /// long walk (the inventory's) does not start over for one rate-limited page.
    pub(super) async fn walk_patiently(
        &self,
        request: &Request,
        paging: Paging,
        limit: u32,
        patience: u32,
    ) -> Result<Vec<Value>, Failure> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen = HashSet::new();
        for page in 1..=MAX_PAGES {
            let mut this = request.clone().query("limit", limit);
            if let Some(cursor) = &cursor {
                let name = match paging {
                    Paging::Cursor => "after",
                    Paging::Page => "page",
                };
                this = this.query(name, cursor);
            }
            let body = self.json_patiently(&this, patience).await?;
            let Some(data) = body.get("data").and_then(Value::as_array) else {
                return Err(broken(request, "an answer without a `data` list"));
            };
            items.extend(data.iter().cloned());
            if body.get("has_more").and_then(Value::as_bool) != Some(true) {
                return Ok(items);
            }
            let next = match paging {
                Paging::Cursor => body
                    .get("last_id")
                    .and_then(Value::as_str)
                    .or_else(|| data.last().and_then(|item| item.get("id")?.as_str())),
                Paging::Page => body.get("next_page").and_then(Value::as_str),
            };
            let Some(next) = next.filter(|next| !next.is_empty()) else {
                return Err(broken(request, "`has_more: true` without a cursor"));
            };
            if !seen.insert(next.to_owned()) {
                return Err(broken(
                    request,
                    &format!("the cursor `{next}` a second time (page {page})"),
                ));
            }
            cursor = Some(next.to_owned());
        }
        Err(Failure::from(ActionError::permanent(format!(
            "listing {} took more than {MAX_PAGES} pages; stopped",
            request.about
        ))))
    }
}

impl OpenAi {
    /// [`OpenAi::json`], again up to `patience` times after a retryable failure.
    pub(super) async fn json_patiently(
        &self,
        request: &Request,
        patience: u32,
    ) -> Result<Value, Failure> {
        /// Longest wait between two tries, whatever `Retry-After` says.
        const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
        let mut attempt = 0;
        loop {
            match self.json(request).await {
                Err(Failure {
                    error:
                        ActionError::Retryable {
                            message,
                            retry_after,
                        },
                    ..
                }) if attempt < patience => {
                    attempt += 1;
                    let backoff = std::time::Duration::from_millis(250 << attempt.min(8));
                    let wait = retry_after.unwrap_or(backoff).min(MAX_WAIT);
                    tracing::debug!(%message, attempt, ?wait, "OpenAI asked to wait; asking again");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }
}

/// A list whose pagination cannot be followed.
fn broken(request: &Request, what: &str) -> Failure {
    Failure::from(ActionError::permanent(format!(
        "OpenAI gave {what} while listing {} (GET {}); stopped so it cannot loop",
        request.about,
        request.path()
    )))
}

/// The only mapping of HTTP answers to outcomes:
/// - 2xx → [`Reply::Done`]; 404 to a DELETE → [`Reply::Gone`] (the caller reports
///   `already_done`);
/// - 429, 408, 409 and 5xx → retryable, with `Retry-After` when sent;
/// - 404 elsewhere → permanent, naming the object;
/// - every other status (400, 401, 403, …) → permanent, with OpenAI's own `error.message`.
///
/// Every message goes through [`quench_proto::redact_str`]: OpenAI echoes (part of) a key it
/// refuses, and a playbook may put a secret where an id belongs.
fn classify(
    request: &Request,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, Failure> {
    if status.is_success() {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Reply::Done(Value::Null));
        }
        return serde_json::from_slice(body).map(Reply::Done).map_err(|_| {
            failure(
                status,
                ActionError::retryable(format!(
                    "OpenAI answered {} with {status} but the body is not JSON",
                    request.target()
                )),
            )
        });
    }
    let target = request.target();
    let detail = detail(status, headers, body);
    let code = status.as_u16();
    let error = match code {
        404 if request.method == Method::DELETE => return Ok(Reply::Gone),
        404 => ActionError::permanent(format!(
            "OpenAI has no {} (404 on {target}): {detail}",
            request.about
        )),
        429 => ActionError::Retryable {
            message: format!("OpenAI rate-limited {target} (429): {detail}"),
            retry_after: retry_after(headers),
        },
        408 | 409 | 500..=599 => ActionError::Retryable {
            message: format!("OpenAI failed on {target} ({code}): {detail}"),
            retry_after: retry_after(headers),
        },
        401 => ActionError::permanent(format!(
            "OpenAI refused {target} (401): {detail}; check openai.admin_key (an Admin API key)"
        )),
        403 => ActionError::permanent(format!(
            "OpenAI refused {target} (403): {detail}; the admin key's owner may lack the role for this"
        )),
        _ => ActionError::permanent(format!("OpenAI refused {target} ({code}): {detail}")),
    };
    Err(failure(status, error))
}

fn failure(status: StatusCode, error: ActionError) -> Failure {
    Failure {
        status: Some(status),
        error: redact(error),
    }
}

/// OpenAI's `error.message` (or the start of a body that is not an `ErrorResponse`), plus the
/// request id OpenAI support asks for.
fn detail(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|body| body.get("error")?.get("message")?.as_str())
        .map(str::to_owned)
        .filter(|message| !message.trim().is_empty())
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("no message").to_owned()
            } else {
                text.chars().take(300).collect()
            }
        });
    match headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
    {
        Some(request_id) => format!("{message} (request id {request_id})"),
        None => message,
    }
}

/// The same error with every secret-shaped string in its message redacted.
pub(super) fn redact(error: ActionError) -> ActionError {
    match error {
        ActionError::Retryable {
            message,
            retry_after,
        } => ActionError::Retryable {
            message: quench_proto::redact_str(&message).into_owned(),
            retry_after,
        },
        ActionError::Permanent { message } => ActionError::Permanent {
            message: quench_proto::redact_str(&message).into_owned(),
        },
    }
}

/// Deserializes an action's rendered input; a mismatch is permanent and says where.
pub(super) fn parse_input<T: DeserializeOwned>(
    action: &str,
    input: &Value,
) -> Result<T, ActionError> {
    serde_path_to_error::deserialize(input).map_err(|error| {
        let path = error.path().to_string();
        let message = if path == "." {
            format!("invalid input for `{action}`: {}", error.inner())
        } else {
            format!(
                "invalid input for `{action}` at `{path}`: {}",
                error.inner()
            )
        };
        redact(ActionError::permanent(message))
    })
}

/// Checks an id from a playbook before it goes into a URL path: OpenAI ids are letters, digits,
/// `_`, `-`, `.` and `:`. A value that looks like a secret key gets its own message, since
/// that is the likely mistake.
pub(super) fn id<'a>(field: &str, value: &'a str) -> Result<&'a str, ActionError> {
    let value = value.trim();
    if let std::borrow::Cow::Owned(redacted) = quench_proto::redact_str(value) {
        return Err(ActionError::permanent(format!(
            "`{field}` looks like a secret key ({redacted}), not an OpenAI id; the Admin API \
             takes ids such as `key_…`"
        )));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    if value.is_empty()
        || value.len() > MAX_ID_LENGTH
        || matches!(value, "." | "..")
        || !value.chars().all(allowed)
    {
        let shown: String = value.chars().take(80).collect();
        return Err(ActionError::permanent(format!(
            "`{field}` is not an OpenAI id: `{}` (expected letters, digits, `_`, `-`, `.`, `:`)",
            shown.escape_debug()
        )));
    }
    Ok(value)
}
