//! Side-by-side numbers against the real engine (run with
//! `cargo run --release -p unicompute-docker --example bench`):
//! - create+start+delete through the backend against the same calls to the Docker API
//!   directly (bollard);
//! - a repeated usage call of the backend against Docker's own stats call.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, RemoveContainerOptions, StatsOptions,
};
use common::{request, unique, Cleanup, Engine, TEST_IMAGE};
use futures_util::StreamExt;
use unicompute_docker::DockerBackend;
use unicompute_plugin_api::{Backend, BackendContext, Event, EventSink, InstanceState};

const ROUNDS: usize = 25;
const USAGE_CALLS: usize = 200;
const STATS_CALLS: usize = 5;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    common::ensure_image();
    let engine = Engine::new();
    // The backends' state files go to a directory of the bench's own.
    let state = unicompute_tests::TempDir::new("uc-bench-state");
    let config = serde_json::json!({"state_dir": state.0});
    let backend = DockerBackend::new(BackendContext {
        name: unique("bench"),
        config: config.clone(),
        events: EventSink::discard(),
    })
    .expect("backend");
    let mut clean = Cleanup::default();
    let command = serde_json::json!({"command": ["sh", "-c", "sleep 1000"]});

    // create + start + delete, interleaved so that both see the same engine.
    let ours_once = |name: &str| {
        let t = Instant::now();
        let inst = backend
            .create(request(name, command.clone()))
            .expect("create");
        backend.start(&inst.id).expect("start");
        backend.delete(&inst.id, true).expect("delete");
        t.elapsed()
    };
    let direct_once = |name: &str| {
        let t = Instant::now();
        engine.block_on(async {
            let d = &engine.docker;
            d.create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_owned()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(TEST_IMAGE.to_owned()),
                    cmd: Some(vec!["sh".into(), "-c".into(), "sleep 1000".into()]),
                    ..Default::default()
                },
            )
            .await
            .expect("create");
            d.start_container(name, None).await.expect("start");
            d.remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .expect("remove");
        });
        t.elapsed()
    };
    for _ in 0..2 {
        ours_once(&clean.container(&unique("warm")));
        direct_once(&clean.container(&unique("warm")));
    }
    let (mut ours, mut direct) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        if i % 2 == 0 {
            ours.push(ours_once(&clean.container(&unique("ours"))));
            direct.push(direct_once(&clean.container(&unique("direct"))));
        } else {
            direct.push(direct_once(&clean.container(&unique("direct"))));
            ours.push(ours_once(&clean.container(&unique("ours"))));
        }
    }
    let (mo, md) = (median(&mut ours), median(&mut direct));
    println!("create+start+delete, {ROUNDS} rounds each (median / p90):");
    println!(
        "  unicompute backend : {:8.1} ms / {:8.1} ms",
        ms(mo),
        ms(pct(&mut ours, 0.9))
    );
    println!(
        "  bollard directly   : {:8.1} ms / {:8.1} ms",
        ms(md),
        ms(pct(&mut direct, 0.9))
    );
    println!(
        "  ratio (ours/theirs): {:8.3}",
        mo.as_secs_f64() / md.as_secs_f64()
    );

    // Usage of one running instance.
    let name = clean.container(&unique("usage"));
    let mut req = request(&name, command.clone());
    req.start = true;
    let inst = backend.create(req).expect("create");
    let t = Instant::now();
    let first = backend.usage(&inst.id).expect("usage");
    let cold = t.elapsed();
    let mut calls = Vec::with_capacity(USAGE_CALLS);
    for _ in 0..USAGE_CALLS {
        let t = Instant::now();
        let u = backend.usage(&inst.id).expect("usage");
        calls.push(t.elapsed());
        assert!(u.memory.used > 0);
    }
    let mut stats = Vec::new();
    let mut one_shot = Vec::new();
    for _ in 0..STATS_CALLS {
        for (stream_once, out) in [(false, &mut stats), (true, &mut one_shot)] {
            let t = Instant::now();
            engine.block_on(async {
                let options = StatsOptions {
                    stream: false,
                    one_shot: stream_once,
                };
                let mut s = engine.docker.stats(&name, Some(options));
                s.next().await.expect("a sample").expect("stats");
            });
            out.push(t.elapsed());
        }
    }
    println!("usage of a running instance:");
    println!(
        "  first usage call (a CPU window of its own): {:9.3} ms",
        ms(cold)
    );
    println!(
        "  repeated usage call, {USAGE_CALLS} calls: median {:.1} us, p99 {:.1} us, max {:.1} us",
        us(median(&mut calls)),
        us(pct(&mut calls, 0.99)),
        us(pct(&mut calls, 1.0))
    );
    println!(
        "  docker stats (stream=false), {STATS_CALLS} calls: median {:.1} ms",
        ms(median(&mut stats))
    );
    println!(
        "  docker stats (one-shot, no cpu delta), {STATS_CALLS} calls: median {:.1} ms",
        ms(median(&mut one_shot))
    );
    println!(
        "  sample: {}",
        serde_json::to_string(&first).unwrap_or_default()
    );
    backend.delete(&inst.id, true).expect("delete");

    // How soon a container killed by hand is reported.
    let events = common::Recorder::default();
    let watched = DockerBackend::new(BackendContext {
        name: unique("bench-events"),
        config: config.clone(),
        events: events.sink(),
    })
    .expect("backend");
    let name = clean.container(&unique("events"));
    let inst = watched
        .create(request(&name, command.clone()))
        .expect("create");
    let mut seen = Vec::new();
    for _ in 0..5 {
        watched.start(&inst.id).expect("start");
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        engine
            .block_on(
                engine
                    .docker
                    .kill_container(&name, None::<KillContainerOptions>),
            )
            .expect("kill");
        let id = inst.id.clone();
        events
            .wait_for(Duration::from_secs(10), |e| {
                matches!(e, Event::Changed { instance } if instance.id == id
                    && instance.state == InstanceState::Stopped
                    && instance.updated_at.timestamp_millis() >= 0)
            })
            .expect("an event");
        seen.push(t.elapsed());
        events.clear();
    }
    println!(
        "container killed by hand -> changed event: median {:.1} ms, max {:.1} ms",
        ms(median(&mut seen)),
        ms(pct(&mut seen, 1.0))
    );
    watched.delete(&inst.id, true).expect("delete");
}
