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
