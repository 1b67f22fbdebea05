//! The pack's renderings of its document: one CSV file per table (RFC 4180, CRLF, a header row)
//! and one HTML report that needs nothing but itself (inline CSS, no script, no link, no image)
//! and prints well. Both are deterministic functions of the document: `quench evidence verify`
//! renders them again and compares.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Document, Milestone, Section};

/// The CSV files of a pack, by name.
pub(super) fn csv_files(document: &Document) -> Vec<(String, String)> {
    let time = |at: &DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let option_time = |at: &Option<DateTime<Utc>>| at.as_ref().map(time).unwrap_or_default();
    let seconds = |ms: Option<i64>| ms.map(format_seconds).unwrap_or_default();
    let option = |value: &Option<String>| value.clone().unwrap_or_default();
    let milestone = |milestone: &Option<Milestone>| match milestone {
        Some(milestone) => [
            time(&milestone.at),
            format_seconds(milestone.after_ms),
            milestone.what.clone(),
            milestone.seq.to_string(),
        ],
        None => Default::default(),
    };
    let mut files = Vec::new();

    let mut findings = Table::new(&[
        "id",
        "kind",
        "key",
        "severity",
        "source",
        "received_at",
        "seq",
        "runs",
        "first_action_at",
        "time_to_first_action_seconds",
        "first_action",
        "first_action_seq",
        "resolved_at",
        "time_to_resolution_seconds",
        "resolution",
        "resolution_seq",
    ]);
    for finding in &document.findings {
        let mut row = vec![
            finding.id.clone(),
            finding.kind.clone(),
            finding.key.clone(),
            finding.severity.clone(),
            finding.source.clone(),
            time(&finding.received_at),
            finding.seq.to_string(),
            finding.runs.join(" "),
        ];
        row.extend(milestone(&finding.first_action));
        row.extend(milestone(&finding.resolution));
        findings.row(row);
    }
    files.push(("findings.csv".to_owned(), findings.finish()));

    let mut timing = Table::new(&[
        "severity",
        "findings",
        "acted",
        "resolved",
        "first_action_median_seconds",
        "first_action_p90_seconds",
        "resolution_median_seconds",
        "resolution_p90_seconds",
    ]);
    for row in &document.timing {
        timing.row(vec![
            row.severity.clone(),
            row.findings.to_string(),
            row.acted.to_string(),
            row.resolved.to_string(),
            seconds(row.first_action_median_ms),
            seconds(row.first_action_p90_ms),
            seconds(row.resolution_median_ms),
            seconds(row.resolution_p90_ms),
        ]);
    }
    files.push(("timing.csv".to_owned(), timing.finish()));

    let mut actions = Table::new(&[
        "at",
        "seq",
        "run_id",
        "playbook",
        "step",
        "action",
        "idempotency_key",
        "finding",
        "key",
        "request",
        "input",
        "channel",
        "choice",
        "approvers",
        "result",
        "result_at",
        "result_seq",
        "error",
        "executions",
    ]);
    for action in &document.actions {
        actions.row(vec![
            time(&action.at),
            action.seq.to_string(),
            action.run_id.clone(),
            action.playbook.clone(),
            action.step.clone(),
            action.action.clone(),
            action.idempotency_key.clone(),
            option(&action.finding),
            option(&action.key),
            compact(&action.request),
            compact(&action.input),
            action.channel.clone(),
            option(&action.choice),
            approvers(&action.approvers),
            action.result.clone(),
            option_time(&action.result_at),
            action
                .result_seq
                .map(|seq| seq.to_string())
                .unwrap_or_default(),
            option(&action.error),
            action.executions.to_string(),
        ]);
    }
    files.push(("actions.csv".to_owned(), actions.finish()));

    let mut exceptions = Table::new(&[
        "decided_at",
        "seq",
        "run_id",
        "playbook",
        "step",
        "finding",
        "kind",
        "key",
        "severity",
        "choice",
        "decided_by",
        "channel",
        "reason",
        "approvers",
        "run_status",
    ]);
    for exception in &document.exceptions {
        exceptions.row(vec![
            time(&exception.decided_at),
            exception.seq.to_string(),
            exception.run_id.clone(),
            exception.playbook.clone(),
            exception.step.clone(),
            option(&exception.finding),
            option(&exception.kind),
            option(&exception.key),
            option(&exception.severity),
            exception.choice.clone(),
            exception.decided_by.join(" "),
            exception.channel.clone(),
            option(&exception.reason),
            approvers(&exception.approvers),
            exception.run_status.clone(),
        ]);
    }
    files.push(("exceptions.csv".to_owned(), exceptions.finish()));

    let mut inventory = Table::new(&[
        "id",
        "kind",
        "project",
        "name",
        "owner",
        "owner_source",
        "purpose",
        "created_at",
        "last_used_at",
        "expires_at",
        "deleted_at",
        "risks",
    ]);
    for identity in &document.inventory.rows {
        inventory.row(vec![
            identity.id.clone(),
            identity.kind.clone(),
            option(&identity.project),
            option(&identity.name),
            option(&identity.owner),
            option(&identity.owner_source),
            option(&identity.purpose),
            option_time(&identity.created_at),
            option_time(&identity.last_used_at),
            option_time(&identity.expires_at),
            option_time(&identity.deleted_at),
            identity.risks.join("; "),
        ]);
    }
    files.push(("inventory.csv".to_owned(), inventory.finish()));

    let mut campaigns = Table::new(&[
        "id",
        "name",
        "scope",
        "started_at",
        "deadline",
        "ended_at",
        "default_answer",
        "answered",
        "pending",
        "defaulted",
    ]);
    for campaign in &document.campaigns.rows {
        campaigns.row(vec![
            campaign.id.clone(),
            campaign.name.clone(),
            campaign.scope.clone(),
            time(&campaign.started_at),
            option_time(&campaign.deadline),
            option_time(&campaign.ended_at),
            option(&campaign.default_answer),
            campaign.answered.to_string(),
            campaign.pending.to_string(),
            campaign.defaulted.to_string(),
        ]);
    }
    files.push(("campaigns.csv".to_owned(), campaigns.finish()));

    let mut attestations = Table::new(&[
        "campaign", "identity", "owner", "answer", "purpose", "by", "via", "at", "seq",
    ]);
    for attestation in &document.attestations.rows {
        attestations.row(vec![
            attestation.campaign.clone(),
            attestation.identity.clone(),
            option(&attestation.owner),
            attestation.answer.clone(),
            option(&attestation.purpose),
            option(&attestation.by),
            option(&attestation.via),
            time(&attestation.at),
            attestation
                .seq
                .map(|seq| seq.to_string())
                .unwrap_or_default(),
        ]);
    }
    files.push(("attestations.csv".to_owned(), attestations.finish()));

    let mut chain = Table::new(&["field", "value"]);
    for (field, value) in chain_facts(document) {
        chain.row(vec![field.to_owned(), value]);
    }
    files.push(("chain.csv".to_owned(), chain.finish()));
    files
}

/// The chain section as (field, value) pairs, for the CSV and the report.
fn chain_facts(document: &Document) -> Vec<(&'static str, String)> {
    let chain = &document.chain;
    let number = |value: Option<u64>| value.map(|seq| seq.to_string()).unwrap_or_default();
    vec![
        ("verified", chain.verified.to_string()),
        ("head_seq", chain.head_seq.to_string()),
        ("head", chain.head.clone()),
        ("first_bad", number(chain.first_bad)),
        ("reason", chain.reason.clone().unwrap_or_default()),
        ("checkpoint", chain.checkpoint.to_string()),
        ("complete", chain.complete.to_string()),
        ("first", number(chain.first)),
        ("first_prev", chain.first_prev.clone().unwrap_or_default()),
        ("last", number(chain.last)),
        ("last_hash", chain.last_hash.clone().unwrap_or_default()),
        ("entries", chain.entries.to_string()),
    ]
}

/// Milliseconds as seconds with three decimals.
fn format_seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}", ms / 1000, ms % 1000)
}

/// Milliseconds for a reader: `4h 02m 05s`, `3d 01h`, `850ms`.
fn humanize(ms: i64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let seconds = ms / 1000;
    let (days, hours, minutes, seconds) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds:02}s"),
        (0, _, _) => format!("{hours}h {minutes:02}m {seconds:02}s"),
        _ => format!("{days}d {hours:02}h {minutes:02}m"),
    }
}

fn compact(value: &Value) -> String {
    if value.is_null() {
        String::new()
    } else {
        value.to_string()
    }
}

fn approvers(approvers: &[super::Approver]) -> String {
    approvers
        .iter()
        .map(|approver| {
            format!(
                "{} ({}, {}, {})",
                approver.id,
                approver.via,
                approver
                    .at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                approver.choice
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An RFC 4180 table.
struct Table {
    text: String,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        let mut table = Table {
            text: String::new(),
        };
        table.row(header.iter().map(|cell| (*cell).to_owned()).collect());
        table
    }

    fn row(&mut self, cells: Vec<String>) {
        let cells: Vec<String> = cells.iter().map(|cell| csv_cell(cell)).collect();
        self.text.push_str(&cells.join(","));
        self.text.push_str("\r\n");
    }

    fn finish(self) -> String {
        self.text
    }
}

/// One CSV cell: quoted when it holds a comma, quote or line break (quotes doubled), and
/// prefixed with `'` when a spreadsheet would take it for a formula (it starts with `=`, `+`,
/// `-`, `@`, a tab or a carriage return): a finding's text must never run in an auditor's
/// spreadsheet.
pub(super) fn csv_cell(cell: &str) -> String {
    let guarded = if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// HTML text with `&`, `<`, `>`, `"` and `'` escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The sections of the report, by id and title, in order (the test holds the report to them).
pub const SECTIONS: [(&str, &str); 10] = [
    ("summary", "Summary"),
    (
        "timing",
        "Time to first action and to resolution, by severity",
    ),
    ("findings", "Findings"),
    ("actions", "Mutating actions"),
    ("exceptions", "Policy exceptions"),
    ("inventory", "Inventory at the period's end"),
    ("campaigns", "Attestation campaigns"),
    ("attestations", "Attestations"),
    ("chain", "Audit chain"),
    ("verify", "How to verify this pack"),
];

const STYLE: &str = "body{font:13px/1.4 system-ui,sans-serif;margin:2em;color:#111}\
h1{font-size:20px}h2{font-size:16px;margin-top:2em;border-bottom:1px solid #999}\
table{border-collapse:collapse;width:100%;margin:.5em 0}\
th,td{border:1px solid #bbb;padding:2px 4px;text-align:left;vertical-align:top;word-break:break-word}\
th{background:#eee}td.n{text-align:right;white-space:nowrap}code{font-size:12px}\
.bar{display:inline-block;height:9px;background:#555;vertical-align:middle}\
.note{color:#555;font-style:italic}.bad{color:#a00;font-weight:bold}\
@media print{body{margin:0;font-size:10px}h2{break-after:avoid}tr{break-inside:avoid}\
thead{display:table-header-group}.bar{print-color-adjust:exact;-webkit-print-color-adjust:exact}}";

/// The report.
pub(super) fn html(document: &Document) -> String {
    let time = |at: &DateTime<Utc>| at.format("%Y-%m-%d %H:%M:%SZ").to_string();
    let option_time = |at: &Option<DateTime<Utc>>| at.as_ref().map(time).unwrap_or_default();
    let mut out = String::new();
    let title = format!(
        "quench evidence pack {} to {}",
        time(&document.period.from),
        time(&document.period.to)
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let _ = writeln!(
        out,
        "<p>Period from {} (inclusive) to {} (exclusive). Made at {} for {}. Schema <code>{}</code>.</p>",
        escape(&time(&document.period.from)),
        escape(&time(&document.period.to)),
        escape(&time(&document.generated_at)),
        escape(&document.generated_by),
        escape(&document.schema)
    );
    let heading = |out: &mut String, index: usize| {
        let (id, title) = SECTIONS[index];
        let _ = writeln!(out, "<h2 id=\"{id}\">{}</h2>", escape(title));
    };

    heading(&mut out, 0);
    let summary = &document.summary;
    table(
        &mut out,
        &["What", "Count"],
        [
            ("Findings received", summary.findings),
            ("… with a first action", summary.acted),
            ("… resolved", summary.resolved),
            ("Mutating actions sent", summary.actions),
            (
                "Mutating calls described by dry runs (not sent)",
                summary.dry_run_calls,
            ),
            ("Policy exceptions", summary.exceptions),
            ("Identities in the inventory", summary.inventory),
            ("Campaigns", summary.campaigns),
            ("Attestations", summary.attestations),
        ]
        .iter()
        .map(|(what, count)| vec![Cell::text(what), Cell::number(count.to_string())]),
    );
    if !document.chain.verified {
        let _ = writeln!(
            out,
            "<p class=\"bad\">The audit chain did not verify when this pack was made: entry #{} — {}.</p>",
            document.chain.first_bad.unwrap_or_default(),
            escape(document.chain.reason.as_deref().unwrap_or_default())
        );
    }

    heading(&mut out, 1);
    let _ = writeln!(
        out,
        "<p>Median and p90 by nearest rank (each figure is a time a finding really took). \
         The bars compare the p90 times of the severities.</p>"
    );
    let longest = document
        .timing
        .iter()
        .flat_map(|row| [row.first_action_p90_ms, row.resolution_p90_ms])
        .flatten()
        .max()
        .unwrap_or(0)
        .max(1);
    let bar = |ms: Option<i64>| match ms {
        Some(ms) => Cell::html(format!(
            "{} <span class=\"bar\" style=\"width:{}px\"></span>",
            escape(&humanize(ms)),
            (ms.max(0) * 120 / longest).max(1)
        )),
        None => Cell::text("—"),
    };
    let plain = |ms: Option<i64>| Cell::text(&ms.map(humanize).unwrap_or_else(|| "—".to_owned()));
    table(
        &mut out,
        &[
            "Severity",
            "Findings",
            "Acted on",
            "Resolved",
            "First action: median",
            "First action: p90",
            "Resolution: median",
            "Resolution: p90",
        ],
        document.timing.iter().map(|row| {
            vec![
                Cell::text(&row.severity),
                Cell::number(row.findings.to_string()),
                Cell::number(row.acted.to_string()),
                Cell::number(row.resolved.to_string()),
                plain(row.first_action_median_ms),
                bar(row.first_action_p90_ms),
                plain(row.resolution_median_ms),
                bar(row.resolution_p90_ms),
            ]
        }),
    );

    heading(&mut out, 2);
    let milestone = |milestone: &Option<Milestone>| match milestone {
        Some(milestone) => Cell::text(&format!(
            "{} after {} — {} (#{})",
            time(&milestone.at),
            humanize(milestone.after_ms),
            milestone.what,
            milestone.seq
        )),
        None => Cell::text("—"),
    };
    table(
        &mut out,
        &[
            "Received",
            "Severity",
            "Kind",
            "Key",
            "Finding",
            "First action",
            "Resolution",
            "Audit #",
        ],
        document.findings.iter().map(|finding| {
            vec![
                Cell::text(&time(&finding.received_at)),
                Cell::text(&finding.severity),
                Cell::text(&finding.kind),
                Cell::code(&finding.key),
                Cell::code(&finding.id),
                milestone(&finding.first_action),
                milestone(&finding.resolution),
                Cell::number(finding.seq.to_string()),
            ]
        }),
    );

    heading(&mut out, 3);
    table(
        &mut out,
        &[
            "At",
            "Action",
            "Request sent",
            "Approved by",
            "Channel",
            "Result",
            "Run / step",
            "Audit #",
        ],
        document.actions.iter().map(|action| {
            vec![
                Cell::text(&time(&action.at)),
                Cell::code(&action.action),
                Cell::code(&compact(&action.request)),
                Cell::text(&match (&action.choice, action.approvers.is_empty()) {
                    (Some(choice), false) => format!("{} — {choice}", approvers(&action.approvers)),
                    (Some(choice), true) => format!("{} — {choice}", action.channel),
                    (None, _) => "no gate (automatic)".to_owned(),
                }),
                Cell::text(&action.channel),
                Cell::text(&match &action.error {
                    Some(error) => format!("{}: {error}", action.result),
                    None => action.result.clone(),
                }),
                Cell::code(&format!("{} / {}", action.run_id, action.step)),
                Cell::number(action.seq.to_string()),
            ]
        }),
    );

    heading(&mut out, 4);
    let _ = writeln!(
        out,
        "<p>Gates answered in the period after which the run sent no mutating call: the risk \
         was kept, or a remediation denied.</p>"
    );
    table(
        &mut out,
        &[
            "Decided",
            "Severity",
            "Finding",
            "Choice",
            "Decided by",
            "Channel",
            "Reason",
            "Run",
            "Audit #",
        ],
        document.exceptions.iter().map(|exception| {
            vec![
                Cell::text(&time(&exception.decided_at)),
                Cell::text(exception.severity.as_deref().unwrap_or("—")),
                Cell::code(&format!(
                    "{} {}",
                    exception.kind.as_deref().unwrap_or_default(),
                    exception.key.as_deref().unwrap_or_default()
                )),
                Cell::text(&exception.choice),
                Cell::text(&exception.decided_by.join(", ")),
                Cell::text(&exception.channel),
                Cell::text(exception.reason.as_deref().unwrap_or("—")),
                Cell::code(&format!("{} ({})", exception.run_id, exception.run_status)),
                Cell::number(exception.seq.to_string()),
            ]
        }),
    );

    heading(&mut out, 5);
    section(&mut out, &document.inventory, |out, rows| {
        table(
            out,
            &[
                "Identity",
                "Kind",
                "Project",
                "Owner",
                "Purpose",
                "Created",
                "Last used",
                "Expires",
                "Deleted",
                "Risks",
            ],
            rows.iter().map(|identity| {
                vec![
                    Cell::code(&identity.id),
                    Cell::text(&identity.kind),
                    Cell::text(identity.project.as_deref().unwrap_or_default()),
                    Cell::text(&match (&identity.owner, &identity.owner_source) {
                        (Some(owner), Some(source)) => format!("{owner} ({source})"),
                        (Some(owner), None) => owner.clone(),
                        (None, _) => "—".to_owned(),
                    }),
                    Cell::text(identity.purpose.as_deref().unwrap_or("—")),
                    Cell::text(&option_time(&identity.created_at)),
                    Cell::text(&option_time(&identity.last_used_at)),
                    Cell::text(&option_time(&identity.expires_at)),
                    Cell::text(&option_time(&identity.deleted_at)),
                    Cell::text(&identity.risks.join("; ")),
                ]
            }),
        );
    });

    heading(&mut out, 6);
    section(&mut out, &document.campaigns, |out, rows| {
        table(
            out,
            &[
                "Campaign",
                "Scope",
                "Started",
                "Deadline",
                "Ended",
                "Default",
                "Answered",
                "Pending",
                "Defaulted",
            ],
            rows.iter().map(|campaign| {
                vec![
                    Cell::text(&format!("{} ({})", campaign.name, campaign.id)),
                    Cell::text(&campaign.scope),
                    Cell::text(&time(&campaign.started_at)),
                    Cell::text(&option_time(&campaign.deadline)),
                    Cell::text(&option_time(&campaign.ended_at)),
                    Cell::text(campaign.default_answer.as_deref().unwrap_or("—")),
                    Cell::number(campaign.answered.to_string()),
                    Cell::number(campaign.pending.to_string()),
                    Cell::number(campaign.defaulted.to_string()),
                ]
            }),
        );
    });

    heading(&mut out, 7);
    section(&mut out, &document.attestations, |out, rows| {
        table(
            out,
            &[
                "At", "Campaign", "Identity", "Owner", "Answer", "Purpose", "By", "Audit #",
            ],
            rows.iter().map(|attestation| {
                vec![
                    Cell::text(&time(&attestation.at)),
                    Cell::text(&attestation.campaign),
                    Cell::code(&attestation.identity),
                    Cell::text(attestation.owner.as_deref().unwrap_or("—")),
                    Cell::text(&attestation.answer),
                    Cell::text(attestation.purpose.as_deref().unwrap_or("—")),
                    Cell::text(&format!(
                        "{} ({})",
                        attestation.by.as_deref().unwrap_or("—"),
                        attestation.via.as_deref().unwrap_or("—")
                    )),
                    Cell::number(
                        attestation
                            .seq
                            .map(|seq| seq.to_string())
                            .unwrap_or_default(),
                    ),
                ]
            }),
        );
    });

    heading(&mut out, 8);
    table(
        &mut out,
        &["Field", "Value"],
        chain_facts(document)
            .into_iter()
            .map(|(field, value)| vec![Cell::text(field), Cell::code(&value)]),
    );

    heading(&mut out, 9);
    let chain = &document.chain;
    let _ = writeln!(
        out,
        "<ol>\n<li>Check the signature and every file: <code>quench evidence verify PACK --public-key evidence-public.pem</code> \
         (or without quench: <code>openssl pkeyutl -verify -pubin -inkey evidence-public.pem -rawin -in manifest.json -sigfile manifest.sig</code>, \
         then compare each file's <code>sha256sum</code> with <code>manifest.json</code>).</li>\n\
         <li>Check the pack against the audit chain: <code>quench evidence verify PACK --store STORE</code> with the service stopped, \
         or export the chain with <code>quench audit export --before {} --out chain.jsonl</code> and run \
         <code>quench evidence verify PACK --audit chain.jsonl</code>: entry #{} must have hash <code>{}</code>.</li>\n</ol>",
        chain.last.map_or(1, |last| last + 1),
        chain.last.unwrap_or_default(),
        escape(
            chain
                .last_hash
                .as_deref()
                .unwrap_or("(no entry in the period)")
        )
    );
    out.push_str("</body>\n</html>\n");
    out
}

fn section<T>(out: &mut String, section: &Section<T>, rows: impl FnOnce(&mut String, &[T])) {
    if let Some(note) = &section.note {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(note));
    }
    if section.recorded {
        rows(out, &section.rows);
    }
}

/// A table cell: escaped text, code, a right-aligned number, or markup made here.
struct Cell {
    html: String,
    number: bool,
}

impl Cell {
    fn text(text: &str) -> Cell {
        Cell {
            html: escape(text),
            number: false,
        }
    }

    fn code(text: &str) -> Cell {
        Cell {
            html: format!("<code>{}</code>", escape(text)),
            number: false,
        }
    }

    fn number(text: String) -> Cell {
        Cell {
            html: escape(&text),
            number: true,
        }
    }

    fn html(html: String) -> Cell {
        Cell {
            html,
            number: false,
        }
    }
}

fn table(out: &mut String, header: &[&str], rows: impl Iterator<Item = Vec<Cell>>) {
    out.push_str("<table>\n<thead><tr>");
    for cell in header {
        let _ = write!(out, "<th>{}</th>", escape(cell));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    let mut empty = true;
    for row in rows {
        empty = false;
        out.push_str("<tr>");
        for cell in row {
            let class = if cell.number { " class=\"n\"" } else { "" };
            let _ = write!(out, "<td{class}>{}</td>", cell.html);
        }
        out.push_str("</tr>\n");
    }
    if empty {
        let _ = writeln!(
            out,
            "<tr><td colspan=\"{}\" class=\"note\">none</td></tr>",
            header.len()
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{csv_cell, format_seconds, humanize};

    /// Reads one RFC 4180 cell back.
    fn unquote(cell: &str) -> String {
        match cell
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
        {
            Some(inner) => inner.replace("\"\"", "\""),
            None => cell.to_owned(),
        }
    }

    #[test]
    fn cells() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("-1"), "'-1");
        assert_eq!(format_seconds(1500), "1.500");
        assert_eq!(format_seconds(0), "0.000");
        assert_eq!(humanize(850), "850ms");
        assert_eq!(humanize(4 * 3_600_000 + 2 * 60_000 + 5000), "4h 02m 05s");
        assert_eq!(humanize(3 * 86_400_000 + 3_600_000), "3d 01h 00m");
    }

    proptest! {
        /// Whatever a finding's text holds, its cell is one field (no unquoted separator or
        /// line break) that reads back as the text, never as a formula.
        #[test]
        fn a_cell_is_one_field_and_never_a_formula(text in "\\PC*|[=+@,\"\\r\\n\\t-]{0,6}.{0,10}") {
            let cell = csv_cell(&text);
            let inner = unquote(&cell);
            if cell.starts_with('"') {
                prop_assert!(!inner.is_empty() || text.is_empty());
            } else {
                prop_assert!(!cell.contains([',', '"', '\n', '\r']));
            }
            prop_assert!(!inner.starts_with(['=', '+', '-', '@', '\t', '\r']));
            let original = inner.strip_prefix('\'').filter(|_| text.starts_with(['=', '+', '-', '@', '\t', '\r'])).unwrap_or(&inner);
            prop_assert_eq!(original, text.as_str());
        }
    }
}
