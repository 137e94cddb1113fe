//! Reaching a FHIR server from the command line: the `--fhir-url` family of flags
//! (`replay`) and the credentials, from the environment only (`replay`, `review`).

use std::sync::Arc;

use anyhow::{Context, Result};

/// Where and how to reach the FHIR server. Secrets come from the environment only.
#[derive(clap::Args, Debug, Clone)]
pub struct FhirArgs {
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
    /// Claim the R4 vital-signs profiles in `meta.profile` of the vital-sign Observations
    /// written (check the mapping with `iomt validate --profile vital-signs` first).
    #[arg(long)]
    stamp_profiles: bool,
}

impl FhirArgs {
    /// The writer these options describe, with [`auth`] from the environment.
    pub fn writer(
        &self,
        templates: Arc<fhir_writer::FhirTemplates>,
    ) -> Result<fhir_writer::FhirWriter> {
        let mut cc = fhir_writer::FhirClientConfig::new(self.fhir_url.clone());
        cc.auth = auth()?;
        cc.retry.deadline = std::time::Duration::from_secs(self.retry_deadline);
        let client = fhir_writer::FhirClient::new(cc).context("building the HTTP client")?;
        let config = fhir_writer::WriterConfig {
            resolution: self.resolution,
            device_identifier_system: self.device_identifier_system.clone(),
            max_concurrency: self.max_concurrency,
            bundles: !self.no_bundles,
            bundle_size: usize::try_from(self.bundle_size)
                .unwrap_or(fhir_writer::DEFAULT_BUNDLE_SIZE),
            stamp_profiles: self.stamp_profiles,
            ..Default::default()
        };
        Ok(fhir_writer::FhirWriter::new(client, templates, config))
    }
}

/// Auth from the environment: IOMT_FHIR_BEARER_TOKEN; or IOMT_FHIR_TOKEN_URL +
/// IOMT_FHIR_CLIENT_ID + IOMT_FHIR_CLIENT_SECRET (+ IOMT_FHIR_SCOPE or IOMT_FHIR_RESOURCE); or
/// SMART Backend Services: IOMT_FHIR_CLIENT_ID + IOMT_FHIR_SMART_KEY_FILE (or IOMT_FHIR_SMART_KEY,
/// the PEM itself) + IOMT_FHIR_SMART_ALG (RS384, ES384) + IOMT_FHIR_SMART_KID + IOMT_FHIR_SCOPE
/// (+ IOMT_FHIR_TOKEN_URL; without it the token endpoint is discovered from the FHIR server).
pub fn auth() -> Result<fhir_writer::auth::Auth> {
    use fhir_writer::auth::smart::{SigningKey, SmartBackend};
    use fhir_writer::auth::{Auth, ClientCredentials};
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(t) = var("IOMT_FHIR_BEARER_TOKEN") {
        return Ok(Auth::Bearer(t));
    }
    let key_file = var("IOMT_FHIR_SMART_KEY_FILE");
    let key_pem = var("IOMT_FHIR_SMART_KEY");
    if key_file.is_some() || key_pem.is_some() {
        let pem = match (&key_file, key_pem) {
            (Some(f), None) => std::fs::read(f).with_context(|| format!("IOMT_FHIR_SMART_KEY_FILE: reading {f}"))?,
            (None, Some(p)) => p.into_bytes(),
            _ => anyhow::bail!("SMART Backend Services: set IOMT_FHIR_SMART_KEY_FILE or IOMT_FHIR_SMART_KEY, not both"),
        };
        let need = |k: &str| {
            var(k).with_context(|| format!("SMART Backend Services needs {k} (with IOMT_FHIR_CLIENT_ID, IOMT_FHIR_SMART_ALG, IOMT_FHIR_SMART_KID and IOMT_FHIR_SCOPE)"))
        };
        let key = SigningKey::from_pem(
            &pem,
            &need("IOMT_FHIR_SMART_ALG")?,
            &need("IOMT_FHIR_SMART_KID")?,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "SMART Backend Services key ({}): {e}",
                key_file
                    .as_deref()
                    .map_or("IOMT_FHIR_SMART_KEY".to_string(), |f| format!(
                        "IOMT_FHIR_SMART_KEY_FILE {f}"
                    ))
            )
        })?;
        return Ok(Auth::SmartBackend(SmartBackend {
            client_id: need("IOMT_FHIR_CLIENT_ID")?,
            token_url: var("IOMT_FHIR_TOKEN_URL"),
            key,
            scope: need("IOMT_FHIR_SCOPE")?,
        }));
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
