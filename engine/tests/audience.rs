//! Audiences: saved segments and references to them, history look-back limits, one variant per
//! language.

use std::collections::HashMap;

use herald_engine::{
    campaign::{
        parse_campaign, parse_segment, Behaviour, Filter, ProfileView, Segment, MAX_HISTORY_DAYS,
    },
    model::{Device, PropertyValue},
};

fn errors_of(text: &str) -> Vec<String> {
    match parse_campaign(text, "test") {
        Ok(_) => Vec::new(),
        Err(errors) => errors.errors.iter().map(|e| format!("{}: {}", e.path, e.reason)).collect(),
    }
}

fn campaign(who: &str, what: &str) -> String {
    format!("id: c\napp: shop\nname: n\nwho: {who}\nwhen: {{ event: Signed Up }}\nwhat: {what}\n")
}

/// A profile with properties and the segments known to the engine.
struct View {
    properties: HashMap<String, PropertyValue>,
    segments: HashMap<String, Filter>,
}

impl ProfileView for View {
    fn property(&self, name: &str) -> Option<&PropertyValue> {
        self.properties.get(name)
    }
    fn devices(&self) -> &[Device] {
        &[]
    }
    fn occurrences(&self, _: &Behaviour, _: i64) -> u32 {
        0
    }
    fn first_and_last(&self, _: &Behaviour, _: i64) -> Option<(i64, i64)> {
        None
    }
    fn segment(&self, id: &str) -> Option<&Filter> {
        self.segments.get(id)
    }
}

fn vip() -> Segment {
    parse_segment(include_str!("../../segments/vip-californians.yaml"), "vip").unwrap()
}

#[test]
fn the_example_segment_parses() {
    let segment = vip();
    assert_eq!(segment.id, "vip-californians");
    assert!(matches!(segment.who, Filter::All(ref filters) if filters.len() == 2));
}

#[test]
fn invalid_segments_list_every_error_with_its_path() {
    let errors = parse_segment("id: bad id\ncolour: red\nwho: { property: x, gte: y }\n", "s")
        .unwrap_err()
        .errors;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"colour"), "{errors:?}");
    assert!(paths.contains(&"name"), "{errors:?}");
    assert!(paths.contains(&"id"), "{errors:?}");
    assert!(paths.contains(&"who.gte"), "{errors:?}");
    let nested = parse_segment("id: a\nname: a\nwho: { segment: b }\n", "s").unwrap_err().errors;
    assert_eq!(nested[0].path, "who.segment", "{nested:?}");
}

#[test]
fn a_campaign_references_segments_combined_with_inline_filters() {
    let who = "{ all: [ { segment: vip-californians }, { property: plan, equals: gold } ] }";
    let parsed = parse_campaign(&campaign(who, "{ title: t, body: b }"), "c").unwrap();
    assert_eq!(parsed.who.segments(), ["vip-californians"]);
    let several = parse_campaign(&campaign("{ segment: [a, b] }", "{ title: t, body: b }"), "c");
    assert_eq!(several.unwrap().who.segments(), ["a", "b"]);
    let empty = errors_of(&campaign("{ segment: [] }", "{ title: t, body: b }"));
    assert_eq!(empty, ["who.segment: needs at least one segment id"]);
}

#[test]
fn a_segment_reference_reads_the_segment_as_it_is_now() {
    let who = "{ all: [ { segment: vip-californians }, { property: plan, equals: gold } ] }";
    let parsed = parse_campaign(&campaign(who, "{ title: t, body: b }"), "c").unwrap();
    let text = |s: &str| PropertyValue::String(s.into());
    let properties = HashMap::from([
        ("state".to_string(), text("CA")),
        ("lifetime_value".to_string(), PropertyValue::Long(1_500)),
        ("plan".to_string(), text("gold")),
    ]);
    let mut user = View { properties, segments: HashMap::new() };
    assert!(!parsed.who.matches(&user, 0), "an unknown segment matches nobody");
    user.segments.insert("vip-californians".into(), vip().who);
    assert!(parsed.who.matches(&user, 0));
    let edited = "id: vip-californians\nname: VIP\nwho: { property: lifetime_value, gte: 2000 }\n";
    user.segments.insert("vip-californians".into(), parse_segment(edited, "e").unwrap().who);
    assert!(!parsed.who.matches(&user, 0), "the edited segment no longer holds the user");
}

#[test]
fn look_back_beyond_the_longest_history_is_rejected_with_its_path() {
    let who = format!("{{ any: [ {{ did: Opened, in_last_days: {} }} ] }}", MAX_HISTORY_DAYS + 1);
    let errors = errors_of(&campaign(&who, "{ title: t, body: b }"));
    assert_eq!(
        errors,
        ["who.any[0].in_last_days: 401 days is more than the longest history kept (400)"]
    );
    let within = format!("{{ did: Opened, in_last_days: {MAX_HISTORY_DAYS} }}");
    assert!(errors_of(&campaign(&within, "{ title: t, body: b }")).is_empty());
}

#[test]
fn choose_by_takes_one_variant_per_language_and_ab_tests_stay_at_three() {
    let languages = ["en", "fr", "de", "es", "it", "pt", "nl", "ja", "default"];
    let variants: Vec<String> =
        languages.iter().map(|id| format!("{{ id: {id}, title: t, body: b }}")).collect();
    let chosen = format!("{{ choose_by: language, variants: [{}] }}", variants.join(", "));
    let parsed = parse_campaign(&campaign("{ property: x, exists: true }", &chosen), "c").unwrap();
    assert_eq!(parsed.what.len(), languages.len());
    let alternated = format!("{{ variants: [{}] }}", variants[..4].join(", "));
    let errors = errors_of(&campaign("{ property: x, exists: true }", &alternated));
    assert_eq!(
        errors,
        ["what.variants: has 4 variants; an A/B test has at most 3 (choose_by takes one per \
          language, up to 100)"]
    );
}

#[test]
fn history_retention_is_configurable_up_to_400_days_and_checked_with_field_paths() {
    use herald_engine::settings::Settings;
    assert_eq!(Settings::parse("", "s").unwrap().history().days(), 90);
    let kept = Settings::parse("history: { retention_days: 180 }", "s").unwrap();
    assert_eq!(kept.history().days(), 180);
    let errors = Settings::parse("history: { retention_days: 401 }", "s").unwrap_err().errors;
    assert_eq!(errors[0].path, "history.retention_days", "{errors:?}");
    let who = "{ any: [ { did: Opened, in_last_days: 120 }, { not: { did: Bought } } ] }";
    let parsed = parse_campaign(&campaign(who, "{ title: t, body: b }"), "c").unwrap();
    assert_eq!(parsed.who.look_backs_beyond(90, "who"), ["who.any[0].in_last_days"]);
    assert!(parsed.who.look_backs_beyond(180, "who").is_empty());
}

#[test]
fn a_filter_reads_history_through_a_behaviour_here_or_in_a_segment_it_references() {
    let who =
        |yaml: &str| parse_campaign(&campaign(yaml, "{ title: t, body: b }"), "c").unwrap().who;
    let buyers =
        parse_segment("id: buyers\nname: b\nwho: { did: Bought, in_last_days: 7 }\n", "s").unwrap();
    let segments = HashMap::from([("buyers".to_string(), buyers.who), ("vip".into(), vip().who)]);
    let segment = |id: &str| segments.get(id);
    let reads = |yaml: &str| who(yaml).reads_history(&segment);
    assert!(reads("{ not: { did: Opened } }"));
    assert!(reads("{ any: [ { property: state, equals: CA }, { segment: buyers } ] }"));
    assert!(!reads("{ all: [ { property: state, equals: CA }, { segment: vip } ] }"));
    assert!(!reads("{ segment: unknown }"), "an unknown segment matches nobody");
}
