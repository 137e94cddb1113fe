//! Azure Event Hubs for the tests, where no real one can run (no cloud, no Docker engine): an
//! AMQP 1.0 emulator the real SDK talks to ([`EventHubsEmulator`]) and an Entra ID /
//! managed-identity token endpoint ([`TokenEndpoint`]). Both are in-process stand-ins; their
//! doc comments say what they answer.

pub mod emulator;
pub mod token_endpoint;

pub use emulator::EventHubsEmulator;
pub use token_endpoint::TokenEndpoint;
