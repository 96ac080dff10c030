//! The JSON Schemas of campaign and saved segment files (`schemas/campaign.schema.json` and
//! `schemas/segment.schema.json`, draft 2020-12; the segment schema takes the filter language
//! and its other definitions from the campaign schema by `$ref`): editors (the YAML language
//! server) complete and check files with them as people type, and [`super::parse_campaign`] and
//! [`super::parse_segment`] check every file's structure with them (types, required and unknown
//! fields, allowed values, shapes, fields that exclude or need each other) before `parse.rs`
//! checks what a schema cannot say (durations, time zones, Liquid templates, limits).
//!
//! Every error has its field path (`what.variants[0].title`) and a sentence: the schema's own
//! (`x-messages`, keyword → sentence, beside the keyword it explains) or one made here from the
//! keyword, the value and the allowed values.

use std::{cmp::Ordering, sync::OnceLock};

use jsonschema::{
    error::{TypeKind, ValidationErrorKind as Kind},
    paths::LocationSegment,
    JsonType, Registry, ValidationError,
};
use serde_json::Value;
use serde_norway::Value as Node;

use super::FieldError;

/// The campaign schema's text (`schemas/campaign.schema.json`), for editors and the API to serve.
pub const CAMPAIGN_SCHEMA: &str = include_str!("../../../schemas/campaign.schema.json");

/// The segment schema's text (`schemas/segment.schema.json`), for editors and the API to serve.
pub const SEGMENT_SCHEMA: &str = include_str!("../../../schemas/segment.schema.json");

/// The extension keyword of the schema holding the sentences of failed keywords.
const MESSAGES: &str = "x-messages";

/// One of Herald's schemas: which files it checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SchemaFile {
    /// Campaign files (`schemas/campaign.schema.json`).
    #[default]
    Campaign,
    /// Saved segment files (`schemas/segment.schema.json`).
    Segment,
}

impl SchemaFile {
    /// Every schema.
    pub const ALL: [Self; 2] = [Self::Campaign, Self::Segment];

    /// The schema's text.
    pub fn text(self) -> &'static str {
        match self {
            Self::Campaign => CAMPAIGN_SCHEMA,
            Self::Segment => SEGMENT_SCHEMA,
        }
    }

    /// What files it checks: `campaign` or `segment`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Campaign => "campaign",
            Self::Segment => "segment",
        }
    }

    /// Its file name under `schemas/`, as the schemas' `$ref`s to each other name it.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Campaign => "campaign.schema.json",
            Self::Segment => "segment.schema.json",
        }
    }

    /// The schema as JSON.
    fn json(self) -> &'static Value {
        static JSON: [OnceLock<Value>; 2] = [OnceLock::new(), OnceLock::new()];
        JSON[self as usize].get_or_init(|| {
            serde_json::from_str(self.text())
                .unwrap_or_else(|e| panic!("schemas/{} is JSON: {e}", self.file_name()))
        })
    }

    /// The schema as written, its fields in their order (`serde_json` sorts them), for the
    /// sentences of `x-messages`, the fields it lists and their order.
    fn written(self) -> &'static Node {
        static WRITTEN: [OnceLock<Node>; 2] = [OnceLock::new(), OnceLock::new()];
        WRITTEN[self as usize].get_or_init(|| {
            serde_norway::from_str(self.text())
                .unwrap_or_else(|e| panic!("schemas/{} is JSON, so YAML: {e}", self.file_name()))
        })
    }

    /// Its `$id`, against which its `$ref`s to the other schemas resolve.
    fn id(self) -> &'static str {
        self.json()["$id"].as_str().expect("every schema has an $id")
    }

    /// The schema whose `$id` is `uri`.
    fn with_id(uri: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|file| file.id() == uri)
    }

    /// The schema a `$ref` found in this one names, and the JSON pointer in it (`#/$defs/x`:
    /// this one; `campaign.schema.json#/$defs/x`: the campaign schema).
    fn resolve(self, reference: &str) -> Option<(Self, &str)> {
        let (file, at) = reference.split_once('#')?;
        let target = match file {
            "" => self,
            name => Self::ALL.into_iter().find(|file| file.file_name() == name)?,
        };
        Some((target, at))
    }

    /// The validator of whole files.
    fn validator(self) -> &'static jsonschema::Validator {
        static VALIDATORS: [OnceLock<jsonschema::Validator>; 2] =
            [OnceLock::new(), OnceLock::new()];
        VALIDATORS[self as usize].get_or_init(|| {
            jsonschema::options()
                .with_registry(registry())
                .build(self.json())
                .unwrap_or_else(|e| panic!("schemas/{} is a JSON Schema: {e}", self.file_name()))
        })
    }
}

/// Every schema by its `$id`, so that `$ref`s between them resolve offline.
fn registry() -> &'static Registry<'static> {
    static REGISTRY: OnceLock<Registry<'static>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let resources = SchemaFile::ALL.map(|file| (file.id(), file.json()));
        Registry::new()
            .extend(resources)
            .and_then(|registry| registry.prepare())
            .expect("the schemas' $ids are URIs")
    })
}

/// The node of a written schema at a JSON pointer (`/$defs/filter`).
fn pointer<'n>(root: &'n Node, pointer: &str) -> Option<&'n Node> {
    pointer.split('/').skip(1).try_fold(root, |node, token| {
        let token = token.replace("~1", "/").replace("~0", "~");
        match token.parse::<usize>() {
            Ok(index) if node.is_sequence() => node.get(index),
            _ => node.get(token.as_str()),
        }
    })
}

/// Where `document` (a parsed file of the kind `file` checks) breaks the schema, in the
/// schema's order.
pub fn schema_errors(file: SchemaFile, document: &Value) -> Vec<FieldError> {
    let mut errors = errors(file.validator(), document);
    sort_by_schema(file, &mut errors);
    errors
}

/// Where `value` breaks `validator`. A value of the wrong type is told so, and nothing else
/// about it.
fn errors(validator: &jsonschema::Validator, value: &Value) -> Vec<FieldError> {
    let found: Vec<ValidationError<'_>> = validator.iter_errors(value).collect();
    let wrong_type = |error: &ValidationError<'_>| matches!(error.kind(), Kind::Type { .. });
    let mistyped: Vec<&jsonschema::paths::Location> =
        found.iter().filter(|e| wrong_type(e)).map(ValidationError::instance_path).collect();
    let mut errors = Vec::new();
    for error in &found {
        if wrong_type(error) || !mistyped.contains(&error.instance_path()) {
            explain(error, &mut errors);
        }
    }
    for error in errors.iter_mut().filter(|error| error.path.is_empty()) {
        error.path = "(document)".into();
    }
    errors
}

/// Sorts errors as the schema of `file` lists the fields (what editors and `docs/campaigns.md`
/// show): a field before what is inside it, unknown fields first, list items by index. Stable.
pub(super) fn sort_by_schema(file: SchemaFile, errors: &mut [FieldError]) {
    errors.sort_by_cached_key(|error| schema_order(file, &error.path));
}

/// The dotted field path of an instance location (`/what/variants/0` → `what.variants[0]`).
fn field_path(location: &jsonschema::paths::Location) -> String {
    let mut path = String::new();
    for segment in location.iter() {
        match segment {
            LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
            LocationSegment::Property(key) => path = join(&path, &key),
        }
    }
    path
}

/// `path.key` (or `key` at the top).
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// What a value is, in a sentence (`found a list`).
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The schema object holding the keyword that failed (for its `x-messages` and `properties`),
/// in whichever schema holds it.
fn schema_node(error: &ValidationError<'_>) -> Option<&'static Node> {
    let uri = error.absolute_keyword_location()?;
    let (id, location) = uri.as_str().split_once('#')?;
    let location = location.replace("%24", "$");
    let keyword = format!("/{}", error.kind().keyword());
    pointer(SchemaFile::with_id(id)?.written(), &location[..location.rfind(&keyword)?])
}

/// The schema's sentence for `keyword` failing at `node`, its placeholders filled in.
fn custom(node: Option<&Node>, keyword: &str, value: &Value, field: &str) -> Option<String> {
    let template = node?.get(MESSAGES)?.get(keyword)?.as_str()?;
    Some(
        template
            .replace("{value}", &value.to_string())
            .replace("{kind}", kind(value))
            .replace("{field}", &Value::from(field).to_string()),
    )
}

/// Turns one schema error into field errors: a missing or unknown field is named in the path;
/// of the alternatives of a `oneOf`/`anyOf` that none matched, the one that fits the value best
/// is explained, or the schema's sentence for the keyword when none fits better than another.
fn explain(error: &ValidationError<'_>, out: &mut Vec<FieldError>) {
    let path = field_path(error.instance_path());
    let node = schema_node(error);
    let value = error.instance();
    let keyword = error.kind().keyword();
    let say = |field: &str| custom(node, keyword, value, field);
    match error.kind() {
        Kind::Required { property } => {
            let field = property.as_str().unwrap_or_default();
            let reason = say(field).unwrap_or_else(|| "is required".into());
            out.push(FieldError { path: join(&path, field), reason });
        }
        Kind::AdditionalProperties { unexpected } | Kind::UnevaluatedProperties { unexpected } => {
            for field in unexpected {
                let reason = say(field).unwrap_or_else(|| unknown_field(node));
                out.push(FieldError { path: join(&path, field), reason });
            }
        }
        Kind::OneOfNotValid { context } | Kind::AnyOf { context } => {
            match closest_branch(error, context) {
                Closest::Branch(branch) => branch.iter().for_each(|inner| explain(inner, out)),
                Closest::Ambiguous(first) => match say("") {
                    Some(reason) => out.push(FieldError { path, reason }),
                    None => first.iter().for_each(|inner| explain(inner, out)),
                },
            }
        }
        _ => {
            let reason = say("").unwrap_or_else(|| default_reason(error, &path));
            out.push(FieldError { path, reason });
        }
    }
}

/// `unknown field; expected one of <the fields the schema lists there>`.
fn unknown_field(node: Option<&Node>) -> String {
    let fields: Vec<&str> = node
        .and_then(|node| node.get("properties"))
        .and_then(Node::as_mapping)
        .map(|properties| properties.keys().filter_map(Node::as_str).collect())
        .unwrap_or_default();
    match fields.as_slice() {
        [] => "unknown field".into(),
        fields => format!("unknown field; expected one of {}", fields.join(", ")),
    }
}

type Branch = Vec<ValidationError<'static>>;

/// Which alternative of a `oneOf`/`anyOf` explains a value best.
enum Closest<'e> {
    /// The one that fits the value best.
    Branch(&'e [ValidationError<'static>]),
    /// None fits better than another (the first of them).
    Ambiguous(&'e [ValidationError<'static>]),
}

/// Branches that refuse the value itself for its type, a missing field or a value not allowed
/// do not fit it; of those that fit (else of all), the one with the fewest errors at the value
/// itself, then overall. A branch only refusing `null` explains least.
fn closest_branch<'e>(error: &ValidationError<'_>, context: &'e [Branch]) -> Closest<'e> {
    let here = error.instance_path();
    let at_value = |branch: &'e Branch| branch.iter().filter(move |e| e.instance_path() == here);
    let misfit = |branch: &'e Branch| {
        at_value(branch).any(|e| {
            matches!(
                e.kind(),
                Kind::Type { .. }
                    | Kind::Required { .. }
                    | Kind::Constant { .. }
                    | Kind::Enum { .. }
            )
        })
    };
    let score = |branch: &'e Branch| {
        let only_null = branch.len() == 1
            && matches!(branch[0].kind(), Kind::Type { kind: TypeKind::Single(JsonType::Null) });
        let at_value_count: usize = at_value(branch)
            .map(|e| match e.kind() {
                Kind::AdditionalProperties { unexpected }
                | Kind::UnevaluatedProperties { unexpected } => unexpected.len(),
                _ => 1,
            })
            .sum();
        (only_null, at_value_count, branch.len())
    };
    let branches: Vec<&Branch> = context.iter().filter(|branch| !branch.is_empty()).collect();
    let fitting: Vec<&Branch> = branches.iter().copied().filter(|b| !misfit(b)).collect();
    let candidates = if fitting.is_empty() { &branches } else { &fitting };
    let Some(best) = candidates.iter().copied().min_by_key(|b| score(b)) else {
        return Closest::Ambiguous(&[]);
    };
    let ties = candidates.iter().filter(|b| score(b).cmp(&score(best)) == Ordering::Equal).count();
    if fitting.is_empty() && ties > 1 {
        Closest::Ambiguous(best)
    } else {
        Closest::Branch(best)
    }
}

/// A sentence for a failed keyword the schema gives no words for.
fn default_reason(error: &ValidationError<'_>, path: &str) -> String {
    let value = error.instance();
    match error.kind() {
        Kind::Type { kind: expected } => {
            let expected: Vec<&str> = match expected {
                TypeKind::Single(single) => vec![type_name(*single)],
                TypeKind::Multiple(set) => {
                    set.iter().filter(|t| *t != JsonType::Null).map(type_name).collect()
                }
            };
            format!("expected {}, found {}", expected.join(" or "), kind(value))
        }
        Kind::Enum { options } => {
            let allowed: Vec<String> = options
                .as_array()
                .map(|options| options.iter().map(plain).collect())
                .unwrap_or_default();
            let field = path.rsplit(['.', '[']).next().filter(|last| !last.ends_with(']'));
            format!("unknown {} {value}; expected {}", field.unwrap_or("value"), one_of(&allowed))
        }
        Kind::Constant { expected_value } => format!("expected {}", plain(expected_value)),
        Kind::Minimum { limit } => format!("expected at least {limit}, found {value}"),
        Kind::Maximum { limit } => format!("expected at most {limit}, found {value}"),
        Kind::ExclusiveMinimum { limit } => format!("expected more than {limit}, found {value}"),
        Kind::ExclusiveMaximum { limit } => format!("expected less than {limit}, found {value}"),
        Kind::MinItems { limit: 1 } => "expected a non-empty list".into(),
        Kind::MinItems { limit } => format!("expected at least {limit} items"),
        Kind::MaxItems { limit } => format!("expected at most {limit} items"),
        Kind::MaxLength { limit } => format!("is longer than {limit} characters"),
        Kind::UniqueItems => "lists the same item twice".into(),
        Kind::Not { .. } | Kind::FalseSchema => "is not allowed here".into(),
        Kind::OneOfMultipleValid { .. } => "matches more than one of its forms".into(),
        _ => error.to_string(),
    }
}

fn type_name(kind: JsonType) -> &'static str {
    match kind {
        JsonType::String => "text",
        JsonType::Integer => "a whole number",
        JsonType::Number => "a number",
        JsonType::Boolean => "true or false",
        JsonType::Array => "a list",
        JsonType::Object => "a mapping",
        JsonType::Null => "nothing",
    }
}

/// A value as a sentence shows it: text without quotes.
fn plain(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The order of a field path in the schema of `file`: per segment, a list item's index or a
/// field's position among the fields the schema lists there (0: a field it does not know).
fn schema_order(file: SchemaFile, path: &str) -> Vec<usize> {
    let mut nodes = vec![(file, file.written())];
    let mut order = Vec::new();
    for segment in path_segments(path) {
        let expanded: Vec<(SchemaFile, &Node)> =
            nodes.iter().flat_map(|&(file, node)| expand(file, node, 0)).collect();
        match segment.strip_prefix('[').and_then(|index| index.strip_suffix(']')) {
            Some(index) => {
                order.push(index.parse().unwrap_or(0));
                nodes = (expanded.iter())
                    .filter_map(|&(file, node)| Some((file, node.get("items")?)))
                    .collect();
            }
            None => {
                let found = expanded.iter().find_map(|&(file, node)| {
                    let properties = node.get("properties")?.as_mapping()?;
                    let rank = properties.keys().position(|key| key.as_str() == Some(segment))?;
                    Some((rank + 1, (file, properties.get(segment)?)))
                });
                order.push(found.map_or(0, |(rank, _)| rank));
                nodes = found.map(|(_, node)| node).into_iter().collect();
            }
        }
    }
    order
}

/// `who.all[0].older_than` → `who`, `all`, `[0]`, `older_than`.
fn path_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('.').filter(|part| !part.is_empty()).flat_map(|part| {
        let (key, indices) = part.split_at(part.find('[').unwrap_or(part.len()));
        std::iter::once(key)
            .filter(|key| !key.is_empty())
            .chain(indices.split_inclusive(']').filter(|index| !index.is_empty()))
    })
}

/// A node of the schema of `file` with the nodes it applies besides its own keywords (`$ref`,
/// also to the other schema, `allOf`, `anyOf`, `oneOf`, `then`, `else`), a few levels deep,
/// each with the schema holding it.
fn expand(file: SchemaFile, node: &'static Node, depth: usize) -> Vec<(SchemaFile, &'static Node)> {
    let mut nodes = vec![(file, node)];
    if depth > 6 {
        return nodes;
    }
    if let Some((target, at)) =
        node.get("$ref").and_then(Node::as_str).and_then(|reference| file.resolve(reference))
    {
        if let Some(found) = pointer(target.written(), at) {
            nodes.extend(expand(target, found, depth + 1));
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for branch in node.get(key).and_then(Node::as_sequence).into_iter().flatten() {
            nodes.extend(expand(file, branch, depth + 1));
        }
    }
    for key in ["then", "else"] {
        if let Some(branch) = node.get(key) {
            nodes.extend(expand(file, branch, depth + 1));
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::campaign::{
        parse_campaign, parse_segment, MAX_COUNT, MAX_DAYS, MAX_HISTORY_DAYS, MAX_SHARDS,
    };

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The YAML files under `dirs` (recursively) and the YAML blocks of docs/ for which `fits`
    /// holds, each with where it is.
    fn documented(dirs: &[&str], fits: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        fn walk(dir: &Path, found: &mut Vec<(String, String)>, fits: &dyn Fn(&str) -> bool) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, found, fits);
                } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if fits(&text) {
                        found.push((path.display().to_string(), text));
                    }
                }
            }
        }
        let mut found = Vec::new();
        for dir in dirs {
            walk(&root().join(dir), &mut found, &fits);
        }
        for entry in std::fs::read_dir(root().join("docs")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let blocks = text.split("```yaml\n").skip(1).chain(text.split("```yml\n").skip(1));
            for (i, block) in blocks.enumerate() {
                let block = block.split("```").next().unwrap();
                if fits(block) {
                    found.push((format!("{}, yaml block {i}", path.display()), block.to_string()));
                }
            }
        }
        found
    }

    /// Campaign definitions: files and blocks with `when:` and `what:`.
    fn documented_campaigns() -> Vec<(String, String)> {
        documented(&["examples", "deploy/demo"], |text| {
            text.contains("\nwhen:") && text.contains("\nwhat:")
        })
    }

    #[test]
    fn the_schemas_compile_and_meet_their_meta_schema() {
        for file in SchemaFile::ALL {
            jsonschema::meta::validate(file.json()).expect("a valid draft 2020-12 schema");
            file.validator();
        }
    }

    #[test]
    fn the_schema_s_limits_are_the_engine_s() {
        let defs = &SchemaFile::Campaign.json()["$defs"];
        assert_eq!(defs["count"]["maximum"], MAX_COUNT);
        assert_eq!(defs["days"]["maximum"], MAX_DAYS);
        assert_eq!(
            defs["filter"]["oneOf"][5]["properties"]["in_last_days"]["maximum"],
            MAX_HISTORY_DAYS
        );
        assert_eq!(defs["options"]["properties"]["shards"]["maximum"], MAX_SHARDS);
        let most = crate::campaign::parse::MAX_CHOSEN_VARIANTS;
        assert_eq!(defs["what"]["oneOf"][1]["properties"]["variants"]["maxItems"], most);
    }

    #[test]
    fn every_documented_campaign_meets_the_schema() {
        let campaigns = documented_campaigns();
        assert!(campaigns.len() >= 10, "only {} campaign files and blocks", campaigns.len());
        let mut valid = 0;
        for (source, text) in campaigns {
            let document: Value = serde_norway::from_str(&text).unwrap();
            if document.get("id").is_none() {
                continue; // a fragment of a campaign
            }
            assert_eq!(schema_errors(SchemaFile::Campaign, &document), [], "{source}");
            parse_campaign(&text, &source).unwrap_or_else(|e| panic!("{e}"));
            valid += 1;
        }
        assert!(valid >= 10, "only {valid} whole campaigns");
    }

    const VALID: &str = "id: welcome\napp: shop\nname: Welcome\nwhen:\n  event: Signed Up\n\
                         what:\n  title: Hi\n  body: Welcome\n";

    fn errors_of(text: &str) -> Vec<String> {
        let document = serde_norway::from_str::<Value>(text).unwrap();
        let errors = schema_errors(SchemaFile::Campaign, &document);
        errors.into_iter().map(|e| format!("{}: {}", e.path, e.reason)).collect()
    }

    #[test]
    fn structural_errors_name_their_field_and_say_what_is_allowed() {
        assert_eq!(errors_of(VALID), Vec::<String>::new());
        let cases = [
            (("  body: Welcome\n", ""), vec!["what.body: is required"]),
            (
                ("name: Welcome", "name: Welcome\ncolour: blue"),
                vec!["colour: unknown field; expected one of id, app, name, status, who, when, \
                      what, limits, options"],
            ),
            (("app: shop", "app: 42"), vec!["app: expected text, found a number"]),
            (("app: shop", "app: ' '"), vec!["app: must not be empty"]),
            (
                ("name: Welcome", "name: Welcome\nstatus: running"),
                vec!["status: unknown status \"running\"; expected draft, active, paused or stopped"],
            ),
            (
                ("  event: Signed Up\n", "  event: Signed Up\n  unless: {event: Bought, within: soon}\n"),
                vec!["when.unless.within: bad duration \"soon\"; use a number and a unit (ms, s, m, \
                      h, d, w), e.g. 10m or 1h30m"],
            ),
            (
                ("  event: Signed Up\n", "  event: Signed Up\n  unless: {event: Bought, within: -5m}\n"),
                vec!["when.unless.within: must be positive"],
            ),
            (
                ("  event: Signed Up\n", "  reminder: {event: a, date_property: d, offset: 1h}\n  event: x\n"),
                vec!["when: needs exactly one trigger: event, reminder or schedule"],
            ),
            (
                ("  event: Signed Up\n", "  start: 2026-12-01T00:00:00Z\n"),
                vec!["when: needs exactly one trigger: event, reminder or schedule"],
            ),
            (
                ("Welcome\n", "Welcome\nwho: {property: age, older_than: 30}\n"),
                vec!["who.older_than: unknown property operator \"older_than\"; expected one of \
                      equals, not_equals, in, not_in, between, gt, gte, lt, lte, exists, \
                      not_exists, contains, starts_with, before, after, within_last_days"],
            ),
            (
                ("Welcome\n", "Welcome\nwho: {colour: red}\n"),
                vec!["who: expected one of all, any, not, property, device, near, did, did_not, \
                      segment"],
            ),
            (
                ("Welcome\n", "Welcome\nwho: {device: colour, equals: red}\n"),
                vec!["who.device: unknown device field \"colour\"; expected one of platform, \
                      app_version, os_version, make, model, sdk_version"],
            ),
            (
                ("Welcome\n", "Welcome\nwho: {property: age}\n"),
                vec!["who: needs an operator: one of equals, not_equals, in, not_in, between, gt, \
                      gte, lt, lte, exists, not_exists, contains, starts_with, before, after, \
                      within_last_days"],
            ),
            (
                ("Welcome\n", "Welcome\nwho: {property: age, gt: 1, lt: 9}\n"),
                vec!["who: a condition takes exactly one operator"],
            ),
            (
                ("  event: Signed Up\n", "  event: Signed Up\n  where: [{gt: 1}]\n"),
                vec!["when.where[0].property: is required"],
            ),
            (
                ("Welcome\n", "Welcome\nwho: {did: Bought, in_last_days: 500}\n"),
                vec!["who.in_last_days: 500 days is more than the longest history kept (400)"],
            ),
            (
                ("Welcome\n", "Welcome\nwho: {near: [{lat: 91, lon: 0, radius_km: 0}]}\n"),
                vec![
                    "who.near[0].lat: must be between -90 and 90",
                    "who.near[0].radius_km: must be positive",
                ],
            ),
            (
                ("what:", "options: {sample_percent: 150, platforms: [web], shards: 0}\nwhat:"),
                vec![
                    "options.sample_percent: expected a percentage above 0 and at most 100, found 150",
                    "options.platforms[0]: unknown platform \"web\"; expected ios or android",
                    "options.shards: expected a whole number from 1 to 64, found 0",
                ],
            ),
            (("what:", "options: 5\nwhat:"), vec!["options: expected a mapping, found a number"]),
            (
                ("what:", "options: {dnd: {start: 9pm, end: '08:00', action: wait}}\nwhat:"),
                vec![
                    "options.dnd.start: bad time of day \"9pm\"; use HH:MM, e.g. 21:00",
                    "options.dnd.action: unknown action \"wait\"; expected delay or discard",
                ],
            ),
            (
                ("  body: Welcome\n", "  body: Welcome\n  push: {actions: [{id: a, title: A}, {id: b, title: B}, {id: c, title: C}, {id: d, title: D}, {id: e}]}\n"),
                vec![
                    "what.push.actions: has more than 4 actions (the iOS category limit)",
                    "what.push.actions[4].title: is required",
                ],
            ),
            (("  title: Hi\n  body: Welcome\n", " 5\n"), vec!["what: expected a message (title and body) or variants, found a number"]),
        ];
        for ((from, to), expected) in cases {
            let text = VALID.replacen(from, to, 1);
            assert_eq!(errors_of(&text), expected, "{text}");
        }
    }

    #[test]
    fn schedules_are_checked_field_by_field() {
        let schedule = |fields: &str| {
            let text =
                VALID.replace("  event: Signed Up\n", &format!("  schedule: {{{fields}}}\n"));
            errors_of(&text)
        };
        let cases = [
            ("repeat: weekly, time: '09:00'", vec!["when.schedule.days: is required"]),
            ("repeat: daily", vec!["when.schedule.time: is required (a local time, e.g. 09:00)"]),
            (
                "repeat: daily, time: '09:00', day: 3",
                vec!["when.schedule.day: does not apply to repeat: daily"],
            ),
            (
                "repeat: monthly, day: 32, time: '09:00'",
                vec!["when.schedule.day: expected a whole number from 1 to 31, found 32"],
            ),
            (
                "repeat: daily, time: '09:00', at: '2026-12-01T00:00:00Z'",
                vec!["when.schedule: has at/every and repeat; use one form"],
            ),
            (
                "at: '2026-12-01T00:00:00Z', time: '09:00'",
                vec!["when.schedule.time: applies to a calendar schedule (repeat)"],
            ),
            (
                "repeat: daily, time: '09:00', until: '11:00'",
                vec!["when.schedule.until: applies to timezone: user"],
            ),
            (
                "repeat: hourly, hours: 6, timezone: best",
                vec!["when.schedule.timezone: best applies to daily, weekly and monthly"],
            ),
            (
                "repeat: daily, time: '09:00', catch_up: skip, grace: 1h",
                vec!["when.schedule.grace: applies to catch_up: once"],
            ),
            (
                "repeat: weekly, days: [mon, mon, someday], time: '09:00'",
                vec![
                    "when.schedule.days: lists the same weekday twice",
                    "when.schedule.days[2]: unknown weekday \"someday\"; use mon..sun",
                ],
            ),
            (
                "time: '09:00'",
                vec![
                    "when.schedule.time: applies to a calendar schedule (repeat)",
                    "when.schedule.at: is required",
                ],
            ),
        ];
        for (fields, expected) in cases {
            let mut expected: Vec<String> = expected.into_iter().map(String::from).collect();
            let mut found = schedule(fields);
            expected.sort();
            found.sort();
            assert_eq!(found, expected, "{fields}");
        }
    }

    #[test]
    fn errors_are_in_the_schema_s_order_unknown_fields_first() {
        let mut errors: Vec<FieldError> = [
            "options.timezone",
            "options.colour",
            "what.variants[0].title",
            "what.variants",
            "id",
            "who.all[1].between",
            "who.all[0].older_than",
            "options.dnd.start",
        ]
        .into_iter()
        .map(|path| FieldError { path: path.into(), reason: String::new() })
        .collect();
        sort_by_schema(SchemaFile::Campaign, &mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "id",
                "who.all[0].older_than",
                "who.all[1].between",
                "what.variants",
                "what.variants[0].title",
                "options.colour",
                "options.dnd.start",
                "options.timezone",
            ]
        );
    }

    /// Saved segment definitions: files and blocks with `who:` and no `when:`.
    fn documented_segments() -> Vec<(String, String)> {
        documented(&["segments", "examples", "deploy/demo"], |text| {
            text.contains("\nwho:") && !text.contains("\nwhen:")
        })
    }

    #[test]
    fn every_documented_segment_meets_the_segment_schema() {
        let segments = documented_segments();
        assert!(segments.len() >= 2, "only {segments:?}");
        for (source, text) in segments {
            let document: Value = serde_norway::from_str(&text).unwrap();
            assert_eq!(schema_errors(SchemaFile::Segment, &document), [], "{source}");
            parse_segment(&text, &source).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn segment_errors(text: &str) -> Vec<String> {
        let errors = parse_segment(text, "test").map(drop).unwrap_err().errors;
        errors.into_iter().map(|e| format!("{}: {}", e.path, e.reason)).collect()
    }

    #[test]
    fn a_segment_is_checked_by_the_segment_schema_with_the_campaign_s_filters() {
        let cases: [(&str, &[&str]); 6] = [
            (
                "id: vip\nname: VIP\nwho: {all: [{property: age, gt: x}, {did: 5}]}\n",
                &["who.all[0].gt: expected a number, found text", "who.all[1].did: expected text, found a number"],
            ),
            (
                "id: v i p\nname: ' '\ncolour: red\nwho: {property: age, older_than: 3}\n",
                &[
                    "colour: unknown field; expected one of id, name, who",
                    "id: must be 1 to 128 ASCII letters, digits, '.', '_' and '-', and not '.' \
                     or '..'",
                    "name: must not be empty",
                    "who.older_than: unknown property operator \"older_than\"; expected one of \
                     equals, not_equals, in, not_in, between, gt, gte, lt, lte, exists, \
                     not_exists, contains, starts_with, before, after, within_last_days",
                ],
            ),
            ("name: VIP\nwho: ~\n", &["id: is required", "who: is required"]),
            (
                "id: vip\nname: VIP\nwho: {near: [{lat: 91, lon: 0, radius_km: 1}]}\n",
                &["who.near[0].lat: must be between -90 and 90"],
            ),
            // What the schema cannot say stays in Rust, in the same list, in the schema's order.
            (
                "id: vip\nname: VIP\nwho: {any: [{segment: x}, {property: at, after: '2026-13-45T00:00:00Z'}]}\n",
                &[
                    "who.any[0].segment: a saved segment cannot reference another segment",
                    "who.any[1].after: bad date-time \"2026-13-45T00:00:00Z\" (input is out of \
                     range); use RFC 3339, e.g. 2026-11-26T10:00:00Z",
                ],
            ),
            ("- id: vip\n", &["(document): expected a mapping, found a list"]),
        ];
        for (text, expected) in cases {
            assert_eq!(segment_errors(text), expected, "{text}");
        }
    }
}
