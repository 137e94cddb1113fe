//! Service config text (TOML): whatever parses is validated and resolved the way `iomt run`
//! and `iomt validate` do it (spool, auth, workers), without touching the file system.
//!
//! `RUNS=1000000 bash fuzz/run config`
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pipeline::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("/etc/iomt")) {
        Ok(config) => {
            for e in config.validate() {
                let _ = e.len();
            }
            let _ = config.spool();
            let _ = config.auth();
            let _ = config.pipeline.flush_interval();
            let _ = config.pipeline.workers();
        }
        Err(e) => {
            let _ = e.len();
        }
    }
});
