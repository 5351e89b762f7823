//! A container's figures read where the engine itself reads them, for a local engine:
//! its cgroup (v1 or v2, either cgroup driver) and its network namespace.
//!
//! The cgroup is found from `/proc/<pid>/cgroup` of the container's main process
//! (never guessed from the driver), so `docker/<id>` (cgroupfs) and
//! `system.slice/docker-<id>.scope` (systemd) work alike:
//! - cgroup v1: CPU time from `<root>/<cpuacct hierarchy><path>/cpuacct.usage` (ns);
//!   memory from `<root>/<memory hierarchy><path>/memory.usage_in_bytes`,
//!   `memory.stat` (`total_inactive_file`) and `memory.limit_in_bytes`;
//! - cgroup v2 (`<root>/cgroup.controllers` exists): `<root><path>/cpu.stat`
//!   (`usage_usec`), `memory.current`, `memory.stat` (`inactive_file`), `memory.max`.
//!
//! Memory used is `usage - inactive_file` (v1: `total_inactive_file`), or `usage`
//! when that is not smaller: what `docker stats` shows.
//! Network counters are `/proc/<pid>/net/dev`, summed over every interface but `lo`.

use std::path::{Path, PathBuf};

/// Where the cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where one container's cgroup files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1: the cpuacct and memory controllers' directories.
    V1 { cpuacct: PathBuf, memory: PathBuf },
    /// cgroup v2: the unified directory.
    V2 { dir: PathBuf },
}

impl Layout {
    /// `v1` or `v2`, for the logs.
    pub fn version(&self) -> &'static str {
        match self {
            Layout::V1 { .. } => "v1",
            Layout::V2 { .. } => "v2",
        }
    }
}

/// The entries of `/proc/<pid>/cgroup`: (hierarchy's controllers, path). The v2
/// entry (`0::/path`) has no controllers.
pub fn parse_proc_cgroup(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            path.starts_with('/').then_some((controllers, path))
        })
        .collect()
}

/// Finds the container's cgroup directories under `root` from its main process's
/// `/proc/<pid>/cgroup` text. The path must name the container (its full id), so a
/// process of another namespace or a reused pid is not taken for it.
pub fn locate(root: &Path, proc_cgroup: &str, container_id: &str) -> Result<Layout, String> {
    let entries = parse_proc_cgroup(proc_cgroup);
    let under = |base: PathBuf, path: &str| base.join(path.trim_start_matches('/'));
    if root.join("cgroup.controllers").exists() {
        let (_, path) = entries
            .iter()
            .find(|(c, _)| c.is_empty())
            .ok_or("no cgroup v2 entry in /proc/<pid>/cgroup")?;
        if !path.contains(container_id) {
            return Err(format!("cgroup {path} does not name the container"));
        }
        let dir = under(root.to_path_buf(), path);
        if !dir.join("cpu.stat").exists() || !dir.join("memory.current").exists() {
            return Err(format!(
                "{} has no cpu.stat or memory.current",
                dir.display()
            ));
        }
        return Ok(Layout::V2 { dir });
    }
    let find = |controller: &str, file: &str| -> Result<PathBuf, String> {
        let (hierarchy, path) = entries
            .iter()
            .find(|(c, _)| c.split(',').any(|x| x == controller))
            .ok_or_else(|| format!("no {controller} cgroup in /proc/<pid>/cgroup"))?;
        if !path.contains(container_id) {
            return Err(format!("cgroup {path} does not name the container"));
        }
        let dir = under(root.join(hierarchy), path);
        if !dir.join(file).exists() {
            return Err(format!("{} has no {file}", dir.display()));
        }
        Ok(dir)
    };
    Ok(Layout::V1 {
        cpuacct: find("cpuacct", "cpuacct.usage")?,
        memory: find("memory", "memory.usage_in_bytes")?,
    })
}

/// One reading of a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupReading {
    /// CPU time used since the cgroup was made (ns).
    pub cpu_ns: u64,
    /// Memory in use less the inactive page cache, as `docker stats` shows it.
    pub memory_used: u64,
    /// The cgroup's memory limit; `None` when unlimited.
    pub memory_limit: Option<u64>,
}

/// A `key value` line's value from a stat file (`memory.stat`, `cpu.stat`).
pub fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Memory used as `docker stats` computes it: usage less the inactive file cache
/// (when that is smaller than the usage).
pub fn memory_used(usage: u64, inactive_file: Option<u64>) -> u64 {
    match inactive_file {
        Some(i) if i < usage => usage - i,
        _ => usage,
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn number(path: &Path) -> Result<u64, String> {
    let text = read(path)?;
    text.trim()
        .parse()
        .map_err(|_| format!("{}: not a number: {text:?}", path.display()))
}

/// A limit as the kernel writes it: `max` (v2) or a page-rounded `i64::MAX` (v1)
/// mean none.
fn limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < (1 << 62)).then_some(v)
}

/// Reads the cgroup's CPU time and memory.
pub fn read_cgroup(layout: &Layout) -> Result<CgroupReading, String> {
    match layout {
        Layout::V1 { cpuacct, memory } => {
            let cpu_ns = number(&cpuacct.join("cpuacct.usage"))?;
            let usage = number(&memory.join("memory.usage_in_bytes"))?;
            let stat = read(&memory.join("memory.stat"))?;
            let inactive = stat_value(&stat, "total_inactive_file")
                .or_else(|| stat_value(&stat, "inactive_file"));
            let memory_limit = read(&memory.join("memory.limit_in_bytes"))
                .ok()
                .and_then(|t| limit(&t));
            Ok(CgroupReading {
                cpu_ns,
                memory_used: memory_used(usage, inactive),
                memory_limit,
            })
        }
        Layout::V2 { dir } => {
            let cpu = read(&dir.join("cpu.stat"))?;
            let usec = stat_value(&cpu, "usage_usec")
                .ok_or_else(|| format!("{}: no usage_usec", dir.join("cpu.stat").display()))?;
            let usage = number(&dir.join("memory.current"))?;
            let stat = read(&dir.join("memory.stat"))?;
            let memory_limit = read(&dir.join("memory.max")).ok().and_then(|t| limit(&t));
            Ok(CgroupReading {
                cpu_ns: usec.saturating_mul(1000),
                memory_used: memory_used(usage, stat_value(&stat, "inactive_file")),
                memory_limit,
            })
        }
    }
}

/// Bytes received and sent over every interface but `lo`, from `/proc/<pid>/net/dev`.
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (iface, rest) = l.split_once(':')?;
            if iface.trim() == "lo" {
                return None;
            }
            let fields: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            Some((*fields.first()?, *fields.get(8)?))
        })
        .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t))
}

/// The network counters of a process's network namespace.
pub fn read_net(pid: u32) -> Result<(u64, u64), String> {
    Ok(parse_net_dev(&read(Path::new(&format!(
        "/proc/{pid}/net/dev"
    )))?))
}

/// The host's memory (`MemTotal` of `/proc/meminfo`, bytes).
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The number of CPUs in a kernel CPU list (`0-3,6,8-9`).
pub fn count_cpu_list(text: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => part.parse::<u32>().map(|_| 1).ok()?,
        };
    }
    (n > 0).then_some(n)
}

/// CPUs online on the host (what the engine reports as `online_cpus`:
/// `/sys/devices/system/cpu/online`).
pub fn online_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| count_cpu_list(&t))
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "13da2ffc31c0940f6311dd658f96cf56c44fdc9cf9c2d332a524bcf9e5fe1954";

    fn v1_proc() -> String {
        format!(
            "12:hugetlb:/docker/{ID}\n9:name=systemd:/docker/{ID}\n4:memory:/docker/{ID}\n\
             2:cpu,cpuacct:/docker/{ID}\n0::/docker/{ID}\n"
        )
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn temp_root(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "uc-cgroup-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn proc_cgroup_entries() {
        let text = v1_proc();
        let e = parse_proc_cgroup(&text);
        assert_eq!(e.len(), 5);
        assert_eq!(e[3], ("cpu,cpuacct", format!("/docker/{ID}").as_str()));
        assert_eq!(e[4].0, "");
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        let path = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(parse_proc_cgroup(&text), vec![("", path.as_str())]);
    }

    #[test]
    fn v1_files_from_a_fixture() {
        let root = temp_root("v1");
        let cpu = root.join(format!("cpu,cpuacct/docker/{ID}"));
        let mem = root.join(format!("memory/docker/{ID}"));
        write(&cpu.join("cpuacct.usage"), "553651129\n");
        write(&mem.join("memory.usage_in_bytes"), "10485760\n");
        write(
            &mem.join("memory.stat"),
            "cache 4096\ninactive_file 1\ntotal_cache 4194304\ntotal_inactive_file 4194304\n",
        );
        write(&mem.join("memory.limit_in_bytes"), "9223372036854771712\n");
        let layout = locate(&root, &v1_proc(), ID).expect("located");
        assert_eq!(
            layout,
            Layout::V1 {
                cpuacct: cpu.clone(),
                memory: mem.clone()
            }
        );
        let r = read_cgroup(&layout).expect("read");
        assert_eq!(r.cpu_ns, 553_651_129);
        // total_inactive_file wins over the cgroup's own inactive_file (v1).
        assert_eq!(r.memory_used, 10_485_760 - 4_194_304);
        assert_eq!(r.memory_limit, None);
        write(&mem.join("memory.limit_in_bytes"), "134217728\n");
        assert_eq!(
            read_cgroup(&layout).expect("read").memory_limit,
            Some(134_217_728)
        );
        // Another container's cgroup is not taken for this one.
        let other = v1_proc().replace(ID, &"a".repeat(64));
        assert!(locate(&root, &other, ID).is_err());
        // Nor one whose files are gone (a container that stopped).
        std::fs::remove_dir_all(&cpu).expect("rm");
        assert!(locate(&root, &v1_proc(), ID).is_err());
        assert!(read_cgroup(&layout).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn v2_files_from_a_fixture_for_both_drivers() {
        for (tag, path) in [
            ("systemd", format!("/system.slice/docker-{ID}.scope")),
            ("cgroupfs", format!("/docker/{ID}")),
        ] {
            let root = temp_root(tag);
            write(
                &root.join("cgroup.controllers"),
                "cpuset cpu io memory pids\n",
            );
            let dir = root.join(path.trim_start_matches('/'));
            write(
                &dir.join("cpu.stat"),
                "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
            );
            write(&dir.join("memory.current"), "8388608\n");
            write(
                &dir.join("memory.stat"),
                "anon 4194304\nfile 4194304\nactive_file 1048576\ninactive_file 3145728\n",
            );
            write(&dir.join("memory.max"), "max\n");
            let proc = format!("0::{path}\n");
            let layout = locate(&root, &proc, ID).expect("located");
            assert_eq!(layout, Layout::V2 { dir: dir.clone() });
            let r = read_cgroup(&layout).expect("read");
            assert_eq!(r.cpu_ns, 2_500_000_000);
            assert_eq!(r.memory_used, 8_388_608 - 3_145_728);
            assert_eq!(r.memory_limit, None);
            write(&dir.join("memory.max"), "268435456\n");
            assert_eq!(
                read_cgroup(&layout).expect("read").memory_limit,
                Some(268_435_456)
            );
            // A v1 text has no v2 entry to find.
            assert!(locate(&root, &format!("4:memory:{path}\n"), ID).is_err());
            let _ = std::fs::remove_dir_all(&root);
        }
    }

    #[test]
    fn memory_used_as_docker_stats() {
        assert_eq!(memory_used(100, Some(30)), 70);
        assert_eq!(memory_used(100, Some(100)), 100);
        assert_eq!(memory_used(100, Some(200)), 100);
        assert_eq!(memory_used(100, None), 100);
    }

    #[test]
    fn net_dev_sums_all_but_lo() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:    1000       5    0    0    0     0          0         0     1000       5    0    0    0     0       0          0\n  \
eth0:     486       5    0    0    0     0          0         0      120       2    0    0    0     0       0          0\n  \
eth1:14       1    0    0    0     0          0         0        6       1    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text), (500, 126));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
    }

    #[test]
    fn stat_values() {
        assert_eq!(stat_value("a 1\nab 2\nb 3\n", "ab"), Some(2));
        assert_eq!(stat_value("a 1\n", "b"), None);
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("9223372036854771712"), None);
        assert_eq!(limit("1048576"), Some(1_048_576));
    }
}
