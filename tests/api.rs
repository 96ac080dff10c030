//! The admin API (`herald api`) against the real broker: auth and roles, campaigns through their
//! whole lifecycle with the CLI's validation, stats from `herald.stats`, the audit topic, limits
//! on bodies and requests, the OpenAPI document.

mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{create_topics, delete_topics_starting_with, kafka, now_ms, unique, KillOnDrop};
use herald_engine::{
    api::AuditRecord,
    model::{CampaignStats, SchemaRegistry, VariantStats},
};
use serde_json::{json, Value};

const READ_TOKEN: &str = "read-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-0123456789abcdef";

/// A running `herald api` on topics of its own, killed and its topics deleted on drop.
struct Api {
    prefix: String,
    origin: String,
    agent: ureq::Agent,
    _process: KillOnDrop,
    dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            delete_topics_starting_with(&[&self.prefix]);
        } else {
            eprintln!("--- api log\n{}", common::tail(&self.dir.path().join("api.log"), 30));
        }
    }
}

/// The answer to a request: status and body as JSON (null if not JSON).
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

impl Api {
    /// Creates the topics under a fresh prefix and starts the API with `extra` arguments.
    fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_with_env(name, extra, &[])
    }

    /// [`Api::start`], with environment variables `env` set for the API.
    fn start_with_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let prefix = format!("{}-", unique(name));
        let topic = |t: &str| format!("{prefix}herald.{t}");
        let names =
            ["campaigns", "stats", "campaign-events", "dead-letter", "push", "receipts", "audit"]
                .map(topic);
        create_topics(&names.iter().map(|n| (n.as_str(), 2)).collect::<Vec<_>>());
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("# role name token\nread viewer {READ_TOKEN}\nadmin ops {ADMIN_TOKEN}\n"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("api.log")).unwrap();
        let process = KillOnDrop::new(
            Command::new(env!("CARGO_BIN_EXE_herald"))
                .args(["api", "--listen", &listen, "--topic-prefix", &prefix, "--tokens"])
                .arg(&tokens)
                .args(extra)
                .envs(env.iter().copied())
                .env("HERALD_BROKERS", kafka().brokers)
                .env("RUST_LOG", "info,librdkafka=warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let api =
            Self { prefix, origin: format!("http://{listen}"), agent, _process: process, dir };
        let started = Instant::now();
        while api.request("GET", "/openapi.json", None, None).status != 200 {
            assert!(started.elapsed() < Duration::from_secs(60), "the API did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        api
    }

    fn topic(&self, name: &str) -> String {
        format!("{}herald.{name}", self.prefix)
    }

    /// Creates the rest of an engine's topics (2 partitions, as the API's; one for the app
    /// throttle) and starts an engine instance on them with `extra` arguments and `env` (e.g.
    /// the query key it signs its replies with); killed on drop. Returns it and its log.
    fn start_engine(&self, extra: &[&str], env: &[(&str, &str)]) -> (KillOnDrop, PathBuf) {
        let names =
            ["events", "profiles", "send-gate", "campaign-flow", "queries", "query-replies"]
                .map(|t| self.topic(t));
        let mut topics: Vec<(&str, i32)> = names.iter().map(|t| (t.as_str(), 2)).collect();
        let throttle = self.topic("app-throttle");
        topics.push((&throttle, 1));
        create_topics(&topics);
        let log = self.dir.path().join("engine.log");
        let state = self.dir.path().join("engine-state");
        let app_id = format!("{}app", self.prefix);
        let engine = common::engine_command(&self.prefix, &app_id, "a", &state, &log, extra)
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        (KillOnDrop::new(engine), log)
    }

    /// The devices of the first variant of the preview of `campaign` for `user`, once the
    /// engine answers it (polled), or a failure showing the engine's `log`.
    fn previewed_devices(&self, campaign: &str, user: &str, log: &std::path::Path) -> Vec<String> {
        let path = format!("/api/v1/campaigns/{campaign}/preview?user={user}");
        let mut answer = self.admin("GET", &path, None);
        let rendered = poll_until(Duration::from_secs(90), || {
            answer = self.admin("GET", &path, None);
            answer.status == 200
        });
        assert!(rendered, "{}\n{}", answer.body, common::tail(log, 30));
        answer.body["variants"][0]["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["device_id"].as_str().map(str::to_string))
            .collect()
    }

    /// `method path` with `token` and `body`; a refused connection counts as status 0.
    fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
        let url = format!("{}{path}", self.origin);
        let request = ureq::http::Request::builder().method(method).uri(&url);
        let request = match token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        };
        let result = self.agent.run(request.body(body.unwrap_or("").to_string()).unwrap());
        let Ok(mut response) = result else {
            return Answer { status: 0, body: Value::Null, retry_after: None };
        };
        let retry_after =
            response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Answer {
            status: response.status().as_u16(),
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            retry_after,
        }
    }

    fn read(&self, path: &str) -> Answer {
        self.request("GET", path, Some(READ_TOKEN), None)
    }

    fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.request(method, path, Some(ADMIN_TOKEN), body)
    }

    /// The field paths of `answer`, a 422 to the definition `text`, checked to be among those
    /// `herald <command> validate` prints for the same file.
    fn paths_as_the_cli_has_them(&self, command: &str, text: &str, answer: &Answer) -> Vec<String> {
        assert_eq!(answer.status, 422, "{}", answer.body);
        let fields: Vec<String> = answer.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_string())
            .collect();
        let file = self.dir.path().join(format!("{command}.yaml"));
        std::fs::write(&file, text).unwrap();
        let cli = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([command, "validate"])
            .arg(&file)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&cli.stdout);
        for field in &fields {
            assert!(printed.contains(&format!("  {field}: ")), "{field} not in {printed}");
        }
        fields
    }
}

/// A valid campaign definition `id`, as JSON.
fn campaign(id: &str, title: &str) -> String {
    json!({
        "id": id,
        "app": "shop",
        "name": format!("Campaign {id}"),
        "when": { "event": "App Opened" },
        "what": { "title": title, "body": "Hello {{ profile.first_name | default: 'there' }}" },
    })
    .to_string()
}

/// Polls `condition` every 100 ms until it holds or `limit` passes.
fn poll_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    condition()
}

/// Every audit record on `topic`.
fn audit_records(topic: &str, expected: usize) -> Vec<AuditRecord> {
    common::read_committed(topic, expected, Duration::from_millis(500), Duration::from_secs(30))
        .into_iter()
        .map(|r| SchemaRegistry::builtin().decode(&r.value.unwrap()).unwrap())
        .collect()
}

#[test]
fn requests_without_a_valid_token_get_401_and_read_tokens_get_403_on_admin_routes() {
    let api = Api::start("api-auth", &[]);
    let created = api.admin("POST", "/api/v1/campaigns", Some(&campaign("secret-sale", "t")));
    assert_eq!(created.status, 201, "{}", created.body);
    for token in [None, Some("wrong-0123456789abcdef"), Some(""), Some(&READ_TOKEN[1..])] {
        for (method, path) in [
            ("GET", "/api/v1/campaigns"),
            ("GET", "/api/v1/campaigns/secret-sale"),
            ("GET", "/api/v1/campaigns/nothing-here"),
            ("GET", "/api/v1/campaigns/secret-sale/stats"),
            ("POST", "/api/v1/campaigns/secret-sale/pause"),
        ] {
            let answer = api.request(method, path, token, None);
            assert_eq!(answer.status, 401, "{method} {path} with {token:?}");
            assert_eq!(answer.body, json!({ "error": "unauthorized" }), "{method} {path}");
        }
    }
    let listed = api.read("/api/v1/campaigns");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body[0]["id"], "secret-sale");
    assert_eq!(listed.body[0]["status"], "active");

    let refused =
        api.request("POST", "/api/v1/campaigns/secret-sale/pause", Some(READ_TOKEN), None);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(api.read("/api/v1/campaigns/secret-sale").body["status"], "active");
    // The refusal is audited with who tried.
    let records = audit_records(&api.topic("audit"), 2);
    let tried: Vec<_> = records.iter().map(|r| (&*r.actor, &*r.role, r.status)).collect();
    assert_eq!(tried, [("ops", "admin", 201), ("viewer", "read", 403)]);
}

#[test]
fn campaigns_are_created_updated_paused_resumed_and_stopped_and_every_action_is_audited() {
    let api = Api::start("api-life", &[]);
    let before = now_ms();
    let created = api.admin("POST", "/api/v1/campaigns", Some(&campaign("spring", "Spring")));
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["definition"]["what"]["title"], "Spring");
    assert_eq!(created.body["updated_by"], "ops");
    let again = api.admin("POST", "/api/v1/campaigns", Some(&campaign("spring", "Spring")));
    assert_eq!(again.status, 409, "{}", again.body);

    // YAML is accepted too, as by `herald campaign apply`.
    let yaml = "id: spring\napp: shop\nname: Spring sale\nwhen: { event: App Opened }\n\
                what: { title: Spring is here, body: Hi }\n";
    let updated = api.admin("PUT", "/api/v1/campaigns/spring", Some(yaml));
    assert_eq!(updated.status, 200, "{}", updated.body);
    let got = api.read("/api/v1/campaigns/spring");
    assert_eq!(got.body["name"], "Spring sale");
    assert_eq!(got.body["definition"]["what"]["title"], "Spring is here");

    for (action, status) in [("pause", "paused"), ("resume", "active"), ("stop", "stopped")] {
        let answer = api.admin("POST", &format!("/api/v1/campaigns/spring/{action}"), None);
        assert_eq!(answer.status, 200, "{action}: {}", answer.body);
        assert_eq!(answer.body["status"], status, "{action}");
        assert_eq!(api.read("/api/v1/campaigns").body[0]["status"], status, "{action}");
    }
    let after_stop = api.admin("POST", "/api/v1/campaigns/spring/resume", None);
    assert_eq!(after_stop.status, 409);
    assert_eq!(
        after_stop.body["error"],
        "campaign spring is stopped; apply its definition again to restart it"
    );
    let missing = api.admin("POST", "/api/v1/campaigns/autumn/pause", None);
    assert_eq!(missing.status, 404);

    // What reached the campaigns topic is what the engine reads.
    let envelopes: Vec<herald_engine::model::CampaignEnvelope> = common::read_committed(
        &api.topic("campaigns"),
        5,
        Duration::from_millis(300),
        Duration::from_secs(30),
    )
    .into_iter()
    .map(|r| SchemaRegistry::builtin().decode(&r.value.unwrap()).unwrap())
    .collect();
    let commands: Vec<_> = envelopes.iter().map(|e| format!("{:?}", e.command)).collect();
    assert_eq!(commands, ["Define", "Define", "Pause", "Resume", "Stop"]);
    assert!(envelopes.iter().all(|e| e.issued_by.as_deref() == Some("ops")));

    let records = audit_records(&api.topic("audit"), 9);
    let actions: Vec<_> = records
        .iter()
        .map(|r| (r.action.as_str(), r.target.as_deref(), r.status, r.error.is_some()))
        .collect();
    assert_eq!(
        actions,
        [
            ("POST /api/v1/campaigns", None, 201, false),
            ("POST /api/v1/campaigns", None, 409, true),
            ("PUT /api/v1/campaigns/{id}", Some("spring"), 200, false),
            ("POST /api/v1/campaigns/{id}/pause", Some("spring"), 200, false),
            ("POST /api/v1/campaigns/{id}/resume", Some("spring"), 200, false),
            ("POST /api/v1/campaigns/{id}/stop", Some("spring"), 200, false),
            ("POST /api/v1/campaigns/{id}/resume", Some("spring"), 409, true),
            ("POST /api/v1/campaigns/{id}/pause", Some("autumn"), 404, true),
        ]
    );
    assert!(records.iter().all(|r| r.actor == "ops" && r.timestamp_ms >= before));
}

#[test]
fn invalid_definitions_get_422_with_every_field_path_and_oversize_bodies_413() {
    let api = Api::start("api-invalid", &["--body-limit", "4096"]);
    let invalid = json!({
        "id": "bad",
        "app": "shop",
        "name": "Bad",
        "when": { "event": "App Opened", "unless": { "event": "Purchase", "within": "ten minutes" } },
        "what": { "title": "Hi", "body": "{{ profile.name " },
    })
    .to_string();
    let answer = api.admin("POST", "/api/v1/campaigns", Some(&invalid));
    let fields = api.paths_as_the_cli_has_them("campaign", &invalid, &answer);
    assert!(fields.iter().any(|f| f == "when.unless.within"), "{}", answer.body);
    assert!(fields.iter().any(|f| f.starts_with("what.body")), "{}", answer.body);
    assert_eq!(answer.body["field"], fields[0]);

    let not_yaml = api.admin("POST", "/api/v1/campaigns", Some("id: [unclosed"));
    assert_eq!((not_yaml.status, not_yaml.body["field"].as_str()), (422, Some("(document)")));
    let other_id = api.admin("POST", "/api/v1/campaigns", Some(&campaign("one", "t")));
    assert_eq!(other_id.status, 201);
    let mismatch = api.admin("PUT", "/api/v1/campaigns/one", Some(&campaign("two", "t")));
    assert_eq!((mismatch.status, mismatch.body["field"].as_str()), (422, Some("id")));

    let oversize = campaign("big", &"x".repeat(5000));
    let answer = api.admin("POST", "/api/v1/campaigns", Some(&oversize));
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(answer.body["error"], "request body over 4096 bytes");
    assert_eq!(api.read("/api/v1/campaigns/big").status, 404);
}

#[test]
fn stats_per_variant_follow_the_stats_topic() {
    let api = Api::start("api-stats", &[]);
    assert_eq!(api.admin("POST", "/api/v1/campaigns", Some(&campaign("ab", "t"))).status, 201);
    let empty = api.read("/api/v1/campaigns/ab/stats");
    assert_eq!(empty.status, 200);
    assert_eq!(
        (empty.body["as_of_ms"].clone(), empty.body["qualified"].clone()),
        (Value::Null, json!(0))
    );
    assert_eq!(api.read("/api/v1/campaigns/zz/stats").status, 404);

    let snapshot = |sent_a: i64, at: i64| CampaignStats {
        campaign_id: "ab".into(),
        app_id: "shop".into(),
        as_of_ms: at,
        variants: vec![
            VariantStats {
                variant_id: "a".into(),
                qualified: sent_a + 2,
                sent: sent_a,
                delivered: sent_a - 1,
                clicks: 3,
                ..Default::default()
            },
            VariantStats {
                variant_id: "b".into(),
                sent: 10,
                delivered: 10,
                impressions: 7,
                ..Default::default()
            },
        ],
        skipped: [("capped_daily".to_string(), 4)].into(),
        failed: [("unregistered".to_string(), 1)].into(),
    };
    let produce = |stats: &CampaignStats| {
        common::produce(
            &api.topic("stats"),
            [("ab".to_string(), SchemaRegistry::builtin().encode(stats).unwrap())],
        )
    };
    let at = now_ms();
    produce(&snapshot(20, at));
    assert!(poll_until(Duration::from_secs(30), || api.read("/api/v1/campaigns/ab/stats").body
        ["as_of_ms"]
        == at));
    produce(&snapshot(25, at + 1));
    assert!(poll_until(Duration::from_secs(30), || api.read("/api/v1/campaigns/ab/stats").body
        ["as_of_ms"]
        == at + 1));
    let stats = api.read("/api/v1/campaigns/ab/stats").body;
    assert_eq!(stats["qualified"], 25 + 10 + 4);
    assert_eq!(
        stats["variants"][0],
        json!({ "variant_id": "a", "qualified": 27, "sent": 25, "delivered": 24,
        "failed": 0, "impressions": 0, "clicks": 3, "conversions": 0 })
    );
    assert_eq!(stats["variants"][1]["impressions"], 7);
    assert_eq!(stats["skipped"], json!({ "capped_daily": 4 }));
    assert_eq!(stats["failed"], json!({ "unregistered": 1 }));
}

#[test]
fn each_token_is_rate_limited_on_its_own() {
    let api = Api::start("api-rate", &["--rate-burst", "5", "--rate-per-second", "0.01"]);
    let statuses: Vec<u16> = (0..7).map(|_| api.read("/api/v1/campaigns").status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let limited = api.read("/api/v1/campaigns");
    assert!(limited.retry_after.is_some());
    assert_eq!(limited.body["error"], "too many requests");
    assert_eq!(api.admin("GET", "/api/v1/campaigns", None).status, 200);
}

#[test]
fn the_openapi_document_lists_every_route_and_the_schemas_are_served() {
    let api = Api::start("api-openapi", &[]);
    let document = api.request("GET", "/openapi.json", None, None).body;
    assert_eq!(document["info"]["title"], "Herald admin API");
    let paths: Vec<&str> =
        document["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for path in [
        "/api/v1/campaigns",
        "/api/v1/campaigns/{id}",
        "/api/v1/campaigns/{id}/stats",
        "/api/v1/campaigns/{id}/pause",
        "/api/v1/campaigns/{id}/resume",
        "/api/v1/campaigns/{id}/stop",
        "/api/v1/campaigns/{id}/events",
        "/api/v1/dead-letters",
        "/api/v1/settings",
        "/api/v1/segments",
        "/api/v1/segments/{id}",
        "/api/v1/session",
        "/api/v1/campaigns/{id}/sends",
        "/schemas/{file}",
    ] {
        assert!(paths.contains(&path), "{path} not in {paths:?}");
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());

    // The campaign and segment files' JSON Schemas, for editors: no token needed, as published,
    // also under the file names the segment schema's `$ref`s name.
    let campaign = include_str!("../schemas/campaign.schema.json");
    let segment = include_str!("../schemas/segment.schema.json");
    for (path, file) in [
        ("/schemas/campaign.json", campaign),
        ("/schemas/segment.json", segment),
        ("/schemas/campaign.schema.json", campaign),
        ("/schemas/segment.schema.json", segment),
    ] {
        let url = format!("{}{path}", api.origin);
        let mut response = api.agent.get(&url).call().unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "application/schema+json");
        let served: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(served, serde_json::from_str::<Value>(file).unwrap(), "{path}");
    }
    let reference = serde_json::from_str::<Value>(segment).unwrap()["properties"]["who"]["$ref"]
        .as_str()
        .unwrap()
        .to_string();
    let referenced = reference.split('#').next().unwrap();
    assert_eq!(api.request("GET", &format!("/schemas/{referenced}"), None, None).status, 200);
    assert_eq!(api.request("GET", "/schemas/nothing.json", None, None).status, 404);
}

#[test]
fn campaign_events_dead_letters_and_app_settings() {
    use herald_engine::model::{CampaignLifecycleEvent, DeadLetter, LifecycleKind};
    let settings_dir = tempfile::tempdir().unwrap();
    let settings = settings_dir.path().join("apps.yaml");
    std::fs::write(&settings, "apps:\n  shop:\n    caps: { per_day: 2 }\n").unwrap();
    let api = Api::start("api-ops", &["--settings", settings.to_str().unwrap()]);
    assert_eq!(api.admin("POST", "/api/v1/campaigns", Some(&campaign("ab", "t"))).status, 201);

    let at = now_ms();
    let event = |kind, offset: i64, details: &[(&str, &str)]| {
        let event = CampaignLifecycleEvent {
            campaign_id: "ab".into(),
            app_id: "shop".into(),
            kind,
            run_id: None,
            timestamp_ms: at + offset,
            details: details.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        ("ab".to_string(), SchemaRegistry::builtin().encode(&event).unwrap())
    };
    common::produce(
        &api.topic("campaign-events"),
        [
            event(LifecycleKind::Paused, 0, &[]),
            event(LifecycleKind::WinnerDeclared, 1, &[("winner", "b"), ("p_value", "0.003")]),
        ],
    );
    assert!(poll_until(Duration::from_secs(30), || {
        api.read("/api/v1/campaigns/ab/events").body.as_array().is_some_and(|e| e.len() == 2)
    }));
    let events = api.read("/api/v1/campaigns/ab/events").body;
    assert_eq!(events[0]["kind"], "PAUSED");
    assert_eq!(events[1]["kind"], "WINNER_DECLARED");
    assert_eq!(events[1]["details"], json!({ "winner": "b", "p_value": "0.003" }));
    assert_eq!(api.read("/api/v1/campaigns/none/events").status, 404);

    let letter = |offset: i64, reason: &str| {
        let letter = DeadLetter {
            source_topic: "herald.events".into(),
            source_partition: 0,
            source_offset: offset,
            key: Some(b"u1".to_vec()),
            value: Some(vec![0; 7]),
            reason: reason.into(),
            stage: "user".into(),
            timestamp_ms: at + offset,
        };
        (format!("k{offset}"), SchemaRegistry::builtin().encode(&letter).unwrap())
    };
    common::produce(&api.topic("dead-letter"), (0..5).map(|i| letter(i, &format!("bad {i}"))));
    let latest = api.read("/api/v1/dead-letters?limit=3");
    assert_eq!(latest.status, 200, "{}", latest.body);
    let reasons: Vec<&str> =
        latest.body.as_array().unwrap().iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["bad 4", "bad 3", "bad 2"]);
    assert_eq!(latest.body[0]["key"], "u1");
    assert_eq!(latest.body[0]["value_bytes"], 7);

    assert_eq!(
        api.read("/api/v1/settings").body,
        json!({ "apps": { "shop": { "caps": { "per_day": 2 } } } })
    );
    let invalid = json!({ "apps": { "shop": { "caps": { "per_day": -1 } } } }).to_string();
    let refused = api.admin("PUT", "/api/v1/settings", Some(&invalid));
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body["field"].as_str().unwrap().starts_with("apps.shop.caps"),
        "{}",
        refused.body
    );
    let read_only = api.request("PUT", "/api/v1/settings", Some(READ_TOKEN), Some("{}"));
    assert_eq!(read_only.status, 403);
    let changed =
        json!({ "apps": { "shop": { "caps": { "per_day": 3 }, "timezone": "Europe/Paris" } } });
    let answer = api.admin("PUT", "/api/v1/settings", Some(&changed.to_string()));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(api.read("/api/v1/settings").body, changed);
    let written = std::fs::read_to_string(&settings).unwrap();
    let parsed = herald_engine::settings::Settings::parse(&written, "apps.yaml").unwrap();
    assert_eq!(parsed.app("shop").max_per_day, Some(3));
    let audited = audit_records(&api.topic("audit"), 4);
    let settings_actions: Vec<_> = audited
        .iter()
        .filter(|r| r.action == "PUT /api/v1/settings")
        .map(|r| (r.actor.as_str(), r.status))
        .collect();
    assert_eq!(settings_actions, [("ops", 422), ("viewer", 403), ("ops", 200)]);
}

#[test]
fn segments_are_validated_like_the_cli_saved_and_deleted_only_when_no_campaign_uses_them() {
    let api = Api::start("api-segments", &[]);
    // The API created the segments topic it did not find.
    assert_eq!(api.read("/api/v1/segments").body, json!([]));

    let invalid = "id: vip\nwho:\n  all:\n    - { property: state, equalz: CA }\ncolour: red\n";
    let answer = api.admin("PUT", "/api/v1/segments/vip", Some(invalid));
    let fields = api.paths_as_the_cli_has_them("segment", invalid, &answer);
    assert_eq!(fields, ["colour", "name", "who.all[0].equalz"], "{}", answer.body);
    // The segment schema's sentences (schemas/segment.schema.json, with the campaign schema's
    // filter language).
    assert_eq!(answer.body["errors"][0]["reason"], "unknown field; expected one of id, name, who");
    assert_eq!(answer.body["errors"][1]["reason"], "is required");
    let operator = answer.body["errors"][2]["reason"].as_str().unwrap();
    assert!(operator.starts_with("unknown property operator \"equalz\"; expected one of equals"));

    let vip = |name: &str| {
        format!("id: vip\nname: {name}\nwho:\n  all:\n    - {{ property: state, equals: CA }}\n")
    };
    let read_only = api.request("PUT", "/api/v1/segments/vip", Some(READ_TOKEN), Some(&vip("V")));
    assert_eq!(read_only.status, 403);
    let created = api.admin("PUT", "/api/v1/segments/vip", Some(&vip("VIPs")));
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["definition"]["who"]["all"][0]["equals"], "CA");
    let replaced = api.admin("PUT", "/api/v1/segments/vip", Some(&vip("VIPs in California")));
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    let mismatch = api.admin("PUT", "/api/v1/segments/other", Some(&vip("V")));
    assert_eq!((mismatch.status, mismatch.body["field"].as_str()), (422, Some("id")));
    assert_eq!(
        api.read("/api/v1/segments").body,
        json!([{ "id": "vip", "name": "VIPs in California", "used_by": [] }])
    );
    assert_eq!(api.read("/api/v1/segments/vip").body["name"], "VIPs in California");
    assert_eq!(api.read("/api/v1/segments/nobody").status, 404);

    // In use by a campaign that is not stopped: refused, the campaign named.
    let mut uses = serde_json::from_str::<Value>(&campaign("west", "t")).unwrap();
    uses["who"] = json!({ "segment": "vip" });
    let created = api.admin("POST", "/api/v1/campaigns", Some(&uses.to_string()));
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(api.read("/api/v1/segments/vip").body["used_by"], json!(["west"]));
    let refused = api.admin("DELETE", "/api/v1/segments/vip", None);
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(
        refused.body["error"],
        "segment vip is in use by campaign(s) west: stop them or change their who first"
    );
    assert_eq!(api.admin("POST", "/api/v1/campaigns/west/stop", None).status, 200);
    let deleted = api.admin("DELETE", "/api/v1/segments/vip", None);
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert_eq!(api.read("/api/v1/segments/vip").status, 404);
    assert_eq!(api.admin("DELETE", "/api/v1/segments/vip", None).status, 404);

    // What reached the segments topic is what the engine reads: the texts, then a tombstone.
    let records = common::read_committed(
        &api.topic("segments"),
        3,
        Duration::from_millis(300),
        Duration::from_secs(30),
    );
    let values: Vec<Option<String>> = records
        .iter()
        .map(|r| r.value.as_ref().map(|v| String::from_utf8(v.clone()).unwrap()))
        .collect();
    assert_eq!(values, [Some(vip("VIPs")), Some(vip("VIPs in California")), None]);
    assert!(records.iter().all(|r| r.key == b"vip"));

    let audited: Vec<_> = audit_records(&api.topic("audit"), 10)
        .into_iter()
        .filter(|r| r.action.contains("segments"))
        .map(|r| (r.actor, r.action, r.target, r.status))
        .collect();
    let expect = |actor: &str, method: &str, target: &str, status: i32| {
        (
            actor.to_string(),
            format!("{method} /api/v1/segments/{{id}}"),
            Some(target.to_string()),
            status,
        )
    };
    assert_eq!(
        audited,
        [
            expect("ops", "PUT", "vip", 422),
            expect("viewer", "PUT", "vip", 403),
            expect("ops", "PUT", "vip", 201),
            expect("ops", "PUT", "vip", 200),
            expect("ops", "PUT", "other", 422),
            expect("ops", "DELETE", "vip", 409),
            expect("ops", "DELETE", "vip", 204),
            expect("ops", "DELETE", "vip", 404),
        ]
    );
}

/// Server-sent events read from `reader`, as (event, data), until `wanted` is among them.
fn read_events_until(
    reader: &mut impl std::io::BufRead,
    wanted: (&str, &str),
) -> Vec<(String, String)> {
    let mut events: Vec<(String, String)> = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    let mut line = String::new();
    while !events.iter().any(|(e, d)| (e.as_str(), d.as_str()) == wanted) {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended: {events:?}");
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_string();
        } else if let Some(value) = line.strip_prefix("data:") {
            data = value.trim().to_string();
        } else if line.is_empty() && !event.is_empty() {
            events.push((std::mem::take(&mut event), std::mem::take(&mut data)));
        }
    }
    events
}

#[test]
fn live_events_name_each_change_and_the_status_follows_the_engines_lifecycle_events() {
    use herald_engine::model::{CampaignLifecycleEvent, LifecycleKind};
    let api = Api::start("api-live", &[]);
    let mut limited: Value = serde_json::from_str(&campaign("ab", "t")).unwrap();
    limited["limits"] = json!({ "total": 10 });
    let limited = limited.to_string();
    assert_eq!(api.admin("POST", "/api/v1/campaigns", Some(&limited)).status, 201);
    assert_eq!(api.read("/api/v1/campaigns/ab").body["status"], "active");
    assert_eq!(api.request("GET", "/api/v1/live", None, None).status, 401);

    let url = format!("{}/api/v1/live", api.origin);
    let response = api.agent.get(&url).header("Authorization", format!("Bearer {READ_TOKEN}"));
    let mut response = response.call().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = std::io::BufReader::new(response.body_mut().as_reader());
    assert_eq!(read_events_until(&mut stream, ("ready", "")), [("ready".into(), "".into())]);

    // The engine reports the campaign completed: an event names it, and it is listed completed.
    let completed = CampaignLifecycleEvent {
        campaign_id: "ab".into(),
        app_id: "shop".into(),
        kind: LifecycleKind::Completed,
        run_id: None,
        timestamp_ms: now_ms(),
        // As the engine announces it: the total limit reached (a completion counts while its
        // reason holds for the current definition).
        details: [("reason", "total_limit"), ("sent", "10")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    };
    common::produce(
        &api.topic("campaign-events"),
        [("ab".to_string(), SchemaRegistry::builtin().encode(&completed).unwrap())],
    );
    read_events_until(&mut stream, ("events", "ab"));
    assert_eq!(api.read("/api/v1/campaigns/ab").body["status"], "completed");
    assert_eq!(api.read("/api/v1/campaigns").body[0]["status"], "completed");

    let stats = CampaignStats {
        campaign_id: "ab".into(),
        app_id: "shop".into(),
        as_of_ms: now_ms(),
        variants: Vec::new(),
        skipped: Default::default(),
        failed: Default::default(),
    };
    common::produce(
        &api.topic("stats"),
        [("ab".to_string(), SchemaRegistry::builtin().encode(&stats).unwrap())],
    );
    read_events_until(&mut stream, ("stats", "ab"));
    let segment = "id: vip\nname: VIPs\nwho: { property: state, equals: CA }\n";
    assert_eq!(api.admin("PUT", "/api/v1/segments/vip", Some(segment)).status, 201);
    read_events_until(&mut stream, ("segment", "vip"));
    // An operator's pause: the campaign changed, and it is paused, whatever the engine said.
    assert_eq!(api.admin("POST", "/api/v1/campaigns/ab/pause", None).status, 200);
    read_events_until(&mut stream, ("campaign", "ab"));
    assert_eq!(api.read("/api/v1/campaigns/ab").body["status"], "paused");
}

#[test]
fn estimated_reach_of_a_segment_and_a_campaign_comes_from_the_running_engine_as_the_cli_has_it() {
    use herald_engine::model::{Platform, ProfileUpdate, PropertyValue};
    let api = Api::start("api-estimate", &[]);
    let (_engine, engine_log) = api.start_engine(&[], &[]);
    let profile = |user: &str, state: &str, platform| {
        let (key, bytes) = common::profile(user, platform, now_ms());
        let mut update: ProfileUpdate = SchemaRegistry::builtin().decode(&bytes).unwrap();
        update.set.insert("state".into(), PropertyValue::String(state.into()));
        (key, SchemaRegistry::builtin().encode(&update).unwrap())
    };
    common::produce(
        &api.topic("profiles"),
        [
            profile("ca-ios", "CA", Platform::Ios),
            profile("ca-android", "CA", Platform::Android),
            profile("ny-ios", "NY", Platform::Ios),
        ],
    );
    let segment = "id: ca\nname: Californians\nwho: { property: state, equals: CA }\n";
    assert_eq!(api.admin("PUT", "/api/v1/segments/ca", Some(segment)).status, 201);
    assert_eq!(api.admin("GET", "/api/v1/segments/nowhere/estimate", None).status, 404);
    // Estimates scan every user of the engine: admin only.
    assert_eq!(api.read("/api/v1/segments/ca/estimate").status, 403);

    // Once the engine has read every profile: the segment's users, by platform.
    let mut estimate = Value::Null;
    let settled = poll_until(Duration::from_secs(120), || {
        estimate = api.admin("GET", "/api/v1/segments/ca/estimate?timeout_s=20", None).body;
        estimate["complete"] == true && estimate["counts"]["scanned"] == 3
    });
    assert!(settled, "no estimate: {estimate}\n{}", common::tail(&engine_log, 30));
    assert_eq!(estimate["partitions"], 2);
    let counts = &estimate["counts"];
    let by_platform =
        [&counts["matched"], &counts["reachable"], &counts["ios"], &counts["android"]];
    assert_eq!(by_platform, [2, 2, 1, 1]);

    // A scheduled campaign on the segment, never applied, limited to one user a run: the
    // engine's counts and what the limit leaves, as `herald campaign estimate` has them.
    let definition = "id: reach\napp: shop\nname: Reach\nwho: { segment: ca }\n\
        when: { schedule: { at: \"2099-01-01T09:00:00Z\" } }\nlimits: { per_run: 1 }\n\
        what: { title: t, body: b }\n";
    let answer = api.request(
        "POST",
        "/api/v1/campaigns/estimate?timeout_s=20",
        Some(ADMIN_TOKEN),
        Some(definition),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["counts"]["candidates"], 2, "{}", answer.body);
    assert_eq!(answer.body["limited"]["sent"], 1, "{}", answer.body);
    let file = api.dir.path().join("reach.yaml");
    std::fs::write(&file, definition).unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["campaign", "estimate"])
        .arg(&file)
        .args(["--topic-prefix", &api.prefix, "--timeout", "20s", "--json"])
        .env("HERALD_BROKERS", kafka().brokers)
        .output()
        .unwrap();
    let printed: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(printed["counts"], answer.body["counts"]);
    assert_eq!(printed["limited"], answer.body["limited"]);
    assert_eq!(api.read("/api/v1/campaigns/reach").status, 404, "an estimate applies nothing");

    let invalid =
        api.request("POST", "/api/v1/campaigns/estimate", Some(ADMIN_TOKEN), Some("id: x"));
    assert_eq!(invalid.status, 422, "{}", invalid.body);
    assert_eq!(
        api.request("POST", "/api/v1/campaigns/estimate", None, Some(definition)).status,
        401
    );
    assert_eq!(
        api.request("POST", "/api/v1/campaigns/estimate", Some(READ_TOKEN), Some(definition))
            .status,
        403
    );
}

/// Issue 15: a preview or an estimate that no engine answers gets 503 with a JSON error saying
/// so, whether no engine ever created the query topics or none answers on them.
#[test]
fn a_preview_or_an_estimate_no_engine_answers_gets_503_with_a_json_error() {
    let api = Api::start("api-503", &[]);
    assert_eq!(api.admin("POST", "/api/v1/campaigns", Some(&campaign("c503", "t"))).status, 201);
    let unavailable = |answer: Answer| {
        assert_eq!(answer.status, 503, "{}", answer.body);
        let error = answer.body["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("engine"), "{error}");
    };
    let estimate = |api: &Api| {
        api.admin("POST", "/api/v1/campaigns/estimate?timeout_s=1", Some(&campaign("c503", "t")))
    };
    // No engine ever ran on these topics.
    unavailable(api.read("/api/v1/campaigns/c503/preview?user=u1"));
    unavailable(estimate(&api));
    // The channel's topics exist, but no engine answers on them.
    let names = ["events", "queries", "query-replies"].map(|t| api.topic(t));
    create_topics(&names.iter().map(|n| (n.as_str(), 2)).collect::<Vec<_>>());
    unavailable(api.read("/api/v1/campaigns/c503/preview?user=u1"));
    unavailable(estimate(&api));
}

/// The sum of the samples of `metric` whose labels include every one of `labels` (`name="value"`)
/// in a Prometheus text exposition.
fn sample(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{metric}{{")) || line.starts_with(&format!("{metric} "))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 15: `herald api --metrics-addr` serves Prometheus metrics without a token, apart from
/// the API: requests by route template and status, refusals by reason (401, 403, 413, 429), the
/// query round trips to the engine; no token, id or path of a request is ever in a label.
#[test]
fn the_metrics_address_counts_requests_by_route_status_and_refusal_and_shows_no_secret() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let api = Api::start(
        "api-metrics",
        &[
            "--metrics-addr",
            &metrics_addr,
            "--rate-burst",
            "4",
            "--rate-per-second",
            "0.001",
            "--body-limit",
            "4096",
        ],
    );
    // The query channel's topics, no engine: a preview waits for its deadline.
    let names = ["events", "queries", "query-replies"].map(|t| api.topic(t));
    create_topics(&names.iter().map(|n| (n.as_str(), 2)).collect::<Vec<_>>());
    assert_eq!(api.admin("POST", "/api/v1/campaigns", Some(&campaign("m", "t"))).status, 201);
    let oversize = campaign("m2", &"x".repeat(8192));
    assert_eq!(api.admin("POST", "/api/v1/campaigns", Some(&oversize)).status, 413);
    let statuses = [
        api.read("/api/v1/campaigns").status,
        api.read("/api/v1/campaigns/secret-campaign").status,
        api.request("POST", "/api/v1/campaigns", Some(READ_TOKEN), Some("{}")).status,
        api.read("/api/v1/campaigns/m/preview?user=u-secret").status,
        api.read("/api/v1/campaigns").status,
        api.request("GET", "/api/v1/campaigns", None, None).status,
        api.request("GET", "/api/v1/campaigns", Some("not-a-valid-token-secret"), None).status,
        api.request("GET", "/nowhere/secret-path", None, None).status,
        api.request("GET", "/metrics", None, None).status,
    ];
    assert_eq!(statuses, [200, 404, 403, 503, 429, 401, 401, 404, 404]);

    let url = format!("http://{metrics_addr}/metrics");
    let mut response = api.agent.get(&url).call().unwrap();
    assert_eq!(response.status(), 200);
    let text = response.body_mut().read_to_string().unwrap();
    let requests = |route: &str, method: &str, status: u16| {
        let labels = [
            format!("route=\"{route}\""),
            format!("method=\"{method}\""),
            format!("status=\"{status}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        sample(&text, "herald_api_requests_total", &labels)
    };
    let campaigns = "/api/v1/campaigns";
    let counted = [
        requests(campaigns, "POST", 201),
        requests(campaigns, "POST", 413),
        requests(campaigns, "GET", 200),
        requests("/api/v1/campaigns/{id}", "GET", 404),
        requests(campaigns, "POST", 403),
        requests("/api/v1/campaigns/{id}/preview", "GET", 503),
        requests(campaigns, "GET", 429),
        requests(campaigns, "GET", 401),
        requests("unmatched", "GET", 404),
    ];
    assert_eq!(counted, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0], "{text}");
    let refused = |reason: &str| {
        sample(&text, "herald_api_refused_total", &[&format!("reason=\"{reason}\"")])
    };
    let refusals = ["unauthorized", "forbidden", "too_large", "rate_limited"].map(refused);
    assert_eq!(refusals, [2.0, 1.0, 1.0, 1.0], "{text}");
    let latency =
        sample(&text, "herald_api_request_seconds_count", &["route=\"/api/v1/campaigns\""]);
    assert_eq!(latency, 7.0, "{text}");
    let lookups = sample(
        &text,
        "herald_query_round_trip_seconds_count",
        &["kind=\"profile\"", "outcome=\"partial\""],
    );
    assert_eq!(lookups, 1.0, "{text}");
    for secret in [
        READ_TOKEN,
        ADMIN_TOKEN,
        "not-a-valid-token-secret",
        "secret-campaign",
        "u-secret",
        "secret-path",
    ] {
        assert!(!text.contains(secret), "{secret} in\n{text}");
    }
    let health = api.agent.get(&format!("http://{metrics_addr}/healthz")).call().unwrap();
    assert_eq!(health.status(), 200);
}

/// Issue 13: the update route refuses a change of `options.shards` on a live campaign (active
/// or paused) with the field path, as `herald campaign apply` does; a stopped campaign may
/// take a new count.
#[test]
fn an_update_refuses_a_change_of_shards_while_the_campaign_is_live() {
    let api = Api::start("api-shards", &[]);
    let sharded = |shards: u32, title: &str| {
        let mut definition: serde_json::Value =
            serde_json::from_str(&campaign("wide", title)).unwrap();
        definition["options"] = json!({ "shards": shards });
        definition.to_string()
    };
    let put = |body: &str| api.admin("PUT", "/api/v1/campaigns/wide", Some(body));
    assert_eq!(api.admin("POST", "/api/v1/campaigns", Some(&sharded(4, "t"))).status, 201);
    let refused = |answer: Answer, asked: u32| {
        assert_eq!(answer.status, 422, "{}", answer.body);
        assert_eq!(answer.body["field"], "options.shards", "{}", answer.body);
        let error = answer.body["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(&format!("live with 4 shard(s): a change to {asked}")), "{error}");
    };
    refused(put(&sharded(8, "t")), 8);
    refused(put(&campaign("wide", "no options: one shard")), 1);
    assert_eq!(put(&sharded(4, "new title")).status, 200, "same count, other fields");
    assert_eq!(api.admin("POST", "/api/v1/campaigns/wide/pause", None).status, 200);
    refused(put(&sharded(8, "t")), 8);
    assert_eq!(api.read("/api/v1/campaigns/wide").body["definition"]["options"]["shards"], 4);
    assert_eq!(api.admin("POST", "/api/v1/campaigns/wide/stop", None).status, 200);
    assert_eq!(put(&sharded(8, "t")).status, 200, "a stopped campaign takes a new count");
}

/// Answers every request on a queries topic with forged `DONE` replies for both partitions, one
/// unsigned and one signed with a key of its own, as anyone who can write the replies topic
/// can; stops when dropped.
struct Forger {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forger {
    fn start(queries: String, replies: String, body: &str) -> Self {
        use herald_engine::query::{sign::ReplyKey, QueryReply, QueryRequest, QueryStatus};
        use rdkafka::{consumer::Consumer, Message};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, body) = (stop.clone(), body.to_string());
        let thread = std::thread::spawn(move || {
            let consumer: rdkafka::consumer::BaseConsumer =
                kafka().client_config().set("group.id", "forger").create().unwrap();
            let mut assignment = rdkafka::TopicPartitionList::new();
            for partition in 0..2 {
                assignment
                    .add_partition_offset(&queries, partition, rdkafka::Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&assignment).unwrap();
            let own_key = ReplyKey::new(b"the-forger-s-own-key").unwrap();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else { continue };
                let Some(payload) = message.payload() else { continue };
                let request: QueryRequest = SchemaRegistry::builtin().decode(payload).unwrap();
                let forged = |partition: i32, signed: bool| {
                    let mut reply = QueryReply {
                        request_id: request.request_id.clone(),
                        partition,
                        partitions: 2,
                        status: QueryStatus::Done,
                        scanned: 1,
                        body: Some(body.clone()),
                        error: None,
                        timestamp_ms: now_ms(),
                        signature: None,
                    };
                    if signed {
                        own_key.sign(&mut reply, &request);
                    }
                    let bytes = SchemaRegistry::builtin().encode(&reply).unwrap();
                    (request.request_id.clone(), bytes)
                };
                common::produce(
                    &replies,
                    [forged(0, false), forged(1, false), forged(0, true), forged(1, true)],
                );
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Issue 15: with a query key shared by engine and API, forged replies written first (saying
/// the user has no profile) change no answer: with no engine the preview is 503, not the
/// forger's 404; with the engine up it renders the user's real device.
#[test]
fn a_forged_query_reply_written_first_does_not_change_the_answer() {
    const KEY: &str = "a-test-query-key-0123456789";
    let api = Api::start_with_env("api-forged", &[], &[("HERALD_QUERY_KEY", KEY)]);
    let queries = ["queries", "query-replies"].map(|t| api.topic(t));
    create_topics(&queries.iter().map(|t| (t.as_str(), 2)).collect::<Vec<_>>());
    assert_eq!(api.admin("POST", "/api/v1/campaigns", Some(&campaign("forged", "t"))).status, 201);
    let [queries, replies] = queries;
    let _forger = Forger::start(queries, replies, r#"{"profile":null}"#);
    // No engine: only the forger answers, and is not believed.
    let answer = api.admin("GET", "/api/v1/campaigns/forged/preview?user=u1", None);
    assert_eq!(answer.status, 503, "{}", answer.body);

    let (_engine, engine_log) = api.start_engine(&[], &[("HERALD_QUERY_KEY", KEY)]);
    use herald_engine::model::Platform;
    common::produce(&api.topic("profiles"), [common::profile("u1", Platform::Ios, now_ms())]);
    assert_eq!(api.previewed_devices("forged", "u1", &engine_log), ["d-u1"]);
}

/// Issue 15: a query of a kind no task answers is refused at once by every partition, with a
/// reply signed like the others (it was dead-lettered only, and its asker waited for its
/// deadline).
#[test]
fn a_query_of_an_unknown_kind_is_refused_at_once_by_every_partition_signed() {
    use herald_engine::query::{sign::ReplyKey, QueryClient, QueryRequest, QueryStatus};
    const KEY: &str = "a-test-query-key-0123456789";
    let api = Api::start("api-unknown-kind", &[]);
    let (_engine, engine_log) = api.start_engine(&[], &[("HERALD_QUERY_KEY", KEY)]);
    let client = QueryClient::new(&kafka(), &api.topic("queries"), &api.topic("query-replies"));
    // The deadline is far: only a refusal ends the wait before it.
    let request = QueryRequest::new("drop-tables", None, "{}".into(), Duration::from_secs(300));
    let answers = client.ask(&request, 2, |_| {}).unwrap();
    assert_eq!(answers.missing, [0; 0], "{}", common::tail(&engine_log, 30));
    let key = ReplyKey::new(KEY.as_bytes()).unwrap();
    for partition in [0, 1] {
        let reply = &answers.done[&partition];
        assert_eq!(reply.status, QueryStatus::Refused, "{reply:?}");
        let error = reply.error.as_deref().unwrap_or_default();
        assert!(error.starts_with(r#"unknown query kind "drop-tables" (known: "#), "{error}");
        assert_eq!(key.verify(reply, &request), Ok(()), "{reply:?}");
    }
}

/// Issue 15: a preview for an anonymous id that identified as a known user (an alias) renders
/// the known user's profile and devices.
#[test]
fn a_preview_for_an_alias_renders_the_profile_it_merged_into() {
    use herald_engine::model::Platform;
    let api = Api::start("api-alias", &[]);
    assert_eq!(api.admin("POST", "/api/v1/campaigns", Some(&campaign("aliased", "t"))).status, 201);
    // Aliases arrive in Segment's format on the events topic; profiles stay Avro.
    let topology = api.dir.path().join("topology.toml");
    let default = std::fs::read_to_string("topologies/default.toml").unwrap();
    let ingest = "\n[ingest]\nevents = { format = \"segment\", app = \"shop\" }\n";
    std::fs::write(&topology, default + ingest).unwrap();
    let (_engine, engine_log) = api.start_engine(&["--topology", topology.to_str().unwrap()], &[]);
    common::produce(&api.topic("profiles"), [common::profile("known", Platform::Ios, now_ms())]);
    let alias = json!({
        "type": "alias", "previousId": "anon-7", "userId": "known",
        "timestamp": chrono::Utc::now().to_rfc3339(),
    });
    common::produce(&api.topic("events"), [("anon-7".to_string(), alias.to_string().into_bytes())]);
    assert_eq!(api.previewed_devices("aliased", "anon-7", &engine_log), ["d-known"]);
}
