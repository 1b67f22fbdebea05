//! Diagnostics: what `quench validate` (and the service, on load) says about a playbook. Each
//! points at a byte span of the source; rendering turns that into `file:line:col`, the source
//! line and a caret (rustc's own renderer, `annotate-snippets`), or into JSON for CI.

use std::fmt;
use std::ops::Range;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::{Deserialize, Serialize};

use super::lines::LineIndex;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// A stable name per rule, shown in brackets (`error[unknown-field]`) and in JSON output, so CI
/// and people can refer to a rule without quoting its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    YamlSyntax,
    DuplicateKey,
    UnknownField,
    MissingField,
    WrongType,
    InvalidValue,
    Trigger,
    DuplicateStep,
    UnknownStep,
    LaterStep,
    UnknownAction,
    Input,
    Template,
    UnknownName,
    UnknownFindingField,
    Duration,
    Cron,
    Timezone,
    Approval,
    IrreversibleWithoutApproval,
    AllowWiden,
    DuplicatePlaybook,
    UndefinedGroup,
    OverlappingTrigger,
}

impl Code {
    /// Every rule, for coverage checks and documentation.
    pub const ALL: &'static [Code] = &[
        Code::YamlSyntax,
        Code::DuplicateKey,
        Code::UnknownField,
        Code::MissingField,
        Code::WrongType,
        Code::InvalidValue,
        Code::Trigger,
        Code::DuplicateStep,
        Code::UnknownStep,
        Code::LaterStep,
        Code::UnknownAction,
        Code::Input,
        Code::Template,
        Code::UnknownName,
        Code::UnknownFindingField,
        Code::Duration,
        Code::Cron,
        Code::Timezone,
        Code::Approval,
        Code::IrreversibleWithoutApproval,
        Code::AllowWiden,
        Code::DuplicatePlaybook,
        Code::UndefinedGroup,
        Code::OverlappingTrigger,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "yaml-syntax",
            Code::DuplicateKey => "duplicate-key",
            Code::UnknownField => "unknown-field",
            Code::MissingField => "missing-field",
            Code::WrongType => "wrong-type",
            Code::InvalidValue => "invalid-value",
            Code::Trigger => "trigger",
            Code::DuplicateStep => "duplicate-step",
            Code::UnknownStep => "unknown-step",
            Code::LaterStep => "later-step",
            Code::UnknownAction => "unknown-action",
            Code::Input => "input",
            Code::Template => "template",
            Code::UnknownName => "unknown-name",
            Code::UnknownFindingField => "unknown-finding-field",
            Code::Duration => "duration",
            Code::Cron => "cron",
            Code::Timezone => "timezone",
            Code::Approval => "approval",
            Code::IrreversibleWithoutApproval => "irreversible-without-approval",
            Code::AllowWiden => "allow-widen",
            Code::DuplicatePlaybook => "duplicate-playbook",
            Code::UndefinedGroup => "undefined-group",
            Code::OverlappingTrigger => "overlapping-trigger",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in one playbook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    /// Byte range in the source.
    pub span: Range<usize>,
    pub message: String,
    /// Short text under the caret.
    pub label: Option<String>,
    /// A `help:` line: what to do about it.
    pub help: Option<String>,
    /// Secondary places, e.g. where a duplicate was first defined.
    pub notes: Vec<(Range<usize>, String)>,
}

impl Diagnostic {
    pub fn error(code: Code, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            span,
            message: message.into(),
            label: None,
            help: None,
            notes: Vec::new(),
        }
    }

    pub fn warning(code: Code, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, span, message)
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_help_opt(mut self, help: Option<String>) -> Diagnostic {
        self.help = help.or(self.help);
        self
    }

    pub fn with_note(mut self, span: Range<usize>, note: impl Into<String>) -> Diagnostic {
        self.notes.push((span, note.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A diagnostic with its position resolved, as printed by `--format json` (and returned by the
/// admin API when it refuses a playbook).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Located {
    pub file: String,
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// A source file and the diagnostics about it, ready to render.
#[derive(Debug)]
pub struct Report<'a> {
    pub file: &'a str,
    pub source: &'a str,
    pub diagnostics: &'a [Diagnostic],
}

impl Report<'_> {
    /// Diagnostics with line and column, in source order.
    pub fn located(&self) -> Vec<Located> {
        let lines = LineIndex::new(self.source);
        self.diagnostics
            .iter()
            .map(|diagnostic| {
                let (line, column) = lines.line_column(diagnostic.span.start);
                let (end_line, end_column) = lines.line_column(diagnostic.span.end);
                Located {
                    file: self.file.to_owned(),
                    severity: diagnostic.severity,
                    code: diagnostic.code,
                    message: diagnostic.message.clone(),
                    line,
                    column,
                    end_line,
                    end_column,
                    label: diagnostic.label.clone(),
                    help: diagnostic.help.clone(),
                }
            })
            .collect()
    }

    /// rustc-style text: `error[code]: message`, ` --> file:line:col`, the line, a caret, `help:`.
    pub fn render(&self, styled: bool) -> String {
        let renderer = if styled {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let mut out = String::new();
        for diagnostic in self.diagnostics {
            let level = match diagnostic.severity {
                Severity::Error => Level::ERROR,
                Severity::Warning => Level::WARNING,
            };
            let span = clamp(self.source, &diagnostic.span);
            let mut snippet = Snippet::source(self.source)
                .path(self.file)
                .fold(true)
                .annotation(
                    AnnotationKind::Primary
                        .span(span)
                        .label(diagnostic.label.as_deref()),
                );
            for (note_span, note) in &diagnostic.notes {
                snippet = snippet.annotation(
                    AnnotationKind::Context
                        .span(clamp(self.source, note_span))
                        .label(note.as_str()),
                );
            }
            let mut report = vec![
                level
                    .primary_title(diagnostic.message.as_str())
                    .id(diagnostic.code.as_str())
                    .element(snippet),
            ];
            if let Some(help) = &diagnostic.help {
                report.push(Group::with_title(
                    Level::HELP.secondary_title(help.as_str()),
                ));
            }
            out.push_str(&renderer.render(&report));
            out.push_str("\n\n");
        }
        out
    }
}

/// Keeps a span inside the source and on character boundaries, so rendering cannot panic.
fn clamp(source: &str, span: &Range<usize>) -> Range<usize> {
    let mut start = span.start.min(source.len());
    let mut end = span.end.clamp(start, source.len());
    while !source.is_char_boundary(start) {
        start -= 1;
    }
    while !source.is_char_boundary(end) {
        end += 1;
    }
    start..end
}
