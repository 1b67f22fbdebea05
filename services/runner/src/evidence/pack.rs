//! A pack on disk: `evidence.json` (the canonical document), the CSV tables and `report.html`
//! when asked for, `manifest.json` (every other file with its SHA-256 and size, the period, and
//! the public key) and `manifest.sig` (the raw 64-byte Ed25519 signature of `manifest.json`'s
//! bytes, so `openssl pkeyutl -verify -rawin` checks it without quench).
//!
//! The signing key is PKCS#8 PEM (RFC 8410, what `openssl genpkey -algorithm ed25519` writes),
//! read once from `[evidence] signing_key_file`; it is never logged, stored or served. A public
//! key to pin is SPKI PEM (`openssl pkey -pubout`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Document, Error, Period, SCHEMA, render};
use crate::store::AuditEntry;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The signature's file name.
pub const SIGNATURE: &str = "manifest.sig";
const DOCUMENT: &str = "evidence.json";
const REPORT: &str = "report.html";
const MANIFEST_SCHEMA: &str = "quench.evidence.manifest/v1";

/// The renderings a pack holds besides `evidence.json`, which it always holds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Csv,
    Html,
}

/// The Ed25519 key that signs packs.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", fingerprint(&self.key.verifying_key()))
    }
}

impl Signer {
    /// The key of `[evidence] signing_key_file`; `None` when it is not set.
    pub fn from_config(section: &crate::config::EvidenceSection) -> Result<Option<Signer>, Error> {
        let Some(path) = &section.signing_key_file else {
            return Ok(None);
        };
        let key = "evidence.signing_key_file";
        let text = crate::config::read_secret_file(key, path)
            .map_err(|error| Error::Key(error.to_string()))?;
        SigningKey::from_pkcs8_pem(text.expose())
            .map(|key| Some(Signer { key }))
            .map_err(|error| {
                Error::Key(format!(
                    "`{key}` = {:?}: not an Ed25519 private key in PKCS#8 PEM ({error}); make one with \
                     `openssl genpkey -algorithm ed25519 -out evidence-signing.pem`",
                    path.display().to_string()
                ))
            })
    }

    /// A signer over a key given as its 32-byte seed (tests).
    pub fn from_seed(seed: &[u8; 32]) -> Signer {
        Signer {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The public key as SPKI PEM (what `--public-key` takes).
    pub fn public_key_pem(&self) -> String {
        public_pem(&self.key.verifying_key())
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key.verifying_key())
    }

    /// The pack's files for `document` in `formats`, with the manifest, and the signature.
    pub fn sign(&self, document: &Document, formats: &[Format]) -> Result<Signed, Error> {
        let mut files = rendered(document, formats)?;
        let verifying = self.key.verifying_key();
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA.to_owned(),
            quench_version: env!("CARGO_PKG_VERSION").to_owned(),
            generated_at: document.generated_at,
            period: document.period,
            key: KeyInfo {
                algorithm: "ed25519".to_owned(),
                fingerprint: fingerprint(&verifying),
                public_key_pem: public_pem(&verifying),
            },
            files: files
                .iter()
                .map(|file| FileEntry {
                    path: file.path.clone(),
                    sha256: hex::encode(Sha256::digest(file.content.as_bytes())),
                    bytes: file.content.len() as u64,
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|error| Error::Encode(error.to_string()))?
            + "\n";
        let signature = self.key.sign(text.as_bytes()).to_bytes().to_vec();
        files.push(PackFile {
            path: MANIFEST.to_owned(),
            content: text,
        });
        Ok(Signed { files, signature })
    }
}

fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(Default::default())
        .unwrap_or_default()
}

/// `sha256:` and the hex SHA-256 of the raw 32-byte public key.
fn fingerprint(key: &VerifyingKey) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A signed pack, not yet written: its files (the manifest last) and the signature's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub files: Vec<PackFile>,
    pub signature: Vec<u8>,
}

/// One file of a pack: a name without directories, and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackFile {
    pub path: String,
    pub content: String,
}

/// What `manifest.sig` signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub quench_version: String,
    pub generated_at: DateTime<Utc>,
    pub period: Period,
    pub key: KeyInfo,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub algorithm: String,
    pub fingerprint: String,
    pub public_key_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The files of a pack but the manifest: the document, then the renderings asked for.
fn rendered(document: &Document, formats: &[Format]) -> Result<Vec<PackFile>, Error> {
    let json = serde_json::to_string_pretty(document)
        .map_err(|error| Error::Encode(error.to_string()))?
        + "\n";
    let mut files = vec![PackFile {
        path: DOCUMENT.to_owned(),
        content: json,
    }];
    if formats.contains(&Format::Csv) {
        files.extend(
            render::csv_files(document)
                .into_iter()
                .map(|(path, content)| PackFile { path, content }),
        );
    }
    if formats.contains(&Format::Html) {
        files.push(PackFile {
            path: REPORT.to_owned(),
            content: render::html(document),
        });
    }
    Ok(files)
}

/// Writes a signed pack into the directory `into`, which must not exist (it is written beside
/// it first and renamed once complete, so a directory of that name is always a whole pack).
pub fn write_pack(signed: &Signed, into: &Path) -> Result<(), String> {
    if into.exists() {
        return Err(format!(
            "{} exists: give a new directory to --out",
            into.display()
        ));
    }
    let partial = into.with_extension("partial");
    let fail = |error: std::io::Error| format!("cannot write {}: {error}", partial.display());
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(fail)?;
    }
    std::fs::create_dir_all(&partial).map_err(fail)?;
    for file in &signed.files {
        if !is_plain_name(&file.path) {
            return Err(format!("the pack names a file {:?}: refused", file.path));
        }
        std::fs::write(partial.join(&file.path), &file.content).map_err(fail)?;
    }
    std::fs::write(partial.join(SIGNATURE), &signed.signature).map_err(fail)?;
    std::fs::rename(&partial, into).map_err(fail)
}

/// A file name a pack may hold: no directory, no `..`, nothing hidden.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// One check of a verification: what was checked, and what is wrong (none: it passed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub what: String,
    pub problem: Option<String>,
}

/// The checks of a pack, in order; the pack verifies when none has a problem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub checks: Vec<Check>,
    /// The key that signed it (from the manifest).
    pub fingerprint: Option<String>,
    /// Whether the key was given (`--public-key`) rather than taken from the manifest.
    pub pinned: bool,
}

impl Verified {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|check| check.problem.is_none())
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|check| check.problem.is_some())
    }

    fn pass(&mut self, what: impl Into<String>) {
        self.checks.push(Check {
            what: what.into(),
            problem: None,
        });
    }

    fn fail(&mut self, what: impl Into<String>, problem: impl Into<String>) {
        self.checks.push(Check {
            what: what.into(),
            problem: Some(problem.into()),
        });
    }

    fn check(&mut self, what: impl Into<String>, problem: Option<String>) {
        self.checks.push(Check {
            what: what.into(),
            problem,
        });
    }
}

/// Parses a public key to pin: SPKI PEM.
pub fn public_key(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|error| {
        format!(
            "not an Ed25519 public key in SPKI PEM ({error}); make it from the signing key with \
             `openssl pkey -in evidence-signing.pem -pubout -out evidence-public.pem`"
        )
    })
}

/// Verifies the pack in `dir`: the signature (by `pinned`, else by the key the manifest names),
/// every file against the manifest, and the document's internal consistency. Returns the
/// document when it could be read, for a check against the chain.
pub fn verify(dir: &Path, pinned: Option<&VerifyingKey>) -> (Verified, Option<Document>) {
    let mut verified = Verified {
        pinned: pinned.is_some(),
        ..Verified::default()
    };
    let manifest_bytes = match std::fs::read(dir.join(MANIFEST)) {
        Ok(bytes) => bytes,
        Err(error) => {
            verified.fail(MANIFEST, format!("cannot read it: {error}"));
            return (verified, None);
        }
    };
    let manifest: Manifest = match serde_json::from_slice(&manifest_bytes) {
        Ok(manifest) => manifest,
        Err(error) => {
            verified.fail(MANIFEST, format!("not a pack manifest: {error}"));
            return (verified, None);
        }
    };
    if manifest.schema != MANIFEST_SCHEMA {
        verified.fail(
            MANIFEST,
            format!(
                "schema {:?}, this quench reads {MANIFEST_SCHEMA:?}",
                manifest.schema
            ),
        );
    }
    verified.fingerprint = Some(manifest.key.fingerprint.clone());
    signature(&mut verified, dir, &manifest, &manifest_bytes, pinned);
    files(&mut verified, dir, &manifest);
    let document = match std::fs::read(dir.join(DOCUMENT))
        .map_err(|error| format!("cannot read it: {error}"))
        .and_then(|bytes| {
            serde_json::from_slice::<Document>(&bytes)
                .map_err(|error| format!("not an evidence document: {error}"))
        }) {
        Ok(document) => document,
        Err(problem) => {
            verified.fail(DOCUMENT, problem);
            return (verified, None);
        }
    };
    consistency(&mut verified, dir, &manifest, &document);
    (verified, Some(document))
}

fn signature(
    verified: &mut Verified,
    dir: &Path,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    pinned: Option<&VerifyingKey>,
) {
    let what = format!("signature ({SIGNATURE} over {MANIFEST})");
    let named = match public_key(&manifest.key.public_key_pem) {
        Ok(key) => key,
        Err(problem) => return verified.fail(what, format!("the manifest's key is {problem}")),
    };
    if fingerprint(&named) != manifest.key.fingerprint {
        return verified.fail(
            what,
            "the manifest's key does not have the fingerprint the manifest gives it",
        );
    }
    let key = match pinned {
        Some(pinned) if pinned != &named => {
            return verified.fail(
                what,
                format!(
                    "the pack was signed by key {}, not by the key given with --public-key ({})",
                    manifest.key.fingerprint,
                    fingerprint(pinned)
                ),
            );
        }
        Some(pinned) => pinned,
        None => &named,
    };
    let bytes = match std::fs::read(dir.join(SIGNATURE)) {
        Ok(bytes) => bytes,
        Err(error) => return verified.fail(what, format!("cannot read {SIGNATURE}: {error}")),
    };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
        return verified.fail(
            what,
            format!(
                "{SIGNATURE} holds {} bytes, an Ed25519 signature is 64",
                bytes.len()
            ),
        );
    };
    match key.verify_strict(manifest_bytes, &Signature::from_bytes(&bytes)) {
        Ok(()) => verified.pass(format!("{what}: by key {}", manifest.key.fingerprint)),
        Err(_) => verified.fail(
            what,
            format!(
                "the signature does not match {MANIFEST} and key {} ({SIGNATURE} or {MANIFEST} was changed)",
                manifest.key.fingerprint
            ),
        ),
    }
}

fn files(verified: &mut Verified, dir: &Path, manifest: &Manifest) {
    let mut listed = BTreeSet::new();
    for entry in &manifest.files {
        let what = format!("file {}", entry.path);
        if !is_plain_name(&entry.path) || [MANIFEST, SIGNATURE].contains(&entry.path.as_str()) {
            verified.fail(what, "the manifest names a file a pack cannot hold");
            continue;
        }
        listed.insert(entry.path.clone());
        match std::fs::read(dir.join(&entry.path)) {
            Err(error) => verified.fail(what, format!("cannot read it: {error}")),
            Ok(bytes) => {
                let sha256 = hex::encode(Sha256::digest(&bytes));
                if sha256 != entry.sha256 || bytes.len() as u64 != entry.bytes {
                    verified.fail(
                        what,
                        format!(
                            "its SHA-256 is {sha256} ({} bytes), the manifest says {} ({} bytes): the file was changed",
                            bytes.len(),
                            entry.sha256,
                            entry.bytes
                        ),
                    );
                } else {
                    verified.pass(format!("{what}: sha256 {sha256}"));
                }
            }
        }
    }
    let present: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name != MANIFEST && name != SIGNATURE)
                .collect()
        })
        .unwrap_or_default();
    for name in present {
        if !listed.contains(&name) {
            verified.fail(
                format!("file {name}"),
                "it is not in the manifest (added to the pack after signing)",
            );
        }
    }
}

/// The document agrees with itself, the manifest and the renderings.
fn consistency(verified: &mut Verified, dir: &Path, manifest: &Manifest, document: &Document) {
    let what = "evidence.json";
    if document.schema != SCHEMA {
        verified.fail(
            what,
            format!("schema {:?}, this quench reads {SCHEMA:?}", document.schema),
        );
    }
    verified.check(
        "period",
        (manifest.period != document.period).then(|| {
            format!(
                "the manifest's period {} to {} is not the document's {} to {}",
                manifest.period.from, manifest.period.to, document.period.from, document.period.to
            )
        }),
    );
    let summary = &document.summary;
    let counts = [
        ("findings", summary.findings, document.findings.len()),
        (
            "acted",
            summary.acted,
            document
                .findings
                .iter()
                .filter(|finding| finding.first_action.is_some())
                .count(),
        ),
        (
            "resolved",
            summary.resolved,
            document
                .findings
                .iter()
                .filter(|finding| finding.resolution.is_some())
                .count(),
        ),
        ("actions", summary.actions, document.actions.len()),
        ("exceptions", summary.exceptions, document.exceptions.len()),
        (
            "inventory",
            summary.inventory,
            document.inventory.rows.len(),
        ),
        (
            "campaigns",
            summary.campaigns,
            document.campaigns.rows.len(),
        ),
        (
            "attestations",
            summary.attestations,
            document.attestations.rows.len(),
        ),
    ];
    let wrong: Vec<String> = counts
        .iter()
        .filter(|(_, said, counted)| said != counted)
        .map(|(name, said, counted)| format!("summary.{name} is {said}, the section has {counted}"))
        .collect();
    verified.check("counts", (!wrong.is_empty()).then(|| wrong.join("; ")));
    verified.check(
        "timing figures",
        (super::collect::timing(&document.findings) != document.timing)
            .then(|| "the per-severity figures do not follow from the findings' times".to_owned()),
    );
    range(verified, document);
    // The renderings are functions of the document: render again and compare.
    let version = if manifest.quench_version == env!("CARGO_PKG_VERSION") {
        String::new()
    } else {
        format!(
            " (the pack was made by quench {}, this is {})",
            manifest.quench_version,
            env!("CARGO_PKG_VERSION")
        )
    };
    let mut expected: BTreeMap<String, String> = render::csv_files(document).into_iter().collect();
    expected.insert(REPORT.to_owned(), render::html(document));
    for entry in &manifest.files {
        let Some(content) = expected.get(&entry.path) else {
            continue;
        };
        let Ok(bytes) = std::fs::read(dir.join(&entry.path)) else {
            continue;
        };
        verified.check(
            format!("{} follows evidence.json", entry.path),
            (bytes != content.as_bytes()).then(|| {
                format!(
                    "{} is not what evidence.json renders to{version}",
                    entry.path
                )
            }),
        );
    }
    verified.check(
        "audit chain when the pack was made",
        (!document.chain.verified).then(|| {
            format!(
                "it did not verify: entry #{}: {}",
                document.chain.first_bad.unwrap_or_default(),
                document
                    .chain
                    .reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            )
        }),
    );
}

/// The period's sequence range holds every row of the period, and the rows' times are in it.
fn range(verified: &mut Verified, document: &Document) {
    let chain = &document.chain;
    let period = document.period;
    let mut problems = Vec::new();
    match (chain.first, chain.last) {
        (Some(first), Some(last)) => {
            if first > last || chain.entries > last - first + 1 || chain.entries == 0 {
                problems.push(format!(
                    "the range #{first} to #{last} cannot hold {} entries",
                    chain.entries
                ));
            }
            if last > chain.head_seq && chain.verified {
                problems.push(format!(
                    "the range ends at #{last}, after the head #{}",
                    chain.head_seq
                ));
            }
        }
        (None, None) => {
            if chain.entries != 0 {
                problems.push(format!("{} entries but no range", chain.entries));
            }
        }
        _ => problems.push("the range has one end only".to_owned()),
    }
    let in_range = |seq: u64| {
        chain
            .first
            .zip(chain.last)
            .is_some_and(|(first, last)| first <= seq && seq <= last)
    };
    let mut row = |what: String, at: DateTime<Utc>, seq: u64| {
        if !period.contains(at) {
            problems.push(format!("{what} at {at} is outside the period"));
        }
        if !in_range(seq) {
            problems.push(format!(
                "{what} cites audit entry #{seq}, outside the period's range"
            ));
        }
    };
    for finding in &document.findings {
        row(
            format!("finding {}", finding.id),
            finding.received_at,
            finding.seq,
        );
    }
    for action in &document.actions {
        row(
            format!("action {}", action.idempotency_key),
            action.at,
            action.seq,
        );
    }
    for exception in &document.exceptions {
        row(
            format!("exception {}/{}", exception.run_id, exception.step),
            exception.decided_at,
            exception.seq,
        );
    }
    let last = chain.last.unwrap_or(0);
    for (what, seq) in cited(document) {
        if seq > last || seq <= chain.checkpoint {
            problems.push(format!(
                "{what} cites audit entry #{seq}, which the pack's chain does not hold"
            ));
        }
    }
    verified.check(
        "audit range",
        (!problems.is_empty()).then(|| problems.join("; ")),
    );
}

/// Every audit entry the document cites, with the kind it must have (when one kind).
fn cited(document: &Document) -> Vec<(String, u64)> {
    let mut cited = Vec::new();
    for finding in &document.findings {
        cited.push((format!("finding {}", finding.id), finding.seq));
        for milestone in [&finding.first_action, &finding.resolution]
            .into_iter()
            .flatten()
        {
            cited.push((format!("finding {}", finding.id), milestone.seq));
        }
    }
    for action in &document.actions {
        let what = format!("action {}", action.idempotency_key);
        cited.push((what.clone(), action.seq));
        cited.extend(action.result_seq.map(|seq| (what.clone(), seq)));
        cited.extend(
            action
                .approvers
                .iter()
                .map(|answer| (what.clone(), answer.seq)),
        );
    }
    for exception in &document.exceptions {
        let what = format!("exception {}/{}", exception.run_id, exception.step);
        cited.push((what.clone(), exception.seq));
        cited.extend(
            exception
                .approvers
                .iter()
                .map(|answer| (what.clone(), answer.seq)),
        );
    }
    cited
}

/// What cites an entry, the kind the entry must have and the run it must be of (when known).
type Citation = (String, Option<&'static str>, Option<String>);

/// Checks the document against an audit chain read now (the store, or an exported segment):
/// the chain itself verifies through the pack's last entry, that entry has the hash the pack
/// recorded, and every entry the pack cites is there, of the kind and run the pack says.
/// `entries` is the chain in order with each entry's hash; `broken` is where it does not
/// verify, if anywhere.
pub fn against_chain(
    verified: &mut Verified,
    document: &Document,
    entries: impl Iterator<Item = (String, AuditEntry)>,
    broken: Option<(u64, String)>,
) {
    let chain = &document.chain;
    let Some(last) = chain.last else {
        verified.pass("against the chain: the period has no entries to check");
        return;
    };
    if let Some((seq, why)) = &broken
        && *seq <= last
    {
        verified.fail(
            "against the chain",
            format!("the audit chain is broken at entry #{seq}: {why}"),
        );
    }
    let mut wanted: BTreeMap<u64, Vec<Citation>> = BTreeMap::new();
    for finding in &document.findings {
        wanted.entry(finding.seq).or_default().push((
            format!("finding {}", finding.id),
            Some("finding_received"),
            None,
        ));
    }
    for action in &document.actions {
        let what = format!("action {}", action.idempotency_key);
        wanted.entry(action.seq).or_default().push((
            what.clone(),
            Some("step_intent"),
            Some(action.run_id.clone()),
        ));
        if let Some(seq) = action.result_seq {
            wanted.entry(seq).or_default().push((
                what.clone(),
                Some("step_result"),
                Some(action.run_id.clone()),
            ));
        }
        for answer in &action.approvers {
            wanted.entry(answer.seq).or_default().push((
                what.clone(),
                Some("decision"),
                Some(action.run_id.clone()),
            ));
        }
    }
    for exception in &document.exceptions {
        wanted.entry(exception.seq).or_default().push((
            format!("exception {}/{}", exception.run_id, exception.step),
            Some("decided"),
            Some(exception.run_id.clone()),
        ));
    }
    for (what, seq) in cited(document) {
        wanted.entry(seq).or_default().push((what, None, None));
    }
    let mut problems = Vec::new();
    let mut last_hash = None;
    for (hash, entry) in entries {
        if entry.seq > last {
            break;
        }
        if entry.seq == last {
            last_hash = Some(hash);
        }
        for (what, kind, run) in wanted.remove(&entry.seq).unwrap_or_default() {
            if kind.is_some_and(|kind| kind != entry.kind) {
                problems.push(format!(
                    "{what} cites entry #{} as {}, the chain has {}",
                    entry.seq,
                    kind.unwrap_or_default(),
                    entry.kind
                ));
            }
            if run.is_some() && run != entry.run_id {
                problems.push(format!(
                    "{what} cites entry #{} of run {}, the chain's is of {}",
                    entry.seq,
                    run.unwrap_or_default(),
                    entry.run_id.as_deref().unwrap_or("no run")
                ));
            }
        }
    }
    for (seq, citations) in wanted {
        for (what, _, _) in citations {
            problems.push(format!(
                "{what} cites entry #{seq}, which the chain does not hold"
            ));
        }
    }
    match (&last_hash, &chain.last_hash) {
        (Some(found), Some(recorded)) if found != recorded => problems.push(format!(
            "entry #{last} has hash {found}, the pack recorded {recorded}: the chain was changed after the pack was made"
        )),
        (None, _) => problems.push(format!("the chain does not hold entry #{last}")),
        _ => {}
    }
    match problems.is_empty() {
        true => verified.pass(format!(
            "against the chain: entry #{last} has hash {}, and every cited entry is there",
            chain.last_hash.as_deref().unwrap_or_default()
        )),
        false => verified.fail("against the chain", problems.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    //! A pack is hostile input to `verify`: whatever byte of whichever file is changed, the pack
    //! does not verify, and nothing an attacker writes makes `verify` panic.

    use proptest::prelude::*;

    use super::{Format, Signer, verify, write_pack};
    use crate::evidence::{NothingRecorded, Period, build};
    use crate::store::{AuditDraft, Batch, Store};

    /// A signed pack of a store with a finding and a decision, written to a fresh directory.
    fn pack() -> (tempfile::TempDir, std::path::PathBuf, Signer) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let store = Store::temporary().expect("store");
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        runtime.block_on(async {
            let mut batch = Batch::new();
            batch.audit(AuditDraft::new(
                at,
                "finding_received",
                serde_json::json!({"id": "f1", "kind": "openai.api_key.leaked", "key": "k1",
                    "status": "open", "severity": "high", "source": {"scanner": "test, \"quoted\""}}),
            ));
            store.commit(batch).await.expect("commit");
        });
        let period = Period::new(at, at + chrono::Duration::days(1)).expect("period");
        let document = build(&store, &NothingRecorded, period, at, "test").expect("document");
        let signer = Signer::from_seed(&[3; 32]);
        let signed = signer
            .sign(&document, &[Format::Csv, Format::Html])
            .expect("signed");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("pack");
        write_pack(&signed, &path).expect("written");
        (dir, path, signer)
    }

    const FILES: [&str; 12] = [
        "evidence.json",
        "findings.csv",
        "timing.csv",
        "actions.csv",
        "exceptions.csv",
        "inventory.csv",
        "campaigns.csv",
        "attestations.csv",
        "chain.csv",
        "report.html",
        "manifest.json",
        "manifest.sig",
    ];

    #[test]
    fn an_untouched_pack_verifies() {
        let (_dir, path, signer) = pack();
        let key = super::public_key(&signer.public_key_pem()).expect("key");
        let (verified, document) = verify(&path, Some(&key));
        assert!(verified.ok(), "{:#?}", verified.checks);
        assert_eq!(document.map(|document| document.summary.findings), Some(1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn any_changed_byte_is_caught(file in 0..FILES.len(), at in any::<prop::sample::Index>(), flip in 1_u8..=255) {
            let (_dir, path, signer) = pack();
            let key = super::public_key(&signer.public_key_pem()).expect("key");
            let target = path.join(FILES[file]);
            let mut bytes = std::fs::read(&target).expect("read");
            let index = at.index(bytes.len());
            bytes[index] ^= flip;
            std::fs::write(&target, &bytes).expect("write");
            let (verified, _) = verify(&path, Some(&key));
            prop_assert!(!verified.ok(), "{} byte {index} ^ {flip} passed", FILES[file]);
        }

        #[test]
        fn any_file_content_is_refused_without_panic(file in 0..FILES.len(), content in prop::collection::vec(any::<u8>(), 0..512)) {
            let (_dir, path, _) = pack();
            std::fs::write(path.join(FILES[file]), &content).expect("write");
            let (verified, _) = verify(&path, None);
            prop_assert!(!verified.ok());
        }
    }
}
