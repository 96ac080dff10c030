//! Every schema round-trips; old writer versions resolve to the current reader; bad bytes give
//! typed errors, never panics.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use herald_engine::model::*;

fn registry() -> &'static SchemaRegistry {
    SchemaRegistry::builtin()
}

fn props(pairs: &[(&str, PropertyValue)]) -> Properties {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn device() -> Device {
    Device {
        device_id: "dev-1".into(),
        platform: Platform::Ios,
        token: "a1b2c3".into(),
        app_version: Some("5.2.0".into()),
        os_version: None,
        make: Some("Apple".into()),
        model: Some("iPhone15,2".into()),
        sdk_version: None,
    }
}

fn round_trip<T: Record + PartialEq + std::fmt::Debug>(record: T) {
    let bytes = registry().encode(&record).expect("encode");
    assert_eq!(&bytes[..2], &[0xC3, 0x01], "single-object marker");
    let back: T = registry().decode(&bytes).expect("decode");
    assert_eq!(back, record);
}

#[test]
fn app_event_round_trips_with_unicode_and_every_property_type() {
    round_trip(AppEvent {
        event_id: "e-1".into(),
        app_id: "shop".into(),
        user_id: "ユーザー-42".into(),
        name: "Added To Cart 🛒".into(),
        timestamp_ms: 1_764_000_000_000,
        properties: props(&[
            ("item", PropertyValue::String("Crème brûlée 🍮".into())),
            ("price", PropertyValue::Double(4.5)),
            ("quantity", PropertyValue::Long(2)),
            ("gift", PropertyValue::Bool(false)),
            ("coupon", PropertyValue::Null),
        ]),
        sdk_version: Some("ios-3.1".into()),
    });
}

#[test]
fn records_with_empty_maps_and_lists_round_trip() {
    round_trip(AppEvent {
        event_id: String::new(),
        app_id: "a".into(),
        user_id: "u".into(),
        name: "Opened".into(),
        timestamp_ms: 0,
        properties: Properties::new(),
        sdk_version: None,
    });
    round_trip(ProfileUpdate {
        app_id: "a".into(),
        user_id: "u".into(),
        timestamp_ms: 1,
        set: Properties::new(),
        unset: vec![],
        devices_added: vec![],
        tokens_removed: vec![],
    });
    round_trip(CampaignStats {
        campaign_id: "c".into(),
        app_id: "a".into(),
        as_of_ms: 5,
        variants: vec![],
        skipped: BTreeMap::new(),
        failed: [("Unregistered".to_string(), 3)].into(),
    });
}

#[test]
fn profile_update_round_trips() {
    round_trip(ProfileUpdate {
        app_id: "shop".into(),
        user_id: "u-1".into(),
        timestamp_ms: 10,
        set: props(&[
            ("city", PropertyValue::String("São Paulo".into())),
            ("lat", PropertyValue::Double(-23.55)),
        ]),
        unset: vec!["nickname".into()],
        devices_added: vec![device(), Device { platform: Platform::Android, ..device() }],
        tokens_removed: vec!["dead-token".into()],
    });
}

#[test]
fn campaign_records_round_trip() {
    round_trip(CampaignEnvelope {
        campaign_id: "cart-reminder".into(),
        app_id: "shop".into(),
        command: CampaignCommand::Define,
        definition: Some(r#"{"name":"Panier oublié ✨"}"#.into()),
        revision: 3,
        issued_at_ms: 99,
        issued_by: None,
    });
    round_trip(CampaignEnvelope {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        command: CampaignCommand::Stop,
        definition: None,
        revision: 0,
        issued_at_ms: 100,
        issued_by: Some("ops@example.com".into()),
    });
    round_trip(CampaignLifecycleEvent {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        kind: LifecycleKind::WinnerDeclared,
        run_id: Some("r1".into()),
        timestamp_ms: 7,
        details: [("winner".to_string(), "B".to_string()), ("p_value".into(), "0.01".into())]
            .into(),
    });
    round_trip(Candidate {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        run_id: "trigger".into(),
        user_id: "u".into(),
        qualified_at_ms: 8,
        trigger_event: Some("Added To Cart".into()),
        event_properties: props(&[("sku", PropertyValue::String("X-1".into()))]),
        profile: props(&[("first_name", PropertyValue::String("Zoë".into()))]),
        devices: vec![device()],
        timezone: Some("Europe/Paris".into()),
        language: Some("fr".into()),
        source: Some(SourcePartition { partition: 2, partitions: 4 }),
    });
    round_trip(Engagement {
        campaign_id: "c".into(),
        variant_id: Some("A".into()),
        user_id: "u".into(),
        message_id: Some("m".into()),
        kind: EngagementKind::Conversion,
        timestamp_ms: 9,
        value: Some(19.99),
        reason: Some("Unregistered".into()),
    });
    round_trip(CampaignStats {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        as_of_ms: 11,
        variants: vec![VariantStats {
            variant_id: "A".into(),
            sent: 10,
            clicks: 2,
            ..Default::default()
        }],
        skipped: [("dnd".to_string(), 4)].into(),
        failed: [("Unregistered".to_string(), 3)].into(),
    });
}

#[test]
fn delivery_records_round_trip() {
    round_trip(SendCommand {
        message_id: "m-1".into(),
        campaign_id: "c".into(),
        variant_id: "A".into(),
        run_id: "r".into(),
        app_id: "shop".into(),
        user_id: "u".into(),
        device_id: "d".into(),
        platform: Platform::Android,
        token: "fcm-token".into(),
        payload: r#"{"message":{"notification":{"title":"Hé 👋"}}}"#.into(),
        headers: BTreeMap::new(),
        created_at_ms: 12,
        expires_at_ms: Some(13),
        confirm: true,
        place_key: Some("c\u{1f}01".into()),
    });
    round_trip(Receipt {
        message_id: "m-1".into(),
        campaign_id: "c".into(),
        variant_id: "A".into(),
        app_id: "shop".into(),
        user_id: "u".into(),
        device_id: "d".into(),
        token: "t".into(),
        status: ReceiptStatus::TokenInvalid,
        reason: Some("unregistered".into()),
        provider_id: None,
        latency_ms: Some(35),
        timestamp_ms: 14,
        provider_reason: Some("Unregistered".into()),
    });
    round_trip(DeadLetter {
        source_topic: "herald.events".into(),
        source_partition: 3,
        source_offset: 1234,
        key: Some(b"u-1".to_vec()),
        value: Some(vec![0, 159, 146, 150, 255]),
        reason: "not an Avro single-object record".into(),
        stage: "user".into(),
        timestamp_ms: 15,
    });
}

#[test]
fn skip_round_trips() {
    round_trip(Skip {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        user_id: "u".into(),
        reason: "capped_daily".into(),
        timestamp_ms: 16,
        variant_id: Some("B".into()),
        returns_place: true,
        run_id: Some("trigger:e-1".into()),
    });
    round_trip(SendConfirmed {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        user_id: "u".into(),
        run_id: "run-1764237600000".into(),
        timestamp_ms: 17,
    });
}

#[test]
fn run_tally_round_trips() {
    round_trip(RunTally {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        run_id: "run-1764237600000".into(),
        partition: 2,
        partitions: 4,
        qualified: 2_500,
        timestamp_ms: 17,
        shards: 8,
    });
}

#[test]
fn shard_records_round_trip() {
    round_trip(ShardReport {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        shard: 3,
        shards: 4,
        kind: ShardReportKind::Counters,
        run_id: None,
        qualified: 0,
        reachable: 0,
        sent: 0,
        run_sent: 0,
        waiting: 0,
        places: 0,
        variants: vec![VariantStats {
            variant_id: "a".into(),
            sent: 5,
            clicks: 2,
            ..Default::default()
        }],
        skipped: BTreeMap::from([("dnd".to_string(), 1)]),
        failed: BTreeMap::new(),
        day_sent: 3,
        timestamp_ms: 17,
        seq: 0,
    });
    round_trip(ShardPlan {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        run_id: "run-1764237600000".into(),
        shard: 1,
        kind: ShardPlanKind::Release,
        places: 1_250,
        test_from: 750,
        test_users: 750,
        test_total: 3_000,
        winner_id: None,
        limit: None,
        daily: Some(30),
        timestamp_ms: 17,
    });
}

/// A lease report written before lease reports were numbered (`shard_report.v4`, no `seq`)
/// still reads, unnumbered (`seq` 0).
#[test]
fn a_shard_report_written_before_seq_decodes_unnumbered() {
    let v4 =
        apache_avro::Schema::parse_str(include_str!("../../schemas/history/shard_report.v4.avsc"))
            .unwrap();
    let report = ShardReport {
        campaign_id: "c".into(),
        app_id: "shop".into(),
        shard: 1,
        shards: 4,
        kind: ShardReportKind::Returned,
        run_id: Some("2026-11-29".into()),
        qualified: 0,
        reachable: 0,
        sent: 7,
        run_sent: 7,
        waiting: 2,
        places: 5,
        variants: vec![],
        skipped: BTreeMap::new(),
        failed: BTreeMap::new(),
        day_sent: 3,
        timestamp_ms: 17,
        seq: 0,
    };
    let Value::Record(fields) = apache_avro::to_value(&report).unwrap() else { panic!() };
    let value = Value::Record(fields.into_iter().filter(|(name, _)| name != "seq").collect());
    let value = value.resolve(&v4).unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&v4.fingerprint::<apache_avro::rabin::Rabin>().bytes[..8]);
    bytes.extend(apache_avro::to_avro_datum(&v4, value).unwrap());
    let back: ShardReport = registry().decode(&bytes).expect("v4 resolves to the current");
    assert_eq!(back, report);
}

#[test]
fn ingest_repartition_records_round_trip() {
    round_trip(IngestForward {
        origin: "herald.events/3/42".into(),
        hops: 1,
        record: vec![0xc3, 1, 7],
    });
    round_trip(AliasRecord {
        app_id: "shop".into(),
        anonymous_id: "anon-1".into(),
        user_id: "u-1".into(),
        timestamp_ms: 18,
    });
    round_trip(UserMerge {
        app_id: "shop".into(),
        anonymous_id: "anon-1".into(),
        user_id: "u-1".into(),
        timestamp_ms: 19,
        properties: [("plan".to_string(), PropertyValue::String("pro".into()))].into(),
        devices: vec![Device {
            device_id: "d".into(),
            platform: Platform::Ios,
            token: "t".into(),
            app_version: None,
            os_version: Some("18".into()),
            make: None,
            model: None,
            sdk_version: None,
        }],
        history: vec![HistoryCount { key: "Viewed Product".into(), day: 20_418, count: 3 }],
        seen: vec![
            SeenEntry { memory: "dedup".into(), id: "e-9".into(), first_seen_ms: 17 },
            SeenEntry {
                memory: "occurrences".into(),
                id: "welcome\0trigger:e-9".into(),
                first_seen_ms: 18,
            },
        ],
    });
}

#[test]
fn audit_records_round_trip_with_and_without_a_target() {
    let refused = herald_engine::api::AuditRecord {
        timestamp_ms: 1_795_000_000_000,
        actor: "ops-bot".into(),
        role: "read".into(),
        action: "POST /api/v1/campaigns/{id}/pause".into(),
        target: Some("spring-sale".into()),
        status: 403,
        error: Some("this token may only read".into()),
        details: Default::default(),
    };
    round_trip(refused.clone());
    round_trip(herald_engine::api::AuditRecord {
        target: None,
        status: 200,
        error: None,
        role: "admin".into(),
        details: [("m-1".to_string(), "u1 A d1 accepted".to_string())].into(),
        ..refused
    });
}

#[test]
fn query_request_and_reply_round_trip() {
    use herald_engine::query::{QueryReply, QueryRequest, QueryStatus};
    let request = QueryRequest {
        request_id: "q-1".into(),
        kind: "estimate".into(),
        key: None,
        body: r#"{"target":"segment","id":"vip","at_ms":1700000000000}"#.into(),
        deadline_ms: 1_700_000_030_000,
        issued_at_ms: 1_700_000_000_000,
    };
    round_trip(request.clone());
    round_trip(QueryRequest { key: Some("u-7".into()), ..request });
    let done = QueryReply {
        request_id: "q-1".into(),
        partition: 3,
        partitions: 8,
        status: QueryStatus::Done,
        scanned: 12_345,
        body: Some(r#"{"matched":10}"#.into()),
        error: None,
        timestamp_ms: 1_700_000_001_000,
        signature: Some("00ff".into()),
    };
    round_trip(done.clone());
    round_trip(QueryReply {
        status: QueryStatus::Refused,
        body: None,
        error: Some("unknown query kind".into()),
        ..done
    });
}

#[test]
fn every_current_schema_has_a_rust_type_that_round_trips() {
    // Guards against a schema added under schemas/ without a record type and test above.
    assert_eq!(
        registry().record_names(),
        vec![
            "io.herald.AppEvent",
            "io.herald.AuditRecord",
            "io.herald.CampaignEnvelope",
            "io.herald.CampaignLifecycleEvent",
            "io.herald.CampaignStats",
            "io.herald.Candidate",
            "io.herald.DeadLetter",
            "io.herald.Engagement",
            "io.herald.IngestForward",
            "io.herald.ProfileUpdate",
            "io.herald.QueryReply",
            "io.herald.QueryRequest",
            "io.herald.Receipt",
            "io.herald.RunTally",
            "io.herald.SendCommand",
            "io.herald.SendConfirmed",
            "io.herald.ShardPlan",
            "io.herald.ShardReport",
            "io.herald.Skip",
            "io.herald.UserAlias",
            "io.herald.UserMerge",
        ]
    );
}

/// Encodes an app event with the version-1 schema kept under `schemas/history/`.
fn app_event_v1_bytes() -> Vec<u8> {
    let v1 =
        apache_avro::Schema::parse_str(include_str!("../../schemas/history/app_event.v1.avsc"))
            .unwrap();
    let fingerprint = v1.fingerprint::<apache_avro::rabin::Rabin>().bytes;
    let value = Value::Record(vec![
        ("event_id".into(), Value::String("e-old".into())),
        ("app_id".into(), Value::String("shop".into())),
        ("user_id".into(), Value::String("u-7".into())),
        ("name".into(), Value::String("Purchased".into())),
        ("timestamp_ms".into(), Value::Long(42)),
        (
            "properties".into(),
            Value::Map(
                [("total".to_string(), Value::Union(3, Box::new(Value::Double(9.5))))].into(),
            ),
        ),
    ]);
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&fingerprint);
    bytes.extend(apache_avro::to_avro_datum(&v1, value).unwrap());
    bytes
}

#[test]
fn record_written_with_older_schema_decodes_with_defaults_filled() {
    let event: AppEvent = registry().decode(&app_event_v1_bytes()).expect("v1 resolves to v2");
    assert_eq!(event.user_id, "u-7");
    assert_eq!(event.properties["total"], PropertyValue::Double(9.5));
    assert_eq!(event.sdk_version, None, "field added in v2 takes its default");
}

#[test]
fn a_receipt_written_before_provider_reason_decodes_without_one() {
    let v1 = apache_avro::Schema::parse_str(include_str!("../../schemas/history/receipt.v1.avsc"))
        .unwrap();
    let text = |s: &str| Value::String(s.into());
    let value = Value::Record(vec![
        ("message_id".into(), text("m-old")),
        ("campaign_id".into(), text("c")),
        ("variant_id".into(), text("A")),
        ("app_id".into(), text("shop")),
        ("user_id".into(), text("u")),
        ("device_id".into(), text("d")),
        ("token".into(), text("t")),
        ("status".into(), Value::Enum(1, "FAILED".into())),
        ("reason".into(), Value::Union(1, Box::new(text("PayloadTooLarge")))),
        ("provider_id".into(), Value::Union(0, Box::new(Value::Null))),
        ("latency_ms".into(), Value::Union(0, Box::new(Value::Null))),
        ("timestamp_ms".into(), Value::Long(14)),
    ]);
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&v1.fingerprint::<apache_avro::rabin::Rabin>().bytes[..8]);
    bytes.extend(apache_avro::to_avro_datum(&v1, value).unwrap());
    let receipt: Receipt = registry().decode(&bytes).expect("v1 resolves to v2");
    assert_eq!(
        (receipt.message_id.as_str(), receipt.reason.as_deref(), receipt.provider_reason),
        ("m-old", Some("PayloadTooLarge"), None)
    );
}

#[test]
fn a_timestamp_outside_1970_to_9999_is_refused_at_decode_naming_the_field() {
    let event = |timestamp_ms| AppEvent {
        event_id: "e".into(),
        app_id: "a".into(),
        user_id: "u".into(),
        name: "n".into(),
        timestamp_ms,
        properties: Properties::new(),
        sdk_version: None,
    };
    for ts in [i64::MIN, -1, MAX_TIMESTAMP_MS + 1, i64::MAX] {
        let bytes = registry().encode(&event(ts)).unwrap();
        let err = registry().decode::<AppEvent>(&bytes).unwrap_err();
        assert!(
            matches!(&err, CodecError::Invalid { field, .. } if field == "timestamp_ms"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("invalid io.herald.AppEvent: timestamp_ms: {ts} is outside")),
            "{err}"
        );
        let json = serde_json::to_vec(&event(ts)).unwrap();
        let err = json_decoder().decode_ingest(IngestKind::Events, &json).unwrap_err();
        assert!(
            matches!(&err, IngestError::Invalid(CodecError::Invalid { field, .. }) if field == "timestamp_ms"),
            "{err:?}"
        );
    }
    let bytes = registry().encode(&event(MAX_TIMESTAMP_MS)).unwrap();
    assert_eq!(registry().decode::<AppEvent>(&bytes).unwrap().timestamp_ms, MAX_TIMESTAMP_MS);
}

#[test]
fn unknown_fingerprint_is_a_typed_error() {
    let mut bytes = app_event_v1_bytes();
    bytes[2..10].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]);
    let err = registry().decode::<AppEvent>(&bytes).unwrap_err();
    assert!(matches!(err, CodecError::UnknownFingerprint(_)), "{err:?}");
    assert_eq!(err.to_string(), "unknown writer schema fingerprint deadbeef00000001");
}

#[test]
fn wrong_record_type_is_a_typed_error() {
    let err = registry().decode::<Receipt>(&app_event_v1_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected a io.herald.Receipt record, found a io.herald.AppEvent record"
    );
}

#[test]
fn corrupt_bytes_are_typed_errors_never_panics() {
    let good = app_event_v1_bytes();
    // Every truncation of a valid record.
    for len in 0..good.len() {
        let result = registry().decode::<AppEvent>(&good[..len]);
        assert!(result.is_err(), "truncated to {len} bytes decoded");
    }
    // Trailing garbage.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"xx");
    let err = registry().decode::<AppEvent>(&trailing).unwrap_err();
    assert!(err.to_string().contains("2 trailing bytes"), "{err}");
    // Random datum bytes behind a valid header: deterministic pseudo-random sequence.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..2_000 {
        let mut bytes = good[..10].to_vec();
        let len = (state % 64) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push(state as u8);
        }
        let _ = registry().decode::<AppEvent>(&bytes); // must return, Ok or Err, not panic
    }
    let err = registry().decode::<AppEvent>(b"{\"user_id\":\"u\"}").unwrap_err();
    assert!(matches!(err, CodecError::NotSingleObject { .. }), "{err:?}");
}

#[test]
fn huge_length_prefix_is_refused_not_allocated() {
    // A map block count of ~2^62 right after the strings: must fail cleanly.
    let mut bytes = app_event_v1_bytes()[..10].to_vec();
    for s in ["e", "a", "u", "n"] {
        bytes.push(2); // zig-zag length 1
        bytes.extend_from_slice(s.as_bytes());
    }
    bytes.push(0); // timestamp 0
    bytes.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(registry().decode::<AppEvent>(&bytes).is_err());
}

#[test]
fn ingest_accepts_json_only_when_switched_on() {
    let json = br#"{"event_id":"e","app_id":"a","user_id":"u","name":"Opened","timestamp_ms":5,
                    "properties":{"n":3,"s":"x"}}"#;
    let event = |decoder: &IngestDecoder, bytes: &[u8]| -> Result<AppEvent, IngestError> {
        match decoder.decode_ingest(IngestKind::Events, bytes)?.as_slice() {
            [IngestRecord::Event(event)] => Ok(event.clone()),
            other => panic!("not one event: {other:?}"),
        }
    };
    let strict = IngestDecoder::default();
    assert!(matches!(
        event(&strict, json),
        Err(IngestError::Invalid(CodecError::NotSingleObject { .. }))
    ));

    let lenient = json_decoder();
    let decoded = event(&lenient, json).unwrap();
    assert_eq!(decoded.properties["n"], PropertyValue::Long(3));
    assert_eq!(decoded.sdk_version, None);
    // Avro still decodes on a JSON-enabled topic.
    let avro = event(&lenient, &app_event_v1_bytes()).unwrap();
    assert_eq!(avro.event_id, "e-old");
    // Bad JSON names the record and the position.
    let err = event(&lenient, br#"{"event_id": 5}"#).unwrap_err().to_string();
    assert!(err.starts_with("invalid JSON io.herald.AppEvent:") && err.contains("column"), "{err}");
}

/// A decoder reading Herald JSON (and Avro) on both ingest topics.
fn json_decoder() -> IngestDecoder {
    IngestDecoder::from_config(&IngestConfig::uniform(IngestFormat::Json)).unwrap()
}

#[test]
fn scheduled_run_ids_carry_their_time() {
    let id = scheduled_run_id(1_764_237_600_000);
    assert_eq!(scheduled_run_time(&id), Some(1_764_237_600_000));
    assert_eq!(scheduled_run_time(TRIGGERED_RUN), None, "live triggers are not a scheduled run");
}

#[test]
fn a_candidate_written_before_its_source_partition_decodes_without_one() {
    let v1 =
        apache_avro::Schema::parse_str(include_str!("../../schemas/history/candidate.v1.avsc"))
            .unwrap();
    let text = |s: &str| Value::String(s.into());
    let none = || Value::Union(0, Box::new(Value::Null));
    let value = Value::Record(vec![
        ("campaign_id".into(), text("c")),
        ("app_id".into(), text("shop")),
        ("run_id".into(), text("trigger")),
        ("user_id".into(), text("u-old")),
        ("qualified_at_ms".into(), Value::Long(15)),
        ("trigger_event".into(), none()),
        ("event_properties".into(), Value::Map(Default::default())),
        ("profile".into(), Value::Map(Default::default())),
        ("devices".into(), Value::Array(vec![])),
        ("timezone".into(), none()),
        ("language".into(), none()),
    ]);
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&v1.fingerprint::<apache_avro::rabin::Rabin>().bytes[..8]);
    bytes.extend(apache_avro::to_avro_datum(&v1, value).unwrap());
    let candidate: Candidate = registry().decode(&bytes).expect("v1 resolves to v2");
    assert_eq!((candidate.user_id.as_str(), candidate.source), ("u-old", None));
}

#[test]
fn a_user_merge_written_before_the_ids_seen_decodes_without_any() {
    let v1 =
        apache_avro::Schema::parse_str(include_str!("../../schemas/history/user_merge.v1.avsc"))
            .unwrap();
    let text = |s: &str| Value::String(s.into());
    let count = Value::Record(vec![
        ("key".into(), text("Viewed")),
        ("day".into(), Value::Long(20_418)),
        ("count".into(), Value::Int(2)),
    ]);
    let value = Value::Record(vec![
        ("app_id".into(), text("shop")),
        ("anonymous_id".into(), text("anon-old")),
        ("user_id".into(), text("u-old")),
        ("timestamp_ms".into(), Value::Long(15)),
        ("properties".into(), Value::Map(Default::default())),
        ("devices".into(), Value::Array(vec![])),
        ("history".into(), Value::Array(vec![count])),
    ]);
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&v1.fingerprint::<apache_avro::rabin::Rabin>().bytes[..8]);
    bytes.extend(apache_avro::to_avro_datum(&v1, value).unwrap());
    let merge: UserMerge = registry().decode(&bytes).expect("v1 resolves to v2");
    assert_eq!((merge.user_id.as_str(), merge.history.len()), ("u-old", 1));
    assert_eq!(merge.seen, vec![], "field added in v2 takes its default");
}
