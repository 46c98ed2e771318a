//! Push and pull throughput of the remote artifact cache against a Garage node on
//! loopback, for one 1 GB artifact and for one of 10,000 small files, with
//! `aws s3 sync` and `rclone copy` moving the same amount of data in the same
//! run. Each tool gets its own random bytes (Garage deduplicates blocks, so
//! reused content would flatter whoever goes second).
//!
//! `cargo bench --bench remote` (release). `XTR_BENCH_GB=0.1` shrinks the
//! large case for a quick look.

#[path = "../tests/remote/garage.rs"]
mod garage;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use indicatif::ProgressBar;
use xtr_pipe::cancel::CancelToken;
use xtr_pipe::store::remote::{AwsSettings, Remote};
use xtr_pipe::store::{ArtifactKey, Manifest, Recipe, Store};

const SMALL_FILES: usize = 10_000;

fn main() {
    let gb: f64 = std::env::var("XTR_BENCH_GB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let g = garage::Garage::start();
    let work = tempfile::tempdir().expect("temp dir");
    let aws = AwsSettings {
        access_key_id: Some(garage::KEY_ID.into()),
        secret_access_key: Some(garage::SECRET.into()),
        region: Some("garage".into()),
        endpoint: Some(g.endpoint()),
        ..AwsSettings::default()
    };
    let remote = Remote::connect_with(&g.url("bench"), &aws).expect("connect");
    let big = (gb * 1e9) as u64;
    println!("| case | tool | push MB/s | pull MB/s | push s | pull s |");
    println!("|---|---|---|---|---|---|");
    for (case, shape) in [
        (
            format!("1 file, {:.2} GB", big as f64 / 1e9),
            Shape::Big(big),
        ),
        (format!("{SMALL_FILES} files of 1-4 KB"), Shape::Small),
    ] {
        let dir = work.path().join(case.replace([' ', ','], "_"));
        let (bytes, push, pull) = xtr_pipe_round_trip(&remote, &dir.join("xtr"), &shape, 1);
        row(&case, "xtr-pipe push/pull", bytes, push, pull);
        let (bytes, push, pull) = peer_round_trip(&g, &dir.join("aws"), &shape, 2, Peer::Aws);
        row(&case, "aws s3 sync", bytes, push, pull);
        let (bytes, push, pull) = peer_round_trip(&g, &dir.join("rclone"), &shape, 3, Peer::Rclone);
        row(&case, "rclone copy", bytes, push, pull);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

enum Shape {
    Big(u64),
    Small,
}

/// Write the case's files under `out`, with bytes drawn from `seed`; total bytes.
fn make_files(out: &Path, shape: &Shape, seed: u64) -> u64 {
    std::fs::create_dir_all(out).expect("mkdir");
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    match shape {
        Shape::Big(size) => {
            use std::io::Write;
            let mut f = std::fs::File::create(out.join("big.bin")).expect("create");
            let mut buf = vec![0u8; 8 << 20];
            let mut left = *size;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                xof.fill(&mut buf[..n]);
                f.write_all(&buf[..n]).expect("write");
                left -= n as u64;
            }
            *size
        }
        Shape::Small => {
            let mut total = 0;
            for i in 0..SMALL_FILES {
                let mut buf = vec![0u8; 1024 + (i * 7919) % 3072];
                xof.fill(&mut buf);
                let sub = out.join(format!("d{:02}", i % 100));
                std::fs::create_dir_all(&sub).expect("mkdir");
                std::fs::write(sub.join(format!("f{i}.bin")), &buf).expect("write");
                total += buf.len() as u64;
            }
            total
        }
    }
}

/// Publish an artifact in a fresh store, push it, pull it into another store.
fn xtr_pipe_round_trip(remote: &Remote, dir: &Path, shape: &Shape, seed: u64) -> (u64, f64, f64) {
    let cancel = CancelToken::new();
    let bar = ProgressBar::hidden();
    let store = Store::open(&dir.join("a")).expect("store");
    let recipe = Recipe {
        kind: "bench".into(),
        version: seed as u32,
        params: serde_json::json!({ "shape": matches!(shape, Shape::Big(_)) }),
        inputs: Default::default(),
        files: Default::default(),
    };
    let key = recipe.key();
    let bytes = {
        let lock = store.lock_key(&key, &cancel, || {}).expect("lock");
        let staging = store.stage_dir(&key, &lock).expect("staging");
        let bytes = make_files(&staging.out_dir(), shape, seed);
        staging
            .publish(&store, manifest(&key, recipe))
            .expect("publish");
        bytes
    };
    let start = Instant::now();
    let up = remote
        .upload(&store, &key, false, &bar, &cancel)
        .expect("push");
    let push = start.elapsed().as_secs_f64();
    assert!(!up.already);
    let other = Store::open(&dir.join("b")).expect("store");
    let start = Instant::now();
    let artifact = remote
        .artifact(&key)
        .expect("manifest")
        .expect("on the remote");
    let lock = other.lock_key(&key, &cancel, || {}).expect("lock");
    remote
        .download(&other, &artifact, &lock, &bar, &cancel)
        .expect("pull");
    let pull = start.elapsed().as_secs_f64();
    (bytes, push, pull)
}

fn manifest(key: &ArtifactKey, recipe: Recipe) -> Manifest {
    Manifest {
        schema: 1,
        key: key.clone(),
        stage: "bench".into(),
        kind: "bench".into(),
        version: recipe.version,
        started_unix: 0.0,
        finished_unix: 0.0,
        files: Vec::new(),
        metrics: Default::default(),
        recipe,
    }
}

#[derive(Clone, Copy)]
enum Peer {
    Aws,
    Rclone,
}

/// The same data through a peer tool: upload a directory, download it again.
fn peer_round_trip(
    g: &garage::Garage,
    dir: &Path,
    shape: &Shape,
    seed: u64,
    peer: Peer,
) -> (u64, f64, f64) {
    let src = dir.join("src");
    let dst = dir.join("dst");
    let bytes = make_files(&src, shape, seed);
    let name = match peer {
        Peer::Aws => "aws",
        Peer::Rclone => "rclone",
    };
    let remote = format!("{}/peer-{name}-{seed}", garage::BUCKET);
    let run = |from: &str, to: &str| {
        let mut cmd = match peer {
            Peer::Aws => {
                let mut c = Command::new("aws");
                c.args([
                    "--endpoint-url",
                    &g.endpoint(),
                    "s3",
                    "sync",
                    "--only-show-errors",
                ]);
                c
            }
            Peer::Rclone => {
                let mut c = Command::new("rclone");
                c.args(["copy", "--transfers", "16", "--checkers", "16"]);
                c
            }
        };
        // A CA bundle in the environment (for https) makes rclone's S3 client fail on http.
        cmd.args([from, to])
            .env_remove("AWS_CA_BUNDLE")
            .env("AWS_ACCESS_KEY_ID", garage::KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", garage::SECRET)
            .env("AWS_DEFAULT_REGION", "garage")
            .env("RCLONE_CONFIG_G_TYPE", "s3")
            .env("RCLONE_CONFIG_G_PROVIDER", "Other")
            .env("RCLONE_CONFIG_G_ENDPOINT", g.endpoint())
            .env("RCLONE_CONFIG_G_REGION", "garage")
            .env("RCLONE_CONFIG_G_ACCESS_KEY_ID", garage::KEY_ID)
            .env("RCLONE_CONFIG_G_SECRET_ACCESS_KEY", garage::SECRET);
        let start = Instant::now();
        let status = cmd.status().unwrap_or_else(|e| {
            panic!("{name}: {e} (install it: pip install awscli / apt-get install rclone)")
        });
        assert!(status.success(), "{name} failed");
        start.elapsed().as_secs_f64()
    };
    let url = match peer {
        Peer::Aws => format!("s3://{remote}"),
        Peer::Rclone => format!("g:{remote}"),
    };
    let push = run(&src.to_string_lossy(), &url);
    let pull = run(&url, &dst.to_string_lossy());
    (bytes, push, pull)
}

fn row(case: &str, tool: &str, bytes: u64, push: f64, pull: f64) {
    let mb = bytes as f64 / 1e6;
    println!(
        "| {case} | {tool} | {:.0} | {:.0} | {push:.2} | {pull:.2} |",
        mb / push,
        mb / pull
    );
}
