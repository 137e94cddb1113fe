//! A **development** FHIR R4 store: resources persisted on disk in an embedded SQLite database,
//! served over HTTP with the subset of FHIR REST that the IoMT writer and a person reviewing its
//! output need. It is the default target of `iomt demo`; production points the connector at a
//! real FHIR server (Azure Health Data Services, HAPI, Medplum, ...). See `docs/FHIR-STORE.md`.
//!
//! * Interactions: read (`GET /{type}/{id}`), vread (`GET /{type}/{id}/_history/{vid}`), history
//!   (`GET /{type}/{id}/_history`), create (`POST /{type}`, server-assigned id), update or create
//!   by `PUT /{type}/{id}` with `If-Match` (412 when stale), search (`GET /{type}?...`, see
//!   [`search`]), `batch` and `transaction` Bundles (`POST /`, one SQLite transaction per
//!   Bundle, `If-Match` and conditional create per entry: [`Store::bundle`]), `GET /metadata`,
//!   and `POST /$reset` when enabled for tests.
//! * Versions count up as strings (`"1"`, `"2"`, ...), `meta.lastUpdated` is set on every write,
//!   answers carry `ETag: W/"<version>"`, `Location` and `Last-Modified`. A PUT whose content
//!   equals the current version writes no new version.
//! * Every version is kept as JSON by (type, id, version); the current one is indexed, and
//!   identifiers, codes and references are in side tables, so searches do not scan resources.
//! * Every write is one SQLite transaction, so an `If-Match` check and the write it guards are
//!   atomic: two writers never both succeed from the same version.
//! * Served under `/`, `/fhir` and `/fhir/R4`; bodies above 16 MiB are answered 413; every error
//!   is an `OperationOutcome`.
//!
//! ```
//! use chrono::Utc;
//! use fhir_store::{search::SearchQuery, Store};
//! use serde_json::json;
//!
//! let store = Store::open_in_memory()?;
//! let patient = json!({"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:mrn", "value": "42"}]});
//! let first = store.update("Patient", "p1", patient.clone(), None, Utc::now())?;
//! assert!(first.created);
//! assert_eq!(first.version, "1");
//!
//! // A stale If-Match is refused; the current one is accepted.
//! let mut renamed = patient.clone();
//! renamed["name"] = json!([{"family": "Doe"}]);
//! assert!(store.update("Patient", "p1", renamed.clone(), Some("W/\"0\""), Utc::now()).is_err());
//! assert_eq!(store.update("Patient", "p1", renamed, Some("W/\"1\""), Utc::now())?.version, "2");
//!
//! let page = store.search("Patient", &SearchQuery::parse(&[("identifier".into(), "urn:mrn|42".into())])?)?;
//! assert_eq!(page.total, 1);
//! assert_eq!(page.resources[0]["meta"]["versionId"], "2");
//! # Ok::<(), fhir_store::StoreError>(())
//! ```
//!
//! Serving it (what `iomt demo` embeds):
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let store = fhir_store::Store::open("fhir-store.sqlite").map_err(std::io::Error::other)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // Base URL: http://127.0.0.1:8080/fhir/R4 (also served at the root).
//! fhir_store::serve(listener, store, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
#![deny(missing_docs)]

mod bundle;
mod error;
mod http;
mod index;
pub mod search;
mod sql;
mod store;

pub use bundle::Return;
pub use error::StoreError;
pub use http::{serve, serve_with, ServeConfig};
pub use store::{parse_if_match, SearchPage, Store, Written};
