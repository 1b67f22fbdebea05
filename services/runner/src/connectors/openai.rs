//! The OpenAI Admin API connector.
