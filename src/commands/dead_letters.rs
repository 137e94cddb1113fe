//! `iomt dead-letters`: the service's dead-letter store — list, show one, or reprocess through
//! the same pipeline with the current templates (those that now succeed are removed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use pipeline::deadletter::{DeadLetter, DeadLetterStore};

/// `iomt dead-letters` options.
#[derive(clap::Args)]
pub struct DeadLettersArgs {
    /// The service config (TOML).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    action: DeadLetterAction,
}

#[derive(clap::Subcommand)]
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

/// Runs `iomt dead-letters`.
pub fn run(args: DeadLettersArgs) -> Result<ExitCode> {
    let Some(path) = args.config else {
        anyhow::bail!("give --config");
    };
    let config = pipeline::config::Config::load(&path).map_err(|e| anyhow::anyhow!(e))?;
    let store = DeadLetterStore::open(&config.dead_letters.dir)?;
    let stdout = &mut std::io::stdout().lock();
    match args.action {
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
        DeadLetterAction::Replay { id } => replay(&path, &store, id, stdout)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Reprocesses one dead letter or all; prints `<id>\treplayed` or `<id>\tstill failing` for
/// each, then the counts.
fn replay(
    path: &Path,
    store: &DeadLetterStore,
    id: Option<String>,
    stdout: &mut dyn Write,
) -> Result<()> {
    let config = pipeline::validate(path).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
    super::init_service_logging(&config);
    let list: Vec<DeadLetter> = match id {
        Some(id) => vec![store
            .get(&id)
            .with_context(|| format!("dead letter {id}"))?],
        None => store.list()?,
    };
    let runtime = super::runtime()?;
    let metrics = Arc::new(pipeline::metrics::Metrics::default());
    // Replays go through the same pipeline; failures land in a scratch store so the
    // original record stays until its event succeeds.
    let mut scratch = config.clone();
    scratch.dead_letters.dir = config.dead_letters.dir.join(".replay");
    // A finite run: the service's spool (its events and its lock) is not touched.
    scratch.spool.enabled = Some(false);
    let pipeline =
        pipeline::Pipeline::new(&scratch, metrics.clone())?.with_options(pipeline::RunOptions {
            report: true,
            retry_unavailable: false,
        });
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
    Ok(())
}
