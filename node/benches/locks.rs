//! Group-committed lock writes against one fdatasync per write, on the same
//! disk in one run: `cargo bench -p credence --bench locks [-- N]`.
//!
//! Single: one record, one `fdatasync`, N times. Group: N records from
//! `WRITERS` concurrent tasks through `LockLog`, whose writer thread syncs
//! once for every request waiting.

use std::time::Instant;

use credence::store::locks::{LockLog, LockRecord};

const WRITERS: usize = 64;

fn record(i: u64) -> LockRecord {
    LockRecord::Vote {
        bucket: *blake3::hash(&i.to_le_bytes()).as_bytes(),
        seq: i,
        object_id: [7; 32],
    }
}

fn main() {
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2_000);
    let dir = tempfile::tempdir().expect("temp dir");

    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("single.log"))
        .expect("open");
    let start = Instant::now();
    for i in 0..n {
        LockLog::append_single_sync(&mut file, &record(i)).expect("append");
    }
    let single = n as f64 / start.elapsed().as_secs_f64();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let group = runtime.block_on(async {
        let (log, _) = LockLog::open(&dir.path().join("group.log")).expect("open");
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..WRITERS as u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    log.append(vec![record(i)]).await.expect("append");
                    i += WRITERS as u64;
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        n as f64 / start.elapsed().as_secs_f64()
    });
    println!("lock records: {n}, {WRITERS} concurrent writers for group commit");
    println!("one fdatasync per write : {single:>10.0} writes/s");
    println!("group commit            : {group:>10.0} writes/s");
    println!("ratio (group / single)  : {:>10.1}", group / single);
}
