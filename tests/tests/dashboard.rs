//! The dashboard (`/ui/`) in a real browser: Debian's headless Chromium driven through
//! chromedriver (WebDriver), against the real server with the real Docker backend.
//! Everything it shows comes through the public API; changes made elsewhere (curl,
//! `docker kill`) reach the page through the event stream, without a reload.
//! Screenshots of each page go to `target/dashboard-screenshots/` (artifacts).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use unicompute_tests::docker::{ensure_image, sweep_stale, ContainerGuard, FileLock, TEST_IMAGE};
use unicompute_tests::*;

const INSTANCES: &str = "/api/v1/compute/instances";

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    profile: TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/test-env.sh installs it)");
    let url = format!("http://127.0.0.1:{port}");
    let up = wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(up.is_some(), "chromedriver did not listen on {port}");
    Driver {
        child,
        url,
        profile: TempDir::new("uc-chromium"),
    }
}

/// A headless Chromium session (a fresh profile; no network but loopback is used).
async fn browser(d: &Driver, width: u32, height: u32) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     format!("--window-size={width},{height}"),
                     format!("--user-data-dir={}", d.profile.0.join(format!("p{width}")).display())],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a Chromium session")
}

/// Evaluates `js` (an expression) in the page until it is truthy (within 20 s);
/// answers its value.
async fn until(c: &Client, what: &str, js: &str) -> Value {
    let started = Instant::now();
    loop {
        let v = c
            .execute(&format!("return ({js});"), vec![])
            .await
            .unwrap_or(Value::Null);
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let body = c
                .execute("return document.body.innerText;", vec![])
                .await
                .unwrap_or(Value::Null);
            panic!("{what}: not within 20 s ({js}); the page says:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .expect("click");
}

/// Clicks `css` (a stop or a delete), then Confirm in the dialog it opens.
async fn click_confirmed(c: &Client, css: &str) {
    click(c, css).await;
    until(
        c,
        "the confirmation",
        "document.querySelector('#confirm').open",
    )
    .await;
    click(c, "#confirm-ok").await;
}

async fn shot(c: &Client, name: &str) {
    let dir = target_dir().join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/")).await.expect("open /ui/");
    let field = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#token"))
        .await
        .expect("the sign-in form");
    field.send_keys(token).await.expect("type the token");
    click(c, "#sign-in button[type=submit]").await;
}

fn state_js(name: &str) -> String {
    format!("document.querySelector('tr[data-name=\"{name}\"] .state')?.textContent")
}

#[test]
fn the_dashboard_drives_a_real_docker_container_live() {
    if skip_requested("UC_SKIP_BROWSER", "the dashboard's browser tests") {
        return;
    }
    let lock = FileLock::engine_shared();
    ensure_image();
    sweep_stale();
    let tmp = TempDir::new("uc-ui-dock");
    let (s, backend) = unicompute_tests::docker::server(&tmp.0);
    let name = unique("uc-ui");
    let _guard = ContainerGuard(name.clone());
    let d = driver();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = browser(&d, 1280, 800).await;
        // The static page asks nothing of the internet: its policy says so.
        let page = s.raw("GET", "/ui/", None, None);
        assert_eq!(page.status, 200);
        let r = headers_of(&s.base);
        assert!(r.contains("default-src 'none'"), "{r}");

        // A bad token is told so.
        sign_in(&c, &s.base, "not-a-token").await;
        let said = until(&c, "the refusal", "document.querySelector('#sign-in-error .error')?.textContent").await;
        assert!(
            said.as_str().is_some_and(|t| t.contains("The server refused this token") && t.contains("UNAUTHORIZED")),
            "{said}"
        );
        shot(&c, "sign-in-refused").await;

        // An admin signs in: the instances page, with the Create link.
        sign_in(&c, &s.base, ADMIN).await;
        until(&c, "the instances page", "document.querySelector('#instances-page')").await;
        assert_eq!(
            until(&c, "who", "document.querySelector('#who-name')?.textContent").await,
            json!("admin (admin)")
        );
        shot(&c, "instances-empty").await;

        // Create from the form: the backend's images are offered.
        c.goto(&format!("{}/ui/#/create", s.base)).await.expect("create page");
        until(&c, "the image list", &format!("[...document.querySelectorAll('#c-image option')].some(o => o.value === '{TEST_IMAGE}')")).await;
        c.execute(
            "document.querySelector('#c-name').value = arguments[0];\
             document.querySelector('#c-image').value = arguments[1];\
             document.querySelector('#c-command').value = arguments[2];\
             document.querySelector('#c-mem').value = '64';\
             document.querySelector('#c-labels').value = 'app=ui-test';\
             document.querySelector('#c-start').checked = false;",
            vec![
                json!(name),
                json!(TEST_IMAGE),
                json!(format!("sh -c \"echo hello-from-{name}; trap 'exit 0' TERM; while :; do sleep 1; done\"")),
            ],
        )
        .await
        .expect("fill the form");
        shot(&c, "create").await;
        click(&c, "#create-form button[type=submit]").await;
        until(&c, "the new instance's page", "document.querySelector('#instance-page')").await;
        let got = s.get(&format!("{INSTANCES}/name/{name}"));
        assert_eq!(got.status, 200, "{}", got.text);
        let id = got.json["id"].as_str().expect("id").to_owned();
        assert_eq!(got.json["state"], "created");
        assert_eq!(got.json["resources"]["memory"]["limit"], 64u64 << 20);
        assert_eq!(got.json["metadata"]["labels"]["app"], "ui-test");

        // A taken name: the server's error, by the name field.
        c.goto(&format!("{}/ui/#/create", s.base)).await.expect("create page");
        until(&c, "the image list", &format!("[...document.querySelectorAll('#c-image option')].some(o => o.value === '{TEST_IMAGE}')")).await;
        c.execute(
            "document.querySelector('#c-name').value = arguments[0];\
             document.querySelector('#c-image').value = arguments[1];",
            vec![json!(name), json!(TEST_IMAGE)],
        )
        .await
        .expect("fill the form");
        click(&c, "#create-form button[type=submit]").await;
        let by_name = until(&c, "the error by the name", "document.querySelector('#err-name')?.textContent").await;
        assert!(
            by_name.as_str().is_some_and(|t| t.contains("INSTANCE_ALREADY_EXISTS")),
            "{by_name}"
        );
        shot(&c, "create-name-taken").await;

        // Started elsewhere (the API, as curl would): the list turns running by itself.
        c.goto(&format!("{}/ui/#/instances", s.base)).await.expect("list");
        assert_eq!(until(&c, "the row", &state_js(&name)).await, json!("created"));
        let loads = c.execute("return performance.getEntriesByType('navigation').length;", vec![]).await.expect("js");
        let r = s.call("PUT", &format!("{INSTANCES}/{id}/start"), ADMIN, None);
        assert_eq!(r.status, 200, "{}", r.text);
        until(&c, "running, live", &format!("{} === 'running'", state_js(&name))).await;
        let after = c.execute("return performance.getEntriesByType('navigation').length;", vec![]).await.expect("js");
        assert_eq!(loads, after, "no reload");
        shot(&c, "instances-running").await;

        // Stopped from the page, after a confirmation.
        click(&c, &format!("tr[data-name=\"{name}\"] button[data-act=stop]")).await;
        until(&c, "the confirmation", "document.querySelector('#confirm').open").await;
        shot(&c, "confirm-stop").await;
        click(&c, "#confirm-ok").await;
        until(&c, "stopped", &format!("{} === 'stopped'", state_js(&name))).await;
        assert_eq!(s.get(&format!("{INSTANCES}/{id}")).json["state"], "stopped");

        // A `docker kill` by hand shows.
        let r = s.call("PUT", &format!("{INSTANCES}/{id}/start"), ADMIN, None);
        assert_eq!(r.status, 200, "{}", r.text);
        until(&c, "running again", &format!("{} === 'running'", state_js(&name))).await;
        let killed = Command::new("docker").args(["kill", &name]).output().expect("docker kill");
        assert!(killed.status.success(), "{}", String::from_utf8_lossy(&killed.stderr));
        until(&c, "the kill", &format!("['stopped', 'error'].includes({})", state_js(&name))).await;

        // Its page: details, the logs, then a delete.
        c.goto(&format!("{}/ui/#/instance/{id}", s.base)).await.expect("instance page");
        until(&c, "the logs", &format!("document.querySelector('#logs')?.textContent.includes('hello-from-{name}')")).await;
        assert!(until(&c, "details", "document.querySelector('#inst-props')?.textContent").await
            .as_str()
            .is_some_and(|t| t.contains(&id) && t.contains("64M") && t.contains("app=ui-test")));
        shot(&c, "instance").await;
        click_confirmed(&c, "#inst-actions button[data-act=delete]").await;
        until(&c, "back to the list", "document.querySelector('#instances-page')").await;
        until(&c, "the row gone", &format!("!document.querySelector('tr[data-name=\"{name}\"]')")).await;
        assert_eq!(s.get(&format!("{INSTANCES}/{id}")).status, 404);

        // Backends and operations pages.
        c.goto(&format!("{}/ui/#/backends", s.base)).await.expect("backends");
        until(&c, "the backend", &format!("document.querySelector('main')?.textContent.includes('{backend}')")).await;
        shot(&c, "backends").await;
        c.goto(&format!("{}/ui/#/operations", s.base)).await.expect("operations");
        until(&c, "operations page", "document.querySelector('#ops-table')").await;
        shot(&c, "operations").await;
        c.close().await.expect("close");

        // A viewer, on a narrow screen: no button it cannot use, nothing wider than it.
        let x = unique("uc-ui-v");
        let _g2 = ContainerGuard(x.clone());
        let r = s.call(
            "POST",
            INSTANCES,
            ADMIN,
            Some(&json!({"name": x, "backend": backend, "start": true,
                "config": {"image": TEST_IMAGE, "command": ["sleep", "300"]}})),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        let xid = r.json["id"].as_str().expect("id").to_owned();
        let v = browser(&d, 390, 800).await;
        // By keyboard alone: the token field has the focus; Enter signs in.
        v.goto(&format!("{}/ui/", s.base)).await.expect("open /ui/");
        until(&v, "the focus on the token", "document.activeElement?.id === 'token'").await;
        v.active_element()
            .await
            .expect("the focused field")
            .send_keys(&format!("{VIEWER}\u{E007}"))
            .await
            .expect("type and Enter");
        until(&v, "the instances page", "document.querySelector('#instances-page')").await;
        // Every input of the page has a label.
        let unlabelled = v
            .execute(
                "return [...document.querySelectorAll('input, select, textarea')].filter(e => !e.closest('label') && !e.labels?.length).length;",
                vec![],
            )
            .await
            .expect("js");
        assert_eq!(unlabelled, json!(0));
        assert_eq!(until(&v, "the row", &state_js(&x)).await, json!("running"));
        let buttons = v.execute("return document.querySelectorAll('#rows button').length;", vec![]).await.expect("js");
        assert_eq!(buttons, json!(0));
        let create_hidden = v.execute("return document.querySelector('a[href=\"#/create\"]').hidden;", vec![]).await.expect("js");
        assert_eq!(create_hidden, json!(true));
        let overflow = v
            .execute("return document.documentElement.scrollWidth - window.innerWidth;", vec![])
            .await
            .expect("js");
        assert!(overflow.as_i64().is_some_and(|o| o <= 0), "wider than the screen by {overflow}");
        shot(&v, "viewer-narrow").await;
        v.close().await.expect("close");
        let r = s.call("DELETE", &format!("{INSTANCES}/{xid}?force=true"), ADMIN, None);
        assert_eq!(r.status, 204, "{}", r.text);
    });
    drop(lock);
}

/// The headers of `GET /ui/app.js` (the policy and the type), one a line.
fn headers_of(base: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{base}/ui/app.js"),
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dashboard with the real kvm backend and the bootable test guest: created from
/// the form (the extra configuration as JSON), running live, its boot in the logs,
/// stopped by its own power-off after a confirmation, deleted.
#[test]
fn the_dashboard_drives_a_real_kvm_guest() {
    use unicompute_tests::guest;
    use unicompute_tests::kvm::KvmFixture;
    if skip_requested("UC_SKIP_BROWSER", "the dashboard's browser tests") {
        return;
    }
    let f = KvmFixture::new();
    guest::install(&f.templates(), "guest");
    let s = f.guest_server();
    let name = format!("{}-ui", f.prefix);
    let token = format!("{name}-{}", uuid::Uuid::new_v4());
    let d = driver();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut log = None;
    rt.block_on(async {
        let c = browser(&d, 1280, 800).await;
        sign_in(&c, &s.base, ADMIN).await;
        until(
            &c,
            "the instances page",
            "document.querySelector('#instances-page')",
        )
        .await;
        c.goto(&format!("{}/ui/#/create", s.base))
            .await
            .expect("create page");
        until(
            &c,
            "the template list",
            "[...document.querySelectorAll('#c-image option')].some(o => o.value === 'guest')",
        )
        .await;
        let config =
            json!({"networkType": "none", "cloudInit": {"userData": guest::user_data(&token)}});
        c.execute(
            "document.querySelector('#c-name').value = arguments[0];\
             document.querySelector('#c-image').value = 'guest';\
             document.querySelector('#c-mem').value = arguments[1];\
             document.querySelector('#c-config').value = arguments[2];",
            vec![
                json!(name),
                json!(guest::MEMORY >> 20),
                json!(config.to_string()),
            ],
        )
        .await
        .expect("fill the form");
        click(&c, "#create-form button[type=submit]").await;
        until(
            &c,
            "the new instance's page",
            "document.querySelector('#instance-page')",
        )
        .await;
        let got = s.get(&format!("{INSTANCES}/name/{name}"));
        assert_eq!(got.status, 200, "{}", got.text);
        let id = got.json["id"].as_str().expect("id").to_owned();
        log = Some(std::path::Path::new("/var/log/libvirt/qemu").join(format!("{id}-serial.log")));
        assert_eq!(got.json["type"], "vm");
        assert_eq!(got.json["config"]["networkType"], "none");

        c.goto(&format!("{}/ui/#/instances", s.base))
            .await
            .expect("list");
        until(&c, "running", &format!("{} === 'running'", state_js(&name))).await;
        // The boot in the logs (refreshed until the guest is ready).
        c.goto(&format!("{}/ui/#/instance/{id}", s.base))
            .await
            .expect("instance page");
        let marker = format!("{}{token}", guest::MARKER_SEEN);
        let started = Instant::now();
        loop {
            let text = c
                .execute(
                    "return document.querySelector('#logs')?.textContent || '';",
                    vec![],
                )
                .await
                .expect("js");
            if text
                .as_str()
                .is_some_and(|t| t.contains(&marker) && t.contains(guest::READY))
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "no boot in the logs: {text}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            click(&c, "#logs-refresh").await;
        }
        until(
            &c,
            "usage",
            "document.querySelector('#usage-mem')?.textContent",
        )
        .await;
        // The serial console, from the page: a line typed, the guest's shell answers.
        click(&c, "#console-connect").await;
        until(
            &c,
            "connected",
            "document.querySelector('#console-status')?.textContent === 'Connected'",
        )
        .await;
        let line = c
            .find(Locator::Css("#console-in"))
            .await
            .expect("console input");
        line.send_keys(&format!("echo cons-$((40+2))-{token}\n"))
            .await
            .expect("type");
        until(
            &c,
            "the guest's answer",
            &format!(
                "document.querySelector('#console-out')?.textContent.includes('cons-42-{token}')"
            ),
        )
        .await;
        shot(&c, "kvm-console").await;
        click(&c, "#console-close").await;
        until(
            &c,
            "disconnected",
            "document.querySelector('#console-status')?.textContent.startsWith('Disconnected')",
        )
        .await;
        shot(&c, "kvm-instance").await;
        // Stop after a confirmation: the guest powers itself off.
        click_confirmed(&c, "#inst-actions button[data-act=stop]").await;
        let started = Instant::now();
        while s.get(&format!("{INSTANCES}/{id}")).json["state"] != "stopped" {
            assert!(started.elapsed() < Duration::from_secs(120), "not stopped");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        until(
            &c,
            "stopped on the page",
            "document.querySelector('#inst-title .state')?.textContent === 'stopped'",
        )
        .await;
        click_confirmed(&c, "#inst-actions button[data-act=delete]").await;
        until(
            &c,
            "back to the list",
            "document.querySelector('#instances-page')",
        )
        .await;
        assert_eq!(s.get(&format!("{INSTANCES}/{id}")).status, 404);
        c.close().await.expect("close");
    });
    if let Some(l) = log {
        let _ = std::fs::remove_file(l);
    }
    assert!(f.domains().is_empty(), "left: {:?}", f.domains());
}
