//! The rounds of one batch (steps 2 to 4 of [the writer](super), and the history check):
//! every Observation still pending is a [`Job`]; each round reads the ones the version cache
//! does not hold, builds or merges and writes them, and checks the history of creates not
//! answered 201, all in one exchange of entries per phase. A job ends written, unchanged or
//! failed; a conflict or a transient failure keeps it pending for the next round, bounded by
//! the conflict retries and the retry policy's deadline.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use grouper::ObservationGroup;
use serde_json::Value;

use super::FhirWriter;
use crate::bundle::{Entry, EntryOutcome};
use crate::client::{has_exact_identifier, searchset_matches, Versioned};
use crate::error::WriteError;
use crate::observation::{
    identifier_value, logical_id, lost_samples, to_observation, ObservationIdentity, Outcome,
    SERVICE_SYSTEM,
};
use crate::retry::{Attempt, Decision};
use crate::template::CodeValueFhirTemplate;
use crate::MappingError;

/// A job's Observation as the server now has it.
pub(super) enum Written {
    Created(Value),
    Updated(Value),
    Unchanged(Value),
}

/// Why a job's Observation was not written.
pub(super) enum WriteFailure {
    Mapping(MappingError),
    Request(WriteError),
    /// Several Observations carry the identifier: how many, and the identifier.
    Multiple(usize, String),
}

/// One Observation to write, between rounds.
pub(super) struct Job<'a, T> {
    template: &'a CodeValueFhirTemplate,
    pub(super) group: ObservationGroup<T>,
    /// The events of the group as it first was (a repair's group has none of its own).
    pub(super) tags: Vec<T>,
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
    /// `None` while pending.
    pub(super) result: Option<Result<Written, WriteFailure>>,
}

impl<'a, T> Job<'a, T> {
    /// A pending job for the Observation of `group` (one of [`observation_groups`]' groups
    /// for `template`) linked to `identity`.
    ///
    /// [`observation_groups`]: crate::observation_groups
    pub(super) fn new(
        template: &'a CodeValueFhirTemplate,
        group: ObservationGroup<T>,
        identity: ObservationIdentity,
    ) -> Self
    where
        T: Clone,
    {
        Job {
            template,
            tags: group.tags.clone(),
            identifier: identifier_value(&identity, &group),
            group,
            identity,
            existing: None,
            use_cache: true,
            conflicts: 0,
            transient: 0,
            transient_since: None,
            repairs: 2,
            check: None,
            result: None,
        }
    }

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
    /// Runs the rounds until every job has a result. Two jobs for the same Observation (rare:
    /// the same identifier from two groups of one batch) go in successive waves.
    pub(super) async fn run_jobs<T: Send + Sync>(
        &self,
        jobs: &mut [Job<'_, T>],
        issued: Option<DateTime<Utc>>,
    ) {
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
            // In lanes of one Bundle each, `bundle_concurrency` lanes at a time: while the
            // server works on one lane's Bundle, the next lane's Observations are built and
            // merged, so the writer's CPU and the server's overlap (one lane after the other,
            // a flush cost the sum of both). Without Bundles: one lane, as many requests in
            // flight as `max_concurrency` allows.
            let (lane, lanes) = match self.exchange.bundle_size() {
                Some(size) => (size, self.config.bundle_concurrency.max(1)),
                None => (in_wave.len().max(1), 1),
            };
            // Boxed as `Send` here, in a loop rather than a closure: the compiler cannot prove
            // a closure-made future over borrowed jobs `Send` for every caller.
            let mut parts: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
            for part in in_wave.chunks_mut(lane) {
                parts.push(Box::pin(self.lane(part, issued)));
            }
            stream::iter(parts)
                .buffer_unordered(lanes)
                .collect::<Vec<()>>()
                .await;
        }
    }

    /// Runs the rounds of one lane until each of its jobs has a result: every round settles
    /// or advances each pending job (a conflict or a transient failure is bounded by the retry
    /// counts and the retry deadline).
    async fn lane<T: Send + Sync>(
        &self,
        jobs: &mut [&mut Job<'_, T>],
        issued: Option<DateTime<Utc>>,
    ) {
        while jobs.iter().any(|j| j.pending()) {
            let delay = self.round(jobs, issued).await;
            if delay > Duration::ZERO {
                tokio::time::sleep(delay).await;
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

    /// Keeps `written` in the version cache, unless it is a point-in-time Observation (a
    /// Quantity, String or CodeableConcept reading). Such an Observation holds one reading, so
    /// the only merge into it is a replay of that reading; caching them would evict the
    /// SampledData Observations that every flush merges into (a thousand SpO2 devices at 1 Hz
    /// would turn a 5,000-entry cache over every five seconds), and would copy every one of
    /// them. A replayed reading costs one search entry instead.
    fn remember<T>(&self, job: &Job<'_, T>, written: &Versioned) {
        if !job.template.is_point_in_time() {
            self.observations
                .insert(job.identifier.clone(), written.clone());
        }
    }

    /// One round: reads, then writes, then history checks, for the pending jobs. Returns how
    /// long to wait before the next round (0: at once).
    async fn round<T>(
        &self,
        jobs: &mut [&mut Job<'_, T>],
        issued: Option<DateTime<Utc>>,
    ) -> Duration {
        let read = self.read(jobs).await;
        let write = self.write(jobs, issued).await;
        self.check_creates(jobs).await;
        read.max(write)
    }

    /// Reads the Observations the version cache does not hold: a search by identifier each,
    /// exact matches only. Returns the delay the unavailable ones ask for.
    async fn read<T>(&self, jobs: &mut [&mut Job<'_, T>]) -> Duration {
        let mut delay = Duration::ZERO;
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
        let answers = self.exchange.send(&entries).await;
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
        delay
    }

    /// Builds or merges the Observations read and writes those that changed: a create is a
    /// `PUT` to the deterministic id, an update a `PUT` with `If-Match`. Returns the delay the
    /// conflicts' back-off and the unavailable entries ask for.
    async fn write<T>(
        &self,
        jobs: &mut [&mut Job<'_, T>],
        issued: Option<DateTime<Utc>>,
    ) -> Duration {
        let mut delay = Duration::ZERO;
        let mut writing = Vec::new();
        let mut entries = Vec::new();
        for (i, j) in jobs.iter_mut().enumerate() {
            if !j.pending() || j.check.is_some() {
                continue;
            }
            // Borrowed, not cloned: an hourly SampledData Observation is tens of kilobytes.
            let Some(existing) = j.existing.as_ref() else {
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
                    let Some(e) = j.existing.take().flatten() else {
                        j.fail(WriteFailure::Mapping(MappingError::NotSupported {
                            template: j.template.type_name.clone(),
                            reason: "nothing to write and no existing Observation".into(),
                        }));
                        continue;
                    };
                    self.stats.unchanged.fetch_add(1, Ordering::Relaxed);
                    self.remember(j, &e);
                    j.result = Some(Ok(Written::Unchanged(e.resource)));
                }
                Outcome::Create(mut obs) => {
                    if obs.get("id").is_none() {
                        obs["id"] = Value::String(j.id());
                    }
                    if self.config.stamp_profiles {
                        crate::vital_signs::stamp(&mut obs);
                    }
                    entries.push(Entry::Put {
                        resource: obs,
                        if_match: None,
                    });
                    writing.push(i);
                }
                Outcome::Update(mut obs) => {
                    if self.config.stamp_profiles {
                        crate::vital_signs::stamp(&mut obs);
                    }
                    let v = j
                        .existing
                        .as_ref()
                        .and_then(|e| e.as_ref())
                        .and_then(|e| e.version.clone());
                    entries.push(Entry::Put {
                        resource: obs,
                        if_match: v,
                    });
                    writing.push(i);
                }
            }
        }
        let answers = self.exchange.send(&entries).await;
        // What was sent, kept (not copied) for answers without the resource.
        let sent: Vec<(Value, bool)> = entries
            .into_iter()
            .map(|e| match e {
                Entry::Put { resource, if_match } => (resource, if_match.is_some()),
                Entry::Get { .. } => (Value::Null, false),
            })
            .collect();
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
                    // The server's version, also over the stale one a sent body carries (a
                    // minimal answer has no resource: the body sent is what is cached).
                    if let Some(v) = &version {
                        if resource.pointer("/meta/versionId").and_then(Value::as_str)
                            != Some(v.as_str())
                        {
                            resource["meta"]["versionId"] = Value::String(v.clone());
                            if let Some(meta) = resource["meta"].as_object_mut() {
                                meta.remove("lastUpdated");
                            }
                        }
                    }
                    let written = Versioned { resource, version };
                    self.remember(j, &written);
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
        delay
    }

    /// Checks the history of the creates not answered 201: when ours replaced another
    /// writer's create, its samples are merged back (the job goes on to another round).
    async fn check_creates<T>(&self, jobs: &mut [&mut Job<'_, T>]) {
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
        let answers = self.exchange.send(&entries).await;
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
