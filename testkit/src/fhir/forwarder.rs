//! A switchable TCP forwarder in front of the test FHIR server: an outage on cue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::free_port;

/// A TCP forwarder in front of the FHIR server that can be switched off: with it off,
/// connections are refused, exactly as when the server is stopped. (The test FHIR server keeps
/// its data in memory, so really stopping it would also erase what was written before.)
pub struct Forwarder {
    /// The server's base URL as reached through the forwarder (`http://127.0.0.1:<port>/...`,
    /// the server's path): what to give the connector.
    pub base: String,
    on: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Starts a forwarder, switched on, to the server whose base URL is `server_base`
    /// (`http://host:port/path`).
    pub async fn start(server_base: &str) -> Forwarder {
        let authority = server_base
            .trim_start_matches("http://")
            .split('/')
            .next()
            .expect("a base URL with a host")
            .to_string();
        let port = free_port();
        let base = server_base.replacen(&authority, &format!("127.0.0.1:{port}"), 1);
        let on = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (on2, gen2) = (on.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                if !on2.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let listener = TcpListener::bind(("127.0.0.1", port))
                    .await
                    .expect("bind forwarder");
                let my_gen = gen2.load(Ordering::SeqCst);
                loop {
                    if !on2.load(Ordering::SeqCst) {
                        break; // drop the listener: connections are refused
                    }
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(20), listener.accept()).await;
                    if let Ok(Ok((mut inbound, _))) = accepted {
                        let target = authority.clone();
                        let gen3 = gen2.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(&target).await else {
                                return;
                            };
                            let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                            // Cut live connections too when the forwarder goes off.
                            let watch = async {
                                while gen3.load(Ordering::SeqCst) == my_gen {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            };
                            tokio::select! { _ = copy => {}, _ = watch => {} }
                        });
                    }
                }
            }
        });
        Forwarder {
            base,
            on,
            generation,
            task,
        }
    }

    /// Switches off: live connections are cut, new ones refused.
    pub fn off(&self) {
        self.on.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Switches on again.
    pub fn on(&self) {
        self.on.store(true, Ordering::SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
