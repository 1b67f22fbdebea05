//! Query and path values shared by the routes, parsed into the ranges the OpenAPI document
//! declares: a sequence number is an `int64` that is not negative, and a page size lies between
//! 1 and the route's maximum. A value outside them is a 400, never silently clamped or wrapped.

use std::str::FromStr;

use serde::Deserialize;

use super::error::ApiError;

/// A sequence number (of the audit log or a stream): OpenAPI's `int64`, not negative. Read as
/// an `i64` so a value past `i64::MAX` is refused like any other out-of-range number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub(crate) struct Sequence(pub(crate) u64);

impl TryFrom<i64> for Sequence {
    type Error = String;

    fn try_from(value: i64) -> Result<Sequence, String> {
        u64::try_from(value)
            .map(Sequence)
            .map_err(|_| format!("{value} is negative; sequence numbers start at 1"))
    }
}

impl FromStr for Sequence {
    type Err = ApiError;

    fn from_str(text: &str) -> Result<Sequence, ApiError> {
        text.parse::<i64>()
            .map_err(|error| format!("`{text}` is not a sequence number: {error}"))
            .and_then(Sequence::try_from)
            .map_err(ApiError::BadRequest)
    }
}

/// The length of a run id: a UUID as text (`0195f0c2-7b3a-7c4e-9a1d-3f6b2e8c9d10`).
pub(crate) const RUN_ID_LENGTH: usize = 36;

/// The start of a run id (`id_prefix`): at most [`RUN_ID_LENGTH`] characters, each lower-case
/// hex or `-`. A longer prefix, or one with any other character, can match no run: a 400 that
/// says why, rather than an empty page (and no scan of the store for it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct RunIdPrefix(pub(crate) String);

impl TryFrom<String> for RunIdPrefix {
    type Error = String;

    fn try_from(text: String) -> Result<RunIdPrefix, String> {
        let length = text.chars().count();
        if length > RUN_ID_LENGTH {
            return Err(format!(
                "id_prefix: {length} characters is longer than a run id ({RUN_ID_LENGTH}); give at most the whole id"
            ));
        }
        if let Some(other) = text
            .chars()
            .find(|character| !matches!(character, '0'..='9' | 'a'..='f' | '-'))
        {
            return Err(format!(
                "id_prefix: `{text}` holds {other:?}, which no run id does (run ids are lower-case hex digits and `-`)"
            ));
        }
        Ok(RunIdPrefix(text))
    }
}

/// The page size a route serves: `default` when none is asked for; 400 outside `1..=max`.
pub(crate) fn limit(requested: Option<u32>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(requested) = requested else {
        return Ok(default);
    };
    usize::try_from(requested)
        .ok()
        .filter(|limit| (1..=max).contains(limit))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "limit: {requested} is out of range; ask for 1 to {max} per page"
            ))
        })
}
