//! Backends through our HTTP API against the same work done directly, side by side in
//! one run, on this machine:
//! - Docker: create+start+delete through `POST /instances` (start: true) and
//!   `DELETE ?force=true`, against bollard's create, start and remove(force);
//!   our repeated usage call against the engine's one-shot stats call.
//! - KVM: create+start+delete through the API against defining the same volume and
//!   domain through libvirt (virt) and starting, destroying, undefining, deleting.
//!
//! Run: `cargo build --release --workspace && cargo bench -p unicompute-tests --bench backends`
//! Prints medians; asserts nothing about time.

use std::time::{Duration, Instant};

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    StatsOptionsBuilder,
};
use futures_util::StreamExt;
use unicompute_tests::docker::{ensure_image, ContainerGuard, FileLock, TEST_IMAGE};
use unicompute_tests::kvm::KvmFixture;
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:8.1} ms", d.as_secs_f64() * 1000.0)
}

fn api_cycle(s: &Server, body: Value) -> Duration {
    let t = Instant::now();
    let r = s.call("POST", INSTANCES, ADMIN, Some(&body));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let d = s.call(
        "DELETE",
        &format!("{INSTANCES}/{id}?force=true"),
        ADMIN,
        None,
    );
    assert_eq!(d.status, 204, "{}", d.text);
    t.elapsed()
}

fn bench_docker(runs: usize) {
    let _lock = FileLock::engine_shared();
    ensure_image();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("docker")],
        toml: "[backends.docker]\nplugin = \"docker\"\n".into(),
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let docker = bollard::Docker::connect_with_unix_defaults().expect("docker");
    let docker = rt.block_on(docker.negotiate_version()).expect("negotiate");
    let mut ours = Vec::new();
    let mut direct = Vec::new();
    for i in 0..runs {
        let name = unique(&format!("uc-bench-api-{i}"));
        // Removed by name if a cycle fails half-way (a no-op otherwise).
        let _guard = ContainerGuard(name.clone());
        ours.push(api_cycle(
            &s,
            json!({
                "name": name, "backend": "docker", "start": true,
                "config": {"image": TEST_IMAGE, "command": ["sleep", "1000"]},
                "resources": {"cpu": {"cores": 1}, "memory": {"limit": 134217728}}
            }),
        ));
        let name = unique(&format!("uc-bench-direct-{i}"));
        let _guard_direct = ContainerGuard(name.clone());
        let t = Instant::now();
        rt.block_on(async {
            let body = bollard::models::ContainerCreateBody {
                image: Some(TEST_IMAGE.into()),
                cmd: Some(vec!["sleep".into(), "1000".into()]),
                host_config: Some(bollard::models::HostConfig {
                    nano_cpus: Some(1_000_000_000),
                    memory: Some(134217728),
                    ..Default::default()
                }),
                ..Default::default()
            };
            docker
                .create_container(
                    Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                    body,
                )
                .await
                .expect("create");
            docker
                .start_container(&name, None::<StartContainerOptions>)
                .await
                .expect("start");
            docker
                .remove_container(
                    &name,
                    Some(
                        RemoveContainerOptionsBuilder::new()
                            .force(true)
                            .v(true)
                            .build(),
                    ),
                )
                .await
                .expect("remove");
        });
        direct.push(t.elapsed());
    }
    let (o, d) = (median(ours), median(direct));
    println!("docker create+start+delete, median of {runs}:");
    println!("  through the unicompute API: {}", ms(o));
    println!("  bollard directly:           {}", ms(d));
    println!("  ratio: {:.2}", o.as_secs_f64() / d.as_secs_f64());

    // usage: ours repeated vs the engine's stats call
    let name = unique("uc-bench-usage");
    let _guard_usage = ContainerGuard(name.clone());
    let r = s.call(
        "POST",
        INSTANCES,
        ADMIN,
        Some(&json!({
            "name": name, "backend": "docker", "start": true,
            "config": {"image": TEST_IMAGE, "command": ["sleep", "1000"]}
        })),
    );
    let id = r.json["id"].as_str().expect("id").to_owned();
    let usage = format!("{INSTANCES}/{id}/usage");
    let first = Instant::now();
    assert_eq!(s.get(&usage).status, 200);
    let first = first.elapsed();
    let mut ours = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(s.get(&usage).status, 200);
        ours.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut theirs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        rt.block_on(async {
            let mut st = docker.stats(
                &name,
                Some(StatsOptionsBuilder::new().stream(false).build()),
            );
            st.next().await.expect("a sample").expect("stats");
        });
        theirs.push(t.elapsed());
    }
    println!("docker usage: first call {}, repeated median {} (50 calls); engine stats(stream=false) median {} (5 calls)", ms(first), ms(median(ours)), ms(median(theirs)));
    s.call(
        "DELETE",
        &format!("{INSTANCES}/{id}?force=true"),
        ADMIN,
        None,
    );
}

fn bench_kvm(runs: usize) {
    use unicompute_kvm::xml::{DomainSpec, InstanceMeta, LabelsXml, VolumeXml};
    use virt::connect::Connect;
    use virt::storage_vol::StorageVol;

    let f = KvmFixture::new();
    let s = Server::start_with(ServerOptions {
        plugins: vec![workspace_plugin("kvm")],
        toml: format!("[backends.kvm]\nplugin = \"kvm\"\n{}", f.settings_toml()),
        ..Default::default()
    });
    // the pool exists once the backend listed its images
    assert_eq!(s.get("/api/v1/compute/backends/kvm/images").status, 200);
    unicompute_kvm::init_libvirt();
    let conn = Connect::open(Some("qemu:///system")).expect("libvirt");
    let domain_type = unicompute_kvm::KvmConfig::default().resolved_domain_type();
    let host_cpus = conn.node_info().expect("node").cpus;
    let template = f.templates().join("ubuntu-22.04.qcow2");
    let mut ours = Vec::new();
    let mut direct = Vec::new();
    for i in 0..runs {
        ours.push(api_cycle(
            &s,
            json!({
                "name": format!("{}-api-{i}", f.prefix), "backend": "kvm", "start": true,
                "config": {"image": "ubuntu-22.04", "networkType": "none"},
                "resources": {"cpu": {"cores": 1}, "memory": {"limit": 134217728}}
            }),
        ));
        let name = format!("{}-virt-{i}", f.prefix);
        let t = Instant::now();
        let pool = conn.lookup_storage_pool_by_name(&f.pool).expect("pool");
        let vol_xml = VolumeXml::new(
            &format!("{name}.qcow2"),
            64 << 20,
            "qcow2",
            Some((&template.to_string_lossy(), "qcow2")),
        )
        .to_xml()
        .expect("xml");
        let vol = StorageVol::create_xml(&pool, &vol_xml, 0).expect("volume");
        let spec = DomainSpec {
            domain_type: domain_type.clone(),
            name: name.clone(),
            vcpus: 1,
            max_vcpus: host_cpus,
            cpu_mode: None,
            memory: 128 << 20,
            disk: (vol.path().expect("path"), "qcow2".into()),
            seed: None,
            nic: None,
            console_log: None,
            // As the plugin makes them (a guest agent channel by default).
            guest_agent: true,
            meta: InstanceMeta {
                xmlns: None,
                id: name.clone(),
                created_at: String::new(),
                updated_at: String::new(),
                started: true,
                labels: LabelsXml::default(),
                config: serde_json::from_value(
                    json!({"image": "ubuntu-22.04", "networkType": "none"}),
                )
                .expect("config"),
                pool: f.pool.clone(),
                disk: String::new(),
                disk_size: 0,
                seed: None,
            },
        };
        let dom = conn
            .define_domain_xml(&spec.to_xml().expect("xml"))
            .expect("define");
        dom.create().expect("start");
        dom.destroy().expect("destroy");
        dom.undefine().expect("undefine");
        vol.delete(0).expect("delete volume");
        direct.push(t.elapsed());
    }
    let (o, d) = (median(ours), median(direct));
    println!("kvm create+start+delete ({domain_type}), median of {runs}:");
    println!("  through the unicompute API: {}", ms(o));
    println!("  libvirt (virt) directly:    {}", ms(d));
    println!("  ratio: {:.2}", o.as_secs_f64() / d.as_secs_f64());
}

fn main() {
    std::env::set_var("UCTEST_PROFILE", "release");
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15);
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    if only.as_deref().is_none_or(|o| o == "docker") {
        bench_docker(runs);
    }
    if only.as_deref().is_none_or(|o| o == "kvm") {
        bench_kvm(runs);
    }
}
