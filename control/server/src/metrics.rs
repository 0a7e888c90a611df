//! Prometheus metrics over HTTP: the engine's counters read at scrape time, and the
//! gRPC API's requests by method and code with latency.
//!
//! `GET /metrics` on [`DEFAULT_METRICS_ADDR`] (loopback) answers the text exposition
//! format 0.0.4. Engine metrics come from one `Request::Stats` call per scrape, so the
//! data plane does no metrics work between scrapes and the numbers are exactly what
//! `Engine.GetStats` returns. RPC metrics are recorded by [`RpcMetricsLayer`] around
//! every request, authentication refusals included.
//!
//! ## What it deliberately does not do
//! It is not a general HTTP server: one request per connection, `GET` only, request
//! heads up to 8 KiB, answered with `Connection: close`. Tick latency arrives from the
//! engine as percentiles, so it is exposed as a Prometheus *summary* (quantiles and
//! count, no sum), not as a histogram. The gRPC code of a streaming RPC is the one in
//! its response headers: `OK` when the stream started, even if it later ends in error.
//!
//! ## Metric names
//! Engine (labels `shard`, plus the ones named): `earshot_engine_up`,
//! `earshot_engine_info{backend}`, `earshot_legs`, `earshot_sessions`,
//! `earshot_sessions_by_mode{mode}`, `earshot_packets_total{direction}`,
//! `earshot_bytes_total{direction}`, `earshot_drops_total{reason}`, `earshot_ticks_total`,
//! `earshot_late_ticks_total`, `earshot_stalls_total`, `earshot_commands_rejected_total`,
//! `earshot_events_lost_total`, `earshot_backend_counter_total{counter}`,
//! `earshot_tick_processing_seconds{quantile}`, `earshot_tick_lateness_seconds{quantile}`
//! (summaries), `earshot_tick_processing_max_seconds`, `earshot_tick_lateness_max_seconds`.
//! API: `earshot_rpc_requests_total{service,method,code}`,
//! `earshot_rpc_duration_seconds{service,method}` (histogram).
//! Sidecar ([`SidecarMetrics`]): `earshot_interactions_out_of_sync`,
//! `earshot_programming_failures_total`, `earshot_engine_refusals_total`,
//! `earshot_legs_port_lost_total`, `earshot_events_recovered_total`,
//! `earshot_interactions_in_memory`, `earshot_interactions_pruned_total`,
//! `earshot_grpc_connections_refused_total`, `earshot_grpc_connections_open`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use earshot_engine_api::{EngineApi, EngineStats, Percentiles, Request, Response, ShardStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The metrics address used when none is configured: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// Upper bounds (seconds) of the RPC latency histogram buckets: from 250 us (a read
/// served from memory) to 5 s (an engine call timing out).
pub const RPC_BUCKETS_S: [f64; 12] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Distinct (service, method) pairs tracked; beyond it requests count as
/// `method="other"`, so clients sending random paths cannot grow memory without bound.
pub const MAX_TRACKED_METHODS: usize = 128;

/// How long a scrape waits for the engine before reporting `earshot_engine_up 0`.
const ENGINE_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Where metrics are served: `--metrics ADDR` or `--metrics off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    /// No metrics server.
    Off,
    /// Serve on this address.
    On(SocketAddr),
}

impl FromStr for MetricsAddr {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            Ok(MetricsAddr::Off)
        } else {
            s.parse().map(MetricsAddr::On)
        }
    }
}

impl MetricsAddr {
    /// The address, if on.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            MetricsAddr::Off => None,
            MetricsAddr::On(a) => Some(a),
        }
    }
}

/// Per-method RPC counters and latency histogram.
#[derive(Debug, Default, Clone)]
struct MethodStats {
    /// Requests by gRPC code name.
    by_code: BTreeMap<&'static str, u64>,
    /// Count per bucket of [`RPC_BUCKETS_S`] (not cumulative), then +Inf.
    buckets: [u64; RPC_BUCKETS_S.len() + 1],
    sum_s: f64,
    count: u64,
}

/// The API's request metrics, shared by the layer (writer) and the scrape (reader),
/// and the sidecar's own health counters.
#[derive(Debug, Default)]
pub struct RpcMetrics {
    methods: Mutex<BTreeMap<(String, String), MethodStats>>,
    /// The sidecar's reliability counters and gauges (written by the core).
    pub sidecar: SidecarMetrics,
}

/// Counters and gauges of the sidecar itself (not the engine, not the API layer).
#[derive(Debug, Default)]
pub struct SidecarMetrics {
    /// Gauge: live interactions the engine refused to program (PROGRAMMING_FAILED and
    /// not repaired since).
    pub interactions_out_of_sync: AtomicU64,
    /// Counter: interactions marked PROGRAMMING_FAILED.
    pub programming_failures: AtomicU64,
    /// Counter: mutating RPCs the engine refused and that were undone.
    pub engine_refusals: AtomicU64,
    /// Counter: legs re-created on a new port because their recorded port was gone.
    pub legs_port_lost: AtomicU64,
    /// Counter: engine events recovered from the engine's state at reconciliation
    /// (first packets the sidecar missed while it was away).
    pub events_recovered: AtomicU64,
    /// Gauge: interactions (live and ended-but-retained) held in the sidecar's memory.
    pub interactions_in_memory: AtomicU64,
    /// Counter: interactions pruned from the store after the retention period.
    pub interactions_pruned: AtomicU64,
    /// Counter: gRPC connections refused because the connection limit was reached.
    pub connections_refused: AtomicU64,
    /// Gauge: gRPC connections open now.
    pub connections_open: AtomicU64,
}

impl SidecarMetrics {
    /// Appends the sidecar metrics in the text exposition format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 9] = [
            (
                "earshot_interactions_out_of_sync",
                "gauge",
                "Live interactions the engine refused to program (PROGRAMMING_FAILED).",
                &self.interactions_out_of_sync,
            ),
            (
                "earshot_programming_failures_total",
                "counter",
                "Interactions marked PROGRAMMING_FAILED.",
                &self.programming_failures,
            ),
            (
                "earshot_engine_refusals_total",
                "counter",
                "Mutating requests the engine refused; each was undone and stored nothing.",
                &self.engine_refusals,
            ),
            (
                "earshot_legs_port_lost_total",
                "counter",
                "Legs re-created on a new local port because their recorded port was gone.",
                &self.legs_port_lost,
            ),
            (
                "earshot_events_recovered_total",
                "counter",
                "Engine events recovered from the engine's state at reconciliation.",
                &self.events_recovered,
            ),
            (
                "earshot_interactions_in_memory",
                "gauge",
                "Interactions held in the sidecar's memory.",
                &self.interactions_in_memory,
            ),
            (
                "earshot_interactions_pruned_total",
                "counter",
                "Ended interactions removed from the store after the retention period.",
                &self.interactions_pruned,
            ),
            (
                "earshot_grpc_connections_refused_total",
                "counter",
                "gRPC connections refused at the connection limit.",
                &self.connections_refused,
            ),
            (
                "earshot_grpc_connections_open",
                "gauge",
                "gRPC connections open.",
                &self.connections_open,
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

impl RpcMetrics {
    /// Empty metrics.
    pub fn new() -> Arc<RpcMetrics> {
        Arc::new(RpcMetrics::default())
    }

    /// Records one request to `path` (`/package.Service/Method`) that ended with
    /// `code` after `elapsed`.
    pub fn handle_request(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        let (service, method) = split_path(path);
        // A poisoned lock only means another recorder panicked mid-update; the counts
        // are still plain numbers, so keep counting.
        let mut methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (service.to_owned(), method.to_owned());
        if !methods.contains_key(&key) && methods.len() >= MAX_TRACKED_METHODS {
            key = ("other".to_owned(), "other".to_owned());
        }
        let stats = methods.entry(key).or_default();
        *stats.by_code.entry(code_name(code)).or_insert(0) += 1;
        let secs = elapsed.as_secs_f64();
        let bucket = RPC_BUCKETS_S
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(RPC_BUCKETS_S.len());
        stats.buckets[bucket] += 1;
        stats.sum_s += secs;
        stats.count += 1;
    }

    /// Appends the RPC metrics in the text exposition format.
    pub fn render(&self, out: &mut String) {
        let methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP earshot_rpc_requests_total gRPC requests by method and status code.\n\
             # TYPE earshot_rpc_requests_total counter"
        );
        for ((service, method), s) in methods.iter() {
            for (code, n) in &s.by_code {
                let _ = writeln!(
                    out,
                    "earshot_rpc_requests_total{{service=\"{}\",method=\"{}\",code=\"{code}\"}} {n}",
                    escape(service),
                    escape(method)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP earshot_rpc_duration_seconds gRPC request latency, to the response headers.\n\
             # TYPE earshot_rpc_duration_seconds histogram"
        );
        for ((service, method), s) in methods.iter() {
            let labels = format!(
                "service=\"{}\",method=\"{}\"",
                escape(service),
                escape(method)
            );
            let mut cumulative = 0;
            for (i, n) in s.buckets.iter().enumerate() {
                cumulative += n;
                let le = RPC_BUCKETS_S
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "earshot_rpc_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "earshot_rpc_duration_seconds_sum{{{labels}}} {}",
                s.sum_s
            );
            let _ = writeln!(
                out,
                "earshot_rpc_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
    }
}

/// `/earshot.v1.Interactions/Hold` -> (`earshot.v1.Interactions`, `Hold`).
fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((s, m)) if !s.is_empty() && !m.is_empty() && !m.contains('/') => (s, m),
        _ => ("unknown", "unknown"),
    }
}

/// The canonical upper-case name of a gRPC code, as in the gRPC spec and `grpcurl`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes a metric family's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends the engine metrics for `stats` in the text exposition format.
pub fn render_engine(stats: &EngineStats, out: &mut String) {
    header(
        out,
        "earshot_engine_up",
        "gauge",
        "1 when the engine answered this scrape.",
    );
    let _ = writeln!(out, "earshot_engine_up 1");
    header(
        out,
        "earshot_engine_info",
        "gauge",
        "The engine's I/O backend.",
    );
    let _ = writeln!(
        out,
        "earshot_engine_info{{backend=\"{}\"}} 1",
        escape(&stats.backend)
    );
    render_per_shard(stats, out);
    render_labelled(stats, out);
    render_tick_summaries(stats, out);
}

/// One value per shard: `name{shard="N"} value`.
fn render_per_shard(stats: &EngineStats, out: &mut String) {
    type PerShard = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ShardStats) -> u64,
    );
    let families: [PerShard; 8] = [
        ("earshot_legs", "gauge", "Legs allocated.", |s| s.legs),
        (
            "earshot_sessions",
            "gauge",
            "Sessions with at least one leg.",
            |s| s.sessions,
        ),
        ("earshot_ticks_total", "counter", "Mix ticks run.", |s| {
            s.ticks
        }),
        (
            "earshot_late_ticks_total",
            "counter",
            "Ticks started more than one ptime late.",
            |s| s.late_ticks,
        ),
        (
            "earshot_stalls_total",
            "counter",
            "Loop iterations over the stall budget.",
            |s| s.stalls,
        ),
        (
            "earshot_commands_rejected_total",
            "counter",
            "Commands refused: queue full.",
            |s| s.commands_rejected,
        ),
        (
            "earshot_events_lost_total",
            "counter",
            "Engine events lost: queue full.",
            |s| s.events_lost,
        ),
        (
            "earshot_shard_pinned",
            "gauge",
            "1 when the shard is pinned to a CPU.",
            |s| u64::from(s.core.is_some()),
        ),
    ];
    for (name, kind, help, value) in families {
        header(out, name, kind, help);
        for s in &stats.shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, value(s));
        }
    }
}

/// Values per shard and one more label: `name{shard="N",label="value"} n`.
fn render_labelled(stats: &EngineStats, out: &mut String) {
    type Labelled = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        fn(&ShardStats) -> Vec<(&str, u64)>,
    );
    fn pairs(v: &[(String, u64)]) -> Vec<(&str, u64)> {
        v.iter().map(|(k, n)| (k.as_str(), *n)).collect()
    }
    let families: [Labelled; 5] = [
        (
            "earshot_sessions_by_mode",
            "gauge",
            "Sessions by mix mode.",
            "mode",
            |s| pairs(&s.sessions_by_mode),
        ),
        (
            "earshot_packets_total",
            "counter",
            "Datagrams received (in) and sent (out).",
            "direction",
            |s| vec![("in", s.packets_in), ("out", s.packets_out)],
        ),
        (
            "earshot_bytes_total",
            "counter",
            "UDP payload bytes received (in) and sent (out).",
            "direction",
            |s| vec![("in", s.bytes_in), ("out", s.bytes_out)],
        ),
        (
            "earshot_drops_total",
            "counter",
            "Datagrams dropped, by reason.",
            "reason",
            |s| pairs(&s.drops),
        ),
        (
            "earshot_backend_counter_total",
            "counter",
            "The I/O backend's own counters.",
            "counter",
            |s| pairs(&s.backend_counters),
        ),
    ];
    for (name, kind, help, label, values) in families {
        header(out, name, kind, help);
        for s in &stats.shards {
            for (value, n) in values(s) {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{}\",{label}=\"{}\"}} {n}",
                    s.shard,
                    escape(value)
                );
            }
        }
    }
}

/// The tick processing and lateness percentiles as summaries, with their maxima.
fn render_tick_summaries(stats: &EngineStats, out: &mut String) {
    type Summary = (&'static str, &'static str, fn(&ShardStats) -> Percentiles);
    let summaries: [Summary; 2] = [
        ("earshot_tick_processing", "Tick processing time.", |s| {
            s.tick_processing_us
        }),
        (
            "earshot_tick_lateness",
            "Tick start minus its deadline.",
            |s| s.tick_lateness_us,
        ),
    ];
    for (base, help, pick) in summaries {
        let name = format!("{base}_seconds");
        header(out, &name, "summary", help);
        for s in &stats.shards {
            let p = pick(s);
            for (q, v) in [
                ("0.5", p.p50),
                ("0.9", p.p90),
                ("0.99", p.p99),
                ("0.999", p.p999),
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{}\",quantile=\"{q}\"}} {}",
                    s.shard,
                    v / 1e6
                );
            }
            let _ = writeln!(out, "{name}_count{{shard=\"{}\"}} {}", s.shard, p.count);
        }
        let max = format!("{base}_max_seconds");
        header(
            out,
            &max,
            "gauge",
            "Largest value in the engine's current window.",
        );
        for s in &stats.shards {
            let _ = writeln!(out, "{max}{{shard=\"{}\"}} {}", s.shard, pick(s).max / 1e6);
        }
    }
}

/// One full scrape: engine metrics (or `earshot_engine_up 0`) then RPC metrics.
pub async fn scrape(engine: &dyn EngineApi, rpc: &RpcMetrics) -> String {
    let mut out = String::with_capacity(16 * 1024);
    match tokio::time::timeout(ENGINE_STATS_TIMEOUT, engine.call(Request::Stats)).await {
        Ok(Ok(Response::Stats(stats))) => render_engine(&stats, &mut out),
        other => {
            tracing::debug!(?other, "engine stats unavailable for the scrape");
            let _ = writeln!(
                out,
                "# HELP earshot_engine_up 1 when the engine answered this scrape.\n\
                 # TYPE earshot_engine_up gauge\nearshot_engine_up 0"
            );
        }
    }
    rpc.render(&mut out);
    rpc.sidecar.render(&mut out);
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    engine: Arc<dyn EngineApi>,
    rpc: Arc<RpcMetrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            _ = &mut shutdown => return,
            conn = listener.accept() => conn,
        };
        match conn {
            Ok((stream, _)) => {
                let engine = Arc::clone(&engine);
                let rpc = Arc::clone(&rpc);
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(stream, &*engine, &rpc).await {
                        tracing::debug!(error = %e, "metrics connection");
                    }
                });
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head and answers it.
async fn handle_connection(
    mut stream: TcpStream,
    engine: &dyn EngineApi,
    rpc: &RpcMetrics,
) -> std::io::Result<()> {
    let mut head = [0u8; 8192];
    let mut len = 0;
    let read = async {
        while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            if len == head.len() {
                return Err(std::io::Error::other("request head over 8 KiB"));
            }
            let n = stream.read(&mut head[len..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            len += n;
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let request_line = head[..len]
        .split(|&b| b == b'\r')
        .next()
        .unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            scrape(engine, rpc).await,
        ),
        (b"GET", b"/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "earshot metrics: GET /metrics\n".to_owned(),
        ),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Tower layer recording every gRPC request into [`RpcMetrics`].
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<RpcMetrics>,
}

impl RpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<RpcMetrics>) -> RpcMetricsLayer {
        RpcMetricsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> RpcMetricsService<S> {
        RpcMetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service made by [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

type BoxFut<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFut<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let metrics = Arc::clone(&self.metrics);
        // tokio's clock, not std's: RPC latency is an observation, not a rules input,
        // and tokio's clock can be paused in tests.
        let started = tokio::time::Instant::now();
        let fut = self.inner.call(request);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                // Errors a handler returns are "trailers-only" responses: the status is
                // in the headers. No grpc-status header means the call started fine.
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes())),
                Err(_) => tonic::Code::Internal,
            };
            metrics.handle_request(&path, code, started.elapsed());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_flag_parses_off_and_addresses() {
        assert_eq!("off".parse::<MetricsAddr>().unwrap(), MetricsAddr::Off);
        let a: MetricsAddr = DEFAULT_METRICS_ADDR.parse().unwrap();
        assert!(a.addr().unwrap().ip().is_loopback());
        assert!("nonsense".parse::<MetricsAddr>().is_err());
    }

    #[test]
    fn rpc_histogram_is_cumulative_and_counts_codes() {
        let m = RpcMetrics::default();
        m.handle_request(
            "/earshot.v1.Interactions/Hold",
            tonic::Code::Ok,
            Duration::from_micros(100),
        );
        m.handle_request(
            "/earshot.v1.Interactions/Hold",
            tonic::Code::NotFound,
            Duration::from_millis(30),
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "earshot_rpc_requests_total{service=\"earshot.v1.Interactions\",method=\"Hold\",code=\"NOT_FOUND\"} 1"
        ));
        assert!(out.contains("method=\"Hold\",le=\"0.00025\"} 1"));
        assert!(out.contains("method=\"Hold\",le=\"0.05\"} 2"));
        assert!(out.contains("method=\"Hold\",le=\"+Inf\"} 2"));
        assert!(out.contains("earshot_rpc_duration_seconds_count{service=\"earshot.v1.Interactions\",method=\"Hold\"} 2"));
    }

    #[test]
    fn random_paths_cannot_grow_the_method_table_without_bound() {
        let m = RpcMetrics::default();
        for i in 0..(MAX_TRACKED_METHODS + 50) {
            m.handle_request(
                &format!("/x.S/M{i}"),
                tonic::Code::Unimplemented,
                Duration::ZERO,
            );
        }
        let methods = m.methods.lock().unwrap();
        assert_eq!(
            methods.len(),
            MAX_TRACKED_METHODS + 1,
            "tracked plus one 'other'"
        );
        let other = &methods[&("other".to_owned(), "other".to_owned())];
        assert_eq!(other.count, 50);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
