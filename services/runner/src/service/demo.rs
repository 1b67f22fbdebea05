//! `quench up --demo`: a simulated OpenAI organization (`quench_openai_fake::demo`, the fake the
//! integration tests use) served on a loopback port inside this process, and the quickstart
//! pointed at it, so a newcomer sees the shipped discovery playbooks find unused, orphaned and
//! drifting keys and the runs they start, with nothing leaving the machine:
//!
//! - `openai.base_url` is the fake; `openai.admin_key` is a random key made for this run, the
//!   only one the fake accepts, never printed or logged;
//! - every run is dry-run, whatever the config or a playbook says ([`Start::dry_run_only`]):
//!   mutating steps record the request they would send, and even the fake is not changed;
//! - Slack is unconfigured (messages are recorded as not sent), NATS is quench's own child on
//!   loopback (a configured server and its credentials are ignored);
//! - the discovery schedules run once at start ([`Start::trigger_schedules`]), so their findings
//!   and runs are there within seconds instead of at the next cron tick.
//!
//! State lives in `./data/demo` (store and JetStream): under `./data`, so `quench up`'s lock
//! covers it (a demo and a quickstart in one directory would share the API port), but apart
//! from `./data/state`, because what the demo leaves — runs about keys that exist nowhere,
//! hash-chained audit entries that cannot be removed, seen finding ids, and the audit-log
//! watch's cursor (`state.set`) — would otherwise carry into the real quickstart's store.

use std::fmt::Write as _;
use std::path::PathBuf;

use quench_openai_fake::OpenAiFake;
use quench_openai_fake::demo::Organization;

use super::{Error, Start};
use crate::config::{Config, NatsConfig, OpenAiSection, Secret, SlackSection};
use crate::playbook::Mode;

/// The demo's organization, served for as long as this value lives.
#[derive(Debug)]
pub struct Demo {
    fake: OpenAiFake,
    organization: Organization,
}

/// Where the demo keeps its store and JetStream.
pub fn data_dir() -> PathBuf {
    super::up::data_dir().join("demo")
}

/// Where the demo's nats-server child keeps JetStream.
pub fn nats_dir() -> PathBuf {
    data_dir().join("nats")
}

impl Demo {
    /// Serves and seeds the organization, and points `config` at it (see the module's list).
    pub async fn start(config: &mut Config) -> Result<Demo, Error> {
        let secret = format!("sk-admin-demo{}", hex::encode(rand::random::<[u8; 24]>()));
        let fake = OpenAiFake::serve(Some(&secret))
            .await
            .map_err(|source| Error::Listen {
                listen: "127.0.0.1 (the demo's simulated OpenAI)".to_owned(),
                source,
            })?;
        let organization = quench_openai_fake::demo::seed(&fake, chrono::Utc::now().timestamp());
        config.openai = OpenAiSection {
            base_url: fake.base_url(),
            admin_key: Some(Secret::new(secret)),
            admin_key_file: None,
            org_id: None,
            // The demo keeps the configured mapping (by default the shipped one).
            usage_scopes: config.openai.usage_scopes.take(),
        };
        config.slack = SlackSection::default();
        config.nats = NatsConfig::default();
        config.engine.mode = Some(Mode::DryRun);
        config.store.path = data_dir().join("state");
        tracing::info!(base_url = %config.openai.base_url, "demo: a simulated OpenAI organization serves on loopback; every run is dry-run");
        Ok(Demo { fake, organization })
    }

    /// How the service runs in the demo.
    pub fn start_options(&self) -> Start {
        Start {
            dry_run_only: true,
            trigger_schedules: true,
        }
    }

    /// The banner's mode, in place of dry-run's or live's.
    pub fn mode(&self) -> &'static str {
        "demo: a simulated OpenAI organization served by this process; every run is dry-run and \
         nothing leaves this machine"
    }

    /// The banner's lines about the organization (after the service's own lines).
    pub fn summary(&self) -> String {
        let Organization {
            projects,
            users,
            service_accounts,
            keys,
            audit_events,
            ..
        } = &self.organization;
        format!(
            "\n  OpenAI     simulated at {} ({projects} projects, {users} people, \
             {service_accounts} service accounts, {keys} keys, {audit_events} audit events \
             today, 8 days of usage), with an admin key made for this run\n  state      {} \
             (the quickstart's own ./data/state is not touched)",
            self.fake.base_url(),
            data_dir().display()
        )
    }

    /// What the discovery playbooks should find, and what to do next: in place of the
    /// quickstart's steps. `token_step` is step 0 (the API token), empty when one is configured.
    pub fn next_steps(&self, listen: &str, token_step: &str) -> String {
        let mut text = String::from(
            "\nThe discovery playbooks ran at start (inventory-openai-keys, watch-openai-audit-log, \
             find-openai-usage-spikes);\nwithin a few seconds each of these findings has its run:\n",
        );
        for line in &self.organization.planted {
            let _ = writeln!(text, "  - {line}");
        }
        let _ = write!(
            text,
            "
Next, in another terminal:
{token_step}  1. list the runs: the discovery runs, and one per finding, most waiting for secops:
       quench runs list --api http://{listen}
  2. look at one (RUN from the list): its finding, each step, the request a change would send:
       quench runs show RUN --api http://{listen}
  3. answer for secops, e.g. delete an unused key (review-unused-openai-key asks at gate `ask`);
     the DELETE is recorded with the run, not sent:
       quench approve RUN --gate ask --choice delete --api http://{listen}
  4. verify the audit chain:
       quench audit verify --api http://{listen}
"
        );
        text
    }
}
