//! The `http.request` connector.
