//! Service configuration, loaded in layers: defaults → `quench.toml` → environment
//! (`QUENCH_<SECTION>__<KEY>`, e.g. `QUENCH_NATS__URL`) → command-line flags. Every secret can
//! be given inline or as a `*_file` path (never both); secrets are held as `SecretString`, shown
//! as `<redacted>` by `--dump-config`, and never logged. A bad value is reported with its key,
//! its value and where it came from, before anything starts (exit 64).
//!
//! One file serves both processes, `quench` and `quench-gateway`; each reads the sections it
//! uses. The key names are a contract with operators and deploy files: change them only with
//! care.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::http::{AllowHost, check_base_url};
use crate::schema::allowed_properties;
use crate::suggest::did_you_mean;

/// A secret from the config: deserialized from a string, serialized only as `<redacted>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(SecretString::from(value))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

// Whether actions are performed or only recorded: a playbook's `mode`, defaulted by
// `engine.mode` (see [`Config::mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Live,
    DryRun,
}

impl Mode {
    /// As configs and logs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::DryRun => "dry_run",
        }
    }
}

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Flush and `fdatasync`: a commit survives power loss. The default.
    #[default]
    Always,
    /// Flush to the OS only: a commit survives the process being killed, not the machine.
    Os,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub nats: NatsConfig,
    pub store: StoreSection,
    pub playbooks: PlaybooksSection,
    pub engine: EngineSection,
    pub api: ApiSection,
    pub openai: OpenAiSection,
    pub slack: SlackSection,
    pub http: HttpSection,
    /// Approver groups: `group:<name>` → emails and Slack user ids.
    pub groups: BTreeMap<String, Vec<String>>,
    pub gateway: GatewaySection,
    /// Where `openai.rotate_service_account_key` delivers a minted key: `[secret_stores.<name>]`.
    pub secret_stores: BTreeMap<String, SecretStoreConfig>,
    /// Blast-radius rails on every mutating step, whatever the playbooks say.
    pub safety: SafetySection,
    /// Who owns what a finding names when the finding does not say: project → team rules and
    /// a fallback (see `docs/owners.md`).
    pub owners: OwnersSection,
    /// Teams: `[teams.<name>]` → emails, Slack user ids, a channel, an approver group.
    pub teams: BTreeMap<String, Team>,
    /// The estate inventory of OpenAI identities, synced from the Admin API.
    pub inventory: InventorySection,
    /// What the inventory measures identities against (risks).
    pub policy: PolicySection,
    /// Evidence packs for auditors (`quench evidence`): the key that signs them.
    pub evidence: EvidenceSection,
    /// The web console at `/` of `api.listen`: sign-in and sessions.
    pub console: ConsoleSection,
    /// Several runners on a NATS cluster: the run state in a fenced journal on JetStream,
    /// one runner active and the others standing by (see `docs/cluster.md`).
    pub cluster: ClusterSection,
}

/// The most partitions `[cluster] partitions` may name (a run id holds its partition in 16 bits).
pub const MAX_PARTITIONS: u32 = 1024;

/// `[cluster]`: run the store as a cache of a journal on JetStream, so another runner takes
/// over within a lease when this one dies (ARCHITECTURE.md, "Several runners on a NATS
/// cluster").
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Off by default: one `quench serve` keeps its state in sled alone.
    pub enabled: bool,
    /// This runner's name among the cluster's members, a DNS label unique in the cluster;
    /// empty: the host name (a StatefulSet pod's name, `quench-0`).
    pub runner: String,
    /// Partitions of the run state, fixed when the cluster is first started (1 to 1024).
    /// With 1, one runner owns it and serves while the others stand by; with more, each
    /// runner serves a share, and shares move as runners join and leave.
    pub partitions: u32,
    /// Where the other runners reach this runner's admin API (`http://quench-0.quench:8080`)
    /// to forward a request for a partition it serves; empty: `http://` and `api.listen`,
    /// with the host name when it listens on every address.
    pub advertise: String,
    /// The hosts (with port) runners may advertise, in the syntax of `http.allow_hosts`
    /// (`*.quench-runners.quench.svc.cluster.local:8080`, `10.0.0.5:8080`). A request
    /// forwarded to another runner carries its caller's credentials, so it is sent only to an
    /// address these allow. Needed when `partitions` is more than 1.
    pub peers: Vec<String>,
    /// How long a runner's claim on a partition outlives its last renewal (`10s`): a runner
    /// that dies is replaced after about this long. Renewed every fifth of it.
    pub lease: String,
    /// A snapshot of the state is saved (and the journal before it purged) after this many
    /// journal appends, or every 10 minutes if fewer.
    pub snapshot_every: u64,
}

impl Default for ClusterSection {
    fn default() -> ClusterSection {
        ClusterSection {
            enabled: false,
            runner: String::new(),
            partitions: 1,
            advertise: String::new(),
            peers: Vec::new(),
            lease: "10s".to_owned(),
            snapshot_every: 10_000,
        }
    }
}

impl ClusterSection {
    /// [`ClusterSection::lease`] (checked at load).
    pub fn lease(&self) -> std::time::Duration {
        humantime::parse_duration(&self.lease).unwrap_or(std::time::Duration::from_secs(10))
    }
}

/// `[console]`: the web console the runner serves at `/` of `api.listen`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    /// Serve the console (its pages and sign-in routes); the API is served either way.
    pub enabled: bool,
    /// Whether an API token may be exchanged for a console session (the sign-in form, and the
    /// login link `quench up` prints). The session has the token's name and role.
    pub token_sign_in: bool,
    /// How long a session lasts from sign-in, e.g. `12h`; it also ends at sign-out and when
    /// the service restarts (sessions are held in memory only).
    pub session_ttl: String,
    /// Single sign-on with OpenID Connect; without it, only token sign-in.
    pub oidc: Option<OidcSection>,
}

impl Default for ConsoleSection {
    fn default() -> ConsoleSection {
        ConsoleSection {
            enabled: true,
            token_sign_in: true,
            session_ttl: "12h".to_owned(),
            oidc: None,
        }
    }
}

/// `[console.oidc]`: sign-in through an OpenID Connect provider (authorization code flow with
/// PKCE). The person is the ID token's verified `email`; their role is the highest that
/// `roles` gives any group in the groups claim (else `default_role`, else no sign-in).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// The provider's issuer URL (https; plain http only on loopback), where
    /// `/.well-known/openid-configuration` is found.
    pub issuer: String,
    pub client_id: String,
    /// The client secret (`client_secret_basic`); none for a public client (PKCE only).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Where the provider sends the browser back: this service's `/console/oidc/callback` as
    /// the browser reaches it. Needed unless `api.listen` is loopback (then
    /// `http://<api.listen>/console/oidc/callback`).
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// Scopes asked besides `openid`.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim that lists the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Group → role (`viewer`, `approver`, `editor`, `admin`).
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
    /// The role of a verified person in none of `roles`' groups; unset, they cannot sign in.
    #[serde(default)]
    pub default_role: Option<Role>,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["email".to_owned(), "profile".to_owned()]
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

impl OidcSection {
    /// The redirect URL: the configured one, or the loopback listener's callback.
    pub fn redirect_url(&self, listen: &str) -> Option<String> {
        match &self.redirect_url {
            Some(url) => Some(url.clone()),
            None => listen
                .parse::<std::net::SocketAddr>()
                .ok()
                .filter(|address| address.ip().is_loopback())
                .map(|address| format!("http://{address}/console/oidc/callback")),
        }
    }

    /// The role of a person in `groups`: the highest any of them maps to, else `default_role`.
    pub fn role_of<'a>(&self, groups: impl IntoIterator<Item = &'a str>) -> Option<Role> {
        groups
            .into_iter()
            .filter_map(|group| self.roles.get(group).copied())
            .max()
            .or(self.default_role)
    }
}

impl ConsoleSection {
    /// `session_ttl` as a duration (checked at load: 1 minute to 30 days).
    pub fn session_ttl(&self) -> std::time::Duration {
        humantime::parse_duration(&self.session_ttl)
            .unwrap_or(std::time::Duration::from_secs(12 * 3600))
    }
}

/// `[evidence]`: evidence packs are signed with an Ed25519 key; without one, none is made.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceSection {
    /// The Ed25519 private key as PKCS#8 PEM (RFC 8410), e.g. made by
    /// `openssl genpkey -algorithm ed25519 -out evidence-signing.pem`. A file only: the key is
    /// read at start and never logged, stored or served.
    pub signing_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Empty: `quench up` starts its own nats-server. Several servers of a cluster separated by
    /// commas (`nats://a:4222,nats://b:4222`): the first that answers is used, the others (and
    /// those the cluster announces) when it goes away.
    pub url: String,
    pub credentials_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of this process's reply subjects (JetStream acks arrive there). Give each process
    /// its own (e.g. `_INBOX.gateway`) so NATS permissions can let it read only its own replies
    /// (see `deploy/nats-server.conf`).
    pub inbox_prefix: String,
    /// How long a delivered finding or decision may stay unacknowledged before JetStream offers
    /// it again (`60s`). quench extends it while a message waits for room, so only a message
    /// that is truly stuck comes back.
    pub ack_wait: String,
    /// Deliveries after which JetStream stops offering a message; quench then dead-letters it
    /// from the stream (reason `max_deliveries`), so nothing a sender publishes can hold intake
    /// forever. At least 2; decisions waiting for their gate use some deliveries.
    pub max_deliver: i64,
    /// Copies JetStream keeps of each of quench's streams: 1 on a single server, 3 (or 5) on a
    /// cluster, so the loss of a server loses no finding, decision or event. Changing it
    /// re-replicates the existing streams at the next start.
    pub replicas: usize,
}

impl NatsConfig {
    /// The servers of [`NatsConfig::url`], as written (checked at load).
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// [`NatsConfig::ack_wait`] (checked at load).
    pub fn ack_wait(&self) -> std::time::Duration {
        humantime::parse_duration(&self.ack_wait).unwrap_or(std::time::Duration::from_secs(60))
    }
}

impl Default for NatsConfig {
    fn default() -> NatsConfig {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            credentials_file: None,
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            tls_ca_file: None,
            inbox_prefix: "_INBOX".to_owned(),
            ack_wait: "60s".to_owned(),
            max_deliver: 50,
            replicas: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub path: PathBuf,
    /// `always` (fdatasync every commit, the default) or `os`.
    pub sync: SyncMode,
    /// How long an ended run (its record, gates, effects and timeline index) is kept after it
    /// ended (`90d`); `forever` keeps everything. Its audit entries stay in the audit log.
    pub retain_ended: String,
}

impl Default for StoreSection {
    fn default() -> StoreSection {
        StoreSection {
            path: PathBuf::from("./data/state"),
            sync: SyncMode::Always,
            retain_ended: "90d".to_owned(),
        }
    }
}

impl StoreSection {
    /// [`StoreSection::retain_ended`] (checked at load): `None` keeps ended runs forever.
    pub fn retain_ended(&self) -> Option<std::time::Duration> {
        if self.retain_ended == "forever" {
            return None;
        }
        humantime::parse_duration(&self.retain_ended).ok()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybooksSection {
    pub dir: PathBuf,
}

impl Default for PlaybooksSection {
    fn default() -> PlaybooksSection {
        PlaybooksSection {
            dir: PathBuf::from("./workflows"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// `live` or `dry_run`; when absent, dry-run unless an OpenAI admin key is configured.
    pub mode: Option<Mode>,
    /// Runs driven at once; intake waits when they are all busy.
    pub max_inflight_runs: usize,
}

impl Default for EngineSection {
    fn default() -> EngineSection {
        EngineSection {
            mode: None,
            max_inflight_runs: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// `host:port` of the admin API and health endpoints.
    pub listen: String,
    pub tokens: Vec<ApiToken>,
}

impl Default for ApiSection {
    fn default() -> ApiSection {
        ApiSection {
            listen: "127.0.0.1:8080".to_owned(),
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    /// SHA-256 (hex) of the bearer token; the token itself is never stored.
    pub sha256: String,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Approver,
    Editor,
    Admin,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSection {
    pub base_url: String,
    pub admin_key: Option<Secret>,
    pub admin_key_file: Option<PathBuf>,
    pub org_id: Option<String>,
    /// The file mapping usage families to scopes that `openai.key_usage` proposes from; default
    /// `data/usage-scopes.yaml` in `playbooks.dir` (see `Config::usage_scopes`).
    pub usage_scopes: Option<PathBuf>,
}

impl Default for OpenAiSection {
    fn default() -> OpenAiSection {
        OpenAiSection {
            base_url: "https://api.openai.com/v1".to_owned(),
            admin_key: None,
            admin_key_file: None,
            org_id: None,
            usage_scopes: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SlackSection {
    pub api_url: String,
    pub bot_token: Option<Secret>,
    pub bot_token_file: Option<PathBuf>,
    pub signing_secret: Option<Secret>,
    pub signing_secret_file: Option<PathBuf>,
    pub app_token: Option<Secret>,
    pub app_token_file: Option<PathBuf>,
}

impl Default for SlackSection {
    fn default() -> SlackSection {
        SlackSection {
            api_url: "https://slack.com/api".to_owned(),
            bot_token: None,
            bot_token_file: None,
            signing_secret: None,
            signing_secret_file: None,
            app_token: None,
            app_token_file: None,
        }
    }
}

/// `[safety]`: rails that hold a mutating step for a human answer (budget, protected
/// resources) or until a change freeze ends. Off until something is set.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SafetySection {
    /// Mutating actions allowed per rolling hour, all actions together (none: no global budget).
    pub max_mutations_per_hour: Option<u32>,
    /// Mutating actions allowed per rolling hour, by action name (e.g. `"openai.revoke_key" = 10`).
    pub max_per_hour: BTreeMap<String, u32>,
    /// Who answers a held step (emails, Slack ids, `group:<name>`).
    pub approvers: Vec<String>,
    /// How long a safety gate waits for an answer before it holds (`4h`).
    pub timeout: String,
    /// Resources no mutating action touches without an answer from the safety approvers:
    /// `project:<glob>`, `key:<glob>` (key or service-account id), `name:<glob>` (the finding's
    /// resource name), `label:<name>=<glob>` (a label of the finding).
    pub protect: Vec<String>,
    /// Change freezes: mutating steps wait (durably) until the window ends, unless `urgent`.
    pub freeze: Vec<FreezeWindow>,
}

impl Default for SafetySection {
    fn default() -> SafetySection {
        SafetySection {
            max_mutations_per_hour: None,
            max_per_hour: BTreeMap::new(),
            approvers: Vec::new(),
            timeout: "4h".to_owned(),
            protect: Vec::new(),
            freeze: Vec::new(),
        }
    }
}

/// `[owners]`: the config's links of the owner resolution chain. Rules are tried in order; the
/// first whose project id or project-name glob matches names the team. `fallback` answers when
/// no other link of the chain does.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OwnersSection {
    /// Project → team, first match wins.
    pub rules: Vec<OwnerRule>,
    /// Who owns what nothing else names: a team (`payments` or `team:payments`) or
    /// `group:<name>`.
    pub fallback: Option<String>,
}

/// One `[[owners.rules]]` entry: exactly one of `project_id` and `project_name`, and the team.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerRule {
    /// A project id (`proj_abc`); a glob (`proj_*`) matches several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// A glob of the project's name (`prod-*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_name: Option<String>,
    /// The team (under `[teams]`) that owns the matching projects.
    pub team: String,
}

/// One `[teams.<name>]`: the people who answer for it, and where its notices go.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Team {
    pub emails: Vec<String>,
    /// Slack user ids (`U…`/`W…`).
    pub slack_user_ids: Vec<String>,
    /// The team's Slack channel id (`C…`/`G…`): messages to the team go there.
    pub channel: Option<String>,
    /// An approver group (`[groups]`) whose members belong to the team too.
    pub group: Option<String>,
}

/// `[inventory]`: the sync that keeps the estate inventory (`GET /api/v1/inventory`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InventorySection {
    /// Whether the sync runs; by default it does when `openai.admin_key` is set.
    pub enabled: Option<bool>,
    /// How often a full pass walks the Admin API's lists (`1h`).
    pub interval: String,
    /// How often, between passes, the audit log is read for key and service-account changes
    /// (`1m`).
    pub watch_interval: String,
    /// The risks the sync publishes findings for (once per identity and risk; resolved when
    /// the risk goes away). By default the ones shipped playbooks take up, and `data_exposure`.
    pub publish: Vec<String>,
    /// Whether a change to a project's data settings (hosted tools, model policy, data
    /// retention, certificates) seen between two passes is published as an
    /// `openai.project.drift` finding.
    pub publish_drift: bool,
}

/// The risks the sync publishes by default: those a shipped playbook takes up.
pub const DEFAULT_PUBLISHED_RISKS: &[&str] =
    &["unused", "never_used", "owner_left", "data_exposure"];

impl Default for InventorySection {
    fn default() -> InventorySection {
        InventorySection {
            enabled: None,
            interval: "1h".to_owned(),
            watch_interval: "1m".to_owned(),
            publish: DEFAULT_PUBLISHED_RISKS
                .iter()
                .map(|risk| (*risk).to_owned())
                .collect(),
            publish_drift: true,
        }
    }
}

/// `[policy]`: the lines an identity must stay within; crossing one is a risk.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// A key not used for this long is `unused` (`90d`).
    pub unused_after: String,
    /// A key never used this long after its creation is `never_used` (`7d`).
    pub never_used_after: String,
    /// A key older than this is `too_old` (e.g. `365d`); no limit when unset.
    pub max_key_age: Option<String>,
    /// What projects of a class may do with data: `[[policy.projects]]`, first match wins.
    pub projects: Vec<ProjectClass>,
}

/// One class of projects (`[[policy.projects]]`) and what its projects may not do; a project
/// that breaks it has the `data_exposure` risk, naming the setting and this rule.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectClass {
    /// A glob matched against the project's id and its name (`prod-*`).
    #[serde(rename = "match")]
    pub matches: String,
    /// Hosted tools that must be off: `file_search`, `web_search`, `image_generation`, `mcp`,
    /// `code_interpreter`.
    #[serde(default)]
    pub deny_tools: Vec<String>,
    /// The data retention types allowed (e.g. `["zero_data_retention"]`); any when empty.
    #[serde(default)]
    pub data_retention: Vec<String>,
    /// The project must use a model allow list (not a deny list).
    #[serde(default)]
    pub require_model_allow_list: bool,
}

/// The hosted tools a project can turn on or off (`ProjectHostedToolPermissions`).
pub const HOSTED_TOOLS: &[&str] = &[
    "file_search",
    "web_search",
    "image_generation",
    "mcp",
    "code_interpreter",
];

/// A project's data retention types (`ProjectDataRetention.type`).
pub const DATA_RETENTION_TYPES: &[&str] = &[
    "organization_default",
    "none",
    "zero_data_retention",
    "modified_abuse_monitoring",
    "enhanced_zero_data_retention",
    "enhanced_modified_abuse_monitoring",
];

impl Default for PolicySection {
    fn default() -> PolicySection {
        PolicySection {
            unused_after: "90d".to_owned(),
            never_used_after: "7d".to_owned(),
            max_key_age: None,
            projects: Vec::new(),
        }
    }
}

/// The risks the inventory knows (`[inventory] publish` names them).
pub const KNOWN_RISKS: &[&str] = &[
    "leaked",
    "unused",
    "never_used",
    "no_expiry",
    "unrestricted_scopes",
    "owner_left",
    "admin_key",
    "too_old",
    "data_exposure",
];

/// One change-freeze window: it opens at each tick of `cron` (in `timezone`) and lasts
/// `duration`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    /// Shown in the audit log and the API (e.g. `weekend`).
    #[serde(default)]
    pub name: Option<String>,
    /// Crontab line of the window's start: 5 fields, or 6/7 with seconds (and year).
    pub cron: String,
    /// How long each window lasts (e.g. `62h`).
    pub duration: String,
    /// IANA time zone of the cron line (`UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Hosts `http.request` may reach.
    pub allow_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// `host:port` of the gateway's webhooks.
    pub listen: String,
    pub github_secret: Option<Secret>,
    pub github_secret_file: Option<PathBuf>,
    pub findings_secret: Option<Secret>,
    pub findings_secret_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Requests per second allowed per endpoint and client address (more: 429).
    pub rate_limit_per_second: u32,
    /// Requests a client may send at once before the per-second rate applies.
    pub rate_limit_burst: u32,
    /// Load balancers whose `X-Forwarded-For` names the client for rate limiting; requests
    /// from anyone else are limited by their own address.
    pub trusted_proxies: Vec<IpAddr>,
    /// How many accepted signatures the replay cache may hold, per endpoint and per client.
    pub replay: ReplaySection,
    /// TEST ONLY: one more URL prefix a Slack `response_url` may have besides
    /// `https://hooks.slack.com/` (a local Slack fake). Never set it in production.
    pub test_response_url_prefix: Option<String>,
}

impl Default for GatewaySection {
    fn default() -> GatewaySection {
        GatewaySection {
            listen: "0.0.0.0:8090".to_owned(),
            github_secret: None,
            github_secret_file: None,
            findings_secret: None,
            findings_secret_file: None,
            max_body_bytes: 256 * 1024,
            rate_limit_per_second: 20,
            rate_limit_burst: 100,
            trusted_proxies: Vec::new(),
            replay: ReplaySection::default(),
            test_response_url_prefix: None,
        }
    }
}

/// One secret store (`[secret_stores.<name>]`): a HashiCorp Vault KV v2 mount or a Kubernetes
/// namespace's Secrets. Credentials come from files (read at each use, so an agent or the
/// kubelet may rotate them) or from an inline value (an environment variable); never both.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SecretStoreConfig {
    Vault(VaultStore),
    Kubernetes(KubernetesStore),
}

/// A Vault KV version 2 secrets engine.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultStore {
    /// `https://vault.example.com:8200` (plain http only to loopback).
    pub address: String,
    /// Where the KV v2 engine is mounted (default `secret`).
    #[serde(default = "default_vault_mount")]
    pub mount: String,
    /// `token` (`token` or `token_file`) or `approle` (`role_id`, `secret_id` or
    /// `secret_id_file`).
    pub auth: VaultAuth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id_file: Option<PathBuf>,
    /// Where the AppRole auth method is mounted (default `approle`).
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
}

fn default_vault_mount() -> String {
    "secret".to_owned()
}

fn default_approle_mount() -> String {
    "approle".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VaultAuth {
    Token,
    Approle,
}

/// The Secrets of one Kubernetes namespace, through the API server.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesStore {
    /// The API server (default `https://kubernetes.default.svc`, from inside the cluster).
    #[serde(default = "default_api_server")]
    pub api_server: String,
    pub namespace: String,
    /// The bearer token (default: the pod's service account token file).
    #[serde(default = "default_kubernetes_token_file")]
    pub token_file: PathBuf,
    /// CA bundle of the API server's certificate (default: the pod's service account CA); the
    /// system roots are used when the file does not exist.
    #[serde(default = "default_kubernetes_ca_file")]
    pub ca_file: PathBuf,
}

fn default_api_server() -> String {
    "https://kubernetes.default.svc".to_owned()
}

fn default_kubernetes_token_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

fn default_kubernetes_ca_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
}

impl SecretStoreConfig {
    /// Checks one store's settings; `key` is `secret_stores.<name>`. Credential files are read
    /// once here so a missing or empty one stops the start, and again at each use.
    fn check(&self, key: &str) -> Result<(), Error> {
        let bad = |field: &str, value: &str, problem: &str| Error::Value {
            key: format!("{key}.{field}"),
            value: value.to_owned(),
            problem: problem.to_owned(),
        };
        match self {
            SecretStoreConfig::Vault(vault) => {
                check_base_url(&vault.address)
                    .map_err(|problem| bad("address", &vault.address, &problem))?;
                for (field, value) in [
                    ("mount", &vault.mount),
                    ("approle_mount", &vault.approle_mount),
                ] {
                    if !is_path(value) {
                        return Err(bad(
                            field,
                            value,
                            "must be a mount path such as `secret` or `kv/team-a`",
                        ));
                    }
                }
                match vault.auth {
                    VaultAuth::Token => {
                        one_secret(
                            key,
                            "token",
                            vault.token.as_ref(),
                            vault.token_file.as_ref(),
                        )?;
                        if vault.role_id.is_some()
                            || vault.secret_id.is_some()
                            || vault.secret_id_file.is_some()
                        {
                            return Err(bad(
                                "auth",
                                "token",
                                "`role_id` and `secret_id` belong to `auth = \"approle\"`",
                            ));
                        }
                    }
                    VaultAuth::Approle => {
                        if vault
                            .role_id
                            .as_deref()
                            .is_none_or(|role| role.trim().is_empty())
                        {
                            return Err(bad("role_id", "", "AppRole needs the role's `role_id`"));
                        }
                        one_secret(
                            key,
                            "secret_id",
                            vault.secret_id.as_ref(),
                            vault.secret_id_file.as_ref(),
                        )?;
                        if vault.token.is_some() || vault.token_file.is_some() {
                            return Err(bad(
                                "auth",
                                "approle",
                                "`token` belongs to `auth = \"token\"`",
                            ));
                        }
                    }
                }
            }
            SecretStoreConfig::Kubernetes(kubernetes) => {
                check_base_url(&kubernetes.api_server)
                    .map_err(|problem| bad("api_server", &kubernetes.api_server, &problem))?;
                if !is_dns_label(&kubernetes.namespace) {
                    return Err(bad(
                        "namespace",
                        &kubernetes.namespace,
                        "must be a Kubernetes namespace name (lowercase letters, digits and `-`, at most 63)",
                    ));
                }
                read_secret_file(&format!("{key}.token_file"), &kubernetes.token_file)?;
            }
        }
        Ok(())
    }
}

/// Exactly one of an inline secret and its `_file`; the file must be readable and not empty.
fn one_secret(
    store: &str,
    field: &str,
    inline: Option<&Secret>,
    file: Option<&PathBuf>,
) -> Result<(), Error> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(Error::Invalid(format!(
            "`{store}.{field}` and `{store}.{field}_file` are both set; give the secret one way"
        ))),
        (None, None) => Err(Error::Invalid(format!(
            "`{store}` needs `{field}_file` (or `{field}`, e.g. from QUENCH_SECRET_STORES__…)"
        ))),
        (Some(_), None) => Ok(()),
        (None, Some(path)) => read_secret_file(&format!("{store}.{field}_file"), path).map(drop),
    }
}

/// One secret given inline or as `<key>_file`, never both; the file is read into the inline
/// slot.
fn resolve_secret(
    key: &str,
    inline: &mut Option<Secret>,
    file: &mut Option<PathBuf>,
) -> Result<(), Error> {
    match (inline.as_ref(), file.as_ref()) {
        (Some(_), Some(path)) => Err(Error::Invalid(format!(
            "`{key}` and `{key}_file` ({}) are both set; give the secret one way",
            path.display()
        ))),
        (None, Some(path)) => {
            *inline = Some(read_secret_file(&format!("{key}_file"), path)?);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Reads a secret from a file (a trailing newline is not part of it).
pub fn read_secret_file(key: &str, path: &Path) -> Result<Secret, Error> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Value {
        key: key.to_owned(),
        value: path.display().to_string(),
        problem: format!("cannot read it: {error}"),
    })?;
    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err(Error::Value {
            key: key.to_owned(),
            value: path.display().to_string(),
            problem: "the file is empty".to_owned(),
        });
    }
    Ok(Secret::new(secret))
}

/// A `/`-separated path of non-empty segments without `.` or `..` (a Vault mount).
fn is_path(text: &str) -> bool {
    !text.is_empty()
        && text.split('/').all(|segment| {
            !segment.is_empty()
                && !matches!(segment, "." | "..")
                && !segment
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '?' | '#' | '%'))
        })
}

/// An RFC 1123 label: what Kubernetes accepts as a namespace name.
pub fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// The replay cache's budgets (`[gateway.replay.slack]`, `[gateway.replay.findings]`). A
/// signature is remembered until its own timestamp leaves the 300 s window, so a budget of
/// `entries` sustains about `entries / 300` signed requests per second; GitHub signs no
/// timestamp and has no cache.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReplaySection {
    /// Slack interactions; a client is a Slack team.
    pub slack: ReplayBudget,
    /// Signed findings; a client is a client address (as rate limits count it).
    pub findings: ReplayBudget,
}

impl Default for ReplaySection {
    fn default() -> ReplaySection {
        ReplaySection {
            slack: ReplayBudget {
                entries: 20_000,
                per_client: 10_000,
            },
            findings: ReplayBudget {
                entries: 100_000,
                per_client: 25_000,
            },
        }
    }
}

/// One endpoint's share of the replay cache.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBudget {
    /// Signatures remembered at once for the endpoint (more: 503 for that endpoint only).
    pub entries: usize,
    /// Of those, how many one client may hold (more: 503 for that client only).
    pub per_client: usize,
}

/// The largest replay budget accepted (up to 2 GB of memory): anything larger is a typo.
pub const MAX_REPLAY_ENTRIES: usize = 10_000_000;

/// A configuration problem, naming the key, the value and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("`{key}` = {value:?}: {problem}")]
    Value {
        key: String,
        value: String,
        problem: String,
    },
}

impl From<figment::Error> for Error {
    fn from(error: figment::Error) -> Error {
        Error::Invalid(error.to_string())
    }
}

/// Every unknown key and every value of the wrong type in the merged layers, reported at once
/// with where it came from (the file or the environment variable) and a did-you-mean; the
/// values themselves are checked after (`check`).
fn check_keys(figment: &Figment) -> Result<(), Error> {
    static SCHEMA: std::sync::LazyLock<(serde_json::Value, Option<jsonschema::Validator>)> =
        std::sync::LazyLock::new(|| {
            let schema = schemars::generate::SchemaSettings::draft07()
                .into_generator()
                .into_root_schema_for::<Config>()
                .to_value();
            let validator = jsonschema::validator_for(&schema).ok();
            (schema, validator)
        });
    let (schema, Some(validator)) = &*SCHEMA else {
        return Ok(());
    };
    let Ok(value) = figment.extract::<serde_json::Value>() else {
        // Not even a tree of keys (a syntax error): extracting the config says where.
        return Ok(());
    };
    let mut problems = Vec::new();
    for error in validator.iter_errors(&value) {
        let path: Vec<String> = error
            .instance_path()
            .as_str()
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(|segment| segment.replace("~1", "/").replace("~0", "~"))
            .collect();
        let source = |key: &[String]| {
            figment
                .find_metadata(&key.join("."))
                .map(|metadata| match &metadata.source {
                    Some(source) => format!(" (from {source})"),
                    // The Env provider's metadata names only the prefix; the variable is known.
                    None if metadata.name.contains("environment") => format!(
                        " (from the environment variable QUENCH_{})",
                        key.join("__").to_uppercase()
                    ),
                    None => format!(" (from {})", metadata.name),
                })
                .unwrap_or_default()
        };
        match error.kind() {
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = allowed_properties(schema, error.schema_path().as_str());
                for name in unexpected {
                    let mut key = path.clone();
                    key.push(name.clone());
                    let help = did_you_mean(name, allowed.iter().map(String::as_str))
                        .unwrap_or_else(|| {
                            let listed: Vec<String> =
                                allowed.iter().map(|name| format!("`{name}`")).collect();
                            format!("known keys here: {}", listed.join(", "))
                        });
                    problems.push(format!(
                        "unknown key `{}`{}: {help}",
                        key.join("."),
                        source(&key)
                    ));
                }
            }
            _ => problems.push(format!(
                "`{}`{}: {}",
                path.join("."),
                source(&path),
                describe_problem(&error)
            )),
        }
    }
    match problems.len() {
        0 => Ok(()),
        1 => Err(Error::Invalid(problems.remove(0))),
        count => Err(Error::Invalid(format!(
            "{count} problems:\n  - {}",
            problems.join("\n  - ")
        ))),
    }
}

/// A schema violation other than an unknown key, as a person would say it.
fn describe_problem(error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind;
    let found = match error.instance().as_ref() {
        serde_json::Value::String(text) => format!("`{text}`"),
        other => other.to_string(),
    };
    match error.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                jsonschema::error::TypeKind::Single(single) => single.to_string(),
                jsonschema::error::TypeKind::Multiple(set) => set
                    .iter()
                    .map(|kind| kind.to_string())
                    .filter(|kind| kind != "null")
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            format!("must be {expected}, found {}", kind_of(error.instance()))
        }
        ValidationErrorKind::Enum { options } => {
            let options: Vec<String> = options
                .as_array()
                .into_iter()
                .flatten()
                .map(|option| format!("`{}`", option.as_str().unwrap_or_default()))
                .collect();
            format!("{found} is not one of {}", options.join(", "))
        }
        // A documented enum is `oneOf` one `const` per value, `Option<Enum>` is `anyOf: [Enum,
        // null]`: say which values are allowed.
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            let mut options: Vec<String> = Vec::new();
            let mut types: Vec<String> = Vec::new();
            let mut other = None;
            for inner in context.iter().flatten() {
                match inner.kind() {
                    ValidationErrorKind::Constant { expected_value } => {
                        options.push(format!("`{}`", expected_value.as_str().unwrap_or_default()));
                    }
                    ValidationErrorKind::Enum { options: values } => options.extend(
                        values
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|value| format!("`{}`", value.as_str().unwrap_or_default())),
                    ),
                    ValidationErrorKind::AnyOf { .. }
                    | ValidationErrorKind::OneOfNotValid { .. } => {
                        return describe_problem(inner);
                    }
                    ValidationErrorKind::Type {
                        kind: jsonschema::error::TypeKind::Single(single),
                    } => types.push(single.to_string()),
                    ValidationErrorKind::Type { .. } => {}
                    _ => other = other.or(Some(inner)),
                }
            }
            types.retain(|kind| kind != "null");
            match other {
                _ if !options.is_empty() => format!("{found} is not one of {}", options.join(", ")),
                Some(inner) => describe_problem(inner),
                None => format!(
                    "must be {}, found {}",
                    types.join(" or "),
                    kind_of(error.instance())
                ),
            }
        }
        // Other rules: which one, never the value (a key may hold a secret).
        _ => format!(
            "is not valid here ({} breaks `{}`)",
            kind_of(error.instance()),
            error.schema_path().as_str()
        ),
    }
}

/// The kind of a value, for messages that must not show it.
fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a table",
    }
}

/// Overrides from command-line flags (the last layer).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, BTreeMap<String, toml::Value>>,
}

impl Overrides {
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<toml::Value>) {
        self.values
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.into());
    }
}

impl Config {
    /// Loads the layers, resolves `*_file` secrets and checks the values.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, Error> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Error::Missing {
                    path: path.to_owned(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only `QUENCH_<SECTION>__<KEY>` variables: `QUENCH_TOKEN` and friends belong to the CLI.
        figment = figment
            .merge(
                Env::prefixed("QUENCH_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .merge(Serialized::defaults(&overrides.values));
        check_keys(&figment)?;
        let mut config: Config = figment.extract()?;
        config.resolve_secrets()?;
        config.check()?;
        Ok(config)
    }

    /// The mode of playbooks that set none: as configured, else dry-run without an OpenAI key.
    pub fn mode(&self) -> Mode {
        self.engine
            .mode
            .unwrap_or(if self.openai.admin_key.is_some() {
                Mode::Live
            } else {
                Mode::DryRun
            })
    }

    /// The usage-scope mapping file of `openai.key_usage`: `openai.usage_scopes`, else
    /// `data/usage-scopes.yaml` in the playbooks directory (where the shipped one is), and
    /// whether it was configured (a configured file must exist; the default may be absent).
    pub fn usage_scopes(&self) -> (PathBuf, bool) {
        match &self.openai.usage_scopes {
            Some(path) => (path.clone(), true),
            None => (
                self.playbooks.dir.join("data").join("usage-scopes.yaml"),
                false,
            ),
        }
    }

    /// The admin API address (checked at load).
    pub fn api_listen(&self) -> SocketAddr {
        self.api
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn dump(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|error| format!("# cannot show the config: {error}\n"))
    }

    fn check_oidc(&self) -> Result<(), Error> {
        let Some(oidc) = &self.console.oidc else {
            return Ok(());
        };
        let bad = |key: &str, value: &str, problem: &str| Error::Value {
            key: format!("console.oidc.{key}"),
            value: value.to_owned(),
            problem: problem.to_owned(),
        };
        if let Err(problem) = check_base_url(&oidc.issuer) {
            return Err(bad("issuer", &oidc.issuer, &problem));
        }
        if oidc.client_id.trim().is_empty() {
            return Err(bad(
                "client_id",
                "",
                "must name this service's client at the provider",
            ));
        }
        match oidc.redirect_url(&self.api.listen) {
            None => {
                return Err(bad(
                    "redirect_url",
                    "",
                    "is needed when api.listen is not loopback: this service's \
                     /console/oidc/callback as browsers reach it, e.g. \
                     https://quench.example.com/console/oidc/callback",
                ));
            }
            Some(url) => {
                let parsed =
                    check_base_url(&url).map_err(|problem| bad("redirect_url", &url, &problem))?;
                if parsed.path() != "/console/oidc/callback" {
                    return Err(bad(
                        "redirect_url",
                        &url,
                        "must end in /console/oidc/callback (the path this service answers)",
                    ));
                }
            }
        }
        if oidc.groups_claim.trim().is_empty() {
            return Err(bad("groups_claim", "", "must name a claim, e.g. groups"));
        }
        if oidc.roles.is_empty() && oidc.default_role.is_none() {
            return Err(bad(
                "roles",
                "{}",
                "maps no group to a role and there is no default_role: no one could sign in",
            ));
        }
        Ok(())
    }

    fn resolve_secrets(&mut self) -> Result<(), Error> {
        let pairs: [(&str, &mut Option<Secret>, &mut Option<PathBuf>); 8] = [
            (
                "nats.password",
                &mut self.nats.password,
                &mut self.nats.password_file,
            ),
            (
                "nats.token",
                &mut self.nats.token,
                &mut self.nats.token_file,
            ),
            (
                "openai.admin_key",
                &mut self.openai.admin_key,
                &mut self.openai.admin_key_file,
            ),
            (
                "slack.bot_token",
                &mut self.slack.bot_token,
                &mut self.slack.bot_token_file,
            ),
            (
                "slack.signing_secret",
                &mut self.slack.signing_secret,
                &mut self.slack.signing_secret_file,
            ),
            (
                "slack.app_token",
                &mut self.slack.app_token,
                &mut self.slack.app_token_file,
            ),
            (
                "gateway.github_secret",
                &mut self.gateway.github_secret,
                &mut self.gateway.github_secret_file,
            ),
            (
                "gateway.findings_secret",
                &mut self.gateway.findings_secret,
                &mut self.gateway.findings_secret_file,
            ),
        ];
        for (key, inline, file) in pairs {
            resolve_secret(key, inline, file)?;
        }
        if let Some(oidc) = &mut self.console.oidc {
            resolve_secret(
                "console.oidc.client_secret",
                &mut oidc.client_secret,
                &mut oidc.client_secret_file,
            )?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), Error> {
        self.check_oidc()?;
        let bad = |key: &str, value: &str, problem: &str| Error::Value {
            key: key.to_owned(),
            value: value.to_owned(),
            problem: problem.to_owned(),
        };
        for url in self.nats.urls() {
            if !["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
                || url.parse::<async_nats::ServerAddr>().is_err()
            {
                return Err(bad(
                    "nats.url",
                    url,
                    "must be nats://, tls://, ws:// or wss:// URLs separated by commas, e.g. nats://127.0.0.1:4222",
                ));
            }
        }
        if !(1..=5).contains(&self.nats.replicas) {
            return Err(bad(
                "nats.replicas",
                &self.nats.replicas.to_string(),
                "must be 1 (a single server) to 5; 3 on a three-server cluster",
            ));
        }
        if self.nats.password.is_some() && self.nats.user.is_none() {
            return Err(bad("nats.user", "", "a NATS password needs a user"));
        }
        for (index, token) in self.api.tokens.iter().enumerate() {
            let key = format!("api.tokens[{index}].sha256");
            if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(
                    &key,
                    &token.sha256,
                    "must be the 64 hex digits of the token's SHA-256 (`printf %s TOKEN | sha256sum`)",
                ));
            }
            if token.name.trim().is_empty() {
                return Err(bad(
                    &format!("api.tokens[{index}].name"),
                    &token.name,
                    "must not be empty",
                ));
            }
        }
        for (key, listen) in [
            ("api.listen", &self.api.listen),
            ("gateway.listen", &self.gateway.listen),
        ] {
            if listen.parse::<SocketAddr>().is_err() {
                return Err(bad(
                    key,
                    listen,
                    "must be an address and port such as 127.0.0.1:8080",
                ));
            }
        }
        if !is_subject_prefix(&self.nats.inbox_prefix) {
            return Err(bad(
                "nats.inbox_prefix",
                &self.nats.inbox_prefix,
                "must be dot-separated words without spaces or wildcards, e.g. _INBOX.gateway",
            ));
        }
        match humantime::parse_duration(&self.nats.ack_wait) {
            Ok(wait) if wait >= std::time::Duration::from_secs(1) => {}
            _ => {
                return Err(bad(
                    "nats.ack_wait",
                    &self.nats.ack_wait,
                    "must be a duration of at least 1s, e.g. 60s",
                ));
            }
        }
        if self.store.retain_ended != "forever"
            && !humantime::parse_duration(&self.store.retain_ended)
                .is_ok_and(|retain| retain >= std::time::Duration::from_secs(60))
        {
            return Err(bad(
                "store.retain_ended",
                &self.store.retain_ended,
                "must be a duration of at least 1m (e.g. 90d) or `forever`",
            ));
        }
        if !humantime::parse_duration(&self.cluster.lease).is_ok_and(|lease| {
            (std::time::Duration::from_secs(2)..=std::time::Duration::from_secs(120))
                .contains(&lease)
        }) {
            return Err(bad(
                "cluster.lease",
                &self.cluster.lease,
                "must be a duration from 2s to 2m, e.g. 10s",
            ));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.cluster.partitions) {
            return Err(bad(
                "cluster.partitions",
                &self.cluster.partitions.to_string(),
                "must be from 1 to 1024 (64 spreads a cluster of up to a dozen runners evenly)",
            ));
        }
        let advertise = &self.cluster.advertise;
        if !(advertise.is_empty()
            || advertise.starts_with("http://")
            || advertise.starts_with("https://"))
        {
            return Err(bad(
                "cluster.advertise",
                &self.cluster.advertise,
                "must be the http:// or https:// URL other runners reach this one's admin API at",
            ));
        }
        for (index, peer) in self.cluster.peers.iter().enumerate() {
            let entry =
                crate::http::AllowHost::parse(peer).and_then(|entry| match entry.is_private() {
                    true => Err("peers take no `private:` prefix".to_owned()),
                    false => Ok(entry),
                });
            if let Err(problem) = entry {
                return Err(bad(&format!("cluster.peers[{index}]"), peer, &problem));
            }
        }
        if self.cluster.enabled && self.cluster.partitions > 1 && self.cluster.peers.is_empty() {
            return Err(bad(
                "cluster.peers",
                "[]",
                "must list the hosts runners advertise (e.g. \"*.quench-runners.quench.svc.cluster.local:8080\"): with several partitions a request is forwarded, with its caller's credentials, to the runner serving it, and only to an address these allow",
            ));
        }
        if !self.cluster.runner.is_empty() && !is_dns_label(&self.cluster.runner) {
            return Err(bad(
                "cluster.runner",
                &self.cluster.runner,
                "must be a DNS label (lowercase letters, digits and `-`, at most 63), e.g. quench-0",
            ));
        }
        if self.cluster.snapshot_every == 0 {
            return Err(bad(
                "cluster.snapshot_every",
                "0",
                "must be at least 1 (10000 is the default)",
            ));
        }
        if self.nats.max_deliver < 2 {
            return Err(bad(
                "nats.max_deliver",
                &self.nats.max_deliver.to_string(),
                "must be at least 2",
            ));
        }
        if self.gateway.max_body_bytes < 1024 {
            return Err(bad(
                "gateway.max_body_bytes",
                &self.gateway.max_body_bytes.to_string(),
                "must be at least 1024",
            ));
        }
        for (key, value) in [
            (
                "gateway.rate_limit_per_second",
                self.gateway.rate_limit_per_second,
            ),
            ("gateway.rate_limit_burst", self.gateway.rate_limit_burst),
        ] {
            if value == 0 {
                return Err(bad(key, "0", "must be at least 1"));
            }
        }
        for (endpoint, budget) in [
            ("slack", self.gateway.replay.slack),
            ("findings", self.gateway.replay.findings),
        ] {
            if !(1..=MAX_REPLAY_ENTRIES).contains(&budget.entries) {
                return Err(bad(
                    &format!("gateway.replay.{endpoint}.entries"),
                    &budget.entries.to_string(),
                    &format!("must be between 1 and {MAX_REPLAY_ENTRIES}"),
                ));
            }
            if !(1..=budget.entries).contains(&budget.per_client) {
                return Err(bad(
                    &format!("gateway.replay.{endpoint}.per_client"),
                    &budget.per_client.to_string(),
                    &format!(
                        "must be between 1 and `gateway.replay.{endpoint}.entries` ({})",
                        budget.entries
                    ),
                ));
            }
        }
        if let Some(prefix) = &self.gateway.test_response_url_prefix {
            let checked = check_base_url(prefix);
            if checked.is_err() || !prefix.ends_with('/') {
                return Err(bad(
                    "gateway.test_response_url_prefix",
                    prefix,
                    "must be an https URL (or http on loopback) ending in `/`; it is for tests only",
                ));
            }
        }
        if !humantime::parse_duration(&self.console.session_ttl).is_ok_and(|ttl| {
            (std::time::Duration::from_secs(60)..=std::time::Duration::from_secs(30 * 86_400))
                .contains(&ttl)
        }) {
            return Err(bad(
                "console.session_ttl",
                &self.console.session_ttl,
                "must be a duration from 1m to 30d, e.g. 12h",
            ));
        }
        if self.engine.max_inflight_runs == 0 {
            return Err(bad("engine.max_inflight_runs", "0", "must be at least 1"));
        }
        for base in [
            ("openai.base_url", &self.openai.base_url),
            ("slack.api_url", &self.slack.api_url),
        ] {
            if let Err(problem) = check_base_url(base.1) {
                return Err(bad(base.0, base.1, &problem));
            }
        }
        for (index, host) in self.http.allow_hosts.iter().enumerate() {
            if let Err(problem) = AllowHost::parse(host) {
                return Err(bad(&format!("http.allow_hosts[{index}]"), host, &problem));
            }
        }
        for (name, store) in &self.secret_stores {
            store.check(&format!("secret_stores.{name}"))?;
        }
        if let Some(path) = &self.evidence.signing_key_file {
            // Readable and not empty here; that it is an Ed25519 key is checked by the runner.
            read_secret_file("evidence.signing_key_file", path)?;
        }
        for (group, members) in &self.groups {
            if members.is_empty() {
                return Err(bad(
                    &format!("groups.{group}"),
                    "[]",
                    "an approver group needs members",
                ));
            }
        }
        self.check_safety()?;
        self.check_owners()?;
        self.check_inventory()
    }

    /// `[owners]` and `[teams]`: every team has people, every address has its form, every rule
    /// and the fallback name something defined. (Public for the playbook tests' own `teams`.)
    pub fn check_owners(&self) -> Result<(), Error> {
        let bad = |key: String, value: &str, problem: String| Error::Value {
            key,
            value: value.to_owned(),
            problem,
        };
        let team_hint = |name: &str| {
            did_you_mean(name, self.teams.keys().map(String::as_str)).unwrap_or_else(|| {
                if self.teams.is_empty() {
                    format!("define it: [teams.{name}] with `emails` or `slack_user_ids`")
                } else {
                    format!(
                        "teams defined: {}",
                        self.teams
                            .keys()
                            .map(|team| format!("`{team}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            })
        };
        for (name, team) in &self.teams {
            let key = format!("teams.{name}");
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ':') {
                return Err(bad(
                    key,
                    name,
                    "a team name has no spaces or `:` (it is written `team:<name>`)".to_owned(),
                ));
            }
            if team.emails.is_empty() && team.slack_user_ids.is_empty() && team.group.is_none() {
                return Err(bad(
                    key,
                    "",
                    "a team needs people who can answer for it: `emails`, `slack_user_ids` or \
                     `group` (a `channel` only receives its messages)"
                        .to_owned(),
                ));
            }
            for (index, email) in team.emails.iter().enumerate() {
                if !is_email(email) {
                    return Err(bad(
                        format!("{key}.emails[{index}]"),
                        email,
                        "must be an email address such as lead@example.com".to_owned(),
                    ));
                }
            }
            for (index, id) in team.slack_user_ids.iter().enumerate() {
                if !is_slack_id(id, &['U', 'W']) {
                    return Err(bad(
                        format!("{key}.slack_user_ids[{index}]"),
                        id,
                        "must be a Slack user id such as U0123ABCD (the member id in the \
                         person's Slack profile), not a name"
                            .to_owned(),
                    ));
                }
            }
            if let Some(channel) = &team.channel
                && !is_slack_id(channel, &['C', 'G'])
            {
                return Err(bad(
                    format!("{key}.channel"),
                    channel,
                    "must be a Slack channel id such as C0123ABCD (shown in the channel's \
                     details), not its name"
                        .to_owned(),
                ));
            }
            if let Some(group) = &team.group
                && !self.groups.contains_key(group)
            {
                let hint = did_you_mean(group, self.groups.keys().map(String::as_str))
                    .unwrap_or_else(|| {
                        format!("define it under [groups]: {group} = [\"lead@example.com\"]")
                    });
                return Err(bad(
                    format!("{key}.group"),
                    group,
                    format!("the group `{group}` is not defined under [groups]; {hint}"),
                ));
            }
        }
        for (index, rule) in self.owners.rules.iter().enumerate() {
            let key = format!("owners.rules[{index}]");
            let pattern = match (&rule.project_id, &rule.project_name) {
                (Some(id), None) => ("project_id", id),
                (None, Some(name)) => ("project_name", name),
                _ => {
                    return Err(bad(
                        key,
                        "",
                        "a rule names exactly one of `project_id` (e.g. \"proj_abc\") and \
                         `project_name` (a glob, e.g. \"prod-*\")"
                            .to_owned(),
                    ));
                }
            };
            if pattern.1.trim().is_empty() {
                return Err(bad(
                    format!("{key}.{}", pattern.0),
                    pattern.1,
                    "must not be empty".to_owned(),
                ));
            }
            if let Err(error) = globset::Glob::new(pattern.1) {
                return Err(bad(
                    format!("{key}.{}", pattern.0),
                    pattern.1,
                    format!("not a glob: {}", error.kind()),
                ));
            }
            if !self.teams.contains_key(&rule.team) {
                return Err(bad(
                    format!("{key}.team"),
                    &rule.team,
                    format!(
                        "no team `{}` under [teams]; {}",
                        rule.team,
                        team_hint(&rule.team)
                    ),
                ));
            }
        }
        if let Some(fallback) = &self.owners.fallback {
            match fallback.strip_prefix("group:") {
                Some(group) if self.groups.contains_key(group) => {}
                Some(group) => {
                    let hint = did_you_mean(group, self.groups.keys().map(String::as_str))
                        .unwrap_or_else(|| "define it under [groups]".to_owned());
                    return Err(bad(
                        "owners.fallback".to_owned(),
                        fallback,
                        format!("the group `{group}` is not defined under [groups]; {hint}"),
                    ));
                }
                None if self
                    .teams
                    .contains_key(fallback.strip_prefix("team:").unwrap_or(fallback)) => {}
                None => {
                    return Err(bad(
                        "owners.fallback".to_owned(),
                        fallback,
                        format!(
                            "must be a team under [teams] or `group:<name>`; {}",
                            team_hint(fallback)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the inventory sync runs: as `[inventory] enabled` says, by default when an
    /// admin key is configured.
    pub fn inventory_enabled(&self) -> bool {
        self.inventory
            .enabled
            .unwrap_or(self.openai.admin_key.is_some())
    }

    pub fn inventory_interval(&self) -> std::time::Duration {
        humantime::parse_duration(&self.inventory.interval)
            .unwrap_or(std::time::Duration::from_secs(3600))
    }

    pub fn inventory_watch_interval(&self) -> std::time::Duration {
        humantime::parse_duration(&self.inventory.watch_interval)
            .unwrap_or(std::time::Duration::from_secs(60))
    }

    /// `[inventory]` and `[policy]`.
    fn check_inventory(&self) -> Result<(), Error> {
        let bad = |key: &str, value: &str, problem: &str| Error::Value {
            key: key.to_owned(),
            value: value.to_owned(),
            problem: problem.to_owned(),
        };
        let at_least = |key: &str, value: &str, minimum: u64, example: &str| {
            if humantime::parse_duration(value)
                .is_ok_and(|duration| duration >= std::time::Duration::from_secs(minimum))
            {
                Ok(())
            } else {
                let shown = humantime::format_duration(std::time::Duration::from_secs(minimum));
                Err(bad(
                    key,
                    value,
                    &format!("must be a duration of at least {shown}, e.g. {example}"),
                ))
            }
        };
        if self.inventory.enabled == Some(true)
            && self.openai.admin_key.is_none()
            && self.openai.admin_key_file.is_none()
        {
            return Err(bad(
                "inventory.enabled",
                "true",
                "the inventory reads the OpenAI Admin API: set openai.admin_key_file (or openai.admin_key) too",
            ));
        }
        at_least("inventory.interval", &self.inventory.interval, 60, "1h")?;
        at_least(
            "inventory.watch_interval",
            &self.inventory.watch_interval,
            10,
            "1m",
        )?;
        for (index, risk) in self.inventory.publish.iter().enumerate() {
            if !KNOWN_RISKS.contains(&risk.as_str()) {
                let hint = crate::suggest::did_you_mean(risk, KNOWN_RISKS.iter().copied())
                    .map(|near| format!(" ({near})"))
                    .unwrap_or_default();
                return Err(bad(
                    &format!("inventory.publish[{index}]"),
                    risk,
                    &format!("no such risk{hint}; known: {}", KNOWN_RISKS.join(", ")),
                ));
            }
            if risk == "leaked" {
                return Err(bad(
                    &format!("inventory.publish[{index}]"),
                    risk,
                    "`leaked` comes from findings already; the inventory does not publish it",
                ));
            }
        }
        at_least(
            "policy.unused_after",
            &self.policy.unused_after,
            86_400,
            "90d",
        )?;
        at_least(
            "policy.never_used_after",
            &self.policy.never_used_after,
            3600,
            "7d",
        )?;
        if let Some(age) = &self.policy.max_key_age {
            at_least("policy.max_key_age", age, 86_400, "365d")?;
        }
        for (index, class) in self.policy.projects.iter().enumerate() {
            let key = |field: &str| format!("policy.projects[{index}].{field}");
            if let Err(error) = globset::Glob::new(&class.matches) {
                return Err(bad(
                    &key("match"),
                    &class.matches,
                    &error.kind().to_string(),
                ));
            }
            let known = |value: &str, known: &[&str], field: &str, what: &str| {
                if known.contains(&value) {
                    return Ok(());
                }
                let hint = crate::suggest::did_you_mean(value, known.iter().copied())
                    .map(|near| format!(" ({near})"))
                    .unwrap_or_default();
                Err(bad(
                    &key(field),
                    value,
                    &format!("not a {what}{hint}; one of {}", known.join(", ")),
                ))
            };
            for tool in &class.deny_tools {
                known(tool, HOSTED_TOOLS, "deny_tools", "hosted tool")?;
            }
            for retention in &class.data_retention {
                known(
                    retention,
                    DATA_RETENTION_TYPES,
                    "data_retention",
                    "data retention type",
                )?;
            }
        }
        Ok(())
    }

    /// `[safety]`: what can be checked without the runner's cron and glob compilers (the
    /// runner checks the cron lines, time zones and globs when it builds the rails).
    fn check_safety(&self) -> Result<(), Error> {
        let bad = |key: &str, value: &str, problem: &str| Error::Value {
            key: key.to_owned(),
            value: value.to_owned(),
            problem: problem.to_owned(),
        };
        let safety = &self.safety;
        if !humantime::parse_duration(&safety.timeout)
            .is_ok_and(|timeout| timeout >= std::time::Duration::from_secs(60))
        {
            return Err(bad(
                "safety.timeout",
                &safety.timeout,
                "must be a duration of at least 1m, e.g. 4h",
            ));
        }
        for (index, rule) in safety.protect.iter().enumerate() {
            if let Err(problem) = ProtectRule::parse(rule) {
                return Err(bad(&format!("safety.protect[{index}]"), rule, &problem));
            }
        }
        for (index, window) in safety.freeze.iter().enumerate() {
            if !humantime::parse_duration(&window.duration)
                .is_ok_and(|duration| duration >= std::time::Duration::from_secs(60))
            {
                return Err(bad(
                    &format!("safety.freeze[{index}].duration"),
                    &window.duration,
                    "must be a duration of at least 1m, e.g. 62h",
                ));
            }
        }
        // With several partitions each counts its share of a budget (they add up to it), so
        // every partition needs a share of at least one call.
        let partitions = match self.cluster.enabled {
            true => self.cluster.partitions,
            false => 1,
        };
        let budgets = safety
            .max_mutations_per_hour
            .map(|max| ("safety.max_mutations_per_hour".to_owned(), max))
            .into_iter()
            .chain(
                safety
                    .max_per_hour
                    .iter()
                    .map(|(action, max)| (format!("safety.max_per_hour.\"{action}\""), *max)),
            );
        for (key, max) in budgets {
            if max < partitions {
                return Err(bad(
                    &key,
                    &max.to_string(),
                    &format!(
                        "is smaller than `[cluster] partitions = {partitions}`: each partition \
                         counts its share of a budget, so a budget needs at least one call per \
                         partition (raise it, or use fewer partitions)"
                    ),
                ));
            }
        }
        let needs_approvers = safety.max_mutations_per_hour.is_some()
            || !safety.max_per_hour.is_empty()
            || !safety.protect.is_empty();
        if needs_approvers && safety.approvers.iter().all(|a| a.trim().is_empty()) {
            return Err(bad(
                "safety.approvers",
                "[]",
                "a budget or a protect rule needs someone to answer for what it holds, \
                 e.g. approvers = [\"group:secops\"]",
            ));
        }
        for (index, approver) in safety.approvers.iter().enumerate() {
            if let Some(group) = approver.strip_prefix("group:")
                && !self.groups.contains_key(group)
            {
                return Err(bad(
                    &format!("safety.approvers[{index}]"),
                    approver,
                    &format!("the group `{group}` is not defined under [groups]"),
                ));
            }
        }
        Ok(())
    }
}

/// One `[safety] protect` entry: what it looks at, and the glob it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectRule<'a> {
    /// A project id.
    Project(&'a str),
    /// A key id or service-account id.
    Key(&'a str),
    /// The finding's resource name.
    Name(&'a str),
    /// A label of the finding: its name, and a glob of its value.
    Label(&'a str, &'a str),
}

impl ProtectRule<'_> {
    pub fn parse(rule: &str) -> Result<ProtectRule<'_>, String> {
        let (kind, glob) = rule.split_once(':').ok_or_else(|| {
            "must be `project:<glob>`, `key:<glob>`, `name:<glob>` or `label:<name>=<glob>`"
                .to_owned()
        })?;
        if glob.trim().is_empty() {
            return Err(format!("`{kind}:` needs a value after the colon"));
        }
        match kind {
            "project" => Ok(ProtectRule::Project(glob)),
            "key" => Ok(ProtectRule::Key(glob)),
            "name" => Ok(ProtectRule::Name(glob)),
            "label" => match glob.split_once('=') {
                Some((name, value)) if !name.is_empty() && !value.is_empty() => {
                    Ok(ProtectRule::Label(name, value))
                }
                _ => Err("a label rule is `label:<name>=<glob>`, e.g. label:env=prod".to_owned()),
            },
            other => Err(format!(
                "`{other}` is not a kind of protect rule; use project, key, name or label"
            )),
        }
    }
}

/// An email address as people write one: `local@domain.tld`, no spaces, one `@`.
pub fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !text.contains(|c: char| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
}

/// A Slack id: one of `prefixes`, then upper-case letters and digits (`U0123ABCD`, `C0SEC`).
pub fn is_slack_id(text: &str, prefixes: &[char]) -> bool {
    text.len() > 2
        && text.starts_with(prefixes)
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// A NATS subject prefix: dot-separated, non-empty words without whitespace or wildcards.
fn is_subject_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|word| {
            !word.is_empty()
                && !word
                    .chars()
                    .any(|c| c.is_whitespace() || c == '*' || c == '>')
        })
}
