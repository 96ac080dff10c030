//! The examples of `docs/ingest.md` (files under `examples/ingest/`, quoted verbatim in the
//! doc): each format's settings load, and its records decode to the same Herald records.
//! Confluent-format records are decoded against a real registry in `tests/ingest_formats.rs`.

use std::path::Path;

use herald_engine::{
    model::{
        AppEvent, IngestConfig, IngestDecoder, IngestKind, IngestRecord, Platform, ProfileUpdate,
        PropertyValue, UserAlias, SCREEN_EVENT,
    },
    topology::TopologyFile,
};

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ingest").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `[ingest]` settings of an example, loaded as the engine loads them (in a topology file).
fn decoder(name: &str) -> IngestDecoder {
    let topic = "[[topic]]\nname = \"t\"\npartitions = 1\ncleanup_policy = \"delete\"\n";
    let file = TopologyFile::parse(&format!("{}\n{topic}", example(name)), name).unwrap();
    IngestDecoder::from_config(&file.ingest).unwrap()
}

fn decode(decoder: &IngestDecoder, kind: IngestKind, lines: &str) -> Vec<IngestRecord> {
    lines
        .lines()
        .flat_map(|line| {
            decoder.decode_ingest(kind, line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"))
        })
        .collect()
}

/// The event every example describes.
fn added_to_cart() -> AppEvent {
    AppEvent {
        event_id: "e-1".into(),
        app_id: "shop".into(),
        user_id: "u1".into(),
        name: "Added To Cart".into(),
        timestamp_ms: 1_795_773_600_000,
        properties: [
            ("item".to_string(), PropertyValue::String("tea".into())),
            ("price".to_string(), PropertyValue::Double(12.5)),
        ]
        .into(),
        sdk_version: None,
    }
}

fn profile(records: &[IngestRecord]) -> &ProfileUpdate {
    match records {
        [IngestRecord::Profile(update), ..] => update,
        other => panic!("not a profile first: {other:?}"),
    }
}

#[test]
fn herald_json_example() {
    let decoder = decoder("json.toml");
    let events = decode(&decoder, IngestKind::Events, &example("json-events.jsonl"));
    assert_eq!(events, [IngestRecord::Event(added_to_cart())]);
    let profiles = decode(&decoder, IngestKind::Profiles, &example("json-profiles.jsonl"));
    let update = profile(&profiles);
    assert_eq!((update.user_id.as_str(), update.timestamp_ms), ("u1", 1_795_773_000_000));
    assert_eq!(update.set["first_name"], PropertyValue::String("Ana".into()));
    assert_eq!(update.devices_added[0].token, "a1b2c3");
}

#[test]
fn segment_example() {
    let records = decode(&decoder("segment.toml"), IngestKind::Events, &example("segment.jsonl"));
    let [IngestRecord::Profile(update), IngestRecord::Alias(identified), IngestRecord::Event(track), IngestRecord::Event(screen), IngestRecord::Alias(alias)] =
        records.as_slice()
    else {
        panic!("{records:#?}")
    };
    assert_eq!((update.user_id.as_str(), update.timestamp_ms), ("u1", 1_795_773_000_000));
    assert_eq!(update.set["address.city"], PropertyValue::String("Paris".into()));
    let device = &update.devices_added[0];
    assert_eq!(
        (device.device_id.as_str(), device.platform, device.token.as_str()),
        ("d1", Platform::Ios, "a1b2c3")
    );
    assert_eq!(device.os_version.as_deref(), Some("18.1"));
    assert_eq!(
        *identified,
        UserAlias {
            app_id: "shop".into(),
            anonymous_id: "anon-7".into(),
            user_id: "u1".into(),
            timestamp_ms: 1_795_773_000_000
        }
    );
    assert_eq!(*track, added_to_cart());
    assert_eq!(
        (screen.name.as_str(), &screen.properties["name"]),
        (SCREEN_EVENT, &PropertyValue::String("Checkout".into()))
    );
    assert_eq!((alias.anonymous_id.as_str(), alias.user_id.as_str()), ("anon-9", "u1"));
}

#[test]
fn mapping_example() {
    let decoder = decoder("mapping.toml");
    let events = decode(&decoder, IngestKind::Events, &example("mapping-events.jsonl"));
    assert_eq!(events, [IngestRecord::Event(added_to_cart())]);
    let profiles = decode(&decoder, IngestKind::Profiles, &example("mapping-profiles.jsonl"));
    let update = profile(&profiles);
    assert_eq!((update.user_id.as_str(), update.timestamp_ms), ("u1", 1_795_773_000_000));
    assert_eq!(update.devices_added[0].platform, Platform::Ios);
}

#[test]
fn confluent_example_loads() {
    let file = TopologyFile::parse(
        &format!(
            "{}\n[[topic]]\nname = \"t\"\npartitions = 1\ncleanup_policy = \"delete\"\n",
            example("confluent.toml")
        ),
        "confluent.toml",
    )
    .unwrap();
    let config: &IngestConfig = &file.ingest;
    assert!(config.registry.url.is_some());
    IngestDecoder::from_config(config).unwrap();
}

#[test]
fn the_doc_quotes_every_example() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ingest.md"))
            .unwrap();
    for name in [
        "json.toml",
        "json-events.jsonl",
        "json-profiles.jsonl",
        "confluent.toml",
        "segment.toml",
        "segment.jsonl",
        "mapping.toml",
        "mapping-events.jsonl",
        "mapping-profiles.jsonl",
    ] {
        assert!(
            doc.contains(example(name).trim()),
            "docs/ingest.md does not quote examples/ingest/{name}"
        );
    }
}
