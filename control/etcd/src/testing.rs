//! Real etcd members for tests: a 1- or 3-member cluster of Debian's `etcd` binary on
//! loopback ports, in private data directories, killed and removed on drop.
//!
//! Tests call [`EtcdCluster::start`] and print `SKIPPED: ...` when it returns `None`
//! (no `etcd` binary: `apt-get install etcd-server`), so the workspace's tests pass on a
//! machine without etcd and CI, which installs it, runs them for real.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The etcd binary, if installed.
pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// A free loopback port (bound and released: another process could take it before
/// etcd does, which only makes a test fail loudly, never pass wrongly).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// One member.
#[derive(Debug)]
pub struct Member {
    /// Its name (`n0`, `n1`, ...).
    pub name: String,
    /// Client URL (`http://127.0.0.1:PORT`).
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// A running cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, by index.
    pub members: Vec<Member>,
    root: PathBuf,
    initial: String,
    token: String,
}

impl EtcdCluster {
    /// Starts `n` members (1 or 3 make sense) and waits until the cluster answers, or
    /// returns `None` with the reason printed if etcd is not installed.
    pub async fn start(n: usize) -> Option<EtcdCluster> {
        let Some(binary) = etcd_binary() else {
            println!("SKIPPED: no etcd binary (apt-get install etcd-server)");
            return None;
        };
        let unique = format!(
            "earshot-etcd-{}-{:x}",
            std::process::id(),
            std::ptr::addr_of!(binary) as usize ^ free_port() as usize
        );
        let root = std::env::temp_dir().join(&unique);
        let _ = std::fs::create_dir_all(&root);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("n{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                data_dir: root.join(format!("n{i}")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            root,
            initial,
            token: unique,
        };
        for i in 0..n {
            cluster.spawn(i, &binary);
        }
        let client = crate::Etcd::new(&cluster.endpoints()).ok()?;
        for _ in 0..200 {
            if client.range(b"/probe", &[], 0, 0).await.is_ok() {
                return Some(cluster);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("SKIPPED: etcd did not come up within 10 s");
        None
    }

    fn spawn(&mut self, i: usize, binary: &Path) {
        let m = &mut self.members[i];
        let state = if m.data_dir.exists() {
            "existing"
        } else {
            "new"
        };
        let log = std::fs::File::create(self.root.join(format!("{}.log", m.name))).ok();
        let mut cmd = Command::new(binary);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            // What earshot's commits need (docs/cluster.md): reconciliation can carry
            // thousands of leg records in one transaction.
            .args(["--max-txn-ops", "10000"])
            .args(["--max-request-bytes", "16777216"])
            // Fast elections: chaos tests measure failover in seconds.
            .args(["--heartbeat-interval", "50"])
            .args(["--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match log {
            Some(f) => cmd.stderr(f),
            None => cmd.stderr(Stdio::null()),
        };
        m.child = cmd.spawn().ok();
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// SIGKILLs member `i` (its data directory stays, so [`EtcdCluster::restart`] can
    /// bring it back).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts member `i` on its data directory.
    pub fn restart(&mut self, i: usize) {
        if let Some(binary) = etcd_binary() {
            self.spawn(i, &binary);
        }
    }

    /// The index of the member that currently leads, if one answers.
    pub async fn leader(&self) -> Option<usize> {
        let client = crate::Etcd::new(&self.endpoints()).ok()?;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            if let Ok(s) = client.status(i).await
                && s.header.as_ref().is_some_and(|h| h.member_id == s.leader)
            {
                return Some(i);
            }
        }
        None
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
