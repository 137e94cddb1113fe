//! Whole-program tests: the `iomt` binary as scripts and users run it.

mod cli_normalize;
mod golden;

mod replay;
