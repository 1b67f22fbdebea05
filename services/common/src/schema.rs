//! JSON Schema helpers shared by the checks that explain a violation in words: the service
//! config's key check (`config`) and the runner's playbook structure check.

use serde_json::Value;

/// Names of the properties the schema at (the parent of) `schema_path` allows.
pub fn allowed_properties(schema: &Value, schema_path: &str) -> Vec<String> {
    let parent = schema_path
        .rsplit_once('/')
        .map_or("", |(parent, _)| parent);
    resolve(schema, parent)
        .and_then(|node| node.get("properties"))
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
}

/// Follows a schema path through the schema, jumping through `$ref`s as the validator did.
fn resolve<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let follow = |node: &'a Value| -> Option<&'a Value> {
        match node.get("$ref").and_then(Value::as_str) {
            Some(reference) => root.pointer(reference.trim_start_matches('#')),
            None => Some(node),
        }
    };
    let mut node = root;
    for segment in path.split('/').filter(|segment| !segment.is_empty()) {
        if segment == "$ref" {
            node = follow(node)?;
            continue;
        }
        let segment = segment.replace("~1", "/").replace("~0", "~");
        node = match node {
            Value::Object(map) => map.get(&segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    follow(node)
}
