//! `iomt review`: serves the review page ([`crate::review`]) for any FHIR R4 server, with
//! credentials from the environment as for `replay`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::review;

/// `iomt review` options.
#[derive(clap::Args)]
pub struct ReviewArgs {
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
}

/// Runs `iomt review` until Ctrl-C.
pub fn run(args: ReviewArgs) -> Result<ExitCode> {
    super::init_cli_logging();
    let (fresh_minutes, stale_minutes) = (args.fresh_minutes, args.stale_minutes);
    if fresh_minutes == 0 || fresh_minutes > stale_minutes {
        anyhow::bail!(
            "--fresh-minutes ({fresh_minutes}) must be at least 1 and at most --stale-minutes ({stale_minutes})"
        );
    }
    let thresholds = match args.thresholds {
        Some(p) => review::load_thresholds(&p)?,
        None => review::default_thresholds(),
    };
    let mut fhir = fhir_writer::FhirClientConfig::new(args.fhir_url);
    fhir.auth = super::fhir::auth()?;
    let listen = args.listen;
    super::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("iomt review: http://{}/", listener.local_addr()?);
        review::serve(
            listener,
            fhir,
            review::ReviewOptions {
                metrics_url: args.metrics_url,
                thresholds,
                dead_letters: args.dead_letters,
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
