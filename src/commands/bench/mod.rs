//! `iomt bench`: the whole connector measured on this machine with no cloud account. Mosquitto
//! (the system binary), the local FHIR store in-process, the connector as a child process
//! (`iomt run`), the simulator publishing at QoS 1; then the same events into a bare QoS 1
//! subscriber (the broker-only limit) and through `serde_json` alone (parse-only), so every
//! connector rate has two references measured in the same run. docs/PERFORMANCE.md ("iomt
//! bench") defines every figure.
//!
//! Modules: [`broker`] (Mosquitto), [`mqtt`] (publisher, bare subscriber, payloads),
//! [`connector`] (child process, RSS), [`prom`] (reading `/metrics`), [`report`] (figures).

mod broker;
mod connector;
mod mqtt;
mod prom;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use report::{FhirCount, Recorded, Sample, Setup};

/// `iomt bench` options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Simulated devices (kinds assigned round-robin).
    #[arg(long, default_value_t = 5000)]
    devices: usize,
    /// Publish rate, events/s overall (0: as fast as the broker acknowledges).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Readings per device, one a second of simulated time (600: ten minutes of 1 Hz heart rate).
    #[arg(long, default_value_t = 600)]
    readings: usize,
    /// Device kinds, comma separated (see `iomt simulate --help`), or `all`.
    #[arg(long, default_value = "heart-rate")]
    kinds: String,
    /// The connector's flush interval (`30s`, `500ms`, `2m`); set only where the connector has
    /// the option.
    #[arg(long, default_value = "30s")]
    flush_interval: String,
    /// Unacknowledged QoS 1 messages per client: the connector's `inflight`, Mosquitto's
    /// `max_inflight_messages`, the publisher's and the bare subscriber's limit.
    #[arg(long, default_value_t = 1000)]
    inflight: u16,
    /// After the last event is published, wait this long for everything to be written.
    #[arg(long, default_value = "10m")]
    timeout: String,
    /// Folder for the bench's files (broker configs and logs, FHIR store, connector config and
    /// log); kept. Default: a temporary folder, removed at the end unless --keep.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print the figures as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// Skip the broker-only phase.
    #[arg(long)]
    skip_broker_only: bool,
    /// Keep the temporary folder.
    #[arg(long)]
    keep: bool,
    /// A backlog instead of a live stream: the connector subscribes once (its persistent
    /// session), stops, every event is published and queued on the broker, then the connector
    /// starts again and the drain is timed (figures count from that start).
    #[arg(long)]
    backlog: bool,
}

/// The connector's MQTT client id.
const CONNECTOR_CLIENT_ID: &str = "iomt-bench-connector";
/// Scrape period of `/metrics`.
const SCRAPE_EVERY: Duration = Duration::from_millis(500);
/// RSS sampling period.
const RSS_EVERY: Duration = Duration::from_millis(200);
/// A progress line this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// SIGTERM to exit at most (the connector's own drain limit is 30 s by default).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Marks a folder as the bench's, so `--dir` may clear it.
const MARKER: &str = ".iomt-bench";

const DEVICE_MAPPING: &str = include_str!("../../../templates/simulator/devicecontent.json");
const FHIR_MAPPING: &str = include_str!("../../../templates/simulator/fhirmapping.json");

/// Parses `30s`, `500ms`, `2m`, `1h` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .with_context(|| format!("{s:?} is not a duration (30s, 500ms, 2m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("{s:?}: unknown unit {unit:?} (ms, s, m, h)"),
    };
    Duration::try_from_secs_f64(secs).with_context(|| format!("{s:?} is out of range"))
}

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free loopback port")?
        .local_addr()?
        .port())
}

/// The bench's folder; a temporary one is removed on drop unless kept.
struct BenchDir {
    path: PathBuf,
    remove: bool,
}

impl BenchDir {
    fn new(dir: Option<&Path>, keep: bool) -> Result<BenchDir> {
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

fn progress(line: &str) {
    eprintln!("bench: {line}");
}

/// Runs `iomt bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.devices == 0 || args.readings == 0 {
        bail!("--devices and --readings must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be 0 (as fast as possible) or a positive number of events/s");
    }
    if args.inflight == 0 {
        bail!("--inflight must be at least 1");
    }
    let flush = parse_duration(&args.flush_interval).context("--flush-interval")?;
    let timeout = parse_duration(&args.timeout).context("--timeout")?;
    let kinds = parse_kinds(&args.kinds)?;
    let mosquitto = broker::find()?;
    let exe = std::env::current_exe().context("finding the iomt executable")?;
    let mut dir = BenchDir::new(args.dir.as_deref(), args.keep)?;

    let sim = simulators::SimConfig {
        devices: args.devices,
        kinds: kinds.clone(),
        readings: args.readings,
        interval_secs: Some(1),
        seed: 1,
        prefix: "bench".into(),
        ..simulators::SimConfig::default()
    };
    let heart_rate_devices = (0..args.devices)
        .filter(|i| kinds[i % kinds.len()] == simulators::Kind::HeartRate)
        .count();
    progress(&format!(
        "simulating {} devices x {} readings",
        args.devices, args.readings
    ));
    let payloads = Arc::new(mqtt::Payloads::generate(simulators::Simulator::new(sim)?)?);
    let n = payloads.len() as u64;

    progress("parse-only: serde_json::from_slice::<Value> over every payload, one thread");
    let parse_only = parse_only(&payloads)?;

    let setup = Setup {
        devices: args.devices,
        readings_per_device: args.readings,
        kinds: kinds.iter().map(|k| k.name().to_string()).collect(),
        events: n,
        body_bytes: payloads.total_bytes() as u64,
        rate: args.rate,
        inflight: args.inflight,
        flush_interval_secs: flush.as_secs_f64(),
        flush_interval_config: None,
        dir: dir.path.display().to_string(),
        backlog: args.backlog,
    };
    let phases = Phases {
        mosquitto,
        exe,
        dir: dir.path.clone(),
        payloads,
        rate: args.rate,
        inflight: args.inflight,
        flush,
        timeout,
        heart_rate_readings: (heart_rate_devices * args.readings) as u64,
        backlog: args.backlog,
    };
    let runtime = crate::commands::runtime()?;
    let outcome = runtime.block_on(async {
        let broker_only = if args.skip_broker_only {
            None
        } else {
            Some(phases.broker_only().await?)
        };
        phases.connector(setup, broker_only, parse_only).await
    });
    let recorded = match outcome {
        Ok(r) => r,
        Err(e) => {
            dir.remove = false;
            eprintln!("bench: files kept in {}", dir.path.display());
            return Err(e);
        }
    };
    let report = report::compute(recorded);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::render(&report));
    }
    let ok = report.complete && report.fhir_samples_match;
    if !ok {
        dir.remove = false;
    }
    if dir.remove {
        progress(&format!(
            "removing {} (--keep keeps it)",
            dir.path.display()
        ));
    } else {
        progress(&format!("files kept in {}", dir.path.display()));
    }
    if !report.complete {
        eprintln!(
            "bench: incomplete: {} of {} events written",
            report.written, report.setup.events
        );
        return Ok(ExitCode::from(1));
    }
    if !report.fhir_samples_match {
        eprintln!(
            "bench: the FHIR store holds {} heart-rate samples, {} were published",
            report.fhir.heart_rate_samples, report.fhir.heart_rate_readings_published
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_kinds(s: &str) -> Result<Vec<simulators::Kind>> {
    if s == "all" {
        return Ok(simulators::Kind::ALL.to_vec());
    }
    s.split(',')
        .map(|k| {
            simulators::Kind::parse(k.trim()).with_context(|| {
                format!(
                    "unknown kind {k:?}: {}",
                    simulators::Kind::ALL.map(|k| k.name()).join(", ")
                )
            })
        })
        .collect()
}

/// Parses every payload as `serde_json::Value` on this thread, repeating passes for at least
/// half a second; events/s.
fn parse_only(payloads: &mqtt::Payloads) -> Result<f64> {
    let started = Instant::now();
    let mut parsed = 0u64;
    loop {
        for i in 0..payloads.len() {
            let v: Value = serde_json::from_slice(payloads.body(i))
                .with_context(|| format!("simulated payload {i} is not JSON"))?;
            std::hint::black_box(v);
        }
        parsed += payloads.len() as u64;
        if started.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    Ok(parsed as f64 / started.elapsed().as_secs_f64())
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
fn write_connector_config(
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

fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// Waits until the connector is ready and the broker's log shows its SUBSCRIBE, or fails with
/// the connector's log.
async fn wait_subscribed(
    connector: &mut connector::Connector,
    broker: &broker::Broker,
    http: &reqwest::Client,
    metrics_port: u16,
) -> Result<()> {
    let ready_url = format!("http://127.0.0.1:{metrics_port}/readyz");
    let started = Instant::now();
    loop {
        connector.check_running()?;
        let ready = http_get(http, &ready_url)
            .await
            .is_some_and(|b| b.starts_with("ready"));
        if ready && broker.subscribed(CONNECTOR_CLIENT_ID, mqtt::FILTER) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the connector was not ready and subscribed within 30 s; the end of {}:\n{}",
                connector.log.display(),
                connector.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn http_get(client: &reqwest::Client, url: &str) -> Option<String> {
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

/// Counts the heart-rate samples (SampledData values that are not `E`) and Observations.
fn count_fhir(store: &fhir_store::Store, published: u64) -> Result<FhirCount> {
    use fhir_store::search::SearchQuery;
    let query = |params: &[(&str, String)]| {
        SearchQuery::parse(
            &params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<Vec<_>>(),
        )
    };
    let mut count = FhirCount {
        heart_rate_readings_published: published,
        observations: store
            .search("Observation", &query(&[("_count", "0".into())])?)?
            .total,
        ..FhirCount::default()
    };
    let page = 1000usize;
    let mut offset = 0usize;
    loop {
        let q = query(&[
            ("code", "http://loinc.org|8867-4".into()),
            ("_count", page.to_string()),
            ("_offset", offset.to_string()),
        ])?;
        let found = store.search("Observation", &q)?;
        for o in &found.resources {
            count.heart_rate_observations += 1;
            if let Some(data) = o["valueSampledData"]["data"].as_str() {
                count.heart_rate_samples += data
                    .split(' ')
                    .filter(|t| !t.is_empty() && *t != "E")
                    .count() as u64;
            }
        }
        offset += found.resources.len();
        if found.resources.is_empty() || offset as u64 >= found.total {
            break;
        }
    }
    Ok(count)
}

/// What both phases share.
struct Phases {
    mosquitto: PathBuf,
    exe: PathBuf,
    dir: PathBuf,
    payloads: Arc<mqtt::Payloads>,
    rate: f64,
    inflight: u16,
    flush: Duration,
    timeout: Duration,
    heart_rate_readings: u64,
    backlog: bool,
}

impl Phases {
    /// The same publisher into a bare QoS 1 subscriber on its own fresh Mosquitto.
    async fn broker_only(&self) -> Result<report::BrokerOnly> {
        let n = self.payloads.len() as u64;
        let broker = broker::Broker::start(
            &self.mosquitto,
            &self.dir.join("broker-only"),
            self.inflight,
        )?;
        progress(&format!(
            "broker-only: Mosquitto on 127.0.0.1:{}, bare QoS 1 subscriber, {n} events",
            broker.port
        ));
        let subscriber = mqtt::BareSubscriber::connect(broker.port, self.inflight).await?;
        let received = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let receiving = tokio::spawn(subscriber.receive(n, received.clone()));
        let mut publishing = tokio::spawn(mqtt::publish(
            broker.port,
            self.payloads.clone(),
            self.rate,
            self.inflight,
            acked.clone(),
        ));
        let started = Instant::now();
        let mut next_line = started + PROGRESS_EVERY;
        let mut published = None;
        while !receiving.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if published.is_none() && publishing.is_finished() {
                // A publisher failure ends the phase at once.
                published = Some((&mut publishing).await.context("publisher task")??);
            }
            if Instant::now() >= next_line {
                next_line += PROGRESS_EVERY;
                progress(&format!(
                    "broker-only {:>6.1} s: published {}/{n}, received {}",
                    started.elapsed().as_secs_f64(),
                    acked.load(Ordering::Relaxed),
                    received.load(Ordering::Relaxed)
                ));
            }
        }
        let last = receiving.await.context("subscriber task")??;
        let published = match published {
            Some(p) => p,
            None => publishing.await.context("publisher task")??,
        };
        let drops = broker.dropped_warnings();
        if !drops.is_empty() {
            bail!(
                "the broker-only Mosquitto dropped messages: {}",
                drops.join(" | ")
            );
        }
        let r = report::BrokerOnly {
            events_per_sec: n as f64 / (last - published.first).as_secs_f64().max(1e-6),
            publisher_events_per_sec: published.rate(),
        };
        progress(&format!(
            "broker-only: {:.0} events/s received and acked (publisher {:.0}/s)",
            r.events_per_sec, r.publisher_events_per_sec
        ));
        Ok(r)
    }

    /// The connector between a fresh Mosquitto and the local FHIR store.
    async fn connector(
        &self,
        mut setup: Setup,
        broker_only: Option<report::BrokerOnly>,
        parse_only: f64,
    ) -> Result<Recorded> {
        let n = self.payloads.len() as u64;
        let broker =
            broker::Broker::start(&self.mosquitto, &self.dir.join("broker"), self.inflight)?;

        // The local FHIR store, in this process.
        let store = fhir_store::Store::open(self.dir.join("fhir-store.sqlite"))
            .context("opening the local FHIR store")?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let fhir_url = format!("http://{}/fhir/R4", listener.local_addr()?);
        let (store_stop, mut store_stopped) = tokio::sync::watch::channel(false);
        let store_task = tokio::spawn(fhir_store::serve(listener, store.clone(), async move {
            let _ = store_stopped.wait_for(|s| *s).await;
        }));

        let metrics_port = free_port()?;
        let (config, flush_line) = write_connector_config(
            &self.dir,
            &fhir_url,
            broker.port,
            metrics_port,
            self.inflight,
            self.flush,
        )?;
        setup.flush_interval_config = flush_line;
        let log = self.dir.join("connector.log");
        let mut queued: Option<mqtt::Published> = None;
        let mut session_idle = connector::Memory::default();
        if self.backlog {
            // The session exists on the broker once the connector has subscribed; then it
            // stops (clean shutdown, session kept) and everything is queued for it.
            let session_log = self.dir.join("connector-session.log");
            let mut first = connector::Connector::start(&self.exe, &config, &session_log)?;
            wait_subscribed(&mut first, &broker, &http_client()?, metrics_port).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            session_idle = connector::read_memory(first.pid()).unwrap_or_default();
            tokio::task::block_in_place(|| first.terminate(DRAIN_TIMEOUT))?;
            progress(&format!(
                "backlog: connector stopped; queueing {n} events on the broker"
            ));
            let p = mqtt::publish(
                broker.port,
                self.payloads.clone(),
                self.rate,
                self.inflight,
                Arc::new(AtomicU64::new(0)),
            )
            .await?;
            progress(&format!(
                "backlog: {n} events queued in {:.1} s; starting the connector",
                (p.last_ack - p.first).as_secs_f64()
            ));
            queued = Some(p);
        }
        let mut connector = connector::Connector::start(&self.exe, &config, &log)?;
        let restarted = Instant::now();
        progress(&format!(
            "connector: pid {}, Mosquitto on 127.0.0.1:{}, FHIR store {fhir_url}, metrics on 127.0.0.1:{metrics_port}",
            connector.pid(),
            broker.port
        ));
        let http = http_client()?;
        let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
        let idle = if self.backlog {
            // Draining from the start: no idle moment (the first run's idle RSS stands in), and
            // no new SUBSCRIBE is needed.
            session_idle
        } else {
            wait_subscribed(&mut connector, &broker, &http, metrics_port).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            connector::read_memory(connector.pid())
                .context("reading the connector's /proc status")?
        };
        let rss = connector::RssSampler::start(connector.pid(), RSS_EVERY);
        if !self.backlog {
            progress(&format!(
                "connector ready, idle RSS {:.1} MiB; publishing {n} events",
                idle.rss as f64 / 1048576.0
            ));
        }

        let acked = Arc::new(AtomicU64::new(if self.backlog { n } else { 0 }));
        let mut publishing = if self.backlog {
            None
        } else {
            Some(tokio::spawn(mqtt::publish(
                broker.port,
                self.payloads.clone(),
                self.rate,
                self.inflight,
                acked.clone(),
            )))
        };
        let t0 = Instant::now();
        let mut samples = Vec::new();
        let mut last = prom::Scrape::default();
        // With a backlog, times count from the connector's start.
        let mut published: Option<mqtt::Published> = queued.as_ref().map(|q| mqtt::Published {
            events: q.events,
            first: restarted,
            last_ack: restarted,
        });
        let mut deadline: Option<Instant> = published.as_ref().map(|_| restarted + self.timeout);
        let mut stopped_waiting = None;
        // No change in events received or written for this long ends the wait: a flush
        // interval may pass between writes, several cannot.
        let stall_limit = (self.flush * 3).max(Duration::from_secs(60));
        let mut progress_seen = (Instant::now(), (-1.0, -1.0));
        let mut next_line = t0 + PROGRESS_EVERY;
        let mut tick = tokio::time::interval(SCRAPE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            connector.check_running()?;
            if let Some(task) = publishing.as_mut().filter(|t| t.is_finished()) {
                let p = task.await.context("publisher task")??;
                publishing = None;
                progress(&format!(
                    "published {n} events in {:.1} s ({:.0}/s)",
                    (p.last_ack - p.first).as_secs_f64(),
                    p.rate()
                ));
                published = Some(p);
                deadline = Some(Instant::now() + self.timeout);
            }
            if let Some(text) = http_get(&http, &metrics_url).await {
                last = prom::Scrape::parse(&text);
                samples.push((Instant::now(), Sample::from_scrape(0.0, &last)));
            }
            let s = samples.last().map(|(_, s)| *s);
            let written = s.map_or(0.0, |s| s.written);
            if Instant::now() >= next_line {
                next_line += PROGRESS_EVERY;
                let g = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.0}"));
                progress(&format!(
                    "{:>6.1} s: published {}/{n}, received {}, written {written:.0}, pending {} measurements / {} windows, RSS {:.1} MiB",
                    t0.elapsed().as_secs_f64(),
                    acked.load(Ordering::Relaxed),
                    g(s.and_then(|s| s.incoming)),
                    g(s.and_then(|s| s.pending_measurements)),
                    g(s.and_then(|s| s.pending_windows)),
                    rss.current() as f64 / 1048576.0
                ));
            }
            if published.is_some() && written >= n as f64 {
                break;
            }
            let now = Instant::now();
            let seen = (s.and_then(|s| s.incoming).unwrap_or(0.0), written);
            if seen != progress_seen.1 {
                progress_seen = (now, seen);
            }
            if deadline.is_some_and(|d| now >= d) {
                stopped_waiting = Some(format!(
                    "timeout: {written:.0} of {n} written {} s after the last publish",
                    self.timeout.as_secs()
                ));
            } else if published.is_some() && now - progress_seen.0 >= stall_limit {
                stopped_waiting = Some(format!(
                    "no progress for {} s: {:.0} of {n} received, {written:.0} written",
                    stall_limit.as_secs(),
                    seen.0
                ));
            }
            if let Some(why) = &stopped_waiting {
                progress(why);
                break;
            }
        }
        let published = published.context("publisher result")?;
        let samples: Vec<Sample> = samples
            .into_iter()
            .map(|(at, s)| Sample {
                at: at.saturating_duration_since(published.first).as_secs_f64(),
                ..s
            })
            .collect();

        progress("SIGTERM: the connector drains (flush, write, acknowledge)");
        let (status, drain) = tokio::task::block_in_place(|| connector.terminate(DRAIN_TIMEOUT))?;
        if status.is_none() {
            progress(&format!(
                "the connector did not exit within {} s of SIGTERM; killed",
                DRAIN_TIMEOUT.as_secs()
            ));
        }
        let mem = rss.stop();
        let fhir = {
            let store = store.clone();
            let hr = self.heart_rate_readings;
            tokio::task::spawn_blocking(move || count_fhir(&store, hr)).await??
        };
        let _ = store_stop.send(true);
        let _ = store_task.await;
        let broker_drops = broker.dropped_warnings();
        let connector_log = std::fs::read_to_string(&log).unwrap_or_default();
        let publish_secs = match &queued {
            Some(q) => (q.last_ack - q.first).as_secs_f64(),
            None => (published.last_ack - published.first).as_secs_f64(),
        };
        Ok(Recorded {
            setup,
            publish_secs,
            mqtt_connections: connector_log.matches("MQTT connected.").count(),
            keep_alive_trouble: broker.keep_alive_trouble(),
            samples,
            last,
            idle_rss: idle.rss,
            sampled_peak_rss: mem.peak_rss,
            hwm: mem.hwm,
            broker_only,
            parse_only,
            fhir,
            drain_secs: drain.as_secs_f64(),
            exit_code: status.and_then(|s| s.code()),
            killed: status.is_none(),
            stopped_waiting,
            broker_drops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("s").is_err());
    }

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
