//! An HTTP/1.1 proxy in front of the real test FHIR server that injects faults, for the FHIR
//! writer's fault tests (`fhir-writer/tests/faults/`).
//!
//! It is a fake used only for fault injection: no real server answers 429, 503 or 412, drops a
//! connection, or holds one request while another goes through, on cue. Every request it passes
//! goes to the real FHIR server, and every answer it relays is the server's; a test reads its
//! results from the server directly, never through the proxy.
//!
//! A [`Script`] decides per request ([`Fault`], from what the proxy [`Seen`]); an
//! [`EntryScript`] per entry of the `batch` Bundles it passes ([`EntryFault`]), because no real
//! server answers single entries so either. The proxy counts the requests it saw, the faults it
//! injected by kind, and the requests it could not handle itself ([`FaultProxy::broken`], which
//! a test keeps at 0 so that it never passes on faults its script did not ask for).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the server and relay its answer.
    Pass,
    /// Answer this status without forwarding, with `Retry-After: <seconds>` when given.
    Status {
        /// The HTTP status.
        code: u16,
        /// `Retry-After`, in seconds.
        retry_after: Option<u32>,
    },
    /// Close the connection without forwarding or answering.
    DropBefore,
    /// Forward (the server acts on the request), then close the connection without answering:
    /// the write happened but the client never hears of it.
    DropAfter,
    /// Hold the request until the test calls [`FaultProxy::release`], then forward it.
    Hold,
}

/// 429 with `Retry-After: 1`.
pub const TOO_MANY_REQUESTS: Fault = Fault::Status {
    code: 429,
    retry_after: Some(1),
};
/// 503.
pub const UNAVAILABLE: Fault = Fault::Status {
    code: 503,
    retry_after: None,
};
/// 412 (as if the `If-Match` version were stale).
pub const PRECONDITION_FAILED: Fault = Fault::Status {
    code: 412,
    retry_after: None,
};

impl Fault {
    /// The kind, as [`FaultProxy::injected`] counts it: `429`, `drop-before`, `hold`, ...
    pub fn label(self) -> String {
        match self {
            Fault::Pass => "pass".into(),
            Fault::Status { code, .. } => code.to_string(),
            Fault::DropBefore => "drop-before".into(),
            Fault::DropAfter => "drop-after".into(),
            Fault::Hold => "hold".into(),
        }
    }
}

/// One request as the proxy saw it; what a [`Script`] decides on.
#[derive(Debug)]
pub struct Seen<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// Path and query, e.g. `/fhir/R4/Observation/abc`.
    pub target: &'a str,
    /// The `If-Match` header.
    pub if_match: Option<&'a str>,
    /// How often this exact request (method, target, `If-Match`, body) was seen before: 0 for a
    /// new request, 1 for its first retry, and so on.
    pub attempt: u32,
    /// Identifies the exact request, for scripts that fault one request several times.
    pub key: u64,
    /// The entries of a Bundle it carries (0 for any other request).
    pub entries: usize,
}

impl Seen<'_> {
    /// An Observation update: PUT with `If-Match`.
    pub fn is_observation_update(&self) -> bool {
        self.method == "PUT" && self.if_match.is_some() && self.target.contains("/Observation/")
    }
}

/// Decides per request. May keep state (budgets, bursts).
pub type Script = Box<dyn FnMut(&Seen<'_>) -> Fault + Send>;

/// What the proxy does with one entry of a `batch` Bundle it passes: no real server answers
/// single entries with 429 or 500 on cue, so these are injected here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFault {
    /// Forward the entry; relay the server's answer to it.
    Pass,
    /// Do not forward the entry; answer it with this status (and, for the whole Bundle's
    /// response, `Retry-After: <seconds>`).
    Status {
        /// The entry's HTTP status.
        code: u16,
        /// `Retry-After` of the Bundle's response, in seconds.
        retry_after: Option<u32>,
    },
    /// Forward the entry (the server applies it), then answer it with this status instead.
    AppliedThen {
        /// The entry's HTTP status.
        code: u16,
    },
}

/// One entry as the proxy saw it.
#[derive(Debug)]
pub struct EntrySeen<'a> {
    /// `request.method`.
    pub method: &'a str,
    /// `request.url`.
    pub url: &'a str,
    /// The entry carries `request.ifMatch` (an update based on a version).
    pub if_match: bool,
    /// How often this exact entry was seen before.
    pub attempt: u32,
}

/// Decides per entry of a passed `batch` Bundle.
pub type EntryScript = Box<dyn FnMut(&EntrySeen<'_>) -> EntryFault + Send>;

struct Request {
    method: String,
    target: String,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Hop-by-hop and framing headers the proxy sets itself.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "upgrade",
];

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

struct ProxyState {
    /// `http://127.0.0.1:<server port>`.
    upstream: String,
    http: reqwest::Client,
    script: Mutex<Script>,
    entry_script: Mutex<Option<EntryScript>>,
    attempts: Mutex<HashMap<u64, u32>>,
    requests: AtomicU64,
    injected: Mutex<BTreeMap<String, u64>>,
    /// Requests the proxy could not parse or forward (must stay 0: a test would otherwise
    /// pass on faults the script did not ask for).
    broken: AtomicU64,
    /// Held requests wait for a permit ([`FaultProxy::release`]).
    gate: tokio::sync::Semaphore,
    /// Requests being held now.
    held: AtomicU64,
}

impl ProxyState {
    fn decide(&self, req: &Request) -> Fault {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let if_match = header(&req.headers, "if-match");
        let mut h = DefaultHasher::new();
        (
            req.method.as_str(),
            req.target.as_str(),
            if_match,
            req.body.as_slice(),
        )
            .hash(&mut h);
        let key = h.finish();
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(key).or_insert(0);
            *n += 1;
            *n - 1
        };
        let entries = if req.method == "POST" {
            serde_json::from_slice::<serde_json::Value>(&req.body)
                .ok()
                .and_then(|b| b["entry"].as_array().map(Vec::len))
                .unwrap_or(0)
        } else {
            0
        };
        let seen = Seen {
            method: &req.method,
            target: &req.target,
            if_match,
            attempt,
            key,
            entries,
        };
        let fault = (self.script.lock().unwrap())(&seen);
        if fault != Fault::Pass {
            *self
                .injected
                .lock()
                .unwrap()
                .entry(fault.label())
                .or_default() += 1;
        }
        fault
    }

    async fn forward(&self, req: &Request) -> Answer {
        let Ok(method) = reqwest::Method::from_bytes(req.method.as_bytes()) else {
            return self.broken(format!("bad method {:?}", req.method));
        };
        let mut out = self
            .http
            .request(method, format!("{}{}", self.upstream, req.target));
        for (k, v) in &req.headers {
            if !NOT_FORWARDED.contains(&k.as_str()) {
                out = out.header(k, v);
            }
        }
        if !req.body.is_empty() {
            out = out.body(req.body.clone());
        }
        let resp = match out.send().await {
            Ok(r) => r,
            Err(e) => return self.broken(format!("upstream: {e}")),
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| !NOT_FORWARDED.contains(&k.as_str()))
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        match resp.bytes().await {
            Ok(body) => Answer {
                status,
                headers,
                body: body.to_vec(),
            },
            Err(e) => self.broken(format!("upstream body: {e}")),
        }
    }

    /// Forwards a `batch` Bundle without the entries the entry script faults, and answers
    /// those with the injected status, the others with the server's answers.
    async fn forward_bundle(&self, req: &Request) -> Answer {
        let Ok(bundle) = serde_json::from_slice::<Value>(&req.body) else {
            return self.broken("a Bundle POST that is not JSON".into());
        };
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        let mut faults = Vec::with_capacity(entries.len());
        for e in &entries {
            let mut h = DefaultHasher::new();
            e.to_string().hash(&mut h);
            let key = h.finish() ^ 0x5eed;
            let attempt = {
                let mut attempts = self.attempts.lock().unwrap();
                let n = attempts.entry(key).or_insert(0);
                *n += 1;
                *n - 1
            };
            let seen = EntrySeen {
                method: e["request"]["method"].as_str().unwrap_or(""),
                url: e["request"]["url"].as_str().unwrap_or(""),
                if_match: e["request"].get("ifMatch").is_some(),
                attempt,
            };
            let fault = match self.entry_script.lock().unwrap().as_mut() {
                Some(script) => script(&seen),
                None => EntryFault::Pass,
            };
            let label = match fault {
                EntryFault::Pass => None,
                EntryFault::Status { code, .. } => Some(format!("entry-{code}")),
                EntryFault::AppliedThen { code } => Some(format!("entry-applied-{code}")),
            };
            if let Some(l) = label {
                *self.injected.lock().unwrap().entry(l).or_default() += 1;
            }
            faults.push(fault);
        }
        let forwarded: Vec<Value> = entries
            .iter()
            .zip(&faults)
            .filter(|(_, f)| !matches!(f, EntryFault::Status { .. }))
            .map(|(e, _)| e.clone())
            .collect();
        let mut answers = Vec::new().into_iter();
        let mut headers = vec![(
            "content-type".to_string(),
            "application/fhir+json".to_string(),
        )];
        if !forwarded.is_empty() {
            let mut inner = bundle.clone();
            inner["entry"] = Value::Array(forwarded.clone());
            let upstream = Request {
                method: req.method.clone(),
                target: req.target.clone(),
                headers: req.headers.clone(),
                body: inner.to_string().into_bytes(),
            };
            let a = self.forward(&upstream).await;
            let Ok(response) = serde_json::from_slice::<Value>(&a.body) else {
                return a;
            };
            let got = response["entry"].as_array().cloned().unwrap_or_default();
            if a.status != 200 || got.len() != forwarded.len() {
                return a;
            }
            headers = a.headers;
            answers = got.into_iter();
        }
        let injected = |code: u16| {
            json!({"response": {"status": code.to_string(), "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "transient",
                           "details": {"text": format!("entry fault injected by the test proxy: HTTP {code}")}}]}}})
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut retry_after = None;
        for f in faults {
            match f {
                EntryFault::Pass => out.push(answers.next().unwrap_or(Value::Null)),
                EntryFault::Status {
                    code,
                    retry_after: ra,
                } => {
                    retry_after = retry_after.or(ra);
                    out.push(injected(code));
                }
                EntryFault::AppliedThen { code } => {
                    let _ = answers.next();
                    out.push(injected(code));
                }
            }
        }
        if let Some(s) = retry_after {
            headers.push(("retry-after".into(), s.to_string()));
        }
        let body = json!({"resourceType": "Bundle", "type": "batch-response", "entry": out});
        Answer {
            status: 200,
            headers,
            body: body.to_string().into_bytes(),
        }
    }

    fn broken(&self, why: String) -> Answer {
        eprintln!("fault proxy: {why}");
        self.broken.fetch_add(1, Ordering::SeqCst);
        injected_answer(502, None)
    }
}

/// A `POST` to the base URL (a Bundle).
fn is_bundle_post(req: &Request) -> bool {
    req.method == "POST" && {
        let path = req.target.split('?').next().unwrap_or("");
        let path = path.trim_end_matches('/');
        path.is_empty() || path.ends_with("/fhir/R4") || path.ends_with("/fhir")
    }
}

fn injected_answer(code: u16, retry_after: Option<u32>) -> Answer {
    let mut headers = vec![(
        "content-type".to_string(),
        "application/fhir+json".to_string(),
    )];
    if let Some(s) = retry_after {
        headers.push(("retry-after".into(), s.to_string()));
    }
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "transient",
                   "details": {"text": format!("fault injected by the test proxy: HTTP {code}")}}],
    });
    Answer {
        status: code,
        headers,
        body: body.to_string().into_bytes(),
    }
}

/// An HTTP/1.1 proxy on a free loopback port in front of the real FHIR server, faulting
/// requests as its [`Script`] says and counting what it saw and injected.
pub struct FaultProxy {
    /// Base URL to give the writer (same path as the server's base).
    pub base: String,
    state: Arc<ProxyState>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy for the server at `server_base`, faulting as `script` says.
    pub async fn start(server_base: &str, script: Script) -> FaultProxy {
        let url = reqwest::Url::parse(server_base).expect("server base URL");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(ProxyState {
            upstream: url.origin().ascii_serialization(),
            // No pooling: a fresh connection per forwarded request, so the server closing an
            // idle keep-alive connection can never look like an injected fault.
            http: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .expect("proxy's HTTP client"),
            script: Mutex::new(script),
            entry_script: Mutex::new(None),
            attempts: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            injected: Mutex::new(BTreeMap::new()),
            broken: AtomicU64::new(0),
            gate: tokio::sync::Semaphore::new(0),
            held: AtomicU64::new(0),
        });
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            // Connections live in the set, so aborting this task closes them all.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(Arc::clone(&shared), stream));
                while connections.try_join_next().is_some() {}
            }
        });
        FaultProxy {
            base: format!("http://{addr}{}", url.path().trim_end_matches('/')),
            state,
            task,
        }
    }

    /// Faults entries of the `batch` Bundles it passes, as `script` says.
    pub fn with_entry_faults(self, script: EntryScript) -> FaultProxy {
        *self.state.entry_script.lock().unwrap() = Some(script);
        self
    }

    /// Lets one held request through.
    pub fn release(&self) {
        self.state.gate.add_permits(1);
    }

    /// Waits until `n` requests are being held.
    pub async fn wait_held(&self, n: u64) {
        for _ in 0..2000 {
            if self.state.held.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("no request was held");
    }

    /// Requests seen (every attempt).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Faults injected, by kind (`429`, `503`, `412`, `drop-before`, `drop-after`).
    pub fn injected(&self) -> BTreeMap<String, u64> {
        self.state.injected.lock().unwrap().clone()
    }

    /// Faults injected, of every kind.
    pub fn injected_total(&self) -> u64 {
        self.injected().values().sum()
    }

    /// Requests the proxy could not parse or forward (a test keeps this at 0).
    pub fn broken(&self) -> u64 {
        self.state.broken.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(state: Arc<ProxyState>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    while let Some(req) = read_request(&state, &mut read).await {
        let answer = match state.decide(&req) {
            // Returning drops both halves: the socket closes unanswered.
            Fault::DropBefore => return,
            Fault::Status { code, retry_after } => injected_answer(code, retry_after),
            Fault::Pass if is_bundle_post(&req) && state.entry_script.lock().unwrap().is_some() => {
                state.forward_bundle(&req).await
            }
            Fault::Pass => state.forward(&req).await,
            Fault::DropAfter => {
                let _ = state.forward(&req).await;
                return;
            }
            Fault::Hold => {
                state.held.fetch_add(1, Ordering::SeqCst);
                let Ok(permit) = state.gate.acquire().await else {
                    return;
                };
                permit.forget();
                state.held.fetch_sub(1, Ordering::SeqCst);
                state.forward(&req).await
            }
        };
        if write_answer(&mut write, &answer).await.is_err() {
            return;
        }
    }
}

/// Reads one request (Content-Length framing, which is what reqwest sends for a byte body);
/// `None` at the end of the connection.
async fn read_request(state: &ProxyState, r: &mut BufReader<OwnedReadHalf>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        state.broken(format!("bad request line {line:?}"));
        return None;
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            state.broken(format!("bad header line {l:?}"));
            return None;
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    if header(&headers, "transfer-encoding").is_some() {
        state.broken("chunked request bodies are not supported".into());
        return None;
    }
    let len: usize = match header(&headers, "content-length").map(str::parse) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            state.broken("bad content-length".into());
            return None;
        }
    };
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

async fn write_answer(w: &mut OwnedWriteHalf, a: &Answer) -> std::io::Result<()> {
    let reason = reqwest::StatusCode::from_u16(a.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", a.status);
    for (k, v) in &a.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let _ = write!(head, "content-length: {}\r\n\r\n", a.body.len());
    // One write: head and body in separate segments would meet Nagle and delayed ACK.
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&a.body);
    w.write_all(&bytes).await?;
    w.flush().await
}
