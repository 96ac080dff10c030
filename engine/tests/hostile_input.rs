//! Property tests: random and hostile bytes, JSON and YAML fed to every decoder (Avro
//! single-object records of every type, ingest JSON, campaign definitions, app settings,
//! templates) never panic; out-of-range values are refused with the field named.

use apache_avro::rabin::Rabin;
use herald_engine::{
    campaign::parse_campaign, model::*, render::MessageTemplate, settings::Settings,
};
use proptest::prelude::*;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() }
}

/// Decodes `bytes` as every record type; the results are not asserted, only that none panics.
fn decode_as_every_type(bytes: &[u8]) {
    let registry = SchemaRegistry::builtin();
    let _ = registry.decode_value(bytes);
    macro_rules! decode {
        ($($record:ty),*) => {$(let _ = registry.decode::<$record>(bytes);)*};
    }
    decode!(
        AppEvent,
        ProfileUpdate,
        CampaignEnvelope,
        CampaignLifecycleEvent,
        Candidate,
        Engagement,
        SendCommand,
        Receipt,
        CampaignStats,
        Skip,
        RunTally,
        DeadLetter
    );
    for format in [IngestFormat::Avro, IngestFormat::Json, IngestFormat::Segment] {
        let decoder = ingest_decoder(format);
        let _ = decoder.decode_ingest(IngestKind::Events, bytes);
        let _ = decoder.decode_ingest(IngestKind::Profiles, bytes);
    }
}

/// A decoder reading both ingest topics in `format` (app `a` where the format needs one).
fn ingest_decoder(format: IngestFormat) -> IngestDecoder {
    let mut config = IngestConfig::uniform(format);
    config.events.app = Some("a".into());
    config.profiles.app = Some("a".into());
    IngestDecoder::from_config(&config).unwrap()
}

/// The single-object header of every current schema.
fn headers() -> Vec<Vec<u8>> {
    let registry = SchemaRegistry::builtin();
    registry
        .record_names()
        .into_iter()
        .map(|name| {
            let schema = registry.current_schema(name).unwrap();
            let mut header = vec![0xC3, 0x01];
            header.extend_from_slice(&schema.fingerprint::<Rabin>().bytes[..8]);
            header
        })
        .collect()
}

/// Valid encodings of a few records, to mutate.
fn samples() -> Vec<Vec<u8>> {
    let registry = SchemaRegistry::builtin();
    let event = AppEvent {
        event_id: "e".into(),
        app_id: "shop".into(),
        user_id: "u".into(),
        name: "Ping".into(),
        timestamp_ms: 1_764_000_000_000,
        properties: [("n".to_string(), PropertyValue::Long(3))].into(),
        sdk_version: None,
    };
    let update = ProfileUpdate {
        app_id: "shop".into(),
        user_id: "u".into(),
        timestamp_ms: 1_764_000_000_000,
        set: [("name".to_string(), PropertyValue::String("Ana".into()))].into(),
        unset: vec!["x".into()],
        devices_added: vec![],
        tokens_removed: vec!["t".into()],
    };
    let receipt = Receipt {
        message_id: "m".into(),
        campaign_id: "c".into(),
        variant_id: "A".into(),
        app_id: "shop".into(),
        user_id: "u".into(),
        device_id: "d".into(),
        token: "t".into(),
        status: ReceiptStatus::Failed,
        reason: Some("unregistered".into()),
        provider_id: None,
        latency_ms: Some(3),
        timestamp_ms: 1_764_000_000_000,
        provider_reason: Some("Unregistered".into()),
    };
    vec![
        registry.encode(&event).unwrap(),
        registry.encode(&update).unwrap(),
        registry.encode(&receipt).unwrap(),
    ]
}

/// A campaign using most features, as JSON, whose leaves the tests replace with hostile values.
fn campaign() -> Value {
    json!({
        "id": "c1", "app": "shop", "name": "n",
        "who": {"all": [
            {"property": "age", "between": [18, 65]},
            {"did": "Opened", "at_least": 2, "at_most": 5, "in_last_days": 30},
            {"property": "signup", "within_last_days": 7},
            {"near": [{"lat": 48.8, "lon": 2.3, "radius_km": 5}]}
        ]},
        "when": {"event": "Added To Cart", "unless": {"event": "Charged", "within": "10m"},
                 "start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"},
        "what": {
            "variants": [
                {"title": "Hi {{ profile.first_name | default: 'you' }}", "body": "b",
                 "push": {"ttl": "1h", "badge": 1}},
                {"title": "{% for i in (1..3) %}{{ i }}{% endfor %}", "body": "b"}
            ],
            "ab": {"test_audience": "10%", "evaluate_after": "1h"}
        },
        "limits": {"total": 1000, "daily": 100},
        "options": {"throttle": {"max": 10, "per": "1m"}, "sample_percent": 50,
                    "conversion": {"event": "Charged", "within": "1d"},
                    "dnd": {"start": "22:00", "end": "08:00"}}
    })
}

/// Paths (JSON pointers) of the leaves of `value`.
fn leaves(value: &Value, path: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| leaves(v, format!("{path}/{k}"), out)),
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, v)| leaves(v, format!("{path}/{i}"), out))
        }
        _ => out.push(path),
    }
}

/// Values an attacker or a typo might put anywhere.
fn hostile_value() -> impl Strategy<Value = Value> {
    let texts = prop::sample::select(vec![
        "9999999999999d",
        "-9999999999999d",
        "99999999999999999999ms",
        "3661d",
        "-1s",
        "0s",
        "NaN%",
        "inf%",
        "1e308%",
        "-5%",
        "{% for i in (1..99999999999) %}x{% endfor %}",
        "{% for i in (1..event.n) %}x{% endfor %}",
        "{{ event.x | slice: -9223372036854775808, 9223372036854775807 }}",
        "{{ event.x | truncate: -9223372036854775808 }}",
        "{{ 9223372036854775807 | plus: 1 }}",
        "{{ -9223372036854775808 | minus: 1 | abs }}",
        "{{ 1 | divided_by: 0 }}",
        "{{ 1 | modulo: 0 }}",
        "{{ -9223372036854775808 | divided_by: -1 }}",
        "{{ 'x' | date: '%Y' }}",
        "99:99",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "",
    ])
    .prop_map(|t| json!(t));
    prop_oneof![
        texts,
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1e308)),
        Just(json!(null)),
        Just(json!([])),
        Just(json!({})),
        "\\PC{0,40}".prop_map(|t| json!(t)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_decode_to_errors_not_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        decode_as_every_type(&bytes);
    }

    #[test]
    fn random_datums_behind_every_valid_header_decode_to_errors_not_panics(
        which in any::<prop::sample::Index>(),
        datum in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let headers = headers();
        let mut bytes = headers[which.index(headers.len())].clone();
        bytes.extend_from_slice(&datum);
        decode_as_every_type(&bytes);
    }

    #[test]
    fn mutated_valid_records_decode_to_errors_not_panics(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let samples = samples();
        let mut bytes = samples[which.index(samples.len())].clone();
        for (at, byte) in edits {
            let at = 2 + at.index(bytes.len() - 2);
            bytes[at] = byte;
        }
        decode_as_every_type(&bytes);
        bytes.truncate(cut.index(bytes.len() + 1));
        decode_as_every_type(&bytes);
    }

    #[test]
    fn random_json_is_refused_or_checked_by_the_ingest_decoder(text in "\\PC{0,200}", ts in any::<i64>()) {
        decode_as_every_type(text.as_bytes());
        let event = json!({"event_id": "e", "app_id": "a", "user_id": "u", "name": "n",
                           "timestamp_ms": ts, "properties": {"x": text}});
        let decoded = ingest_decoder(IngestFormat::Json)
            .decode_ingest(IngestKind::Events, event.to_string().as_bytes());
        prop_assert_eq!(decoded.is_ok(), (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ts));
    }

    #[test]
    fn an_avro_record_with_any_timestamp_decodes_only_when_the_time_is_sane(ts in any::<i64>()) {
        let registry = SchemaRegistry::builtin();
        let update = ProfileUpdate {
            app_id: "a".into(),
            user_id: "u".into(),
            timestamp_ms: ts,
            set: Properties::new(),
            unset: vec![],
            devices_added: vec![],
            tokens_removed: vec![],
        };
        let decoded = registry.decode::<ProfileUpdate>(&registry.encode(&update).unwrap());
        match decoded {
            Ok(back) => prop_assert!((MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&back.timestamp_ms)),
            Err(error) => {
                let text = error.to_string();
                prop_assert!(text.contains("timestamp_ms") && text.contains("outside"), "{}", text);
            }
        }
    }

    #[test]
    fn random_text_as_a_campaign_or_settings_file_is_an_error_not_a_panic(text in "\\PC{0,300}") {
        let _ = parse_campaign(&text, "random.yaml");
        let _ = Settings::parse(&text, "random.yaml");
    }

    #[test]
    fn a_campaign_with_a_hostile_value_anywhere_validates_without_panic(
        which in any::<prop::sample::Index>(),
        value in hostile_value(),
        as_yaml in any::<bool>(),
    ) {
        let mut document = campaign();
        let mut paths = Vec::new();
        leaves(&document, String::new(), &mut paths);
        let path = &paths[which.index(paths.len())];
        *document.pointer_mut(path).unwrap() = value;
        let text = if as_yaml {
            serde_norway::to_string(&document).unwrap()
        } else {
            document.to_string()
        };
        if let Ok(campaign) = parse_campaign(&text, "hostile.yaml") {
            // Whatever validates renders within its budget, for any profile.
            for message in &campaign.what {
                for source in [&message.title, &message.body] {
                    let template = MessageTemplate::compile(source).unwrap();
                    let event: Properties = [("x".to_string(), PropertyValue::String("é".repeat(50))),
                        ("n".to_string(), PropertyValue::Long(i64::MAX))].into();
                    let _ = template.render(&Properties::new(), &event, false);
                }
            }
        }
    }

    #[test]
    fn hostile_app_settings_are_errors_with_a_field_path_not_panics(
        field in prop::sample::select(vec!["per_day", "per_week", "min_gap", "timezone", "max", "per"]),
        value in hostile_value(),
    ) {
        let mut app = json!({"caps": {"per_day": 2, "per_week": 5}, "min_gap": "1h",
                             "timezone": "Europe/Paris", "throttle": {"max": 10, "per": "1m"}});
        let slot = match field {
            "per_day" | "per_week" => &mut app["caps"][field],
            "max" | "per" => &mut app["throttle"][field],
            other => &mut app[other],
        };
        *slot = value;
        let text = serde_norway::to_string(&json!({"apps": {"shop": app}})).unwrap();
        if let Err(errors) = Settings::parse(&text, "apps.yaml") {
            prop_assert!(errors.errors.iter().all(|e| e.path.starts_with("apps.shop")), "{}", errors);
        }
    }

    #[test]
    fn random_templates_compile_and_render_without_panic(source in "[{}%a-z .|:'()0-9-]{0,60}") {
        if let Ok(template) = MessageTemplate::compile(&source) {
            let _ = template.render(&Properties::new(), &Properties::new(), true);
        }
    }
}

#[test]
fn a_yaml_alias_bomb_or_deep_nesting_is_an_error_not_a_hang() {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        bomb.push_str(&format!("{name}: &{name} [*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous}]\n"));
    }
    let errors = parse_campaign(&bomb, "bomb.yaml").unwrap_err();
    assert_eq!(errors.errors[0].path, "(document)", "{errors}");
    assert!(Settings::parse(&bomb, "bomb.yaml").is_err());
    let deep = format!("who: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_campaign(&deep, "deep.yaml").is_err());
    assert!(Settings::parse(&deep, "deep.yaml").is_err());
}
