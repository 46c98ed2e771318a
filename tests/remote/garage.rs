//! A real S3-compatible server for tests and benchmarks: one Garage node on
//! loopback, in a temp directory, with one bucket and one access key, killed
//! when dropped. `scripts/setup.sh` installs the `garage` binary.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};

pub const BUCKET: &str = "xtr-cache";
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e7abcd";
const RPC_SECRET: &str = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

pub struct Garage {
    dir: tempfile::TempDir,
    pub port: u16,
    rpc_port: u16,
    child: Option<Child>,
    binary: PathBuf,
}

/// The installed `garage`: `$XTR_GARAGE`, else on `PATH`, else cargo's bin dir.
/// Absent, the test fails and says how to install it.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("XTR_GARAGE") {
        return PathBuf::from(p);
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the Garage server binary (`garage`) is not installed: run `bash scripts/setup.sh` \
                 (it builds garage 2.5.0 with cargo install, once per machine), or set XTR_GARAGE"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Garage {
    /// Start a node and wait until its bucket answers.
    pub fn start() -> Garage {
        let binary = binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut g = Garage {
            port: free_port(),
            rpc_port: free_port(),
            dir,
            child: None,
            binary,
        };
        g.write_config();
        g.launch();
        g
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let config = format!(
            "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{RPC_SECRET}\"\n\n\
             [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
             root_domain = \".s3.garage.localhost\"\n",
            meta = d.join("meta").display(),
            data = d.join("data").display(),
            rpc = self.rpc_port,
            s3 = self.port,
        );
        std::fs::write(self.config_path(), config).expect("write garage.toml");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }

    /// Start the server (again, on the same data and ports) and wait for it.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "garage is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("garage log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", KEY_ID)
            .env("GARAGE_DEFAULT_SECRET_KEY", SECRET)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(90));
    }

    /// Poll the bucket until it answers (the server creates it at start-up).
    fn wait_ready(&mut self, limit: Duration) {
        let rt = runtime();
        let client = self.client();
        let start = Instant::now();
        loop {
            let ok = rt
                .block_on(async {
                    use futures::TryStreamExt;
                    use object_store::ObjectStore;
                    tokio::time::timeout(
                        Duration::from_secs(2),
                        client.list(None).try_collect::<Vec<_>>(),
                    )
                    .await
                })
                .is_ok_and(|r| r.is_ok());
            if ok {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "garage exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                start.elapsed() < limit,
                "garage did not answer within {limit:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kill the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The AWS environment a client of this server needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_REGION", "garage".to_string()),
        ]
    }

    /// A raw S3 client, for what xtr-pipe would never do (corrupting objects).
    pub fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("garage")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .build()
            .expect("s3 client")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
