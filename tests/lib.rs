//! quench integration tests crate (the tests live in integration/)
