//! Network namespaces and veth pairs as guards, for tests and benchmarks that need a
//! real link (AF_XDP, XDP programs, kernel traffic beside the engine).
//!
//! [`Netns`] creates a named namespace (`ip netns add`) and deletes it when dropped,
//! also while a failing test unwinds; [`VethPair`] is two namespaces joined by a veth
//! pair, addressed and up (deleting a namespace deletes its veth end, and with it the
//! pair). Code runs inside a namespace on a thread of its own ([`Netns::run`],
//! [`Netns::spawn`]) or moves the calling thread in ([`Netns::enter`]): `setns(2)`
//! affects only the calling thread, and a socket keeps the namespace it was created in
//! whichever thread uses it later.
//!
//! Names carry the process id and a tag, so parallel tests and a rerun after a crash do
//! not collide. Everything here needs root (CAP_NET_ADMIN, and CAP_SYS_ADMIN for
//! `setns`); tests call [`require_root`] first, which prints why they skip.
#![allow(unsafe_code)] // setns(2): the one system call of this module

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Why namespace tests cannot run here, if they cannot: not root, or no `ip` binary.
pub fn unavailable_reason() -> Option<String> {
    if !is_root() {
        return Some("needs root (CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs the `ip` binary (iproute2)".into());
    }
    None
}

/// True when namespace tests can run; otherwise prints `SKIPPED: <test>: <why>` and
/// returns false, so a test starts with `if !require_root("name") { return; }`.
pub fn require_root(test_name: &str) -> bool {
    match unavailable_reason() {
        None => true,
        Some(why) => {
            println!("SKIPPED: {test_name}: {why}");
            false
        }
    }
}

/// True when `tool` can be run (it answers `-V`); otherwise prints `SKIPPED: <test>:
/// needs <tool>` and returns false.
pub fn require_tool(test_name: &str, tool: &str) -> bool {
    if Command::new(tool).arg("-V").output().is_ok() {
        true
    } else {
        println!("SKIPPED: {test_name}: needs the `{tool}` binary");
        false
    }
}

/// Runs `ip args...`; returns its standard output, or an error naming the command and
/// what `ip` said.
pub fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `<prefix>-<pid>-<tag>` with its loopback up.
    pub fn new(prefix: &str, tag: &str) -> io::Result<Netns> {
        let name = format!("{prefix}-{}-{tag}", std::process::id());
        // A namespace left behind by a crashed run of the same pid would make `add`
        // fail; pids are reused, so clear it first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> args...`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread (only) into the namespace. Threads it spawns afterwards
    /// start there too.
    pub fn enter(&self) -> io::Result<()> {
        enter(&self.name)
    }

    /// Runs `f` inside the namespace on a scoped thread and returns its result; a panic
    /// in `f` is re-raised here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let name = self.name.as_str();
        std::thread::scope(|s| {
            let t = s.spawn(move || {
                enter(name).unwrap_or_else(|e| panic!("entering namespace {name}: {e}"));
                f()
            });
            match t.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs `f` inside the namespace on a new thread.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter(&name).unwrap_or_else(|e| panic!("entering namespace {name}: {e}"));
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread (only) into the namespace named `name`.
pub fn enter(name: &str) -> io::Result<()> {
    let file = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: setns(2) with a namespace file descriptor that stays open for the call; it
    // changes only the calling thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("setns {name}: {e}")))
    }
}

/// How to build a [`VethPair`]: one end in namespace A, the other in namespace B.
#[derive(Clone, Debug)]
pub struct VethConfig {
    /// Namespace name prefix of side A (the engine's side, usually).
    pub prefix_a: &'static str,
    /// Namespace name prefix of side B (the peers' side).
    pub prefix_b: &'static str,
    /// Device name of side A's end.
    pub dev_a: &'static str,
    /// Device name of side B's end.
    pub dev_b: &'static str,
    /// IPv4 addresses of side A (/24 each; the first is the main one).
    pub v4_a: Vec<Ipv4Addr>,
    /// IPv4 address of side B (/24).
    pub v4_b: Ipv4Addr,
    /// IPv6 addresses (/64, no duplicate address detection) of A and B, if any.
    pub v6: Option<(Ipv6Addr, Ipv6Addr)>,
    /// RX and TX queues of each end (the kernel's flow hash spreads flows over them).
    pub queues: u32,
}

impl VethConfig {
    /// A pair with A at `10.<net>.0.1` and B at `10.<net>.0.2` (IPv4 only), one queue,
    /// devices `ve` (A) and `vp` (B).
    pub fn v4(net: u8) -> VethConfig {
        VethConfig {
            prefix_a: "ekA",
            prefix_b: "ekB",
            dev_a: "ve",
            dev_b: "vp",
            v4_a: vec![Ipv4Addr::new(10, net, 0, 1)],
            v4_b: Ipv4Addr::new(10, net, 0, 2),
            v6: None,
            queues: 1,
        }
    }

    /// As [`VethConfig::v4`], with IPv6 `fd<net>::1` and `fd<net>::2` too.
    pub fn dual(net: u8) -> VethConfig {
        let v6 = |host: u16| Ipv6Addr::new(0xfd00 | u16::from(net), 0, 0, 0, 0, 0, 0, host);
        VethConfig {
            v6: Some((v6(1), v6(2))),
            ..VethConfig::v4(net)
        }
    }
}

/// Two namespaces joined by a veth pair, addressed and up; both deleted on drop.
#[derive(Debug)]
pub struct VethPair {
    /// Side A's namespace.
    pub a: Netns,
    /// Side B's namespace.
    pub b: Netns,
    /// How it was built.
    pub cfg: VethConfig,
}

impl VethPair {
    /// Builds the pair; `tag` makes the namespace names unique to the test.
    pub fn new(tag: &str, cfg: VethConfig) -> io::Result<VethPair> {
        let a = Netns::new(cfg.prefix_a, tag)?;
        let b = Netns::new(cfg.prefix_b, tag)?;
        let q = cfg.queues.max(1).to_string();
        a.ip(&[
            "link",
            "add",
            cfg.dev_a,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            cfg.dev_b,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            b.name(),
        ])?;
        for v4 in &cfg.v4_a {
            a.ip(&["addr", "add", &format!("{v4}/24"), "dev", cfg.dev_a])?;
        }
        b.ip(&["addr", "add", &format!("{}/24", cfg.v4_b), "dev", cfg.dev_b])?;
        if let Some((v6_a, v6_b)) = cfg.v6 {
            for (ns, dev, v6) in [(&a, cfg.dev_a, v6_a), (&b, cfg.dev_b, v6_b)] {
                ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            }
        }
        a.ip(&["link", "set", cfg.dev_a, "up"])?;
        b.ip(&["link", "set", cfg.dev_b, "up"])?;
        Ok(VethPair { a, b, cfg })
    }

    /// Side A's main IPv4 address.
    pub fn v4_a(&self) -> Ipv4Addr {
        self.cfg.v4_a[0]
    }

    /// Side B's IPv4 address.
    pub fn v4_b(&self) -> Ipv4Addr {
        self.cfg.v4_b
    }

    /// Side A's IPv6 address when `v6` (if configured), else its main IPv4 address.
    pub fn addr_a(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.cfg.v6.map(|(a, _)| IpAddr::V6(a))
        } else {
            Some(IpAddr::V4(self.v4_a()))
        }
    }

    /// Side B's IPv6 address when `v6` (if configured), else its IPv4 address.
    pub fn addr_b(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.cfg.v6.map(|(_, b)| IpAddr::V6(b))
        } else {
            Some(IpAddr::V4(self.v4_b()))
        }
    }

    /// The MAC address of side A's end.
    pub fn mac_a(&self) -> io::Result<[u8; 6]> {
        mac(&self.a, self.cfg.dev_a)
    }

    /// The MAC address of side B's end.
    pub fn mac_b(&self) -> io::Result<[u8; 6]> {
        mac(&self.b, self.cfg.dev_b)
    }

    /// Whether an XDP program is attached to side A's end.
    pub fn xdp_attached_a(&self) -> io::Result<bool> {
        Ok(self
            .a
            .ip(&["link", "show", self.cfg.dev_a])?
            .contains("xdp"))
    }
}

fn mac(ns: &Netns, dev: &str) -> io::Result<[u8; 6]> {
    let text = ns.ip(&["link", "show", dev])?;
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| io::Error::other(format!("no link/ether for {dev}: {text}")))?;
    let mut bytes = [0u8; 6];
    let mut parts = hex.split(':');
    for b in &mut bytes {
        let part = parts
            .next()
            .ok_or_else(|| io::Error::other(format!("short MAC {hex}")))?;
        *b = u8::from_str_radix(part, 16)
            .map_err(|e| io::Error::other(format!("MAC {hex}: {e}")))?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_veth_pair_carries_udp_between_its_namespaces_and_vanishes_on_drop() {
        if !require_root("a_veth_pair_carries_udp_between_its_namespaces_and_vanishes_on_drop") {
            return;
        }
        let pair = VethPair::new("kit", VethConfig::dual(81)).expect("veth pair");
        let names = (pair.a.name().to_string(), pair.b.name().to_string());
        for v6 in [false, true] {
            let (a, b) = (pair.addr_a(v6).unwrap(), pair.addr_b(v6).unwrap());
            let rx = pair.a.run(|| UdpSocket::bind((a, 0)).expect("bind in A"));
            let to = rx.local_addr().unwrap();
            rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            pair.b.run(|| {
                let s = UdpSocket::bind((b, 0)).expect("bind in B");
                s.send_to(b"across", to).expect("send across the veth");
            });
            let mut buf = [0u8; 16];
            let (n, from) = rx.recv_from(&mut buf).expect("datagram crossed the pair");
            assert_eq!((&buf[..n], from.ip()), (&b"across"[..], b));
        }
        assert_ne!(pair.mac_a().unwrap(), pair.mac_b().unwrap());
        assert!(!pair.xdp_attached_a().unwrap());
        // The calling thread never left its namespace: A's address is not local here.
        assert!(UdpSocket::bind((pair.v4_a(), 0)).is_err());
        // A panic inside `run` reaches the caller, and the guards still clean up.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pair.a.run(|| panic!("inside"));
        }));
        assert!(caught.is_err());
        drop(pair);
        let list = ip(&["netns", "list"]).unwrap();
        assert!(
            !list.contains(&names.0) && !list.contains(&names.1),
            "namespaces deleted on drop: {list}"
        );
    }
}
