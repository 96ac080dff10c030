//! Running a replay (backtest) of one campaign over JSON lines, for the scenario tests.

use std::path::Path;

use herald_engine::{backtest::Backtest, settings::Settings};
use serde_json::Value;

/// Replays `lines` through `campaign` (YAML) on `partitions` partitions; the output directory.
pub fn replay(campaign: &str, lines: &[String], partitions: i32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("campaigns")).unwrap();
    std::fs::write(dir.path().join("campaigns/c.yaml"), campaign).unwrap();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).unwrap();
    Backtest {
        campaigns: vec![dir.path().join("campaigns")],
        input: dir.path().join("in.jsonl"),
        out: dir.path().join("out"),
        settings: Settings::default(),
        app: None,
        until_ms: None,
        partitions,
    }
    .run()
    .unwrap();
    dir
}

/// The records of one output file of a replay (none if it was not written).
pub fn read(dir: &Path, file: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out").join(file))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
