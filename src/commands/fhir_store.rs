//! `iomt fhir-store`: the local development FHIR store (SQLite, the `fhir-store` crate) served
//! on its own, e.g. for `replay`, until Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

/// `iomt fhir-store` options.
#[derive(clap::Args)]
pub struct FhirStoreArgs {
    /// The SQLite file (created if missing).
    #[arg(long, value_name = "FILE", default_value = "fhir-store.sqlite")]
    db: PathBuf,
    /// Address to serve on; the base URL is http://ADDR/fhir/R4.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Enable `POST /$reset` (deletes everything; for tests).
    #[arg(long)]
    dev_reset: bool,
    /// Require `Authorization: Bearer <token>` on every request but `GET /metadata`, the token
    /// read from this environment variable (e.g. to show the demo on a network; clients such
    /// as `iomt review` and `iomt run` send it from IOMT_FHIR_BEARER_TOKEN).
    #[arg(long, value_name = "VAR")]
    bearer_token_env: Option<String>,
}

/// Runs `iomt fhir-store`.
pub fn run(args: FhirStoreArgs) -> Result<ExitCode> {
    super::init_cli_logging();
    let store = fhir_store::Store::open(&args.db)
        .with_context(|| format!("opening {}", args.db.display()))?;
    let bearer_token = match &args.bearer_token_env {
        Some(var) => {
            let t = std::env::var(var).unwrap_or_default();
            if t.trim().len() < 16 {
                anyhow::bail!(
                    "--bearer-token-env {var}: the environment variable {var} must hold the token, 16 characters or more (e.g. {var}=$(openssl rand -hex 32))"
                );
            }
            Some(t.trim().to_string())
        }
        None => None,
    };
    let listen = args.listen;
    super::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("iomt fhir-store: http://{}/fhir/R4", listener.local_addr()?);
        fhir_store::serve_with(
            listener,
            store,
            fhir_store::ServeConfig {
                dev_reset: args.dev_reset,
                bearer_token,
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
