//! The Slack Web API connector (slack-morphism 2.31.1) for `slack.api_url`: the runner's Slack
//! connector posts through it, the gateway opens Socket Mode through it. What quench writes in
//! Slack messages (mrkdwn escaping, approval buttons) is a wire format: `quench_proto::slack`.

use slack_morphism::prelude::{SlackClientHyperConnector, SlackClientHyperHttpsConnector};

use crate::http::check_base_url;

/// A slack-morphism connector for `api_url` (`https://slack.com/api`, or a local fake in
/// tests): https, or plain http only to a loopback fake (see [`check_base_url`]), so a token
/// never crosses a network in the clear.
pub fn connector(api_url: &str) -> Result<SlackClientHyperHttpsConnector, String> {
    check_base_url(api_url).map_err(|problem| format!("slack.api_url `{api_url}` {problem}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|error| format!("cannot load the system's TLS roots: {error}"))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(SlackClientHyperConnector::with_connector(https)
        .with_slack_api_url(api_url.trim_end_matches('/')))
}
