//! Scenario files (JSON, read with simd-json) and result files (JSON).
//!
//! A scenario names what to run and its bounds; the binary's flags override any field.
//! Results go to `bench/results/<name>.json` with the scenario echoed beside the
//! numbers, so that a result file says how it was produced.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::BenchError;

/// One scenario file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scenario {
    /// An in-memory capacity search ([`crate::capacity::search`]).
    Capacity(crate::capacity::SearchParams),
    /// A real-UDP comparison against the bare reflector ([`crate::udp::compare`]).
    Udp(crate::udp::UdpParams),
}

/// A scenario with its name (the file stem).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Named {
    /// File stem; results are written under this name.
    pub name: String,
    /// The scenario.
    pub scenario: Scenario,
}

/// Reads a scenario file.
pub fn load(path: &Path) -> Result<Named, BenchError> {
    let mut bytes = std::fs::read(path)?;
    let scenario: Scenario = simd_json::serde::from_slice(&mut bytes)?;
    let name = path.file_stem().map_or_else(
        || "scenario".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    Ok(Named { name, scenario })
}

/// Writes `value` as pretty JSON to `dir/<name>.json`.
pub fn write_result<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir)?;
    let text = simd_json::serde::to_string_pretty(value)?;
    std::fs::write(dir.join(format!("{name}.json")), text + "\n")?;
    Ok(())
}

/// A result file's contents: the parameters beside what they produced.
#[derive(Serialize)]
struct Run<'a, P, R> {
    params: &'a P,
    result: &'a R,
}

/// Writes `{"params": params, "result": result}` to `dir/<name>.json`.
pub fn write_run<P: Serialize, R: Serialize>(
    dir: &Path,
    name: &str,
    params: &P,
    result: &R,
) -> Result<(), BenchError> {
    write_result(dir, name, &Run { params, result })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_scenarios_parse_from_json() {
        let mut text = br#"{"kind":"capacity","ramp":[10,20],"step_ms":200,
            "max_seconds":5,"resolution":5,"core":null}"#
            .to_vec();
        let s: Scenario = simd_json::serde::from_slice(&mut text).expect("valid json");
        let Scenario::Capacity(p) = s else {
            panic!("parsed as the wrong kind")
        };
        assert_eq!(p.ramp, vec![10, 20]);
        assert_eq!(p.step_ms, 200);
    }

    #[test]
    fn shipped_scenarios_all_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("scenarios dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n > 0, "no scenarios found");
    }
}
