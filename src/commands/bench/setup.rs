//! What the bench prepares before anything runs: its folder ([`BenchDir`]; a folder is
//! cleared only when it carries the bench's marker) and the connector's config and mappings
//! ([`write_connector_config`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::mqtt;

/// The connector's MQTT client id.
pub(super) const CONNECTOR_CLIENT_ID: &str = "iomt-bench-connector";
/// Marks a folder as the bench's, so `--dir` may clear it.
const MARKER: &str = ".iomt-bench";

const DEVICE_MAPPING: &str = include_str!("../../../templates/simulator/devicecontent.json");
const FHIR_MAPPING: &str = include_str!("../../../templates/simulator/fhirmapping.json");

/// The bench's folder; a temporary one is removed on drop unless kept.
pub(super) struct BenchDir {
    /// The folder (canonical).
    pub(super) path: PathBuf,
    /// Whether the folder is removed on drop.
    pub(super) remove: bool,
}

impl BenchDir {
    /// `dir`, cleared if it is a previous bench's, or a new temporary folder.
    pub(super) fn new(dir: Option<&Path>, keep: bool) -> Result<BenchDir> {
        let (path, remove) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let p =
                    std::env::temp_dir().join(format!("iomt-bench-{}-{stamp}", std::process::id()));
                (p, !keep)
            }
        };
        if path.exists() && std::fs::read_dir(&path)?.next().is_some() {
            if !path.join(MARKER).exists() {
                bail!(
                    "{} is not empty and not a bench folder (no {MARKER}); give an empty or new --dir",
                    path.display()
                );
            }
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("clearing the previous bench in {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::write(
            path.join(MARKER),
            "written by iomt bench; the next run clears this folder\n",
        )?;
        let path = std::fs::canonicalize(&path)?;
        Ok(BenchDir { path, remove })
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The FHIR mapping of the simulator set, with heart rate's SampledData period at the bench's
/// one reading a second (the set's own is 5 s, its simulator's natural interval), so every
/// reading has its own slot and the samples in FHIR can be counted against those published.
fn bench_fhir_mapping() -> Result<String> {
    let mut m: Value = serde_json::from_str(FHIR_MAPPING)?;
    let mut patched = false;
    for t in m["template"].as_array_mut().into_iter().flatten() {
        let t = &mut t["template"];
        if t["typeName"] == "heartrate" && t["value"]["valueType"] == "SampledData" {
            t["value"]["defaultPeriod"] = Value::from(1000);
            patched = true;
        }
    }
    if !patched {
        bail!("templates/simulator/fhirmapping.json has no heart-rate SampledData template");
    }
    Ok(serde_json::to_string_pretty(&m)? + "\n")
}

fn connector_config(
    fhir_url: &str,
    mqtt_port: u16,
    metrics_port: u16,
    inflight: u16,
    flush_line: Option<&str>,
) -> String {
    format!(
        r#"# Written by `iomt bench`.
[templates]
device_mapping = "devicecontent.json"
fhir_mapping = "fhirmapping.json"

[fhir]
url = "{fhir_url}"
resolution = "Create"

[source]
kind = "mqtt"
host = "127.0.0.1"
port = {mqtt_port}
client_id = "{CONNECTOR_CLIENT_ID}"
topics = ["{filter}"]
device_id_from_topic = "devices/{{deviceId}}/telemetry"
inflight = {inflight}

[pipeline]
{flush}

[dead_letters]
dir = "dead-letters"

[http]
listen = "127.0.0.1:{metrics_port}"

[log]
level = "info"
"#,
        filter = mqtt::FILTER,
        flush = flush_line.unwrap_or("# no flush interval option in this build"),
    )
}

/// Writes the connector config, setting the flush interval with the first option name this
/// build accepts; returns the path and the line used.
pub(super) fn write_connector_config(
    dir: &Path,
    fhir_url: &str,
    mqtt_port: u16,
    metrics_port: u16,
    inflight: u16,
    flush: Duration,
) -> Result<(PathBuf, Option<String>)> {
    std::fs::write(dir.join("devicecontent.json"), DEVICE_MAPPING)?;
    std::fs::write(dir.join("fhirmapping.json"), bench_fhir_mapping()?)?;
    let path = dir.join("connector.toml");
    let write = |line: Option<&str>| -> Result<Result<(), Vec<String>>> {
        std::fs::write(
            &path,
            connector_config(fhir_url, mqtt_port, metrics_port, inflight, line),
        )?;
        Ok(pipeline::validate(&path).map(|_| ()))
    };
    if let Err(errors) = write(None)? {
        bail!(
            "the bench's connector config {} is invalid:\n{}",
            path.display(),
            errors.join("\n")
        );
    }
    let candidates = [
        format!("flush_interval_ms = {}", flush.as_millis()),
        format!("flush_interval_secs = {}", flush.as_secs().max(1)),
    ];
    for line in candidates {
        if write(Some(&line))?.is_ok() {
            return Ok((path, Some(line)));
        }
    }
    write(None)?.map_err(|e| anyhow::anyhow!(e.join("\n")))?;
    Ok((path, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_mapping_gives_heart_rate_one_slot_a_second() {
        let m: Value = serde_json::from_str(&bench_fhir_mapping().unwrap()).unwrap();
        let hr = m["template"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["template"]["typeName"] == "heartrate")
            .unwrap();
        assert_eq!(hr["template"]["value"]["defaultPeriod"], 1000);
    }

    #[test]
    fn the_connector_config_is_valid() {
        let dir = std::env::temp_dir().join(format!("iomt-bench-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, _) = write_connector_config(
            &dir,
            "http://127.0.0.1:1/fhir/R4",
            1883,
            9464,
            100,
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(pipeline::validate(&path).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
