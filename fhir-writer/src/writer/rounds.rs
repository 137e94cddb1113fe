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
use crate::bundle::{percent_encoded_len, Entry, EntryOutcome};
use crate::client::{searchset_matches, Versioned};
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

    /// Reads the Observations the version cache does not hold: a search by identifier each, or
    /// in Bundles one search for several identifiers ([`identifier_searches`]), exact matches
    /// only. Returns the delay the unavailable ones ask for.
    async fn read<T>(&self, jobs: &mut [&mut Job<'_, T>]) -> Duration {
        let mut delay = Duration::ZERO;
        let mut reading = Vec::new();
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
            reading.push(i);
        }
        let (groups, entries) = identifier_searches(
            &reading,
            |i| jobs[i].identifier.as_str(),
            self.exchange.bundles_answered(),
        );
        let answers = self.exchange.send(&entries).await;
        for (group, a) in groups.into_iter().zip(answers) {
            match a {
                EntryOutcome::Done {
                    resource: Some(bundle),
                    ..
                } => {
                    let (mut matches, next) = searchset_matches(bundle);
                    if let Some(next) = next {
                        match self.client().search_from(&next).await {
                            Ok(more) => matches.extend(more),
                            Err(e) => {
                                for &i in &group {
                                    jobs[i].fail(WriteFailure::Request(same_error(&e)));
                                }
                                continue;
                            }
                        }
                    }
                    let values: Vec<&str> =
                        group.iter().map(|&i| jobs[i].identifier.as_str()).collect();
                    let mut found = split_matches(matches, &values);
                    for (&i, found) in group.iter().zip(&mut found) {
                        let j = &mut *jobs[i];
                        match found.len() {
                            0 | 1 => j.existing = Some(found.pop()),
                            n => j.fail(WriteFailure::Multiple(n, j.identifier.clone())),
                        }
                    }
                }
                u @ EntryOutcome::Unavailable { .. } => {
                    for &i in &group {
                        delay = delay.max(self.unavailable(jobs[i], &u));
                    }
                }
                EntryOutcome::Refused { status, outcome } => {
                    for &i in &group {
                        jobs[i].fail(WriteFailure::Request(WriteError::Rejected {
                            method: "GET".into(),
                            url: "Observation?identifier=...".into(),
                            status,
                            outcome: outcome.clone(),
                        }))
                    }
                }
                other => {
                    for &i in &group {
                        jobs[i].fail(WriteFailure::Request(WriteError::InvalidResponse {
                            url: "Observation?identifier=...".into(),
                            detail: format!(
                                "unexpected answer to a search: HTTP {}",
                                other.status()
                            ),
                        }))
                    }
                }
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
/// Most identifiers in one search, and most characters of its URL: a Bundle entry's URL has no
/// line limit, but should the server stop taking Bundles the entry goes as a single `GET`, which
/// servers and proxies take up to 8 KB or so.
const MAX_IDENTIFIERS_PER_SEARCH: usize = 100;
const MAX_SEARCH_URL: usize = 4000;

/// The search entries for the jobs `reading` (by index; `identifier` gives a job's identifier
/// value), and which jobs each entry reads.
///
/// Single requests, and Bundles until the server has answered one (its refusal would turn the
/// entries into single `GET`s), get one `identifier={system}|{value}` search per job, as the
/// reference. In Bundles a search carries many values, `identifier={v1},{v2},...` (FHIR's `,`
/// is *or*): one entry for up to [`MAX_IDENTIFIERS_PER_SEARCH`] Observations instead of one each,
/// so the server runs one query and answers one searchset (10,000 new readings: about 250
/// search entries instead of 10,000). The system is left out to keep the URL short; the
/// matches are then kept by exact system and value ([`split_matches`]) as for one search. A
/// value with a character that FHIR escapes in a search (`,` `|` `$` `\`) is searched alone.
fn identifier_searches<'a>(
    reading: &[usize],
    identifier: impl Fn(usize) -> &'a str,
    combine: bool,
) -> (Vec<Vec<usize>>, Vec<Entry>) {
    let mut groups = Vec::new();
    let mut entries = Vec::new();
    let mut values: Vec<usize> = Vec::new();
    let mut url_len = 0;
    let flush =
        |values: &mut Vec<usize>, groups: &mut Vec<Vec<usize>>, entries: &mut Vec<Entry>| {
            match values.len() {
                0 => return,
                1 => entries.push(Entry::search(
                    "Observation",
                    &[(
                        "identifier",
                        &format!("{SERVICE_SYSTEM}|{}", identifier(values[0])),
                    )],
                )),
                n => {
                    let list: Vec<&str> = values.iter().map(|&i| identifier(i)).collect();
                    entries.push(Entry::search(
                        "Observation",
                        &[
                            ("identifier", &list.join(",")),
                            ("_count", &(2 * n).to_string()),
                        ],
                    ))
                }
            }
            groups.push(std::mem::take(values));
        };
    for &i in reading {
        let value = identifier(i);
        if !combine || value.contains([',', '|', '$', '\\']) {
            flush(&mut vec![i], &mut groups, &mut entries);
            continue;
        }
        // Its length percent-encoded, with the `,` (`%2C`) before it.
        let len = 3 + percent_encoded_len(value);
        if values.len() == MAX_IDENTIFIERS_PER_SEARCH || url_len + len > MAX_SEARCH_URL {
            flush(&mut values, &mut groups, &mut entries);
            url_len = 0;
        }
        values.push(i);
        url_len += len;
    }
    flush(&mut values, &mut groups, &mut entries);
    (groups, entries)
}

/// The matches of a search for the identifier `values` (ours, [`SERVICE_SYSTEM`]), by value:
/// each resource goes to every value it carries exactly, system and value.
fn split_matches(matches: Vec<Value>, values: &[&str]) -> Vec<Vec<Versioned>> {
    let at: HashMap<&str, usize> = values.iter().enumerate().map(|(k, v)| (*v, k)).collect();
    let mut found: Vec<Vec<Versioned>> = values.iter().map(|_| Vec::new()).collect();
    for resource in matches {
        let mut hits: Vec<usize> = resource["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["system"].as_str() == Some(SERVICE_SYSTEM))
            .filter_map(|i| at.get(i["value"].as_str()?).copied())
            .collect();
        hits.sort_unstable();
        hits.dedup();
        let version = resource
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .map(str::to_string);
        let versioned = Versioned { resource, version };
        if let Some((&last, rest)) = hits.split_last() {
            for &k in rest {
                found[k].push(versioned.clone());
            }
            found[last].push(versioned);
        }
    }
    found
}

/// `e` again, for each job of a search that failed (a token error, which holds no copyable
/// cause, as the unavailability it is).
fn same_error(e: &WriteError) -> WriteError {
    match e {
        WriteError::Rejected {
            method,
            url,
            status,
            outcome,
        } => WriteError::Rejected {
            method: method.clone(),
            url: url.clone(),
            status: *status,
            outcome: outcome.clone(),
        },
        WriteError::Conflict {
            method,
            url,
            status,
        } => WriteError::Conflict {
            method: method.clone(),
            url: url.clone(),
            status: *status,
        },
        WriteError::GaveUp {
            method,
            url,
            attempts,
            elapsed,
            last,
        } => WriteError::GaveUp {
            method: method.clone(),
            url: url.clone(),
            attempts: *attempts,
            elapsed: *elapsed,
            last: last.clone(),
        },
        WriteError::Auth(a) => WriteError::GaveUp {
            method: "GET".into(),
            url: "Observation?identifier=...".into(),
            attempts: 1,
            elapsed: Duration::ZERO,
            last: a.to_string(),
        },
        WriteError::InvalidResponse { url, detail } => WriteError::InvalidResponse {
            url: url.clone(),
            detail: detail.clone(),
        },
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn url(e: &Entry) -> &str {
        match e {
            Entry::Get { url } => url,
            Entry::Put { .. } => panic!("a search is a GET"),
        }
    }

    /// Single requests (and Bundles before the server answered one) get one search per
    /// Observation with the system; in Bundles up to 100 values share one, and a value with a
    /// character FHIR escapes goes alone.
    #[test]
    fn identifier_searches_combine_only_in_bundles() {
        let ids: Vec<String> = (0..250).map(|i| format!("p.d{i}.HeartRate.x")).collect();
        let mut with_comma = ids.clone();
        with_comma[3] = "p,q.d.HeartRate.x".into();
        let reading: Vec<usize> = (0..250).collect();

        let (groups, entries) = identifier_searches(&reading, |i| &ids[i], false);
        assert_eq!(entries.len(), 250);
        assert_eq!(groups[7], vec![7]);
        assert!(url(&entries[0]).starts_with("Observation?identifier=https%3A%2F%2Fazure"));

        let (groups, entries) = identifier_searches(&reading, |i| &with_comma[i], true);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 100, 100, 49]
        );
        assert_eq!(groups[0], vec![3]);
        assert_eq!(groups[1][..4], [0, 1, 2, 4]);
        assert!(
            url(&entries[0]).contains("https%3A%2F%2Fazure"),
            "alone, with the system"
        );
        let u = url(&entries[1]);
        assert!(u.starts_with("Observation?identifier=p.d0.HeartRate.x%2Cp.d1.HeartRate.x%2C"));
        assert!(u.ends_with("&_count=200") && u.len() <= MAX_SEARCH_URL + 100);

        // Long values: the URL budget ends an entry before 100 values.
        let long: Vec<String> = (0..50).map(|i| format!("{i}{}", "x".repeat(300))).collect();
        let (groups, _) = identifier_searches(&reading[..50], |i| &long[i], true);
        assert!(groups.len() > 1 && groups.iter().all(|g| g.len() * 300 <= MAX_SEARCH_URL));
    }

    /// Each match goes to the values it carries under our system, exactly; others are dropped.
    #[test]
    fn matches_split_by_exact_identifier() {
        let obs = |values: &[&str], system: &str| {
            json!({"resourceType": "Observation", "meta": {"versionId": "3"},
                   "identifier": values.iter().map(|v| json!({"system": system, "value": v})).collect::<Vec<_>>()})
        };
        let found = split_matches(
            vec![
                obs(&["a"], SERVICE_SYSTEM),
                obs(&["b"], "urn:other"),
                obs(&["c", "a"], SERVICE_SYSTEM),
                obs(&["A"], SERVICE_SYSTEM),
            ],
            &["a", "b", "c"],
        );
        assert_eq!(found.iter().map(Vec::len).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(found[0][0].version.as_deref(), Some("3"));
    }
}
