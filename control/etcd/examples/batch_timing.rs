//! How long 1,000 conditional puts take on a real 3-member etcd (Debian's `etcd` on
//! loopback), 256 at a time: through a [`WriteBatcher`] (shared transactions) and as
//! one transaction each. `cargo run --release -p earshot-etcd --example batch_timing`;
//! docs/perf.md records the result.
#![allow(clippy::disallowed_methods)] // Measures real elapsed time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use earshot_etcd::testing::EtcdCluster;
use earshot_etcd::{Etcd, Expect, Write, WriteBatcher, absent, put};
use tokio::sync::Semaphore;

const PUTS: usize = 1_000;
const AT_ONCE: usize = 256;

/// Runs `PUTS` jobs, `AT_ONCE` at a time; returns the elapsed time.
async fn timed<F, Fut>(job: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(AT_ONCE));
    let mut running = tokio::task::JoinSet::new();
    for i in 0..PUTS {
        let gate = Arc::clone(&gate);
        let fut = job(i);
        running.spawn(async move {
            let _permit = gate.acquire().await;
            fut.await;
        });
    }
    while running.join_next().await.is_some() {}
    started.elapsed()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let etcd = Etcd::new(&cluster.endpoints()).expect("endpoints");
    let batcher = WriteBatcher::start(etcd.clone());
    for round in 0..3 {
        let batched = timed(|i| {
            let b = batcher.clone();
            async move {
                let write = Write::Put {
                    value: b"v".to_vec(),
                    lease: 0,
                };
                b.write_if(format!("/batched{round}/{i}"), Expect::Absent, write)
                    .await
                    .expect("etcd answers");
            }
        })
        .await;
        let single = timed(|i| {
            let e = etcd.clone();
            async move {
                let key = format!("/single{round}/{i}");
                e.txn(vec![absent(key.clone())], vec![put(key, "v", 0)], vec![])
                    .await
                    .expect("etcd answers");
            }
        })
        .await;
        println!(
            "round {round}: {PUTS} conditional puts, {AT_ONCE} at a time: batched {batched:?}, one transaction each {single:?} (ratio {:.1})",
            single.as_secs_f64() / batched.as_secs_f64()
        );
    }
}
