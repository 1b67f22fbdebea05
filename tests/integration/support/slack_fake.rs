//! A fake of the Slack Web API as slack-morphism 2.31.1 calls it.
