//! Saved segments: named audiences in the `who` filter language (`segments/*.yaml`), published
//! to a compacted topic (key: the id; value: the file's text; a tombstone deletes one) that
//! every instance reads as a global table. Campaigns reference them with
//! `who: { segment: <id> }`; an edit changes who qualifies from then on.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    book::collect_behaviours,
    document::normalize,
    json_schema::{self, SchemaFile},
    parse::parse_segment_filter,
    Behaviour, FieldError, Filter, ValidationErrors,
};
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

/// Parses a YAML (or JSON) segment definition (`id`, `name`, `who`); `source` names it in
/// errors. The segment schema (`schemas/segment.schema.json`) checks its structure, `parse.rs`
/// the rest of its filter.
pub fn parse_segment(text: &str, source: &str) -> Result<Segment, ValidationErrors> {
    let fail = |errors| ValidationErrors { source: source.to_string(), errors };
    let mut document: Value = serde_norway::from_str(text)
        .map_err(|e| fail(vec![FieldError { path: "(document)".into(), reason: e.to_string() }]))?;
    normalize(&mut document);
    let structure = json_schema::schema_errors(SchemaFile::Segment, &document);
    // Without a filter (or a mapping), the schema has said so.
    let Some(who) = document.get("who").cloned() else { return Err(fail(structure)) };
    let who = parse_segment_filter(who, "who", structure).map_err(fail)?;
    // The schema requires both, as text.
    let text = |key: &str| document[key].as_str().unwrap_or_default().to_string();
    Ok(Segment { id: text("id"), name: text("name"), who })
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
