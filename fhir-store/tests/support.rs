//! Starts the store on a free loopback port for one test.

use std::path::{Path, PathBuf};

use fhir_store::{ServeConfig, Store};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A store served on a free loopback port, stopped when dropped or by [`Running::stop`].
pub struct Running {
    /// Base URL, `http://127.0.0.1:N/fhir/R4`.
    pub base: String,
    /// The database file.
    pub path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Running {
    /// A fresh store in a temporary directory, with `$reset` enabled.
    pub async fn start() -> Running {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.sqlite");
        let mut r = Running::at(
            &path,
            ServeConfig {
                dev_reset: true,
                ..Default::default()
            },
        )
        .await;
        r._dir = Some(dir);
        r
    }

    /// Serves the store file at `path` with `config`.
    pub async fn at(path: &Path, config: ServeConfig) -> Running {
        let store = Store::open(path).expect("open store");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(fhir_store::serve_with(
            listener,
            store,
            config,
            async move {
                let _ = rx.await;
            },
        ));
        Running {
            base: format!("http://127.0.0.1:{port}/fhir/R4"),
            path: path.to_path_buf(),
            stop: Some(tx),
            task: Some(task),
            _dir: None,
        }
    }

    /// Stops serving and waits until the server has returned.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server result");
        }
        self._dir.take()
    }

    /// All resources of a type, following `next` links.
    pub async fn all(&self, resource_type: &str) -> Vec<Value> {
        let http = reqwest::Client::new();
        let mut url = format!("{}/{resource_type}?_count=1000", self.base);
        let mut out = Vec::new();
        loop {
            let r = http.get(&url).send().await.expect("search");
            let b: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("bundle");
            for e in b["entry"].as_array().into_iter().flatten() {
                out.push(e["resource"].clone());
            }
            match b["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
            {
                Some(l) => url = l["url"].as_str().expect("next url").to_string(),
                None => return out,
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
