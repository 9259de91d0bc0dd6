//! A real `redis-server` for tests (the engine's and the cluster integration tests): a free loopback port, AOF with an fsync per
//! write (as production is configured), a temporary directory, stopped on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One redis-server process.
pub struct TestRedis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts redis-server and waits until it answers.
    pub fn start() -> TestRedis {
        // A port picked free can be taken before redis-server binds it (tests run in
        // parallel): then redis-server exits, and another port is tried.
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut r = TestRedis {
                child: None,
                port,
                dir: tempfile::tempdir().unwrap(),
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts redis-server on `self.port`; false when it exited (the port was taken).
    fn spawn(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
                if child.try_wait().ok().flatten().is_some() {
                    return false;
                }
                self.child = Some(child);
                return true;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills redis-server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills and starts it again on the same port and directory (the AOF is replayed).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not restart on its port");
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
