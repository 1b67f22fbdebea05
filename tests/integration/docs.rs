//! The user documentation (`docs/`, and the README's examples) held to the code: every built-in
//! action is documented with each of its inputs and outputs and whether it mutates; every field
//! and value of the playbook and test-file formats and every diagnostic code is named; every
//! YAML example compiles (a fragment inside a minimal playbook or test case); the example test
//! files pass against the example playbooks; and every link between the pages resolves.

use std::collections::BTreeSet;
use std::path::Path;

use quench_runner::actions::REGISTRY;
use quench_runner::playbook::{Code, compile};
use serde_json::{Value, json};

use crate::support;

const PLAYBOOKS: &str = "docs/playbooks.md";
const TESTS: &str = "docs/playbook-tests.md";
const PAGES: [&str; 10] = [
    "README.md",
    "docs/README.md",
    PLAYBOOKS,
    TESTS,
    "docs/safety.md",
    "docs/least-privilege.md",
    "docs/owners.md",
    "docs/evidence.md",
    "docs/campaigns.md",
    "docs/cluster.md",
];

fn read(relative: &str) -> String {
    std::fs::read_to_string(support::root().join(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

/// The ```yaml blocks of a page, with their common indentation removed.
fn yaml_blocks(page: &str) -> Vec<String> {
    page.split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .map(|block| {
            let indent = block
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| line.len() - line.trim_start().len())
                .min()
                .unwrap_or(0);
            block
                .lines()
                .map(|line| line.get(indent..).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        })
        .collect()
}

/// A page's `###` sections: (heading, text up to the next heading of level 3 or higher).
fn sections(page: &str) -> Vec<(String, String)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in page.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            sections.extend(current.take());
            current = Some((heading.to_owned(), String::new()));
        } else if line.starts_with("## ") || line.starts_with("# ") {
            sections.extend(current.take());
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    sections.extend(current);
    sections
}

/// Property names and string enum values anywhere in a JSON Schema.
fn schema_words(schema: &Value, words: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                words.extend(properties.keys().cloned());
            }
            for keyword in ["enum", "const"] {
                match map.get(keyword) {
                    Some(Value::String(value)) => {
                        words.insert(value.clone());
                    }
                    Some(Value::Array(values)) => {
                        words.extend(values.iter().filter_map(Value::as_str).map(str::to_owned));
                    }
                    _ => {}
                }
            }
            for value in map.values() {
                schema_words(value, words);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| schema_words(item, words)),
        _ => {}
    }
}

/// The names of an action's inputs, from the editor schema (checked elsewhere to be current).
fn inputs(schema: &Value, action: &str) -> Vec<String> {
    let cases = schema["definitions"]["Step"]["allOf"]
        .as_array()
        .expect("the Step schema has one case per action");
    let reference = cases
        .iter()
        .find(|case| case["if"]["properties"]["uses"]["const"] == action)
        .and_then(|case| case["then"]["properties"]["with"]["$ref"].as_str())
        .unwrap_or_else(|| panic!("no input schema for `{action}`"));
    let name = reference.trim_start_matches("#/definitions/");
    schema["definitions"][name]["properties"]
        .as_object()
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn every_action_is_documented_with_its_inputs_outputs_and_effect() {
    let page = read(PLAYBOOKS);
    let schema: Value =
        serde_json::from_str(&read("workflows/playbook.schema.json")).expect("schema is JSON");
    let documented: Vec<(String, String)> = sections(&page)
        .into_iter()
        .filter_map(|(heading, text)| {
            let name = heading.strip_prefix('`')?.strip_suffix('`')?;
            quench_runner::actions::lookup(name).map(|_| (name.to_owned(), text))
        })
        .collect();
    let mut problems = Vec::new();
    let order: Vec<&str> = documented.iter().map(|(name, _)| name.as_str()).collect();
    let registry: Vec<&str> = REGISTRY.iter().map(|spec| spec.name).collect();
    if order != registry {
        problems.push(format!(
            "{PLAYBOOKS} documents the actions {order:?}; the registry has {registry:?} (add a \
             `### `name`` section per action, in registry order)"
        ));
    }
    for spec in REGISTRY {
        let Some((_, text)) = documented.iter().find(|(name, _)| name == spec.name) else {
            continue;
        };
        let named = |word: &str| text.contains(&format!("`{word}`"));
        for input in inputs(&schema, spec.name) {
            if !named(&input) {
                problems.push(format!(
                    "`{}`: input `{input}` is not documented",
                    spec.name
                ));
            }
        }
        for output in spec.outputs {
            if !named(output) {
                problems.push(format!(
                    "`{}`: output `{output}` is not documented",
                    spec.name
                ));
            }
        }
        let effect = if spec.mutates {
            "**Mutates:** yes"
        } else {
            "**Mutates:** no"
        };
        if !text.contains(effect) {
            problems.push(format!("`{}`: does not say `{effect}`", spec.name));
        }
        if spec.irreversible.is_some() && !text.contains("Irreversible") {
            problems.push(format!("`{}`: does not say it is irreversible", spec.name));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_field_value_and_diagnostic_of_the_formats_is_documented() {
    let mut problems = Vec::new();
    let mut check = |page: &str, words: BTreeSet<String>, what: &str| {
        let text = read(page);
        for word in words {
            if !text.contains(&format!("`{word}`")) {
                problems.push(format!("{page} does not name {what} `{word}`"));
            }
        }
    };

    let playbook: Value =
        serde_json::from_str(&read("workflows/playbook.schema.json")).expect("schema is JSON");
    let mut words = BTreeSet::new();
    schema_words(&playbook, &mut words);
    check(PLAYBOOKS, words, "the playbook field or value");
    check(
        PLAYBOOKS,
        Code::ALL
            .iter()
            .map(|code| code.as_str().to_owned())
            .collect(),
        "the diagnostic",
    );

    let test_file = schemars::schema_for!(quench_runner::testing::TestFile).to_value();
    let mut words = BTreeSet::new();
    schema_words(&test_file, &mut words);
    check(TESTS, words, "the test-file field or value");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What a YAML example is, by its content.
enum Example {
    Playbook(Value),
    TestFile,
    /// A usage-scope mapping file (`docs/least-privilege.md`).
    UsageScopes,
    Fragment(Value),
}

fn classify(block: &str) -> Result<Example, String> {
    // Read as the value of a mapping, since a fragment may be a list; YAML as playbooks read it.
    let indented: String = block.lines().map(|line| format!("  {line}\n")).collect();
    let value = quench_runner::playbook::yaml_value(&format!("example:\n{indented}")).map_err(
        |(line, column, message)| format!("not YAML at {}:{column}: {message}", line - 1),
    )?["example"]
        .take();
    Ok(match value["schema"].as_str() {
        Some("quench.playbook/v1") => Example::Playbook(value),
        Some("quench.playbook-test/v1") => Example::TestFile,
        Some("quench.usage-scopes/v1") => Example::UsageScopes,
        _ => Example::Fragment(value),
    })
}

/// A playbook fragment (top-level fields, a list of steps, or a step's fields) placed in a
/// minimal playbook; the errors it compiles with, other than references to steps the
/// fragment does not show.
fn fragment_errors(fragment: &Value, schema: &Value) -> Vec<String> {
    let mut playbook = json!({
        "schema": "quench.playbook/v1",
        "name": "doc-example",
        "on": {"finding": {"kinds": ["openai.api_key.leaked"]}},
        "steps": [{"id": "doc_step", "uses": "note", "with": {"message": "example"}}],
    });
    let fields = |definition: &Value| -> BTreeSet<String> {
        definition["properties"]
            .as_object()
            .map(|properties| properties.keys().cloned().collect())
            .unwrap_or_default()
    };
    match fragment {
        Value::Array(_) => playbook["steps"] = fragment.clone(),
        Value::Object(map) if map.keys().all(|key| fields(schema).contains(key)) => {
            for (key, value) in map {
                playbook[key] = value.clone();
            }
        }
        Value::Object(map)
            if map
                .keys()
                .all(|key| fields(&schema["definitions"]["Step"]).contains(key)) =>
        {
            for (key, value) in map {
                playbook["steps"][0][key] = value.clone();
            }
        }
        other => {
            return vec![format!(
                "neither playbook fields, steps nor a step's fields: {other}"
            )];
        }
    }
    let source = serde_json::to_string_pretty(&playbook).expect("serializes");
    compile(&source)
        .diagnostics
        .into_iter()
        .filter(|diagnostic| diagnostic.is_error() && diagnostic.code != Code::UnknownStep)
        .map(|diagnostic| format!("{}: {}", diagnostic.code, diagnostic.message))
        .collect()
}

/// A test-file fragment (fields of a case) placed in a minimal test file, read as the format.
fn case_fragment_errors(fragment: &Value) -> Option<String> {
    let mut case = json!({"name": "doc example"});
    for (key, value) in fragment.as_object()? {
        case[key] = value.clone();
    }
    let file = json!({
        "schema": "quench.playbook-test/v1",
        "playbook": "doc-example.yaml",
        "cases": [case],
    });
    let source = serde_json::to_string_pretty(&file).expect("serializes");
    quench_runner::testing::TestFile::parse("fragment", &source).err()
}

#[tokio::test]
async fn the_examples_compile_and_the_example_tests_pass() {
    let schema: Value =
        serde_json::from_str(&read("workflows/playbook.schema.json")).expect("schema is JSON");
    let directory = tempfile::tempdir().expect("temp dir");
    let tests = directory.path().join("tests");
    std::fs::create_dir(&tests).expect("tests dir");
    let mut problems = Vec::new();
    let mut playbooks = 0;
    let mut test_files = Vec::new();
    for page in PAGES {
        for (index, block) in yaml_blocks(&read(page)).iter().enumerate() {
            let place = format!("{page}, YAML example {}", index + 1);
            match classify(block) {
                Err(error) => problems.push(format!("{place}: {error}")),
                Ok(Example::Playbook(value)) => {
                    playbooks += 1;
                    let compiled = compile(block);
                    if !compiled.diagnostics.is_empty() {
                        problems.push(format!("{place}: {:?}", compiled.diagnostics));
                    }
                    let name = value["name"].as_str().unwrap_or("unnamed");
                    std::fs::write(directory.path().join(format!("{name}.yaml")), block)
                        .expect("write");
                }
                Ok(Example::TestFile) => {
                    let path = tests.join(format!("{}.yaml", test_files.len()));
                    std::fs::write(&path, block).expect("write");
                    test_files.push((place, path));
                }
                Ok(Example::UsageScopes) => {
                    let path = directory.path().join("usage-scopes.yaml");
                    std::fs::write(&path, block).expect("write");
                    if let Err(error) = quench_runner::connectors::openai::UsageScopes::load(&path)
                    {
                        problems.push(format!("{place}: {error}"));
                    }
                }
                Ok(Example::Fragment(value)) if page == TESTS => {
                    if let Some(error) = case_fragment_errors(&value) {
                        problems.push(format!("{place}: {error}"));
                    }
                }
                Ok(Example::Fragment(value)) => {
                    for error in fragment_errors(&value, &schema) {
                        problems.push(format!("{place}: {error}"));
                    }
                }
            }
        }
    }
    assert!(playbooks >= 4, "the pages show complete playbooks");
    assert!(!test_files.is_empty(), "{TESTS} shows a test file");
    for (place, path) in test_files {
        match quench_runner::testing::run_file(&path).await {
            Err(error) => problems.push(format!("{place}: {error}")),
            Ok(report) => {
                for case in report.cases.iter().filter(|case| !case.failures.is_empty()) {
                    problems.push(format!(
                        "{place}: case `{}` fails: {}",
                        case.name,
                        case.failures.join("; ")
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &str) -> BTreeSet<String> {
    let mut in_code = false;
    page.lines()
        .filter(|line| {
            if line.starts_with("```") {
                in_code = !in_code;
            }
            !in_code && line.starts_with('#')
        })
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_link_between_the_pages_resolves() {
    let root = support::root();
    let mut problems = Vec::new();
    for page in PAGES {
        let text = read(page);
        let base = Path::new(page).parent().unwrap_or(Path::new(""));
        for link in text.split("](").skip(1) {
            let Some(target) = link.split(')').next() else {
                continue;
            };
            if target.starts_with("http") {
                continue;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (target, None),
            };
            let linked = if file.is_empty() {
                page.to_owned()
            } else {
                base.join(file).display().to_string()
            };
            let path = root.join(&linked);
            if !path.exists() {
                problems.push(format!("{page}: link to missing {target}"));
                continue;
            }
            if let Some(fragment) = fragment
                && !anchors(&read(&linked)).contains(fragment)
            {
                problems.push(format!("{page}: no heading for #{fragment} in {linked}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `[safety]` key (and every key of a freeze window) is explained on the safety page.
#[test]
fn every_safety_key_is_documented() {
    let page = read("docs/safety.md");
    let mut words = BTreeSet::new();
    for schema in [
        schemars::schema_for!(quench_common::config::SafetySection).to_value(),
        schemars::schema_for!(quench_common::config::FreezeWindow).to_value(),
    ] {
        schema_words(&schema, &mut words);
    }
    assert!(words.contains("max_per_hour") && words.contains("duration"));
    let missing: Vec<&String> = words
        .iter()
        .filter(|word| !page.contains(&format!("`{word}")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/safety.md does not explain {missing:?}"
    );
}

/// The `[cluster]` page's example config loads as it is written.
#[test]
fn the_cluster_example_config_loads() {
    let page = read("docs/cluster.md");
    let block = page
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/cluster.md has a TOML example");
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("quench.toml");
    std::fs::write(&path, block).expect("write");
    let config = quench_common::config::Config::load(
        Some(&path),
        &quench_common::config::Overrides::default(),
    )
    .unwrap_or_else(|error| panic!("docs/cluster.md's example: {error}"));
    assert!(config.cluster.enabled);
    assert_eq!(config.cluster.runner, "quench-0");
    assert_eq!(config.nats.replicas, 3);
}
