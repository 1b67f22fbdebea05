//! Outbound HTTP for every quench process: the one `reqwest` client setup (rustls with ring,
//! timeouts, no automatic redirects), the policy for a service's base URL (https, or plain http
//! only to a loopback fake), and the `http.allow_hosts` entry syntax, parsed here so the config
//! check and the runner's `http.request` connector read entries the same way.

use std::net::IpAddr;
use std::time::Duration;

use url::Host;

/// Marks an allowlist entry whose DNS answers may be internal addresses.
pub const PRIVATE_PREFIX: &str = "private:";

/// Per-request timeout of outbound HTTP calls.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs rustls' ring provider as the process default, once. reqwest is built with
/// `rustls-no-provider` (no aws-lc C build) and panics when it builds a client without one; a
/// provider installed earlier by someone else is kept.
pub fn install_crypto_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Err means a default provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An HTTP client for connectors: rustls (ring), timeouts, no redirects unless a connector
/// follows them itself, and a `User-Agent` naming quench.
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .expect("the HTTP client's configuration is valid")
}

/// The settings of [`http_client`], for a connector that adds its own (the HTTP connector pins
/// the addresses it checked).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("quench/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
}

/// Checks a service's base URL: https, or plain http only to a loopback host (a local fake),
/// so a credential never crosses a network in the clear.
pub fn check_base_url(base: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(base).map_err(|error| format!("is not a URL: {error}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err("must use https (plain http only for a loopback fake)".to_owned()),
    }
}

/// One `http.allow_hosts` entry, parsed.
#[derive(Debug, Clone)]
pub struct AllowHost {
    pattern: Pattern,
    /// `None`: the scheme's default port only.
    port: Option<u16>,
    /// DNS may answer with internal addresses.
    private: bool,
    /// As written, for messages.
    entry: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// A host name, lowercase ASCII (IDNA), no trailing dot.
    Name(String),
    /// An address literal.
    Address(IpAddr),
    /// `*.suffix`: names ending in `.suffix`.
    Subdomains(String),
}

impl AllowHost {
    /// Parses one entry; the error says what is wrong and how to write it.
    pub fn parse(entry: &str) -> Result<AllowHost, String> {
        let (private, rest) = match entry.strip_prefix(PRIVATE_PREFIX) {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        if rest.is_empty() {
            return Err(
                "empty; write a host such as hooks.example.com, *.example.com or 10.0.0.5:8080"
                    .to_owned(),
            );
        }
        if rest.contains(|character: char| {
            character.is_whitespace() || matches!(character, '/' | '@' | '?' | '#' | '\\')
        }) {
            return Err(
                "not a host; write the host with an optional :port, such as \
                 hooks.example.com:8443, not a URL"
                    .to_owned(),
            );
        }
        let (host, port) = split_port(rest)?;
        let pattern = if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err("only one wildcard is allowed, as a leading `*.`".to_owned());
            }
            match Host::parse(suffix) {
                Ok(Host::Domain(suffix)) => {
                    let suffix = suffix.trim_end_matches('.').to_owned();
                    if suffix.split('.').count() < 2 || suffix.split('.').any(str::is_empty) {
                        return Err(
                            "too broad; a wildcard needs at least two labels after `*.`, \
                             such as *.example.com"
                                .to_owned(),
                        );
                    }
                    Pattern::Subdomains(suffix)
                }
                Ok(_) => {
                    return Err("a wildcard cannot cover addresses; name the address".to_owned());
                }
                Err(error) => return Err(format!("not a valid host: {error}")),
            }
        } else if host.contains('*') {
            return Err("a wildcard must be a leading `*.`, such as *.example.com".to_owned());
        } else {
            match Host::parse(host) {
                Ok(Host::Domain(name)) => {
                    let name = name.trim_end_matches('.').to_owned();
                    if name.is_empty() || name.split('.').any(str::is_empty) {
                        return Err("not a valid host name".to_owned());
                    }
                    Pattern::Name(name)
                }
                Ok(Host::Ipv4(ip)) => {
                    // `Host::parse` also reads `0x7f.1` and `2130706433`; an entry that looks like
                    // a name but is an address is a mistake (`private:8080`).
                    if ip.to_string() != host {
                        return Err(
                            "not a host name, and an IPv4 address must be written as four \
                             decimal numbers, such as 10.0.0.5"
                                .to_owned(),
                        );
                    }
                    Pattern::Address(IpAddr::V4(ip))
                }
                Ok(Host::Ipv6(ip)) => Pattern::Address(IpAddr::V6(ip)),
                Err(error) => return Err(format!("not a valid host: {error}")),
            }
        };
        Ok(AllowHost {
            pattern,
            port,
            private,
            entry: entry.to_owned(),
        })
    }

    /// Whether a URL's host is this entry's (the port is checked apart: [`AllowHost::port`]).
    pub fn matches_host(&self, host: &Host<String>) -> bool {
        match (&self.pattern, host) {
            (Pattern::Name(allowed), Host::Domain(name)) => allowed == name.trim_end_matches('.'),
            (Pattern::Subdomains(suffix), Host::Domain(name)) => name
                .trim_end_matches('.')
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (Pattern::Address(allowed), Host::Ipv4(ip)) => *allowed == IpAddr::V4(*ip),
            (Pattern::Address(allowed), Host::Ipv6(ip)) => *allowed == IpAddr::V6(*ip),
            _ => false,
        }
    }

    /// Whether `url`'s host is this entry's and its port the entry's (without a port in the
    /// entry: the scheme's default).
    pub fn admits(&self, url: &url::Url) -> bool {
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return false;
        };
        self.matches_host(&host.to_owned())
            && self
                .port
                .map_or(url.port().is_none(), |allowed| allowed == port)
    }

    /// The port the entry allows; `None`: the scheme's default port only.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether DNS may answer with internal addresses (`private:`).
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Whether the entry is a `*.suffix` wildcard.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.pattern, Pattern::Subdomains(_))
    }

    /// The entry as written, for messages.
    pub fn entry(&self) -> &str {
        &self.entry
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if text.starts_with('[') {
        let close = text.find(']').ok_or_else(|| "an unclosed `[`".to_owned())?;
        let (host, after) = text.split_at(close + 1);
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err("text after `]` that is not a :port".to_owned()),
        }
    } else if text.matches(':').count() > 1 {
        return Err("an IPv6 address must be in brackets, such as [fd00::1]:8443".to_owned());
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => Some(port),
            _ => return Err(format!("port `{port}` is not a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_entries() {
        let good = [
            "hooks.example.com",
            "HOOKS.Example.com:8443",
            "*.example.com",
            "private:vault.corp.internal:8200",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[fd00::1]",
        ];
        for entry in good {
            assert!(AllowHost::parse(entry).is_ok(), "{entry} refused");
        }
        let bad = [
            "",
            "private:",
            "https://hooks.example.com",
            "hooks.example.com/path",
            "user@hooks.example.com",
            "*.com",
            "*",
            "a.*.example.com",
            "*.*.example.com",
            "hooks.example.com:0",
            "hooks.example.com:99999",
            "hooks.example.com:http",
            "::1",
            "[::1",
            "private:8080",
            "0x7f.1",
            "*.10.0.0.1",
        ];
        for entry in bad {
            assert!(AllowHost::parse(entry).is_err(), "{entry} accepted");
        }
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let entry = AllowHost::parse("*.example.com").expect("valid");
        let host = |name: &str| Host::Domain(name.to_owned());
        assert!(entry.matches_host(&host("a.example.com")));
        assert!(entry.matches_host(&host("a.b.example.com")));
        assert!(!entry.matches_host(&host("example.com")));
        assert!(!entry.matches_host(&host("badexample.com")));
        assert!(!entry.matches_host(&host("example.com.evil.net")));
    }
}
