//! Parsing the flat-keyed cgroup files: `cpu.stat` and `cgroup.events`.

/// CPU time a cgroup has used, from `cpu.stat` (microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuStat {
    /// `usage_usec`: user + system.
    pub usage_usec: u64,
    /// `user_usec`.
    pub user_usec: u64,
    /// `system_usec`.
    pub system_usec: u64,
}

impl CpuStat {
    /// Parses `cpu.stat`; keys it does not know are skipped, missing ones are 0.
    pub fn parse(text: &str) -> Self {
        let mut s = CpuStat::default();
        for (k, v) in flat_keyed(text) {
            match k {
                "usage_usec" => s.usage_usec = v,
                "user_usec" => s.user_usec = v,
                "system_usec" => s.system_usec = v,
                _ => {}
            }
        }
        s
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuStat) -> CpuStat {
        CpuStat {
            usage_usec: self.usage_usec.saturating_sub(earlier.usage_usec),
            user_usec: self.user_usec.saturating_sub(earlier.user_usec),
            system_usec: self.system_usec.saturating_sub(earlier.system_usec),
        }
    }
}

/// The two bits of `cgroup.events` fcsup waits on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// `populated 1`: some process lives in the cgroup or below.
    pub populated: bool,
    /// `frozen 1`: every task is frozen.
    pub frozen: bool,
}

impl Events {
    /// Parses `cgroup.events`.
    pub fn parse(text: &str) -> Self {
        let mut e = Events::default();
        for (k, v) in flat_keyed(text) {
            match k {
                "populated" => e.populated = v == 1,
                "frozen" => e.frozen = v == 1,
                _ => {}
            }
        }
        e
    }
}

fn flat_keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(' ')?;
        Some((k, v.trim().parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_hybrid_has_only_usage() {
        let s = CpuStat::parse("usage_usec 1200\nuser_usec 1000\nsystem_usec 200\nnice_usec 0\n");
        assert_eq!(s, CpuStat { usage_usec: 1200, user_usec: 1000, system_usec: 200 });
        let later = CpuStat { usage_usec: 1500, user_usec: 1250, system_usec: 250 };
        assert_eq!(later.since(&s).usage_usec, 300);
    }

    #[test]
    fn events() {
        assert_eq!(Events::parse("populated 1\nfrozen 0\n"), Events { populated: true, frozen: false });
        assert_eq!(Events::parse("populated 0\nfrozen 1\n"), Events { populated: false, frozen: true });
    }
}
