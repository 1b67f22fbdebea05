//! What every webhook request passes before its signature is checked: a per-endpoint,
//! per-client rate limit (token buckets, `governor`) and a body size cap. Both are cheap, so a
//! flood costs the gateway little, and both refuse before anything is parsed.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::endpoint::Endpoint;
use crate::refusal::Refusal;

/// Token buckets per endpoint and client address, and the size cap.
#[derive(Debug)]
pub(crate) struct Limits {
    buckets: DefaultKeyedRateLimiter<(Endpoint, IpAddr)>,
    max_body_bytes: usize,
    trusted_proxies: Vec<IpAddr>,
}

impl Limits {
    pub(crate) fn new(
        per_second: u32,
        burst: u32,
        max_body_bytes: usize,
        trusted_proxies: Vec<IpAddr>,
    ) -> Limits {
        let quota = Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Limits {
            buckets: RateLimiter::keyed(quota),
            max_body_bytes,
            trusted_proxies,
        }
    }

    /// The client a request is counted against: the peer, or — when the peer is a trusted
    /// proxy — the right-most `X-Forwarded-For` address that is not a trusted proxy (the
    /// left-most entries are whatever the client chose to send).
    pub(crate) fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip().to_canonical();
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map_while(|entry| entry.parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .find(|ip| !self.trusted_proxies.contains(ip))
            .unwrap_or(peer)
    }

    /// Takes one token from the client's bucket for `endpoint`.
    pub(crate) fn check(&self, endpoint: Endpoint, client: IpAddr) -> Result<(), Refusal> {
        self.buckets
            .check_key(&(endpoint, client))
            .map_err(|not_until| Refusal::RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }

    /// Reads the body, refusing it as soon as it is known to be too large.
    pub(crate) async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Bytes, Refusal> {
        let too_large = Refusal::TooLarge {
            limit: self.max_body_bytes,
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body_bytes as u64) {
            return Err(too_large);
        }
        axum::body::to_bytes(body, self.max_body_bytes)
            .await
            .map_err(|_| too_large)
    }

    /// Forgets buckets that are full again, so idle clients cost no memory.
    pub(crate) fn forget_idle(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }
}

/// How often idle buckets are forgotten.
pub(crate) const FORGET_EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_behind_a_trusted_proxy_is_the_last_untrusted_forwarded_address() {
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let limits = Limits::new(1, 1, 1024, vec![proxy]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.1.1.1, 203.0.113.7, 10.0.0.1".parse().expect("value"),
        );
        let via_proxy = SocketAddr::new(proxy, 443);
        assert_eq!(
            limits.client(via_proxy, &headers),
            "203.0.113.7".parse::<IpAddr>().expect("ip")
        );
        let direct: SocketAddr = "198.51.100.2:1234".parse().expect("addr");
        assert_eq!(limits.client(direct, &headers), direct.ip());
        assert_eq!(limits.client(via_proxy, &HeaderMap::new()), proxy);
    }

    #[test]
    fn a_bucket_refuses_after_its_burst_and_says_when_to_retry() {
        let limits = Limits::new(1, 2, 1024, Vec::new());
        let client: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(limits.check(Endpoint::Slack, client).is_ok());
        assert!(limits.check(Endpoint::Slack, client).is_ok());
        match limits.check(Endpoint::Slack, client) {
            Err(Refusal::RateLimited { retry_after }) => {
                assert!(retry_after <= Duration::from_secs(1))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(
            limits.check(Endpoint::GitHub, client).is_ok(),
            "each endpoint has its own bucket"
        );
    }
}
