//! Approval gates and timers: opening a gate, answers (who may answer is decided here, never by
//! the sender), quorum, timeout with `on_timeout`, reminders and escalation; and the durable
//! timers that wake parked runs. Every answer — accepted or refused — is audited.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use quench_proto::{Decision, RunEventKind};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::drive::{Flow, Outcome, StepCx};
use super::state::{
    Answer, EscalationState, Gate, GateDecision, ItemDecision, NoticeKind, Run, RunStatus,
    StepStatus, Timer, item_id,
};
use super::{Engine, Error, Tx};
use crate::actions::Approval;
use crate::playbook::{Step, parse_duration};
use crate::store::{AuditDraft, Key};

const DEFAULT_CHOICES: [&str; 2] = ["approve", "deny"];
/// Most items a gate may ask about: one Slack message holds 50 blocks, two per item.
pub const MAX_GATE_ITEMS: usize = 20;
/// Longest item id (it goes into a Slack block id, whose limit is 255).
const MAX_ITEM_ID: usize = 128;
/// The choice a per-item gate records for itself once every item is decided (each item's own
/// choice is in the step's output).
pub const ITEMS_DECIDED: &str = "items";
/// Timers read per pass of `fire_due`.
const FIRE_BATCH: usize = 4096;
/// Runs whose timers fire at once (their commits are grouped by the store).
const FIRE_CONCURRENCY: usize = 256;

/// What became of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionOutcome {
    /// Recorded, and it decided the gate.
    Decided {
        choice: String,
    },
    /// Recorded; the gate waits for more answers (quorum).
    Recorded {
        choice: String,
        answers: usize,
        quorum: u32,
    },
    Refused(Refusal),
    /// Not taken yet: a Slack user the gate cannot place until its messages are delivered.
    /// Nothing was recorded; the answer is to be offered again shortly.
    Deferred,
}

/// As a log field reads it: `decided: revoke`, `recorded: revoke (1 of 2)`, `refused: …`.
impl std::fmt::Display for DecisionOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecisionOutcome::Decided { choice } => write!(f, "decided: {choice}"),
            DecisionOutcome::Recorded {
                choice,
                answers,
                quorum,
            } => write!(f, "recorded: {choice} ({answers} of {quorum})"),
            DecisionOutcome::Refused(refusal) => write!(f, "refused: {refusal}"),
            DecisionOutcome::Deferred => {
                f.write_str("deferred until the gate's messages are delivered")
            }
        }
    }
}

/// What became of a request to cancel a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    NotFound,
    /// The run had already ended so.
    Ended(RunStatus),
    /// Cancelled (a finding queued behind it starts its run).
    Cancelled,
}

/// Whether an answer the gate cannot place yet may wait (see [`Engine::decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defer {
    /// Decide now: accept or refuse for good (the API, the CLI, a last delivery).
    Never,
    /// A Slack user the gate does not know while its messages are still being delivered is
    /// [`DecisionOutcome::Deferred`], for the caller to offer again, instead of refused.
    WhileUndelivered,
}

/// Why an answer was refused (audited, with who sent it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such run or gate")]
    UnknownGate,
    #[error("the gate's token does not match")]
    WrongToken,
    #[error("`{0}` is not one of the gate's choices")]
    UnknownChoice(String),
    #[error("{0} is not allowed to answer this gate")]
    NotAllowed(String),
    #[error("{0} has already answered")]
    AlreadyAnswered(String),
    #[error("already decided: {choice} by {by}")]
    AlreadyDecided { choice: String, by: String },
    #[error("the gate is closed: the run ended")]
    Closed,
    #[error("the gate asks per item: name one of its items")]
    NoItem,
    #[error("`{0}` is not one of the gate's items")]
    UnknownItem(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownGate => "unknown_gate",
            Refusal::WrongToken => "wrong_token",
            Refusal::UnknownChoice(_) => "unknown_choice",
            Refusal::NotAllowed(_) => "not_allowed",
            Refusal::AlreadyAnswered(_) => "already_answered",
            Refusal::AlreadyDecided { .. } => "already_decided",
            Refusal::Closed => "closed",
            Refusal::NoItem => "no_item",
            Refusal::UnknownItem(_) => "unknown_item",
        }
    }
}

/// Identities compare in lower case; a Slack id may arrive as `T…/U…` (team and user).
pub(super) fn identity(id: &str) -> String {
    let id = id.trim();
    let id = id.rsplit_once('/').map_or(id, |(_, user)| user);
    id.to_lowercase()
}

impl Engine {
    /// Opens the gate of an `approval` step and parks the run on it.
    pub(super) fn open_gate(&self, mut cx: StepCx<'_>, input: Value) -> Result<Flow, Error> {
        let gate = match self.build_gate(cx.run, cx.step, input, cx.now) {
            Ok(gate) => gate,
            Err(error) => {
                return self.finish_step(
                    cx,
                    Outcome {
                        status: StepStatus::Failed,
                        output: Value::Null,
                        error: Some(error),
                        fatal: false,
                    },
                );
            }
        };
        self.set_timer(
            cx.run,
            cx.tx,
            gate.deadline,
            Timer::GateTimeout {
                step: cx.step.id.clone(),
            },
        );
        if let Some(every) = gate.remind_every_secs {
            let due = cx.now + chrono::Duration::seconds(every as i64);
            if due < gate.deadline {
                self.set_timer(
                    cx.run,
                    cx.tx,
                    due,
                    Timer::Remind {
                        step: cx.step.id.clone(),
                    },
                );
            }
        }
        for (index, escalation) in gate.escalations.iter().enumerate() {
            if escalation.at < gate.deadline {
                self.set_timer(
                    cx.run,
                    cx.tx,
                    escalation.at,
                    Timer::Escalate {
                        step: cx.step.id.clone(),
                        index,
                    },
                );
            }
        }
        self.notice(
            cx.tx,
            cx.run,
            &cx.step.id,
            NoticeKind::Open,
            gate.approvers.clone(),
            cx.now,
        );
        cx.tx.batch.put(Key::Gate(&cx.run.id, &cx.step.id), &gate);
        cx.state().status = StepStatus::Waiting;
        cx.run.status = RunStatus::Waiting;
        let detail = json!({
            "question": gate.question,
            "choices": gate.choices,
            "approvers": gate.approvers,
            "quorum": gate.quorum,
            "deadline": gate.deadline,
            "on_timeout": gate.on_timeout,
            "items": gate.item_ids().collect::<Vec<_>>(),
        });
        cx.tx.event(
            cx.run,
            cx.now,
            RunEventKind::Waiting,
            Some(&cx.step.id),
            detail.clone(),
        );
        Ok(Flow::Stop)
    }

    fn build_gate(
        &self,
        run: &Run,
        step: &Step,
        input: Value,
        now: DateTime<Utc>,
    ) -> Result<Gate, String> {
        let approval: Approval =
            serde_json::from_value(input).map_err(|error| format!("approval inputs: {error}"))?;
        let timeout = parse_duration(&approval.timeout)?;
        let choices: Vec<String> = approval.choices.unwrap_or_else(|| {
            DEFAULT_CHOICES
                .iter()
                .map(|choice| (*choice).to_owned())
                .collect()
        });
        if !choices.contains(&approval.on_timeout) {
            return Err(format!(
                "`on_timeout: {}` is not one of the choices",
                approval.on_timeout
            ));
        }
        let approvers: Vec<String> = approval
            .approvers
            .into_iter()
            .filter(|approver| !approver.trim().is_empty())
            .collect();
        let allowed = self.expand(&approvers)?;
        if allowed.is_empty() {
            return Err("the gate has no approvers".to_owned());
        }
        let deadline =
            now + chrono::Duration::from_std(timeout).map_err(|error| error.to_string())?;
        let remind_every_secs = approval
            .remind_every
            .as_deref()
            .map(parse_duration)
            .transpose()?
            .map(|every| every.as_secs().max(1));
        let items = approval.items.unwrap_or_default();
        check_items(&items)?;
        if let Some(choice) = approval
            .comment_for
            .keys()
            .find(|choice| !choices.contains(choice))
        {
            return Err(format!(
                "`comment_for` names `{choice}`, which is not one of the choices"
            ));
        }
        let mut escalations = Vec::new();
        for escalation in approval.escalate {
            let after = parse_duration(&escalation.after)?;
            escalations.push(EscalationState {
                at: now + chrono::Duration::from_std(after).map_err(|error| error.to_string())?,
                to: escalation.to,
                done: false,
            });
        }
        Ok(Gate {
            run_id: run.id.clone(),
            step: step.id.clone(),
            token: hex::encode(rand::random::<[u8; 16]>()),
            question: approval.question,
            choices,
            quorum: approval.quorum.unwrap_or(1).max(1),
            approvers,
            allowed,
            aliases: Default::default(),
            opened_at: now,
            deadline,
            on_timeout: approval.on_timeout,
            remind_every_secs,
            reminders: 0,
            escalations,
            answers: Vec::new(),
            decision: None,
            closed: false,
            messages: Vec::new(),
            items,
            item_decisions: BTreeMap::new(),
            comment_for: approval.comment_for,
        })
    }

    /// Resolves approvers to identities: emails and Slack ids as they are, `group:<name>` and
    /// `team:<name>` to their members from the service config.
    pub(super) fn expand(&self, approvers: &[String]) -> Result<BTreeSet<String>, String> {
        let mut allowed = BTreeSet::new();
        for approver in approvers {
            if let Some(team) = approver.strip_prefix("team:") {
                let members = self.inner.config.owners.team_members(team).ok_or_else(|| {
                    format!("team `{team}` is not defined in the service config (`[teams]`)")
                })?;
                allowed.extend(members.iter().map(|member| identity(member)));
                continue;
            }
            match approver.strip_prefix("group:") {
                Some(group) => {
                    let members = self
                        .inner
                        .config
                        .groups
                        .get(group)
                        .ok_or_else(|| format!("approver group `{group}` is not defined in the service config (`[groups]`)"))?;
                    allowed.extend(members.iter().map(|member| identity(member)));
                }
                None => {
                    allowed.insert(identity(approver));
                }
            }
        }
        Ok(allowed)
    }

    /// Takes an answer to a gate and returns what became of it; a decided gate's run is
    /// driven on by the engine. Who may answer is decided here, whatever the sender claims, and
    /// every answer (accepted or refused) is audited.
    pub async fn decide(
        &self,
        decision: &Decision,
        defer: Defer,
    ) -> Result<DecisionOutcome, Error> {
        let guard = self.inner.locks.lock(&decision.run_id).await;
        let now = self.now();
        let mut tx = Tx::default();
        let run: Option<Run> = self.run(&decision.run_id)?;
        let gate: Option<Gate> = self
            .inner
            .store
            .get(Key::Gate(&decision.run_id, &decision.gate))?;
        let actor = json!({"via": decision.actor.via, "id": decision.actor.id, "name": decision.actor.name});
        let (Some(mut run), Some(mut gate)) = (run, gate) else {
            let mut draft = AuditDraft::new(
                now,
                "decision",
                json!({"decision": decision.id, "choice": decision.choice, "refused": Refusal::UnknownGate.code()}),
            );
            draft.run_id = Some(decision.run_id.clone());
            draft.step = Some(decision.gate.clone());
            draft.actor = Some(actor);
            draft.allowed = Some(false);
            tx.audit_draft(draft);
            self.commit(tx).await?;
            return Ok(DecisionOutcome::Refused(Refusal::UnknownGate));
        };
        let refusal = self.check_answer(&run, &gate, decision);
        // A Slack user the gate does not know yet, while its messages are still being delivered
        // (their delivery is what records which Slack id an emailed approver has): come back
        // later rather than refuse someone who may well be allowed.
        if defer == Defer::WhileUndelivered
            && matches!(refusal, Some(Refusal::NotAllowed(_)))
            && decision.actor.via == quench_proto::Via::Slack
            && gate.messages.is_empty()
            && self.inner.notifier.is_some()
        {
            return Ok(DecisionOutcome::Deferred);
        }
        let step = gate.step.clone();
        if let Some(refusal) = refusal {
            let mut detail = json!({"decision": decision.id, "choice": decision.choice, "refused": refusal.code(), "reason": refusal.to_string()});
            if let Some(comment) = &decision.comment {
                detail["comment"] = comment.clone().into();
            }
            tx.audit(&run, now, "decision", Some(&step), detail);
            mark_last_actor(&mut tx, actor, false);
            tx.save(&mut run, now);
            self.commit(tx).await?;
            return Ok(DecisionOutcome::Refused(refusal));
        }
        gate.answers.push(Answer {
            actor: decision.actor.id.clone(),
            name: decision.actor.name.clone(),
            via: via_name(decision),
            choice: decision.choice.clone(),
            at: now,
            comment: decision.comment.clone(),
            item: decision.item.clone(),
        });
        let mut detail = json!({"decision": decision.id, "choice": decision.choice, "comment": decision.comment});
        if let Some(item) = &decision.item {
            detail["item"] = item.clone().into();
        }
        tx.audit(&run, now, "decision", Some(&step), detail);
        mark_last_actor(&mut tx, actor, true);
        let agreeing: Vec<&Answer> = gate
            .answers
            .iter()
            .filter(|answer| answer.choice == decision.choice && answer.item == decision.item)
            .collect();
        let outcome = if agreeing.len() as u32 >= gate.quorum {
            let decided_by: Vec<String> =
                agreeing.iter().map(|answer| answer.actor.clone()).collect();
            match &decision.item {
                Some(item) => {
                    gate.item_decisions.insert(
                        item.clone(),
                        ItemDecision {
                            choice: decision.choice.clone(),
                            decided_by,
                            decided_at: now,
                            via: via_name(decision),
                            comment: decision.comment.clone(),
                            defaulted: false,
                        },
                    );
                    if gate.undecided().next().is_none() {
                        let decided = items_decided(&gate, now);
                        self.decide_gate(&mut run, &mut gate, decided, &mut tx);
                    } else if !gate.messages.is_empty() {
                        self.notice(&mut tx, &run, &step, NoticeKind::Progress, Vec::new(), now);
                    }
                }
                None => {
                    let decided = GateDecision {
                        choice: decision.choice.clone(),
                        decided_by,
                        decided_at: now,
                        via: via_name(decision),
                    };
                    self.decide_gate(&mut run, &mut gate, decided, &mut tx);
                }
            }
            DecisionOutcome::Decided {
                choice: decision.choice.clone(),
            }
        } else {
            DecisionOutcome::Recorded {
                choice: decision.choice.clone(),
                answers: agreeing.len(),
                quorum: gate.quorum,
            }
        };
        tx.batch.put(Key::Gate(&run.id, &gate.step), &gate);
        // A decided run goes on in this commit up to its next call, which is made before the
        // gate's closing notice this commit queued.
        self.drive_on(run, &mut tx, guard, now)?;
        self.commit(tx).await?;
        Ok(outcome)
    }

    fn check_answer(&self, run: &Run, gate: &Gate, decision: &Decision) -> Option<Refusal> {
        if !bool::from(gate.token.as_bytes().ct_eq(decision.token.as_bytes())) {
            return Some(Refusal::WrongToken);
        }
        if let Some(decided) = &gate.decision {
            return Some(Refusal::AlreadyDecided {
                choice: decided.choice.clone(),
                by: decided.decided_by.join(", "),
            });
        }
        if gate.closed || run.status.is_terminal() {
            return Some(Refusal::Closed);
        }
        if !gate.choices.contains(&decision.choice) {
            return Some(Refusal::UnknownChoice(decision.choice.clone()));
        }
        match (&decision.item, gate.per_item()) {
            (None, true) => return Some(Refusal::NoItem),
            (Some(item), false) => return Some(Refusal::UnknownItem(item.clone())),
            (Some(item), true) => {
                if !gate.item_ids().any(|id| id == item) {
                    return Some(Refusal::UnknownItem(item.clone()));
                }
                if let Some(decided) = gate.item_decisions.get(item) {
                    return Some(Refusal::AlreadyDecided {
                        choice: decided.choice.clone(),
                        by: decided.decided_by.join(", "),
                    });
                }
            }
            (None, false) => {}
        }
        let who = identity(&decision.actor.id);
        if !gate.allows(&decision.actor.id) {
            return Some(Refusal::NotAllowed(decision.actor.id.clone()));
        }
        if gate
            .answers
            .iter()
            .any(|answer| identity(&answer.actor) == who && answer.item == decision.item)
        {
            return Some(Refusal::AlreadyAnswered(decision.actor.id.clone()));
        }
        None
    }

    /// Records the gate's decision on the gate and the step, and wakes the run.
    fn decide_gate(&self, run: &mut Run, gate: &mut Gate, decided: GateDecision, tx: &mut Tx) {
        let GateDecision {
            choice,
            decided_by,
            decided_at: now,
            via,
        } = decided.clone();
        gate.decision = Some(decided);
        for name in [
            Timer::GateTimeout {
                step: gate.step.clone(),
            }
            .name(),
            Timer::Remind {
                step: gate.step.clone(),
            }
            .name(),
        ] {
            self.clear_timer(run, tx, &name);
        }
        for index in 0..gate.escalations.len() {
            self.clear_timer(
                run,
                tx,
                &Timer::Escalate {
                    step: gate.step.clone(),
                    index,
                }
                .name(),
            );
        }
        if !gate.messages.is_empty() {
            self.notice(tx, run, &gate.step, NoticeKind::Closed, Vec::new(), now);
        }
        let step = run.steps.entry(gate.step.clone()).or_default();
        step.status = StepStatus::Succeeded;
        step.choice = Some(choice.clone());
        step.decided_by = decided_by.clone();
        step.decided_at = Some(now);
        step.via = Some(via.clone());
        step.output = if gate.per_item() {
            items_output(gate)
        } else {
            // What the deciding answers said besides their choice (e.g. why a tool stays on).
            let comments: Vec<Value> = gate
                .answers
                .iter()
                .filter(|answer| answer.choice == choice && answer.item.is_none())
                .filter_map(|answer| {
                    let comment = answer.comment.as_deref()?.trim();
                    (!comment.is_empty()).then(|| json!({"by": answer.actor, "comment": comment}))
                })
                .collect();
            json!({"choice": choice, "decided_by": decided_by, "via": via, "comments": comments})
        };
        step.finished_at = Some(now);
        run.status = RunStatus::Running;
        tx.event(
            run,
            now,
            RunEventKind::Decided,
            Some(&gate.step),
            json!({"choice": choice, "decided_by": decided_by, "via": via}),
        );
    }

    /// Fires every timer due now, runs in parallel (their commits group), each run's timers in
    /// due order; the runs they wake are driven by the engine. Returns how many fired.
    pub async fn fire_due(&self) -> Result<usize, Error> {
        let mut fired = 0;
        loop {
            let now = self.now();
            let due = self.inner.store.due_timers::<Timer>(now, FIRE_BATCH)?;
            if due.is_empty() {
                return Ok(fired);
            }
            fired += due.len();
            let mut by_run: BTreeMap<String, Vec<(crate::store::TimerKey, Timer)>> =
                BTreeMap::new();
            for (key, timer) in due {
                by_run
                    .entry(key.run.clone())
                    .or_default()
                    .push((key, timer));
            }
            let limit = Arc::new(tokio::sync::Semaphore::new(FIRE_CONCURRENCY));
            let mut tasks = tokio::task::JoinSet::new();
            for (_, timers) in by_run {
                let engine = self.clone();
                let permit = limit
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Stopped)?;
                tasks.spawn(async move {
                    let _permit = permit;
                    for (key, timer) in timers {
                        engine.fire(&key, timer).await?;
                    }
                    Ok::<_, Error>(())
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.map_err(|_| Error::Stopped)??;
            }
        }
    }

    async fn fire(&self, key: &crate::store::TimerKey, timer: Timer) -> Result<(), Error> {
        if let Timer::Notify {
            step,
            notice,
            to,
            attempt,
            ..
        } = timer
        {
            return self.deliver_notice(key, step, notice, to, attempt).await;
        }
        let guard = self.inner.locks.lock(&key.run).await;
        let now = self.now();
        let mut tx = Tx::default();
        tx.batch.delete(key.key());
        let run: Option<Run> = self.run(&key.run)?;
        let Some(mut run) = run.filter(|run| {
            !run.status.is_terminal()
                && run
                    .timers
                    .iter()
                    .any(|set| set.name == key.name && set.due == key.due)
        }) else {
            // A stale timer (the run ended, or the timer was replaced): just remove it.
            return self.commit(tx).await;
        };
        run.timers
            .retain(|set| !(set.name == key.name && set.due == key.due));
        match timer {
            Timer::Wait { step } => {
                let state = run.steps.entry(step.clone()).or_default();
                state.status = StepStatus::Succeeded;
                state.finished_at = Some(now);
                run.status = RunStatus::Running;
                tx.event(
                    &run,
                    now,
                    RunEventKind::StepSucceeded,
                    Some(&step),
                    json!({"waited_until": key.due}),
                );
            }
            Timer::Retry { step } => {
                run.steps.entry(step.clone()).or_default().status = StepStatus::Running;
                run.status = RunStatus::Running;
            }
            Timer::Freeze { step } => {
                // The step starts again, through the rails (another window may have begun).
                run.steps.entry(step.clone()).or_default().status = StepStatus::Pending;
                run.status = RunStatus::Running;
                tx.audit(
                    &run,
                    now,
                    "safety_freeze_ended",
                    Some(&step),
                    json!({"until": key.due}),
                );
            }
            Timer::GateTimeout { step } => {
                if let Some(mut gate) = self.inner.store.get::<Gate>(Key::Gate(&run.id, &step))?
                    && gate.decision.is_none()
                {
                    let choice = gate.on_timeout.clone();
                    let defaulted: Vec<String> = gate.undecided().map(str::to_owned).collect();
                    let mut detail = json!({"choice": choice, "answers": gate.answers.len()});
                    if gate.per_item() {
                        // Every item nobody answered takes the default, each on the record.
                        detail["defaulted"] = json!(defaulted);
                    }
                    tx.audit(&run, now, "gate_timed_out", Some(&step), detail);
                    for item in defaulted {
                        gate.item_decisions.insert(
                            item,
                            ItemDecision {
                                choice: choice.clone(),
                                decided_by: vec!["timeout".to_owned()],
                                decided_at: now,
                                via: "timeout".to_owned(),
                                comment: None,
                                defaulted: true,
                            },
                        );
                    }
                    let decided = if gate.per_item() {
                        items_decided(&gate, now)
                    } else {
                        GateDecision {
                            choice,
                            decided_by: vec!["timeout".to_owned()],
                            decided_at: now,
                            via: "timeout".to_owned(),
                        }
                    };
                    self.decide_gate(&mut run, &mut gate, decided, &mut tx);
                    tx.batch.put(Key::Gate(&run.id, &step), &gate);
                }
            }
            Timer::Remind { step } => {
                if let Some(mut gate) = self.inner.store.get::<Gate>(Key::Gate(&run.id, &step))?
                    && gate.decision.is_none()
                {
                    gate.reminders += 1;
                    let pending = self.not_answered(&gate);
                    tx.audit(
                        &run,
                        now,
                        "gate_reminder",
                        Some(&step),
                        json!({"reminder": gate.reminders, "to": pending}),
                    );
                    self.notice(&mut tx, &run, &step, NoticeKind::Remind, pending, now);
                    if let Some(every) = gate.remind_every_secs {
                        let next = now + chrono::Duration::seconds(every as i64);
                        if next < gate.deadline {
                            self.set_timer(
                                &mut run,
                                &mut tx,
                                next,
                                Timer::Remind { step: step.clone() },
                            );
                        }
                    }
                    tx.batch.put(Key::Gate(&run.id, &step), &gate);
                }
            }
            Timer::Escalate { step, index } => {
                if let Some(mut gate) = self.inner.store.get::<Gate>(Key::Gate(&run.id, &step))?
                    && gate.decision.is_none()
                    && let Some(escalation) = gate.escalations.get(index).cloned()
                {
                    match self.expand(&escalation.to) {
                        Ok(added) => {
                            gate.allowed.extend(added);
                            gate.approvers.extend(escalation.to.iter().cloned());
                            tx.audit(
                                &run,
                                now,
                                "gate_escalated",
                                Some(&step),
                                json!({"to": escalation.to}),
                            );
                            self.notice(
                                &mut tx,
                                &run,
                                &step,
                                NoticeKind::Escalate,
                                escalation.to.clone(),
                                now,
                            );
                        }
                        Err(error) => {
                            tx.audit(
                                &run,
                                now,
                                "gate_escalation_failed",
                                Some(&step),
                                json!({"to": escalation.to, "error": error}),
                            );
                        }
                    }
                    if let Some(state) = gate.escalations.get_mut(index) {
                        state.done = true;
                    }
                    tx.batch.put(Key::Gate(&run.id, &step), &gate);
                }
            }
            Timer::Notify { .. } => {}
            Timer::RunTimeout => {
                let playbook = self.version(&run.version)?;
                let error = format!(
                    "the run timed out (its `timeout` passed at {})",
                    key.due.to_rfc3339()
                );
                // A run in its `on_failure` steps is already failing; the deadline ends it.
                if run.phase == super::state::Phase::Main {
                    let at = run
                        .steps
                        .iter()
                        .find(|(_, state)| !state.status.is_done())
                        .map(|(id, _)| id.clone())
                        .unwrap_or_default();
                    self.close_waiting_steps(&mut run, &mut tx, now)?;
                    run.status = RunStatus::Running;
                    self.fail_run(&mut run, &playbook, &at, error, &mut tx, now)?;
                } else {
                    self.end(&mut run, &mut tx, RunStatus::Failed, Some(error), now)?;
                }
            }
        }
        self.drive_on(run, &mut tx, guard, now)?;
        self.commit(tx).await
    }

    /// When a run fails while parked (its deadline), its waiting step fails and its timers go.
    fn close_waiting_steps(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        for state in run.steps.values_mut() {
            if matches!(state.status, StepStatus::Waiting | StepStatus::Running) {
                state.status = StepStatus::Failed;
                state.error = Some("the run timed out".to_owned());
                state.finished_at = Some(now);
                state.in_flight = None;
            }
        }
        self.clear_timers_and_gates(run, tx)
    }

    /// The approvers to remind: everyone asked who has not answered. An answer counts under
    /// every name its author is known by (a Slack id, and the email it was looked up from), and
    /// a group is reminded member by member once one of them has answered.
    fn not_answered(&self, gate: &Gate) -> Vec<String> {
        if gate.per_item() {
            // Items are still open (or there would be no reminder): everyone asked is asked
            // again, since any of them may answer the rest.
            let mut seen = BTreeSet::new();
            return gate
                .approvers
                .iter()
                .filter(|approver| seen.insert(identity(approver)))
                .cloned()
                .collect();
        }
        let mut answered = BTreeSet::new();
        for answer in &gate.answers {
            let who = identity(&answer.actor);
            if let Some(email) = gate.aliases.get(&who) {
                answered.insert(identity(email));
            }
            answered.insert(who);
        }
        let mut pending = Vec::new();
        let mut seen = BTreeSet::new();
        for approver in &gate.approvers {
            let members = if answered.is_empty() {
                None
            } else if let Some(team) = approver.strip_prefix("team:") {
                self.inner.config.owners.team_members(team)
            } else {
                approver
                    .strip_prefix("group:")
                    .and_then(|group| self.inner.config.groups.get(group))
                    .cloned()
            };
            let names = match members {
                Some(members) => members,
                None => vec![approver.clone()],
            };
            for name in names {
                let id = identity(&name);
                if !answered.contains(&id) && seen.insert(id) {
                    pending.push(name);
                }
            }
        }
        pending
    }

    /// Cancels a run that has not ended, on behalf of an operator (`actor`, audited with the
    /// reason). Returns what happened; a cancelled run's slot may start a queued finding's run.
    pub async fn cancel(
        &self,
        run_id: &str,
        reason: &str,
        actor: &quench_proto::Actor,
    ) -> Result<Cancel, Error> {
        let _guard = self.inner.locks.lock(run_id).await;
        let mut tx = Tx::default();
        let Some(mut run) = self.run(run_id)? else {
            return Ok(Cancel::NotFound);
        };
        if run.status.is_terminal() {
            return Ok(Cancel::Ended(run.status));
        }
        let now = self.now();
        tx.audit(
            &run,
            now,
            "run_cancel_requested",
            None,
            json!({"reason": reason}),
        );
        tx.batch.amend_last_audit(|draft| {
            draft.actor = Some(serde_json::to_value(actor).unwrap_or(Value::Null));
        });
        self.cancel_locked(&mut run, reason, &mut tx, now)?;
        tx.save(&mut run, now);
        self.commit(tx).await?;
        Ok(Cancel::Cancelled)
    }

    /// Cancels a run whose lock the caller holds.
    pub(super) fn cancel_locked(
        &self,
        run: &mut Run,
        reason: &str,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        for state in run.steps.values_mut() {
            if matches!(state.status, StepStatus::Waiting | StepStatus::Running) {
                state.status = StepStatus::Skipped;
                state.error = Some(format!("cancelled: {reason}"));
                state.in_flight = None;
            }
        }
        self.end(run, tx, RunStatus::Cancelled, Some(reason.to_owned()), now)
    }
}

/// Checks a per-item gate's items: at most [`MAX_GATE_ITEMS`], each an object with a unique
/// string `id`.
fn check_items(items: &[serde_json::Map<String, Value>]) -> Result<(), String> {
    if items.len() > MAX_GATE_ITEMS {
        return Err(format!(
            "`items` lists {} items; a gate asks about at most {MAX_GATE_ITEMS}",
            items.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for (index, item) in items.iter().enumerate() {
        let id = match item.get("id") {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ITEM_ID => id,
            _ => {
                return Err(format!(
                    "`items[{index}]` needs an `id`: a string of 1 to {MAX_ITEM_ID} bytes"
                ));
            }
        };
        if !seen.insert(id) {
            return Err(format!("`items` lists `{id}` twice"));
        }
    }
    Ok(())
}

/// The decision a per-item gate records once every item is decided: who decided any of them.
fn items_decided(gate: &Gate, now: DateTime<Utc>) -> GateDecision {
    let mut decided_by: Vec<String> = Vec::new();
    let mut via: Vec<String> = Vec::new();
    for decision in gate.item_decisions.values() {
        for who in &decision.decided_by {
            if !decided_by.contains(who) {
                decided_by.push(who.clone());
            }
        }
        if !via.contains(&decision.via) {
            via.push(decision.via.clone());
        }
    }
    GateDecision {
        choice: ITEMS_DECIDED.to_owned(),
        decided_by,
        decided_at: now,
        via: via.join(","),
    }
}

/// A per-item gate's step output: every item with its decision (`items`), the items by choice
/// (`by_choice`, every choice present), and how many were `defaulted`.
pub(super) fn items_output(gate: &Gate) -> Value {
    let mut by_choice: serde_json::Map<String, Value> = gate
        .choices
        .iter()
        .map(|choice| (choice.clone(), Value::Array(Vec::new())))
        .collect();
    let mut items = Vec::new();
    let mut defaulted = 0;
    for item in &gate.items {
        let mut out = item.clone();
        if let Some(decision) = gate.item_decisions.get(item_id(item)) {
            out.insert("choice".into(), decision.choice.clone().into());
            out.insert("decided_by".into(), json!(decision.decided_by));
            out.insert("decided_at".into(), json!(decision.decided_at));
            out.insert("via".into(), decision.via.clone().into());
            out.insert("comment".into(), json!(decision.comment));
            out.insert("defaulted".into(), decision.defaulted.into());
            defaulted += usize::from(decision.defaulted);
            if let Some(Value::Array(list)) = by_choice.get_mut(&decision.choice) {
                list.push(Value::Object(out.clone()));
            }
        }
        items.push(Value::Object(out));
    }
    let decision = gate.decision.as_ref();
    json!({
        "choice": ITEMS_DECIDED,
        "decided_by": decision.map(|d| d.decided_by.clone()).unwrap_or_default(),
        "via": decision.map(|d| d.via.clone()).unwrap_or_default(),
        "items": items,
        "by_choice": by_choice,
        "defaulted": defaulted,
    })
}

fn via_name(decision: &Decision) -> String {
    serde_json::to_value(decision.actor.via)
        .ok()
        .and_then(|via| via.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Sets the actor and verdict on the audit entry just appended.
fn mark_last_actor(tx: &mut Tx, actor: Value, allowed: bool) {
    tx.batch.amend_last_audit(|draft| {
        draft.actor = Some(actor);
        draft.allowed = Some(allowed);
    });
}
