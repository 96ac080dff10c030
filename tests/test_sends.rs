//! Previews and test sends through `herald api`, live: simulator with a two-user population,
//! engine, sender and API on topics of their own. A preview of an iOS+Android user shows both
//! request bodies with their sizes; an over-4 KB template is flagged; a test send to a test user
//! is accepted per device, the simulator received exactly those messages, and campaign stats
//! never count them (a later real send to another user is all they show); a user who is not a
//! test user is refused.

mod common;

use std::{collections::BTreeMap, process::Command, time::Duration};

use common::{free_port, poll_until, KillOnDrop};
use herald_engine::{
    api::AuditRecord,
    campaign::test_send::TEST_USER_PROPERTY,
    model::{AppEvent, Device, Platform, ProfileUpdate, PropertyValue, SchemaRegistry},
    sim::population::member,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Offset, TopicPartitionList,
};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-test-sends-0123456789";
const READ_TOKEN: &str = "read-test-sends-0123456789";

/// Deletes the test's topics on drop.
struct Topics(String);

impl Drop for Topics {
    fn drop(&mut self) {
        common::delete_topics_starting_with(&[&self.0]);
    }
}

/// The API's answer: status and JSON body.
fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    call_as(agent, ADMIN_TOKEN, method, url, body)
}

/// The API's answer to a caller with `token`.
fn call_as(
    agent: &ureq::Agent,
    token: &str,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Authorization", format!("Bearer {token}"))
        .body(body.map(|b| b.to_string()).unwrap_or_default())
        .unwrap();
    match agent.run(request) {
        Ok(mut response) => {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (response.status().as_u16(), serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Whether the engine's consumer group (`app_id`) committed every record of `topics`: it
/// processed everything on them (a transaction's end marker lies past the last record).
fn processed(app_id: &str, topics: &[String]) -> bool {
    let consumer: BaseConsumer =
        common::kafka().client_config().set("group.id", app_id).create().unwrap();
    let mut partitions = TopicPartitionList::new();
    let mut wanted: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        for partition in metadata.topics()[0].partitions() {
            partitions.add_partition(topic, partition.id());
            wanted.insert((topic.clone(), partition.id()), 0);
        }
        for record in
            common::read_committed(topic, 0, Duration::from_secs(1), Duration::from_secs(5))
        {
            let next = wanted.get_mut(&(topic.clone(), record.partition)).unwrap();
            *next = (*next).max(record.offset + 1);
        }
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10)).unwrap();
    committed.elements().iter().all(|e| {
        let next = wanted[&(e.topic().to_string(), e.partition())];
        match e.offset() {
            Offset::Offset(at) => at >= next,
            _ => next == 0,
        }
    })
}

#[test]
fn previews_show_both_platforms_and_test_sends_reach_test_users_only_outside_stats() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let prefix = format!("{}-", common::unique("tsend"));
    let _topics = Topics(prefix.clone());
    let app_id = format!("{prefix}app");
    let topic = |name: &str| format!("{prefix}herald.{name}");
    common::apply_default_topology(&prefix);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // The closed loop: a population of two (user-0 on iOS, user-1 on Android) who view and
    // click everything, engine, sender, API.
    let sim_listen = format!("127.0.0.1:{}", free_port());
    let sim_dir = path("sim");
    let sim_args = ["--population", "2", "--view-rate", "1.0", "--click-rate", "A=1.0"];
    let sim_dir_arg = sim_dir.to_str().unwrap();
    let mut args = vec!["sim", "--listen", &sim_listen, "--dir", sim_dir_arg];
    args.extend(sim_args);
    args.extend(["--topic-prefix", &prefix]);
    let _sim = common::spawn_herald(&args, &path("sim.log"));
    assert!(
        poll_until(Duration::from_secs(120), || std::fs::read_to_string(path("sim.log"))
            .unwrap_or_default()
            .contains("simulator serving")),
        "simulator not up\n{}",
        common::tail(&path("sim.log"), 20)
    );
    let _engine = KillOnDrop::new(common::spawn_engine_instance(
        &prefix,
        &app_id,
        "a",
        &path("engine-state"),
        &path("engine.log"),
        &[],
    ));
    let senders = path("senders.yaml");
    std::fs::write(&senders, common::sim_senders_config(&sim_dir, &sim_listen)).unwrap();
    let group = format!("{prefix}senders");
    let sender_state = path("sender-state");
    let _sender = common::spawn_herald(
        &[
            "send",
            "--config",
            senders.to_str().unwrap(),
            "--topic-prefix",
            &prefix,
            "--group",
            &group,
            "--instance-id",
            "a",
            "--state-dir",
            sender_state.to_str().unwrap(),
        ],
        &path("sender.log"),
    );
    let tokens = path("tokens");
    std::fs::write(&tokens, format!("admin ops {ADMIN_TOKEN}\nread viewer {READ_TOKEN}\n"))
        .unwrap();
    let api_listen = format!("127.0.0.1:{}", free_port());
    let _api = common::spawn_herald(
        &["api", "--listen", &api_listen, "--tokens", tokens.to_str().unwrap(), "--topic-prefix"]
            .into_iter()
            .chain([prefix.as_str()])
            .collect::<Vec<_>>(),
        &path("api.log"),
    );
    let logs = || {
        ["sim", "engine", "sender", "api"]
            .iter()
            .map(|name| format!("--- {name}\n{}", common::tail(&path(&format!("{name}.log")), 15)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into();
    let api = |method: &str, route: &str, body: Option<Value>| {
        call(&agent, method, &format!("http://{api_listen}/api/v1{route}"), body)
    };
    assert!(
        poll_until(Duration::from_secs(90), || api("GET", "/campaigns", None).0 == 200),
        "the API did not answer\n{}",
        logs()
    );

    // user-0 becomes a test user with a second device, on Android.
    let (_, ios) = member(0);
    let android = Device {
        device_id: "device-0-android".into(),
        platform: Platform::Android,
        token: "tok-user-0-android".into(),
        ..ios.clone()
    };
    let update = ProfileUpdate {
        app_id: "shop".into(),
        user_id: "user-0".into(),
        timestamp_ms: common::now_ms(),
        set: [(TEST_USER_PROPERTY.to_string(), PropertyValue::Bool(true))].into(),
        unset: vec![],
        devices_added: vec![android.clone()],
        tokens_removed: vec![],
    };
    // After the population's own profiles (a later update of the same user).
    assert!(
        poll_until(Duration::from_secs(120), || common::end_offsets(&topic("profiles")) >= 2),
        "the population published no profiles\n{}",
        logs()
    );
    common::produce(
        &topic("profiles"),
        [("user-0".to_string(), SchemaRegistry::builtin().encode(&update).unwrap())],
    );

    let campaign = |id: &str, body: &str| {
        json!({
            "id": id, "app": "shop", "name": id, "when": { "event": "Ping" },
            "what": { "title": "Hi {{ profile.first_name }}", "body": body },
        })
    };
    for (id, body) in [("sale", "Sale today".to_string()), ("big", "x".repeat(5_000))] {
        let (status, answer) = api("POST", "/campaigns", Some(campaign(id, &body)));
        assert_eq!(status, 201, "{answer}");
    }

    // The preview: both devices' exact bodies, from the engine's profile of user-0.
    let mut preview = Value::Null;
    assert!(
        poll_until(Duration::from_secs(120), || {
            preview = api("GET", "/campaigns/sale/preview?user=user-0", None).1;
            preview["variants"][0]["requests"]
                .as_array()
                .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["device_id"].is_string()))
        }),
        "no preview with both devices: {preview}\n{}",
        logs()
    );
    let variant = &preview["variants"][0];
    assert_eq!(variant["texts"]["title"], "Hi User0");
    let requests = variant["requests"].as_array().unwrap();
    // Each device's request (the profile keeps devices in the order they were registered).
    let request =
        |device: &str| -> &Value { requests.iter().find(|r| r["device_id"] == device).unwrap() };
    let body = |device: &str| -> Value {
        serde_json::from_str(request(device)["payload"].as_str().unwrap()).unwrap()
    };
    assert_eq!(request("device-0")["platform"], "IOS");
    assert_eq!(
        body("device-0")["aps"]["alert"],
        json!({"title": "Hi User0", "body": "Sale today"})
    );
    assert_eq!(request("device-0")["headers"]["apns-push-type"], "alert");
    assert_eq!(request("device-0-android")["platform"], "ANDROID");
    assert_eq!(body("device-0-android")["message"]["token"], "tok-user-0-android");
    // A read token sees the same preview with every device token masked.
    let url = format!("http://{api_listen}/api/v1/campaigns/sale/preview?user=user-0");
    let (status, masked) = call_as(&agent, READ_TOKEN, "GET", &url, None);
    assert_eq!(status, 200, "{masked}");
    let text = masked.to_string();
    assert!(!text.contains("tok-user-0"), "{masked}");
    assert!(text.contains(&"*".repeat("tok-user-0-android".len())), "{masked}");
    assert_eq!(body("device-0-android")["message"]["notification"]["title"], "Hi User0");
    for request in requests {
        let bytes = request["payload"].as_str().unwrap().len();
        assert_eq!(request["bytes"], bytes);
        assert!(bytes <= 4096 && request["limit"] == 4096 && request["error"].is_null());
    }
    // Over 4 KB: flagged on both platforms, with the size, and no body.
    let big = api("GET", "/campaigns/big/preview?user=user-0", None).1;
    let big_requests = big["variants"][0]["requests"].as_array().unwrap();
    assert_eq!(big_requests.len(), 2, "{big}");
    for request in big_requests {
        assert!(request["bytes"].as_u64().unwrap() > 5_000, "{request}");
        assert!(request["payload"].is_null(), "{request}");
        assert!(request["error"].as_str().unwrap().ends_with("the limit is 4096"), "{request}");
    }

    // user-1 is not a test user: refused, naming it.
    let (status, refused) = api("POST", "/campaigns/sale/test", Some(json!({"users": ["user-1"]})));
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["errors"][0]["field"], "users[0]");
    assert!(refused["error"].as_str().unwrap().contains("user-1 is not a test user"), "{refused}");

    // The test send (the user named twice, sent to once): accepted on both devices, each with
    // its own message id.
    let users = json!({"users": ["user-0", "user-0"]});
    let (status, sent) = api("POST", "/campaigns/sale/test", Some(users));
    assert_eq!(status, 200, "{sent}\n{}", logs());
    let results = sent["results"].as_array().unwrap();
    let mut devices: Vec<(&str, &str)> = results
        .iter()
        .map(|r| (r["device_id"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    devices.sort();
    assert_eq!(devices, [("device-0", "accepted"), ("device-0-android", "accepted")], "{sent}");
    assert_eq!(sent["pending"], 0);
    let id_of = |device: &str| -> String {
        let result = results.iter().find(|r| r["device_id"] == device).unwrap();
        result["message_id"].as_str().unwrap().to_string()
    };
    let ids = [id_of("device-0"), id_of("device-0-android")];
    assert_ne!(ids[0], ids[1]);

    // The simulator received exactly those, one per device.
    let sim_origin = format!("https://{sim_listen}");
    let ca = sim_dir.join("sim-ca.pem");
    let received = |token: &str| -> Vec<String> {
        let device = runtime
            .block_on(herald_engine::sim::fetch_json(
                &sim_origin,
                &ca,
                &format!("/sim/devices/{token}"),
            ))
            .unwrap();
        device["messages"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().into()).collect()
    };
    assert_eq!(received(&ios.token), [ids[0].clone()]);
    assert_eq!(received(&android.token), [ids[1].clone()]);

    // user-0's device viewed and clicked it; once the engine processed those events, the
    // receipts and the campaign flow, a real send to user-1 is all the stats show.
    let engagements_of_the_test = || {
        common::read_committed(&topic("events"), 0, Duration::from_secs(1), Duration::from_secs(5))
            .iter()
            .filter_map(|r| SchemaRegistry::builtin().decode::<AppEvent>(r.value.as_ref()?).ok())
            .filter(|e| {
                e.properties.get("message_id") == Some(&PropertyValue::String(ids[0].clone()))
            })
            .count()
    };
    assert!(
        poll_until(Duration::from_secs(60), || engagements_of_the_test() == 2),
        "the population did not view and click the test send\n{}",
        logs()
    );
    let inputs = [topic("events"), topic("receipts"), topic("campaign-flow")];
    assert!(
        poll_until(Duration::from_secs(60), || processed(&app_id, &inputs)),
        "the engine did not process the test send's receipts and events\n{}",
        logs()
    );
    let ping = AppEvent {
        event_id: "ping-user-1".into(),
        app_id: "shop".into(),
        user_id: "user-1".into(),
        name: "Ping".into(),
        timestamp_ms: common::now_ms(),
        properties: Default::default(),
        sdk_version: None,
    };
    common::produce(
        &topic("events"),
        [("user-1".to_string(), SchemaRegistry::builtin().encode(&ping).unwrap())],
    );
    let expected = json!({"sent": 1, "delivered": 1, "impressions": 1, "clicks": 1});
    let mut stats = Value::Null;
    assert!(
        poll_until(Duration::from_secs(90), || {
            stats = api("GET", "/campaigns/sale/stats", None).1;
            let a = &stats["variants"][0];
            ["sent", "delivered", "impressions", "clicks"].iter().all(|k| a[k] == expected[k])
        }),
        "stats should count user-1's send only, expected {expected}: {stats}\n{}",
        logs()
    );

    // Both test-send requests are on the audit topic: refused (422), and sent (200) with every
    // message id it sent.
    let audited: Vec<AuditRecord> =
        common::read_committed(&topic("audit"), 0, Duration::from_secs(1), Duration::from_secs(5))
            .iter()
            .filter_map(|r| SchemaRegistry::builtin().decode::<AuditRecord>(r.value.as_ref()?).ok())
            .filter(|a| a.action == "POST /api/v1/campaigns/{id}/test")
            .collect();
    let outcomes: Vec<(Option<&str>, i32)> =
        audited.iter().map(|a| (a.target.as_deref(), a.status)).collect();
    assert_eq!(outcomes, [(Some("sale"), 422), (Some("sale"), 200)]);
    let details: Vec<(&str, &str)> =
        audited[1].details.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut expected_details = vec![
        (ids[0].as_str(), "user-0 A device-0 accepted"),
        (ids[1].as_str(), "user-0 A device-0-android accepted"),
    ];
    expected_details.sort();
    assert_eq!(details, expected_details);

    // The CLI: the same preview, refusal and test send.
    let herald = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .args(["--topic-prefix", &prefix])
            .env("HERALD_BROKERS", common::kafka().brokers)
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code(), text(&output.stdout), text(&output.stderr))
    };
    let (code, out, _) = herald(&["campaign", "preview", "sale", "--user", "user-0"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("title: Hi User0") && out.contains("Ios device-0: "), "{out}");
    assert!(out.contains("Android device-0-android: "), "{out}");
    let (code, out, _) = herald(&["campaign", "preview", "big", "--user", "user-0"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("NOT SENT: apns payload is"), "{out}");
    let (code, _, err) = herald(&["campaign", "test-send", "sale", "--user", "user-1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("user user-1 is not a test user"), "{err}");
    let (code, out, err) = herald(&["campaign", "test-send", "sale", "--user", "user-0"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches(" Accepted ").count(), 2, "{out}");
    assert_eq!(received(&android.token).len(), 2, "the API's test send and the CLI's");
    let cli_audit = |r: &common::Consumed| -> Option<AuditRecord> {
        let record: AuditRecord = SchemaRegistry::builtin().decode(r.value.as_ref()?).ok()?;
        (record.action == "herald campaign test-send").then_some(record)
    };
    let audited: Vec<AuditRecord> =
        common::read_committed(&topic("audit"), 0, Duration::from_secs(1), Duration::from_secs(5))
            .iter()
            .filter_map(cli_audit)
            .collect();
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!((audited[0].role.as_str(), audited[0].target.as_deref()), ("cli", Some("sale")));
    assert_eq!(audited[0].details.len(), 2, "{audited:?}");
}
