//! The two measured phases, run and recorded: the broker-only reference
//! ([`Phases::broker_only`]) and the connector between Mosquitto and the local FHIR store
//! ([`Phases::connector`]: start, publish or drain a backlog, scrape `/metrics`, sample RSS,
//! SIGTERM, count what the FHIR store holds).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::report::{self, FhirCount, Recorded, Sample, Setup};
use super::setup::{write_connector_config, CONNECTOR_CLIENT_ID};
use super::{broker, connector, free_port, mqtt, progress, prom};

/// Scrape period of `/metrics`.
const SCRAPE_EVERY: Duration = Duration::from_millis(500);
/// RSS sampling period.
const RSS_EVERY: Duration = Duration::from_millis(200);
/// A progress line this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// SIGTERM to exit at most (the connector's own drain limit is 30 s by default).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

/// What both phases share.
pub(super) struct Phases {
    /// The Mosquitto binary.
    pub(super) mosquitto: PathBuf,
    /// This `iomt` binary, run as the connector.
    pub(super) exe: PathBuf,
    /// The bench folder.
    pub(super) dir: PathBuf,
    /// The simulated events, published by both phases.
    pub(super) payloads: Arc<mqtt::Payloads>,
    /// Publish rate, events/s (0: as fast as acknowledged).
    pub(super) rate: f64,
    /// Unacknowledged QoS 1 messages per client.
    pub(super) inflight: u16,
    /// The connector's flush interval.
    pub(super) flush: Duration,
    /// After the last publish, how long to wait for everything to be written.
    pub(super) timeout: Duration,
    /// Heart-rate readings published, to check the FHIR store against.
    pub(super) heart_rate_readings: u64,
    /// Queue everything on the broker before the connector starts (`--backlog`).
    pub(super) backlog: bool,
}

impl Phases {
    /// The same publisher into a bare QoS 1 subscriber on its own fresh Mosquitto.
    pub(super) async fn broker_only(&self) -> Result<report::BrokerOnly> {
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
    pub(super) async fn connector(
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
