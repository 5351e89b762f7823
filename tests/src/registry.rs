//! A private image registry for the pull tests: Debian's `docker-registry` serving
//! on 127.0.0.1 at a free port with a temporary storage directory, killed when
//! dropped (also when the test fails). The engine treats registries on 127.0.0.0/8
//! as insecure by default, so plain HTTP works and nothing leaves loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::docker::{docker, ensure_image, TEST_IMAGE};
use crate::TempDir;

/// A registry running on loopback.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    dir: TempDir,
    /// References pushed or pulled through it, removed from the engine at drop.
    images: Vec<String>,
}

/// Whether the registry answers its API root.
fn answers(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

impl Registry {
    /// Starts one (a few tries: the free port may be taken between its pick and the
    /// registry's bind).
    pub fn start() -> Registry {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let addr = format!("127.0.0.1:{port}");
            let dir = TempDir::new("uc-registry");
            let config = dir.0.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n",
                    dir.0.join("data").display()
                ),
            )
            .expect("registry config");
            let log = std::fs::File::create(dir.0.join("registry.log")).expect("log");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("docker-registry (Debian package docker-registry; scripts/test-env.sh installs it)");
            let mut reg = Registry {
                child,
                addr,
                dir,
                images: Vec::new(),
            };
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until {
                if answers(&reg.addr) {
                    return reg;
                }
                if let Ok(Some(_)) = reg.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let log = std::fs::read_to_string(reg.dir.0.join("registry.log")).unwrap_or_default();
            eprintln!("registry at {} did not come up: {log}", reg.addr);
        }
        panic!("no registry could be started on 127.0.0.1");
    }

    /// A reference in this registry (`127.0.0.1:PORT/name:tag`), removed from the
    /// engine at drop.
    pub fn reference(&mut self, name: &str, tag: &str) -> String {
        let r = format!("{}/{name}:{tag}", self.addr);
        self.images.push(r.clone());
        r
    }

    /// Pushes an image named `name:1` made of the local test image and one layer of
    /// `mib` MiB of random bytes, then removes it from the engine, so that a pull
    /// downloads that layer. Answers the reference.
    pub fn push_image(&mut self, name: &str, mib: usize) -> String {
        ensure_image();
        let reference = self.reference(name, "1");
        let blob = self.dir.0.join("blob");
        let mut random = std::fs::File::open("/dev/urandom").expect("urandom");
        let mut out = std::fs::File::create(&blob).expect("blob");
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..mib {
            random.read_exact(&mut chunk).expect("random");
            out.write_all(&chunk).expect("write blob");
        }
        drop(out);
        // create + cp + commit: one more layer, without a builder.
        let container = format!("{name}-build");
        let (ok, _) = docker(&["create", "--name", &container, TEST_IMAGE]);
        assert!(ok, "docker create");
        let blob_s = blob.to_string_lossy().into_owned();
        let copied = docker(&["cp", &blob_s, &format!("{container}:/blob")]).0;
        let committed = copied && docker(&["commit", &container, &reference]).0;
        let _ = docker(&["rm", "-f", &container]);
        let _ = std::fs::remove_file(&blob);
        assert!(copied && committed, "docker cp/commit of the test layer");
        let (pushed, out) = docker(&["push", &reference]);
        assert!(pushed, "docker push {reference}: {out}");
        let (removed, _) = docker(&["rmi", &reference]);
        assert!(removed, "docker rmi {reference}");
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in &self.images {
            let _ = docker(&["rmi", "-f", r]);
        }
    }
}
