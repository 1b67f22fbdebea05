//! The Slack connector.
