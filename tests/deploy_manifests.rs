//! The operator-facing files agree with the code: the Grafana dashboard, the alert rules and the
//! metrics reference name only metrics the engine and the senders register; the alert rules pass
//! `promtool` (when installed: `make bootstrap` installs it); the Kubernetes and Compose manifests
//! match `topologies/default.toml` and use only flags and environment variables that the CLI has;
//! the configuration reference in `docs/operations.md` is the CLI's own help
//! (`UPDATE_GENERATED=1 cargo test --test deploy_manifests` rewrites it). No broker is needed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use herald_engine::{
    runtime::RuntimeMetrics, sender::config::SenderConfig, sender::metrics::SenderMetrics,
    topology::TopologyFile,
};
use serde_norway::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Every YAML document of a file (a stream of documents separated by `---` lines).
fn yaml_documents(path: &str) -> Vec<Value> {
    let text = read(path);
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            documents.push(String::new());
        } else {
            let last = documents.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    documents
        .iter()
        .map(|document| serde_norway::from_str(document).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|value: &Value| !value.is_null())
        .collect()
}

fn topology() -> TopologyFile {
    TopologyFile::load(&root().join("topologies/default.toml")).expect("the default topology")
}

// --- metrics -----------------------------------------------------------------------------

/// The metric families the engine and a sender export, as their `/metrics` shows them once
/// every labelled metric has a sample, plus the processors' counters (registered on first use;
/// declared as `ProcessorCounter` statics, found in the source).
fn registered_metrics() -> BTreeSet<String> {
    let runtime = RuntimeMetrics::new();
    for vec in [
        &runtime.records_in,
        &runtime.records_out,
        &runtime.changelog_out,
        &runtime.restored_records,
        &runtime.dead_letters,
    ] {
        vec.with_label_values(&["x"]).inc();
    }
    runtime.record_age_seconds.with_label_values(&["x"]).observe(0.1);
    runtime.store_keys.with_label_values(&["x", "0"]).set(1);
    runtime.consumer_lag.with_label_values(&["x", "0"]).set(1);
    let sender = SenderMetrics::new();
    sender.sends.with_label_values(&["apns", "accepted"]).inc();
    sender.latency.with_label_values(&["apns"]).observe(0.1);
    for vec in [&sender.retries, &sender.credential_refreshes, &sender.unknown_outcomes] {
        vec.with_label_values(&["apns"]).inc();
    }
    sender.parked.with_label_values(&["shop", "apns"]).set(1);
    sender.consumer_lag.with_label_values(&["0"]).set(1);
    let api = herald_engine::api::ApiMetrics::new();
    api.observe("/x", "GET", 401, std::time::Duration::ZERO);
    herald_engine::query::round_trips().with_label_values(&["x", "answered"]).observe(0.0);
    let mut names: BTreeSet<String> = [runtime.render(), sender.render(), api.render()]
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect();
    names.extend(processor_counters(&root().join("engine/src")));
    // Metrics kept in the default registry (the query clients' rejected replies, round trips).
    herald_engine::query::sign::rejected_replies();
    names.extend(prometheus::default_registry().gather().iter().map(|f| f.name().to_string()));
    names
}

/// `herald_runtime_<name>` of every `ProcessorCounter` declared under `dir`.
fn processor_counters(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            found.extend(processor_counters(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let text = std::fs::read_to_string(&path).expect("source file");
            for declaration in text.split("ProcessorCounter = ProcessorCounter {").skip(1) {
                let name = declaration
                    .split_once("name: \"")
                    .and_then(|(_, after)| after.split_once('"'))
                    .map(|(name, _)| name)
                    .unwrap_or_else(|| {
                        panic!("{}: a ProcessorCounter without a name", path.display())
                    });
                found.push(format!("herald_runtime_{name}"));
            }
        }
    }
    found
}

/// The Herald metric names a PromQL expression (or any text) mentions, as written
/// (`…_bucket`, `…_sum` and `…_count` included).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(found) = text[start..].find("herald_") {
        let begin = start + found;
        let preceded =
            begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
        let end = text[begin..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |length| begin + length);
        if !preceded && !text[begin..end].ends_with('_') {
            names.insert(text[begin..end].to_string());
        }
        start = end;
    }
    names
}

/// Whether `name` is a registered family or a histogram's series of one.
fn is_registered(name: &str, registered: &BTreeSet<String>) -> bool {
    registered.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|family| registered.contains(family))
        })
}

/// The PromQL expressions of the dashboard's panels and template variables.
fn dashboard_expressions() -> Vec<String> {
    fn collect(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "definition", serde_json::Value::String(text)) => {
                            out.push(text.clone())
                        }
                        _ => collect(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| collect(item, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/herald-dashboard.json"))
            .expect("dashboard JSON");
    let mut expressions = Vec::new();
    collect(&dashboard, &mut expressions);
    expressions
}

/// (alert name, expression) of every rule in the alert rules file.
fn alert_rules() -> Vec<(String, String)> {
    let file: Value = serde_norway::from_str(&read("deploy/prometheus/herald-alerts.yml")).unwrap();
    let mut rules = Vec::new();
    for group in file["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let alert = rule["alert"].as_str().expect("every rule is an alert").to_string();
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "alert {alert} has no severity label"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    rule["annotations"][annotation].as_str().is_some(),
                    "alert {alert} has no {annotation}"
                );
            }
            rules.push((alert, rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    rules
}

#[test]
fn dashboard_rules_and_docs_name_only_registered_metrics() {
    let registered = registered_metrics();
    let expressions = dashboard_expressions();
    let rules = alert_rules();
    let sources = [
        ("deploy/grafana/herald-dashboard.json", expressions.join("\n")),
        ("deploy/prometheus/herald-alerts.yml", rules.iter().map(|(_, e)| e.as_str()).collect()),
        ("docs/operations.md", read("docs/operations.md")),
    ];
    for (file, text) in &sources {
        let unknown: Vec<_> =
            metric_names_in(text).into_iter().filter(|n| !is_registered(n, &registered)).collect();
        assert!(unknown.is_empty(), "{file} names metrics nobody registers: {unknown:?}");
    }
    // The dashboard covers what an SRE looks at first.
    let dashboard = metric_names_in(&sources[0].1);
    for needed in [
        "herald_runtime_records_in_total",
        "herald_runtime_consumer_lag",
        "herald_runtime_commit_seconds_bucket",
        "herald_runtime_restoring_tasks",
        "herald_runtime_restored_records_total",
        "herald_runtime_dead_letters_total",
        "herald_runtime_ingest_rejected_total",
        "herald_sender_sends_total",
        "herald_sender_provider_latency_seconds_bucket",
        "herald_sender_consumer_lag",
    ] {
        assert!(dashboard.contains(needed), "the dashboard shows no {needed}");
    }
    let alerts: BTreeSet<_> = rules.iter().map(|(alert, _)| alert.as_str()).collect();
    for needed in
        ["HeraldEngineDown", "HeraldEngineLagGrowing", "HeraldDeadLetters", "HeraldRestoreStuck"]
    {
        assert!(alerts.contains(needed), "no alert {needed}");
    }
    // Every registered metric is in the metrics reference.
    let documented = metric_names_in(&read("docs/operations.md"));
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    assert!(undocumented.is_empty(), "docs/operations.md does not describe {undocumented:?}");
}

#[test]
fn alert_rules_and_prometheus_config_pass_promtool() {
    assert!(!alert_rules().is_empty());
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        println!(
            "promtool is not installed (make bootstrap installs it): the rules were parsed only"
        );
        return;
    }
    let dir = root().join("deploy/prometheus");
    for args in [
        &["check", "rules", "herald-alerts.yml"][..],
        &["test", "rules", "herald-alerts.test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let output = Command::new("promtool").args(args).current_dir(&dir).output().unwrap();
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// --- manifests and the topology ---------------------------------------------------------------

/// The Kubernetes documents of every file under deploy/k8s, by kind.
fn k8s_documents() -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    files.sort();
    files.iter().flat_map(|name| yaml_documents(&format!("deploy/k8s/{name}"))).collect()
}

fn of_kind<'d>(documents: &'d [Value], kind: &str) -> Vec<&'d Value> {
    documents.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

fn named<'d>(documents: &'d [Value], kind: &str, name: &str) -> &'d Value {
    of_kind(documents, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

fn strings(value: &Value) -> Vec<String> {
    value.as_sequence().map_or_else(Vec::new, |items| {
        items.iter().map(|item| item.as_str().expect("a string").to_string()).collect()
    })
}

/// The value of `--name=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().find_map(|arg| arg.strip_prefix(&format!("--{name}=")))
}

/// Set to rewrite the generated parts (`deploy/k8s/kafka-topics.yaml`, the topology and app
/// settings in `deploy/k8s/config.yaml`, the configuration reference) instead of failing.
const UPDATE: &str = "UPDATE_GENERATED";

/// Writes `content` to `path` when [`UPDATE`] is set, else fails: `path` is out of date.
fn regenerate(path: &str, content: &str) {
    if std::env::var_os(UPDATE).is_none() {
        panic!(
            "{path} is out of date: run `{UPDATE}=1 cargo test --test deploy_manifests` and \
             commit the result"
        );
    }
    std::fs::write(root().join(path), content).unwrap();
    println!("rewrote {path}");
}

/// `deploy/k8s/kafka-topics.yaml`: a Strimzi KafkaTopic per topic of the topology.
fn kafka_topics_yaml(file: &TopologyFile) -> String {
    let mut out = String::from(
        "# Herald's topics as Strimzi KafkaTopic resources, generated from topologies/default.toml\n\
         # by tests/deploy_manifests.rs (UPDATE_GENERATED=1 cargo test --test deploy_manifests).\n\
         # The label strimzi.io/cluster names the Kafka cluster; replicas follow the topology's\n\
         # replication_factor (raise both for production). Changelogs are created by the engine,\n\
         # herald.send-intents by the senders.\n",
    );
    let documents: Vec<String> = file
        .topology
        .topics
        .iter()
        .map(|topic| {
            let mut doc = format!(
                "apiVersion: kafka.strimzi.io/v1beta2\nkind: KafkaTopic\nmetadata:\n  name: {}\n  \
                 labels:\n    strimzi.io/cluster: kafka\n  annotations:\n    description: {}\n\
                 spec:\n  topicName: {}\n  partitions: {}\n  replicas: {}\n  config:\n    \
                 cleanup.policy: \"{}\"\n",
                topic.name.replace('.', "-"),
                serde_json::to_string(&topic.description).unwrap(),
                topic.name,
                topic.partitions,
                file.topology.replication_factor,
                topic.cleanup_policy.as_config(),
            );
            if let Some(retention) = topic.retention_ms {
                doc.push_str(&format!("    retention.ms: {retention}\n"));
            }
            for (key, value) in &topic.configs {
                doc.push_str(&format!("    {key}: {}\n", serde_json::to_string(value).unwrap()));
            }
            doc
        })
        .collect();
    out.push_str(&documents.join("---\n"));
    out
}

/// `text` with the literal block under `key: |` (indented by `indent`) replaced by `content`.
fn replace_block(text: &str, key: &str, indent: usize, content: &str) -> String {
    let header = format!("{key}: |\n");
    let start = text.find(&header).unwrap_or_else(|| panic!("no block {key}")) + header.len();
    let prefix = " ".repeat(indent);
    let end = text[start..]
        .split_inclusive('\n')
        .take_while(|line| line.starts_with(&prefix) || line.trim().is_empty())
        .map(str::len)
        .sum::<usize>()
        + start;
    let block: String = content
        .lines()
        .map(|line| if line.is_empty() { "\n".to_string() } else { format!("{prefix}{line}\n") })
        .collect();
    format!("{}{block}{}", &text[..start], &text[end..])
}

#[test]
fn generated_manifests_are_current() {
    let file = topology();
    let topics = kafka_topics_yaml(&file);
    if read("deploy/k8s/kafka-topics.yaml") != topics {
        regenerate("deploy/k8s/kafka-topics.yaml", &topics);
    }
    let config = read("deploy/k8s/config.yaml");
    let current = replace_block(
        &replace_block(&config, "  default.toml", 4, &read("topologies/default.toml")),
        "  apps.yaml",
        4,
        &read("examples/apps.yaml"),
    );
    if config != current {
        regenerate("deploy/k8s/config.yaml", &current);
    }
}

#[test]
fn kubernetes_manifests_match_the_topology() {
    let documents = k8s_documents();
    let file = topology();
    // Strimzi topics: one per topology topic, same partitions, replicas and configs.
    let topics = of_kind(&documents, "KafkaTopic");
    let declared: BTreeSet<_> =
        topics.iter().map(|t| t["spec"]["topicName"].as_str().unwrap()).collect();
    let expected: BTreeSet<_> = file.topology.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(declared, expected, "deploy/k8s/kafka-topics.yaml vs topologies/default.toml");
    for spec in &file.topology.topics {
        let topic =
            topics.iter().find(|t| t["spec"]["topicName"].as_str() == Some(&spec.name)).unwrap();
        let spec_of = &topic["spec"];
        assert_eq!(
            spec_of["partitions"].as_i64(),
            Some(i64::from(spec.partitions)),
            "{}",
            spec.name
        );
        assert_eq!(spec_of["replicas"].as_i64(), Some(i64::from(file.topology.replication_factor)));
        assert_eq!(
            spec_of["config"]["cleanup.policy"].as_str(),
            Some(spec.cleanup_policy.as_config())
        );
        assert_eq!(spec_of["config"]["retention.ms"].as_i64(), spec.retention_ms, "{}", spec.name);
    }
    // The ConfigMaps hold the current topology and app settings.
    let data = |name: &str, key: &str| {
        named(&documents, "ConfigMap", name)["data"][key].as_str().unwrap().to_string()
    };
    assert_eq!(data("herald-topology", "default.toml"), read("topologies/default.toml"));
    assert_eq!(data("herald-apps", "apps.yaml"), read("examples/apps.yaml"));
    let brokers = data("herald", "brokers");

    // Engine: a StatefulSet, its pod name as instance id, state on its persistent volume.
    let engine = named(&documents, "StatefulSet", "herald-engine");
    let pod = &engine["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    let claims: Vec<_> = engine["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .expect("the engine has a volume claim template")
        .iter()
        .map(|claim| claim["metadata"]["name"].as_str().unwrap())
        .collect();
    let state_dir = flag(&args, "state-dir").expect("--state-dir");
    let mounted = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|mount| mount["mountPath"].as_str() == Some(state_dir));
    let mounted = mounted.unwrap_or_else(|| panic!("nothing mounted at the engine's {state_dir}"));
    assert!(claims.contains(&mounted["name"].as_str().unwrap()), "the state dir is not the claim");
    assert_eq!(env_from_field(container, "HERALD_INSTANCE_ID"), Some("metadata.name"));
    let inputs = file.topology.topic("herald.events").unwrap().partitions;
    let replicas = engine["spec"]["replicas"].as_i64().unwrap();
    assert!(replicas <= i64::from(inputs), "{replicas} engines for {inputs} input partitions");
    assert_eq!(flag(&args, "topology"), Some("/etc/herald/topology/default.toml"));

    // Senders: scaled by KEDA on their group's lag on herald.push, never past its partitions.
    let sender = named(&documents, "Deployment", "herald-sender");
    let sender_args = strings(&sender["spec"]["template"]["spec"]["containers"][0]["args"]);
    let scaled = named(&documents, "ScaledObject", "herald-sender");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"].as_str(), Some("herald-sender"));
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("kafka"));
    assert_eq!(trigger["metadata"]["topic"].as_str(), Some("herald.push"));
    assert_eq!(trigger["metadata"]["consumerGroup"].as_str(), flag(&sender_args, "group"));
    assert_eq!(trigger["metadata"]["bootstrapServers"].as_str(), Some(brokers.as_str()));
    let push = file.topology.topic("herald.push").unwrap().partitions;
    assert!(scaled["spec"]["maxReplicaCount"].as_i64().unwrap() <= i64::from(push));
    let secret = named(&documents, "Secret", "herald-sender");
    SenderConfig::parse(secret["stringData"]["senders.yaml"].as_str().unwrap(), "herald-sender")
        .expect("the sender configuration in deploy/k8s/senders.yaml");

    // Every pod runs as a non-root user; the monitors give the jobs the alert rules expect.
    for workload in ["StatefulSet", "Deployment", "Job"].iter().flat_map(|k| of_kind(&documents, k))
    {
        let context = &workload["spec"]["template"]["spec"]["securityContext"];
        assert_eq!(context["runAsNonRoot"].as_bool(), Some(true), "{:?}", workload["metadata"]);
    }
    for job in ["herald-engine", "herald-sender", "herald-api"] {
        named(&documents, "ServiceMonitor", job);
        named(&documents, "Service", job);
    }
    // The API serves /metrics, /healthz and /readyz on its --metrics-addr: the Service names
    // that port `metrics` (the monitor's), and the probes ask it.
    let api = named(&documents, "Deployment", "herald-api");
    let container = &api["spec"]["template"]["spec"]["containers"][0];
    let metrics_addr = flag(&strings(&container["args"]), "metrics-addr").map(str::to_string);
    let port: i64 = metrics_addr
        .expect("herald api --metrics-addr")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let declared =
        container["ports"].as_sequence().unwrap().iter().find(|p| p["name"] == "metrics");
    assert_eq!(declared.and_then(|p| p["containerPort"].as_i64()), Some(port));
    let service =
        named(&documents, "Service", "herald-api")["spec"]["ports"].as_sequence().unwrap();
    assert!(service.iter().any(|p| p["name"] == "metrics" && p["targetPort"] == "metrics"));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!((get["path"].as_str(), get["port"].as_str()), (Some(path), Some("metrics")));
    }
    // The kustomization lists every file.
    let kustomization: Value =
        serde_norway::from_str(&read("deploy/k8s/kustomization.yaml")).unwrap();
    let listed: BTreeSet<_> = strings(&kustomization["resources"]).into_iter().collect();
    for entry in std::fs::read_dir(root().join("deploy/k8s")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "kustomization.yaml" || listed.contains(&name),
            "{name} is not in the kustomization"
        );
    }
}

/// The `fieldRef` an environment variable of `container` comes from.
fn env_from_field<'c>(container: &'c Value, name: &str) -> Option<&'c str> {
    container["env"].as_sequence()?.iter().find(|env| env["name"].as_str() == Some(name))?
        ["valueFrom"]["fieldRef"]["fieldPath"]
        .as_str()
}

/// deploy/compose/compose.yaml with its `<<:` merge keys applied.
fn compose() -> Value {
    let mut compose: Value = serde_norway::from_str(&read("deploy/compose/compose.yaml")).unwrap();
    compose.apply_merge().expect("merge keys");
    compose
}

#[test]
fn compose_matches_the_topology_and_the_prometheus_jobs() {
    let compose: Value = compose();
    let services = &compose["services"];
    for needed in ["kafka", "topics", "sim", "engine", "sender", "api", "prometheus"] {
        assert!(!services[needed].is_null(), "compose has no service {needed}");
    }
    let command = |service: &str| strings(&services[service]["command"]);
    assert_eq!(command("topics")[..2], ["topics".to_string(), "apply".to_string()]);
    let topology_path = flag(&command("topics"), "topology").map(str::to_string);
    assert_eq!(topology_path.as_deref(), flag(&command("engine"), "topology"));
    assert_eq!(topology_path.as_deref(), Some("topologies/default.toml"), "the image's copy");
    // The engine's state is on a volume.
    let engine = command("engine");
    let state_dir = flag(&engine, "state-dir").unwrap();
    let volumes = strings(&services["engine"]["volumes"]);
    assert!(volumes.iter().any(|v| v.ends_with(&format!(":{state_dir}"))), "{volumes:?}");
    // Prometheus scrapes the engine and the sender at their metrics addresses.
    let prometheus: Value =
        serde_norway::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    let targets: BTreeMap<String, Vec<String>> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|job| {
            let targets = job["static_configs"][0]["targets"].clone();
            (job["job_name"].as_str().unwrap().to_string(), strings(&targets))
        })
        .collect();
    let port = |service: &str| {
        flag(&command(service), "metrics-addr").unwrap().rsplit(':').next().unwrap().to_string()
    };
    assert_eq!(targets["herald-engine"], [format!("engine:{}", port("engine"))]);
    // The sender shares the simulator's network namespace (its certificate names 127.0.0.1).
    assert_eq!(services["sender"]["network_mode"].as_str(), Some("service:sim"));
    assert_eq!(targets["herald-sender"], [format!("sim:{}", port("sender"))]);
    // The API's token-free metrics address is scraped too.
    assert_eq!(targets["herald-api"], [format!("api:{}", port("api"))]);
    SenderConfig::parse(&read("deploy/compose/senders.yaml"), "deploy/compose/senders.yaml")
        .expect("deploy/compose/senders.yaml");
}

#[test]
fn dockerfile_builds_in_stages_and_runs_as_a_non_root_user() {
    let dockerfile = read("Dockerfile");
    let stages = dockerfile.lines().filter(|line| line.starts_with("FROM ")).count();
    assert!(stages >= 2, "a multi-stage build");
    let user = dockerfile.lines().rev().find_map(|line| line.strip_prefix("USER ")).expect("USER");
    let uid = user.split(':').next().unwrap().trim();
    assert!(uid != "0" && uid != "root", "runs as {uid}");
    // The defaults the subcommands read relative to the working directory are in the image.
    for path in ["topologies", "examples"] {
        assert!(dockerfile.contains(&format!("COPY {path} ")), "the image lacks {path}/");
    }
}

#[test]
fn dockerfile_bases_are_upstream_by_default_and_replaceable_by_the_local_stand_ins() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().collect();
    let first_from = lines.iter().position(|line| line.starts_with("FROM ")).unwrap();
    // `ARG NAME=default` before the first FROM: the images every stage may start from.
    let bases: BTreeMap<&str, &str> = lines[..first_from]
        .iter()
        .filter_map(|line| line.strip_prefix("ARG ")?.split_once('='))
        .collect();
    assert_eq!(
        bases,
        BTreeMap::from([
            ("RUNTIME_IMAGE", "debian:bookworm-slim"),
            ("RUST_IMAGE", "rust:1-bookworm")
        ])
    );
    for line in lines.iter().filter(|line| line.starts_with("FROM ")) {
        let image = line["FROM ".len()..].split_whitespace().next().unwrap();
        let arg = image.strip_prefix("${").and_then(|rest| rest.strip_suffix('}'));
        assert!(arg.is_some_and(|arg| bases.contains_key(arg)), "{line}: not a base argument");
    }
    // The stand-ins script selects the bases by those names, and `make image` runs the build
    // script (which runs it); nothing else in the Makefile touches deploy/image.
    let stand_ins = read("deploy/image/stand-ins.sh");
    for name in bases.keys() {
        assert!(stand_ins.contains(&format!("--build-arg {name}=")), "stand-ins.sh lacks {name}");
    }
    let makefile = read("Makefile");
    let image_uses: Vec<&str> =
        makefile.lines().filter(|line| line.contains("deploy/image/")).collect();
    assert_eq!(image_uses, ["\t@deploy/image/build.sh"]);
    let recipe = makefile.split("\nimage:").nth(1).expect("an image target");
    assert_eq!(recipe.lines().nth(1), Some("\t@deploy/image/build.sh"));
    for script in ["bootstrap", "stand-ins", "build", "smoke"] {
        let path = root().join(format!("deploy/image/{script}.sh"));
        let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            syntax.status.success(),
            "{script}.sh: {}",
            String::from_utf8_lossy(&syntax.stderr)
        );
    }
    // The build context leaves out build output, local state and the repository's history.
    let dockerignore = read(".dockerignore");
    for path in ["target", ".local", ".git"] {
        assert!(dockerignore.lines().any(|line| line == path), ".dockerignore lacks {path}");
    }
}

// --- the CLI: flags in the manifests, the configuration reference ------------------------------

/// One option or argument of a subcommand, from its `--help`.
#[derive(Debug, Clone, PartialEq)]
struct CliOption {
    /// `--app-id <APP_ID>`, `<FILES>...`.
    spec: String,
    description: String,
    default: Option<String>,
    env: Option<String>,
}

impl CliOption {
    /// `--app-id` (or the argument's spec).
    fn name(&self) -> &str {
        self.spec.split([' ', ',']).find(|part| part.starts_with("--")).unwrap_or(&self.spec)
    }
}

/// A subcommand's help: its summary, options and subcommands.
struct Help {
    text: String,
    options: Vec<CliOption>,
    subcommands: Vec<String>,
}

fn help(path: &[&str]) -> Help {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(path)
        .arg("--help")
        .env("COLUMNS", "1000")
        .output()
        .expect("running herald --help");
    assert!(output.status.success(), "herald {} --help failed", path.join(" "));
    let text = String::from_utf8(output.stdout).unwrap();
    let (mut options, mut subcommands) = (Vec::new(), Vec::new());
    let mut section = "";
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match section {
            "Commands:" => {
                let name = trimmed.split_whitespace().next().unwrap();
                if name != "help" {
                    subcommands.push(name.to_string());
                }
            }
            "Options:" | "Arguments:" if indent <= 6 => {
                let (spec, description) = trimmed.split_once("  ").unwrap_or((trimmed, ""));
                options.push(CliOption {
                    spec: spec.to_string(),
                    description: description.trim().to_string(),
                    default: None,
                    env: None,
                });
            }
            "Options:" | "Arguments:" => {
                let last = options.last_mut().expect("a description after its option");
                if !last.description.is_empty() {
                    last.description.push(' ');
                }
                last.description
                    .push_str(&trimmed.split_whitespace().collect::<Vec<_>>().join(" "));
            }
            _ => {}
        }
    }
    for option in &mut options {
        // Trailing `[env: NAME=value]`, `[default: x]`, `[possible values: …]`.
        while option.description.ends_with(']') {
            let Some(open) = option
                .description
                .rfind(" [")
                .or_else(|| option.description.starts_with('[').then_some(0))
            else {
                break;
            };
            let note =
                option.description[open..].trim().trim_start_matches('[').trim_end_matches(']');
            let note = note.to_string();
            let kept = option.description[..open].trim_end().to_string();
            if let Some(env) = note.strip_prefix("env: ") {
                option.env = Some(env.split('=').next().unwrap().to_string());
            } else if let Some(default) = note.strip_prefix("default: ") {
                option.default = Some(default.to_string());
            } else if let Some(values) = note.strip_prefix("possible values: ") {
                option.description = format!("{kept} (one of: {values})");
                break;
            } else {
                break;
            }
            option.description = kept;
        }
    }
    Help { text, options, subcommands }
}

/// Every subcommand path with subcommands of its own expanded: [["topics", "apply"], …].
fn leaf_commands(path: Vec<String>) -> Vec<Vec<String>> {
    let refs: Vec<&str> = path.iter().map(String::as_str).collect();
    let help = help(&refs);
    if help.subcommands.is_empty() {
        return vec![path];
    }
    help.subcommands
        .iter()
        .flat_map(|sub| {
            let mut child = path.clone();
            child.push(sub.clone());
            leaf_commands(child)
        })
        .collect()
}

const BEGIN: &str = "<!-- BEGIN configuration reference: generated from `herald … --help` by \
                     `UPDATE_GENERATED=1 cargo test --test deploy_manifests`; do not edit -->";
const END: &str = "<!-- END configuration reference -->";

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The configuration reference: the global options, then a table per subcommand.
fn configuration_reference() -> String {
    let global = help(&[]);
    let is_global = |option: &CliOption| {
        global.options.iter().any(|g| g.spec == option.spec) || option.name() == "--help"
    };
    let mut out = format!("{BEGIN}\n\n");
    out.push_str("Every subcommand also takes the global options:\n\n");
    out.push_str("| option | default | environment | meaning |\n|---|---|---|---|\n");
    let row = |option: &CliOption| {
        format!(
            "| `{}` | {} | {} | {} |\n",
            cell(&option.spec),
            option.default.as_deref().map_or(String::new(), |d| match d {
                "" => "`\"\"`".to_string(),
                d => format!("`{}`", cell(d)),
            }),
            option.env.as_deref().map_or(String::new(), |e| format!("`{e}`")),
            cell(&option.description)
        )
    };
    for option in global.options.iter().filter(|o| !matches!(o.name(), "--help" | "--version")) {
        out.push_str(&row(option));
    }
    for path in leaf_commands(Vec::new()) {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        let help = help(&refs);
        let summary = help.text.lines().next().unwrap_or_default();
        out.push_str(&format!("\n#### `herald {}`\n\n{}\n", path.join(" "), summary));
        let own: Vec<_> = help.options.iter().filter(|o| !is_global(o)).collect();
        if own.is_empty() {
            out.push_str("\nNo options of its own.\n");
            continue;
        }
        out.push_str("\n| option | default | environment | meaning |\n|---|---|---|---|\n");
        for option in own {
            out.push_str(&row(option));
        }
    }
    out.push_str(&format!("\n{END}"));
    out
}

#[test]
fn operations_doc_holds_the_current_configuration_reference() {
    let doc = read("docs/operations.md");
    let expected = configuration_reference();
    let begin =
        doc.find("<!-- BEGIN configuration reference").expect("the reference's start marker");
    let end = doc.find(END).expect("the reference's end marker") + END.len();
    if doc[begin..end] == expected {
        return;
    }
    regenerate("docs/operations.md", &format!("{}{expected}{}", &doc[..begin], &doc[end..]));
}

/// (subcommand path, arguments, HERALD_* environment variables) of every herald container
/// in deploy/k8s and deploy/compose.
fn herald_invocations() -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut found = Vec::new();
    for document in k8s_documents() {
        let Some(containers) = document["spec"]["template"]["spec"]["containers"].as_sequence()
        else {
            continue;
        };
        for container in containers {
            let env: Vec<String> = container["env"]
                .as_sequence()
                .map(|env| env.iter().map(|e| e["name"].as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            let origin = format!("deploy/k8s {}", document["metadata"]["name"].as_str().unwrap());
            found.push((origin, strings(&container["args"]), env));
        }
    }
    let compose: Value = compose();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        if !service["image"].as_str().is_some_and(|image| image.contains("herald")) {
            continue;
        }
        let name = name.as_str().unwrap();
        let env: Vec<String> = service["environment"]
            .as_mapping()
            .map(|env| env.keys().map(|k| k.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let command = strings(&service["command"]);
        if service["entrypoint"].as_sequence().is_some() {
            // A shell line: `herald a … && herald b …`.
            for part in command.join(" ").split("&&") {
                let words: Vec<String> = part.split_whitespace().map(str::to_string).collect();
                assert_eq!(words.first().map(String::as_str), Some("herald"), "compose {name}");
                found.push((format!("compose {name}"), words[1..].to_vec(), env.clone()));
            }
        } else {
            found.push((format!("compose {name}"), command, env));
        }
    }
    found
}

#[test]
fn manifests_use_only_the_cli_s_flags_and_variables() {
    let mut checked = 0;
    for (origin, args, env) in herald_invocations() {
        let path: Vec<&str> =
            args.iter().map(String::as_str).take_while(|arg| !arg.starts_with('-')).collect();
        let path: Vec<&str> = path.into_iter().take(2).collect();
        // The longest prefix that is a command: `topics apply`, or `engine` and its arguments.
        let depth = if help(&path[..1]).subcommands.is_empty() { 1 } else { 2 };
        let help = help(&path[..depth]);
        let flags: BTreeSet<&str> = help.options.iter().map(CliOption::name).collect();
        for arg in args.iter().filter(|arg| arg.starts_with("--")) {
            let name = arg.split('=').next().unwrap();
            assert!(
                flags.contains(name),
                "{origin}: herald {} has no {name}",
                path[..depth].join(" ")
            );
        }
        for variable in env.iter().filter(|v| v.starts_with("HERALD_")) {
            assert!(
                help.text.contains(variable.as_str()),
                "{origin}: herald {} reads no {variable}",
                path[..depth].join(" ")
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} herald containers found");
}
