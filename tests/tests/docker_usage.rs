//! Docker usage from the container's cgroup (a local engine), end to end: the real
//! binary, the real docker plugin, the real engine. Compared with the engine's own
//! one-shot stats in the same run. Only the local busybox image; no traffic to
//! containers.

use std::time::{Duration, Instant};

use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;
use unicompute_tests::docker::{
    self, backend_name, ensure_image, sweep_stale, ContainerGuard, FileLock, TEST_IMAGE,
};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";
const MIB: u64 = 1 << 20;

/// Memory used as `docker stats` computes it, from the engine's one-shot stats.
fn engine_memory_used(rt: &tokio::runtime::Runtime, docker: &bollard::Docker, name: &str) -> u64 {
    rt.block_on(async {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let s = docker
            .stats(name, Some(options))
            .next()
            .await
            .expect("a stats answer")
            .expect("stats");
        let m = s.memory_stats.expect("memory stats");
        let usage = m.usage.expect("usage");
        let inactive = m
            .stats
            .as_ref()
            .and_then(|st| {
                st.get("total_inactive_file")
                    .or_else(|| st.get("inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        if inactive < usage {
            usage - inactive
        } else {
            usage
        }
    })
}

/// User and system CPU time of a process, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the state.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

#[test]
fn a_busy_container_measured_from_its_cgroup_at_once() {
    let _lock = FileLock::engine_shared();
    ensure_image();
    sweep_stale();
    let backend = backend_name();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker")],
        toml: format!("[backends.{backend}]\nplugin = \"docker\"\n"),
        env: vec![("UNICOMPUTE_LOG".into(), "info,plugin=debug".into())],
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let docker = bollard::Docker::connect_with_unix_defaults().expect("docker");
    let docker = rt.block_on(docker.negotiate_version()).expect("negotiate");

    // 32 MiB in /dev/shm (shared memory: charged to the container, never inactive
    // file cache), then a busy loop on its one core.
    let busy = "dd if=/dev/zero of=/dev/shm/fill bs=1048576 count=32; while :; do :; done";
    let mut ids = Vec::new();
    let mut guards = Vec::new();
    for (tag, command) in [("busy", busy), ("idle", "exec sleep 1000")] {
        let name = unique(&format!("uc-usage-{tag}"));
        guards.push(ContainerGuard(name.clone()));
        let r = s.call(
            "POST",
            INSTANCES,
            ADMIN,
            Some(&json!({
                "name": name, "backend": backend, "start": true,
                "config": {"image": TEST_IMAGE, "command": ["sh", "-c", command]},
                "resources": {"cpu": {"cores": 1}, "memory": {"limit": 128 * MIB}}
            })),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push((r.json["id"].as_str().expect("id").to_owned(), name));
    }
    let (busy_id, busy_name) = &ids[0];
    let (idle_id, _) = &ids[1];
    let usage = |id: &str| {
        let t = Instant::now();
        let u = s.get(&format!("{INSTANCES}/{id}/usage"));
        let took = t.elapsed();
        assert_eq!(u.status, 200, "{}", u.text);
        (u.json, took)
    };

    // The first call measures a short window itself: a real figure at once, in far
    // less than the engine's second.
    let (first, took) = usage(busy_id);
    assert!(
        took < Duration::from_millis(500),
        "first usage call took {took:?}"
    );
    let first_cpu = first["cpu"]["usage"].as_f64().expect("cpu");
    assert!(first_cpu > 0.0 && first_cpu <= 100.0, "{first}");
    assert_eq!(first["cpu"]["cores"], 1);
    assert_eq!(first["memory"]["limit"], 128 * MIB);
    // The second call measures the window since the first. The kernel's own count of
    // the spinning process's CPU time over the same second is the reference (on a
    // loaded machine the container gets less than its core, and says so).
    let pid: u32 = docker::docker(&["inspect", "-f", "{{.State.Pid}}", busy_name])
        .1
        .parse()
        .expect("pid");
    let (t0, ticks0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(1));
    let (ticks1, wall) = (cpu_ticks(pid), t0.elapsed());
    let (second, _) = usage(busy_id);
    let second_cpu = second["cpu"]["usage"].as_f64().expect("cpu");
    let reference = (ticks1 - ticks0) as f64 / clock_ticks() / wall.as_secs_f64() * 100.0;
    assert!(
        (second_cpu - reference).abs() <= 15.0,
        "cpu of the spinning container: ours {second_cpu}, the kernel's {reference:.1}"
    );
    if reference >= 75.0 {
        assert!(
            first_cpu > 50.0 || second_cpu > 50.0,
            "a spinning container on one core: {first_cpu}, then {second_cpu}"
        );
    } else {
        eprintln!("a loaded machine: the spinning container got {reference:.1}% of its core");
    }
    assert!(second_cpu <= 100.0, "{second}");

    // An idle container is measured as idle, also on its first call.
    let (idle, _) = usage(idle_id);
    let idle_cpu = idle["cpu"]["usage"].as_f64().expect("cpu");
    assert!(idle_cpu < 20.0, "an idle container: {idle}");

    // Memory: the 32 MiB show, and match what the engine's one-shot stats says.
    let filled = wait_for(Duration::from_secs(20), || {
        let (u, _) = usage(busy_id);
        let used = u["memory"]["used"].as_u64()?;
        (used >= 32 * MIB).then_some(used)
    });
    assert!(filled.is_some(), "memory.used never reached 32 MiB");
    let engine = engine_memory_used(&rt, &docker, busy_name);
    let (u, _) = usage(busy_id);
    let ours = u["memory"]["used"].as_u64().expect("used");
    let diff = ours.abs_diff(engine);
    assert!(
        diff <= 2 * MIB,
        "memory used: ours {ours}, the engine's {engine} (diff {diff})"
    );
    assert!(u["network"]["rxBytes"].is_u64(), "{u}");

    eprintln!(
        "first call {took:?}: cpu {first_cpu}, then {second_cpu}; idle {idle_cpu}; \
         memory ours {ours}, engine {engine}"
    );

    // A restart by hand: the new main process is found (its pid from a new inspect)
    // and measured as the old one was.
    let (ok, _) = docker::docker(&["restart", "-t", "0", busy_name]);
    assert!(ok, "docker restart");
    let new_pid: u32 = docker::docker(&["inspect", "-f", "{{.State.Pid}}", busy_name])
        .1
        .parse()
        .expect("pid");
    assert_ne!(new_pid, pid);
    let restarted = wait_for(Duration::from_secs(10), || {
        let (u, _) = usage(busy_id);
        let cpu = u["cpu"]["usage"].as_f64()?;
        s.log().contains(&format!("pid={new_pid} ")).then_some(cpu)
    });
    let cpu = restarted.expect("the restarted container's process was never read");
    assert!(cpu > 0.0 && cpu <= 100.0, "{cpu}");

    // The cgroup path was taken (said at debug level).
    let log = s.log();
    assert!(
        log.contains("usage: read from the container's cgroup"),
        "no cgroup path in the log:\n{log}"
    );
    assert!(!log.contains("using the engine's stats stream"), "{log}");
    for line in log.lines().filter(|l| l.contains("usage: read from")) {
        eprintln!("{line}");
    }

    for (id, _) in &ids {
        let d = s.call(
            "DELETE",
            &format!("{INSTANCES}/{id}?force=true"),
            ADMIN,
            None,
        );
        assert_eq!(d.status, 204, "{}", d.text);
    }
    drop(guards);
}
