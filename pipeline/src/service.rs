//! The long-running service (`iomt run`): source → bounded channel → normalize → batch
//! (max events / max delay) → group + FHIR write → ack. At-least-once: an event is acknowledged
//! only after every measurement it produced is written, or the event is dead-lettered. Batches
//! are written one after another, so one device's readings are written in order; the writer
//! parallelises devices within a batch. On SIGTERM/Ctrl-C the source stops, the buffered events
//! are processed and flushed, acks are sent, and the process exits.






use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use normalizer::{Measurement, Normalizer};
use sources::SourceEvent;
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config};
use crate::deadletter::{DeadLetterStore, Failure};
use crate::metrics::Metrics;
use crate::http;

/// Everything the pipeline needs, built from the config.
pub struct Pipeline {
    normalizer: Normalizer,
    writer: fhir_writer::FhirWriter,
    dead_letters: DeadLetterStore,
    metrics: Arc<Metrics>,
    config: config::PipelineConfig,
}

/// Loads both mappings, reporting every error.
pub fn load_mappings(
    config: &Config,
) -> Result<(Normalizer, fhir_writer::FhirTemplates), Vec<String>> {
    let mut errors = Vec::new();
    let dm = &config.templates.device_mapping;
    let fm = &config.templates.fhir_mapping;
    let normalizer = match std::fs::read_to_string(dm) {
        Ok(text) => {
            let loaded = normalizer::load_device_mapping(&text);
            errors.extend(
                loaded
                    .errors
                    .iter()
                    .map(|e| format!("{}:{e}", dm.display())),
            );
            Some(Normalizer::new(loaded.mapping))
        }
        Err(e) => {
            errors.push(format!("{}: {e}", dm.display()));
            None
        }
    };
    let templates = match std::fs::read_to_string(fm) {
        Ok(text) => {
            let (t, errs) = fhir_writer::FhirTemplates::load(&text);
            errors.extend(errs.iter().map(|e| {
                let at = e.location();
                format!("{}:{}:{}: {e}", fm.display(), at.line, at.column)
            }));
            Some(t)
        }
        Err(e) => {
            errors.push(format!("{}: {e}", fm.display()));
            None
        }
    };
    match (normalizer, templates) {
        (Some(n), Some(t)) if errors.is_empty() => Ok((n, t)),
        _ => Err(errors),
    }
}

/// Loads and checks a config and its mappings, reporting every error.
pub fn validate(path: &Path) -> Result<Config, Vec<String>> {
    let config = Config::load(path).map_err(|e| vec![e])?;
    let mut errors = config.validate();
    if let Err(e) = load_mappings(&config) {
        errors.extend(e);
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

impl Pipeline {
    /// Builds the pipeline from a validated config.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self> {
        let (normalizer, templates) =
            load_mappings(config).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
        let mut cc = fhir_writer::FhirClientConfig::new(config.fhir.url.clone());
        cc.auth = config.auth();
        cc.retry.deadline = Duration::from_secs(config.fhir.retry_deadline_secs);
        cc.request_timeout = Duration::from_secs(config.fhir.request_timeout_secs);
        let client = fhir_writer::FhirClient::new(cc).context("building the HTTP client")?;
        let writer = fhir_writer::FhirWriter::new(
            client,
            Arc::new(templates),
            fhir_writer::WriterConfig {
                resolution: config.fhir.resolution,
                device_identifier_system: config.fhir.device_identifier_system.clone(),
                max_concurrency: config.fhir.max_concurrency,
                ..Default::default()
            },
        );
        let dead_letters = DeadLetterStore::open(&config.dead_letters.dir).with_context(|| {
            format!(
                "opening the dead-letter store {}",
                config.dead_letters.dir.display()
            )
        })?;
        Ok(Pipeline {
            normalizer,
            writer,
            dead_letters,
            metrics,
            config: config.pipeline.clone(),
        })
    }

    /// The dead-letter store.
    pub fn dead_letters(&self) -> &DeadLetterStore {
        &self.dead_letters
    }

    fn dead_letter(&self, ev: &SourceEvent, failure: Failure<'_>) -> bool {
        let stage = failure.stage;
        match self.dead_letters.put(
            failure,
            &ev.origin,
            ev.ingestion_time,
            &ev.body,
            &ev.properties,
            &ev.system_properties,
        ) {
            Ok(id) => {
                self.metrics.dead_letter(stage);
                tracing::debug!(id, origin = %ev.origin, "Event dead-lettered.");
                true
            }
            Err(e) => {
                // Not stored: do not ack, so the source delivers it again.
                tracing::error!(error = %e, "Could not store a dead letter; the event will be redelivered.");
                false
            }
        }
    }

    /// Processes one batch; returns the events that may be acknowledged (in order), and
    /// keeps back the ones whose writes could not complete before `give_up` fired.
    pub async fn process_batch(
        &self,
        events: Vec<SourceEvent>,
        give_up: &watch::Receiver<bool>,
    ) -> Vec<SourceEvent> {
        let mut done = vec![true; events.len()];
        let mut measurements: Vec<(usize, Measurement)> = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            self.metrics.incoming.fetch_add(1, Ordering::Relaxed);
            if ev.body.len() > self.config.max_event_bytes {
                let msg = format!(
                    "The event body is {} bytes; the limit (pipeline.max_event_bytes) is {}",
                    ev.body.len(),
                    self.config.max_event_bytes
                );
                self.metrics.error("normalize", "PayloadTooLargeException");
                tracing::warn!(
                    error_type = "PayloadTooLargeException",
                    bytes = ev.body.len(),
                    "Event too large."
                );
                done[i] = self.dead_letter(
                    ev,
                    Failure {
                        stage: "normalize",
                        error_type: "PayloadTooLargeException",
                        message: &msg,
                    },
                );
                continue;
            }
            let t = Instant::now();
            let result = self.normalizer.normalize(
                &ev.body,
                &ev.properties,
                &ev.system_properties,
                Some(ev.ingestion_time),
            );
            self.metrics.normalize_latency.observe(t.elapsed());
            match result {
                Ok(ms) if ms.is_empty() => {
                    self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(origin = %ev.origin, "Event matched no template.");
                }
                Ok(ms) => {
                    self.metrics.normalized.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .measurements
                        .fetch_add(ms.len() as u64, Ordering::Relaxed);
                    measurements.extend(ms.into_iter().map(|m| (i, m)));
                }
                Err(e) => {
                    self.metrics.error("normalize", e.type_name());
                    tracing::warn!(error_type = e.type_name(), "Event could not be normalized.");
                    tracing::debug!(error = %e, origin = %ev.origin, "Normalization error.");
                    done[i] = self.dead_letter(
                        ev,
                        Failure {
                            stage: "normalize",
                            error_type: e.type_name(),
                            message: &e.message,
                        },
                    );
                }
            }
        }

        let mut todo = measurements;
        let mut attempt = 0u32;
        while !todo.is_empty() {
            let t = Instant::now();
            let groups = grouper::group_measurements(todo.iter().cloned()).len();
            self.metrics.group_latency.observe(t.elapsed());
            let t = Instant::now();
            let report = self
                .writer
                .write_batch(todo.clone(), Some(Utc::now()))
                .await;
            self.metrics.fhir_write_latency.observe(t.elapsed());
            let stats = self.writer.client().stats();
            self.metrics
                .fhir_requests
                .store(stats.requests.load(Ordering::Relaxed), Ordering::Relaxed);
            self.metrics
                .fhir_retries
                .store(stats.retries.load(Ordering::Relaxed), Ordering::Relaxed);
            self.metrics.fhir_create_races.store(
                self.writer.stats().create_races.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            self.metrics
                .saved("Observation", "Created", report.observations_created);
            self.metrics
                .saved("Observation", "Updated", report.observations_updated);
            self.metrics
                .saved("Observation", "NoOperation", report.observations_unchanged);
            let mut retry: BTreeSet<usize> = BTreeSet::new();
            let mut failed: BTreeMap<usize, (&'static str, String)> = BTreeMap::new();
            for e in &report.errors {
                self.metrics.error("fhir", e.error_type);
                if e.retryable {
                    retry.extend(e.events.iter().copied());
                } else {
                    tracing::warn!(error_type = e.error_type, measurement_type = %e.measurement_type, "Measurements could not be written.");
                    for ev in &e.events {
                        failed
                            .entry(*ev)
                            .or_insert((e.error_type, e.message.clone()));
                    }
                }
            }
            self.metrics.groups.fetch_add(
                groups.saturating_sub(report.errors.len()) as u64,
                Ordering::Relaxed,
            );
            for (i, (error_type, message)) in &failed {
                if !retry.contains(i) {
                    done[*i] = self.dead_letter(
                        &events[*i],
                        Failure {
                            stage: "fhir",
                            error_type,
                            message,
                        },
                    );
                }
            }
            if retry.is_empty() {
                break;
            }
            // The FHIR server is unavailable: keep the events and try again (never drop).
            self.metrics.batch_retries.fetch_add(1, Ordering::Relaxed);
            let delay = Duration::from_millis((500u64 << attempt.min(6)).min(30_000));
            attempt += 1;
            tracing::warn!(
                events = retry.len(),
                delay_ms = delay.as_millis() as u64,
                "FHIR server unavailable; retrying the batch."
            );
            todo.retain(|(i, _)| retry.contains(i));
            let mut give_up = give_up.clone();
            if *give_up.borrow() {
                for i in &retry {
                    done[*i] = false;
                }
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = give_up.changed() => {
                    for i in &retry {
                        done[*i] = false;
                    }
                    break;
                }
            }
        }
        events
            .into_iter()
            .zip(done)
            .filter_map(|(ev, ok)| ok.then_some(ev))
            .collect()
    }
}

/// Runs the service until `shutdown` turns true.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let pipeline = Arc::new(Pipeline::new(&config, metrics.clone())?);
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(config.pipeline.channel_capacity.max(1));

    let http = if config.http.listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("binding the metrics endpoint {}", config.http.listen))?;
        tracing::info!(address = %listener.local_addr()?, "Serving /metrics, /healthz, /readyz.");
        Some(tokio::spawn(http::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        )))
    };

    let (done_tx, done_rx) = watch::channel(false);
    let source = match config.source.clone() {
        config::SourceConfig::Mqtt(m) => {
            tokio::spawn(sources::mqtt::run(m, tx, shutdown.clone(), done_rx))
        }
        config::SourceConfig::EventHubs(e) => {
            tokio::spawn(sources::event_hubs::run(e, tx, shutdown.clone(), done_rx))
        }
    };
    metrics.ready.store(1, Ordering::Relaxed);
    tracing::info!("Connector running.");

    // After shutdown, the last batches get `shutdown_drain_secs` to be written.
    let (give_up_tx, give_up_rx) = watch::channel(false);
    {
        let mut shutdown = shutdown.clone();
        let drain = Duration::from_secs(config.pipeline.shutdown_drain_secs);
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            tokio::time::sleep(drain).await;
            let _ = give_up_tx.send(true);
        });
    }

    let max = config.pipeline.batch_max_events.max(1);
    let delay = config.pipeline.batch_max_delay();
    loop {
        let Some(first) = rx.recv().await else {
            break; // the source stopped and the channel is drained
        };
        let deadline = tokio::time::Instant::now() + delay;
        let mut batch = vec![first];
        while batch.len() < max {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => batch.push(ev),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let n = batch.len();
        let ackable = pipeline.process_batch(batch, &give_up_rx).await;
        let acked = ackable.len();
        for ev in ackable {
            ev.ack.ack().await;
        }
        metrics.acked.fetch_add(acked as u64, Ordering::Relaxed);
        if acked < n {
            tracing::warn!(
                unacknowledged = n - acked,
                "Shutting down with events not written; the source will deliver them again."
            );
        }
    }
    let _ = done_tx.send(true);
    match source.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(anyhow::anyhow!(e)),
        Err(e) => return Err(anyhow::anyhow!("source task failed: {e}")),
    }
    if let Some(h) = http {
        let _ = h.await;
    }
    tracing::info!(
        acked = metrics.acked.load(Ordering::Relaxed),
        "Connector stopped."
    );
    Ok(())
}
