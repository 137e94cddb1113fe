//! `iomt run`: the connector as a long-running service (`pipeline::run`) until Ctrl-C or
//! SIGTERM, then a drain: the source stops, open windows flush, writes finish, acks commit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

/// `iomt run` options.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The service config (TOML); see config/example.toml.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Runs the service; exit 1 without starting when the config is invalid.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let path = &args.config;
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
    super::init_service_logging(&config);
    super::runtime()?.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            super::shutdown_signal().await;
            tracing::info!("Shutting down: stopping the source, flushing, acknowledging.");
            let _ = tx.send(true);
        });
        pipeline::run(config, rx).await
    })?;
    Ok(ExitCode::SUCCESS)
}
