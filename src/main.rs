//! `iomt`: the IoMT connector's command line.
//!
//! The commands and their options: README.md ("Command line") and `iomt <command> --help`.

mod commands;
mod events;
mod review;

use commands::{bench, demo, simulate};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use normalizer::{load_device_mapping, Normalizer, TemplateError};

#[derive(Parser)]
#[command(
    name = "iomt",
    version,
    about = "IoMT connector: device JSON to FHIR R4 Observations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check mapping templates; exit 0 when valid, 1 with every error otherwise.
    Validate {
        /// Device-mapping template (CollectionContent).
        #[arg(long, value_name = "FILE", required_unless_present = "config")]
        device_mapping: Option<PathBuf>,
        /// A service config: checks it and both mappings it names.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["device_mapping", "fhir_mapping"])]
        config: Option<PathBuf>,
        /// FHIR-mapping template (CollectionFhir).
        #[arg(long, value_name = "FILE")]
        fhir_mapping: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Normalize device messages into measurements (prints JSON).
    Normalize {
        /// Device-mapping template (CollectionContent).
        #[arg(long, value_name = "FILE")]
        device_mapping: PathBuf,
        /// One device message (the body).
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "events",
            required_unless_present = "events"
        )]
        input: Option<PathBuf>,
        /// A JSON array of events ({"body"|"bodyText", "properties", "systemProperties"}).
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// Treat the input as the whole document templates see (no envelope wrapping).
        #[arg(long)]
        document: bool,
        /// Run the valid templates of a mapping that has errors (as the reference's
        /// partially built collection does) instead of refusing it.
        #[arg(long)]
        skip_invalid_templates: bool,
    },
    /// Run normalization, grouping and FHIR conversion offline on one batch (prints JSON):
    /// the local twin of the MedTech mapping debugger.
    Map {
        /// Device-mapping template (CollectionContent).
        #[arg(long, value_name = "FILE")]
        device_mapping: PathBuf,
        /// FHIR-mapping template (CollectionFhir).
        #[arg(long, value_name = "FILE")]
        fhir_mapping: PathBuf,
        /// A JSON array of events ({"body"|"bodyText", "properties", "systemProperties"}).
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        /// Set `issued` on every Observation (RFC 3339); left out by default so output is
        /// reproducible.
        #[arg(long, value_name = "TIME")]
        issued: Option<String>,
        /// Keep running: re-map whenever a template or the events file changes, showing each
        /// stage and every error (template line:column, event index).
        #[arg(long)]
        watch: bool,
    },
    /// Run the full pipeline into a FHIR server as one batch and print the report.
    Replay {
        /// Device-mapping template (CollectionContent).
        #[arg(long, value_name = "FILE")]
        device_mapping: PathBuf,
        /// FHIR-mapping template (CollectionFhir).
        #[arg(long, value_name = "FILE")]
        fhir_mapping: PathBuf,
        /// A JSON array of events ({"body"|"bodyText", "properties", "systemProperties"}).
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        #[command(flatten)]
        fhir: FhirArgs,
    },
    /// The whole pipeline on embedded defaults: MQTT broker, simulator, connector, local FHIR store.
    Demo(demo::DemoArgs),
    /// A review page for remote-monitoring teams, reading any FHIR R4 server.
    Review {
        /// FHIR R4 base URL (credentials from the environment, as for `replay`).
        #[arg(long, value_name = "URL")]
        fhir_url: String,
        /// Out-of-range thresholds: a JSON file `{"<code>": [low, high], ...}` (default: common vitals).
        #[arg(long, value_name = "FILE")]
        thresholds: Option<PathBuf>,
        /// Address to serve the page on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// The connector's /metrics URL, for the pipeline health panel.
        #[arg(long, value_name = "URL")]
        metrics_url: Option<String>,
        /// The connector's dead-letter directory, to list and inspect dead letters on the page.
        #[arg(long, value_name = "DIR")]
        dead_letters: Option<PathBuf>,
        /// A device is fresh while its last reading is younger than this (minutes).
        #[arg(long, default_value_t = 10, value_name = "MINUTES")]
        fresh_minutes: u32,
        /// A device is stale once its last reading is this old (minutes); aging in between.
        #[arg(long, default_value_t = 60, value_name = "MINUTES")]
        stale_minutes: u32,
    },
    /// Simulate devices: realistic vital-sign streams with faults, to stdout, a file or MQTT.
    Simulate(simulate::SimulateArgs),
    /// Measure the connector on this machine: Mosquitto, the local FHIR store, `iomt run`.
    Bench(bench::BenchArgs),
    /// Serve the local development FHIR store (SQLite) on its own, e.g. for `replay`.
    FhirStore {
        /// The SQLite file (created if missing).
        #[arg(long, value_name = "FILE", default_value = "fhir-store.sqlite")]
        db: PathBuf,
        /// Address to serve on; the base URL is http://ADDR/fhir/R4.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Enable `POST /$reset` (deletes everything; for tests).
        #[arg(long)]
        dev_reset: bool,
    },
    /// Run the connector as a long-running service.
    Run {
        /// The service config (TOML); see config/example.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Inspect and reprocess the dead-letter store.
    DeadLetters {
        /// The service config (TOML).
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// One line per dead letter: id, stage, error type, message.
    List,
    /// One dead letter in full (JSON).
    Show {
        /// Its id.
        id: String,
    },
    /// Reprocess dead letters with the current templates; those that now succeed are removed.
    Replay {
        /// Only this one.
        #[arg(long)]
        id: Option<String>,
    },
}

/// Where and how to reach the FHIR server. Secrets come from the environment only.
#[derive(clap::Args, Debug, Clone)]
struct FhirArgs {
    /// FHIR R4 base URL, e.g. http://127.0.0.1:8080/fhir/R4.
    #[arg(long, value_name = "URL", env = "IOMT_FHIR_URL")]
    fhir_url: String,
    /// Identity resolution: Create, Lookup or LookupWithEncounter.
    #[arg(long, default_value = "Lookup")]
    resolution: fhir_writer::ResolutionMode,
    /// System of Device identifiers (MedTech's DefaultDeviceIdentifierSystem).
    #[arg(long, value_name = "URI", env = "IOMT_DEVICE_IDENTIFIER_SYSTEM")]
    device_identifier_system: Option<String>,
    /// Give up on a request after this many seconds of retries.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    retry_deadline: u64,
    /// Devices written in parallel.
    #[arg(long, default_value_t = 10)]
    max_concurrency: usize,
    /// One request per read and write instead of FHIR batch Bundles (to compare; a server
    /// without Bundle support gets this by itself).
    #[arg(long)]
    no_bundles: bool,
    /// Most entries per Bundle.
    #[arg(long, value_name = "N", default_value_t = fhir_writer::DEFAULT_BUNDLE_SIZE as u64, value_parser = clap::value_parser!(u64).range(1..=1000))]
    bundle_size: u64,
}

impl FhirArgs {
    /// Auth from the environment: IOMT_FHIR_BEARER_TOKEN, or IOMT_FHIR_TOKEN_URL +
    /// IOMT_FHIR_CLIENT_ID + IOMT_FHIR_CLIENT_SECRET (+ IOMT_FHIR_SCOPE or IOMT_FHIR_RESOURCE).
    fn auth() -> Result<fhir_writer::auth::Auth> {
        use fhir_writer::auth::{Auth, ClientCredentials};
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(t) = var("IOMT_FHIR_BEARER_TOKEN") {
            return Ok(Auth::Bearer(t));
        }
        match (var("IOMT_FHIR_TOKEN_URL"), var("IOMT_FHIR_CLIENT_ID"), var("IOMT_FHIR_CLIENT_SECRET")) {
            (Some(token_url), Some(client_id), Some(client_secret)) => Ok(Auth::ClientCredentials(ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope: var("IOMT_FHIR_SCOPE"),
                resource: var("IOMT_FHIR_RESOURCE"),
            })),
            (None, None, None) => Ok(Auth::None),
            _ => anyhow::bail!("OAuth2 needs IOMT_FHIR_TOKEN_URL, IOMT_FHIR_CLIENT_ID and IOMT_FHIR_CLIENT_SECRET together"),
        }
    }

    fn writer(
        &self,
        templates: std::sync::Arc<fhir_writer::FhirTemplates>,
    ) -> Result<fhir_writer::FhirWriter> {
        let mut cc = fhir_writer::FhirClientConfig::new(self.fhir_url.clone());
        cc.auth = Self::auth()?;
        cc.retry.deadline = std::time::Duration::from_secs(self.retry_deadline);
        let client = fhir_writer::FhirClient::new(cc).context("building the HTTP client")?;
        let config = fhir_writer::WriterConfig {
            resolution: self.resolution,
            device_identifier_system: self.device_identifier_system.clone(),
            max_concurrency: self.max_concurrency,
            bundles: !self.no_bundles,
            bundle_size: usize::try_from(self.bundle_size)
                .unwrap_or(fhir_writer::DEFAULT_BUNDLE_SIZE),
            ..Default::default()
        };
        Ok(fhir_writer::FhirWriter::new(client, templates, config))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate {
            device_mapping: Some(device_mapping),
            fhir_mapping,
            format,
            ..
        } => validate(&device_mapping, fhir_mapping.as_deref(), format),
        Command::Validate {
            config: Some(config),
            format,
            ..
        } => validate_config(&config, format),
        Command::Validate { .. } => anyhow::bail!("give --device-mapping or --config"),
        Command::Run { config } => run_service(&config),
        Command::FhirStore {
            db,
            listen,
            dev_reset,
        } => {
            init_logging();
            let store = fhir_store::Store::open(&db)
                .with_context(|| format!("opening {}", db.display()))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                println!("iomt fhir-store: http://{}/fhir/R4", listener.local_addr()?);
                fhir_store::serve_with(
                    listener,
                    store,
                    fhir_store::ServeConfig {
                        dev_reset,
                        ..Default::default()
                    },
                    async {
                        let _ = tokio::signal::ctrl_c().await;
                    },
                )
                .await
                .context("serving the FHIR store")
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => simulate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Review {
            fhir_url,
            thresholds,
            listen,
            metrics_url,
            dead_letters,
            fresh_minutes,
            stale_minutes,
        } => {
            init_logging();
            if fresh_minutes == 0 || fresh_minutes > stale_minutes {
                anyhow::bail!(
                    "--fresh-minutes ({fresh_minutes}) must be at least 1 and at most --stale-minutes ({stale_minutes})"
                );
            }
            let thresholds = match thresholds {
                Some(p) => review::load_thresholds(&p)?,
                None => review::default_thresholds(),
            };
            let mut fhir = fhir_writer::FhirClientConfig::new(fhir_url);
            fhir.auth = FhirArgs::auth()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                println!("iomt review: http://{}/", listener.local_addr()?);
                review::serve(
                    listener,
                    fhir,
                    review::ReviewOptions {
                        metrics_url,
                        thresholds,
                        dead_letters,
                        freshness: review::Freshness {
                            fresh_secs: i64::from(fresh_minutes) * 60,
                            stale_secs: i64::from(stale_minutes) * 60,
                        },
                    },
                )
                .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(args),
        Command::DeadLetters { config, action } => {
            let Some(config) = config else {
                anyhow::bail!("give --config");
            };
            dead_letters(&config, action)
        }
        Command::Map {
            device_mapping,
            fhir_mapping,
            events,
            issued,
            watch: false,
        } => map(&device_mapping, &fhir_mapping, &events, issued.as_deref()),
        Command::Map {
            device_mapping,
            fhir_mapping,
            events,
            watch: true,
            ..
        } => watch_map(&device_mapping, &fhir_mapping, &events),
        Command::Replay {
            device_mapping,
            fhir_mapping,
            events,
            fhir,
        } => replay(&device_mapping, &fhir_mapping, &events, &fhir),
        Command::Normalize {
            device_mapping,
            input,
            events,
            document,
            skip_invalid_templates,
        } => normalize(
            &device_mapping,
            input.as_deref(),
            events.as_deref(),
            document,
            skip_invalid_templates,
        ),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn error_json(file: &Path, e: &TemplateError) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    v["file"] = json!(file.display().to_string());
    v
}

fn print_template_errors(file: &Path, errors: &[TemplateError], out: &mut dyn Write) -> Result<()> {
    for e in errors {
        writeln!(out, "{}:{e}", file.display())?;
    }
    Ok(())
}

fn validate(
    device_mapping: &Path,
    fhir_mapping: Option<&Path>,
    format: Format,
) -> Result<ExitCode> {
    let loaded = load_device_mapping(&read_text(device_mapping)?);
    let fhir = match fhir_mapping {
        Some(p) => Some((p, fhir_writer::FhirTemplates::load(&read_text(p)?))),
        None => None,
    };
    let fhir_errors = fhir.as_ref().map(|(_, (_, e))| e.len()).unwrap_or(0);
    let valid = loaded.errors.is_empty() && fhir_errors == 0;
    let stdout = &mut std::io::stdout().lock();
    match format {
        Format::Json => {
            let mut errors: Vec<Value> = loaded
                .errors
                .iter()
                .map(|e| error_json(device_mapping, e))
                .collect();
            if let Some((p, (_, errs))) = &fhir {
                for e in errs {
                    let mut v = serde_json::to_value(e.to_record())?;
                    v["file"] = json!(p.display().to_string());
                    errors.push(v);
                }
            }
            let mut report = json!({
                "valid": valid,
                "deviceMapping": {"file": device_mapping.display().to_string(), "templates": loaded.mapping.templates.len()},
                "errors": errors,
            });
            if let Some((p, (t, _))) = &fhir {
                report["fhirMapping"] =
                    json!({"file": p.display().to_string(), "templates": t.templates().len()});
            }
            writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
        }
        Format::Text => {
            print_template_errors(device_mapping, &loaded.errors, stdout)?;
            if let Some((p, (_, errs))) = &fhir {
                for e in errs {
                    writeln!(stdout, "{}", e.report_for(p))?;
                }
            }
            if valid {
                writeln!(
                    stdout,
                    "{}: valid ({} templates)",
                    device_mapping.display(),
                    loaded.mapping.templates.len()
                )?;
                if let Some((p, (t, _))) = &fhir {
                    writeln!(
                        stdout,
                        "{}: valid ({} templates)",
                        p.display(),
                        t.templates().len()
                    )?;
                }
            } else {
                writeln!(stdout, "{} error(s)", loaded.errors.len() + fhir_errors)?;
            }
        }
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Normalizes every event; measurements carry their event index.
struct Normalized {
    measurements: Vec<(usize, normalizer::Measurement)>,
    errors: Vec<Value>,
    dropped: Vec<usize>,
}

fn normalize_events(
    normalizer: &Normalizer,
    events: &[events::Event],
    document: bool,
) -> Result<Normalized> {
    let mut out = Normalized {
        measurements: Vec::new(),
        errors: Vec::new(),
        dropped: Vec::new(),
    };
    for (i, ev) in events.iter().enumerate() {
        let result = if document {
            match serde_json::from_slice::<Value>(&ev.body) {
                Ok(doc) => normalizer.normalize_document(&doc, ev.ingestion_time()),
                Err(e) => Err(normalizer::NormalizeError::invalid_format(e)),
            }
        } else {
            normalizer.normalize(
                &ev.body,
                &ev.properties,
                &ev.system_properties,
                ev.ingestion_time(),
            )
        };
        match result {
            Ok(ms) if ms.is_empty() => out.dropped.push(i),
            Ok(ms) => out.measurements.extend(ms.into_iter().map(|m| (i, m))),
            Err(e) => {
                let mut v = serde_json::to_value(&e)?;
                v["event"] = json!(i);
                v["stage"] = json!("normalize");
                out.errors.push(v);
            }
        }
    }
    Ok(out)
}

fn measurement_json(list: &[(usize, normalizer::Measurement)]) -> Result<Vec<Value>> {
    list.iter()
        .map(|(i, m)| {
            let mut v = serde_json::to_value(m)?;
            v["event"] = json!(i);
            Ok(v)
        })
        .collect()
}

/// Loads a device mapping, printing its errors; `None` when it is invalid.
fn load_normalizer(device_mapping: &Path, skip_invalid: bool) -> Result<Option<Normalizer>> {
    let loaded = load_device_mapping(&read_text(device_mapping)?);
    if !loaded.errors.is_empty() {
        print_template_errors(
            device_mapping,
            &loaded.errors,
            &mut std::io::stderr().lock(),
        )?;
        if !skip_invalid {
            eprintln!(
                "{}: the device mapping is invalid ({} error(s))",
                device_mapping.display(),
                loaded.errors.len()
            );
            return Ok(None);
        }
    }
    Ok(Some(Normalizer::new(loaded.mapping)))
}

fn validate_config(path: &Path, format: Format) -> Result<ExitCode> {
    let result = pipeline::validate(path);
    let stdout = &mut std::io::stdout().lock();
    let errors = result.as_ref().err().cloned().unwrap_or_default();
    match format {
        Format::Json => writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&json!({"valid": errors.is_empty(), "errors": errors}))?
        )?,
        Format::Text => {
            for e in &errors {
                writeln!(stdout, "{e}")?;
            }
            if errors.is_empty() {
                writeln!(stdout, "{}: valid", path.display())?;
            } else {
                writeln!(stdout, "{} error(s)", errors.len())?;
            }
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn init_service_logging(config: &pipeline::config::Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn run_service(path: &Path) -> Result<ExitCode> {
    let config = match pipeline::validate(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error(s); not starting",
                path.display(),
                errors.len()
            );
            return Ok(ExitCode::from(1));
        }
    };
    init_service_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
            tracing::info!("Shutting down: stopping the source, flushing, acknowledging.");
            let _ = tx.send(true);
        });
        pipeline::run(config, rx).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn dead_letters(path: &Path, action: DeadLetterAction) -> Result<ExitCode> {
    let config = pipeline::config::Config::load(path).map_err(|e| anyhow::anyhow!(e))?;
    let store = pipeline::deadletter::DeadLetterStore::open(&config.dead_letters.dir)?;
    let stdout = &mut std::io::stdout().lock();
    match action {
        DeadLetterAction::List => {
            for dl in store.list()? {
                let msg: String = dl.message.chars().take(160).collect();
                writeln!(
                    stdout,
                    "{}\t{}\t{}\t{}",
                    dl.id, dl.stage, dl.error_type, msg
                )?;
            }
        }
        DeadLetterAction::Show { id } => {
            let dl = store
                .get(&id)
                .with_context(|| format!("dead letter {id}"))?;
            writeln!(stdout, "{}", serde_json::to_string_pretty(&dl)?)?;
        }
        DeadLetterAction::Replay { id } => {
            let config = pipeline::validate(path).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
            init_service_logging(&config);
            let list = match id {
                Some(id) => vec![store
                    .get(&id)
                    .with_context(|| format!("dead letter {id}"))?],
                None => store.list()?,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let metrics = std::sync::Arc::new(pipeline::metrics::Metrics::default());
            // Replays go through the same pipeline; failures land in a scratch store so the
            // original record stays until its event succeeds.
            let mut scratch = config.clone();
            scratch.dead_letters.dir = config.dead_letters.dir.join(".replay");
            // A finite run: the service's spool (its events and its lock) is not touched.
            scratch.spool.enabled = Some(false);
            let pipeline = pipeline::Pipeline::new(&scratch, metrics.clone())?.with_options(
                pipeline::RunOptions {
                    report: true,
                    retry_unavailable: false,
                },
            );
            let summary = runtime.block_on(async {
                let (tx, rx) = tokio::sync::mpsc::channel(list.len().max(1));
                for dl in &list {
                    let _ = tx
                        .send(sources::SourceEvent {
                            body: dl.body_bytes(),
                            properties: dl.properties.clone(),
                            system_properties: dl.system_properties.clone(),
                            ingestion_time: dl.ingestion_time,
                            origin: dl.origin.clone(),
                            ack: sources::Ack::none(),
                        })
                        .await;
                }
                drop(tx);
                let (_never, shutdown) = tokio::sync::watch::channel(false);
                let (watermark, _) = tokio::sync::watch::channel(0);
                pipeline.run(rx, shutdown, watermark).await
            });
            let report = summary.report.unwrap_or_default();
            let mut failing = report.failed.clone();
            for e in &report.write.errors {
                failing.extend(e.events.iter().copied());
            }
            let (mut ok, mut still) = (0, 0);
            for (i, dl) in list.iter().enumerate() {
                let seq = i as u64;
                if seq < summary.watermark && !failing.contains(&seq) {
                    store.remove(&dl.id)?;
                    ok += 1;
                    writeln!(stdout, "{}\treplayed", dl.id)?;
                } else {
                    still += 1;
                    writeln!(stdout, "{}\tstill failing", dl.id)?;
                }
            }
            let _ = std::fs::remove_dir_all(config.dead_letters.dir.join(".replay"));
            writeln!(stdout, "{ok} replayed, {still} still failing")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_fhir_mapping(fhir_mapping: &Path) -> Result<Option<fhir_writer::FhirTemplates>> {
    let (templates, errors) = fhir_writer::FhirTemplates::load(&read_text(fhir_mapping)?);
    if errors.is_empty() {
        return Ok(Some(templates));
    }
    for e in &errors {
        eprintln!("{}", e.report_for(fhir_mapping));
    }
    eprintln!(
        "{}: the FHIR mapping is invalid ({} error(s))",
        fhir_mapping.display(),
        errors.len()
    );
    Ok(None)
}

fn replay(
    device_mapping: &Path,
    fhir_mapping: &Path,
    events: &Path,
    fhir: &FhirArgs,
) -> Result<ExitCode> {
    init_logging();
    let Some(normalizer) = load_normalizer(device_mapping, false)? else {
        return Ok(ExitCode::from(1));
    };
    let Some(templates) = load_fhir_mapping(fhir_mapping)? else {
        return Ok(ExitCode::from(1));
    };
    let events = events::read_events(events)?;
    let templates = std::sync::Arc::new(templates);
    let writer = std::sync::Arc::new(fhir.writer(templates.clone())?);
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The events file as a source: one pass through the stage graph, no spool, no dead-letter
    // store (failures are reported), everything flushed when the file ends.
    let pipeline = pipeline::Pipeline::from_parts(
        normalizer,
        templates,
        writer.clone(),
        pipeline::config::PipelineConfig::default(),
        std::sync::Arc::new(pipeline::metrics::Metrics::default()),
        None,
    )
    .with_options(pipeline::RunOptions {
        report: true,
        retry_unavailable: false,
    });
    let incoming = events.len();
    let summary = runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let feed = tokio::spawn(async move {
            for ev in events {
                let sent = tx
                    .send(pipeline::Input {
                        event: pipeline::Event {
                            ingestion_time: ev.ingestion_time(),
                            body: ev.body,
                            properties: ev.properties,
                            system_properties: ev.system_properties,
                            origin: "file".into(),
                        },
                        ack: sources::Ack::none(),
                    })
                    .await;
                if sent.is_err() {
                    break;
                }
            }
        });
        let (_never, shutdown) = tokio::sync::watch::channel(false);
        let (watermark, _) = tokio::sync::watch::channel(0);
        let summary = pipeline.run(rx, shutdown, watermark).await;
        let _ = feed.await;
        summary
    });
    let mut report = summary.report.unwrap_or_default();
    // Workers finish chunks in any order; the report is in event order.
    report.measurements.sort_by_key(|(seq, _)| *seq);
    let measurements: Vec<(usize, normalizer::Measurement)> = report
        .measurements
        .iter()
        .map(|(seq, m)| (*seq as usize, m.clone()))
        .collect();
    let mut errors: Vec<(u64, Value)> = Vec::new();
    for (seq, e) in &report.normalize_errors {
        let mut v = serde_json::to_value(e)?;
        v["event"] = json!(seq);
        v["stage"] = json!("normalize");
        errors.push((*seq, v));
    }
    for (seq, message) in &report.too_large {
        errors.push((
            *seq,
            json!({"type": "PayloadTooLargeException", "message": message, "event": seq, "stage": "normalize"}),
        ));
    }
    errors.sort_by_key(|(seq, _)| *seq);
    let mut errors: Vec<Value> = errors.into_iter().map(|(_, v)| v).collect();
    let normalized = {
        let mut with: Vec<u64> = report.measurements.iter().map(|(s, _)| *s).collect();
        with.dedup();
        with.len()
    };
    let report_write = report.write;
    for e in &report_write.errors {
        let mut v = serde_json::to_value(e)?;
        v["event"] = json!(e.events.first());
        v["stage"] = json!("fhir");
        errors.push(v);
    }
    let mut by_type: std::collections::BTreeMap<String, u64> = Default::default();
    for e in &errors {
        *by_type
            .entry(e["type"].as_str().unwrap_or("Unknown").to_string())
            .or_default() += 1;
    }
    let mut dropped = report.dropped.clone();
    dropped.sort_unstable();
    let stats = writer.client().stats();
    let out = json!({
        "measurements": measurement_json(&measurements)?,
        "observations": report_write.observations,
        "errors": errors,
        "dropped": dropped,
        "incoming": incoming,
        "normalized": normalized,
        "errorsByType": by_type,
        "observationsCreated": report_write.observations_created,
        "observationsUpdated": report_write.observations_updated,
        "observationsUnchanged": report_write.observations_unchanged,
        "fhirRequests": stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        "fhirRetries": stats.retries.load(std::sync::atomic::Ordering::Relaxed),
        "fhirBundles": stats.bundles.load(std::sync::atomic::Ordering::Relaxed),
        "elapsedMs": started.elapsed().as_millis() as u64,
    });
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&out)?
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr; `RUST_LOG` sets the level (default warn), `IOMT_LOG_FORMAT=json` for JSON.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if std::env::var("IOMT_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// One pass of `map --watch`: a readable summary of every stage, and every error.
fn watch_pass(device_mapping: &Path, fhir_mapping: &Path, events: &Path) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let loaded = load_device_mapping(&read_text(device_mapping)?);
    let (templates, fhir_errors) = fhir_writer::FhirTemplates::load(&read_text(fhir_mapping)?);
    for e in &loaded.errors {
        writeln!(out, "  template error  {}:{e}", device_mapping.display())?;
    }
    for e in &fhir_errors {
        writeln!(out, "  template error  {}", e.report_for(fhir_mapping))?;
    }
    if !loaded.errors.is_empty() || !fhir_errors.is_empty() {
        writeln!(out, "  fix the template errors above; nothing was mapped")?;
        return Ok(out);
    }
    let evs = match events::read_events(events) {
        Ok(e) => e,
        Err(e) => {
            writeln!(out, "  events file error  {e:#}")?;
            return Ok(out);
        }
    };
    let normalizer = Normalizer::new(loaded.mapping);
    let n = normalize_events(&normalizer, &evs, false)?;
    let report = fhir_writer::map_batch(&templates, &n.measurements, None);
    writeln!(
        out,
        "  events {}  ->  measurements {}  ->  groups {}  ->  observations {}   (dropped {}, errors {})",
        evs.len(),
        n.measurements.len(),
        report.groups.len(),
        report.observations.len(),
        n.dropped.len(),
        n.errors.len() + report.errors.len()
    )?;
    for o in &report.observations {
        let value = [
            "valueSampledData",
            "valueQuantity",
            "valueString",
            "valueCodeableConcept",
        ]
        .iter()
        .find_map(|k| o.get(*k).map(|v| (k, v)))
        .map(|(k, v)| match *k {
            "valueSampledData" => format!(
                "SampledData {} samples",
                v["data"]
                    .as_str()
                    .unwrap_or("")
                    .split(' ')
                    .filter(|t| *t != "E")
                    .count()
            ),
            "valueQuantity" => format!("{} {}", v["value"], v["unit"].as_str().unwrap_or("")),
            _ => v.to_string(),
        })
        .unwrap_or_else(|| {
            format!(
                "{} components",
                o["component"].as_array().map(Vec::len).unwrap_or(0)
            )
        });
        writeln!(
            out,
            "    {:<18} {} .. {}  {value}",
            o["code"]["text"].as_str().unwrap_or("?"),
            o["effectivePeriod"]["start"].as_str().unwrap_or(""),
            o["effectivePeriod"]["end"].as_str().unwrap_or("")
        )?;
    }
    for e in &n.errors {
        writeln!(
            out,
            "  event {}: {} {}",
            e["event"],
            e["type"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        )?;
    }
    for e in &report.errors {
        writeln!(
            out,
            "  events {:?}: {} {}",
            e.events, e.error_type, e.message
        )?;
    }
    if !n.dropped.is_empty() {
        writeln!(out, "  events matching no template: {:?}", n.dropped)?;
    }
    Ok(out)
}

fn watch_map(device_mapping: &Path, fhir_mapping: &Path, events: &Path) -> Result<ExitCode> {
    let files = [device_mapping, fhir_mapping, events];
    let stamp = || -> Vec<Option<std::time::SystemTime>> {
        files
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut last = None;
    loop {
        let now = stamp();
        if last.as_ref() != Some(&now) {
            last = Some(now);
            let when = chrono::Local::now().format("%H:%M:%S");
            println!(
                "[{when}] {} + {} on {}",
                device_mapping.display(),
                fhir_mapping.display(),
                events.display()
            );
            match watch_pass(device_mapping, fhir_mapping, events) {
                Ok(text) => print!("{text}"),
                Err(e) => println!("  error: {e:#}"),
            }
            println!("watching for changes (Ctrl-C to stop)");
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

fn map(
    device_mapping: &Path,
    fhir_mapping: &Path,
    events: &Path,
    issued: Option<&str>,
) -> Result<ExitCode> {
    let Some(normalizer) = load_normalizer(device_mapping, false)? else {
        return Ok(ExitCode::from(1));
    };
    let (templates, errors) = fhir_writer::FhirTemplates::load(&read_text(fhir_mapping)?);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{}", e.report_for(fhir_mapping));
        }
        eprintln!(
            "{}: the FHIR mapping is invalid ({} error(s))",
            fhir_mapping.display(),
            errors.len()
        );
        return Ok(ExitCode::from(1));
    }
    let issued = issued
        .map(|s| {
            normalizer::value::parse_timestamp(s)
                .with_context(|| format!("--issued {s:?} is not an RFC 3339 time"))
        })
        .transpose()?;
    let events = events::read_events(events)?;
    let n = normalize_events(&normalizer, &events, false)?;
    let report = fhir_writer::map_batch(&templates, &n.measurements, issued);
    let mut errors = n.errors;
    for e in &report.errors {
        let mut v = serde_json::to_value(e)?;
        v["event"] = json!(e.events.first());
        v["stage"] = json!("fhir");
        errors.push(v);
    }
    let out = json!({
        "measurements": measurement_json(&n.measurements)?,
        "groups": report.groups,
        "observations": report.observations,
        "errors": errors,
        "dropped": n.dropped,
    });
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&out)?
    )?;
    Ok(ExitCode::SUCCESS)
}

fn normalize(
    device_mapping: &Path,
    input: Option<&Path>,
    events: Option<&Path>,
    document: bool,
    skip_invalid: bool,
) -> Result<ExitCode> {
    let Some(normalizer) = load_normalizer(device_mapping, skip_invalid)? else {
        return Ok(ExitCode::from(1));
    };
    let events = match (input, events) {
        (Some(p), _) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let bytes = bytes
                .strip_prefix(b"\xEF\xBB\xBF")
                .map(<[u8]>::to_vec)
                .unwrap_or(bytes);
            vec![events::Event {
                body: bytes,
                ..Default::default()
            }]
        }
        (None, Some(p)) => events::read_events(p)?,
        (None, None) => anyhow::bail!("give --input or --events"),
    };
    let n = normalize_events(&normalizer, &events, document)?;
    let report = json!({"measurements": measurement_json(&n.measurements)?, "errors": n.errors, "dropped": n.dropped});
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&report)?
    )?;
    Ok(ExitCode::SUCCESS)
}
