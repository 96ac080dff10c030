//! Campaign backtesting (`herald replay`): run campaigns over a JSON lines file of profiles and
//! events on event time, with the same operators as the live engine, and write what they would
//! have done. Format in `docs/replay.md`.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use chrono::DateTime;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::{
    campaign::{parse_campaign, ValidationErrors},
    kafka::KafkaConfig,
    model::{
        check_timestamp,
        topics::{self, TopicNames},
        AppEvent, CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, CampaignStats,
        Candidate, DeadLetter, Device, Engagement, IngestDecoder, Platform, ProfileUpdate, Record,
        SchemaRegistry, SendCommand, Skip,
    },
    runtime::{
        replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
        RuntimeError,
    },
    {pipeline::engine_topology, settings::Settings},
};

/// Why a backtest could not run.
#[derive(Debug, Error)]
pub enum BacktestError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A campaign file is invalid.
    #[error(transparent)]
    Campaign(#[from] ValidationErrors),
    /// An input line is malformed.
    #[error("{path}:{line}: {reason}")]
    Input {
        /// The input file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The replay failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What a backtest wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BacktestSummary {
    /// Input lines replayed.
    pub records: u64,
    /// Candidates written to `candidates.jsonl`.
    pub candidates: u64,
    /// Skips written to `skips.jsonl`.
    pub skips: u64,
    /// Engagements written to `engagements.jsonl`.
    pub engagements: u64,
    /// Send commands written to `sends.jsonl`.
    pub sends: u64,
    /// Lifecycle events written to `campaign-events.jsonl`.
    pub campaign_events: u64,
    /// Rejected input: malformed lines and records the engine refused (in
    /// `dead-letters.jsonl`).
    pub dead_letters: u64,
}

/// A backtest to run.
pub struct Backtest {
    /// Campaign files, or directories of `*.yaml`/`*.yml`/`*.json` files.
    pub campaigns: Vec<PathBuf>,
    /// The input JSON lines file.
    pub input: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// App settings (caps, timezone).
    pub settings: Settings,
    /// App of input lines that name none (default: the first campaign's app).
    pub app: Option<String>,
    /// Fire timers due up to this time after the input (default: the last input time).
    pub until_ms: Option<i64>,
    /// Partitions (tasks) per stage, as on the live topics; results do not depend on it.
    pub partitions: i32,
}

impl Backtest {
    /// Runs the backtest, writing `candidates.jsonl`, `skips.jsonl`, `engagements.jsonl`,
    /// `sends.jsonl`, `campaign-events.jsonl`, `stats.json` and `dead-letters.jsonl` into the
    /// output directory. A malformed input line is reported in `dead-letters.jsonl` with its line
    /// number and the other lines are replayed.
    pub fn run(&self) -> Result<BacktestSummary, BacktestError> {
        self.execute(Input::File { strict: false })
    }

    /// Like [`Backtest::run`], but the first malformed input line stops the backtest with
    /// [`BacktestError::Input`] before anything is replayed.
    pub fn run_strict(&self) -> Result<BacktestSummary, BacktestError> {
        self.execute(Input::File { strict: true })
    }

    /// Like [`Backtest::run`], over the records of a cluster's ingest topics instead of the
    /// input file (which is not read), decoded in their formats; records in time order.
    pub fn run_topics(&self, source: &TopicSource) -> Result<BacktestSummary, BacktestError> {
        self.execute(Input::Topics(source))
    }

    fn execute(&self, from: Input<'_>) -> Result<BacktestSummary, BacktestError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| BacktestError::Io { path, source }
        };
        let mut campaigns = Vec::new();
        for path in self.campaign_files()? {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let campaign = parse_campaign(&text, &path.display().to_string())?;
            let definition: Value =
                serde_norway::from_str(&text).map_err(|e| ValidationErrors {
                    source: path.display().to_string(),
                    errors: vec![crate::campaign::FieldError {
                        path: "(document)".into(),
                        reason: e.to_string(),
                    }],
                })?;
            campaigns.push((campaign, definition.to_string()));
        }
        let app = self
            .app
            .clone()
            .or_else(|| campaigns.first().map(|(c, _)| c.app.clone()))
            .unwrap_or_default();
        let (mut records, bad_lines) = match from {
            Input::File { .. } => read_input(&self.input, &app)?,
            Input::Topics(source) => (source.read()?, Vec::new()),
        };
        if let (Input::File { strict: true }, Some(bad)) = (from, bad_lines.first()) {
            return Err(BacktestError::Input {
                path: self.input.display().to_string(),
                line: bad.line,
                reason: bad.reason.clone(),
            });
        }
        let start = records.first().map_or(0, |r| r.timestamp_ms);
        let last = records.last().map_or(0, |r| r.timestamp_ms);
        let registry = SchemaRegistry::builtin();
        let definitions = campaigns.iter().map(|(campaign, definition)| {
            let envelope = CampaignEnvelope {
                campaign_id: campaign.id.clone(),
                app_id: campaign.app.clone(),
                command: CampaignCommand::Define,
                definition: Some(definition.clone()),
                revision: 0,
                issued_at_ms: start,
                issued_by: None,
            };
            registry.encode(&envelope).map(|bytes| ReplayRecord {
                topic: topics::CAMPAIGNS.into(),
                partition: None,
                offset: 0,
                key: Some(campaign.id.clone().into_bytes()),
                value: Some(bytes),
                timestamp_ms: start,
            })
        });
        let mut input: Vec<ReplayRecord> = definitions
            .collect::<Result<_, _>>()
            .map_err(|e| RuntimeError::Topology(e.to_string()))?;
        let replayed = records.len() as u64;
        input.append(&mut records);

        std::fs::create_dir_all(&self.out).map_err(io(&self.out))?;
        let mut writers = Writers::create(&self.out)?;
        for bad in &bad_lines {
            writers.reject_line(&self.input, bad)?;
        }
        let topology = engine_topology(
            "herald-replay",
            TopicNames::default(),
            Arc::new(self.settings.clone()),
            match from {
                Input::File { .. } => IngestDecoder::default(),
                Input::Topics(source) => source.decoder.clone(),
            },
            0,
        )?;
        let options = ReplayOptions {
            fire_timers_until: Some(self.until_ms.unwrap_or(last)),
            partitions: self.partitions.max(1),
            ..ReplayOptions::default()
        };
        let sink =
            ReplaySink::Callback(Box::new(|topic, _key, value, _ts| writers.write(topic, value)));
        replay::run(&topology, ReplayInput::Records(input), sink, &options)?;
        let mut summary = writers.finish()?;
        summary.records = replayed;
        Ok(summary)
    }

    fn campaign_files(&self) -> Result<Vec<PathBuf>, BacktestError> {
        let mut files = Vec::new();
        for path in &self.campaigns {
            if path.is_dir() {
                let io = |source| BacktestError::Io { path: path.display().to_string(), source };
                let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(io)?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                    })
                    .collect();
                found.sort();
                files.extend(found);
            } else {
                files.push(path.clone());
            }
        }
        Ok(files)
    }
}

/// What a backtest replays.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// The input file; `strict`: its first malformed line stops the backtest.
    File { strict: bool },
    /// A cluster's ingest topics.
    Topics(&'a TopicSource),
}

/// The ingest topics of a cluster, as a backtest's input (`herald replay --from-topics`).
pub struct TopicSource {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// The topics' names (events and profiles are read).
    pub topics: TopicNames,
    /// How their records are decoded.
    pub decoder: IngestDecoder,
}

impl TopicSource {
    /// Every record of the events and profiles topics, under the default topic names and
    /// partitioned by key, as the backtest's topology reads them.
    fn read(&self) -> Result<Vec<ReplayRecord>, RuntimeError> {
        let names = [
            (self.topics.events.clone(), topics::EVENTS),
            (self.topics.profiles.clone(), topics::PROFILES),
        ];
        let read: Vec<String> = names.iter().map(|(name, _)| name.clone()).collect();
        let mut records = replay::read_topics(&self.kafka, &read, None, None)?;
        for record in &mut records {
            if let Some((_, default)) = names.iter().find(|(name, _)| *name == record.topic) {
                record.topic = default.to_string();
            }
            record.partition = None;
        }
        Ok(records)
    }
}

/// The output files of a backtest.
struct Writers {
    candidates: BufWriter<File>,
    skips: BufWriter<File>,
    engagements: BufWriter<File>,
    sends: BufWriter<File>,
    campaign_events: BufWriter<File>,
    dead_letters: BufWriter<File>,
    /// Latest stats snapshot per campaign, written to `stats.json` at the end.
    stats: BTreeMap<String, serde_json::Value>,
    summary: BacktestSummary,
    dir: PathBuf,
}

impl Writers {
    fn create(dir: &Path) -> Result<Self, BacktestError> {
        let open = |name: &str| {
            let path = dir.join(name);
            File::create(&path)
                .map(BufWriter::new)
                .map_err(|source| BacktestError::Io { path: path.display().to_string(), source })
        };
        Ok(Self {
            candidates: open("candidates.jsonl")?,
            skips: open("skips.jsonl")?,
            engagements: open("engagements.jsonl")?,
            sends: open("sends.jsonl")?,
            campaign_events: open("campaign-events.jsonl")?,
            dead_letters: open("dead-letters.jsonl")?,
            stats: BTreeMap::new(),
            summary: BacktestSummary::default(),
            dir: dir.to_path_buf(),
        })
    }

    fn write(&mut self, topic: &str, value: &[u8]) -> Result<(), RuntimeError> {
        let registry = SchemaRegistry::builtin();
        let decode_error =
            |e: crate::model::CodecError| RuntimeError::Topology(format!("replay output: {e}"));
        let (name, _) = registry.decode_value(value).map_err(decode_error)?;
        let (file, line, count) = match (topic, name) {
            (topics::CAMPAIGN_FLOW, Candidate::FULL_NAME) => {
                let record: Candidate = registry.decode(value).map_err(decode_error)?;
                (&mut self.candidates, serde_json::to_string(&record), &mut self.summary.candidates)
            }
            (topics::CAMPAIGN_FLOW, Skip::FULL_NAME) => {
                let record: Skip = registry.decode(value).map_err(decode_error)?;
                (&mut self.skips, serde_json::to_string(&record), &mut self.summary.skips)
            }
            (topics::CAMPAIGN_FLOW, Engagement::FULL_NAME) => {
                let record: Engagement = registry.decode(value).map_err(decode_error)?;
                (
                    &mut self.engagements,
                    serde_json::to_string(&record),
                    &mut self.summary.engagements,
                )
            }
            (topics::PUSH, SendCommand::FULL_NAME) => {
                let command: SendCommand = registry.decode(value).map_err(decode_error)?;
                (
                    &mut self.sends,
                    serde_json::to_string(&send_line(&command)),
                    &mut self.summary.sends,
                )
            }
            (topics::STATS, CampaignStats::FULL_NAME) => {
                let stats: CampaignStats = registry.decode(value).map_err(decode_error)?;
                let json = serde_json::to_value(&stats)
                    .map_err(|e| RuntimeError::Topology(e.to_string()))?;
                self.stats.insert(stats.campaign_id, json);
                return Ok(());
            }
            (topics::CAMPAIGN_EVENTS, CampaignLifecycleEvent::FULL_NAME) => {
                let event: CampaignLifecycleEvent = registry.decode(value).map_err(decode_error)?;
                (
                    &mut self.campaign_events,
                    serde_json::to_string(&event),
                    &mut self.summary.campaign_events,
                )
            }
            (topics::DEAD_LETTER, DeadLetter::FULL_NAME) => {
                let (_, decoded) = registry.decode_value(value).map_err(decode_error)?;
                let json = serde_json::Value::try_from(decoded)
                    .map_err(|e| RuntimeError::Topology(e.to_string()))?;
                (
                    &mut self.dead_letters,
                    serde_json::to_string(&json),
                    &mut self.summary.dead_letters,
                )
            }
            // Internal records between stages (run tallies, app-throttle hand-offs) are not
            // outcomes of the backtest.
            (_, _) => return Ok(()),
        };
        *count += 1;
        let line = line.map_err(|e| RuntimeError::Topology(e.to_string()))?;
        writeln!(file, "{line}")
            .map_err(RuntimeError::io(format!("writing to {}", self.dir.display())))
    }

    /// Reports a malformed input line in `dead-letters.jsonl`.
    fn reject_line(&mut self, input: &Path, bad: &BadLine) -> Result<(), BacktestError> {
        let line = serde_json::json!({
            "source_file": input.display().to_string(),
            "line": bad.line,
            "reason": bad.reason,
            "stage": "replay-input",
        });
        self.summary.dead_letters += 1;
        writeln!(self.dead_letters, "{line}").map_err(|source| BacktestError::Io {
            path: self.dir.join("dead-letters.jsonl").display().to_string(),
            source,
        })
    }

    fn finish(mut self) -> Result<BacktestSummary, BacktestError> {
        let stats_path = self.dir.join("stats.json");
        let stats = serde_json::to_string_pretty(&self.stats).expect("JSON values serialise");
        std::fs::write(&stats_path, stats + "\n").map_err(|source| BacktestError::Io {
            path: stats_path.display().to_string(),
            source,
        })?;
        for file in [
            &mut self.candidates,
            &mut self.skips,
            &mut self.engagements,
            &mut self.sends,
            &mut self.campaign_events,
            &mut self.dead_letters,
        ] {
            file.flush().map_err(|source| BacktestError::Io {
                path: self.dir.display().to_string(),
                source,
            })?;
        }
        Ok(self.summary)
    }
}

/// A malformed input line.
#[derive(Debug)]
struct BadLine {
    /// 1-based line number.
    line: usize,
    /// What is wrong with it.
    reason: String,
}

/// Reads the backtest input format into replay records (profiles and events, Avro encoded),
/// ordered by time (stable for equal times), and the malformed lines.
fn read_input(
    path: &Path,
    default_app: &str,
) -> Result<(Vec<ReplayRecord>, Vec<BadLine>), BacktestError> {
    let shown = path.display().to_string();
    let io = |source| BacktestError::Io { path: shown.clone(), source };
    let file = File::open(path).map_err(io)?;
    let mut records = Vec::new();
    let mut bad_lines = Vec::new();
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(io)?;
        let parsed = String::from_utf8(line)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|line| input_record(&line, &shown, index, default_app));
        match parsed {
            Ok(Some(record)) => records.push(record),
            Ok(None) => {}
            Err(reason) => bad_lines.push(BadLine { line: index + 1, reason }),
        }
    }
    records.sort_by_key(|r| r.timestamp_ms);
    Ok((records, bad_lines))
}

/// The replay record of line `index` (0-based) of input file `shown`; `None` for a blank line.
fn input_record(
    line: &str,
    shown: &str,
    index: usize,
    default_app: &str,
) -> Result<Option<ReplayRecord>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let object: Map<String, Value> = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_string);
    let user = text("user").ok_or("missing string field \"user\"")?;
    let app = text("app").unwrap_or_else(|| default_app.to_string());
    let timestamp_ms = match object.get("ts") {
        Some(Value::String(ts)) => DateTime::parse_from_rfc3339(ts)
            .map_err(|e| format!("bad \"ts\" {ts:?}: {e}"))?
            .timestamp_millis(),
        Some(Value::Number(ms)) => ms.as_i64().ok_or("\"ts\" must be whole milliseconds")?,
        _ => return Err("missing \"ts\" (RFC 3339 text or epoch milliseconds)".into()),
    };
    check_timestamp("ts", timestamp_ms).map_err(|e| format!("bad \"ts\": {}", e.reason))?;
    let properties = |key: &str| -> Result<crate::model::Properties, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(Default::default()),
            Some(value) => {
                serde_json::from_value(value.clone()).map_err(|e| format!("\"{key}\": {e}"))
            }
        }
    };
    let registry = SchemaRegistry::builtin();
    let (topic, bytes) = match text("type").as_deref() {
        Some("event") => {
            let name = text("name").ok_or("event without \"name\"")?;
            let event = AppEvent {
                event_id: format!("{}:{}", shown, index + 1),
                app_id: app,
                user_id: user.clone(),
                name,
                timestamp_ms,
                properties: properties("props")?,
                sdk_version: None,
            };
            (topics::EVENTS, registry.encode(&event))
        }
        Some("profile") => {
            let unset = match object.get("unset") {
                None => Vec::new(),
                Some(value) => {
                    serde_json::from_value(value.clone()).map_err(|e| format!("\"unset\": {e}"))?
                }
            };
            let devices = match object.get("devices") {
                None => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| device(item).map_err(|reason| format!("\"devices\": {reason}")))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err("\"devices\" must be a list".into()),
            };
            let update = ProfileUpdate {
                app_id: app,
                user_id: user.clone(),
                timestamp_ms,
                set: properties("set")?,
                unset,
                devices_added: devices,
                tokens_removed: Vec::new(),
            };
            (topics::PROFILES, registry.encode(&update))
        }
        other => return Err(format!("\"type\" must be \"event\" or \"profile\", found {other:?}")),
    };
    Ok(Some(ReplayRecord {
        topic: topic.into(),
        partition: None,
        offset: index as i64,
        key: Some(user.into_bytes()),
        value: Some(bytes.map_err(|e| e.to_string())?),
        timestamp_ms,
    }))
}

fn device(item: &Value) -> Result<Device, String> {
    let text = |key: &str| item.get(key).and_then(Value::as_str).map(str::to_string);
    let platform = match text("platform").as_deref() {
        Some("ios") => Platform::Ios,
        Some("android") => Platform::Android,
        other => return Err(format!("platform must be ios or android, found {other:?}")),
    };
    let token = text("token").ok_or("a device needs a token")?;
    Ok(Device {
        device_id: text("device_id").unwrap_or_else(|| token.clone()),
        platform,
        token,
        app_version: text("app_version"),
        os_version: text("os_version"),
        make: text("make"),
        model: text("model"),
        sdk_version: text("sdk_version"),
    })
}

/// One line of `sends.jsonl`: who gets what, with the rendered title and body read back from
/// the platform payload.
fn send_line(command: &SendCommand) -> serde_json::Value {
    let payload: serde_json::Value = serde_json::from_str(&command.payload).unwrap_or_default();
    let (title, body) = match command.platform {
        Platform::Ios => (&payload["aps"]["alert"]["title"], &payload["aps"]["alert"]["body"]),
        Platform::Android => (
            &payload["message"]["notification"]["title"],
            &payload["message"]["notification"]["body"],
        ),
    };
    serde_json::json!({
        "campaign_id": command.campaign_id,
        "variant_id": command.variant_id,
        "user_id": command.user_id,
        "platform": command.platform,
        "token": command.token,
        "title": title,
        "body": body,
        "message_id": command.message_id,
        "send_time": chrono::DateTime::from_timestamp_millis(command.created_at_ms).map(|t| t.to_rfc3339()),
        "expires_at": command.expires_at_ms.and_then(chrono::DateTime::from_timestamp_millis).map(|t| t.to_rfc3339()),
    })
}
