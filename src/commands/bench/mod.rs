//! `iomt bench`: the whole connector measured on this machine with no cloud account. Mosquitto
//! (the system binary), the local FHIR store in-process, the connector as a child process
//! (`iomt run`), the simulator publishing at QoS 1; then the same events into a bare QoS 1
//! subscriber (the broker-only limit) and through `serde_json` alone (parse-only), so every
//! connector rate has two references measured in the same run. docs/PERFORMANCE.md ("iomt
//! bench") defines every figure.
//!
//! This module checks the options and runs the phases in order. The others: [`setup`] (the
//! bench folder, the connector's config), [`phases`] (the broker-only and connector phases,
//! run and recorded), [`broker`] (Mosquitto), [`mqtt`] (publisher, bare subscriber,
//! payloads), [`connector`] (child process, RSS), [`prom`] (reading `/metrics`), [`report`]
//! (the figures, computed) and [`table`] (the figures, printed).

mod broker;
mod connector;
mod mqtt;
mod phases;
mod prom;
mod report;
mod setup;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use phases::Phases;
use report::Setup;
use setup::BenchDir;

/// `iomt bench` options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Simulated devices (kinds assigned round-robin).
    #[arg(long, default_value_t = 5000)]
    devices: usize,
    /// Publish rate, events/s overall (0: as fast as the broker acknowledges).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Readings per device, one a second of simulated time (600: ten minutes of 1 Hz heart rate).
    #[arg(long, default_value_t = 600)]
    readings: usize,
    /// Device kinds, comma separated (see `iomt simulate --help`), or `all`.
    #[arg(long, default_value = "heart-rate")]
    kinds: String,
    /// The connector's flush interval (`30s`, `500ms`, `2m`); set only where the connector has
    /// the option.
    #[arg(long, default_value = "30s")]
    flush_interval: String,
    /// Unacknowledged QoS 1 messages per client: the connector's `inflight`, Mosquitto's
    /// `max_inflight_messages`, the publisher's and the bare subscriber's limit.
    #[arg(long, default_value_t = 1000)]
    inflight: u16,
    /// After the last event is published, wait this long for everything to be written.
    #[arg(long, default_value = "10m")]
    timeout: String,
    /// Folder for the bench's files (broker configs and logs, FHIR store, connector config and
    /// log); kept. Default: a temporary folder, removed at the end unless --keep.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print the figures as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// Skip the broker-only phase.
    #[arg(long)]
    skip_broker_only: bool,
    /// Keep the temporary folder.
    #[arg(long)]
    keep: bool,
    /// A backlog instead of a live stream: the connector subscribes once (its persistent
    /// session), stops, every event is published and queued on the broker, then the connector
    /// starts again and the drain is timed (figures count from that start).
    #[arg(long)]
    backlog: bool,
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .with_context(|| format!("{s:?} is not a duration (30s, 500ms, 2m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("{s:?}: unknown unit {unit:?} (ms, s, m, h)"),
    };
    Duration::try_from_secs_f64(secs).with_context(|| format!("{s:?} is out of range"))
}

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free loopback port")?
        .local_addr()?
        .port())
}

/// A progress line on stderr.
fn progress(line: &str) {
    eprintln!("bench: {line}");
}

/// Runs `iomt bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.devices == 0 || args.readings == 0 {
        bail!("--devices and --readings must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be 0 (as fast as possible) or a positive number of events/s");
    }
    if args.inflight == 0 {
        bail!("--inflight must be at least 1");
    }
    let flush = parse_duration(&args.flush_interval).context("--flush-interval")?;
    let timeout = parse_duration(&args.timeout).context("--timeout")?;
    let kinds = parse_kinds(&args.kinds)?;
    let mosquitto = broker::find()?;
    let exe = std::env::current_exe().context("finding the iomt executable")?;
    let mut dir = BenchDir::new(args.dir.as_deref(), args.keep)?;

    let sim = simulators::SimConfig {
        devices: args.devices,
        kinds: kinds.clone(),
        readings: args.readings,
        interval_secs: Some(1),
        seed: 1,
        prefix: "bench".into(),
        ..simulators::SimConfig::default()
    };
    let heart_rate_devices = (0..args.devices)
        .filter(|i| kinds[i % kinds.len()] == simulators::Kind::HeartRate)
        .count();
    progress(&format!(
        "simulating {} devices x {} readings",
        args.devices, args.readings
    ));
    let payloads = Arc::new(mqtt::Payloads::generate(simulators::Simulator::new(sim)?)?);
    let n = payloads.len() as u64;

    progress("parse-only: serde_json::from_slice::<Value> over every payload, one thread");
    let parse_only = parse_only(&payloads)?;

    let setup = Setup {
        devices: args.devices,
        readings_per_device: args.readings,
        kinds: kinds.iter().map(|k| k.name().to_string()).collect(),
        events: n,
        body_bytes: payloads.total_bytes() as u64,
        rate: args.rate,
        inflight: args.inflight,
        flush_interval_secs: flush.as_secs_f64(),
        flush_interval_config: None,
        dir: dir.path.display().to_string(),
        backlog: args.backlog,
    };
    let phases = Phases {
        mosquitto,
        exe,
        dir: dir.path.clone(),
        payloads,
        rate: args.rate,
        inflight: args.inflight,
        flush,
        timeout,
        heart_rate_readings: (heart_rate_devices * args.readings) as u64,
        backlog: args.backlog,
    };
    let runtime = crate::commands::runtime()?;
    let outcome = runtime.block_on(async {
        let broker_only = if args.skip_broker_only {
            None
        } else {
            Some(phases.broker_only().await?)
        };
        phases.connector(setup, broker_only, parse_only).await
    });
    let recorded = match outcome {
        Ok(r) => r,
        Err(e) => {
            dir.remove = false;
            eprintln!("bench: files kept in {}", dir.path.display());
            return Err(e);
        }
    };
    let report = report::compute(recorded);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table::render(&report));
    }
    let ok = report.complete && report.fhir_samples_match;
    if !ok {
        dir.remove = false;
    }
    if dir.remove {
        progress(&format!(
            "removing {} (--keep keeps it)",
            dir.path.display()
        ));
    } else {
        progress(&format!("files kept in {}", dir.path.display()));
    }
    if !report.complete {
        eprintln!(
            "bench: incomplete: {} of {} events written",
            report.written, report.setup.events
        );
        return Ok(ExitCode::from(1));
    }
    if !report.fhir_samples_match {
        eprintln!(
            "bench: the FHIR store holds {} heart-rate samples, {} were published",
            report.fhir.heart_rate_samples, report.fhir.heart_rate_readings_published
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_kinds(s: &str) -> Result<Vec<simulators::Kind>> {
    if s == "all" {
        return Ok(simulators::Kind::ALL.to_vec());
    }
    s.split(',')
        .map(|k| {
            simulators::Kind::parse(k.trim()).with_context(|| {
                format!(
                    "unknown kind {k:?}: {}",
                    simulators::Kind::ALL.map(|k| k.name()).join(", ")
                )
            })
        })
        .collect()
}

/// Parses every payload as `serde_json::Value` on this thread, repeating passes for at least
/// half a second; events/s.
fn parse_only(payloads: &mqtt::Payloads) -> Result<f64> {
    let started = Instant::now();
    let mut parsed = 0u64;
    loop {
        for i in 0..payloads.len() {
            let v: Value = serde_json::from_slice(payloads.body(i))
                .with_context(|| format!("simulated payload {i} is not JSON"))?;
            std::hint::black_box(v);
        }
        parsed += payloads.len() as u64;
        if started.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    Ok(parsed as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("s").is_err());
    }
}
