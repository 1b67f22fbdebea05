//! Blast-radius rails (`[safety]`): whatever a playbook says, a live mutating call first passes
//! three checks, in this order, each decision audited:
//!
//! - **Protected resources** (`protect`): a call whose target (the step's `project_id`,
//!   `key_id`, `service_account_id`, or the finding's resource and labels) matches a rule runs
//!   only after an answer from the safety approvers: an earlier gate of the run answered by one
//!   of them (not by its timeout), or a safety gate opened for this call.
//! - **Change freezes** (`freeze`): during a window the step waits (a durable timer) until the
//!   window ends, unless the step is `urgent`.
//! - **Budgets** (`max_mutations_per_hour`, `max_per_hour`): calls let through in the last hour
//!   are counted in a ledger in the store (`Key::SafetyUse`, written with the call's intent, so
//!   counting survives restarts), under one lock, so it is exact however many runs race. A call
//!   over budget does not run: its run waits on the one open budget gate, which every run over
//!   budget joins until it is answered — `release` lets them all go on, `hold` (and the gate's
//!   timeout) fails their steps.
//!
//! A safety gate is an `approval` step of a built-in playbook (`quench-safety`, generated from
//! the config and kept as a playbook version like any other, but never matched to findings), so
//! it is asked in Slack, reminded, answered through the API or a NATS decision and audited like
//! every gate. A waiting run records which gate it waits on (`Run::safety_wait`, indexed by
//! `Key::SafetyWait`); when the gate's run ends, the runs waiting on it are driven and each
//! resolves its own step under its own lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use globset::{Glob, GlobMatcher};
use quench_common::config::{ProtectRule, SafetySection};
use quench_proto::Finding;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::drive::{Flow, Outcome, StepCx};
use super::state::{Phase, Run, RunStatus, SafetyWait, StepStatus, Timer};
use super::{Engine, Error, Tx};
use crate::playbook::{CatchUp, Overlap, Playbook, Schedule};
use crate::store::Key;

/// The built-in playbook whose runs are safety gates.
pub const SAFETY_PLAYBOOK: &str = "quench-safety";
/// Its one step: the gate.
const GATE_STEP: &str = "decide";
/// The choice that lets the waiting steps go on (any other, or none, holds them).
const RELEASE: &str = "release";
/// The run key of the shared budget gate (one open at a time).
const BUDGET_KEY: &str = "budget";
/// The budget's rolling window.
const WINDOW: chrono::Duration = chrono::Duration::hours(1);
/// Most cron ticks looked at to find the freeze window around now.
const MAX_TICKS: usize = 100_000;

/// The rails as the engine applies them, built from `[safety]` and checked at start-up.
#[derive(Debug, Clone, Default)]
pub struct SafetyConfig {
    /// Calls per rolling hour, all mutating actions together.
    pub max_per_hour: Option<u32>,
    /// Calls per rolling hour, by action.
    pub max_per_action: BTreeMap<String, u32>,
    /// Who answers a safety gate (as written: emails, Slack ids, `group:<name>`).
    pub approvers: Vec<String>,
    protect: Vec<Protect>,
    freeze: Vec<Freeze>,
    /// The safety gate's playbook, when someone can answer one.
    playbook: Option<Arc<Playbook>>,
}

/// A `[safety]` setting the runner refused, by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value:?}: {problem}")]
pub struct SafetyConfigError {
    pub key: String,
    pub value: String,
    pub problem: String,
}

#[derive(Debug, Clone)]
struct Protect {
    rule: String,
    on: ProtectOn,
    glob: GlobMatcher,
}

#[derive(Debug, Clone)]
enum ProtectOn {
    Project,
    Key,
    Name,
    Label(String),
}

#[derive(Debug, Clone)]
struct Freeze {
    name: String,
    schedule: Schedule,
    duration: chrono::Duration,
}

impl SafetyConfig {
    /// Builds the rails from `[safety]`: action names must be mutating actions, protect globs
    /// and freeze cron lines and time zones must compile.
    pub fn from_section(section: &SafetySection) -> Result<SafetyConfig, SafetyConfigError> {
        let refuse = |key: String, value: &str, problem: String| SafetyConfigError {
            key,
            value: value.to_owned(),
            problem,
        };
        for action in section.max_per_hour.keys() {
            match crate::actions::lookup(action) {
                Some(spec) if spec.mutates => {}
                Some(_) => {
                    return Err(refuse(
                        format!("safety.max_per_hour.\"{action}\""),
                        action,
                        "this action changes nothing, so it has no budget".to_owned(),
                    ));
                }
                None => {
                    let hint = quench_common::suggest::did_you_mean(
                        action,
                        crate::actions::REGISTRY
                            .iter()
                            .filter(|spec| spec.mutates)
                            .map(|spec| spec.name),
                    )
                    .map(|hint| format!(" ({hint})"))
                    .unwrap_or_default();
                    return Err(refuse(
                        format!("safety.max_per_hour.\"{action}\""),
                        action,
                        format!("no such action{hint}"),
                    ));
                }
            }
        }
        let mut protect = Vec::new();
        for (index, rule) in section.protect.iter().enumerate() {
            let key = format!("safety.protect[{index}]");
            let parsed =
                ProtectRule::parse(rule).map_err(|problem| refuse(key.clone(), rule, problem))?;
            let (on, glob) = match parsed {
                ProtectRule::Project(glob) => (ProtectOn::Project, glob),
                ProtectRule::Key(glob) => (ProtectOn::Key, glob),
                ProtectRule::Name(glob) => (ProtectOn::Name, glob),
                ProtectRule::Label(name, glob) => (ProtectOn::Label(name.to_owned()), glob),
            };
            let glob = Glob::new(glob)
                .map_err(|error| refuse(key, rule, format!("not a glob: {error}")))?
                .compile_matcher();
            protect.push(Protect {
                rule: rule.clone(),
                on,
                glob,
            });
        }
        let mut freeze = Vec::new();
        for (index, window) in section.freeze.iter().enumerate() {
            let key = |field: &str| format!("safety.freeze[{index}].{field}");
            let cron = crate::playbook::parse_cron(&window.cron)
                .map_err(|problem| refuse(key("cron"), &window.cron, problem))?;
            let zone = window.timezone.as_deref().unwrap_or("UTC");
            let timezone: chrono_tz::Tz = zone.parse().map_err(|_| {
                refuse(
                    key("timezone"),
                    zone,
                    "not an IANA time zone (e.g. Europe/Berlin)".to_owned(),
                )
            })?;
            let duration = humantime::parse_duration(&window.duration)
                .ok()
                .and_then(|duration| chrono::Duration::from_std(duration).ok())
                .ok_or_else(|| {
                    refuse(
                        key("duration"),
                        &window.duration,
                        "must be a duration such as 62h".to_owned(),
                    )
                })?;
            freeze.push(Freeze {
                name: window
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("freeze[{index}]")),
                schedule: Schedule {
                    line: window.cron.clone(),
                    cron,
                    timezone,
                    overlap: Overlap::Skip,
                    catch_up: CatchUp::Last,
                },
                duration,
            });
        }
        let approvers: Vec<String> = section
            .approvers
            .iter()
            .filter(|approver| !approver.trim().is_empty())
            .cloned()
            .collect();
        let playbook = if approvers.is_empty() {
            None
        } else {
            let playbook = gate_playbook(&approvers, &section.timeout)
                .map_err(|problem| refuse("safety".to_owned(), &section.timeout, problem))?;
            Some(Arc::new(playbook))
        };
        Ok(SafetyConfig {
            max_per_hour: section.max_mutations_per_hour,
            max_per_action: section.max_per_hour.clone(),
            approvers,
            protect,
            freeze,
            playbook,
        })
    }

    /// This partition's share of the budgets, in a cluster of `slot.count` partitions: each
    /// budget divided among the partitions so that the shares add up to it exactly (the first
    /// `budget % count` partitions get one more). Each partition counts its own calls, so the
    /// estate never spends more than the budget in a window; a partition that spent its share
    /// waits on its budget gate. The config check refuses a budget smaller than the count.
    pub fn share(&self, slot: crate::cluster::partition::Slot) -> SafetyConfig {
        let share = |budget: u32| {
            let count = slot.count.max(1);
            budget / count + u32::from(slot.index < budget % count)
        };
        SafetyConfig {
            max_per_hour: self.max_per_hour.map(share),
            max_per_action: self
                .max_per_action
                .iter()
                .map(|(action, budget)| (action.clone(), share(*budget)))
                .collect(),
            ..self.clone()
        }
    }

    /// Whether any rail is set.
    pub fn is_set(&self) -> bool {
        self.max_per_hour.is_some()
            || !self.max_per_action.is_empty()
            || !self.protect.is_empty()
            || !self.freeze.is_empty()
    }

    /// Whether calls of `action` are counted (a budget covers them).
    fn counts(&self, action: &str) -> bool {
        self.max_per_hour.is_some() || self.max_per_action.contains_key(action)
    }

    /// The first protect rule the call's target matches.
    fn protected(&self, input: &Value, finding: Option<&Finding>) -> Option<&str> {
        let field = |name: &str| input.get(name).and_then(Value::as_str);
        let resource = finding.map(|finding| &finding.resource);
        self.protect
            .iter()
            .find(|protect| {
                let candidates: Vec<&str> = match &protect.on {
                    ProtectOn::Project => [
                        field("project_id"),
                        resource.and_then(|resource| resource.project_id.as_deref()),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                    ProtectOn::Key => [
                        field("key_id"),
                        field("api_key_id"),
                        field("service_account_id"),
                        resource.map(|resource| resource.id.as_str()),
                        resource.and_then(|resource| resource.service_account_id.as_deref()),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                    ProtectOn::Name => resource
                        .and_then(|resource| resource.name.as_deref())
                        .into_iter()
                        .collect(),
                    ProtectOn::Label(name) => finding
                        .and_then(|finding| finding.labels.get(name))
                        .map(String::as_str)
                        .into_iter()
                        .collect(),
                };
                candidates
                    .iter()
                    .any(|candidate| protect.glob.is_match(candidate))
            })
            .map(|protect| protect.rule.as_str())
    }

    /// The freeze window `now` falls in: its name and when it ends.
    fn frozen(&self, now: DateTime<Utc>) -> Option<(&str, DateTime<Utc>)> {
        self.freeze.iter().find_map(|freeze| {
            // Windows that opened within `duration` before now and have not ended.
            let mut after = now - freeze.duration;
            for _ in 0..MAX_TICKS {
                let start = super::schedule::next_tick(&freeze.schedule, after)?;
                if start > now {
                    return None;
                }
                let end = start + freeze.duration;
                if end > now {
                    return Some((freeze.name.as_str(), end));
                }
                after = start;
            }
            None
        })
    }
}

/// The safety gate's playbook: one approval step for the safety approvers.
fn gate_playbook(approvers: &[String], timeout: &str) -> Result<Playbook, String> {
    let list = serde_json::to_string(approvers).map_err(|error| error.to_string())?;
    let timeout = serde_json::to_string(timeout).map_err(|error| error.to_string())?;
    let source = format!(
        r#"schema: quench.playbook/v1
name: {SAFETY_PLAYBOOK}
description: >
  Built in. A mutating step that the [safety] rails held (over the hourly budget, or aimed at a
  protected resource) waits here for the safety approvers. "release" lets every step waiting on
  this gate go on; "hold" (or no answer in time) fails them.
on:
  finding:
    kinds: [quench.safety]
vars:
  question: A mutating step is held by the safety rails
steps:
  - id: {GATE_STEP}
    uses: approval
    with:
      approvers: {list}
      question: "{{{{ vars.question }}}}"
      choices: [{RELEASE}, hold]
      timeout: {timeout}
      on_timeout: hold
"#
    );
    let compiled = crate::playbook::compile(&source);
    compiled.playbook.ok_or_else(|| {
        compiled
            .diagnostics
            .first()
            .map_or_else(String::new, |diagnostic| diagnostic.message.clone())
    })
}

/// The budget's state in memory: the ledger of the last hour (as in the store) and the open
/// budget gate. Loaded from the store on first use.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    loaded: bool,
    uses: VecDeque<Use>,
    /// The run of the open budget gate.
    hold: Option<String>,
}

#[derive(Debug, Clone)]
struct Use {
    at: DateTime<Utc>,
    key: String,
    action: String,
}

/// A ledger entry as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UseRecord {
    action: String,
    run: String,
}

impl Ledger {
    fn used(&self, action: Option<&str>) -> u32 {
        self.uses
            .iter()
            .filter(|entry| action.is_none_or(|action| entry.action == action))
            .count() as u32
    }
}

/// The rails' state, as the API and metrics show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SafetyStatus {
    /// Calls let through in the last hour, all mutating actions, and the budget (if any).
    pub used: u32,
    pub max: Option<u32>,
    /// By action: calls in the last hour and the action's budget.
    pub actions: BTreeMap<String, ActionBudget>,
    /// The open budget gate's run, if runs wait on one.
    pub hold: Option<String>,
    /// Runs waiting on safety gates (budget and protect).
    pub waiting: usize,
    /// The change freeze in effect now: its name and end.
    pub freeze: Option<FreezeStatus>,
    /// The protect rules.
    pub protect: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActionBudget {
    pub used: u32,
    pub max: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FreezeStatus {
    pub name: String,
    pub until: DateTime<Utc>,
}

/// The engine's rails: the config and the ledger.
#[derive(Debug, Default)]
pub(super) struct Rails {
    pub(super) config: SafetyConfig,
    ledger: Mutex<Ledger>,
}

impl Rails {
    pub(super) fn new(config: SafetyConfig) -> Rails {
        Rails {
            config,
            ledger: Mutex::default(),
        }
    }
}

impl Engine {
    /// The rails' config.
    fn safety(&self) -> &SafetyConfig {
        &self.inner.rails.config
    }

    /// The ledger, loaded from the store on first use; hold it only for work without awaits.
    fn ledger(&self) -> Result<MutexGuard<'_, Ledger>, Error> {
        let mut ledger = self
            .inner
            .rails
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !ledger.loaded {
            for (at, key, record) in self.inner.store.safety_uses::<UseRecord>()? {
                ledger.uses.push_back(Use {
                    at,
                    key,
                    action: record.action,
                });
            }
            ledger.hold = self
                .inner
                .store
                .get::<String>(Key::Open(SAFETY_PLAYBOOK, BUDGET_KEY))?;
            ledger.loaded = true;
        }
        Ok(ledger)
    }

    /// The rails before a live mutating call's intent. `None` lets the call through (its use
    /// is in the ledger and in `cx.tx`); `Some` is how the step parked instead.
    pub(super) fn rails(
        &self,
        cx: &mut StepCx<'_>,
        action: &str,
        input: &Value,
        iteration: usize,
        key: &str,
    ) -> Result<Option<Flow>, Error> {
        let safety = self.safety();
        if !safety.is_set() {
            return Ok(None);
        }
        let released = cx.state().safety_released == Some(iteration);
        if !released {
            if let Some(rule) = safety.protected(input, cx.run.finding.as_ref())
                && !self.answered_by_safety(cx.run)
            {
                let rule = rule.to_owned();
                let question = format!(
                    "{action} on a protected resource ({rule}), from run {} of {} (step {}). Let it run?",
                    cx.run.id, cx.run.playbook, cx.step.id
                );
                let hold_key = format!("protect:{}:{}:{iteration}", cx.run.id, cx.step.id);
                let hold = self.open_hold(cx.tx, &hold_key, &question, cx.now)?;
                cx.tx.audit(
                    cx.run,
                    cx.now,
                    "safety_protected",
                    Some(&cx.step.id),
                    json!({"action": action, "rule": rule, "hold": hold}),
                );
                return Ok(Some(self.park_on_hold(cx, &hold, "protect", iteration)));
            }
            if !cx.step.urgent
                && let Some((window, until)) = safety.frozen(cx.now)
            {
                let window = window.to_owned();
                cx.tx.audit(
                    cx.run,
                    cx.now,
                    "safety_frozen",
                    Some(&cx.step.id),
                    json!({"action": action, "freeze": window, "until": until}),
                );
                let timer = Timer::Freeze {
                    step: cx.step.id.clone(),
                };
                let detail = json!({"safety": "freeze", "freeze": window, "until": until});
                return Ok(Some(self.park_until(cx, until, timer, detail)));
            }
        }
        if !safety.counts(action) {
            return Ok(None);
        }
        let mut ledger = self.ledger()?;
        while let Some(oldest) = ledger.uses.front()
            && oldest.at <= cx.now - WINDOW
        {
            let oldest = ledger.uses.pop_front().expect("front exists");
            cx.tx.batch.delete(Key::SafetyUse(oldest.at, &oldest.key));
        }
        if !released {
            let global = ledger.used(None);
            let of_action = ledger.used(Some(action));
            let over = match (safety.max_per_hour, safety.max_per_action.get(action)) {
                (Some(max), _) if global >= max => Some(("all mutating actions", global, max)),
                (_, Some(max)) if of_action >= *max => Some((action, of_action, *max)),
                _ => None,
            };
            if let Some((budget, used, max)) = over {
                let hold = match ledger.hold.clone() {
                    Some(hold) => hold,
                    None => {
                        let question = format!(
                            "Safety budget reached: {used} of {max} calls this hour ({budget}); \
                             run {} of {} wants {action}. Every mutating step over budget waits \
                             here: release them all, or hold everything?",
                            cx.run.id, cx.run.playbook
                        );
                        let hold = self.open_hold(cx.tx, BUDGET_KEY, &question, cx.now)?;
                        ledger.hold = Some(hold.clone());
                        hold
                    }
                };
                drop(ledger);
                cx.tx.audit(
                    cx.run,
                    cx.now,
                    "safety_budget_exceeded",
                    Some(&cx.step.id),
                    json!({"action": action, "budget": budget, "used": used, "max": max, "hold": hold}),
                );
                return Ok(Some(self.park_on_hold(cx, &hold, "budget", iteration)));
            }
        }
        ledger.uses.push_back(Use {
            at: cx.now,
            key: key.to_owned(),
            action: action.to_owned(),
        });
        cx.tx.batch.put(
            Key::SafetyUse(cx.now, key),
            &UseRecord {
                action: action.to_owned(),
                run: cx.run.id.clone(),
            },
        );
        Ok(None)
    }

    /// Whether one of the safety approvers answered a gate of this run (a timeout is no answer).
    fn answered_by_safety(&self, run: &Run) -> bool {
        let Ok(allowed) = self.expand(&self.safety().approvers) else {
            return false;
        };
        run.steps.values().any(|step| {
            step.via.as_deref().is_some_and(|via| via != "timeout")
                && step
                    .decided_by
                    .iter()
                    .any(|who| allowed.contains(&super::gate::identity(who)))
        })
    }

    /// Starts a safety gate's run in `tx` (key `hold_key`), asking `question`; returns its id.
    fn open_hold(
        &self,
        tx: &mut Tx,
        hold_key: &str,
        question: &str,
        now: DateTime<Utc>,
    ) -> Result<String, Error> {
        let Some(playbook) = self.safety().playbook.clone() else {
            // `[safety]` with a budget or protect rule needs approvers (checked at load).
            return Err(Error::Safety("no [safety] approvers to ask".to_owned()));
        };
        if !self
            .inner
            .store
            .contains(Key::PlaybookVersion(&playbook.version))?
        {
            tx.batch.put(
                Key::PlaybookVersion(&playbook.version),
                &playbook.source.as_ref(),
            );
        }
        self.versions()
            .insert(playbook.version.clone(), playbook.clone());
        let run = Run::new(&playbook, None, now, crate::playbook::Mode::Live);
        let mut vars = serde_json::Map::new();
        vars.insert("question".to_owned(), Value::String(question.to_owned()));
        let run = self.start_run(tx, &playbook, run, hold_key.to_owned(), vars, now)?;
        Ok(run.id)
    }

    /// Parks the step on the safety gate run `hold`.
    fn park_on_hold(&self, cx: &mut StepCx<'_>, hold: &str, rail: &str, iteration: usize) -> Flow {
        let wait = SafetyWait {
            hold: hold.to_owned(),
            step: cx.step.id.clone(),
            iteration,
            rail: rail.to_owned(),
            since: cx.now,
        };
        cx.tx.batch.put(Key::SafetyWait(hold, &cx.run.id), &wait);
        cx.run.safety_wait = Some(wait);
        self.park(cx, json!({"safety": rail, "hold": hold}));
        // Driven once more after this commit: if the gate ended meanwhile (and its end did not
        // see this run waiting), the run resolves its step then.
        cx.tx.to_drive.push(cx.run.id.clone());
        Flow::Stop
    }

    /// A run waiting on a safety gate whose run has ended: its step is released (it goes
    /// through the rails again, past the one that held it) or held (it fails). Returns whether
    /// anything changed. The caller holds the run's lock.
    pub(super) fn resolve_safety_wait(&self, run: &mut Run, tx: &mut Tx) -> Result<bool, Error> {
        let Some(wait) = run.safety_wait.clone() else {
            return Ok(false);
        };
        if run.status != RunStatus::Waiting {
            return Ok(false);
        }
        let now = self.now();
        let decision = match self.run(&wait.hold)? {
            Some(hold) if hold.status.is_terminal() => {
                let gate = hold.steps.get(GATE_STEP);
                Some((
                    gate.and_then(|gate| gate.choice.clone()),
                    gate.map(|gate| gate.decided_by.clone()).unwrap_or_default(),
                ))
            }
            Some(_) => return Ok(false),
            // Not in the store: the commit that opened it may not be durable yet (it is the
            // open budget gate), or it was lost in a crash that kept this run's wait: then the
            // step goes through the rails again.
            None if self.ledger()?.hold.as_deref() == Some(wait.hold.as_str()) => {
                return Ok(false);
            }
            None => None,
        };
        tx.batch.delete(Key::SafetyWait(&wait.hold, &run.id));
        run.safety_wait = None;
        run.status = RunStatus::Running;
        let (choice, by) = decision.clone().unwrap_or((None, Vec::new()));
        let released = decision.is_none() || choice.as_deref() == Some(RELEASE);
        let detail =
            json!({"hold": wait.hold, "rail": wait.rail, "choice": choice, "decided_by": by});
        if released {
            let state = run.steps.entry(wait.step.clone()).or_default();
            state.status = StepStatus::Pending;
            if decision.is_some() {
                state.safety_released = Some(wait.iteration);
            }
            let kind = if decision.is_some() {
                "safety_released"
            } else {
                "safety_rechecked"
            };
            tx.audit(run, now, kind, Some(&wait.step), detail);
            return Ok(true);
        }
        tx.audit(run, now, "safety_held", Some(&wait.step), detail);
        let playbook = self.version(&run.version)?;
        let steps = match run.phase {
            Phase::Main => &playbook.steps,
            Phase::OnFailure => &playbook.on_failure,
        };
        let Some(step) = steps.iter().find(|step| step.id == wait.step) else {
            return Ok(true);
        };
        let error = format!(
            "held by the safety approvers ({} rail): {}",
            wait.rail,
            choice.as_deref().unwrap_or("no answer")
        );
        let cx = StepCx {
            run,
            playbook: &playbook,
            step,
            tx,
            now,
        };
        self.complete_with(
            cx,
            wait.iteration,
            Outcome {
                status: StepStatus::Failed,
                output: Value::Null,
                error: Some(error),
                fatal: false,
            },
        )?;
        Ok(true)
    }

    /// A safety gate's run ended: it is no longer the open budget gate.
    pub(super) fn hold_ended(&self, run: &Run, tx: &mut Tx) -> Result<(), Error> {
        if run.playbook != SAFETY_PLAYBOOK {
            return Ok(());
        }
        let mut ledger = self.ledger()?;
        if ledger.hold.as_deref() == Some(run.id.as_str()) {
            ledger.hold = None;
        }
        tx.holds_ended.push(run.id.clone());
        Ok(())
    }

    /// The runs waiting on the gate runs that ended, to drive (each resolves its own step).
    pub(super) fn waiting_on(&self, holds: &[String]) -> Result<Vec<String>, Error> {
        let mut runs = Vec::new();
        for hold in holds {
            runs.extend(
                self.inner
                    .store
                    .safety_waiters::<Value>(Some(hold))?
                    .into_iter()
                    .map(|(_, run, _)| run),
            );
        }
        Ok(runs)
    }

    /// Every run waiting on a safety gate (driven at start-up: a gate may have ended before a
    /// crash that kept them waiting).
    pub(super) fn all_waiting(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .inner
            .store
            .safety_waiters::<Value>(None)?
            .into_iter()
            .map(|(_, run, _)| run)
            .collect())
    }

    /// The rails' state now: budget use, the open budget gate, waiting runs, a freeze.
    pub fn safety_status(&self) -> Result<SafetyStatus, Error> {
        let now = self.now();
        let safety = self.safety();
        let waiting = self.inner.store.safety_waiters::<Value>(None)?.len();
        let ledger = self.ledger()?;
        let recent = |action: Option<&str>| {
            ledger
                .uses
                .iter()
                .filter(|entry| entry.at > now - WINDOW)
                .filter(|entry| action.is_none_or(|action| entry.action == action))
                .count() as u32
        };
        let mut actions: BTreeMap<String, ActionBudget> = BTreeMap::new();
        for entry in &ledger.uses {
            actions
                .entry(entry.action.clone())
                .or_insert(ActionBudget { used: 0, max: None });
        }
        for action in safety.max_per_action.keys() {
            actions
                .entry(action.clone())
                .or_insert(ActionBudget { used: 0, max: None });
        }
        for (action, budget) in &mut actions {
            budget.used = recent(Some(action));
            budget.max = safety.max_per_action.get(action).copied();
        }
        Ok(SafetyStatus {
            used: recent(None),
            max: safety.max_per_hour,
            actions,
            hold: ledger.hold.clone(),
            waiting,
            freeze: safety.frozen(now).map(|(name, until)| FreezeStatus {
                name: name.to_owned(),
                until,
            }),
            protect: safety
                .protect
                .iter()
                .map(|protect| protect.rule.clone())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_shares_add_up_to_the_budget() {
        let config = SafetyConfig {
            max_per_hour: Some(20),
            max_per_action: BTreeMap::from([("openai.revoke_key".to_owned(), 8)]),
            ..SafetyConfig::default()
        };
        let shares: Vec<SafetyConfig> = (0..8)
            .map(|index| config.share(crate::cluster::partition::Slot { index, count: 8 }))
            .collect();
        let total: u32 = shares.iter().filter_map(|share| share.max_per_hour).sum();
        assert_eq!(total, 20);
        assert!(shares.iter().all(|share| share.max_per_hour >= Some(2)));
        let revokes: u32 = shares
            .iter()
            .map(|share| share.max_per_action["openai.revoke_key"])
            .sum();
        assert_eq!(revokes, 8);
        let alone = config.share(crate::cluster::partition::Slot::ALONE);
        assert_eq!(alone.max_per_hour, Some(20));
    }
    use quench_common::config::FreezeWindow;

    fn section() -> SafetySection {
        SafetySection {
            approvers: vec!["secops@example.com".to_owned()],
            ..SafetySection::default()
        }
    }

    #[test]
    fn the_gate_playbook_compiles() {
        let config = SafetyConfig::from_section(&section()).expect("config");
        let playbook = config.playbook.expect("a playbook");
        assert_eq!(playbook.name, SAFETY_PLAYBOOK);
        assert_eq!(playbook.steps.len(), 1);
    }

    #[test]
    fn budgets_name_mutating_actions_only() {
        let mut bad = section();
        bad.max_per_hour.insert("openai.revoke_kye".to_owned(), 3);
        let error = SafetyConfig::from_section(&bad).expect_err("typo");
        assert_eq!(error.key, "safety.max_per_hour.\"openai.revoke_kye\"");
        assert!(error.problem.contains("openai.revoke_key"), "{error}");
        let mut reads = section();
        reads.max_per_hour.insert("openai.list_keys".to_owned(), 3);
        let error = SafetyConfig::from_section(&reads).expect_err("not mutating");
        assert!(error.problem.contains("changes nothing"), "{error}");
    }

    #[test]
    fn protect_rules_match_the_target_and_the_finding() {
        let mut with = section();
        with.protect = vec![
            "project:proj_prod*".to_owned(),
            "key:key_keep".to_owned(),
            "label:env=prod".to_owned(),
        ];
        let config = SafetyConfig::from_section(&with).expect("config");
        assert_eq!(
            config.protected(&json!({"project_id": "proj_prod_eu", "key_id": "k"}), None),
            Some("project:proj_prod*")
        );
        assert_eq!(
            config.protected(
                &json!({"project_id": "proj_dev", "key_id": "key_keep"}),
                None
            ),
            Some("key:key_keep")
        );
        assert_eq!(
            config.protected(
                &json!({"project_id": "proj_dev", "key_id": "key_other"}),
                None
            ),
            None
        );
    }

    #[test]
    fn a_freeze_window_holds_from_its_tick_for_its_duration() {
        let mut with = section();
        with.freeze = vec![FreezeWindow {
            name: Some("weekend".to_owned()),
            // Fridays at 18:00 in Berlin, for 62 hours.
            cron: "0 18 * * FRI".to_owned(),
            duration: "62h".to_owned(),
            timezone: Some("Europe/Berlin".to_owned()),
        }];
        let config = SafetyConfig::from_section(&with).expect("config");
        let at = |s: &str| DateTime::parse_from_rfc3339(s).expect("time").to_utc();
        // Friday 2026-12-04 18:00 CET = 17:00 UTC; the window ends Monday 08:00 CET.
        assert_eq!(config.frozen(at("2026-12-04T16:59:00Z")), None);
        assert_eq!(
            config.frozen(at("2026-12-05T12:00:00Z")),
            Some(("weekend", at("2026-12-07T07:00:00Z")))
        );
        assert_eq!(config.frozen(at("2026-12-07T07:00:00Z")), None);
        let mut bad = section();
        bad.freeze = vec![FreezeWindow {
            name: None,
            cron: "0 18 * * FRI".to_owned(),
            duration: "62h".to_owned(),
            timezone: Some("Mars/Olympus".to_owned()),
        }];
        let error = SafetyConfig::from_section(&bad).expect_err("zone");
        assert_eq!(error.key, "safety.freeze[0].timezone");
    }
}
