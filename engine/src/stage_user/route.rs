//! Partitioner-independent ingest: a record read on another task than its user's (producers
//! with another partitioner, or no key) is forwarded, decoded once and re-encoded as Herald's
//! Avro single-object, through `herald.ingest-repartition` keyed by its user, which the user
//! stage also reads. A correctly partitioned record pays only the murmur2 check.

use crate::{
    model::{
        AliasRecord, AppEvent, CodecError, IngestForward, IngestRecord, ProfileUpdate, Record,
        SchemaRegistry, UserMerge,
    },
    runtime::{ProcessError, ProcessorContext, ProcessorCounter},
};

/// Ingest records forwarded to their user's task, by kind.
pub(super) static FORWARDED: ProcessorCounter = ProcessorCounter {
    name: "ingest_forwarded_total",
    help: "Ingest records forwarded to the task of their user (read on another partition, \
           or for an id that merged into another user), by kind",
    label: "kind",
};

/// Most times one record is forwarded (repartitions plus alias links followed): a longer path
/// is a cycle of aliases, and the record is rejected instead of circling.
pub(super) const MAX_HOPS: i32 = 8;

/// A decoded record the user stage handles on the task of [`Inbound::user`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Inbound {
    /// Something a user did.
    Event(AppEvent),
    /// A change to a user's profile or devices.
    Profile(ProfileUpdate),
    /// An anonymous id identified as a known user (handled on the anonymous id's task).
    Alias(AliasRecord),
    /// What an anonymous id had, moving to the known user (handled on the known user's task).
    Merge(UserMerge),
}

impl From<IngestRecord> for Inbound {
    fn from(record: IngestRecord) -> Self {
        match record {
            IngestRecord::Event(event) => Self::Event(event),
            IngestRecord::Profile(update) => Self::Profile(update),
            IngestRecord::Alias(alias) => Self::Alias(AliasRecord {
                app_id: alias.app_id,
                anonymous_id: alias.anonymous_id,
                user_id: alias.user_id,
                timestamp_ms: alias.timestamp_ms,
            }),
        }
    }
}

impl Inbound {
    /// The user whose task handles the record.
    pub(super) fn user(&self) -> &str {
        match self {
            Self::Event(event) => &event.user_id,
            Self::Profile(update) => &update.user_id,
            Self::Alias(alias) => &alias.anonymous_id,
            Self::Merge(merge) => &merge.user_id,
        }
    }

    /// The field [`Inbound::user`] reads, for reasons.
    pub(super) fn user_field(&self) -> &'static str {
        match self {
            Self::Alias(_) => "anonymous_id",
            _ => "user_id",
        }
    }

    /// When the record happened.
    pub(super) fn timestamp_ms(&self) -> i64 {
        match self {
            Self::Event(event) => event.timestamp_ms,
            Self::Profile(update) => update.timestamp_ms,
            Self::Alias(alias) => alias.timestamp_ms,
            Self::Merge(merge) => merge.timestamp_ms,
        }
    }

    /// Label of [`FORWARDED`].
    fn kind(&self) -> &'static str {
        match self {
            Self::Event(_) => "event",
            Self::Profile(_) => "profile",
            Self::Alias(_) => "alias",
            Self::Merge(_) => "merge",
        }
    }

    /// The same record for `user` (an id merged into `user`); an alias stays with its
    /// anonymous id.
    pub(super) fn rename(&mut self, user: String) {
        match self {
            Self::Event(event) => event.user_id = user,
            Self::Profile(update) => update.user_id = user,
            Self::Merge(merge) => merge.user_id = user,
            Self::Alias(_) => {}
        }
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let registry = SchemaRegistry::builtin();
        match self {
            Self::Event(event) => registry.encode(event),
            Self::Profile(update) => registry.encode(update),
            Self::Alias(alias) => registry.encode(alias),
            Self::Merge(merge) => registry.encode(merge),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let registry = SchemaRegistry::builtin();
        let name = registry.record_name(bytes)?;
        match name {
            AppEvent::FULL_NAME => registry.decode(bytes).map(Self::Event),
            ProfileUpdate::FULL_NAME => registry.decode(bytes).map(Self::Profile),
            AliasRecord::FULL_NAME => registry.decode(bytes).map(Self::Alias),
            UserMerge::FULL_NAME => registry.decode(bytes).map(Self::Merge),
            other => Err(CodecError::WrongRecordType {
                expected: "an AppEvent, ProfileUpdate, UserAlias or UserMerge".into(),
                found: other.to_string(),
            }),
        }
    }
}

/// A forwarded record as read from the repartition topic: where it was first read, how many
/// times it was forwarded, and the record.
pub(super) struct Forwarded {
    pub(super) origin: String,
    pub(super) hops: i32,
    pub(super) record: Inbound,
}

/// Decodes a value of the repartition topic.
pub(super) fn read(value: &[u8]) -> Result<Forwarded, CodecError> {
    let forward: IngestForward = SchemaRegistry::builtin().decode(value)?;
    Ok(Forwarded {
        origin: forward.origin,
        hops: forward.hops,
        record: Inbound::decode(&forward.record)?,
    })
}

/// Sends `record` (first read at `origin`, forwarded `hops` times so far) to the task of its
/// user through `topic`. Refuses a record forwarded [`MAX_HOPS`] times.
pub(super) fn forward(
    ctx: &mut ProcessorContext<'_>,
    topic: &str,
    origin: &str,
    record: &Inbound,
    hops: i32,
) -> Result<(), ProcessError> {
    if hops >= MAX_HOPS {
        return Err(too_many_hops(record));
    }
    let bytes = record.encode().map_err(|e| ProcessError::reject(format!("forwarding: {e}")))?;
    let forward = IngestForward { origin: origin.to_string(), hops: hops + 1, record: bytes };
    ctx.send_record(topic, record.user().as_bytes(), &forward)?;
    ctx.count(&FORWARDED, record.kind());
    Ok(())
}

/// The rejection of a record that went round [`MAX_HOPS`] times.
pub(super) fn too_many_hops(record: &Inbound) -> ProcessError {
    ProcessError::reject(format!(
        "{}: {:?} was forwarded {MAX_HOPS} times (aliases that form a cycle?)",
        record.user_field(),
        record.user()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_the_canonical_encoding() {
        let alias = Inbound::Alias(AliasRecord {
            app_id: "shop".into(),
            anonymous_id: "anon-1".into(),
            user_id: "u1".into(),
            timestamp_ms: 5,
        });
        let merge = Inbound::Merge(UserMerge {
            app_id: "shop".into(),
            anonymous_id: "anon-1".into(),
            user_id: "u1".into(),
            timestamp_ms: 5,
            properties: [("plan".to_string(), crate::model::PropertyValue::String("x".into()))]
                .into(),
            devices: vec![],
            history: vec![crate::model::HistoryCount { key: "Viewed".into(), day: 3, count: 2 }],
            seen: vec![crate::model::SeenEntry {
                memory: "dedup".into(),
                id: "e-1".into(),
                first_seen_ms: 4,
            }],
        });
        for record in [alias, merge] {
            let bytes = record.encode().unwrap();
            assert_eq!(Inbound::decode(&bytes).unwrap(), record);
        }
        let receipt_like = SchemaRegistry::builtin()
            .encode(&IngestForward { origin: "t/0/1".into(), hops: 0, record: vec![] })
            .unwrap();
        assert!(Inbound::decode(&receipt_like).is_err(), "only ingest records are forwarded");
    }
}
