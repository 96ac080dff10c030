//! The JSON Schema of campaign files (`schemas/campaign.schema.json`, draft 2020-12): editors
//! (the YAML language server) complete and check campaign files with it as people type, and
//! [`check_campaign`] applies it beside the Rust checks of `parse.rs` (which keep what a schema
//! cannot say: durations' range, time zones, Liquid templates, fields that depend on each other),
//! every error with its field path.

use std::sync::OnceLock;

use serde_json::Value;

use super::{parse_campaign, Campaign, FieldError, ValidationErrors};

/// The schema's text (`schemas/campaign.schema.json`), for editors and the API to serve.
pub const CAMPAIGN_SCHEMA: &str = include_str!("../../../schemas/campaign.schema.json");

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(CAMPAIGN_SCHEMA)
            .expect("schemas/campaign.schema.json is JSON (checked by the unit tests)");
        jsonschema::validator_for(&schema)
            .expect("schemas/campaign.schema.json is a JSON Schema (checked by the unit tests)")
    })
}

/// Where `document` (a parsed campaign file) breaks the schema, each with its field path in
/// `parse.rs`'s notation (`what.variants[0].title`).
pub fn schema_errors(document: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for error in validator().iter_errors(document) {
        explain(&error, &mut errors);
    }
    errors
}

/// Validates a campaign definition with the schema and `parse.rs`; the schema's errors are added
/// where `parse.rs` reported nothing at or around the same field, so each problem is told once,
/// in `parse.rs`'s words when it has them.
pub fn check_campaign(text: &str, source: &str) -> Result<Campaign, ValidationErrors> {
    let parsed = parse_campaign(text, source);
    let Ok(document) = serde_norway::from_str::<Value>(text) else {
        return parsed; // `(document)`: not YAML
    };
    let reported: Vec<String> = match &parsed {
        Ok(_) => Vec::new(),
        Err(errors) => errors.errors.iter().map(|e| e.path.clone()).collect(),
    };
    let extra: Vec<FieldError> = schema_errors(&document)
        .into_iter()
        .filter(|error| !reported.iter().any(|path| related(path, &error.path)))
        .collect();
    match parsed {
        Ok(campaign) if extra.is_empty() => Ok(campaign),
        Ok(_) => Err(ValidationErrors { source: source.to_string(), errors: extra }),
        Err(mut errors) => {
            errors.errors.extend(extra);
            Err(errors)
        }
    }
}

/// Whether one field path lies inside the other (or they are the same field).
fn related(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        outer.is_empty()
            || inner == outer
            || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with(['.', '[']))
    };
    inside(a, b) || inside(b, a)
}

/// The dotted field path of a JSON pointer location (`/what/variants/0` → `what.variants[0]`).
fn field_path(segments: impl Iterator<Item = String>) -> String {
    let mut path = String::new();
    for segment in segments {
        if segment.parse::<usize>().is_ok() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Turns one schema error into field errors: a missing or unknown field is named in the path;
/// of the alternatives of a `oneOf`/`anyOf` that none matched, the closest one (fewest errors)
/// is explained.
fn explain(error: &jsonschema::ValidationError<'_>, out: &mut Vec<FieldError>) {
    use jsonschema::error::ValidationErrorKind as Kind;
    let path = field_path(error.instance_path().iter().map(|segment| segment.to_string()));
    match error.kind() {
        Kind::Required { property } => out.push(FieldError {
            path: join(&path, property.as_str().unwrap_or_default()),
            reason: "is required".into(),
        }),
        Kind::AdditionalProperties { unexpected } => out.extend(
            unexpected
                .iter()
                .map(|key| FieldError { path: join(&path, key), reason: "unknown field".into() }),
        ),
        Kind::OneOfNotValid { context } | Kind::AnyOf { context } => {
            // A branch refused only for its type here (e.g. `null` of an optional mapping)
            // explains least.
            let wrong_type = |branch: &Vec<jsonschema::ValidationError<'_>>| {
                branch.iter().all(|inner| {
                    matches!(inner.kind(), Kind::Type { .. })
                        && inner.instance_path() == error.instance_path()
                })
            };
            let closest = context
                .iter()
                .filter(|branch| !branch.is_empty())
                .min_by_key(|branch| (wrong_type(branch), branch.len()));
            match closest {
                Some(closest) => closest.iter().for_each(|inner| explain(inner, out)),
                None => out.push(FieldError { path, reason: error.to_string() }),
            }
        }
        _ => out.push(FieldError { path, reason: error.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Campaign definitions of examples/, deploy/demo/ and the YAML blocks of docs/ that have
    /// `when:` and `what:`.
    fn documented_campaigns() -> Vec<(String, String)> {
        let mut found = Vec::new();
        for dir in ["examples/campaigns", "deploy/demo/campaigns"] {
            for entry in std::fs::read_dir(root().join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                found.push((path.display().to_string(), text));
            }
        }
        for entry in std::fs::read_dir(root().join("docs")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, block) in text.split("```yaml\n").skip(1).enumerate() {
                let block = block.split("```").next().unwrap();
                if block.contains("\nwhen:") && block.contains("\nwhat:") {
                    found.push((format!("{}, yaml block {i}", path.display()), block.to_string()));
                }
            }
        }
        found
    }

    #[test]
    fn the_schema_compiles_and_meets_its_meta_schema() {
        let schema: Value = serde_json::from_str(CAMPAIGN_SCHEMA).unwrap();
        jsonschema::meta::validate(&schema).expect("a valid draft 2020-12 schema");
        validator();
    }

    #[test]
    fn documented_campaigns_that_parse_meet_the_schema() {
        let campaigns = documented_campaigns();
        assert!(campaigns.len() >= 10, "only {} campaign files and blocks", campaigns.len());
        let mut checked = 0;
        for (source, text) in campaigns {
            if parse_campaign(&text, &source).is_err() {
                continue; // a fragment or a deliberate mistake: not a whole campaign
            }
            let document: Value = serde_norway::from_str(&text).unwrap();
            let errors = schema_errors(&document);
            assert!(errors.is_empty(), "{source}: {errors:?}");
            check_campaign(&text, &source).expect("valid for both");
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} valid campaigns");
    }

    const VALID: &str = "id: welcome\napp: shop\nname: Welcome\nwhen:\n  event: Signed Up\n\
                         what:\n  title: Hi\n  body: Welcome\n";

    fn errors_of(text: &str) -> Vec<FieldError> {
        schema_errors(&serde_norway::from_str::<Value>(text).unwrap())
    }

    #[test]
    fn structural_errors_name_their_field() {
        assert!(errors_of(VALID).is_empty());
        let missing = VALID.replace("  body: Welcome\n", "");
        assert_eq!(
            errors_of(&missing),
            [FieldError { path: "what.body".into(), reason: "is required".into() }]
        );
        let unknown = VALID.replace("name: Welcome", "name: Welcome\ncolour: blue");
        assert_eq!(
            errors_of(&unknown),
            [FieldError { path: "colour".into(), reason: "unknown field".into() }]
        );
        let bad_variant = VALID.replace(
            "what:\n  title: Hi\n  body: Welcome\n",
            "what:\n  variants:\n    - {title: A, body: a}\n    - {title: B, bod: b}\n",
        );
        let paths: Vec<String> = errors_of(&bad_variant).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["what.variants[1].body", "what.variants[1].bod"]);
        let bad_duration = VALID.replace(
            "  event: Signed Up\n",
            "  event: Signed Up\n  unless: {event: Bought, within: soon}\n",
        );
        let errors = errors_of(&bad_duration);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "when.unless.within");
    }

    #[test]
    fn a_file_with_many_mistakes_reads_as_parse_rs_tells_it() {
        // The invalid file of engine/tests/campaigns.rs: the schema finds no field that parse.rs
        // did not already name, so the errors are today's, word for word.
        let text = r#"
id: "bad id!"
app: shop
status: running
who:
  all:
    - { property: age, older_than: 30 }
    - { property: age, between: [40, 25] }
    - { device: colour, equals: red }
when:
  event: Added To Cart
  unless: { event: Charged, within: 10 minutes }
what:
  variants:
    - { title: "Hi {{ profile.name ", body: b }
    - { title: t, body: b }
options:
  sample_percent: 150
  dnd: { start: "9pm", end: "09:00" }
  colour: blue
"#;
        let parsed = parse_campaign(text, "bad.yaml").unwrap_err();
        assert_eq!(check_campaign(text, "bad.yaml").unwrap_err(), parsed);
        assert!(schema_errors(&serde_norway::from_str(text).unwrap()).len() >= 8);
    }

    #[test]
    fn parse_rs_words_win_and_the_schema_adds_what_it_missed() {
        let both = VALID.replace("  body: Welcome\n", "").replace("app: shop\n", "");
        let errors = check_campaign(&both, "both.yaml").unwrap_err().errors;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths.iter().filter(|p| **p == "what.body").count(), 1, "{errors:?}");
        assert_eq!(paths.iter().filter(|p| **p == "app").count(), 1, "{errors:?}");
        // parse.rs takes an action that is not text for the default (delay); the schema does not.
        let action = VALID
            .replace("what:", "options:\n  dnd: {start: '22:00', end: '08:00', action: 5}\nwhat:");
        parse_campaign(&action, "action.yaml").expect("parse.rs alone accepts it");
        let errors = check_campaign(&action, "action.yaml").unwrap_err().errors;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "options.dnd.action");
        assert!(related("who.all[0]", "who") && related("who", "who.all[0]"));
        assert!(!related("whom", "who") && !related("what.body", "what.bod"));
    }
}
