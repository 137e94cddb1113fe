//! `iomt simulate`: the device simulator on the command line.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use simulators::{Faults, Kind, Shape, SimConfig, Simulator};

/// `iomt simulate` options.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Number of devices (kinds assigned round-robin; one patient each).
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Device kinds, comma separated, or `all`: heart-rate, spo2, blood-pressure,
    /// body-temperature, glucose, steps, weight-scale, ecg.
    #[arg(long, default_value = "all")]
    kinds: String,
    /// Readings per device.
    #[arg(long, default_value_t = 10)]
    readings: usize,
    /// Simulated start time (RFC 3339); default 2026-01-01T08:00:00Z, so output is reproducible.
    #[arg(long)]
    start: Option<String>,
    /// Seconds between readings (default: each kind's natural interval).
    #[arg(long)]
    interval: Option<i64>,
    /// Payload shape: plain, iothub, iotcentral, array or array:N.
    #[arg(long, default_value = "plain")]
    shape: String,
    /// Your own payload shape: a handlebars template rendering `{"body": ..., "properties"?, "systemProperties"?}`.
    #[arg(long, value_name = "FILE.hbs", conflicts_with = "shape")]
    template: Option<std::path::PathBuf>,
    /// Faults in percent of messages, e.g. `malformed=1,missing=2,duplicate=1,out-of-order=1,skew=1`.
    #[arg(long, default_value = "")]
    faults: String,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to send: `stdout` (an events-file JSON array), `file:PATH`, `mqtt://HOST:PORT`, or
    /// `eventhubs` (connection string in `IOMT_EVENTHUBS_CONNECTION_STRING`, with `EntityPath`).
    #[arg(long, default_value = "stdout")]
    target: String,
    /// With `--target eventhubs`: a custom AMQP endpoint (e.g. an emulator, `amqp://127.0.0.1:5672`).
    #[arg(long, value_name = "URL")]
    eventhubs_endpoint: Option<String>,
    /// Messages per second when publishing (0: as fast as the broker accepts).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

fn config(args: &SimulateArgs) -> Result<SimConfig> {
    let kinds = if args.kinds == "all" {
        Kind::ALL.to_vec()
    } else {
        args.kinds
            .split(',')
            .map(|k| Kind::parse(k.trim()).with_context(|| format!("unknown kind {k:?}")))
            .collect::<Result<Vec<_>>>()?
    };
    let shape = match &args.template {
        Some(p) => Shape::Custom(
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        ),
        None => Shape::parse(&args.shape).with_context(|| {
            format!(
                "unknown shape {:?}: plain, iothub, iotcentral, array[:N]",
                args.shape
            )
        })?,
    };
    let mut c = SimConfig {
        devices: args.devices,
        kinds,
        readings: args.readings,
        interval_secs: args.interval,
        shape,
        faults: Faults::parse(&args.faults).map_err(anyhow::Error::msg)?,
        seed: args.seed,
        ..SimConfig::default()
    };
    if let Some(s) = &args.start {
        c.start = normalizer::value::parse_timestamp(s)
            .with_context(|| format!("--start {s:?} is not a time"))?;
    }
    Ok(c)
}

fn progress(total: u64) -> impl FnMut(u64) {
    let started = Instant::now();
    let mut last = Instant::now();
    let show = total >= 1000 && std::io::IsTerminal::is_terminal(&std::io::stderr());
    move |done: u64| {
        if show && (last.elapsed() > Duration::from_millis(200) || done == total) {
            last = Instant::now();
            let pct = done as f64 * 100.0 / total.max(1) as f64;
            let width = 30usize;
            let filled = (pct / 100.0 * width as f64) as usize;
            let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\r[{}{}] {done}/{total} ({pct:.0}%, {rate:.0}/s)",
                "#".repeat(filled),
                " ".repeat(width - filled.min(width))
            );
            if done == total {
                eprintln!();
            }
        }
    }
}

/// Runs `iomt simulate`.
pub fn run(args: SimulateArgs) -> Result<ExitCode> {
    let config = config(&args)?;
    let total = (config.devices * config.readings) as u64;
    let sim = Simulator::new(config)?;
    let all: Vec<simulators::SimEvent> = sim.collect();
    let mut faults: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in &all {
        if let Some(f) = e.fault {
            *faults.entry(f).or_default() += 1;
        }
    }
    if !faults.is_empty() {
        let list: Vec<String> = faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("faults injected: {}", list.join(" "));
    }
    if args.target == "stdout" || args.target.starts_with("file:") {
        let events: Vec<Value> = all.iter().map(|e| e.to_events_entry()).collect();
        let text = serde_json::to_string_pretty(&events)? + "\n";
        match args.target.strip_prefix("file:") {
            Some(path) => std::fs::write(path, text).with_context(|| format!("writing {path}"))?,
            None => std::io::stdout().lock().write_all(text.as_bytes())?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.target == "eventhubs" {
        let cs = std::env::var("IOMT_EVENTHUBS_CONNECTION_STRING")
            .context("--target eventhubs needs IOMT_EVENTHUBS_CONNECTION_STRING")?;
        let runtime = super::runtime()?;
        runtime.block_on(publish_event_hubs(
            &cs,
            args.eventhubs_endpoint.as_deref(),
            all,
            args.rate,
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(addr) = args.target.strip_prefix("mqtt://") else {
        bail!(
            "unknown target {:?}: stdout, file:PATH, mqtt://HOST:PORT or eventhubs",
            args.target
        );
    };
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse::<u16>().context("MQTT port")?),
        None => (addr.to_string(), 1883),
    };
    let runtime = super::runtime()?;
    runtime.block_on(publish(&host, port, all, args.rate, total))?;
    Ok(ExitCode::SUCCESS)
}

/// Publishes events over MQTT 5 at QoS 1 (properties become user properties).
pub async fn publish(
    host: &str,
    port: u16,
    events: Vec<simulators::SimEvent>,
    rate: f64,
    _readings: u64,
) -> Result<()> {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut opts = MqttOptions::new(format!("iomt-simulator-{}", std::process::id()), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(Some(64 * 1024 * 1024));
    let (client, mut eventloop) = AsyncClient::new(opts, 200);
    let n = events.len() as u64;
    let sender = tokio::spawn(async move {
        let pace = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
        for e in events {
            if publish_event(&client, &e).await.is_err() {
                break;
            }
            if let Some(p) = pace {
                tokio::time::sleep(p).await;
            }
        }
        client
    });
    let mut acked = 0u64;
    let mut bar = progress(n);
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)))) => {
                acked += 1;
                bar(acked);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("MQTT: {e}"),
            Err(_) => bail!("MQTT: no acknowledgement for 30 s ({acked}/{n} acknowledged)"),
        }
    }
    let client = sender.await?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    eprintln!("published {n} events");
    Ok(())
}

/// Publishes a simulator's events over MQTT 5 as their simulated time arrives (the simulator
/// starts "now"), until `stop` turns true. Used by `iomt demo`.
pub async fn publish_realtime(
    port: u16,
    sim: Simulator,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    use rumqttc::v5::{AsyncClient, MqttOptions};
    let mut opts = MqttOptions::new("iomt-demo-simulator", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(Some(16 * 1024 * 1024));
    let (client, mut eventloop) = AsyncClient::new(opts, 500);
    let pump = tokio::spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                tracing::debug!(error = %e, "Simulator MQTT connection; retrying.");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut sent = 0u64;
    for e in sim {
        let wait = (e.time - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if publish_event(&client, &e).await.is_err() {
            break;
        }
        sent += 1;
    }
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    pump.abort();
    tracing::info!(sent, "Simulator stopped.");
    Ok(())
}

/// Publishes events to Azure Event Hubs with the SDK's producer; properties become application
/// properties.
pub async fn publish_event_hubs(
    connection_string: &str,
    endpoint: Option<&str>,
    events: Vec<simulators::SimEvent>,
    rate: f64,
) -> Result<()> {
    use azure_messaging_eventhubs::models::EventData;
    use azure_messaging_eventhubs::ProducerClient;
    sources::event_hubs::install_crypto_provider();
    let mut builder = ProducerClient::builder();
    if let Some(e) = endpoint {
        builder = builder.with_custom_endpoint(e.to_string());
    }
    let producer = builder
        .open_with_connection_string(connection_string, None)
        .await
        .context("opening the Event Hubs producer")?;
    let n = events.len() as u64;
    let mut bar = progress(n);
    let pace = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    for (i, e) in events.into_iter().enumerate() {
        let mut b = EventData::builder()
            .with_body(e.body.clone())
            .with_content_type("application/json".into());
        for (k, v) in &e.properties {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            b = b.add_property(k.clone(), v);
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            producer.send_event(b.build(), None),
        )
        .await
        .context("Event Hubs send timed out")?
        .context("Event Hubs send")?;
        bar(i as u64 + 1);
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), producer.close()).await;
    eprintln!("published {n} events");
    Ok(())
}

/// Publishes one simulated event at QoS 1 over MQTT 5, its properties as user properties
/// (strings as they are, other values as JSON).
async fn publish_event(
    client: &rumqttc::v5::AsyncClient,
    e: &simulators::SimEvent,
) -> Result<(), rumqttc::v5::ClientError> {
    let mut props = rumqttc::v5::mqttbytes::v5::PublishProperties::default();
    for (k, v) in &e.properties {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        props.user_properties.push((k.clone(), v));
    }
    client
        .publish_with_properties(
            e.topic.clone(),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            e.body.clone(),
            props,
        )
        .await
}
