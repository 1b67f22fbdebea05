//! Overlapping triggers: two loaded playbooks that run for the same finding kind. Each such
//! finding starts a run of both — two owners asked about one key, two revokes racing — which is
//! rarely intended, so `quench validate`, an apply and the service's load say so with a warning
//! (the playbook still loads).
//!
//! Kinds are compared as the globs they are (`*` matches any run of characters, dots included):
//! two patterns overlap when some kind matches both. `where` conditions cannot be compared in
//! general, so two playbooks whose `where` differ are taken to divide the findings between them
//! (a severity split is the common case) and are not reported; when only one has a `where`, or
//! both have the same one, both run for what it selects.

use std::collections::HashSet;
use std::path::Path;

use super::diagnostic::{Code, Diagnostic};
use super::structure::quoted;
use super::yaml::Document;
use super::{FindingTrigger, Loaded, Playbook, Trigger};

/// Warnings for `playbook` about each of `others` (with the file it came from, when known)
/// whose finding trigger matches a kind `playbook` matches too. A playbook is not compared with
/// one of its own name (a new version replaces it).
pub fn overlapping<'a>(
    playbook: &Playbook,
    others: impl IntoIterator<Item = (&'a Playbook, Option<&'a Path>)>,
) -> Vec<Diagnostic> {
    let Trigger::Finding(trigger) = &playbook.trigger else {
        return Vec::new();
    };
    let mut diagnostics = Vec::new();
    for (other, origin) in others {
        let Trigger::Finding(other_trigger) = &other.trigger else {
            continue;
        };
        if other.name == playbook.name {
            continue;
        }
        if let Some(diagnostic) = pair(playbook, trigger, other, other_trigger, origin) {
            diagnostics.push(diagnostic);
        }
    }
    diagnostics
}

/// Adds the overlap warnings to loaded files: each pair once, on the later file (as a
/// duplicate name is reported), leaving out the playbooks `skip` names (disabled ones).
pub fn warn_overlaps(loaded: &mut [Loaded], skip: impl Fn(&Playbook) -> bool) {
    for index in 1..loaded.len() {
        let (earlier, rest) = loaded.split_at_mut(index);
        let file = &mut rest[0];
        let Some(playbook) = file.compiled.playbook.as_ref().filter(|p| !skip(p)) else {
            continue;
        };
        let others = earlier.iter().filter_map(|other| {
            other
                .compiled
                .playbook
                .as_ref()
                .filter(|p| !skip(p))
                .map(|p| (p, Some(other.path.as_path())))
        });
        let mut found = overlapping(playbook, others);
        if found.is_empty() {
            continue;
        }
        let diagnostics = &mut file.compiled.diagnostics;
        diagnostics.append(&mut found);
        diagnostics.sort_by_key(|diagnostic| (diagnostic.span.start, diagnostic.severity));
    }
}

fn pair(
    playbook: &Playbook,
    trigger: &FindingTrigger,
    other: &Playbook,
    other_trigger: &FindingTrigger,
    origin: Option<&Path>,
) -> Option<Diagnostic> {
    let normalized = |condition: &Option<String>| {
        condition
            .as_deref()
            .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let (mine, theirs) = (
        normalized(&trigger.condition),
        normalized(&other_trigger.condition),
    );
    if let (Some(mine), Some(theirs)) = (&mine, &theirs)
        && mine != theirs
    {
        return None;
    }

    let mut first: Option<usize> = None;
    let mut kinds: Vec<String> = Vec::new();
    let mut patterns: Vec<(String, String)> = Vec::new();
    for (index, kind) in trigger.kinds.iter().enumerate() {
        for other_kind in &other_trigger.kinds {
            if !intersect(kind.as_bytes(), other_kind.as_bytes()) {
                continue;
            }
            first.get_or_insert(index);
            match (is_glob(kind), is_glob(other_kind)) {
                (false, _) => kinds.push(kind.clone()),
                (true, true) if kind == other_kind => kinds.push(kind.clone()),
                (true, false) => kinds.push(other_kind.clone()),
                (true, true) => patterns.push((kind.clone(), other_kind.clone())),
            }
        }
    }
    let first = first?;
    let mut seen = HashSet::new();
    kinds.retain(|kind| seen.insert(kind.clone()));

    let mut shared = Vec::new();
    if !kinds.is_empty() {
        let noun = match kinds.as_slice() {
            [one] if !is_glob(one) => "kind",
            _ => "kinds",
        };
        shared.push(format!("finding {noun} {}", quoted(&kinds)));
    }
    for (mine, theirs) in &patterns {
        shared.push(format!(
            "finding kinds matching both `{mine}` and `{theirs}`"
        ));
    }
    let message = format!(
        "playbooks `{}` and `{}` both run for {}; each such finding starts a run of both",
        playbook.name,
        other.name,
        shared.join(" and ")
    );
    let advice = match (&mine, &theirs) {
        (None, None) => "if one playbook should handle these findings, merge the two or narrow \
                         `kinds`; to divide the findings between them, give each a `where` (e.g. \
                         on `finding.severity`)"
            .to_owned(),
        (Some(_), Some(_)) => "both have the same `where`, so both run for every finding it \
                               selects: merge them, or make their conditions divide the findings"
            .to_owned(),
        (Some(_), None) => format!(
            "`{}` has no `where`, so it runs for every finding this playbook's `where` \
             selects: give it a `where` that excludes them, or merge the two",
            other.name
        ),
        (None, Some(_)) => format!(
            "this playbook has no `where`, so it runs for every finding `{}`'s `where` \
             selects: give it a `where` that excludes them, or merge the two",
            other.name
        ),
    };
    let help = match origin {
        Some(origin) => format!("`{}` is in {}; {advice}", other.name, origin.display()),
        None => advice,
    };
    let span = Document::parse(&playbook.source)
        .map(|document| document.value_span(&format!("/on/finding/kinds/{first}")))
        .unwrap_or(0..0);
    Some(
        Diagnostic::warning(Code::OverlappingTrigger, span, message)
            .with_label(format!("also a kind of `{}`", other.name))
            .with_help(help),
    )
}

fn is_glob(kind: &str) -> bool {
    kind.contains('*')
}

/// True when some text matches both patterns, where `*` matches any run of characters (the
/// only wildcard a kind may hold). A walk over pairs of positions: a star may match nothing
/// (step past it) or take the other side's next character (stay on it).
fn intersect(left: &[u8], right: &[u8]) -> bool {
    let mut seen = HashSet::new();
    let mut pending = vec![(0, 0)];
    while let Some((i, j)) = pending.pop() {
        if !seen.insert((i, j)) {
            continue;
        }
        if i == left.len() && j == right.len() {
            return true;
        }
        let (a, b) = (left.get(i).copied(), right.get(j).copied());
        if a == Some(b'*') {
            pending.push((i + 1, j));
        }
        if b == Some(b'*') {
            pending.push((i, j + 1));
        }
        match (a, b) {
            (Some(b'*'), Some(b'*')) => {}
            (Some(b'*'), Some(_)) => pending.push((i, j + 1)),
            (Some(_), Some(b'*')) => pending.push((i + 1, j)),
            (Some(a), Some(b)) if a == b => pending.push((i + 1, j + 1)),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_overlap_when_some_kind_matches_both() {
        let overlap = |a: &str, b: &str| intersect(a.as_bytes(), b.as_bytes());
        assert!(overlap("openai.api_key.leaked", "openai.api_key.leaked"));
        assert!(!overlap("openai.api_key.leaked", "openai.api_key.unused"));
        assert!(overlap("openai.api_key.*", "openai.api_key.leaked"));
        assert!(overlap("openai.*", "*.leaked"));
        assert!(overlap("*", "anything.at.all"));
        assert!(overlap("a*b", "*ab*"));
        assert!(!overlap("openai.*", "github.*"));
        assert!(!overlap("a.*.c", "a.b"));
        assert!(!overlap("x*", "y*"));
    }

    /// The walk agrees with globset, which decides what a playbook's `kinds` match, on every
    /// kind over a small alphabet.
    #[test]
    fn the_walk_agrees_with_globset() {
        let patterns = ["a*", "*b", "a*b", "*", "ab", "a.*", "*.b", "a**b", "*a*"];
        let mut kinds = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = kinds
                .iter()
                .flat_map(|kind| ["a", "b", "."].map(|c| format!("{kind}{c}")))
                .collect();
            kinds.extend(longer);
        }
        kinds.sort();
        kinds.dedup();
        // Over this alphabet and length every overlap of these patterns has a witness.
        for left in patterns {
            for right in patterns {
                let (l, r) = (
                    globset::Glob::new(left).expect("glob").compile_matcher(),
                    globset::Glob::new(right).expect("glob").compile_matcher(),
                );
                let witnessed = kinds
                    .iter()
                    .any(|kind| l.is_match(kind) && r.is_match(kind));
                assert_eq!(
                    intersect(left.as_bytes(), right.as_bytes()),
                    witnessed,
                    "`{left}` and `{right}`"
                );
            }
        }
    }
}
