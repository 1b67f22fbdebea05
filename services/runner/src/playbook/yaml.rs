//! YAML with its positions kept. `marked-yaml` parses the document (refusing duplicate keys,
//! anchors and tags); this module turns the marked tree into a plain JSON value for the schema
//! check and for serde, and keeps a map from each value's JSON pointer to its byte span in the
//! source, so every later diagnostic can point at the right line and column.

use std::collections::HashMap;
use std::ops::Range;

use marked_yaml::{LoaderOptions, Marker, Node};
use serde_json::{Number, Value};

use super::diagnostic::{Code, Diagnostic};
use super::lines::LineIndex;

/// Where a value (and, for a mapping entry, its key) sits in the source, as byte ranges.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub(crate) key: Option<Range<usize>>,
    pub(crate) value: Range<usize>,
}

/// A parsed document: the value and the source positions of everything in it.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) value: Value,
    places: HashMap<String, Place>,
    source: String,
    source_len: usize,
}

impl Document {
    /// Parses `source`; a syntax error, a duplicate key, an anchor or a tag is the only problem
    /// reported, since nothing after it can be trusted.
    pub(crate) fn parse(source: &str) -> Result<Document, Diagnostic> {
        let options = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true);
        let lines = LineIndex::new(source);
        let node = marked_yaml::parse_yaml_with_options(0, source, options)
            .map_err(|error| load_error(source, &lines, error))?;
        let mut document = Document {
            value: Value::Null,
            places: HashMap::new(),
            source: source.to_owned(),
            source_len: source.len(),
        };
        document.value = document.convert(source, &lines, &node, String::new(), None);
        Ok(document)
    }

    /// The span of the value at `pointer`, or of its nearest ancestor that exists.
    pub(crate) fn value_span(&self, pointer: &str) -> Range<usize> {
        self.nearest(pointer)
            .map_or(0..self.source_len.min(1), |place| place.value.clone())
    }

    /// The span of the key of the entry at `pointer` (its value when it has no key).
    pub(crate) fn key_span(&self, pointer: &str) -> Range<usize> {
        match self.nearest(pointer) {
            Some(Place { key: Some(key), .. }) => key.clone(),
            Some(place) => place.value.clone(),
            None => 0..self.source_len.min(1),
        }
    }

    /// The span of `needle` inside the string at `pointer` (a name inside a template), found by
    /// searching the source from where the value starts; the whole value when it is not found.
    pub(crate) fn locate(&self, pointer: &str, needle: &str) -> Range<usize> {
        let span = self.value_span(pointer);
        if needle.is_empty() {
            return span;
        }
        let window_end = (span.start + 16 * 1024).min(self.source.len());
        let window = self.source.get(span.start..window_end).unwrap_or_default();
        match window.find(needle) {
            Some(offset) => span.start + offset..span.start + offset + needle.len(),
            None => span,
        }
    }

    /// True when `pointer` names a value that was written in the source.
    pub(crate) fn contains(&self, pointer: &str) -> bool {
        self.places.contains_key(pointer)
    }

    fn nearest(&self, pointer: &str) -> Option<&Place> {
        let mut pointer = pointer;
        loop {
            if let Some(place) = self.places.get(pointer) {
                return Some(place);
            }
            if pointer.is_empty() {
                return None;
            }
            pointer = pointer.rfind('/').map_or("", |slash| &pointer[..slash]);
        }
    }

    fn convert(
        &mut self,
        source: &str,
        lines: &LineIndex,
        node: &Node,
        pointer: String,
        key: Option<Range<usize>>,
    ) -> Value {
        let start = lines.offset(node.span().start());
        match node {
            Node::Scalar(scalar) => {
                let span = start..scalar_end(source, start);
                self.places.insert(pointer, Place { key, value: span });
                scalar_value(scalar.as_str(), scalar.may_coerce())
            }
            Node::Mapping(mapping) => {
                let mut object = serde_json::Map::new();
                let mut first_key = None;
                for (name, child) in mapping.iter() {
                    let key_start = lines.offset(name.span().start());
                    let key_span = key_start..scalar_end(source, key_start);
                    first_key.get_or_insert_with(|| key_span.clone());
                    let child_pointer = format!("{pointer}/{}", escape(name.as_str()));
                    let child = self.convert(source, lines, child, child_pointer, Some(key_span));
                    object.insert(name.as_str().to_owned(), child);
                }
                let span = first_key.unwrap_or_else(|| one_character(source, start));
                self.places.insert(pointer, Place { key, value: span });
                Value::Object(object)
            }
            Node::Sequence(sequence) => {
                let mut items = Vec::with_capacity(sequence.len());
                for (index, child) in sequence.iter().enumerate() {
                    items.push(self.convert(
                        source,
                        lines,
                        child,
                        format!("{pointer}/{index}"),
                        None,
                    ));
                }
                self.places.insert(
                    pointer,
                    Place {
                        key,
                        value: one_character(source, start),
                    },
                );
                Value::Array(items)
            }
        }
    }
}

/// Escapes a mapping key as one JSON-pointer segment (RFC 6901).
pub(crate) fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The YAML 1.2 core schema for plain scalars: null, booleans, integers and floats; everything
/// else, and every quoted scalar, is a string. (`yes`/`no`/`on` stay strings, unlike YAML 1.1.)
fn scalar_value(text: &str, plain: bool) -> Value {
    if !plain {
        return Value::String(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(integer) = text.parse::<i64>() {
        return Value::Number(integer.into());
    }
    let looks_numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
        && text.chars().any(|c| c.is_ascii_digit());
    if looks_numeric && let Some(number) = text.parse::<f64>().ok().and_then(Number::from_f64) {
        return Value::Number(number);
    }
    Value::String(text.to_owned())
}

/// Where the scalar starting at `start` ends in the source: the closing quote of a quoted scalar,
/// the indicator of a block scalar, or the end of the line (before a comment) of a plain one.
fn scalar_end(source: &str, start: usize) -> usize {
    let rest = &source[start.min(source.len())..];
    let mut chars = rest.char_indices();
    let end = match chars.next() {
        None => 0,
        Some((_, '|' | '>')) => 1,
        Some((_, quote @ ('"' | '\''))) => {
            let mut end = rest.len();
            let mut escaped = false;
            while let Some((index, c)) = chars.next() {
                if escaped {
                    escaped = false;
                } else if quote == '"' && c == '\\' {
                    escaped = true;
                } else if c == quote {
                    if quote == '\'' && rest[index + 1..].starts_with('\'') {
                        chars.next();
                        continue;
                    }
                    end = index + 1;
                    break;
                }
            }
            end
        }
        Some(_) => {
            let line = rest.find('\n').map_or(rest, |newline| &rest[..newline]);
            let line = line.find(" #").map_or(line, |comment| &line[..comment]);
            let line = line.find(": ").map_or(line, |colon| &line[..colon]);
            // Inside `[a, b]` or `{a: b}` a plain scalar ends at the next flow indicator.
            let line_start = source[..start].rfind('\n').map_or(0, |newline| newline + 1);
            let depth = source[line_start..start]
                .chars()
                .fold(0i32, |depth, c| match c {
                    '[' | '{' => depth + 1,
                    ']' | '}' => depth - 1,
                    _ => depth,
                });
            let in_flow = depth > 0;
            let line = match line.find([',', ']', '}']) {
                Some(end) if in_flow => &line[..end],
                _ => line,
            };
            line.trim_end().trim_end_matches(':').len().max(1)
        }
    };
    start + end
}

fn load_error(source: &str, lines: &LineIndex, error: marked_yaml::LoadError) -> Diagnostic {
    use marked_yaml::LoadError;
    let at = |marker: &Marker| {
        let start = lines.offset(Some(marker));
        start..scalar_end(source, start)
    };
    match error {
        LoadError::DuplicateKey(inner) => {
            let first = lines.offset(inner.prev_key.span().start());
            Diagnostic::error(
                Code::DuplicateKey,
                at_span(&inner.key, lines, source),
                format!("duplicate key `{}`", inner.key.as_str()),
            )
            .with_label("defined again here")
            .with_note(first..scalar_end(source, first), "first defined here")
        }
        LoadError::ScanError(marker, scan) => Diagnostic::error(
            Code::YamlSyntax,
            one_character(source, lines.offset(Some(&marker))),
            format!("YAML syntax error: {}", scan.info()),
        ),
        LoadError::TopLevelMustBeMapping(marker) => Diagnostic::error(
            Code::YamlSyntax,
            at(&marker),
            "a playbook must be a YAML mapping (`schema: quench.playbook/v1`, `name: …`, …)",
        ),
        LoadError::UnexpectedAnchor(marker) => Diagnostic::error(
            Code::YamlSyntax,
            anchor_span(source, lines.offset(Some(&marker))),
            "YAML anchors and aliases are not allowed in playbooks",
        )
        .with_help("repeat the value, or put it under `vars` and refer to it as `vars.<name>`"),
        LoadError::UnexpectedTag(marker) => Diagnostic::error(
            Code::YamlSyntax,
            at(&marker),
            "YAML tags (`!tag`) are not allowed in playbooks",
        ),
        LoadError::MappingKeyMustBeScalar(marker) => Diagnostic::error(
            Code::YamlSyntax,
            at(&marker),
            "mapping keys must be plain strings",
        ),
        other => Diagnostic::error(Code::YamlSyntax, 0..0, format!("YAML error: {other}")),
    }
}

/// The parser reports an anchor where the anchored node starts; point at the `&name` or
/// `*name` token itself, the last one before that place.
fn anchor_span(source: &str, offset: usize) -> Range<usize> {
    let before = &source[..offset.min(source.len())];
    let token = before
        .rfind([' ', '\n', '[', '{', ','])
        .map_or(0, |index| index + 1);
    let start = [
        before.rfind(" &"),
        before.rfind(" *"),
        before.rfind(":&"),
        before.rfind(":*"),
    ]
    .into_iter()
    .flatten()
    .max()
    .map_or(token, |index| index + 1);
    let end = source[start..]
        .find(|c: char| c.is_whitespace() || ",]}".contains(c))
        .map_or(source.len(), |len| start + len);
    if end > start {
        start..end
    } else {
        // No token there (the source ends, or a separator follows): the one character.
        one_character(source, start)
    }
}

fn at_span(
    scalar: &marked_yaml::types::MarkedScalarNode,
    lines: &LineIndex,
    source: &str,
) -> Range<usize> {
    let start = lines.offset(scalar.span().start());
    start..scalar_end(source, start)
}

/// The character at `start` as a span; empty at the end of the source (an empty file is an
/// empty mapping that still needs a place for "missing field").
fn one_character(source: &str, start: usize) -> Range<usize> {
    let length = source
        .get(start..)
        .and_then(|rest| rest.chars().next())
        .map_or(0, char::len_utf8);
    start..start + length
}
