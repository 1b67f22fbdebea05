//! Request signatures: the three HMAC-SHA256 schemes the gateway verifies (Slack, quench
//! findings, GitHub; see the crate docs) and timestamp freshness; what was accepted is
//! remembered by `replay`. The `sign_*` functions are public so that scanners and tests written
//! in Rust sign exactly as the gateway verifies.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::refusal::Refusal;

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from the gateway's clock, either way.
pub const MAX_SKEW_SECS: i64 = 300;

/// Slack's header with the request's signature.
pub const SLACK_SIGNATURE: &str = "x-slack-signature";
/// Slack's header with the request's Unix time.
pub const SLACK_TIMESTAMP: &str = "x-slack-request-timestamp";
/// The findings webhook's signature header.
pub const QUENCH_SIGNATURE: &str = "x-quench-signature";
/// The findings webhook's timestamp header.
pub const QUENCH_TIMESTAMP: &str = "x-quench-timestamp";
/// GitHub's signature header.
pub const GITHUB_SIGNATURE: &str = "x-hub-signature-256";

/// `v0=<hex>`: Slack's signature of `v0:{timestamp}:{body}`.
pub fn sign_slack(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(
            secret,
            &[b"v0:", timestamp.to_string().as_bytes(), b":", body]
        ))
    )
}

/// `sha256=<hex>`: the findings webhook's signature of `v1:{timestamp}:{body}`.
pub fn sign_findings(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(
            secret,
            &[b"v1:", timestamp.to_string().as_bytes(), b":", body]
        ))
    )
}

/// `sha256=<hex>`: GitHub's signature of the body.
pub fn sign_github(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(mac(secret, &[body])))
}

fn keyed(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

fn mac(secret: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed(secret);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A verified signature: the MAC bytes (the replay cache's key) and the signed timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub mac: [u8; 32],
    pub timestamp: i64,
}

/// Checks Slack's headers against the body.
pub fn verify_slack(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Verified, Refusal> {
    let timestamp = timestamp(headers, SLACK_TIMESTAMP, now)?;
    let claimed = claimed_mac(headers, SLACK_SIGNATURE, "v0=")?;
    let stamp = timestamp.to_string();
    check(secret, &[b"v0:", stamp.as_bytes(), b":", body], &claimed)?;
    Ok(Verified {
        mac: claimed,
        timestamp,
    })
}

/// Checks the findings webhook's headers against the body.
pub fn verify_findings(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Verified, Refusal> {
    let timestamp = timestamp(headers, QUENCH_TIMESTAMP, now)?;
    let claimed = claimed_mac(headers, QUENCH_SIGNATURE, "sha256=")?;
    let stamp = timestamp.to_string();
    check(secret, &[b"v1:", stamp.as_bytes(), b":", body], &claimed)?;
    Ok(Verified {
        mac: claimed,
        timestamp,
    })
}

/// Checks GitHub's signature header against the body.
pub fn verify_github(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    let claimed = claimed_mac(headers, GITHUB_SIGNATURE, "sha256=")?;
    check(secret, &[body], &claimed)
}

/// The signed timestamp, refused when missing, malformed, or too far from `now`.
fn timestamp(headers: &HeaderMap, name: &'static str, now: i64) -> Result<i64, Refusal> {
    let value = headers
        .get(name)
        .ok_or(Refusal::MissingHeader(name))?
        .to_str()
        .map_err(|_| Refusal::BadTimestamp)?;
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::BadTimestamp);
    }
    let timestamp: i64 = value.parse().map_err(|_| Refusal::BadTimestamp)?;
    if (now - timestamp).abs() > MAX_SKEW_SECS {
        return Err(Refusal::StaleTimestamp);
    }
    Ok(timestamp)
}

/// The MAC a header claims: `<prefix><64 hex digits>`.
fn claimed_mac(headers: &HeaderMap, name: &'static str, prefix: &str) -> Result<[u8; 32], Refusal> {
    let value = headers
        .get(name)
        .ok_or(Refusal::MissingHeader(name))?
        .to_str()
        .map_err(|_| Refusal::BadSignature)?;
    let digits = value.strip_prefix(prefix).ok_or(Refusal::BadSignature)?;
    let mut mac = [0u8; 32];
    hex::decode_to_slice(digits, &mut mac).map_err(|_| Refusal::BadSignature)?;
    Ok(mac)
}

/// Recomputes the MAC and compares it in constant time (`verify_slice`).
fn check(secret: &str, parts: &[&[u8]], claimed: &[u8; 32]) -> Result<(), Refusal> {
    let mut mac = keyed(secret);
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(claimed).map_err(|_| Refusal::BadSignature)
}

/// The current Unix time in seconds.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn slack_signatures_verify_and_refuse_as_documented() {
        let now = 1_700_000_000;
        let body = b"payload=%7B%7D";
        let good = headers(&[
            (SLACK_TIMESTAMP, now.to_string()),
            (SLACK_SIGNATURE, sign_slack("s3cret", now, body)),
        ]);
        assert!(verify_slack("s3cret", &good, body, now).is_ok());
        assert_eq!(
            verify_slack("other", &good, body, now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify_slack("s3cret", &good, b"payload=x", now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify_slack("s3cret", &good, body, now + 301),
            Err(Refusal::StaleTimestamp)
        );
        assert_eq!(
            verify_slack("s3cret", &good, body, now - 301),
            Err(Refusal::StaleTimestamp)
        );
        let missing = headers(&[(SLACK_TIMESTAMP, now.to_string())]);
        assert_eq!(
            verify_slack("s3cret", &missing, body, now),
            Err(Refusal::MissingHeader(SLACK_SIGNATURE))
        );
        let negative = headers(&[
            (SLACK_TIMESTAMP, "-5".to_owned()),
            (SLACK_SIGNATURE, sign_slack("s3cret", -5, body)),
        ]);
        assert_eq!(
            verify_slack("s3cret", &negative, body, now),
            Err(Refusal::BadTimestamp)
        );
    }
}
