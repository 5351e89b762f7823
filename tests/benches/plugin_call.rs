//! A plugin call's own cost: the release fake plugin loaded in this process through
//! the host's loader (`unicompute_host::plugins::loader::load_file`, the private copy
//! and abi_stable's checks), one instance seeded in it, and `usage` of that instance
//! (and `health`) timed `UC_BENCH_CALLS` times (default 200,000) each way:
//!
//! - **service**: `Service::usage` over that backend: the inventory lookup, the
//!   registry, the blocking-pool hop and the metrics, the host's full path;
//! - **hop + ABI**: `spawn_blocking` of the remote call, awaited (the hop alone);
//! - **ABI**: the remote backend's method on this thread: the `Call` encoded, the
//!   abi_stable call, the plugin's decode, its dispatcher, the result encoded and
//!   decoded;
//! - **JSON, no ABI**: the same in one library: `export::dispatch` on the fake linked
//!   as a plain Rust library (decode the call, run, encode), then decode the result;
//! - **direct**: the fake's own method, linked as a plain Rust library.
//!
//! Prints the mean ns per call of each and the differences (the overheads). Run:
//! `cargo bench -p unicompute-tests --bench plugin_call` (builds the fake plugin in
//! release). Prints numbers; asserts nothing about time.

use std::sync::Arc;
use std::time::Instant;

use unicompute_host::config::Config;
use unicompute_host::plugins::loader;
use unicompute_host::service::Service;
use unicompute_plugin_api::{Backend, BackendContext, EventSink, Usage};
use unicompute_tests::*;

fn time(calls: u32, mut f: impl FnMut()) -> f64 {
    // Warm up (caches, the blocking pool's first thread).
    for _ in 0..calls.min(10_000) {
        f();
    }
    let t = Instant::now();
    for _ in 0..calls {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(calls)
}

fn main() {
    std::env::set_var("UCTEST_PROFILE", "release");
    let calls: u32 = std::env::var("UC_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let state = TempDir::new("uc-bench-plugin-call");
    let settings = json!({"seed_instances": 1, "state_dir": state.0.join("records")});

    let plugin = loader::load_file(&fake_plugin()).expect("the fake plugin loads");
    let remote: Arc<dyn Backend> = Arc::new(
        plugin
            .create_backend("fake", &settings, EventSink::discard())
            .expect("a fake backend"),
    );
    let direct = unicompute_fake::FakeBackend::new(BackendContext {
        name: "fake".into(),
        config: settings.clone(),
        events: EventSink::discard(),
    })
    .expect("a fake backend, in Rust");
    let id = unicompute_fake::seeded(0).id;
    assert_eq!(
        remote.usage(&id).expect("usage"),
        direct.usage(&id).expect("usage")
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (svc, _tx, _rx) = Service::in_process(
        Config::default(),
        vec![("fake".into(), Arc::clone(&remote))],
    );
    rt.block_on(svc.sync_all(std::time::Duration::from_secs(10)));
    assert!(svc.get(&id).is_ok(), "the seeded instance is known");

    let payload = json!({"id": id, "force": false}).to_string();
    let mut rows: Vec<(&str, f64, f64)> = Vec::new();
    {
        let run = |f: &mut dyn FnMut() -> bool| {
            let mut ok = true;
            let ns = time(calls, || ok &= f());
            assert!(ok, "every call answered");
            ns
        };
        let service = run(&mut || rt.block_on(async { svc.usage(&id).await.is_ok() }));
        let service_loop = {
            // One block_on for all calls: the loop of a server's handler.
            let t = Instant::now();
            let ok = rt.block_on(async {
                let mut ok = true;
                for _ in 0..calls {
                    ok &= svc.usage(&id).await.is_ok();
                }
                ok
            });
            assert!(ok);
            t.elapsed().as_nanos() as f64 / f64::from(calls)
        };
        let hop_loop = {
            let t = Instant::now();
            let ok = rt.block_on(async {
                let mut ok = true;
                for _ in 0..calls {
                    let (b, i) = (Arc::clone(&remote), id.clone());
                    ok &= tokio::task::spawn_blocking(move || b.usage(&i).is_ok())
                        .await
                        .unwrap_or(false);
                }
                ok
            });
            assert!(ok);
            t.elapsed().as_nanos() as f64 / f64::from(calls)
        };
        let abi = run(&mut || remote.usage(&id).is_ok());
        let json_only = run(&mut || {
            unicompute_plugin_api::export::dispatch(&direct, "usage", &payload)
                .ok()
                .and_then(|r| serde_json::from_str::<Usage>(r.as_str()).ok())
                .is_some()
        });
        let rust = run(&mut || direct.usage(&id).is_ok());
        let health_abi = run(&mut || remote.health().is_ok());
        let health_rust = run(&mut || direct.health().is_ok());
        rows.push(("usage: service (block_on per call)", service, service - abi));
        rows.push((
            "usage: service (in one task)",
            service_loop,
            service_loop - abi,
        ));
        rows.push(("usage: spawn_blocking hop + ABI", hop_loop, hop_loop - abi));
        rows.push(("usage: ABI, this thread", abi, abi - rust));
        rows.push((
            "usage: JSON in and out, no ABI",
            json_only,
            json_only - rust,
        ));
        rows.push(("usage: direct Rust", rust, 0.0));
        rows.push((
            "health: ABI, this thread",
            health_abi,
            health_abi - health_rust,
        ));
        rows.push(("health: direct Rust", health_rust, 0.0));
    }
    println!("{calls} calls each; mean ns per call; overhead = minus the line it builds on");
    println!("{:<38} {:>10} {:>10}", "", "ns/call", "overhead");
    for (name, ns, over) in rows {
        println!("{name:<38} {ns:>10.0} {over:>10.0}");
    }
    println!("(service and hop overheads are over \"ABI, this thread\"; ABI and JSON over \"direct Rust\")");
}
