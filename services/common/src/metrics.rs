//! What the `/metrics` endpoints of both processes share: the runner's registry and the
//! gateway's counters are rendered as OpenMetrics text and served with this content type.

/// The `Content-Type` of an OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
