//! `iomt jwks`: the public JWKS of a SMART Backend Services signing key, to register with the
//! authorization server (or publish at the client's `jwks_uri`). Reads the private key, prints
//! only its public part.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

/// `iomt jwks` options.
#[derive(clap::Args)]
pub struct JwksArgs {
    /// The private key, PEM (PKCS#8, or PKCS#1 for RSA).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// `RS384` or `ES384`.
    #[arg(long)]
    alg: String,
    /// The key id to publish it under (`[fhir.auth] kid`).
    #[arg(long)]
    kid: String,
}

/// Runs `iomt jwks`.
pub fn run(args: JwksArgs) -> Result<ExitCode> {
    let pem =
        std::fs::read(&args.key).with_context(|| format!("reading {}", args.key.display()))?;
    let key = fhir_writer::auth::smart::SigningKey::from_pem(&pem, &args.alg, &args.kid)
        .with_context(|| args.key.display().to_string())?;
    let jwks = key.jwks().map_err(anyhow::Error::msg)?;
    super::print_json(&jwks)
}
