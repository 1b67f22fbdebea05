//! Connecting to NATS with the configured credentials (`[nats]`), as every quench process does:
//! the runner as `quench`, the gateway as `quench-gateway`. Fails fast, naming the URL, when
//! NATS is not there; once connected, async-nats reconnects on its own and the connection's
//! losses and returns are logged.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::NatsConfig;

/// Why the connection could not be made (a process exits 69 on it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read nats.credentials_file {}: {error}", path.display())]
    Credentials {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "cannot reach NATS at {url}: {error}. Is nats-server running there with these credentials? (`quench up` starts one locally)"
    )]
    Unreachable {
        url: String,
        error: async_nats::ConnectError,
    },
}

/// Connects with the configured credentials, naming the connection `name` (as NATS monitoring
/// shows it).
pub async fn connect_as(config: &NatsConfig, name: &str) -> Result<async_nats::Client, Error> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(config.inbox_prefix.as_str())
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting")
                }
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|error| Error::Credentials {
                path: path.clone(),
                error,
            })?;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> = config
        .urls()
        .iter()
        .filter_map(|url| url.parse().ok())
        .collect();
    options
        .connect(servers)
        .await
        .map_err(|error| Error::Unreachable {
            url: config.url.clone(),
            error,
        })
}
