//! The runner at scale, held by counts rather than timings (which CI cannot
//! keep): a no-op run over a 20,000-file tree that 20 stages declare walks the
//! tree once, digests it once, and copies no listing per stage — counted by the
//! hasher's instruments and by this binary's allocator.
//!
//! One test in its own binary: the allocation counter sees every thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use xtr_pipe::cancel::CancelToken;
use xtr_pipe::exec::{self, RunOptions, Status, Workspace};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        ALLOCATED.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        ALLOCATED.fetch_add(new_size.saturating_sub(layout.size()) as u64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FILES: usize = 20_000;
const STAGES: usize = 20;

#[test]
fn a_no_op_walks_a_shared_tree_once_and_copies_no_listing_per_stage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Old enough for the file-hash cache to trust (outside its racy window).
    let old = SystemTime::now() - Duration::from_secs(60);
    for i in 0..FILES {
        let path = root.join(format!("src/d{:03}/file-{i:05}.txt", i % 200));
        if i < 200 {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        }
        let f = std::fs::File::create(&path).unwrap();
        use std::io::Write;
        (&f).write_all(format!("file {i}\n").as_bytes()).unwrap();
        f.set_modified(old).unwrap();
    }
    let mut toml = String::from("[pipeline]\nname = \"scale\"\n");
    for s in 0..STAGES {
        let needs = if s > 0 {
            format!("needs = [\"s{:02}\"]\n", s - 1)
        } else {
            String::new()
        };
        toml.push_str(&format!(
            "[stage.s{s:02}]\nkind = \"cmd\"\n{needs}cmd = \"echo {s} > $XTR_OUT/out.txt\"\ndeps = [\"src\"]\n"
        ));
    }
    std::fs::write(root.join("p.toml"), toml).unwrap();
    let pipeline = exec::load(&root.join("p.toml"), &[]).unwrap();
    let opts = RunOptions {
        jobs: 2,
        ..RunOptions::default()
    };
    let run = || {
        let mut ws = Workspace::open(&pipeline).unwrap();
        let plan = exec::plan(&pipeline, &mut ws, &opts).unwrap();
        let report = exec::execute(&pipeline, &mut ws, plan, &opts, &CancelToken::new()).unwrap();
        (ws.hasher.stats(), report)
    };
    let (first, report) = run();
    assert!(report.stages.iter().all(|s| s.status == Status::Ran));
    assert_eq!(first.files_hashed, FILES as u64, "{first:?}");

    let (allocs, bytes) = (ALLOCATIONS.load(Relaxed), ALLOCATED.load(Relaxed));
    let (stats, report) = run();
    let allocs = ALLOCATIONS.load(Relaxed) - allocs;
    let bytes = ALLOCATED.load(Relaxed) - bytes;
    assert!(report.stages.iter().all(|s| s.status == Status::Cached));
    // One walk and one digest of the tree, whatever the number of stages.
    assert_eq!(stats.files_statted, FILES as u64, "{stats:?}");
    assert_eq!(stats.dirs_listed, 201, "{stats:?}");
    assert_eq!(stats.trees_digested, 1, "{stats:?}");
    assert_eq!(stats.files_hashed, 0, "{stats:?}");
    // Every file of the tree once, and each stage's one output file.
    assert_eq!(stats.cache_hits, (FILES + STAGES) as u64, "{stats:?}");
    // A copy of the listing per stage would be at least one allocation per file
    // per stage (400,000 here) and tens of MB (the listings the runner used to
    // copy were ~130 bytes a file: 52 MB for 20 stages). The whole no-op run
    // allocates a small multiple of the tree once: the file-hash cache (~250
    // bytes a file with its growth), the walk's transient directory entries and
    // the shared listing (~50 bytes a file).
    let per_file = allocs as f64 / FILES as f64;
    eprintln!("no-op: {allocs} allocations ({per_file:.2} a file), {bytes} bytes allocated");
    assert!(per_file < 4.0, "{allocs} allocations for {FILES} files");
    assert!(
        bytes < 1000 * FILES as u64,
        "{bytes} bytes allocated for {FILES} files"
    );
}
