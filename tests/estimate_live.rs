//! Estimated reach live against the real broker and engine (`herald campaign estimate`,
//! `herald segment estimate`, the query channel): the estimate equals the candidates of an
//! immediate run, and the users the run sends to are the ones counted; several engine
//! instances answer one query together; an expired query is never answered.

mod common;

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use herald_engine::{
    model::{Platform, ProfileUpdate, PropertyValue, SchemaRegistry, SendCommand},
    query::{estimate::Estimate, QueryReply, QueryRequest},
};

/// Topics of one engine deployment (a unique prefix), deleted when dropped. The query topics
/// are left to the engine to create (unless a test writes a request before it starts).
struct Topics {
    prefix: String,
    app_id: String,
}

impl Topics {
    fn new(name: &str, user_partitions: i32) -> Self {
        let topics = Self {
            prefix: format!("{}-", common::unique(name)),
            app_id: common::unique(&format!("{name}-app")),
        };
        let partitions = [
            ("events", user_partitions),
            ("profiles", user_partitions),
            ("receipts", user_partitions),
            ("send-gate", user_partitions),
            ("campaigns", 1),
            ("segments", 1),
            ("campaign-flow", 2),
            ("app-throttle", 1),
            ("push", 2),
            ("stats", 1),
            ("campaign-events", 1),
            ("dead-letter", 1),
        ];
        let named: Vec<(String, i32)> =
            partitions.iter().map(|(name, n)| (topics.topic(name), *n)).collect();
        let named: Vec<(&str, i32)> = named.iter().map(|(name, n)| (name.as_str(), *n)).collect();
        common::create_topics(&named);
        topics
    }

    fn topic(&self, name: &str) -> String {
        format!("{}herald.{name}", self.prefix)
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        common::delete_topics_starting_with(&[&self.prefix, &self.app_id]);
    }
}

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_string()
}

/// A profile of app `shop` in `state`, with one device on `platform` (none: no device), opted
/// out of push or not.
fn profile(
    user: &str,
    state: &str,
    platform: Option<Platform>,
    opted_out: bool,
) -> (String, Vec<u8>) {
    let at = common::now_ms();
    let (key, bytes) = common::profile(user, platform.unwrap_or(Platform::Android), at);
    let mut update: ProfileUpdate = SchemaRegistry::builtin().decode(&bytes).unwrap();
    if platform.is_none() {
        update.devices_added.clear();
    }
    update.set.insert("state".into(), PropertyValue::String(state.into()));
    if opted_out {
        update.set.insert("push_opt_out".into(), PropertyValue::Bool(true));
    }
    (key, SchemaRegistry::builtin().encode(&update).unwrap())
}

/// `herald <command> estimate <target> --json` against the deployment: its exit status and the
/// estimate it printed.
fn ask(topics: &Topics, command: &str, target: &str, timeout: &str) -> (Output, Option<Estimate>) {
    let out = herald(&[
        command,
        "estimate",
        target,
        "--topic-prefix",
        &topics.prefix,
        "--timeout",
        timeout,
        "--json",
    ]);
    let estimate = serde_json::from_slice::<Estimate>(&out.stdout).ok();
    (out, estimate)
}

/// Asks until every partition answered about `users` users (the engine has read every profile),
/// for up to two minutes.
fn settled(topics: &Topics, command: &str, target: &str, users: u64, log: &Path) -> Estimate {
    let started = Instant::now();
    loop {
        let (out, estimate) = ask(topics, command, target, "20s");
        match estimate {
            Some(e) if out.status.success() && e.counts.scanned == users => return e,
            _ => assert!(
                started.elapsed() < Duration::from_secs(120),
                "no complete estimate over {users} users: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                common::tail(log, 30)
            ),
        }
    }
}

/// Campaign `reach` of app `shop` for users in California, run once at `at` (RFC 3339).
fn campaign(at: &str) -> String {
    format!(
        "id: reach\napp: shop\nname: Reach\nwho: {{ property: state, equals: CA }}\n\
         when: {{ schedule: {{ at: \"{at}\" }} }}\nwhat: {{ title: t, body: b }}\n"
    )
}

/// The same audience with a per-run limit of 5 and an A/B test of half the run's reach.
const LIMITED: &str = "id: limited\napp: shop\nname: Limited\n\
    who: { property: state, equals: CA }\n\
    when: { schedule: { at: \"2030-01-01T00:00:00Z\" } }\n\
    what:\n  variants: [{ title: a, body: a }, { title: b, body: b }]\n\
    \x20 ab: { test_audience: \"50%\", evaluate_after: 1h, winner_by: clicks }\n\
    limits: { per_run: 5, total: 100, safety: 1000 }\n";

#[test]
fn estimated_reach_equals_the_candidates_of_an_immediate_run() {
    let topics = Topics::new("estimate", 2);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("engine.log");
    let mut engine = common::KillOnDrop::new(common::spawn_engine(
        &topics.prefix,
        &topics.app_id,
        &dir.path().join("state"),
        &log,
    ));
    // Californians: 6 on Android and 3 on iOS (reachable), 2 without a device and 2 opted out
    // (not reachable); 5 New Yorkers on Android (not matching).
    let mut profiles = Vec::new();
    let mut reachable = BTreeSet::new();
    for i in 0..6 {
        profiles.push(profile(&format!("ca-android-{i}"), "CA", Some(Platform::Android), false));
        reachable.insert(format!("ca-android-{i}"));
    }
    for i in 0..3 {
        profiles.push(profile(&format!("ca-ios-{i}"), "CA", Some(Platform::Ios), false));
        reachable.insert(format!("ca-ios-{i}"));
    }
    for i in 0..2 {
        profiles.push(profile(&format!("ca-nodevice-{i}"), "CA", None, false));
        profiles.push(profile(&format!("ca-optout-{i}"), "CA", Some(Platform::Ios), true));
    }
    for i in 0..5 {
        profiles.push(profile(&format!("ny-{i}"), "NY", Some(Platform::Android), false));
    }
    common::produce(&topics.topic("profiles"), profiles);

    // Estimated before the campaign exists (a file never applied), at a run time of now.
    let file = write(dir.path(), "reach.yaml", &campaign("2030-01-01T00:00:00Z"));
    let estimate = settled(&topics, "campaign", &file, 18, &log);
    assert_eq!(estimate.partitions_answered, 2);
    assert!(estimate.partitions_missing.is_empty() && estimate.refused.is_empty());
    let c = &estimate.counts;
    assert_eq!((c.matched, c.reachable, c.ios, c.android), (13, 9, 3, 6), "{estimate:?}");
    assert_eq!((c.candidates, c.waiting), (9, 0), "{estimate:?}");
    assert_eq!(c.skipped.get("not_reachable"), Some(&4), "{estimate:?}");
    let limited = estimate.limited.clone().expect("a scheduled campaign's limits");
    assert_eq!((limited.candidates, limited.per_run, limited.sent), (9, 9, 9), "{limited:?}");
    assert_eq!((limited.total_left, limited.test_population), (None, None));

    // What the limits leave: 5 per run, 100 in total, half of the 5 in the test (2 variants).
    let (out, limited) = ask(&topics, "campaign", &write(dir.path(), "l.yaml", LIMITED), "20s");
    assert!(out.status.success(), "{out:?}");
    let limited = limited.unwrap().limited.unwrap();
    assert_eq!((limited.candidates, limited.per_run, limited.sent), (9, 5, 5), "{limited:?}");
    assert_eq!((limited.total_left, limited.test_population), (Some(100), Some(2)));
    assert!(!limited.safety_tripped);

    // The table, with progress on stderr.
    let out = herald(&["campaign", "estimate", &file, "--topic-prefix", &topics.prefix]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains("2 of 2 partitions answered, 18 users scanned"), "{table}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 of 2 partitions answered"));

    // The same campaign run now sends to exactly the users counted.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let file = write(dir.path(), "reach.yaml", &campaign(&now));
    let applied = herald(&["campaign", "apply", "--topic", &topics.topic("campaigns"), &file]);
    assert!(applied.status.success(), "{applied:?}");
    let registry = SchemaRegistry::builtin();
    let sent: BTreeSet<String> = common::read_committed(
        &topics.topic("push"),
        reachable.len(),
        Duration::from_secs(2),
        Duration::from_secs(90),
    )
    .iter()
    .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap().user_id)
    .collect();
    assert_eq!(sent, reachable, "{}", common::tail(&log, 30));
    assert_eq!(sent.len() as u64, c.candidates);

    common::stop_gracefully(engine.take());
}

#[test]
fn two_engine_instances_answer_one_estimate_together() {
    let topics = Topics::new("estimate-two", 4);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("engines.log");
    let mut engines: Vec<common::KillOnDrop> = ["a", "b"]
        .iter()
        .map(|instance| {
            common::KillOnDrop::new(common::spawn_engine_instance(
                &topics.prefix,
                &topics.app_id,
                instance,
                &dir.path().join(instance),
                &log,
                &[],
            ))
        })
        .collect();
    let segment = "id: vip\nname: VIPs\nwho: { property: state, equals: CA }\n";
    let applied = herald(&[
        "segment",
        "apply",
        "--topic",
        &topics.topic("segments"),
        &write(dir.path(), "vip.yaml", segment),
    ]);
    assert!(applied.status.success(), "{applied:?}");
    let mut profiles = Vec::new();
    for i in 0..40 {
        let (state, platform) =
            if i % 2 == 0 { ("CA", Platform::Ios) } else { ("NY", Platform::Ios) };
        profiles.push(profile(&format!("u{i:02}"), state, Some(platform), false));
    }
    common::produce(&topics.topic("profiles"), profiles);
    let estimate = settled(&topics, "segment", "vip", 40, &log);
    assert_eq!(estimate.partitions_answered, 4, "{estimate:?}");
    let c = &estimate.counts;
    assert_eq!((c.matched, c.reachable, c.ios, c.android), (20, 20, 20, 0), "{estimate:?}");
    assert!(estimate.limited.is_none());

    // An unknown segment is refused by every partition, said on stderr, exit 3.
    let (out, estimate) = ask(&topics, "segment", "nobody", "20s");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(estimate.unwrap().refused.len(), 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("segment nobody is not in"), "{out:?}");

    for engine in &mut engines {
        assert!(engine.running(), "{}", common::tail(&log, 30));
        common::stop_gracefully(engine.take());
    }
}

#[test]
fn an_expired_query_is_never_answered_and_a_missing_partition_is_named() {
    let topics = Topics::new("estimate-expired", 2);
    common::create_topics(&[(&topics.topic("queries"), 1)]);
    let registry = SchemaRegistry::builtin();
    // A week-old query, left in the table by a client that never deleted it.
    let week_ago = common::now_ms() - 7 * 86_400_000;
    let stale = QueryRequest {
        request_id: "q-stale".into(),
        kind: "estimate".into(),
        key: None,
        body: r#"{"target":"segment","id":"vip","at_ms":0}"#.into(),
        deadline_ms: week_ago + 60_000,
        issued_at_ms: week_ago,
    };
    common::produce(
        &topics.topic("queries"),
        [("q-stale".to_string(), registry.encode(&stale).unwrap())],
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("engine.log");

    // No engine yet: the reply topic does not exist, said plainly.
    let (out, _) = ask(&topics, "segment", "vip", "2s");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is an engine running"), "{out:?}");

    let mut engine = common::KillOnDrop::new(common::spawn_engine(
        &topics.prefix,
        &topics.app_id,
        &dir.path().join("state"),
        &log,
    ));
    let segment = "id: vip\nname: VIPs\nwho: { property: state, equals: CA }\n";
    let segments = topics.topic("segments");
    let applied = herald(&[
        "segment",
        "apply",
        "--topic",
        &segments,
        &write(dir.path(), "vip.yaml", segment),
    ]);
    assert!(applied.status.success(), "{applied:?}");
    common::produce(&topics.topic("profiles"), [profile("u1", "CA", Some(Platform::Ios), false)]);
    // A fresh query is answered by both partitions; the stale one, older, would have been
    // answered first: it never was.
    let answered = settled(&topics, "segment", "vip", 1, &log);
    assert_eq!(answered.counts.matched, 1);
    let replies: Vec<QueryReply> = common::read_committed(
        &topics.topic("query-replies"),
        1,
        Duration::from_secs(1),
        Duration::from_secs(20),
    )
    .iter()
    .filter_map(|r| r.value.as_deref().map(|v| registry.decode::<QueryReply>(v).unwrap()))
    .collect();
    assert!(replies.iter().any(|r| r.request_id != "q-stale"), "{replies:?}");
    assert!(replies.iter().all(|r| r.request_id != "q-stale"), "{replies:?}");

    // With the engine gone, nobody answers by the deadline: the partitions are named, exit 3.
    common::stop_gracefully(engine.take());
    let (out, estimate) = ask(&topics, "segment", "vip", "3s");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(estimate.unwrap().partitions_missing, [0, 1]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("partition(s) 0, 1 of"), "{stderr}");
}

/// Issue 15: hostile requests on the queries topic (undecodable, of an unknown kind, oversize)
/// go to the dead-letter topic with the reason, once each (the unknown kind is also refused by
/// each task, with a reply); a task keeps at most `MAX_PENDING`
/// requests queued and refuses the others, with a reply and a dead letter saying so.
#[test]
fn hostile_queries_are_dead_lettered_and_a_task_refuses_past_its_pending_limit() {
    use herald_engine::{
        model::DeadLetter,
        query::{QueryStatus, MAX_PENDING, MAX_REQUEST_BYTES},
    };
    let topics = Topics::new("estimate-hostile", 2);
    common::create_topics(&[(&topics.topic("queries"), 1)]);
    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    let request = |id: &str, kind: &str, body: String| QueryRequest {
        request_id: id.into(),
        kind: kind.into(),
        key: None,
        body,
        deadline_ms: now + 600_000,
        issued_at_ms: now,
    };
    let encoded = |r: &QueryRequest| (r.request_id.clone(), registry.encode(r).unwrap());
    let unknown_segment = r#"{"target":"segment","id":"none","at_ms":0}"#.to_string();
    let busy: Vec<QueryRequest> = (0..200)
        .map(|i| request(&format!("q-busy-{i:03}"), "estimate", unknown_segment.clone()))
        .collect();
    let huge = request("q-huge", "estimate", "x".repeat(MAX_REQUEST_BYTES));
    let mut records = vec![
        ("q-garbage".to_string(), b"not a request".to_vec()),
        encoded(&request("q-unknown", "drop-tables", "{}".into())),
        encoded(&huge),
    ];
    records.extend(busy.iter().map(encoded));
    // All in the table before the engine starts: its tasks see them at once.
    common::produce(&topics.topic("queries"), records);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("engine.log");
    let _engine = common::KillOnDrop::new(common::spawn_engine(
        &topics.prefix,
        &topics.app_id,
        &dir.path().join("state"),
        &log,
    ));
    let refused_per_task = busy.len() - MAX_PENDING;
    let letters: Vec<DeadLetter> = common::read_committed(
        &topics.topic("dead-letter"),
        3 + 2 * refused_per_task,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .iter()
    .map(|r| registry.decode(r.value.as_deref().unwrap()).unwrap())
    .collect();
    let reason_of = |id: &str| -> Vec<&DeadLetter> {
        letters.iter().filter(|l| l.key.as_deref() == Some(id.as_bytes())).collect()
    };
    let garbage = reason_of("q-garbage");
    assert_eq!(garbage.len(), 1, "{}", common::tail(&log, 30));
    assert!(garbage[0].reason.contains("does not decode"), "{}", garbage[0].reason);
    assert_eq!(garbage[0].source_topic, topics.topic("queries"));
    let unknown = reason_of("q-unknown");
    assert_eq!(unknown.len(), 1);
    assert!(
        unknown[0].reason.contains(r#"unknown query kind "drop-tables""#),
        "{}",
        unknown[0].reason
    );
    let oversize = reason_of("q-huge");
    assert_eq!(oversize.len(), 1);
    assert!(oversize[0].reason.contains("over the limit"), "{}", oversize[0].reason);
    assert_eq!(oversize[0].value, None);
    // Each task queued the first MAX_PENDING (in the table's order) and refused the rest.
    let refused_ids: BTreeSet<String> =
        busy[MAX_PENDING..].iter().map(|r| r.request_id.clone()).collect();
    let over: Vec<&DeadLetter> = letters.iter().filter(|l| l.reason.contains("pending")).collect();
    assert_eq!(over.len(), 2 * refused_per_task);
    let over_ids: BTreeSet<String> =
        over.iter().map(|l| String::from_utf8(l.key.clone().unwrap()).unwrap()).collect();
    assert_eq!(over_ids, refused_ids);
    let replies: Vec<QueryReply> = common::read_committed(
        &topics.topic("query-replies"),
        2 * (busy.len() + 1),
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .iter()
    .filter_map(|r| r.value.as_deref().map(|v| registry.decode::<QueryReply>(v).unwrap()))
    .collect();
    for partition in 0..2 {
        let mine: Vec<&QueryReply> = replies.iter().filter(|r| r.partition == partition).collect();
        // Every busy request, and the unknown kind refused at once.
        assert_eq!(mine.len(), busy.len() + 1, "partition {partition}");
        let unknown = mine.iter().find(|r| r.request_id == "q-unknown").expect("q-unknown");
        assert!(unknown.error.as_deref().unwrap().contains("unknown query kind"), "{unknown:?}");
        let busy_refusals: BTreeSet<String> = mine
            .iter()
            .filter(|r| r.error.as_deref().is_some_and(|e| e.contains("pending")))
            .map(|r| r.request_id.clone())
            .collect();
        assert_eq!(busy_refusals, refused_ids, "partition {partition}");
        assert!(mine.iter().all(|r| r.status == QueryStatus::Refused));
        assert!(mine.iter().all(|r| !r.request_id.starts_with("q-g") && r.request_id != "q-huge"));
    }
}
