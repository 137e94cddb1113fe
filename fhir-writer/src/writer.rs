//! The FHIR writer: measurements → groups → identities → Observations on a FHIR server.
//!
//! One batch is written in rounds, each round one exchange of entries for all the Observations
//! still pending — in `batch` Bundles of `bundle_size` entries (`bundle_concurrency` in flight)
//! where the server takes them, else as single requests ([`crate::exchange`]):
//!
//! 1. **Identities**: the Device/Patient/Encounter searches of every new key in one round, then
//!    the missing Patients and Devices created in one round each (Create mode).
//! 2. **Reads** of the Observations the version cache does not hold: a search by identifier
//!    each (exact matches only, as the reference).
//! 3. **Writes**: build or merge ([`to_observation`]); an unchanged merge writes nothing; a
//!    create is a `PUT` to the reference's deterministic id, an update a `PUT` with `If-Match`
//!    on the version the merge started from (from the read, or from the version cache without
//!    any read).
//! 4. **Per entry**: 2xx done (and cached); 409/412 (or 404 for an update: the Observation
//!    vanished) re-read and re-merge that Observation only, bounded; 408/429/5xx tried again in
//!    the next round after the retry policy's delay (`Retry-After` honoured) until its deadline;
//!    any other 4xx is final: the error names the resource and carries the server's
//!    `OperationOutcome`, and its events become dead letters.
//!
//! A SampledData create the server did not answer 201 is checked against the Observation's
//! history (one round for all): if another writer created it between our read and our `PUT`,
//! its samples are merged back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use grouper::{group_measurements, ObservationGroup};
use normalizer::Measurement;
use serde::Serialize;
use serde_json::Value;

use crate::bundle::{Entry, EntryOutcome};
use crate::cache::{CacheConfig, TtlCache};
use crate::client::{has_exact_identifier, searchset_matches, FhirClient, Versioned, WriteError};
use crate::exchange::{Exchange, ExchangeConfig};
use crate::identity::{
    IdentityError, IdentityKey, IdentityResolver, ResolutionMode, ResolvedIdentity,
};
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
    /// The version cache: the Observations written, with their versions, so that the next
    /// merge into one is written with `If-Match` without reading it first (reference: 5000
    /// entries, 1 h).
    pub observation_cache: CacheConfig,
    /// Write in `batch` Bundles (false: one request per read and write, as for a server that
    /// takes no Bundles; `--no-bundles`).
    pub bundles: bool,
    /// Most entries per Bundle.
    pub bundle_size: usize,
    /// Bundles in flight at once.
    pub bundle_concurrency: usize,
}

/// Default entries per Bundle: inside the 100–500 that FHIR servers advise, and half of the
/// 500-entry limit some (Azure Health Data Services) enforce.
pub const DEFAULT_BUNDLE_SIZE: usize = 250;
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
            },
            observation_cache: CacheConfig {
                capacity: 5000,
                ttl: Duration::from_secs(3600),
            },
            bundles: true,
            bundle_size: DEFAULT_BUNDLE_SIZE,
            bundle_concurrency: DEFAULT_BUNDLE_CONCURRENCY,
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

enum Written {
    Created(Value),
    Updated(Value),
    Unchanged(Value),
}

enum WriteFailure {
    Mapping(MappingError),
    Request(WriteError),
    Multiple(usize, String),
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

/// One Observation to write, between rounds.
struct Job<'a, T> {
    template: &'a CodeValueFhirTemplate,
    group: ObservationGroup<T>,
    /// The events of the group as it first was (a repair's group has none of its own).
    tags: Vec<T>,
    identity: ObservationIdentity,
    identifier: String,
    /// The Observation as the server has it: `None` not known yet (read it), `Some(None)` it
    /// does not exist.
    existing: Option<Option<Versioned>>,
    /// Whether the version cache may stand in for a read (not after a conflict).
    use_cache: bool,
    conflicts: u32,
    /// Transient failures of this Observation's entries, and since when.
    transient: u32,
    transient_since: Option<Instant>,
    /// How many more times a create that replaced another writer's Observation is repaired.
    repairs: u8,
    /// A write that needs its history checked: the written version.
    check: Option<Versioned>,
    result: Option<Result<Written, WriteFailure>>,
}

impl<T> Job<'_, T> {
    fn pending(&self) -> bool {
        self.result.is_none()
    }

    fn fail(&mut self, f: WriteFailure) {
        self.result = Some(Err(f));
    }

    fn id(&self) -> String {
        logical_id(SERVICE_SYSTEM, &self.identifier)
    }
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
                    let retry = matches!(e, IdentityError::Request(r) if retryable(r));
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
                                let retry = matches!(&e, IdentityError::Request(r) if retryable(r));
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
                let identifier = identifier_value(&obs_identity, &og);
                jobs.push(Job {
                    template,
                    tags: og.tags.clone(),
                    group: og,
                    identity: obs_identity.clone(),
                    identifier,
                    existing: None,
                    use_cache: true,
                    conflicts: 0,
                    transient: 0,
                    transient_since: None,
                    repairs: 2,
                    check: None,
                    result: None,
                });
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
                    tracing::warn!(error_type = request_error_type(&e), measurement_type = %key.type_name, "Observation write failed.");
                    report
                        .errors
                        .push(fail(request_error_type(&e), e.to_string(), retryable(&e)));
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

    /// Runs the rounds until every job has a result. Two jobs for the same Observation (rare:
    /// the same identifier from two groups of one batch) go in successive waves.
    async fn run_jobs<T>(&self, jobs: &mut [Job<'_, T>], issued: Option<DateTime<Utc>>) {
        let mut wave_of: Vec<usize> = Vec::with_capacity(jobs.len());
        let mut count: HashMap<&str, usize> = HashMap::new();
        for j in jobs.iter() {
            let n = count.entry(j.identifier.as_str()).or_default();
            wave_of.push(*n);
            *n += 1;
        }
        let waves = wave_of.iter().copied().max().map_or(0, |m| m + 1);
        for wave in 0..waves {
            let mut in_wave: Vec<&mut Job<'_, T>> = jobs
                .iter_mut()
                .zip(&wave_of)
                .filter(|(_, w)| **w == wave)
                .map(|(j, _)| j)
                .collect();
            // Every round settles or advances each pending job (a conflict or a transient
            // failure is bounded by the retry counts and the retry deadline).
            while in_wave.iter().any(|j| j.pending()) {
                let delay = self.round(&mut in_wave, issued).await;
                if delay > Duration::ZERO {
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Decides what a transient failure of `job` means: the delay before its next try, or
    /// giving up (the job fails, to be retried later by the pipeline).
    fn transient<T>(&self, job: &mut Job<'_, T>, what: Attempt<'_>, detail: &str) -> Duration {
        let since = *job.transient_since.get_or_insert_with(Instant::now);
        let policy = self.client().retry_policy();
        match policy.decide(
            what,
            job.transient,
            since.elapsed(),
            rand::random::<f64>(),
            Utc::now(),
        ) {
            Decision::RetryAfter(d) => {
                job.transient += 1;
                self.client()
                    .stats()
                    .retries
                    .fetch_add(1, Ordering::Relaxed);
                d
            }
            Decision::GiveUp(_) => {
                self.client()
                    .stats()
                    .gave_up
                    .fetch_add(1, Ordering::Relaxed);
                job.fail(WriteFailure::Request(WriteError::GaveUp {
                    method: "PUT".into(),
                    url: format!("Observation/{}", job.id()),
                    attempts: job.transient + 1,
                    elapsed: since.elapsed(),
                    last: detail.to_string(),
                }));
                Duration::ZERO
            }
        }
    }

    /// What an entry's unavailability means for `job`: retry after a delay, or give up.
    fn unavailable<T>(&self, job: &mut Job<'_, T>, outcome: &EntryOutcome) -> Duration {
        let EntryOutcome::Unavailable {
            status,
            retry_after,
            detail,
            exhausted,
        } = outcome
        else {
            return Duration::ZERO;
        };
        if *exhausted {
            job.fail(WriteFailure::Request(WriteError::GaveUp {
                method: "PUT".into(),
                url: format!("Observation/{}", job.id()),
                attempts: job.transient + 1,
                elapsed: job.transient_since.map_or(Duration::ZERO, |s| s.elapsed()),
                last: detail.clone(),
            }));
            return Duration::ZERO;
        }
        let what = match status {
            Some(code) => Attempt::Status {
                code: *code,
                retry_after: retry_after.as_deref(),
            },
            None => Attempt::Connection,
        };
        let detail = detail.clone();
        self.transient(job, what, &detail)
    }

    /// One round: reads, then writes, then history checks, for the pending jobs. Returns how
    /// long to wait before the next round (0: at once).
    async fn round<T>(
        &self,
        jobs: &mut [&mut Job<'_, T>],
        issued: Option<DateTime<Utc>>,
    ) -> Duration {
        let mut delay = Duration::ZERO;

        // Reads of what the version cache does not hold.
        let mut reading = Vec::new();
        let mut entries = Vec::new();
        for (i, j) in jobs.iter_mut().enumerate() {
            if !j.pending() || j.existing.is_some() || j.check.is_some() {
                continue;
            }
            if j.use_cache {
                if let Some(hit) = self.observations.get(&j.identifier) {
                    j.existing = Some(Some(hit));
                    continue;
                }
            }
            entries.push(Entry::search(
                "Observation",
                &[("identifier", &format!("{SERVICE_SYSTEM}|{}", j.identifier))],
            ));
            reading.push(i);
        }
        let answers = self.exchange.send(entries).await;
        for (i, a) in reading.into_iter().zip(answers) {
            let j = &mut *jobs[i];
            match a {
                EntryOutcome::Done {
                    resource: Some(bundle),
                    ..
                } => {
                    let (mut matches, next) = searchset_matches(&bundle);
                    if let Some(next) = next {
                        match self.client().search_from(&next).await {
                            Ok(more) => matches.extend(more),
                            Err(e) => {
                                j.fail(WriteFailure::Request(e));
                                continue;
                            }
                        }
                    }
                    let mut found: Vec<Versioned> = matches
                        .into_iter()
                        .filter(|r| has_exact_identifier(r, Some(SERVICE_SYSTEM), &j.identifier))
                        .map(|resource| Versioned {
                            version: resource
                                .pointer("/meta/versionId")
                                .and_then(Value::as_str)
                                .map(str::to_string),
                            resource,
                        })
                        .collect();
                    match found.len() {
                        0 | 1 => j.existing = Some(found.pop()),
                        n => j.fail(WriteFailure::Multiple(n, j.identifier.clone())),
                    }
                }
                u @ EntryOutcome::Unavailable { .. } => {
                    delay = delay.max(self.unavailable(j, &u));
                }
                EntryOutcome::Refused { status, outcome } => {
                    j.fail(WriteFailure::Request(WriteError::Rejected {
                        method: "GET".into(),
                        url: "Observation?identifier=...".into(),
                        status,
                        outcome,
                    }))
                }
                other => j.fail(WriteFailure::Request(WriteError::InvalidResponse {
                    url: "Observation?identifier=...".into(),
                    detail: format!("unexpected answer to a search: HTTP {}", other.status()),
                })),
            }
        }

        // Merges and writes.
        let mut writing = Vec::new();
        let mut entries = Vec::new();
        for (i, j) in jobs.iter_mut().enumerate() {
            if !j.pending() || j.check.is_some() {
                continue;
            }
            let Some(existing) = j.existing.clone() else {
                continue;
            };
            let outcome = match to_observation(
                j.template,
                &j.group,
                &j.identity,
                issued,
                existing.as_ref().map(|e| &e.resource),
            ) {
                Ok(o) => o,
                Err(e) => {
                    j.fail(WriteFailure::Mapping(e));
                    continue;
                }
            };
            match outcome {
                Outcome::Unchanged => {
                    let Some(e) = existing else {
                        j.fail(WriteFailure::Mapping(MappingError::NotSupported {
                            template: j.template.type_name.clone(),
                            reason: "nothing to write and no existing Observation".into(),
                        }));
                        continue;
                    };
                    self.stats.unchanged.fetch_add(1, Ordering::Relaxed);
                    self.observations.insert(j.identifier.clone(), e.clone());
                    j.result = Some(Ok(Written::Unchanged(e.resource)));
                }
                Outcome::Create(mut obs) => {
                    if obs.get("id").is_none() {
                        obs["id"] = Value::String(j.id());
                    }
                    entries.push(Entry::Put {
                        resource: obs,
                        if_match: None,
                    });
                    writing.push(i);
                }
                Outcome::Update(obs) => {
                    let v = existing.as_ref().and_then(|e| e.version.clone());
                    entries.push(Entry::Put {
                        resource: obs,
                        if_match: v,
                    });
                    writing.push(i);
                }
            }
        }
        let sent: Vec<(Value, bool)> = entries
            .iter()
            .map(|e| match e {
                Entry::Put { resource, if_match } => (resource.clone(), if_match.is_some()),
                Entry::Get { .. } => (Value::Null, false),
            })
            .collect();
        let answers = self.exchange.send(entries).await;
        for ((i, a), (body, update)) in writing.into_iter().zip(answers).zip(sent) {
            let j = &mut *jobs[i];
            let created = j.existing.as_ref().is_some_and(Option::is_none);
            match a {
                EntryOutcome::Done {
                    status,
                    resource,
                    version,
                } => {
                    let mut resource = resource
                        .filter(|r| r["resourceType"] == "Observation")
                        .unwrap_or(body);
                    if let Some(v) = &version {
                        if resource.pointer("/meta/versionId").is_none() {
                            resource["meta"]["versionId"] = Value::String(v.clone());
                        }
                    }
                    let written = Versioned { resource, version };
                    self.observations
                        .insert(j.identifier.clone(), written.clone());
                    j.transient = 0;
                    j.transient_since = None;
                    if created && status != 201 && j.repairs > 0 && !j.template.is_point_in_time() {
                        // Created as far as we knew, but not answered 201: it may have existed
                        // (another writer's create between our read and our PUT).
                        j.check = Some(written);
                    } else if created {
                        self.stats.created.fetch_add(1, Ordering::Relaxed);
                        j.result = Some(Ok(Written::Created(written.resource)));
                    } else {
                        self.stats.updated.fetch_add(1, Ordering::Relaxed);
                        j.result = Some(Ok(Written::Updated(written.resource)));
                    }
                }
                EntryOutcome::Conflict { .. } | EntryOutcome::NotFound { .. }
                    if update || matches!(a, EntryOutcome::Conflict { .. }) =>
                {
                    // Someone else wrote it (or it vanished): re-read and merge again.
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.observations.remove(&j.identifier);
                    j.existing = None;
                    j.use_cache = false;
                    j.conflicts += 1;
                    if j.conflicts > self.config.max_conflict_retries {
                        j.fail(WriteFailure::Request(WriteError::Conflict {
                            method: "PUT".into(),
                            url: format!(
                                "Observation?identifier={SERVICE_SYSTEM}|{}",
                                j.identifier
                            ),
                            status: a.status(),
                        }));
                        continue;
                    }
                    // Back off first (the one retry policy, with jitter): without it, a writer
                    // that must re-read loses every round to one writing from its cache.
                    let policy = self.client().retry_policy();
                    match policy.decide(
                        Attempt::Connection,
                        j.conflicts - 1,
                        Duration::ZERO,
                        rand::random::<f64>(),
                        Utc::now(),
                    ) {
                        Decision::RetryAfter(d) => delay = delay.max(d),
                        Decision::GiveUp(_) => {}
                    }
                }
                u @ EntryOutcome::Unavailable { .. } => {
                    self.observations.remove(&j.identifier);
                    delay = delay.max(self.unavailable(j, &u));
                }
                EntryOutcome::Refused { status, outcome } => {
                    self.observations.remove(&j.identifier);
                    j.fail(WriteFailure::Request(WriteError::Rejected {
                        method: "PUT".into(),
                        url: format!("Observation/{}", j.id()),
                        status,
                        outcome,
                    }));
                }
                other => {
                    self.observations.remove(&j.identifier);
                    j.fail(WriteFailure::Request(WriteError::Rejected {
                        method: "PUT".into(),
                        url: format!("Observation/{}", j.id()),
                        status: other.status(),
                        outcome: "not found".into(),
                    }));
                }
            }
        }

        // History checks of creates not answered 201.
        let mut checking = Vec::new();
        let mut entries = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            if let (true, Some(w)) = (j.pending(), &j.check) {
                let id = w.resource["id"].as_str().unwrap_or_default();
                entries.push(Entry::Get {
                    url: format!("Observation/{id}/_history?_count=20"),
                });
                checking.push(i);
            }
        }
        let answers = self.exchange.send(entries).await;
        for (i, a) in checking.into_iter().zip(answers) {
            let j = &mut *jobs[i];
            let Some(written) = j.check.take() else {
                continue;
            };
            let lost = match &a {
                EntryOutcome::Done {
                    resource: Some(history),
                    ..
                } => replaced_version(history, written.version.as_deref()),
                _ => {
                    // The write itself succeeded: a server that keeps no history (or fails
                    // to show it) leaves the race unchecked rather than failing the write.
                    tracing::warn!(status = a.status(), "Could not read the history of a created Observation; a concurrent create by another writer goes unnoticed.");
                    None
                }
            };
            self.stats.created.fetch_add(1, Ordering::Relaxed);
            match lost {
                Some(lost) => {
                    // Another writer created this Observation after our read: our create
                    // replaced it. Merge its samples back in (with If-Match, as any update),
                    // so neither writer's readings are lost.
                    self.stats.create_races.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        observation = %written.resource["id"].as_str().unwrap_or_default(),
                        "An Observation created concurrently by another writer was replaced; merging its samples back."
                    );
                    j.group = lost_samples(j.template, &j.group, &lost.resource);
                    j.repairs -= 1;
                    j.existing = None;
                    j.use_cache = false;
                    self.observations.remove(&j.identifier);
                }
                None => j.result = Some(Ok(Written::Created(written.resource))),
            }
        }
        delay
    }
}

/// The version a create replaced, from the Observation's history (newest first): the one just
/// before ours. `None` when ours is the first (the usual case) or is not in the page.
fn replaced_version(history: &Value, ours: Option<&str>) -> Option<Versioned> {
    let ours = ours?;
    let versions: Vec<&Value> = history["entry"]
        .as_array()?
        .iter()
        .filter_map(|e| e.get("resource"))
        .collect();
    let at = versions
        .iter()
        .position(|r| r.pointer("/meta/versionId").and_then(Value::as_str) == Some(ours))?;
    versions.get(at + 1).map(|r| Versioned {
        resource: (*r).clone(),
        version: r
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}
