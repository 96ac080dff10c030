//! The dashboard in a real browser: headless Chromium, driven through chromedriver (WebDriver),
//! opens the page `herald api` serves, signs in with a read token and follows an A/B campaign
//! created through the API while the closed loop runs (simulator with a device population,
//! engine, sender): the page shows the funnel counts the API reports and the declared winner;
//! the page follows the API's server-sent events (no polling), so a pause sent through the API
//! shows without a reload, polls while the API is down and follows the stream again once it is
//! back; signed in again with an admin token, its Pause and Resume buttons change the status.
//! A screenshot is saved as `.local/dashboard-browser.png`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{free_port, poll_until, KillOnDrop};
use fantoccini::{Client, ClientBuilder, Locator};
use herald_engine::model::{AppEvent, CampaignLifecycleEvent, LifecycleKind, SchemaRegistry};
use herald_engine::{kafka::apply_topology, runtime::partition_for, topology::Topology};
use serde_json::{json, Value};

/// Users of the simulated population; every one of them qualifies once.
const USERS: usize = 160;
/// Users of the A/B test.
const AUDIENCE: usize = 80;
const READ_TOKEN: &str = "read-dashboard-0123456789";
const ADMIN_TOKEN: &str = "admin-dashboard-0123456789";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `herald ARGS` in the background, logging to `log`, killed on drop.
fn spawn(args: &[&str], log: &Path) -> KillOnDrop {
    let log = std::fs::File::create(log).unwrap();
    KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .current_dir(repo())
            .env("HERALD_BROKERS", common::kafka().brokers)
            .env("RUST_LOG", "info,librdkafka=warn")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The A/B campaign the test creates: a `Ping` sends variant A or B to the first 80 users, the
/// variant with the higher click-through rate (and its p-value) 5 s after that audience is full
/// goes to everyone else.
fn campaign(id: &str) -> Value {
    json!({
        "id": id,
        "app": "shop",
        "name": "Dashboard A/B",
        "when": { "event": "Ping" },
        "what": {
            "variants": [
                { "id": "A", "title": "Hello A", "body": "a" },
                { "id": "B", "title": "Hello B", "body": "b" }
            ],
            "ab": { "test_audience": AUDIENCE, "evaluate_after": "5s", "winner_by": "ctr" }
        }
    })
}

fn ping(user: &str, at: i64) -> (String, Vec<u8>) {
    let event = AppEvent {
        event_id: format!("{user}-ping"),
        app_id: "shop".into(),
        user_id: user.into(),
        name: "Ping".into(),
        timestamp_ms: at,
        properties: Default::default(),
        sdk_version: None,
    };
    (user.to_string(), SchemaRegistry::builtin().encode(&event).unwrap())
}

/// The winner and p-value of the first `WINNER_DECLARED` on the campaign events topic.
fn winner_declared(topic: &str) -> Option<(String, Option<String>)> {
    common::read_committed(topic, 1, Duration::ZERO, Duration::from_secs(2)).iter().find_map(|r| {
        let event: CampaignLifecycleEvent =
            SchemaRegistry::builtin().decode(r.value.as_deref()?).ok()?;
        if event.kind != LifecycleKind::WinnerDeclared {
            return None;
        }
        Some((event.details.get("winner")?.clone(), event.details.get("p_value").cloned()))
    })
}

/// The JSON API as the test's own client.
struct Api {
    origin: String,
}

impl Api {
    fn get(&self, path: &str) -> Option<Value> {
        ureq::get(format!("{}/api/v1{path}", self.origin))
            .header("Authorization", format!("Bearer {READ_TOKEN}"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
    }

    fn create(&self, definition: &Value) {
        let response = ureq::post(format!("{}/api/v1/campaigns", self.origin))
            .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("Content-Type", "application/json")
            .send(definition.to_string())
            .expect("creating the campaign through the API");
        assert!(response.status().is_success(), "create: {}", response.status());
    }

    /// Issues `command` (pause, resume, stop) on campaign `id` with the admin token.
    fn command(&self, id: &str, command: &str) {
        let response = ureq::post(format!("{}/api/v1/campaigns/{id}/{command}", self.origin))
            .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
            .send_empty()
            .expect("a command through the API");
        assert!(response.status().is_success(), "{command}: {}", response.status());
    }
}

/// The figure shown in the funnel for `variant` (or `all`) at `step`.
async fn cell(browser: &Client, variant: &str, step: &str) -> Option<i64> {
    let selector = format!("#funnel td[data-variant='{variant}'][data-step='{step}']");
    let element = browser.find(Locator::Css(&selector)).await.ok()?;
    let value: i64 = element.attr("data-value").await.ok()??.parse().ok()?;
    // The figure is what the cell shows first, before its rate (figures here are under 1,000).
    element.text().await.ok()?.starts_with(&value.to_string()).then_some(value)
}

/// How the page gets its updates: `live` (the event stream) or `polling`.
async fn live_mode(browser: &Client) -> String {
    let Ok(body) = browser.find(Locator::Css("body")).await else { return String::new() };
    body.attr("data-live").await.ok().flatten().unwrap_or_default()
}

/// Waits up to 30 s for the page to get its updates by `mode`.
async fn wait_for_mode(browser: &Client, mode: &str) -> bool {
    let started = Instant::now();
    while live_mode(browser).await != mode && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live_mode(browser).await == mode
}

async fn text(browser: &Client, id: &str) -> String {
    match browser.find(Locator::Id(id)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// chromedriver in a process group of its own, which is killed (with the Chromium it started)
/// when dropped, so a failed test leaves no browser behind.
struct Chromedriver(std::process::Child);

impl Chromedriver {
    fn start(port: u16, log: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("chromedriver (deploy/local/bootstrap.sh installs chromium-driver)");
        Self(child)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// Deletes the test's topics when dropped (after the processes, declared after it, are killed).
struct Topics(String);

impl Drop for Topics {
    fn drop(&mut self) {
        common::delete_topics_starting_with(&[&self.0]);
    }
}

#[test]
fn the_dashboard_shows_the_funnel_and_the_winner_of_a_live_ab_test_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let prefix = format!("{}-", common::unique("dash"));
    let _topics = Topics(prefix.clone());
    let app_id = format!("{prefix}app");
    let topic = |name: &str| format!("{prefix}herald.{name}");
    // Every topic of the topology file under the prefix, with at most 2 partitions.
    let mut topology = Topology::load(&repo().join("topologies/default.toml")).unwrap();
    for topic in &mut topology.topics {
        topic.name = format!("{prefix}{}", topic.name);
        topic.partitions = topic.partitions.min(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(apply_topology(&common::kafka(), &topology)).unwrap();

    // The closed loop: simulator and its population (B is clicked far more often than A),
    // engine, sender.
    let sim_port = free_port();
    let sim_dir = path("sim");
    let sim_listen = format!("127.0.0.1:{sim_port}");
    let users_arg = USERS.to_string();
    let _sim = spawn(
        &[
            "sim",
            "--listen",
            &sim_listen,
            "--dir",
            sim_dir.to_str().unwrap(),
            "--population",
            &users_arg,
            "--topic-prefix",
            &prefix,
            "--view-rate",
            "1.0",
            "--click-rate",
            "A=0.02",
            "--click-rate",
            "B=0.6",
        ],
        &path("sim.log"),
    );
    assert!(
        poll_until(Duration::from_secs(120), || sim_dir.join("sim-ca.pem").exists()
            && std::fs::read_to_string(path("sim.log"))
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
    std::fs::write(
        &senders,
        format!(
            "apps:\n  shop:\n    apns:\n      topic: com.example.shop\n      key_file: {sim}/apns-key.p8\n      key_id: KEY1234567\n      team_id: TEAM123456\n      endpoint: https://{sim_listen}\n    fcm:\n      service_account_file: {sim}/fcm-service-account.json\n      endpoint: https://{sim_listen}\n    ca_file: {sim}/sim-ca.pem\n",
            sim = sim_dir.display()
        ),
    )
    .unwrap();
    let group = format!("{prefix}senders");
    let _sender = spawn(
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
            path("sender-state").to_str().unwrap(),
        ],
        &path("sender.log"),
    );

    // The API with a read and an admin token.
    let tokens = path("tokens");
    std::fs::write(&tokens, format!("read viewer {READ_TOKEN}\nadmin ops {ADMIN_TOKEN}\n"))
        .unwrap();
    let api_port = free_port();
    let api_listen = format!("127.0.0.1:{api_port}");
    let start_api = |log: &str| {
        spawn(
            &[
                "api",
                "--listen",
                &api_listen,
                "--tokens",
                tokens.to_str().unwrap(),
                "--topic-prefix",
                &prefix,
            ],
            &path(log),
        )
    };
    let mut api_process = Some(start_api("api.log"));
    let api = Api { origin: format!("http://{api_listen}") };
    assert!(
        poll_until(Duration::from_secs(90), || api.get("/campaigns").is_some()),
        "the API did not answer\n{}",
        common::tail(&path("api.log"), 20)
    );

    // Every profile is in the engine before any event.
    let changelog = format!("{app_id}-profiles-changelog");
    assert!(
        poll_until(Duration::from_secs(180), || {
            let records =
                common::read_committed(&changelog, USERS, Duration::ZERO, Duration::from_secs(3));
            records.iter().map(|r| &r.key).collect::<std::collections::BTreeSet<_>>().len() == USERS
        }),
        "the engine did not load the population\n{}",
        common::tail(&path("engine.log"), 20)
    );

    let id = "dashboard-ab";
    api.create(&campaign(id));
    assert!(
        poll_until(Duration::from_secs(30), || api.get(&format!("/campaigns/{id}")).is_some()),
        "the campaign is not listed"
    );
    // The test audience (80 users, alternately A and B), then, once the winner is declared,
    // everyone else (all of them get the winner). A triggered test gives each user partition
    // an equal share (users beyond it wait for the winner): the test audience is the first 40
    // users of each of the 2 partitions of the events topic.
    let ping_users = |users: Vec<usize>| {
        let now = common::now_ms();
        common::produce(&topic("events"), users.iter().map(|i| ping(&format!("user-{i}"), now)));
    };
    let (mut tested, mut rest) = (Vec::new(), Vec::new());
    let mut shares = [0; 2];
    for i in 0..USERS {
        let partition = partition_for(format!("user-{i}").as_bytes(), 2) as usize;
        shares[partition] += 1;
        if shares[partition] <= AUDIENCE / 2 { &mut tested } else { &mut rest }.push(i);
    }
    ping_users(tested);
    let logs = || {
        ["sim", "engine", "sender", "api"]
            .iter()
            .map(|name| format!("--- {name}\n{}", common::tail(&path(&format!("{name}.log")), 12)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let stats = |api: &Api| api.get(&format!("/campaigns/{id}/stats")).unwrap_or(Value::Null);
    let mut winner = None;
    assert!(
        poll_until(Duration::from_secs(180), || {
            winner = winner_declared(&topic("campaign-events"));
            winner.is_some()
        }),
        "no winner declared: {}\n{}",
        stats(&api),
        logs()
    );
    let (winner_id, p_value) = winner.unwrap();
    assert_eq!(winner_id, "B", "B is clicked 30 times as often as A");
    ping_users(rest);

    // Every user sent to and delivered: A to half the test audience, B to everyone else.
    let count = |stats: &Value, variant: &str, key: &str| -> i64 {
        stats["variants"].as_array().map_or(0, |vs| {
            vs.iter()
                .filter(|v| v["variant_id"] == variant)
                .map(|v| v[key].as_i64().unwrap_or(0))
                .sum()
        })
    };
    let expected_sent = [("A", AUDIENCE / 2), ("B", USERS - AUDIENCE / 2)];
    let done = poll_until(Duration::from_secs(120), || {
        let s = stats(&api);
        expected_sent.iter().all(|(variant, n)| {
            count(&s, variant, "sent") == *n as i64 && count(&s, variant, "delivered") == *n as i64
        })
    });
    assert!(done, "not every user delivered: {}\n{}", stats(&api), logs());
    // The engine counts the users given each variant (each user has one device here).
    let s = stats(&api);
    for (variant, n) in expected_sent {
        assert_eq!(count(&s, variant, "qualified"), n as i64, "{variant} qualified: {s}");
    }

    // The browser: sign in with the read token and open the campaign.
    let driver_port = free_port();
    let _driver = Chromedriver::start(driver_port, &path("chromedriver.log"));
    let screenshot = repo().join(".local/dashboard-browser.png");
    runtime.block_on(async {
        let capabilities = json!({
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"]
            }
        });
        let webdriver = format!("http://127.0.0.1:{driver_port}");
        let mut browser = None;
        let started = Instant::now();
        while browser.is_none() && started.elapsed() < Duration::from_secs(30) {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.as_object().unwrap().clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => browser = Some(client),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let browser = browser.expect("a Chromium session through chromedriver");
        browser.goto(&api.origin).await.unwrap();
        browser.wait().for_element(Locator::Id("token")).await.unwrap();
        browser.find(Locator::Id("token")).await.unwrap().send_keys(READ_TOKEN).await.unwrap();
        browser.find(Locator::Css("#login button")).await.unwrap().click().await.unwrap();
        // The list is drawn again at each change: a link found may be gone when clicked.
        let link = format!("#campaigns tr[data-campaign-id='{id}'] a");
        let started = Instant::now();
        loop {
            let clicked = match browser.wait().for_element(Locator::Css(&link)).await {
                Ok(element) => element.click().await.is_ok(),
                Err(_) => false,
            };
            if clicked {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "could not open the campaign");
        }

        // The page shows what the API reports, once its next poll has them.
        // (The API's figures are read again each time: views and clicks may still come in.)
        let mut expected = stats(&api);
        let mut shown = String::new();
        let started = Instant::now();
        let mut matches = false;
        while !matches && started.elapsed() < Duration::from_secs(30) {
            expected = stats(&api);
            let mut all = true;
            shown.clear();
            for variant in expected["variants"].as_array().unwrap() {
                let name = variant["variant_id"].as_str().unwrap();
                for step in ["sent", "delivered", "impressions", "clicks"] {
                    let on_page = cell(&browser, name, step).await;
                    shown.push_str(&format!("{name}.{step}={on_page:?} "));
                    all &= on_page == variant[step].as_i64();
                }
            }
            all &= cell(&browser, "all", "sent").await == Some(USERS as i64);
            all &= cell(&browser, "A", "sent").await == Some((AUDIENCE / 2) as i64);
            all &= cell(&browser, "all", "qualified").await == expected["qualified"].as_i64();
            // Per variant, the users given it: half the test audience A, everyone else B.
            all &= cell(&browser, "A", "qualified").await == Some((AUDIENCE / 2) as i64);
            all &= cell(&browser, "B", "qualified").await == Some((USERS - AUDIENCE / 2) as i64);
            all &= text(&browser, "ab-winner").await == winner_id;
            // The chart's line of B ends at its sends.
            let chart = text(&browser, "chart").await;
            all &= chart.contains(&format!("B: {}", USERS - AUDIENCE / 2));
            let shown_p = text(&browser, "ab-p-value").await;
            all &= p_value.as_ref().is_none_or(|p| shown_p == *p);
            matches = all;
            if !matches {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
        std::fs::write(&screenshot, browser.screenshot().await.unwrap()).unwrap();
        assert!(
            matches,
            "the page shows {shown}winner {:?}, the API {expected} and winner {winner_id}",
            text(&browser, "ab-winner").await
        );
        // A read token sees no admin buttons.
        assert!(!browser.find(Locator::Id("actions")).await.unwrap().is_displayed().await.unwrap());

        // The page follows the API's event stream, so it does not poll; a pause sent through
        // the API from outside the page shows on it without a reload.
        assert_eq!(live_mode(&browser).await, "live");
        api.command(id, "pause");
        let started = Instant::now();
        let mut shown = String::new();
        while shown != "paused" && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            shown = text(&browser, "campaign-status").await;
        }
        assert_eq!(shown, "paused", "the page did not follow the pause");
        assert_eq!(live_mode(&browser).await, "live");

        // The stream drops with the API: the page falls back to polling. The API back, it
        // follows the stream again, and a resume sent through the API shows.
        drop(api_process.take());
        assert!(wait_for_mode(&browser, "polling").await, "the page did not notice the drop");
        api_process = Some(start_api("api-again.log"));
        assert!(wait_for_mode(&browser, "live").await, "the page did not reconnect");
        api.command(id, "resume");
        let started = Instant::now();
        while shown != "active" && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            shown = text(&browser, "campaign-status").await;
        }
        assert_eq!(shown, "active", "the page did not follow the resume");

        // An admin token does: Pause, then Resume, change the campaign's status.
        browser.find(Locator::Id("sign-out")).await.unwrap().click().await.unwrap();
        browser.find(Locator::Id("token")).await.unwrap().send_keys(ADMIN_TOKEN).await.unwrap();
        browser.find(Locator::Css("#login button")).await.unwrap().click().await.unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let actions = browser.find(Locator::Id("actions")).await.unwrap();
            if actions.is_displayed().await.unwrap() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (command, status) in [("pause", "paused"), ("resume", "active")] {
            let button = format!("#actions button[data-command='{command}']");
            browser.wait().for_element(Locator::Css(&button)).await.unwrap().click().await.unwrap();
            let started = Instant::now();
            let mut shown = String::new();
            while started.elapsed() < Duration::from_secs(30) {
                shown = text(&browser, "campaign-status").await;
                let listed = api.get(&format!("/campaigns/{id}")).unwrap_or_default();
                if shown == status && listed["status"] == status {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert_eq!(shown, status, "after {command}: {}", text(&browser, "action-result").await);
        }
        browser.close().await.unwrap();
    });
    println!("screenshot: {}", screenshot.display());
}
