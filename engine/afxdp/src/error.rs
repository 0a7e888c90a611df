//! One error type for the loader, the sockets and the neighbour table. Each variant names
//! the requirement that failed, so an operator reading the message knows what to fix.

/// Why setting up XDP or AF_XDP failed.
#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    /// The interface does not exist (in this network namespace).
    #[error("interface {ifname:?} not found (check `ip link` in the engine's network namespace)")]
    InterfaceNotFound {
        /// The name asked for.
        ifname: String,
    },
    /// The kernel refused for lack of privilege.
    #[error(
        "{op}: permission denied; needs {needs} (run as root or grant the capabilities, see docs/tuning.md)"
    )]
    NotPermitted {
        /// What was being done.
        op: &'static str,
        /// The capabilities that operation needs.
        needs: &'static str,
    },
    /// Registering the UMEM (pinning its pages) failed for lack of locked memory.
    #[error(
        "UMEM of {bytes} bytes could not be pinned: RLIMIT_MEMLOCK too low and CAP_IPC_LOCK not held (raise `ulimit -l` or grant CAP_IPC_LOCK)"
    )]
    Memlock {
        /// Size of the UMEM area.
        bytes: usize,
    },
    /// The embedded XDP object did not load (parse, BTF or verifier).
    #[error("loading the XDP program failed: {0}")]
    ProgramLoad(String),
    /// Attaching to the interface failed in every mode tried.
    #[error("attaching XDP to {ifname:?} failed: {detail}")]
    Attach {
        /// The interface.
        ifname: String,
        /// The error per mode tried.
        detail: String,
    },
    /// A BPF map operation failed.
    #[error("BPF map {map}: {detail}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What failed.
        detail: String,
    },
    /// The filter asked for more than the program's maps hold.
    #[error("filter too large: {0}")]
    FilterTooLarge(&'static str),
    /// The socket configuration is invalid (sizes not powers of two, too small, ...).
    #[error("invalid XSK configuration: {0}")]
    InvalidConfig(&'static str),
    /// A socket/ring system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// AF_XDP / XDP are Linux features.
    #[error("AF_XDP is only available on Linux")]
    Unsupported,
}

impl AfXdpError {
    /// Maps an errno from `op` to the most specific variant.
    #[cfg(target_os = "linux")]
    pub(crate) fn from_errno(op: &'static str, errno: i32, needs: &'static str) -> Self {
        if errno == libc::EPERM || errno == libc::EACCES {
            AfXdpError::NotPermitted { op, needs }
        } else {
            AfXdpError::Os {
                op,
                source: std::io::Error::from_raw_os_error(errno),
            }
        }
    }
}
