//! Saved segments: named audiences in the `who` filter language (`segments/*.yaml`), published
//! to a compacted topic (key: the id; value: the file's text; a tombstone deletes one) that
//! every instance reads as a global table. Campaigns reference them with
//! `who: { segment: <id> }`; an edit changes who qualifies from then on.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{book::collect_behaviours, parse::parse_segment_filter, Behaviour, Filter};
use super::{FieldError, ValidationErrors};
use crate::runtime::GlobalTable;

/// Name of the global table of saved segments (`herald.segments`).
pub const SEGMENTS_TABLE: &str = "segments";

/// A saved segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Id campaigns reference.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Who is in it.
    pub who: Filter,
}

/// Parses a YAML (or JSON) segment definition (`id`, `name`, `who`); `source` names it in errors.
pub fn parse_segment(text: &str, source: &str) -> Result<Segment, ValidationErrors> {
    let fail = |errors| ValidationErrors { source: source.to_string(), errors };
    let error = |path: &str, reason: String| FieldError { path: path.into(), reason };
    let document: Value =
        serde_norway::from_str(text).map_err(|e| fail(vec![error("(document)", e.to_string())]))?;
    let Some(map) = document.as_object() else {
        return Err(fail(vec![error("(document)", "expected a mapping".into())]));
    };
    let mut errors: Vec<FieldError> = map
        .keys()
        .filter(|key| !["id", "name", "who"].contains(&key.as_str()))
        .map(|key| error(key, "unknown field; expected id, name or who".into()))
        .collect();
    let mut text_field = |key: &str| match map.get(key).and_then(Value::as_str) {
        Some(text) if !text.is_empty() => Some(text.to_string()),
        _ => {
            errors.push(error(key, "is required (non-empty text)".into()));
            None
        }
    };
    let (id, name) = (text_field("id"), text_field("name"));
    if let Some(id) = id.as_deref().filter(|id| !valid_id(id)) {
        errors.push(error(
            "id",
            format!("{id:?} may contain only ASCII letters, digits, '.', '_' and '-'"),
        ));
    }
    let who = match map.get("who") {
        None | Some(Value::Null) => {
            errors.push(error("who", "is required (a filter)".into()));
            None
        }
        Some(value) => parse_segment_filter(value, "who").map_err(|e| errors.extend(e)).ok(),
    };
    match (id, name, who) {
        (Some(id), Some(name), Some(who)) if errors.is_empty() => Ok(Segment { id, name, who }),
        _ => Err(fail(errors)),
    }
}

fn valid_id(id: &str) -> bool {
    id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Saved segments by id, compiled from the segments global table, and the behaviour
/// predicates their filters use (their history is kept like a campaign's).
#[derive(Debug, Default)]
pub struct SegmentBook {
    segments: BTreeMap<String, Segment>,
    behaviours: Vec<Behaviour>,
}

impl SegmentBook {
    /// Compiles every segment of the table; invalid ones (never published by `herald segment
    /// apply`) are skipped with a warning, and so match nobody.
    pub fn from_table(table: &GlobalTable) -> Self {
        let mut book = Self::default();
        for (key, value) in table.iter() {
            let id = String::from_utf8_lossy(key);
            let parsed = std::str::from_utf8(value)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_segment(text, &id).map_err(|e| e.to_string()));
            match parsed {
                Ok(segment) => {
                    collect_behaviours(&segment.who, &mut book.behaviours);
                    book.segments.insert(segment.id.clone(), segment);
                }
                Err(reason) => tracing::warn!(segment = %id, %reason, "ignoring segment"),
            }
        }
        book
    }

    /// The segment `id`.
    pub fn get(&self, id: &str) -> Option<&Segment> {
        self.segments.get(id)
    }

    /// Behaviour predicates of every segment.
    pub fn behaviours(&self) -> &[Behaviour] {
        &self.behaviours
    }
}
