//! Sending a round of entries: in `batch` Bundles of bounded size, several in flight, or, where
//! the server takes no Bundles (or they are switched off), as single requests.
//!
//! Whether the server takes Bundles is decided once: its CapabilityStatement, when it lists
//! system interactions and `batch` is not among them; otherwise the first Bundle it refuses as a
//! whole (a 4xx or 501, or an answer that is not a batch-response). Either way the writer falls
//! back to single requests for the rest of its life and says so once in the log.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::stream::{self, StreamExt};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::bundle::{Entry, EntryOutcome};
use crate::client::FhirClient;
use crate::error::WriteError;

/// How entries travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeConfig {
    /// Use `batch` Bundles (false: single requests, as a server without Bundle support gets).
    pub bundles: bool,
    /// Most entries in one Bundle.
    pub bundle_size: usize,
    /// Bundles in flight at once.
    pub bundle_concurrency: usize,
    /// Single requests in flight at once.
    pub request_concurrency: usize,
}

/// Sends rounds of entries for the writer and the identity resolver.
#[derive(Debug)]
pub(crate) struct Exchange {
    client: FhirClient,
    config: ExchangeConfig,
    /// Cleared when the server turned out not to take Bundles.
    bundles: AtomicBool,
    /// Whether the server has answered a Bundle with a `batch-response`.
    answered: AtomicBool,
    /// The largest Bundle the server has not refused as too large (413): Bundles are cut to it.
    max_entries: AtomicUsize,
    capabilities: OnceCell<()>,
}

/// Whether a CapabilityStatement rules Bundles out: it lists system-level interactions and
/// `batch` is not one of them. A statement that lists none (some servers do not) says nothing.
pub fn capability_rules_out_batch(statement: &Value) -> bool {
    let rests = statement["rest"].as_array().into_iter().flatten();
    let mut listed = false;
    for rest in rests {
        if let Some(list) = rest["interaction"].as_array() {
            if !list.is_empty() {
                listed = true;
            }
            if list.iter().any(|i| i["code"] == "batch") {
                return false;
            }
        }
    }
    listed
}

impl Exchange {
    pub(crate) fn new(client: FhirClient, config: ExchangeConfig) -> Self {
        Exchange {
            client,
            bundles: AtomicBool::new(config.bundles),
            answered: AtomicBool::new(false),
            max_entries: AtomicUsize::new(usize::MAX),
            config,
            capabilities: OnceCell::new(),
        }
    }

    pub(crate) fn client(&self) -> &FhirClient {
        &self.client
    }

    /// Whether Bundles are (still) in use.
    pub(crate) fn uses_bundles(&self) -> bool {
        self.bundles.load(Ordering::Relaxed)
    }

    /// Whether Bundles are in use and the server has answered one: entries that only a Bundle
    /// should carry (a search for many identifiers) are safe to send.
    pub(crate) fn bundles_answered(&self) -> bool {
        self.uses_bundles() && self.answered.load(Ordering::Relaxed)
    }

    fn fall_back(&self, why: &str) {
        if self.bundles.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                "The FHIR server does not take batch Bundles; writing with single requests from now on."
            );
        }
    }

    async fn check_capabilities(&self) {
        self.capabilities
            .get_or_init(|| async {
                match self.client.capabilities().await {
                    Ok(Some(cs)) if capability_rules_out_batch(&cs) => {
                        self.fall_back("its CapabilityStatement lists no batch interaction")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "No CapabilityStatement; trying batch Bundles.")
                    }
                }
            })
            .await;
    }

    /// Most entries per Bundle now (the configured size, or less after a 413); `None` when
    /// entries go as single requests.
    pub(crate) fn bundle_size(&self) -> Option<usize> {
        self.uses_bundles().then(|| {
            self.config
                .bundle_size
                .min(self.max_entries.load(Ordering::Relaxed))
                .max(1)
        })
    }

    /// Sends `entries` and returns their outcomes in order.
    pub(crate) async fn send(&self, entries: &[Entry]) -> Vec<EntryOutcome> {
        if entries.is_empty() {
            return Vec::new();
        }
        if self.uses_bundles() {
            self.check_capabilities().await;
        }
        if !self.uses_bundles() {
            return self.singles(entries).await;
        }
        let size = self.bundle_size().unwrap_or(1);
        // By index: a closure taking a reference would make the future not `Send` for every
        // caller (a known limit of the compiler's inference for such closures).
        let answers: Vec<Vec<EntryOutcome>> = stream::iter(0..entries.len().div_ceil(size))
            .map(|i| self.one_bundle(&entries[i * size..((i + 1) * size).min(entries.len())]))
            .buffered(self.config.bundle_concurrency.max(1))
            .collect()
            .await;
        answers.into_iter().flatten().collect()
    }

    async fn one_bundle(&self, chunk: &[Entry]) -> Vec<EntryOutcome> {
        if !self.uses_bundles() {
            return self.singles(chunk).await;
        }
        match self.client.batch(chunk).await {
            Ok(outcomes) => {
                self.answered.store(true, Ordering::Relaxed);
                outcomes
            }
            // Too large for the server: the two halves, each split again if need be, and
            // Bundles no larger than what was refused from then on.
            Err(WriteError::Rejected { status: 413, .. }) if chunk.len() > 1 => {
                let half = chunk.len().div_ceil(2);
                let before = self.max_entries.fetch_min(half, Ordering::Relaxed);
                if before > half {
                    tracing::warn!(
                        entries = chunk.len(),
                        now = half,
                        "The FHIR server refused a Bundle as too large (413); sending smaller Bundles."
                    );
                }
                let (first, second) = chunk.split_at(half);
                let mut out = Box::pin(self.one_bundle(first)).await;
                out.extend(Box::pin(self.one_bundle(second)).await);
                out
            }
            Err(e @ (WriteError::Rejected { .. } | WriteError::InvalidResponse { .. })) => {
                tracing::debug!(error = %e, "Bundle refused.");
                let why = match &e {
                    WriteError::Rejected { status, .. } => format!("HTTP {status} for a Bundle"),
                    _ => "its answer to a Bundle is not a batch-response".to_string(),
                };
                self.fall_back(&why);
                self.singles(chunk).await
            }
            Err(e) => {
                // Unavailable until the deadline: every entry is, too.
                let detail = e.to_string();
                chunk
                    .iter()
                    .map(|_| EntryOutcome::Unavailable {
                        status: None,
                        retry_after: None,
                        detail: detail.clone(),
                        exhausted: true,
                    })
                    .collect()
            }
        }
    }

    async fn singles(&self, entries: &[Entry]) -> Vec<EntryOutcome> {
        stream::iter(0..entries.len())
            .map(|i| self.client.single(&entries[i]))
            .buffered(self.config.request_concurrency.max(1))
            .collect()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn capability_statements() {
        let with = json!({"rest": [{"mode": "server", "interaction": [{"code": "transaction"}, {"code": "batch"}]}]});
        let without = json!({"rest": [{"mode": "server", "interaction": [{"code": "transaction"}, {"code": "search-system"}]}]});
        let silent = json!({"rest": [{"mode": "server", "resource": []}]});
        assert!(!capability_rules_out_batch(&with));
        assert!(capability_rules_out_batch(&without));
        assert!(!capability_rules_out_batch(&silent));
        assert!(!capability_rules_out_batch(&json!({})));
    }
}
