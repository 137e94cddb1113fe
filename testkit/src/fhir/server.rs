//! The test FHIR server: `tests/fhir-server/server.mjs` (Node, `@medplum/fhir-router` with its
//! in-memory repository — a real third-party FHIR implementation, not a fake of ours), started
//! once per test process on a free loopback port and reset between tests.
//!
//! Needs Node.js; the harness runs `npm ci --prefix tests/fhir-server` on first use. The Node
//! files stay in `tests/fhir-server` (found from the workspace root), whichever crate's tests
//! start the server.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use tokio::sync::{Mutex, MutexGuard};

struct Server {
    _child: Child,
    base: String,
}

fn server_dir() -> PathBuf {
    let dir = crate::workspace_root().join("tests/fhir-server");
    assert!(
        dir.join("server.mjs").is_file(),
        "{}/server.mjs not found",
        dir.display()
    );
    dir
}

fn start() -> Server {
    let dir = server_dir();
    crate::npm_ci_once(&dir, "@medplum/fhir-router");
    let mut child = Command::new("node")
        .arg("server.mjs")
        .args([
            "--port",
            "0",
            "--exit-with-parent",
            &std::process::id().to_string(),
        ])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node (is Node.js installed?)");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's port");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("server said {line:?}: {e}"));
    let port = v["port"].as_u64().expect("port");
    Server {
        _child: child,
        base: format!("http://127.0.0.1:{port}/fhir/R4"),
    }
}

static SERVER: OnceLock<Server> = OnceLock::new();
static LOCK: Mutex<()> = Mutex::const_new(());

/// Exclusive use of the shared FHIR server, emptied for this test.
pub struct FhirServer {
    /// The base URL, `http://127.0.0.1:<port>/fhir/R4`.
    pub base: String,
    _guard: MutexGuard<'static, ()>,
}

impl FhirServer {
    /// Takes the shared server (starting it on first use) and resets it.
    pub async fn acquire() -> FhirServer {
        let guard = LOCK.lock().await;
        let server = SERVER.get_or_init(start);
        let s = FhirServer {
            base: server.base.clone(),
            _guard: guard,
        };
        s.reset().await;
        s
    }

    /// Empties the store.
    pub async fn reset(&self) {
        let r = reqwest::Client::new()
            .post(format!("{}/$reset", self.base))
            .send()
            .await
            .expect("reset the FHIR server");
        assert!(r.status().is_success(), "reset: {}", r.status());
    }

    /// All resources of a type (one page of up to 1000).
    pub async fn all(&self, resource_type: &str) -> Vec<serde_json::Value> {
        let r = reqwest::Client::new()
            .get(format!("{}/{resource_type}?_count=1000", self.base))
            .send()
            .await
            .expect("search");
        let b: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("search body")).expect("bundle");
        b["entry"]
            .as_array()
            .map(|a| a.iter().map(|e| e["resource"].clone()).collect())
            .unwrap_or_default()
    }

    /// Creates (PUT) a resource directly, for test setup.
    pub async fn put(&self, resource: serde_json::Value) {
        let url = format!(
            "{}/{}/{}",
            self.base,
            resource["resourceType"].as_str().unwrap(),
            resource["id"].as_str().unwrap()
        );
        let r = reqwest::Client::new()
            .put(url)
            .header("content-type", "application/fhir+json")
            .body(resource.to_string())
            .send()
            .await
            .expect("put");
        assert!(r.status().is_success(), "setup PUT: {}", r.status());
    }

    /// Sets the server's access control (`POST /$auth`, see `tests/fhir-server/server.mjs`:
    /// static tokens, its client-secret token endpoint, or introspection at a real
    /// authorization server) and returns its counts.
    pub async fn auth(&self, config: serde_json::Value) -> serde_json::Value {
        let r = reqwest::Client::new()
            .post(format!("{}/$auth", self.base))
            .body(config.to_string())
            .send()
            .await
            .expect("configure auth");
        serde_json::from_slice(&r.bytes().await.expect("auth body")).expect("auth JSON")
    }

    /// The access control's counts (`GET /$auth`): `issued` (its own token endpoint),
    /// `introspected`, `tokensSeen` (distinct introspected tokens accepted), `rejected`.
    pub async fn auth_counts(&self) -> serde_json::Value {
        let r = reqwest::get(format!("{}/$auth", self.base))
            .await
            .expect("auth counts");
        serde_json::from_slice(&r.bytes().await.expect("auth body")).expect("auth JSON")
    }
}

/// What the R4 vital-signs profiles say of `resources`, by Medplum's validator
/// (`tests/fhir-server/validate-profiles.mjs`, which names the profiles that apply from the
/// StructureDefinitions and what it checks beside Medplum): one `{id, profiles, issues}` per
/// resource, in order.
pub fn validate_vital_signs(resources: &[serde_json::Value]) -> Vec<serde_json::Value> {
    use std::io::Write;
    let dir = server_dir();
    let mut child = Command::new("node")
        .arg("validate-profiles.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node (is Node.js installed?)");
    let input = serde_json::to_vec(resources).expect("resources as JSON");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input).expect("write resources"));
    let out = child.wait_with_output().expect("run validate-profiles.mjs");
    writer.join().expect("writer thread");
    assert!(out.status.success(), "validate-profiles.mjs failed");
    serde_json::from_slice(&out.stdout).expect("validate-profiles.mjs prints JSON")
}
