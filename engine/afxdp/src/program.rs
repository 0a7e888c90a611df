//! Loads `xdp-programs/earshot_xdp.o` (embedded at build time), fills its maps from an
//! [`XdpFilter`], attaches it through a bpf_link and reads its counters.
//!
//! The link belongs to this process: when the [`XdpProgram`] is dropped, or the process
//! dies in any way (SIGKILL included), the kernel detaches the program and the interface's
//! traffic goes back to the kernel stack. Nothing is pinned in bpffs, so a crashed engine
//! leaves nothing behind that could keep swallowing traffic.

use core::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp, XdpFlags};
use aya::{Ebpf, include_bytes_aligned};

use crate::AfXdpError;

/// The compiled XDP program. `xdp-programs/check.sh` proves it is what the C source builds to.
static XDP_OBJECT: &[u8] = include_bytes_aligned!("../../../xdp-programs/earshot_xdp.o");

const PROGRAM_NAME: &str = "earshot_xdp";
const MAP_CONFIG: &str = "earshot_config";
const MAP_ADDRS: &str = "earshot_addrs";
const MAP_XSKS: &str = "earshot_xsks";
const MAP_STATS: &str = "earshot_stats";

/// Mirrors `EARSHOT_MAX_PORT_RANGES` in earshot_xdp.c.
pub const MAX_PORT_RANGES: usize = 16;
/// Mirrors `EARSHOT_MAX_ADDRS` in earshot_xdp.c.
pub const MAX_ADDRS: usize = 64;
/// Mirrors `EARSHOT_CFG_ANY_ADDR`.
const CFG_ANY_ADDR: u32 = 1;
/// `struct earshot_config`: flags u32, range_count u32, 16 x {first u16, last u16}.
const CONFIG_LEN: usize = 8 + 4 * MAX_PORT_RANGES;
/// Number of counters, `EARSHOT_STAT_COUNT`.
const STAT_COUNT: u32 = 9;

const NEEDS_BPF: &str = "CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels before 5.8)";

/// Which UDP traffic the program steers to the sockets.
#[derive(Debug, Clone, Copy)]
pub struct XdpFilter<'a> {
    /// Inclusive destination port ranges, at most [`MAX_PORT_RANGES`].
    pub port_ranges: &'a [(u16, u16)],
    /// Local destination addresses, at most [`MAX_ADDRS`]. Empty means "any destination
    /// address", for an engine bound to the wildcard address on a host that does not route.
    pub addrs: &'a [IpAddr],
}

/// How to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode if the driver supports it, else generic.
    Auto,
    /// Driver mode only: the program runs before an skb exists (fast path).
    Native,
    /// Generic (SKB) mode only: works on any device, costs an skb per packet.
    Generic,
}

/// The mode the program ended up attached in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// XDP_FLAGS_DRV_MODE.
    Native,
    /// XDP_FLAGS_SKB_MODE.
    Generic,
}

/// The program's per-CPU counters, summed over CPUs. Every frame the program sees
/// increments exactly one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Redirected to an AF_XDP socket.
    pub redirected: u64,
    /// Passed: not IPv4/IPv6 (ARP, LLDP, ...).
    pub pass_not_ip: u64,
    /// Passed: IP but not UDP (ICMP, TCP, IPv6 extension headers).
    pub pass_not_udp: u64,
    /// Passed: IPv4 fragment.
    pub pass_fragment: u64,
    /// Passed: UDP to a port outside every range.
    pub pass_not_our_port: u64,
    /// Passed: UDP in range to an address that is not ours.
    pub pass_not_our_addr: u64,
    /// Passed: a header ran past the end of the frame.
    pub pass_truncated: u64,
    /// Passed: matched, but no socket registered for the receiving queue.
    pub pass_no_xsk: u64,
    /// Passed: the config map could not be read (never expected).
    pub pass_no_config: u64,
}

impl XdpCounters {
    /// All frames handed to the kernel, whatever the reason.
    pub fn passed(&self) -> u64 {
        self.pass_not_ip
            + self.pass_not_udp
            + self.pass_fragment
            + self.pass_not_our_port
            + self.pass_not_our_addr
            + self.pass_truncated
            + self.pass_no_xsk
            + self.pass_no_config
    }
}

/// The earshot XDP program, loaded and attached to one interface. Dropping it detaches.
pub struct XdpProgram {
    ifname: String,
    mode: AttachedMode,
    config: Mutex<Array<MapData, [u8; CONFIG_LEN]>>,
    addrs: Mutex<HashMap<MapData, [u8; 16], u8>>,
    xsks: Mutex<XskMap<MapData>>,
    stats: PerCpuArray<MapData, u64>,
    // Owns the program and its link: dropping it detaches (declared last so the maps,
    // which hold their own fds, are released first; order does not matter to the kernel).
    _ebpf: Ebpf,
}

impl core::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn map_err(map: &'static str, e: impl core::fmt::Display) -> AfXdpError {
    AfXdpError::Map {
        map,
        detail: e.to_string(),
    }
}

fn program_error(ifname: &str, mode: &str, e: ProgramError) -> Result<AfXdpError, String> {
    match e {
        ProgramError::UnknownInterface { .. } => Ok(AfXdpError::InterfaceNotFound {
            ifname: ifname.to_string(),
        }),
        ProgramError::SyscallError(sys)
            if matches!(
                sys.io_error.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EACCES)
            ) =>
        {
            Ok(AfXdpError::NotPermitted {
                op: "attaching XDP",
                needs: NEEDS_BPF,
            })
        }
        other => Err(format!("{mode}: {other}")),
    }
}

/// The map key for an address: IPv6 bytes, IPv4 as `::ffff:a.b.c.d` (as the program builds it).
fn addr_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn encode_config(filter: &XdpFilter<'_>) -> Result<[u8; CONFIG_LEN], AfXdpError> {
    if filter.port_ranges.len() > MAX_PORT_RANGES {
        return Err(AfXdpError::FilterTooLarge("more than 16 port ranges"));
    }
    if filter.addrs.len() > MAX_ADDRS {
        return Err(AfXdpError::FilterTooLarge("more than 64 local addresses"));
    }
    // The program reads the struct in host byte order (it is a map value, not wire data).
    let mut cfg = [0u8; CONFIG_LEN];
    let flags = if filter.addrs.is_empty() {
        CFG_ANY_ADDR
    } else {
        0
    };
    cfg[0..4].copy_from_slice(&flags.to_ne_bytes());
    // len() <= MAX_PORT_RANGES (16) was checked above.
    cfg[4..8].copy_from_slice(&(filter.port_ranges.len() as u32).to_ne_bytes());
    for (i, &(first, last)) in filter.port_ranges.iter().enumerate() {
        if first > last {
            return Err(AfXdpError::FilterTooLarge("a port range has first > last"));
        }
        let at = 8 + 4 * i;
        cfg[at..at + 2].copy_from_slice(&first.to_ne_bytes());
        cfg[at + 2..at + 4].copy_from_slice(&last.to_ne_bytes());
    }
    Ok(cfg)
}

impl XdpProgram {
    /// Loads the program, fills its maps from `filter` and attaches it to `ifname`.
    ///
    /// With [`AttachMode::Auto`] native mode is tried first, then generic; which one
    /// worked is [`XdpProgram::mode`]. Fails with a variant naming the missing requirement
    /// (interface, capability) when it cannot.
    pub fn attach(
        ifname: &str,
        filter: &XdpFilter<'_>,
        mode: AttachMode,
    ) -> Result<XdpProgram, AfXdpError> {
        let config_bytes = encode_config(filter)?;
        let mut ebpf = Ebpf::load(XDP_OBJECT).map_err(|e| match e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                AfXdpError::NotPermitted {
                    op: "creating BPF maps",
                    needs: NEEDS_BPF,
                }
            }
            other => AfXdpError::ProgramLoad(other.to_string()),
        })?;

        // Maps first, so the program never sees an empty config once attached.
        let mut config: Array<MapData, [u8; CONFIG_LEN]> = ebpf
            .take_map(MAP_CONFIG)
            .ok_or_else(|| map_err(MAP_CONFIG, "missing from the object"))?
            .try_into()
            .map_err(|e| map_err(MAP_CONFIG, e))?;
        config
            .set(0, config_bytes, 0)
            .map_err(|e| map_err(MAP_CONFIG, e))?;
        let mut addrs: HashMap<MapData, [u8; 16], u8> = ebpf
            .take_map(MAP_ADDRS)
            .ok_or_else(|| map_err(MAP_ADDRS, "missing from the object"))?
            .try_into()
            .map_err(|e| map_err(MAP_ADDRS, e))?;
        for &addr in filter.addrs {
            addrs
                .insert(addr_key(addr), 1, 0)
                .map_err(|e| map_err(MAP_ADDRS, e))?;
        }
        let xsks: XskMap<MapData> = ebpf
            .take_map(MAP_XSKS)
            .ok_or_else(|| map_err(MAP_XSKS, "missing from the object"))?
            .try_into()
            .map_err(|e| map_err(MAP_XSKS, e))?;
        let stats: PerCpuArray<MapData, u64> = ebpf
            .take_map(MAP_STATS)
            .ok_or_else(|| map_err(MAP_STATS, "missing from the object"))?
            .try_into()
            .map_err(|e| map_err(MAP_STATS, e))?;

        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| AfXdpError::ProgramLoad("program earshot_xdp missing".into()))?
            .try_into()
            .map_err(|e: ProgramError| AfXdpError::ProgramLoad(e.to_string()))?;
        program.load().map_err(|e| match e {
            ProgramError::SyscallError(sys) if sys.io_error.raw_os_error() == Some(libc::EPERM) => {
                AfXdpError::NotPermitted {
                    op: "loading the XDP program",
                    needs: NEEDS_BPF,
                }
            }
            other => AfXdpError::ProgramLoad(other.to_string()),
        })?;

        let attempts: &[(AttachedMode, XdpFlags, &str)] = match mode {
            AttachMode::Auto => &[
                (AttachedMode::Native, XdpFlags::DRV_MODE, "native"),
                (AttachedMode::Generic, XdpFlags::SKB_MODE, "generic"),
            ],
            AttachMode::Native => &[(AttachedMode::Native, XdpFlags::DRV_MODE, "native")],
            AttachMode::Generic => &[(AttachedMode::Generic, XdpFlags::SKB_MODE, "generic")],
        };
        let mut failures = Vec::new();
        let mut attached = None;
        for &(attached_mode, flags, name) in attempts {
            match program.attach(ifname, flags) {
                Ok(_link) => {
                    attached = Some(attached_mode);
                    break;
                }
                Err(e) => match program_error(ifname, name, e) {
                    Ok(fatal) => return Err(fatal),
                    Err(detail) => failures.push(detail),
                },
            }
        }
        let Some(mode) = attached else {
            return Err(AfXdpError::Attach {
                ifname: ifname.to_string(),
                detail: failures.join("; "),
            });
        };
        Ok(XdpProgram {
            ifname: ifname.to_string(),
            mode,
            config: Mutex::new(config),
            addrs: Mutex::new(addrs),
            xsks: Mutex::new(xsks),
            stats,
            _ebpf: ebpf,
        })
    }

    /// The interface the program is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The mode the program was attached in.
    pub fn mode(&self) -> AttachedMode {
        self.mode
    }

    /// Replaces the filter while attached (port ranges and addresses can change at run
    /// time as the engine adds listening addresses). The config is one map value written at
    /// once; a frame racing the update sees either the old or the new ranges for the
    /// ranges it reads.
    pub fn update_filter(&self, filter: &XdpFilter<'_>) -> Result<(), AfXdpError> {
        let config_bytes = encode_config(filter)?;
        {
            let mut addrs = self.addrs.lock().unwrap_or_else(|p| p.into_inner());
            // Add the new addresses before removing the stale ones, so an address that
            // stays never disappears in between.
            for &addr in filter.addrs {
                addrs
                    .insert(addr_key(addr), 1, 0)
                    .map_err(|e| map_err(MAP_ADDRS, e))?;
            }
            let wanted: Vec<[u8; 16]> = filter.addrs.iter().map(|&a| addr_key(a)).collect();
            let stale: Vec<[u8; 16]> = addrs
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !wanted.contains(k))
                .collect();
            for key in stale {
                addrs.remove(&key).map_err(|e| map_err(MAP_ADDRS, e))?;
            }
        }
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(0, config_bytes, 0)
            .map_err(|e| map_err(MAP_CONFIG, e))
    }

    /// Registers an AF_XDP socket for `queue_id` (called by `XskSocket::register`).
    pub(crate) fn register_xsk(&self, queue_id: u32, fd: RawFd) -> Result<(), AfXdpError> {
        struct Fd(RawFd);
        impl AsRawFd for Fd {
            fn as_raw_fd(&self) -> RawFd {
                self.0
            }
        }
        self.xsks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(queue_id, Fd(fd), 0)
            .map_err(|e| map_err(MAP_XSKS, e))
    }

    /// The counters summed over CPUs. A syscall per counter: call it on a stats interval,
    /// not per packet.
    pub fn counters(&self) -> XdpCounters {
        let mut sums = [0u64; STAT_COUNT as usize];
        for (index, sum) in (0..STAT_COUNT).zip(sums.iter_mut()) {
            // A missing value (cannot happen for an array index < max_entries) reads as 0.
            if let Ok(values) = self.stats.get(&index, 0) {
                *sum = values.iter().sum();
            }
        }
        XdpCounters {
            redirected: sums[0],
            pass_not_ip: sums[1],
            pass_not_udp: sums[2],
            pass_fragment: sums[3],
            pass_not_our_port: sums[4],
            pass_not_our_addr: sums[5],
            pass_truncated: sums[6],
            pass_no_xsk: sums[7],
            pass_no_config: sums[8],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_encoding_matches_the_c_struct_layout() {
        let cfg = encode_config(&XdpFilter {
            port_ranges: &[(10000, 10999), (30000, 30001)],
            addrs: &[],
        })
        .unwrap();
        assert_eq!(
            u32::from_ne_bytes(cfg[0..4].try_into().unwrap()),
            CFG_ANY_ADDR
        );
        assert_eq!(u32::from_ne_bytes(cfg[4..8].try_into().unwrap()), 2);
        assert_eq!(u16::from_ne_bytes([cfg[8], cfg[9]]), 10000);
        assert_eq!(u16::from_ne_bytes([cfg[10], cfg[11]]), 10999);
        assert_eq!(u16::from_ne_bytes([cfg[12], cfg[13]]), 30000);
        assert!(cfg[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn oversized_or_inverted_filters_are_refused() {
        let many = [(1u16, 2u16); MAX_PORT_RANGES + 1];
        assert!(matches!(
            encode_config(&XdpFilter {
                port_ranges: &many,
                addrs: &[]
            }),
            Err(AfXdpError::FilterTooLarge(_))
        ));
        assert!(matches!(
            encode_config(&XdpFilter {
                port_ranges: &[(5, 4)],
                addrs: &[]
            }),
            Err(AfXdpError::FilterTooLarge(_))
        ));
    }

    #[test]
    fn ipv4_keys_are_v4_mapped_like_the_program_builds_them() {
        let key = addr_key("10.1.2.3".parse().unwrap());
        assert_eq!(&key[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&key[12..], &[10, 1, 2, 3]);
    }

    #[test]
    fn the_embedded_object_is_the_committed_one() {
        // An ELF for BPF (EM_BPF = 247), so a stray file cannot be embedded by mistake.
        assert_eq!(&XDP_OBJECT[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([XDP_OBJECT[18], XDP_OBJECT[19]]), 247);
    }
}
