//! `iomt review`: serves the review page ([`crate::review`]) for any FHIR R4 server, with
//! credentials from the environment as for `replay`. Sign-in is OpenID Connect
//! (`--oidc-issuer`, `--oidc-client-id`, `--oidc-allowed-group`, the secret in
//! `IOMT_REVIEW_OIDC_CLIENT_SECRET`); without it the page only listens on a loopback address.

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
    /// Seconds between rebuilds of the triage list from the FHIR server.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    refresh_seconds: u64,
    /// Sign-in.
    #[command(flatten)]
    sign_in: SignInArgs,
}

/// The review page's sign-in options (`iomt review`, `iomt demo`).
#[derive(clap::Args, Debug, Clone)]
pub struct SignInArgs {
    /// OpenID Connect sign-in: the provider's issuer URL (discovery at
    /// ISSUER/.well-known/openid-configuration). Needed to listen on a non-loopback address.
    #[arg(long, value_name = "URL", env = "IOMT_REVIEW_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// The page's client id at the provider (its secret, if any, in IOMT_REVIEW_OIDC_CLIENT_SECRET).
    #[arg(long, value_name = "ID", env = "IOMT_REVIEW_OIDC_CLIENT_ID")]
    oidc_client_id: Option<String>,
    /// A group (or role) whose members may use the page; repeatable. Required with sign-in.
    #[arg(
        long,
        value_name = "GROUP",
        env = "IOMT_REVIEW_OIDC_ALLOWED_GROUPS",
        value_delimiter = ','
    )]
    oidc_allowed_group: Vec<String>,
    /// The ID-token or userinfo claim that lists the user's groups or roles.
    #[arg(
        long,
        value_name = "CLAIM",
        default_value = "groups",
        env = "IOMT_REVIEW_OIDC_GROUPS_CLAIM"
    )]
    oidc_groups_claim: String,
    /// Scopes asked for besides openid (space-separated); add the provider's scope for the
    /// groups claim if it has one (e.g. "profile groups").
    #[arg(
        long,
        value_name = "SCOPES",
        default_value = "profile",
        env = "IOMT_REVIEW_OIDC_SCOPES"
    )]
    oidc_scopes: String,
    /// The page's URL as browsers reach it; the redirect URI registered at the provider is
    /// PUBLIC_URL/auth/callback (default: http://LISTEN).
    #[arg(long, value_name = "URL", env = "IOMT_REVIEW_PUBLIC_URL")]
    public_url: Option<String>,
    /// How long a sign-in lasts (minutes).
    #[arg(long, default_value_t = 480, value_name = "MINUTES")]
    session_minutes: u64,
}

/// Whether every address `listen` names is a loopback address.
pub fn loopback_only(listen: &str) -> Result<bool> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen}"))?
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()))
}

/// The sign-in settings from the arguments (`None`: no sign-in); `listen` is the page's
/// address (the default public URL).
pub fn sign_in(args: &SignInArgs, listen: &str) -> Result<Option<review::auth::SignInConfig>> {
    let Some(issuer) = args.oidc_issuer.clone() else {
        if args.oidc_client_id.is_some() || !args.oidc_allowed_group.is_empty() {
            anyhow::bail!("--oidc-client-id and --oidc-allowed-group need --oidc-issuer");
        }
        return Ok(None);
    };
    let client_id = args
        .oidc_client_id
        .clone()
        .context("--oidc-issuer needs --oidc-client-id (the page's client at the provider)")?;
    if args.oidc_allowed_group.is_empty() {
        anyhow::bail!(
            "--oidc-issuer needs --oidc-allowed-group GROUP: the group or role (claim --oidc-groups-claim, default `groups`) whose members may see patient data"
        );
    }
    let unspecified = {
        use std::net::ToSocketAddrs;
        listen
            .to_socket_addrs()
            .map(|mut a| a.any(|a| a.ip().is_unspecified()))
            .unwrap_or(false)
    };
    if args.public_url.is_none() && unspecified {
        anyhow::bail!(
            "sign-in on {listen} needs --public-url: the page's URL as browsers reach it (e.g. https://review.example), whose /auth/callback is the redirect URI registered at the provider"
        );
    }
    Ok(Some(review::auth::SignInConfig {
        issuer,
        client_id,
        client_secret: std::env::var("IOMT_REVIEW_OIDC_CLIENT_SECRET")
            .ok()
            .filter(|s| !s.is_empty()),
        public_url: args
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}")),
        allowed_groups: args.oidc_allowed_group.clone(),
        groups_claim: args.oidc_groups_claim.clone(),
        scopes: args
            .oidc_scopes
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        session_ttl: std::time::Duration::from_secs(args.session_minutes.max(1) * 60),
    }))
}

/// Why a page without sign-in is not served on `listen`, and how to configure sign-in.
pub fn refusal(listen: &str, loopback: &str) -> String {
    format!(
        "refusing to serve the review page on {listen} without sign-in: it shows patient data to \
         anyone who can reach that address. Either listen on a loopback address ({loopback}) or \
         configure OpenID Connect sign-in: --oidc-issuer URL --oidc-client-id ID \
         --oidc-allowed-group GROUP [--public-url https://HOST] with the client secret in \
         IOMT_REVIEW_OIDC_CLIENT_SECRET (docs/REVIEW.md)"
    )
}

/// Runs `iomt review` until Ctrl-C.
pub fn run(args: ReviewArgs) -> Result<ExitCode> {
    // Warnings, and the audit log (who viewed which patient) at info.
    super::init_logging(
        "warn,iomt_review_audit=info",
        std::env::var("IOMT_LOG_FORMAT").as_deref() == Ok("json"),
    );
    let sign_in = sign_in(&args.sign_in, &args.listen)?;
    if sign_in.is_none() && !loopback_only(&args.listen)? {
        anyhow::bail!(refusal(&args.listen, "--listen 127.0.0.1:8090"));
    }
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
                sign_in,
                refresh: std::time::Duration::from_secs(args.refresh_seconds.max(1)),
            },
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
