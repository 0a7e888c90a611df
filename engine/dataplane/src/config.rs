//! Engine configuration: a TOML file and command-line flags, with documented defaults.
//!
//! Every capacity is fixed here and allocated at start. [`EngineConfig::validate`] turns
//! every inconsistency into an error that names the field.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which I/O backend the shards use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The best that works on this host: io_uring, else sockets.
    #[default]
    Auto,
    /// io_uring with multishot receive and provided buffers.
    IoUring,
    /// recvmmsg/sendmmsg batches over epoll (works where io_uring is blocked).
    Socket,
    /// AF_XDP on `interface`, with the XDP program from `xdp-programs/`.
    AfXdp,
    /// In-memory queues (tests and compute benchmarks only).
    Memory,
}

/// The engine's configuration. Every field has a default; a file may set any subset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Number of shards (data-plane threads). Default 1: a shard per core is the design,
    /// but the default must also run on a laptop or a 2-core CI box next to its clients.
    pub shards: usize,
    /// Pin shard i to `cores[i]` (or to core i when empty). Default true.
    pub pin: bool,
    /// Explicit cores for the shards; empty means 0, 1, 2, ...
    pub cores: Vec<usize>,
    /// First local port of shard 0 (even). Shard i's range starts at
    /// `port_base + i * ports_per_shard`. Default 10000: below Linux's default
    /// ephemeral range (32768-60999), where other processes' outgoing sockets would
    /// take ports (docs/operations.md shows `ip_local_reserved_ports` for ranges that
    /// must overlap it).
    pub port_base: u16,
    /// Ports per shard (even). Default 20000: 20,000 rtcp-mux legs or 10,000 legs with
    /// port pairs on one shard. For one NIC flow-steering rule per shard (destination
    /// port and mask), choose a power of two and a `port_base` aligned to it
    /// (docs/tuning.md).
    pub ports_per_shard: u32,
    /// In a cluster: this node allocates new legs from slice `port_slice` of
    /// `port_slices` of every shard's range (port pairs `i` with `i % port_slices ==
    /// port_slice`), so that legs taken over from a failed node keep their ports here
    /// (docs/cluster.md). Default 0 of 1: the whole range.
    pub port_slice: u16,
    /// How many slices the range is cut into (the cluster's node count, or more).
    pub port_slices: u16,
    /// Local IPv4 address to bind legs on. Default 127.0.0.1 (loopback: safe by default).
    pub bind_v4: Option<Ipv4Addr>,
    /// Local IPv6 address to bind legs on. Default none (IPv6 legs refused).
    pub bind_v6: Option<Ipv6Addr>,
    /// I/O backend. Default auto.
    pub backend: BackendKind,
    /// When the chosen backend cannot start, fall back (af_xdp -> io_uring -> socket)
    /// after one log line instead of failing. Default true.
    pub fallback: bool,
    /// Network interface for AF_XDP.
    pub interface: Option<String>,
    /// AF_XDP: the NIC queue of each shard (shard i uses `xdp_queues[i]`); empty means
    /// queue i for shard i. Steer each shard's port range to its queue (docs/tuning.md).
    pub xdp_queues: Vec<u32>,
    /// AF_XDP: UMEM frames per shard (each 4 KiB). Default: the backend's 2048 (8 MiB).
    pub xdp_umem_frames: Option<u32>,
    /// AF_XDP: "auto" (native if the driver supports it, else generic), "native" or
    /// "generic". Default auto.
    pub xdp_attach_mode: String,
    /// Legs per shard. Default 32768 (10,000 three-party sessions with headroom).
    pub max_legs_per_shard: u32,
    /// Sessions per shard. Default 12000.
    pub max_sessions_per_shard: u32,
    /// Minimum jitter-buffer depth in ms. Default 20: one 20 ms frame of slack.
    pub jitter_min_ms: u32,
    /// Maximum jitter-buffer depth in ms. Default 200: beyond that, talk-over suffers.
    pub jitter_max_ms: u32,
    /// Seconds without media before a leg raises a media timeout. Default 30.
    pub media_timeout_s: u64,
    /// A tick more than this late is counted late. Default 2000 us.
    pub late_tick_threshold_us: u64,
    /// Commands applied per loop iteration at most. Default 64: commands never starve
    /// packets.
    pub commands_per_iteration: usize,
    /// Datagrams per receive batch. Default 64.
    pub recv_batch: usize,
    /// Capacity of each shard's command queue. Default 1024.
    pub command_queue: usize,
    /// Seed of the RNGs that draw SSRCs and initial sequence numbers. Default: drawn
    /// from the OS at start (0 means draw).
    pub seed: u64,
    /// Unix socket of the programming API (earshot-engine only). Default
    /// `earshot-engine.sock` in the working directory.
    pub socket: PathBuf,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: 1,
            pin: true,
            cores: Vec::new(),
            port_base: 10_000,
            ports_per_shard: 20_000,
            port_slice: 0,
            port_slices: 1,
            bind_v4: Some(Ipv4Addr::LOCALHOST),
            bind_v6: None,
            backend: BackendKind::Auto,
            fallback: true,
            interface: None,
            xdp_queues: Vec::new(),
            xdp_umem_frames: None,
            xdp_attach_mode: "auto".into(),
            max_legs_per_shard: 32768,
            max_sessions_per_shard: 12000,
            jitter_min_ms: 20,
            jitter_max_ms: 200,
            media_timeout_s: 30,
            late_tick_threshold_us: 2000,
            commands_per_iteration: 64,
            recv_batch: 64,
            command_queue: 1024,
            seed: 0,
            socket: PathBuf::from("earshot-engine.sock"),
        }
    }
}

/// A configuration error, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("config field `{field}`: {message}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl EngineConfig {
    /// Reads a TOML file; unknown fields are errors.
    pub fn from_toml(text: &str) -> Result<EngineConfig, ConfigError> {
        let cfg: EngineConfig = toml::from_str(text).map_err(|e| ConfigError {
            field: "file",
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every relationship between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, message: String| Err(ConfigError { field, message });
        if self.shards == 0 || self.shards > 256 {
            return err("shards", format!("{} is not in 1..=256", self.shards));
        }
        if !self.cores.is_empty() && self.cores.len() < self.shards {
            return err(
                "cores",
                format!(
                    "{} cores listed for {} shards",
                    self.cores.len(),
                    self.shards
                ),
            );
        }
        if self.port_slices == 0 || self.port_slice >= self.port_slices {
            return err(
                "port_slice",
                format!(
                    "slice {} of {} does not exist (0 <= port_slice < port_slices)",
                    self.port_slice, self.port_slices
                ),
            );
        }
        if !self.ports_per_shard.is_multiple_of(2) || self.ports_per_shard < 4 {
            return err(
                "ports_per_shard",
                format!("{} is not an even number >= 4", self.ports_per_shard),
            );
        }
        if !self.port_base.is_multiple_of(2) {
            return err(
                "port_base",
                format!("{} is odd: RTP ports are even", self.port_base),
            );
        }
        let end = u32::from(self.port_base) + self.ports_per_shard * self.shards as u32;
        if end > 65_536 || self.port_base < 1024 {
            return err(
                "port_base",
                format!("ranges {}..{end} leave 1024..=65535", self.port_base),
            );
        }
        if self.bind_v4.is_none() && self.bind_v6.is_none() {
            return err(
                "bind_v4",
                "at least one of bind_v4 and bind_v6 is needed".into(),
            );
        }
        if self.jitter_min_ms == 0
            || self.jitter_min_ms > self.jitter_max_ms
            || self.jitter_max_ms > 1000
        {
            return err(
                "jitter_min_ms",
                format!(
                    "need 0 < min {} <= max {} <= 1000",
                    self.jitter_min_ms, self.jitter_max_ms
                ),
            );
        }
        if self.max_legs_per_shard == 0 || self.max_sessions_per_shard == 0 {
            return err("max_legs_per_shard", "capacities must be positive".into());
        }
        if self.backend == BackendKind::AfXdp && self.interface.is_none() {
            return err(
                "interface",
                "backend = \"af_xdp\" needs an interface".into(),
            );
        }
        if !["auto", "native", "generic"].contains(&self.xdp_attach_mode.as_str()) {
            return err(
                "xdp_attach_mode",
                format!("{:?} is not auto, native or generic", self.xdp_attach_mode),
            );
        }
        if !self.xdp_queues.is_empty() && self.xdp_queues.len() < self.shards {
            return err(
                "xdp_queues",
                format!(
                    "{} queues listed for {} shards",
                    self.xdp_queues.len(),
                    self.shards
                ),
            );
        }
        if self.recv_batch == 0 || self.commands_per_iteration == 0 || self.command_queue == 0 {
            return err(
                "recv_batch",
                "batch sizes and queue lengths must be positive".into(),
            );
        }
        Ok(())
    }

    /// First port of shard `i`.
    pub fn shard_port_first(&self, i: usize) -> u16 {
        (u32::from(self.port_base) + self.ports_per_shard * i as u32) as u16
    }

    /// Ports in shard i's range, capped so the last range ends at 65535.
    pub fn shard_port_count(&self, i: usize) -> u16 {
        let first = u32::from(self.shard_port_first(i));
        (self.ports_per_shard.min(65_536 - first) & !1).min(65_534) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ranges_are_aligned() {
        let c = EngineConfig::default();
        c.validate().unwrap();
        assert_eq!(c.shard_port_first(0), 10_000);
        assert!(
            c.shard_port_first(0) as u32 + c.shard_port_count(0) as u32 <= 32_768,
            "the default range stays below the kernel's ephemeral range"
        );
        let c2 = EngineConfig {
            shards: 2,
            ..EngineConfig::default()
        };
        c2.validate().unwrap();
        assert_eq!(c2.shard_port_first(1), 30_000);
        assert_eq!(c2.shard_port_count(1), 20_000);
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let e = EngineConfig::from_toml("ports_per_shard = 1001").unwrap_err();
        assert_eq!(e.field, "ports_per_shard");
        let e = EngineConfig::from_toml("port_base = 20001").unwrap_err();
        assert_eq!(e.field, "port_base");
        let e = EngineConfig::from_toml("shards = 5").unwrap_err();
        assert_eq!(e.field, "port_base");
        let e = EngineConfig::from_toml("nonsense = 1").unwrap_err();
        assert_eq!(e.field, "file");
        let e = EngineConfig::from_toml("backend = \"af_xdp\"").unwrap_err();
        assert_eq!(e.field, "interface");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_documented_example_configuration_is_valid() {
        let text = include_str!("../../../docs/earshot-engine.example.toml");
        let cfg = EngineConfig::from_toml(text).unwrap();
        assert_eq!(cfg.shards, 2);
        assert_eq!(cfg.cores, vec![0, 1]);
    }
}
