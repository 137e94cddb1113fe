//! The FHIR writer: measurements → groups → identities → Observations on a FHIR server.
//!
//! One batch is written in rounds, each round one exchange of entries for all the Observations
//! still pending — in `batch` Bundles of `bundle_size` entries (`bundle_concurrency` in flight)
//! where the server takes them, else as single requests ([`crate::exchange`]):
//!
//! 1. **Identities**: the Device/Patient/Encounter searches of every new key in one round, then
//!    the missing Patients and Devices created in one round each (Create mode).
//! 2. **Reads** of the Observations the version cache does not hold: a search by identifier
//!    each, or in Bundles one for up to 100 identifiers (exact matches only, as the reference).
//! 3. **Writes**: build or merge ([`to_observation`](crate::to_observation)); an unchanged
//!    merge writes nothing; a create is a `PUT` to the reference's deterministic id, an update
//!    a `PUT` with `If-Match` on the version the merge started from (from the read, or from the
//!    version cache without any read).
//! 4. **Per entry**: 2xx done (and cached); 409/412 (or 404 for an update: the Observation
//!    vanished) re-read and re-merge that Observation only, bounded; 408/429/5xx tried again in
//!    the next round after the retry policy's delay (`Retry-After` honoured) until its deadline;
//!    any other 4xx is final: the error names the resource and carries the server's
//!    `OperationOutcome`, and its events become dead letters.
//!
//! A SampledData create the server did not answer 201 is checked against the Observation's
//! history (one round for all): if another writer created it between our read and our `PUT`,
//! its samples are merged back.
//!
//! Steps 2 to 4 run in lanes of one Bundle each, `bundle_concurrency` lanes at a time, so the
//! writer builds one lane's Observations while the server takes another's.
//!
//! This module plans a batch (groups, templates, identities) and reports on it; [`rounds`]
//! runs steps 2 to 4 and the history check.

mod rounds;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use grouper::group_measurements;
use normalizer::Measurement;
use serde::Serialize;
use serde_json::Value;

use crate::cache::{CacheConfig, TtlCache};
use crate::client::{FhirClient, Versioned};
use crate::exchange::{Exchange, ExchangeConfig};
use crate::identity::{
    IdentityError, IdentityKey, IdentityResolver, ResolutionMode, ResolvedIdentity,
};
use crate::observation::{observation_groups, ObservationIdentity};
use crate::template::FhirTemplates;
use crate::MappingError;
use rounds::{Job, WriteFailure, Written};

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Identity resolution mode (the reference's `ResourceIdentityServiceType`).
    pub resolution: ResolutionMode,
    /// System of Device identifiers (the reference's `DefaultDeviceIdentifierSystem`).
    pub device_identifier_system: Option<String>,
    /// Devices written in parallel.
    pub max_concurrency: usize,
    /// Re-read and re-merge this many times on 409/412 before giving up.
    pub max_conflict_retries: u32,
    /// Identity cache (reference: 5000 entries, 2 h).
    pub identity_cache: CacheConfig,
    /// The version cache: the SampledData Observations written, with their versions (not the
    /// point-in-time ones, each holding one reading: see `rounds.rs`), so that the next
    /// merge into one is written with `If-Match` without reading it first (reference: 5000
    /// entries, 1 h; here also at most `DEFAULT_OBSERVATION_CACHE_BYTES` (256 MiB) of Observations).
    pub observation_cache: CacheConfig,
    /// Write in `batch` Bundles (false: one request per read and write, as for a server that
    /// takes no Bundles; `--no-bundles`).
    pub bundles: bool,
    /// Most entries per Bundle.
    pub bundle_size: usize,
    /// Bundles in flight at once.
    pub bundle_concurrency: usize,
    /// Claim the R4 vital-signs profiles in `meta.profile` of the Observations written whose
    /// code is a vital sign ([`crate::vital_signs::stamp`]): on every create and update, never
    /// as a write of its own.
    pub stamp_profiles: bool,
}

/// Default entries per Bundle: inside the 100–500 that FHIR servers advise, and half of the
/// 500-entry limit some (Azure Health Data Services) enforce.
pub const DEFAULT_BUNDLE_SIZE: usize = 250;
/// Default byte cap of the version cache: 5,000 hourly 1 Hz SampledData Observations at
/// their fullest are about 100 MB.
pub const DEFAULT_OBSERVATION_CACHE_BYTES: usize = 256 << 20;

/// Default Bundles in flight.
pub const DEFAULT_BUNDLE_CONCURRENCY: usize = 4;

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            resolution: ResolutionMode::Lookup,
            device_identifier_system: None,
            max_concurrency: 10,
            max_conflict_retries: 5,
            identity_cache: CacheConfig {
                capacity: 5000,
                ttl: Duration::from_secs(2 * 3600),
                max_bytes: usize::MAX,
            },
            observation_cache: CacheConfig {
                capacity: 5000,
                ttl: Duration::from_secs(3600),
                max_bytes: DEFAULT_OBSERVATION_CACHE_BYTES,
            },
            bundles: true,
            bundle_size: DEFAULT_BUNDLE_SIZE,
            bundle_concurrency: DEFAULT_BUNDLE_CONCURRENCY,
            stamp_profiles: false,
        }
    }
}

/// Counters of what was written.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Observations created.
    pub created: AtomicU64,
    /// Observations updated.
    pub updated: AtomicU64,
    /// Observations already up to date (no write).
    pub unchanged: AtomicU64,
    /// Re-reads after a version conflict.
    pub conflicts: AtomicU64,
    /// Creates that replaced an Observation another writer had created meanwhile (between
    /// our search and our `PUT`), whose samples were then merged back.
    pub create_races: AtomicU64,
}

/// An error for some events of the batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteErrorRecord<T> {
    /// The reference's exception name (`FhirResourceNotFoundException`, ...).
    #[serde(rename = "type")]
    pub error_type: &'static str,
    /// What happened, naming the template, resource or request.
    pub message: String,
    /// The events (tags) whose measurements were not written.
    pub events: Vec<T>,
    /// Measurement type.
    pub measurement_type: String,
    /// Device id (as in the measurement).
    pub device_id: String,
    /// Whether trying again later may succeed (the server was unavailable), as opposed to
    /// the data or configuration being wrong.
    pub retryable: bool,
}

/// What one batch did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteReport<T> {
    /// The Observations as they now are on the server (created, updated or unchanged).
    pub observations: Vec<Value>,
    /// Errors, with the events they concern.
    pub errors: Vec<WriteErrorRecord<T>>,
    /// Observations created.
    pub observations_created: u64,
    /// Observations updated.
    pub observations_updated: u64,
    /// Observations that needed no write.
    pub observations_unchanged: u64,
}

impl<T> Default for WriteReport<T> {
    fn default() -> Self {
        WriteReport {
            observations: Vec::new(),
            errors: Vec::new(),
            observations_created: 0,
            observations_updated: 0,
            observations_unchanged: 0,
        }
    }
}

/// Writes batches of measurements to a FHIR server. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct FhirWriter {
    exchange: Exchange,
    templates: Arc<FhirTemplates>,
    resolver: IdentityResolver,
    identities: TtlCache<IdentityKey, ResolvedIdentity>,
    observations: TtlCache<String, Versioned>,
    config: WriterConfig,
    stats: WriterStats,
}

impl FhirWriter {
    /// A writer for `templates` through `client`.
    pub fn new(client: FhirClient, templates: Arc<FhirTemplates>, config: WriterConfig) -> Self {
        FhirWriter {
            resolver: IdentityResolver::new(
                client.clone(),
                config.resolution,
                config.device_identifier_system.clone(),
            ),
            exchange: Exchange::new(
                client,
                ExchangeConfig {
                    bundles: config.bundles,
                    bundle_size: config.bundle_size,
                    bundle_concurrency: config.bundle_concurrency,
                    request_concurrency: config.max_concurrency,
                },
            ),
            identities: TtlCache::new(config.identity_cache),
            observations: TtlCache::new(config.observation_cache),
            templates,
            config,
            stats: WriterStats::default(),
        }
    }

    /// The client (for its request counters).
    pub fn client(&self) -> &FhirClient {
        self.exchange.client()
    }

    /// Totals since the writer was made.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Whether writes go in Bundles (false once the server refused them, or when switched off).
    pub fn uses_bundles(&self) -> bool {
        self.exchange.uses_bundles()
    }

    /// Writes one batch: groups the measurements, resolves identities, builds and merges
    /// Observations and writes them. Errors are per group; the rest of the batch goes on.
    pub async fn write_batch<T>(
        &self,
        measurements: Vec<(T, Measurement)>,
        issued: Option<DateTime<Utc>>,
    ) -> WriteReport<T>
    where
        T: Clone + Ord + Send + Sync,
    {
        let mut report = WriteReport::default();
        // Templates and observation groups (pure), and the identities they need.
        let mut planned = Vec::new();
        let mut keys: Vec<IdentityKey> = Vec::new();
        for group in group_measurements(measurements) {
            let key = group.key.clone();
            let events = || {
                let mut e: Vec<T> = group.all_tags().cloned().collect();
                e.sort();
                e.dedup();
                e
            };
            let fail = |e: &MappingError| WriteErrorRecord {
                error_type: e.type_name(),
                message: e.to_string(),
                events: events(),
                measurement_type: key.type_name.to_string(),
                device_id: key.device_id.to_string(),
                retryable: false,
            };
            let Some(template) = self.templates.get(&key.type_name) else {
                report.errors.push(fail(&MappingError::TemplateNotFound {
                    type_name: key.type_name.to_string(),
                    device_id: key.device_id.to_string(),
                }));
                continue;
            };
            let obs_groups = match observation_groups(template, &group) {
                Ok(g) => g,
                Err(e) => {
                    report.errors.push(fail(&e));
                    continue;
                }
            };
            let ik: IdentityKey = (
                key.device_id.to_string(),
                key.patient_id.as_deref().map(str::to_string),
                key.encounter_id.as_deref().map(str::to_string),
            );
            if self.identities.get(&ik).is_none() && !keys.contains(&ik) {
                keys.push(ik.clone());
            }
            planned.push((template, ik, events(), obs_groups));
        }
        // Keyed by all three ids (the reference keys by device only, so a device moved to
        // another patient was not seen until eviction).
        let mut resolved: HashMap<IdentityKey, Result<ResolvedIdentity, IdentityError>> =
            HashMap::new();
        if !keys.is_empty() {
            let results = self.resolver.resolve_many(&self.exchange, &keys).await;
            for (k, r) in keys.into_iter().zip(results) {
                match &r {
                    Ok(id) => self.identities.insert(k.clone(), id.clone()),
                    Err(_) => self.identities.remove(&k),
                }
                resolved.insert(k, r);
            }
        }
        let mut jobs = Vec::new();
        for (template, ik, events, obs_groups) in planned {
            let identity = match resolved.get(&ik) {
                Some(Ok(i)) => i.clone(),
                Some(Err(e)) => {
                    let retry = e.is_retryable();
                    tracing::warn!(error_type = e.type_name(), measurement_type = %template.type_name, "Identity resolution failed.");
                    tracing::debug!(error = %e, device_id = %ik.0, "Identity resolution failed.");
                    report.errors.push(WriteErrorRecord {
                        error_type: e.type_name(),
                        message: e.to_string(),
                        events,
                        measurement_type: template.type_name.clone(),
                        device_id: ik.0.clone(),
                        retryable: retry,
                    });
                    continue;
                }
                None => match self.identities.get(&ik) {
                    Some(i) => i,
                    None => {
                        // Evicted since the check above: resolve it on its own.
                        match self
                            .resolver
                            .resolve(&ik.0, ik.1.as_deref(), ik.2.as_deref())
                            .await
                        {
                            Ok(i) => i,
                            Err(e) => {
                                let retry = e.is_retryable();
                                report.errors.push(WriteErrorRecord {
                                    error_type: e.type_name(),
                                    message: e.to_string(),
                                    events,
                                    measurement_type: template.type_name.clone(),
                                    device_id: ik.0.clone(),
                                    retryable: retry,
                                });
                                continue;
                            }
                        }
                    }
                },
            };
            let obs_identity = ObservationIdentity::resolved(
                &identity.patient_id,
                &identity.device_id,
                identity.encounter_id.as_deref(),
            );
            for og in obs_groups {
                jobs.push(Job::new(template, og, obs_identity.clone()));
            }
        }
        self.run_jobs(&mut jobs, issued).await;

        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for job in jobs {
            let key = &job.group.key;
            let fail =
                |error_type: &'static str, message: String, retryable: bool| WriteErrorRecord {
                    error_type,
                    message,
                    events: job.tags.clone(),
                    measurement_type: key.type_name.to_string(),
                    device_id: key.device_id.to_string(),
                    retryable,
                };
            let o = match job.result {
                Some(Ok(Written::Created(o))) => {
                    report.observations_created += 1;
                    o
                }
                Some(Ok(Written::Updated(o))) => {
                    report.observations_updated += 1;
                    o
                }
                Some(Ok(Written::Unchanged(o))) => {
                    report.observations_unchanged += 1;
                    o
                }
                Some(Err(WriteFailure::Mapping(e))) => {
                    report
                        .errors
                        .push(fail(e.type_name(), e.to_string(), false));
                    continue;
                }
                Some(Err(WriteFailure::Request(e))) => {
                    tracing::warn!(error_type = e.type_name(), measurement_type = %key.type_name, "Observation write failed.");
                    report
                        .errors
                        .push(fail(e.type_name(), e.to_string(), e.is_retryable()));
                    continue;
                }
                Some(Err(WriteFailure::Multiple(count, identifier))) => {
                    report.errors.push(fail(
                        "MultipleResourceFoundException",
                        format!("{count} Observation resources have identifier {identifier:?}; expected one"),
                        false,
                    ));
                    continue;
                }
                None => {
                    report.errors.push(fail(
                        "FhirServiceUnavailableException",
                        "the Observation was still pending when the writer stopped".into(),
                        true,
                    ));
                    continue;
                }
            };
            let id = o["id"].as_str().unwrap_or_default().to_string();
            match seen.get(&id) {
                Some(&i) => report.observations[i] = o,
                None => {
                    seen.insert(id, report.observations.len());
                    report.observations.push(o);
                }
            }
        }
        report
    }
}
