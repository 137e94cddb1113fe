//! The commands, one module each.

pub mod bench;
pub mod demo;
pub mod simulate;
