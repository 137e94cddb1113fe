//! The FHIR writer: measurements → groups → identities → Observations on a FHIR server.
//!
//! Per Observation: find the existing one (cache, else search by identifier keeping exact
//! matches), build or merge, then create by PUT to the deterministic id or update by PUT with
//! `If-Match` on the version the merge started from. On 409/412 the Observation is re-read and
//! re-merged (bounded). One device's groups are written in order; different devices in
//! parallel up to `max_concurrency`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use grouper::{group_measurements, MeasurementGroup, ObservationGroup};
use normalizer::Measurement;
use serde::Serialize;
use serde_json::Value;

use crate::cache::{CacheConfig, TtlCache};
use crate::client::{FhirClient, Versioned, WriteError};
use crate::identity::{IdentityError, IdentityResolver, ResolutionMode, ResolvedIdentity};
use crate::observation::{
    identifier_value, logical_id, lost_samples, observation_groups, to_observation,
    ObservationIdentity, Outcome, SERVICE_SYSTEM,
};
use crate::retry::{Attempt, Decision};
use crate::template::{CodeValueFhirTemplate, FhirTemplates};
use crate::MappingError;

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
    /// Observation cache (reference: 5000 entries, 1 h).
    pub observation_cache: CacheConfig,
}

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
            },
            observation_cache: CacheConfig {
                capacity: 5000,
                ttl: Duration::from_secs(3600),
            },
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

/// The reference-style type name of a failed request.
pub fn request_error_type(e: &WriteError) -> &'static str {
    match e {
        WriteError::Rejected { .. } | WriteError::InvalidResponse { .. } => "FhirServiceException",
        WriteError::Conflict { .. } => "FhirResourceConflictException",
        WriteError::GaveUp { .. } | WriteError::Auth(_) => "FhirServiceUnavailableException",
    }
}

fn retryable(e: &WriteError) -> bool {
    matches!(
        e,
        WriteError::GaveUp { .. } | WriteError::Auth(_) | WriteError::Conflict { .. }
    )
}

type IdentityKey = (String, Option<String>, Option<String>);

enum Written {
    Created(Value),
    Updated(Value),
    Unchanged(Value),
}

/// Writes batches of measurements to a FHIR server. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct FhirWriter {
    client: FhirClient,
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
            identities: TtlCache::new(config.identity_cache),
            observations: TtlCache::new(config.observation_cache),
            client,
            templates,
            config,
            stats: WriterStats::default(),
        }
    }

    /// The client (for its request counters).
    pub fn client(&self) -> &FhirClient {
        &self.client
    }

    /// Totals since the writer was made.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
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
        // One device's groups in order; devices in parallel.
        let mut by_device: Vec<(String, Vec<MeasurementGroup<T>>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for g in group_measurements(measurements) {
            let d = g.key.device_id.clone();
            let i = *index.entry(d.to_string()).or_insert_with(|| {
                by_device.push((d.to_string(), Vec::new()));
                by_device.len() - 1
            });
            by_device[i].1.push(g);
        }
        let results: Vec<WriteReport<T>> = stream::iter(by_device)
            .map(|(_, groups)| self.write_device(groups, issued))
            .buffer_unordered(self.config.max_concurrency.max(1))
            .collect()
            .await;
        let mut report = WriteReport::default();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for r in results {
            report.errors.extend(r.errors);
            report.observations_created += r.observations_created;
            report.observations_updated += r.observations_updated;
            report.observations_unchanged += r.observations_unchanged;
            for o in r.observations {
                let id = o["id"].as_str().unwrap_or_default().to_string();
                match seen.get(&id) {
                    Some(&i) => report.observations[i] = o,
                    None => {
                        seen.insert(id, report.observations.len());
                        report.observations.push(o);
                    }
                }
            }
        }
        report
    }

    async fn write_device<T: Clone + Ord>(
        &self,
        groups: Vec<MeasurementGroup<T>>,
        issued: Option<DateTime<Utc>>,
    ) -> WriteReport<T> {
        let mut report = WriteReport::default();
        for group in groups {
            let key = group.key.clone();
            let events = || {
                let mut e: Vec<T> = group.all_tags().cloned().collect();
                e.sort();
                e.dedup();
                e
            };
            let fail = |error_type: &'static str,
                        message: String,
                        events: Vec<T>,
                        retryable: bool| WriteErrorRecord {
                error_type,
                message,
                events,
                measurement_type: key.type_name.to_string(),
                device_id: key.device_id.to_string(),
                retryable,
            };
            let Some(template) = self.templates.get(&key.type_name) else {
                let e = MappingError::TemplateNotFound {
                    type_name: key.type_name.to_string(),
                    device_id: key.device_id.to_string(),
                };
                report
                    .errors
                    .push(fail(e.type_name(), e.to_string(), events(), false));
                continue;
            };
            let obs_groups = match observation_groups(template, &group) {
                Ok(g) => g,
                Err(e) => {
                    report
                        .errors
                        .push(fail(e.type_name(), e.to_string(), events(), false));
                    continue;
                }
            };
            let identity = match self
                .identity(
                    &key.device_id,
                    key.patient_id.as_deref(),
                    key.encounter_id.as_deref(),
                )
                .await
            {
                Ok(i) => i,
                Err(e) => {
                    let retry = matches!(&e, IdentityError::Request(r) if retryable(r));
                    tracing::warn!(error_type = e.type_name(), measurement_type = %key.type_name, "Identity resolution failed.");
                    tracing::debug!(error = %e, device_id = %key.device_id, "Identity resolution failed.");
                    report
                        .errors
                        .push(fail(e.type_name(), e.to_string(), events(), retry));
                    continue;
                }
            };
            let obs_identity = ObservationIdentity::resolved(
                &identity.patient_id,
                &identity.device_id,
                identity.encounter_id.as_deref(),
            );
            for og in obs_groups {
                match self
                    .write_observation(template, &og, &obs_identity, issued, 2)
                    .await
                {
                    Ok(Written::Created(o)) => {
                        report.observations_created += 1;
                        report.observations.push(o);
                    }
                    Ok(Written::Updated(o)) => {
                        report.observations_updated += 1;
                        report.observations.push(o);
                    }
                    Ok(Written::Unchanged(o)) => {
                        report.observations_unchanged += 1;
                        report.observations.push(o);
                    }
                    Err(WriteFailure::Mapping(e)) => {
                        report.errors.push(fail(
                            e.type_name(),
                            e.to_string(),
                            og.tags.clone(),
                            false,
                        ));
                    }
                    Err(WriteFailure::Request(e)) => {
                        tracing::warn!(error_type = request_error_type(&e), measurement_type = %key.type_name, "Observation write failed.");
                        report.errors.push(fail(
                            request_error_type(&e),
                            e.to_string(),
                            og.tags.clone(),
                            retryable(&e),
                        ));
                    }
                    Err(WriteFailure::Multiple(count, identifier)) => {
                        report.errors.push(fail(
                            "MultipleResourceFoundException",
                            format!("{count} Observation resources have identifier {identifier:?}; expected one"),
                            og.tags.clone(),
                            false,
                        ));
                    }
                }
            }
        }
        report
    }

    async fn identity(
        &self,
        device_id: &str,
        patient_id: Option<&str>,
        encounter_id: Option<&str>,
    ) -> Result<ResolvedIdentity, IdentityError> {
        // Keyed by all three ids (the reference keys by device only, so a device moved to
        // another patient was not seen until eviction).
        let key: IdentityKey = (
            device_id.to_string(),
            patient_id.map(str::to_string),
            encounter_id.map(str::to_string),
        );
        if let Some(hit) = self.identities.get(&key) {
            return Ok(hit);
        }
        match self
            .resolver
            .resolve(device_id, patient_id, encounter_id)
            .await
        {
            Ok(r) => {
                self.identities.insert(key, r.clone());
                Ok(r)
            }
            Err(e) => {
                self.identities.remove(&key);
                Err(e)
            }
        }
    }

    async fn find_observation(&self, identifier: &str) -> Result<Option<Versioned>, WriteFailure> {
        let found = self
            .client
            .search_by_identifier("Observation", Some(SERVICE_SYSTEM), identifier)
            .await
            .map_err(WriteFailure::Request)?;
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.into_iter().next()),
            n => Err(WriteFailure::Multiple(n, identifier.to_string())),
        }
    }

    /// Writes one observation group: merged into the existing Observation, or created.
    /// `repairs`: how many more times a create that replaced another writer's Observation is
    /// repaired (see [`Self::replaced_version`]).
    async fn write_observation<T>(
        &self,
        template: &CodeValueFhirTemplate,
        og: &ObservationGroup<T>,
        identity: &ObservationIdentity,
        issued: Option<DateTime<Utc>>,
        repairs: u8,
    ) -> Result<Written, WriteFailure> {
        let identifier = identifier_value(identity, og);
        let mut use_cache = true;
        let started = std::time::Instant::now();
        for attempt in 0..=self.config.max_conflict_retries {
            let existing = match use_cache
                .then(|| self.observations.get(&identifier))
                .flatten()
            {
                Some(hit) => Some(hit),
                None => self.find_observation(&identifier).await?,
            };
            let outcome = to_observation(
                template,
                og,
                identity,
                issued,
                existing.as_ref().map(|e| &e.resource),
            )
            .map_err(WriteFailure::Mapping)?;
            let (body, if_match, created) = match outcome {
                Outcome::Unchanged => {
                    let Some(e) = existing else {
                        return Err(WriteFailure::Mapping(MappingError::NotSupported {
                            template: template.type_name.clone(),
                            reason: "nothing to write and no existing Observation".into(),
                        }));
                    };
                    self.stats.unchanged.fetch_add(1, Ordering::Relaxed);
                    self.observations.insert(identifier, e.clone());
                    return Ok(Written::Unchanged(e.resource));
                }
                Outcome::Create(mut obs) => {
                    if obs.get("id").is_none() {
                        obs["id"] = Value::String(logical_id(SERVICE_SYSTEM, &identifier));
                    }
                    (obs, None, true)
                }
                Outcome::Update(obs) => {
                    let v = existing.as_ref().and_then(|e| e.version.clone());
                    (obs, v, false)
                }
            };
            match self.client.put(&body, if_match.as_deref()).await {
                Ok(written) => {
                    self.observations
                        .insert(identifier.clone(), written.clone());
                    if created && repairs > 0 && !template.is_point_in_time() {
                        if let Some(lost) = self.replaced_version(&written).await {
                            // Another writer created this Observation after our search: our
                            // blind create replaced it. Merge its samples back in (with
                            // If-Match, as any update), so neither writer's readings are lost.
                            self.stats.create_races.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                observation = %identifier,
                                "An Observation created concurrently by another writer was replaced; merging its samples back."
                            );
                            self.stats.created.fetch_add(1, Ordering::Relaxed);
                            let recovered = lost_samples(template, og, &lost.resource);
                            self.observations.remove(&identifier);
                            return Box::pin(self.write_observation(
                                template,
                                &recovered,
                                identity,
                                issued,
                                repairs - 1,
                            ))
                            .await;
                        }
                    }
                    return Ok(if created {
                        self.stats.created.fetch_add(1, Ordering::Relaxed);
                        Written::Created(written.resource)
                    } else {
                        self.stats.updated.fetch_add(1, Ordering::Relaxed);
                        Written::Updated(written.resource)
                    });
                }
                Err(WriteError::Conflict { .. }) => {
                    // Someone else wrote it: re-read and merge again.
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.observations.remove(&identifier);
                    use_cache = false;
                    if attempt == self.config.max_conflict_retries {
                        break;
                    }
                    // Back off first (the one retry policy, with jitter): without it, a writer
                    // that must re-read loses every round to one writing from its cache, and
                    // the bounded retries run out within milliseconds.
                    let policy = self.client.retry_policy();
                    match policy.decide(
                        Attempt::Connection,
                        attempt,
                        started.elapsed(),
                        rand::random::<f64>(),
                        Utc::now(),
                    ) {
                        Decision::RetryAfter(delay) => tokio::time::sleep(delay).await,
                        Decision::GiveUp(_) => break,
                    }
                }
                Err(e) => {
                    self.observations.remove(&identifier);
                    return Err(WriteFailure::Request(e));
                }
            }
        }
        Err(WriteFailure::Request(WriteError::Conflict {
            method: "PUT".into(),
            url: format!("Observation?identifier={SERVICE_SYSTEM}|{identifier}"),
            status: 412,
        }))
    }
}

impl FhirWriter {
    /// The version our create replaced, when the Observation already existed: the version
    /// just before ours in its history. `None` when ours is the first (the usual case).
    async fn replaced_version(&self, written: &Versioned) -> Option<Versioned> {
        let (Some(id), Some(ours)) = (
            written.resource.get("id").and_then(Value::as_str),
            written.version.as_deref(),
        ) else {
            return None;
        };
        // The write itself succeeded: a server that keeps no history (or fails to show it)
        // leaves the race unchecked, as before, rather than failing the write.
        let history = match self.client.history("Observation", id).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the history of a created Observation; a concurrent create by another writer goes unnoticed.");
                return None;
            }
        };
        let at = history
            .iter()
            .position(|v| v.version.as_deref() == Some(ours))?;
        history.into_iter().nth(at + 1)
    }
}

enum WriteFailure {
    Mapping(MappingError),
    Request(WriteError),
    Multiple(usize, String),
}
