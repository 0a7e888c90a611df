//! What the machine did to a run: per-core time from `/proc/stat`.
//!
//! The runners report it beside their own numbers, so that a reader can tell a slow
//! engine from a core that was busy with something else or stolen by the hypervisor.

/// Cumulative time of one core (or of all cores), in jiffies, from `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreTimes {
    /// User, nice, system, irq and softirq time.
    pub busy: u64,
    /// Time the hypervisor ran something else on this core.
    pub steal: u64,
    /// Idle and iowait time.
    pub idle: u64,
}

impl CoreTimes {
    /// The times of `core`'s line (`cpuN`), or of the all-cores line for `None`; `None`
    /// where `/proc/stat` is unreadable or has no such line.
    pub fn read(core: Option<usize>) -> Option<CoreTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let name = core.map_or_else(|| "cpu".to_string(), |c| format!("cpu{c}"));
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        // user nice system idle iowait irq softirq steal ...
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let field = |i: usize| v.get(i).copied();
        Some(CoreTimes {
            busy: field(0)? + field(1)? + field(2)? + field(5)? + field(6)?,
            idle: field(3)? + field(4)?,
            steal: field(7)?,
        })
    }

    fn total(&self) -> u64 {
        self.busy + self.steal + self.idle
    }

    /// Shares of the time between `self` and `later`: (busy, steal), each 0..1; `None`
    /// when no time passed.
    pub fn shares_until(&self, later: &CoreTimes) -> Option<(f64, f64)> {
        let total = later.total().saturating_sub(self.total());
        if total == 0 {
            return None;
        }
        let share = |a: u64, b: u64| b.saturating_sub(a) as f64 / total as f64;
        Some((share(self.busy, later.busy), share(self.steal, later.steal)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_all_cores_line_and_core_zero_are_readable_and_shares_add_up() {
        let a = CoreTimes::read(None).expect("/proc/stat has a cpu line");
        let c0 = CoreTimes::read(Some(0)).expect("core 0 exists");
        assert!(a.total() >= c0.total());
        assert_eq!(CoreTimes::read(Some(100_000)), None);
        let later = CoreTimes {
            busy: a.busy + 30,
            steal: a.steal + 10,
            idle: a.idle + 60,
        };
        let (busy, steal) = a.shares_until(&later).unwrap();
        assert!((busy - 0.3).abs() < 1e-9 && (steal - 0.1).abs() < 1e-9);
        assert_eq!(a.shares_until(&a), None);
    }
}
