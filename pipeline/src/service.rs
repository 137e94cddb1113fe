//! Building the stage graph from a config, and running it: as the service (`run`, a source
//! until shutdown) or over a finite list of events ([`Pipeline::run`] with a channel the caller
//! fills: `iomt replay`, `iomt dead-letters replay`).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fhir_writer::{FhirTemplates, FhirWriter};
use grouper::GrouperConfig;
use normalizer::Normalizer;
use sources::SourceEvent;
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, PipelineConfig};
use crate::deadletter::DeadLetterStore;
use crate::http;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::shared::{Report, Shared};
use crate::spool::{Spool, SpoolConfig};
use crate::{commit, group, ingest, normalize, write};

/// Why the pipeline could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The config or its mappings are invalid (every problem, one per line).
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    /// A local resource could not be opened (dead-letter store, spool, HTTP listener).
    #[error("{what}: {source}")]
    Io {
        /// What was being opened.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the FHIR HTTP client: {0}")]
    Client(String),
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(crate::spool::SpoolError),
    /// The source stopped with an error.
    #[error(transparent)]
    Source(#[from] sources::SourceError),
}

/// Everything the stage graph needs: the mappings, the writer, the limits, the metrics and
/// where dead letters go.
pub struct Pipeline {
    normalizer: Arc<Normalizer>,
    templates: Arc<FhirTemplates>,
    writer: Arc<FhirWriter>,
    config: PipelineConfig,
    metrics: Arc<Metrics>,
    dead_letters: Option<DeadLetterStore>,
    options: RunOptions,
    spool: Option<(Spool, SpoolConfig)>,
}

/// How a run behaves beyond the config.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Collect a [`Report`] of everything done (for `iomt replay`).
    pub report: bool,
    /// Retry measurements while the FHIR server is unavailable (the service); one-shot runs
    /// report them instead and leave them un-committed.
    pub retry_unavailable: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            report: false,
            retry_unavailable: true,
        }
    }
}

/// What a run did.
#[derive(Debug)]
pub struct RunSummary {
    /// The report, when asked for.
    pub report: Option<Report>,
    /// The commit watermark at the end: events with a smaller sequence number are done.
    pub watermark: u64,
    /// Events admitted and not committed at the end (the source delivers them again).
    pub uncommitted: usize,
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
            errors.extend(errs.iter().map(|e| e.report_for(fm)));
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
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, PipelineError> {
        let (normalizer, templates) = load_mappings(config).map_err(PipelineError::Config)?;
        let mut cc = fhir_writer::FhirClientConfig::new(config.fhir.url.clone());
        cc.auth = config.auth().map_err(|e| PipelineError::Config(vec![e]))?;
        cc.retry.deadline = Duration::from_secs(config.fhir.retry_deadline_secs);
        cc.request_timeout = Duration::from_secs(config.fhir.request_timeout_secs);
        let client =
            fhir_writer::FhirClient::new(cc).map_err(|e| PipelineError::Client(e.to_string()))?;
        let templates = Arc::new(templates);
        let writer = FhirWriter::new(
            client,
            templates.clone(),
            fhir_writer::WriterConfig {
                resolution: config.fhir.resolution,
                device_identifier_system: config.fhir.device_identifier_system.clone(),
                max_concurrency: config.fhir.max_concurrency,
                bundles: config.fhir.bundles,
                bundle_size: config.fhir.bundle_size,
                bundle_concurrency: config.fhir.bundle_concurrency,
                stamp_profiles: config.fhir.stamp_profiles,
                ..Default::default()
            },
        );
        let dead_letters =
            DeadLetterStore::open(&config.dead_letters.dir).map_err(|e| PipelineError::Io {
                what: format!(
                    "opening the dead-letter store {}",
                    config.dead_letters.dir.display()
                ),
                source: e,
            })?;
        let spool = match config.spool() {
            Some(sc) => {
                // The reader started by `run` replays the un-committed tail itself.
                let (spool, _replay) = Spool::open(&sc).map_err(PipelineError::Spool)?;
                tracing::info!(
                    dir = %sc.dir.display(),
                    bytes = spool.bytes(),
                    "Spool open."
                );
                Some((spool, sc))
            }
            None => None,
        };
        let mut p = Pipeline::from_parts(
            normalizer,
            templates,
            Arc::new(writer),
            config.pipeline.clone(),
            metrics,
            Some(dead_letters),
        );
        p.spool = spool;
        Ok(p)
    }

    /// A pipeline from parts already built (`iomt replay` has no config file; without a
    /// dead-letter store, failed events are only reported).
    pub fn from_parts(
        normalizer: Normalizer,
        templates: Arc<FhirTemplates>,
        writer: Arc<FhirWriter>,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
        dead_letters: Option<DeadLetterStore>,
    ) -> Self {
        Pipeline {
            normalizer: Arc::new(normalizer),
            templates,
            writer,
            config,
            metrics,
            dead_letters,
            options: RunOptions::default(),
            spool: None,
        }
    }

    /// Sets the run options.
    pub fn with_options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// The FHIR writer (for its counters).
    pub fn writer(&self) -> &FhirWriter {
        &self.writer
    }

    /// The dead-letter store, if one is kept.
    pub fn dead_letters(&self) -> Option<&DeadLetterStore> {
        self.dead_letters.as_ref()
    }

    /// Runs the stage graph over the events arriving on `events` until its senders are gone and
    /// everything is written (or, after `shutdown` turns true, until `shutdown_drain_secs`
    /// have passed). `watermark` follows the commit watermark.
    pub async fn run<I: Into<crate::ledger::Input> + Send + 'static>(
        self,
        events: mpsc::Receiver<I>,
        shutdown: watch::Receiver<bool>,
        watermark: watch::Sender<u64>,
    ) -> RunSummary {
        let cap = self.config.channel_capacity.max(1);
        let chunk = self.config.chunk_events.max(1);
        // Channels between stages carry chunks: size them in events, roughly.
        let chunks = (cap / chunk).max(2);
        // With a spool: (the spool, its config, its watermark, its end at open).
        let (spool, first_seq) = match self.spool {
            Some((s, c)) => {
                let (start, end) = (s.committed(), s.next_seq());
                (
                    Some((Arc::new(std::sync::Mutex::new(Some(s))), c, end)),
                    start,
                )
            }
            None => (None, 0),
        };
        let shared = Arc::new(Shared::new(
            Ledger::starting_at(first_seq),
            self.metrics.clone(),
            self.dead_letters,
            self.options.report,
            spool.as_ref().map(|(s, _, _)| s.clone()),
        ));
        let (chunk_tx, chunk_rx) = mpsc::channel(chunks);
        let (norm_tx, norm_rx) = mpsc::channel(chunks);
        let (flush_tx, flush_rx) = mpsc::channel(1);

        // After shutdown, the last writes get `shutdown_drain_secs`.
        let (give_up_tx, give_up_rx) = watch::channel(false);
        let drain = Duration::from_secs(self.config.shutdown_drain_secs);
        let drain_timer = {
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                if shutdown.wait_for(|s| *s).await.is_ok() {
                    tokio::time::sleep(drain).await;
                    let _ = give_up_tx.send(true);
                }
            })
        };

        let (finished_tx, finished_rx) = watch::channel(false);
        let commit = tokio::spawn(commit::run(
            shared.clone(),
            watermark,
            finished_rx,
            spool.as_ref().map(|(s, _, _)| s.clone()),
        ));
        let ingest = {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                match spool {
                    Some((spool, config, end)) => {
                        // The source's events go to disk; the reader follows the spool.
                        let (durable_tx, durable_rx) = watch::channel(end);
                        let reader = tokio::spawn(ingest::read_spool(
                            shared.clone(),
                            spool.clone(),
                            durable_rx,
                            first_seq,
                            end,
                            chunk,
                            chunk_tx,
                            shutdown,
                        ));
                        ingest::run_spooled(events, shared, chunk, spool, config, durable_tx).await;
                        if let Err(e) = reader.await {
                            tracing::error!(error = %e, "The spool reader failed; the spool keeps its events.");
                        }
                    }
                    None => ingest::run(events, shared, chunk, chunk_tx).await,
                }
            })
        };
        let normalize = tokio::spawn(normalize::run(
            self.normalizer.clone(),
            shared.clone(),
            self.config.max_event_bytes,
            self.config.workers(),
            chunk_rx,
            norm_tx,
        ));
        let group = tokio::spawn(group::run(
            self.templates.clone(),
            shared.clone(),
            GrouperConfig {
                spread: self.config.flush_interval() / 4,
                flush_interval: self.config.flush_interval(),
                max_pending: std::num::NonZeroUsize::new(self.config.max_pending_measurements)
                    .unwrap_or(std::num::NonZeroUsize::MIN),
            },
            norm_rx,
            flush_tx,
        ));
        let write = tokio::spawn(write::run(
            self.writer.clone(),
            shared.clone(),
            flush_rx,
            give_up_rx,
            self.options.retry_unavailable,
        ));
        for (name, task) in [
            ("ingest", ingest),
            ("normalize", normalize),
            ("group", group),
            ("write", write),
        ] {
            if let Err(e) = task.await {
                tracing::error!(stage = name, error = %e, "A pipeline stage failed; its events stay un-acknowledged.");
            }
        }
        let _ = finished_tx.send(true);
        let watermark = commit.await.unwrap_or(0);
        drain_timer.abort();
        let uncommitted = shared.ledger().in_flight();
        if uncommitted > 0 {
            tracing::warn!(
                unacknowledged = uncommitted,
                "Stopping with events not written; the source will deliver them again."
            );
        }
        let report = shared
            .report
            .as_ref()
            .map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|e| e.into_inner())));
        RunSummary {
            report,
            watermark,
            uncommitted,
        }
    }
}

/// Runs the service until `shutdown` turns true: the configured source into the stage graph,
/// the metrics endpoint beside it; on shutdown the source stops, everything pending is written
/// (within `shutdown_drain_secs`), acks and checkpoints are sent, then it returns.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), PipelineError> {
    let metrics = Arc::new(Metrics::default());
    let pipeline = Pipeline::new(&config, metrics.clone())?;
    let (tx, rx) = mpsc::channel::<SourceEvent>(config.pipeline.channel_capacity.max(1));

    let http = if config.http.listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .map_err(|e| PipelineError::Io {
                what: format!("binding the metrics endpoint {}", config.http.listen),
                source: e,
            })?;
        if let Ok(a) = listener.local_addr() {
            tracing::info!(address = %a, "Serving /metrics, /healthz, /readyz.");
        }
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

    let (watermark_tx, _watermark_rx) = watch::channel(0u64);
    let summary = pipeline.run(rx, shutdown.clone(), watermark_tx).await;
    let _ = done_tx.send(true);
    let result = match source.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PipelineError::Source(e)),
        Err(e) => Err(PipelineError::Source(sources::SourceError::Config(
            format!("the source task failed: {e}"),
        ))),
    };
    if let Some(h) = http {
        if result.is_err() {
            h.abort(); // the source failed: stop now, without waiting for a shutdown signal
        }
        let _ = h.await;
    }
    tracing::info!(
        acked = metrics.acked.load(Ordering::Relaxed),
        committed = metrics.committed.load(Ordering::Relaxed),
        uncommitted = summary.uncommitted,
        "Connector stopped."
    );
    result
}
