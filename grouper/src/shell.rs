//! The async shell: moves measurements from a channel through the [`Grouper`] to a channel.

use std::future::Future;

use crate::Measurement;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::batcher::Grouper;
use crate::group::MeasurementGroup;

impl<T: Send> Grouper<T> {
    /// Runs the grouper: receives tagged measurements from `rx`, sends each closed batch to `tx`.
    ///
    /// Batches close by size or age (see [`crate::GrouperConfig`]). When `shutdown` completes or
    /// `rx` closes, the open batch is flushed and sent, then `run` returns. If `tx` closes, `run`
    /// returns at once (the unsent measurements were never acknowledged, so they are redelivered).
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<(T, Measurement)>,
        tx: mpsc::Sender<Vec<MeasurementGroup<T>>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let deadline = self.deadline().map(Instant::from_std);
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                item = rx.recv() => match item {
                    Some((tag, m)) => {
                        if let Some(batch) = self.push(tag, m, Instant::now().into_std()) {
                            if tx.send(batch).await.is_err() {
                                return;
                            }
                        }
                    }
                    None => break,
                },
                _ = expired => {
                    if let Some(batch) = self.expire(Instant::now().into_std()) {
                        if tx.send(batch).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let rest = self.flush_all();
        if !rest.is_empty() {
            let _ = tx.send(rest).await;
        }
    }
}
