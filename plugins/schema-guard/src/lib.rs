//! `schema-guard`: values written under the configured prefixes must be JSON objects
//! matching a small schema (required fields and their types).
//!
//! Config:
//! ```json
//! {"schemas": [{"prefix": "/json/", "required": {"a": "number", "name": "string"}}]}
//! ```
//! A prefix without `required` only demands a JSON object. Types are `string`, `number`,
//! `integer`, `boolean`, `object`, `array`, `null` and `any`. Deletes are always allowed.
//! With no config at all every value under the plugin's prefixes must be a JSON object.

use std::collections::BTreeMap;

use cairn_plugin_sdk::{Decision, Plugin, WriteOp, WriteRequest};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    schemas: Vec<Schema>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Schema {
    prefix: String,
    #[serde(default)]
    required: BTreeMap<String, String>,
}

pub struct SchemaGuard;

impl Plugin for SchemaGuard {
    fn check(request: WriteRequest) -> Decision {
        let config: Config = match cairn_plugin_sdk::config::<Option<Config>>() {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => return Decision::deny(e),
        };
        for op in &request.ops {
            let WriteOp::Put(put) = op else { continue };
            if put.ignore_value {
                continue;
            }
            let Some(value) = &put.value else {
                return Decision::deny("schema-guard needs values: set `values: true`");
            };
            let key = String::from_utf8_lossy(&put.key);
            if let Err(reason) = validate(&config, &put.key, value) {
                return Decision::deny(format!("{key}: {reason}"));
            }
        }
        Decision::Allow
    }
}

cairn_plugin_sdk::export_plugin!(SchemaGuard);

/// Checks one value against the schema of the longest configured prefix of `key`.
fn validate(config: &Config, key: &[u8], value: &[u8]) -> Result<(), String> {
    let doc: Value =
        serde_json::from_slice(value).map_err(|e| format!("value is not JSON ({e})"))?;
    let Value::Object(fields) = doc else {
        return Err("value is not a JSON object".into());
    };
    let schema = config
        .schemas
        .iter()
        .filter(|s| key.starts_with(s.prefix.as_bytes()))
        .max_by_key(|s| s.prefix.len());
    let Some(schema) = schema else { return Ok(()) };
    for (name, ty) in &schema.required {
        let Some(field) = fields.get(name) else {
            return Err(format!("missing required field `{name}`"));
        };
        if !has_type(field, ty) {
            return Err(format!("field `{name}` must be of type {ty}"));
        }
    }
    Ok(())
}

fn has_type(v: &Value, ty: &str) -> bool {
    match ty {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => ty == "any",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_plugin_sdk::testing::Harness;
    use serde_json::json;

    fn check(req: WriteRequest) -> Decision {
        SchemaGuard::check(req)
    }

    #[test]
    fn objects_pass_and_other_json_or_garbage_is_refused() {
        let _h = Harness::new();
        assert_eq!(
            check(WriteRequest::new("").put("/json/a", r#"{"a":1}"#)),
            Decision::Allow
        );
        let cases = [
            ("nope", "not JSON"),
            ("[1]", "not a JSON object"),
            ("3", "not a JSON object"),
        ];
        for (value, want) in cases {
            match check(WriteRequest::new("").put("/json/b", value)) {
                Decision::Deny(reason) => assert!(reason.contains(want), "{value}: {reason}"),
                other => panic!("{value}: {other:?}"),
            }
        }
    }

    #[test]
    fn required_fields_and_types_follow_the_longest_prefix() {
        let _h = Harness::new().config(json!({"schemas": [
            {"prefix": "/json/", "required": {}},
            {"prefix": "/json/users/", "required": {"name": "string", "age": "integer"}},
        ]}));
        assert!(check(WriteRequest::new("").put("/json/x", "{}")).is_allowed());
        assert!(
            check(WriteRequest::new("").put("/json/users/1", r#"{"name":"a","age":3}"#))
                .is_allowed()
        );
        assert_eq!(
            check(WriteRequest::new("").put("/json/users/1", r#"{"name":"a"}"#)),
            Decision::deny("/json/users/1: missing required field `age`")
        );
        assert_eq!(
            check(WriteRequest::new("").put("/json/users/1", r#"{"name":"a","age":"3"}"#)),
            Decision::deny("/json/users/1: field `age` must be of type integer")
        );
    }

    #[test]
    fn deletes_pass() {
        let _h = Harness::new();
        assert!(check(WriteRequest::new("").delete("/json/a")).is_allowed());
    }

    #[test]
    fn a_bad_config_refuses_every_write() {
        // A guard that cannot read its rules must not let writes through.
        let _h = Harness::new().config(json!({"schema": []}));
        match check(WriteRequest::new("").put("/json/a", "{}")) {
            Decision::Deny(reason) => assert!(reason.starts_with("bad plugin config"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
