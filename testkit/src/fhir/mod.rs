//! The FHIR side of the tests: the real test FHIR server ([`FhirServer`]), what the connector
//! left on it ([`FhirState`], compared resource by resource with [`Comparison`]), and two fakes
//! that stand in front of it for faults: [`FaultProxy`] (HTTP answers on cue) and
//! [`Forwarder`] (an outage).

pub mod fault_proxy;
mod forwarder;
mod server;
pub mod state;

pub use fault_proxy::FaultProxy;
pub use forwarder::Forwarder;
pub use server::{validate_vital_signs, FhirServer};
pub use state::{wait_for_state, Comparison, FhirState};
