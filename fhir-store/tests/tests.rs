//! Integration tests of the development FHIR store (one test binary).
//!
//! * `bearer`: the optional bearer-token check.
//! * `http`: the REST behaviours over real HTTP (versions, `If-Match`, search, paging, sort,
//!   persistence across reopen, limits).
//! * `writer`: the FHIR writer against the store gives what it gives against the real test FHIR
//!   server (`testkit::fhir::FhirServer`, Node + `@medplum/fhir-router`), for every template
//!   set; replays are idempotent; two concurrent writers merge into one hourly Observation.

mod bearer;
mod bundles;
mod http;
mod support;
mod writer;
