//! JSON Schemas of the playbook format, generated from the types in `model.rs` and the action
//! input types in `actions`. One schema is for editors (checked in as
//! `workflows/playbook.schema.json`, with each action's `with` attached through `if`/`then`);
//! the others check structure and `with` inputs at load time. Draft-07, which editors support best.

use std::collections::HashMap;
use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::model::Playbook;
use crate::actions::{self, ActionSpec};

/// Where the editor schema is checked in, relative to the repository root.
pub const PLAYBOOK_SCHEMA_PATH: &str = "workflows/playbook.schema.json";

/// The playbook JSON Schema for editors (`# yaml-language-server: $schema=playbook.schema.json`).
pub fn playbook_schema() -> Value {
    let mut generator = SchemaSettings::draft07().into_generator();
    let inputs: Vec<(&ActionSpec, Value)> = actions::REGISTRY
        .iter()
        .map(|spec| (spec, spec.input_schema(&mut generator).to_value()))
        .collect();
    let mut root = generator.root_schema_for::<Playbook>().to_value();
    if let Some(step) = root
        .pointer_mut("/definitions/Step")
        .and_then(Value::as_object_mut)
    {
        let cases: Vec<Value> = inputs
            .iter()
            .map(|(spec, input)| {
                json!({
                    "if": { "properties": { "uses": { "const": spec.name } }, "required": ["uses"] },
                    "then": { "properties": { "with": input } }
                })
            })
            .collect();
        step.insert("allOf".into(), Value::Array(cases));
        if let Some(uses) = step
            .get_mut("properties")
            .and_then(|properties| properties.get_mut("uses"))
        {
            uses["enum"] = actions::names().collect();
        }
    }
    root
}

/// The structural schema: the format without per-action inputs (checked separately, so that an
/// input error can name the action and tolerate templates).
pub(crate) static STRUCTURE: LazyLock<(Value, jsonschema::Validator)> = LazyLock::new(|| {
    let schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Playbook>()
        .to_value();
    let validator = jsonschema::validator_for(&schema).expect("generated playbook schema compiles");
    (schema, validator)
});

/// Per-action input schemas and validators, by action name.
pub(crate) static INPUTS: LazyLock<HashMap<&'static str, (Value, jsonschema::Validator)>> =
    LazyLock::new(|| {
        actions::REGISTRY
            .iter()
            .map(|spec| {
                let mut generator = SchemaSettings::draft07().into_generator();
                let mut schema = spec.input_schema(&mut generator).to_value();
                let definitions = generator.take_definitions(true);
                if let Some(object) = schema.as_object_mut() {
                    object.insert("definitions".into(), Value::Object(definitions));
                }
                let validator =
                    jsonschema::validator_for(&schema).expect("generated input schema compiles");
                (spec.name, (schema, validator))
            })
            .collect()
    });
