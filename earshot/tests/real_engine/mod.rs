//! The real engine in-process for the system tests: `earshot-engine` on its in-memory
//! backend behind a switch that can make it unavailable or restart it, so the refusals
//! the sidecar meets are the engine's own, not a double's. (The control crate's own
//! tests use only the fake engine of `control/server/tests/support`.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use earshot_engine::backend::memory::MemoryBackend;
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine::engine::{Engine, EngineHandle};
use earshot_engine_api::{
    BoxFuture, EngineApi, EngineError, EngineEvent, EngineSnapshot, Request, Response,
};

/// The real engine (`earshot-engine`) in-process on the in-memory backend, behind a
/// switch that can make it unavailable or replace it by a fresh engine (a restart):
/// the refusals the sidecar meets are the engine's own, not a double's.
pub struct RealEngine {
    current: Mutex<Arc<EngineHandle>>,
    engines: Mutex<Vec<Engine>>,
    down: AtomicBool,
    epoch: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RealEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RealEngine")
    }
}

/// An engine configuration for tests: memory backend, IPv4 only, small tables.
pub fn mem_config(shards: usize, port_base: u16, ports_per_shard: u32) -> EngineConfig {
    EngineConfig {
        backend: BackendKind::Memory,
        pin: false,
        seed: 7,
        shards,
        port_base,
        ports_per_shard,
        max_legs_per_shard: 256,
        max_sessions_per_shard: 64,
        ..EngineConfig::default()
    }
}

fn start_engine(cfg: &EngineConfig) -> Engine {
    Engine::start(cfg, |_| {
        let (b, _net) = MemoryBackend::new(64, true);
        Ok(Box::new(b))
    })
    .expect("memory engine starts")
}

impl RealEngine {
    pub fn start(cfg: &EngineConfig) -> Arc<RealEngine> {
        let engine = start_engine(cfg);
        Arc::new(RealEngine {
            current: Mutex::new(engine.handle()),
            engines: Mutex::new(vec![engine]),
            down: AtomicBool::new(false),
            epoch: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The engine process "restarts": a fresh engine with `cfg` replaces the old one,
    /// which stops (its legs are gone).
    pub fn restart(&self, cfg: &EngineConfig) {
        let engine = start_engine(cfg);
        *self.current.lock().unwrap() = engine.handle();
        let old: Vec<Engine> = std::mem::take(&mut *self.engines.lock().unwrap());
        self.engines.lock().unwrap().push(engine);
        self.epoch.fetch_add(1, Ordering::Relaxed);
        for e in old {
            e.shutdown();
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    pub fn handle(&self) -> Arc<EngineHandle> {
        self.current.lock().unwrap().clone()
    }

    /// Calls the engine directly (as another client would).
    pub fn request(&self, r: Request) -> Result<Response, EngineError> {
        earshot_engine::server::block_on(self.handle().request(r))
    }

    pub fn snapshot(&self) -> EngineSnapshot {
        match self.request(Request::Snapshot) {
            Ok(Response::Snapshot(s)) => s,
            other => panic!("snapshot: {other:?}"),
        }
    }

    /// The local port of `(session, leg_key)`'s leg, if the engine has it.
    pub fn port_of(&self, session: &str, leg_key: &str) -> Option<u16> {
        self.snapshot()
            .legs
            .iter()
            .find(|l| l.session == session && l.leg_key == leg_key)
            .map(|l| l.local.port())
    }
}

impl EngineApi for RealEngine {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Response, EngineError>> {
        if self.down.load(Ordering::Relaxed) {
            return Box::pin(async { Err(EngineError::Unavailable("test engine down".into())) });
        }
        let handle = self.handle();
        Box::pin(async move { handle.request(request).await })
    }

    fn next_event(&self) -> BoxFuture<'_, Option<EngineEvent>> {
        // Events are not needed by the tests that use this engine; never resolves.
        Box::pin(std::future::pending())
    }
}
