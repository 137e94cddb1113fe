//! `iomt demo`: the whole pipeline with no external service — an embedded MQTT broker
//! (`rumqttd`), the device simulator publishing every device kind in real time, the connector
//! (`iomt run`'s pipeline) and the local FHIR store. Ctrl-C shuts everything down cleanly.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;

/// `iomt demo` options.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Folder for the demo's data (FHIR store, dead letters, config).
    #[arg(long, default_value = "var/demo")]
    dir: PathBuf,
    /// Simulated devices (every kind is represented once there are 8).
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Seconds between readings of each device.
    #[arg(long, default_value_t = 2)]
    interval: i64,
    /// MQTT port of the embedded broker.
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// Port of the local FHIR store.
    #[arg(long, default_value_t = 8080)]
    fhir_port: u16,
    /// Port of /metrics, /healthz, /readyz.
    #[arg(long, default_value_t = 9464)]
    metrics_port: u16,
    /// Port of the review page.
    #[arg(long, default_value_t = 8090)]
    review_port: u16,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Log lines as `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Address the review page and the FHIR store listen on. Anything but loopback needs
    /// sign-in for the page (--oidc-*) and a token for the store (--fhir-bearer-token-env).
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    bind: String,
    /// The FHIR store requires `Authorization: Bearer <token>`, the token from this
    /// environment variable; the connector and the review page send it.
    #[arg(long, value_name = "VAR")]
    fhir_bearer_token_env: Option<String>,
    /// The review page's sign-in.
    #[command(flatten)]
    sign_in: super::review::SignInArgs,
}

const DEVICE_MAPPING: &str = include_str!("../../templates/simulator/devicecontent.json");
const FHIR_MAPPING: &str = include_str!("../../templates/simulator/fhirmapping.json");

/// Whether the broker on `port` accepts an MQTT session: CONNECT, CONNACK, DISCONNECT.
async fn broker_answers(port: u16) -> bool {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let options = MqttOptions::new("iomt-demo-probe", "127.0.0.1", port);
    let (client, mut events) = AsyncClient::new(options, 4);
    let probe = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.disconnect().await;
                    // Until the DISCONNECT is written and the connection closes.
                    while events.poll().await.is_ok() {}
                    return true;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .unwrap_or(false)
}

fn broker_config(port: u16) -> Result<rumqttd::Config> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v5.1]
name = "v5-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 16777216
    max_inflight_count = 500
"#
    );
    toml::from_str(&text).context("embedded broker config")
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let review_addr = format!("{}:{}", args.bind, args.review_port);
    let sign_in = super::review::sign_in(&args.sign_in, &review_addr)?;
    let on_network = !super::review::loopback_only(&review_addr)?;
    if on_network && sign_in.is_none() {
        anyhow::bail!(super::review::refusal(&review_addr, "--bind 127.0.0.1"));
    }
    let store_token = match &args.fhir_bearer_token_env {
        Some(var) => {
            let t = std::env::var(var).unwrap_or_default().trim().to_string();
            if t.len() < 16 {
                anyhow::bail!("--fhir-bearer-token-env {var}: {var} must hold the FHIR store's token, 16 characters or more (e.g. {var}=$(openssl rand -hex 32))");
            }
            Some((var.clone(), t))
        }
        None if on_network => anyhow::bail!(
            "refusing to serve the FHIR store on {} without a token: set one with --fhir-bearer-token-env VAR (the token in environment variable VAR), or --bind 127.0.0.1",
            args.bind
        ),
        None => None,
    };
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    std::fs::write(dir.join("devicecontent.json"), DEVICE_MAPPING)?;
    std::fs::write(dir.join("fhirmapping.json"), FHIR_MAPPING)?;
    let fhir_url = format!("http://127.0.0.1:{}/fhir/R4", args.fhir_port);
    let config_path = dir.join("demo.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"# Written by `iomt demo`.
[templates]
device_mapping = "devicecontent.json"
fhir_mapping = "fhirmapping.json"

[fhir]
url = "{fhir_url}"
resolution = "Create"
{fhir_auth}
[source]
kind = "mqtt"
host = "127.0.0.1"
port = {mqtt}
client_id = "iomt-demo-connector"
topics = ["devices/+/telemetry"]
device_id_from_topic = "devices/{{deviceId}}/telemetry"
max_packet_bytes = 16777216

[pipeline]

flush_interval_ms = 2000

[dead_letters]
dir = "dead-letters"

[http]
listen = "127.0.0.1:{metrics}"

[log]
# The embedded broker's own lines (it logs every clean disconnect as an error) only when asked
# for: RUST_LOG=debug (or info,rumqttd=debug) shows them.
level = "info,rumqttd=off"
format = "{log_format}"
"#,
            mqtt = args.mqtt_port,
            metrics = args.metrics_port,
            fhir_auth = match &store_token {
                Some((var, _)) =>
                    format!("auth = {{ kind = \"bearer\", token_env = \"{var}\" }}\n"),
                None => String::new(),
            },
            log_format = args.log_format,
        ),
    )?;
    let config = pipeline::validate(&config_path).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
    super::init_service_logging(&config);

    // The broker runs on its own threads for the life of the process.
    let mut broker = rumqttd::Broker::new(broker_config(args.mqtt_port)?);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "Embedded MQTT broker stopped.");
            }
        })?;

    let runtime = super::runtime()?;
    runtime.block_on(async move {
        // Stopped in order: simulator, then the connector (which flushes into the store), then the store.
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let (store_tx, store_rx) = tokio::sync::watch::channel(false);

        // The local FHIR store.
        let store = fhir_store::Store::open(dir.join("fhir-store"))
            .context("opening the local FHIR store")?;
        let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.fhir_port))
            .await
            .with_context(|| {
                format!("binding the FHIR store to {}:{}", args.bind, args.fhir_port)
            })?;
        let mut store_stop = store_rx.clone();
        let store_task = tokio::spawn(fhir_store::serve_with(
            listener,
            store,
            fhir_store::ServeConfig {
                bearer_token: store_token.as_ref().map(|(_, t)| t.clone()),
                ..Default::default()
            },
            async move {
                let _ = store_stop.wait_for(|s| *s).await;
            },
        ));

        // Wait for the broker to take MQTT connections (a full CONNECT and DISCONNECT: a bare
        // TCP probe makes the broker log an error for the connection it closes).
        let started = std::time::Instant::now();
        while !broker_answers(args.mqtt_port).await {
            if started.elapsed() > Duration::from_secs(10) {
                anyhow::bail!(
                    "the embedded MQTT broker did not start on port {}",
                    args.mqtt_port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The connector.
        let (svc_tx, svc_rx) = tokio::sync::watch::channel(false);
        let service = tokio::spawn(pipeline::run(config, svc_rx));

        // The simulator, in real time.
        let sim_config = simulators::SimConfig {
            devices: args.devices,
            readings: 1_000_000,
            start: Utc::now(),
            interval_secs: Some(args.interval.max(1)),
            seed: 1,
            prefix: "demo".into(),
            ..simulators::SimConfig::default()
        };
        let sim = simulators::Simulator::new(sim_config)?;
        let mut sim_stop = shutdown_rx.clone();
        let mqtt_port = args.mqtt_port;
        let simulator = tokio::spawn(async move {
            super::simulate::publish_realtime(mqtt_port, sim, &mut sim_stop).await
        });

        // The review page, reading the local store and the connector's metrics.
        let review_listener = tokio::net::TcpListener::bind(&review_addr)
            .await
            .with_context(|| format!("binding the review page to {review_addr}"))?;
        let mut review_fhir = fhir_writer::FhirClientConfig::new(fhir_url.clone());
        if let Some((_, t)) = &store_token {
            review_fhir.auth = fhir_writer::auth::Auth::Bearer(t.clone());
        }
        let review_options = crate::review::ReviewOptions {
            metrics_url: Some(format!("http://127.0.0.1:{}/metrics", args.metrics_port)),
            thresholds: crate::review::default_thresholds(),
            dead_letters: Some(dir.join("dead-letters")),
            sign_in,
            // Readings arrive every few seconds.
            refresh: Duration::from_secs(2),
            ..Default::default()
        };
        let review = tokio::spawn(async move {
            if let Err(e) = crate::review::serve(review_listener, review_fhir, review_options).await
            {
                tracing::error!(error = %format!("{e:#}"), "The review page stopped.");
            }
        });
        println!(
            "iomt demo is running ({} simulated devices, every kind):",
            args.devices
        );
        println!("  review page:      http://{review_addr}/");
        println!(
            "  FHIR store (R4):  {fhir_url}   e.g. {fhir_url}/Observation?_sort=-date&_count=10"
        );
        println!(
            "  metrics:          http://127.0.0.1:{}/metrics",
            args.metrics_port
        );
        println!(
            "  MQTT broker:      mqtt://127.0.0.1:{} (topic devices/<deviceId>/telemetry)",
            args.mqtt_port
        );
        println!("  data:             {}", dir.display());
        println!("Press Ctrl-C to stop.");

        let stop = async {
            match args.duration {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => super::shutdown_signal().await,
            }
        };
        stop.await;
        println!("Stopping: simulator, connector (flushing), store.");
        let _ = shutdown_tx.send(true);
        let _ = simulator.await;
        let _ = svc_tx.send(true);
        match service.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Connector stopped with an error."),
            Err(e) => tracing::error!(error = %e, "Connector task failed."),
        }
        review.abort();
        let _ = store_tx.send(true);
        let _ = store_task.await;
        println!("Stopped.");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
