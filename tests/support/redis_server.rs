//! A `redis-server` of a test's own, on a free port: a child process, killed on drop, so a test
//! can kill, pause and restart it without touching other tests. `redis-server` must be on PATH
//! (scripts/test.sh installs it); a missing server fails the test, nothing skips itself.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

pub const NOT_INSTALLED: &str = "redis-server is not on PATH. Run scripts/test.sh, which installs it \
     (apt-get install -y redis-server) before running the tests.";

/// A `redis-server` child on `port`; killed on drop.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// A server on a free port.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// A server on `port`.
    pub async fn start_on(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    /// A server on `port` with extra `redis-server` arguments.
    pub async fn start_with(port: u16, extra: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => panic!("{NOT_INSTALLED}"),
                _ => panic!("cannot start redis-server: {e}. {NOT_INSTALLED}"),
            });
        let server = Self {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port).await {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not answer PING within 10 s"
            );
            sleep(Duration::from_millis(20)).await;
        }
        server
    }

    /// A plain fred client connected to it, for looking at what was written.
    pub async fn client(&self) -> fred::clients::Client {
        use fred::interfaces::ClientLike;
        let config = fred::types::config::Config::from_url(&self.url()).unwrap();
        let client = fred::types::Builder::from_config(config).build().unwrap();
        client.init().await.unwrap();
        client
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the connection drops at once, as when a Redis host dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT: connections stay open but nothing answers, as with a hung Redis.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process must be continued to die promptly on some kernels.
            let _ = self.child.as_ref().map(|c| {
                Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status()
            });
        }
        self.kill();
    }
}

/// A local Redis Cluster of three masters and no replicas, each a [`RedisServer`] of its own;
/// every node is killed on drop.
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with `redis-cli --cluster create`, and
    /// waits until the cluster says `cluster_state:ok`.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dir_arg = dir.path().to_str().unwrap().to_owned();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = format!("nodes-{port}.conf");
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.as_str(),
                "--dir",
                dir_arg.as_str(),
            ];
            nodes.push(RedisServer::start_with(port, &extra).await);
        }
        let cluster = Self { nodes, _dir: dir };
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.addrs())
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}. {NOT_INSTALLED}"));
        assert!(created.success(), "redis-cli --cluster create failed");
        // Every node must agree before a client asks any of them for the slot map.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = cluster.nodes.iter().all(|node| {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                let info = String::from_utf8_lossy(&info.stdout);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
            if ok {
                return cluster;
            }
            assert!(Instant::now() < deadline, "the cluster never became ok");
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// `127.0.0.1:PORT` of each master.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// `redis-cluster://first?node=second&node=third`, as fred (and the config) take it.
    pub fn url(&self) -> String {
        let a = self.addrs();
        format!("redis-cluster://{}?node={}&node={}", a[0], a[1], a[2])
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Whether something on `port` answers `PING` with `+PONG` within 200 ms.
pub async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        timeout(Duration::from_millis(200), attempt).await,
        Ok(Some(true))
    )
}
