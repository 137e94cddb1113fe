//! `iomt map --watch`: re-maps when a template or the events file changes, with errors pointing
//! at template line:column and at the event.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, seen: &mut String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(what) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {what:?} in:\n{seen}");
        if let Ok(line) = rx.recv_timeout(left) {
            seen.push_str(&line);
            seen.push('\n');
        }
    }
}

#[test]
fn watch_reruns_on_change_and_points_at_errors() {
    let dir = tempfile::tempdir().unwrap();
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate");
    for f in ["devicecontent.json", "fhirmapping.json", "events.json"] {
        std::fs::copy(set.join(f), dir.path().join(f)).unwrap();
    }
    let dm = dir.path().join("devicecontent.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["map", "--watch", "--device-mapping"])
        .arg(&dm)
        .arg("--fhir-mapping")
        .arg(dir.path().join("fhirmapping.json"))
        .arg("--events")
        .arg(dir.path().join("events.json"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    wait_for(&rx, "->  observations 3", &mut seen);

    // Break the template: the error names the file, line and column.
    std::thread::sleep(Duration::from_millis(1100)); // a new mtime second on coarse filesystems
    let good = std::fs::read_to_string(&dm).unwrap();
    std::fs::write(
        &dm,
        good.replace("\"typeMatchExpression\"", "\"typeMatchExpresion\""),
    )
    .unwrap();
    seen.clear();
    wait_for(&rx, "Could not find member 'typeMatchExpresion'", &mut seen);
    assert!(seen.contains("devicecontent.json:8:"), "{seen}");

    // Fix it and break an event instead: the error names the event.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&dm, &good).unwrap();
    let events = dir.path().join("events.json");
    let mut list: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&events).unwrap()).unwrap();
    list[1]["body"]["heartRate"] = serde_json::json!(null);
    std::fs::write(&events, serde_json::to_string(&list).unwrap()).unwrap();
    seen.clear();
    wait_for(&rx, "event 1: IncompatibleDataException", &mut seen);
    let _ = child.kill();
    let _ = child.wait();
}
