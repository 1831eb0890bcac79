//! `locks.log`: the append-only, fdatasync'd log of safety-critical records —
//! a validator's vote locks and an owner's own batches — written before the
//! vote or batch leaves the node.
//!
//! sled's `flush` is `sync_file_range`, enough for a killed process but not for
//! a lost machine, so these few records get their own file and a real
//! `fdatasync`. Writes are group-committed: one writer thread takes every
//! request waiting, writes them all, syncs once and answers them all.
//!
//! Record: `len u32 LE | check [u8; 8] (blake3 of payload) | payload`, payload
//! `1 | bucket | seq u64 LE | object_id` for a lock, `2 | envelope` for a batch.
//! A torn record at the end (a crash mid-write, never acknowledged) is cut off
//! on open; a bad record anywhere else is corruption and refuses the start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

/// Largest record accepted (an owner's batch envelope with its claims).
pub const LOCK_RECORD_MAX_BYTES: usize = 2 * 1024 * 1024;
/// Requests waiting for the writer thread.
pub const LOCK_QUEUE_CAPACITY: usize = 4096;

/// A safety-critical record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockRecord {
    /// "I voted for `object_id` at `(bucket, seq)`."
    Vote {
        bucket: [u8; 32],
        seq: u64,
        object_id: [u8; 32],
    },
    /// An owner's own signed batch (encoded `Signed`), before it is sent.
    OwnBatch { envelope: Vec<u8> },
}

/// Why the lock log failed.
#[derive(Debug, thiserror::Error)]
pub enum LockLogError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt at byte {offset}: {message}; it holds vote locks, so the node refuses to start")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        message: String,
    },
    #[error("writing the lock log failed: {0}")]
    Write(String),
    #[error("lock record of {0} bytes is over the cap")]
    TooLarge(usize),
    #[error("the lock log writer has stopped")]
    Stopped,
}

struct Request {
    records: Vec<LockRecord>,
    reply: oneshot::Sender<Result<(), String>>,
}

/// Handle to the lock log; cheap to clone.
#[derive(Clone, Debug)]
pub struct LockLog {
    tx: std_mpsc::SyncSender<Request>,
}

fn encode(record: &LockRecord) -> Vec<u8> {
    let mut payload = Vec::new();
    match record {
        LockRecord::Vote { bucket, seq, object_id } => {
            payload.push(1);
            payload.extend_from_slice(bucket);
            payload.extend_from_slice(&seq.to_le_bytes());
            payload.extend_from_slice(object_id);
        }
        LockRecord::OwnBatch { envelope } => {
            payload.push(2);
            payload.extend_from_slice(envelope);
        }
    }
    let mut out = Vec::with_capacity(payload.len().saturating_add(12));
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&blake3::hash(&payload).as_bytes()[..8]);
    out.extend_from_slice(&payload);
    out
}

fn decode(payload: &[u8]) -> Option<LockRecord> {
    let (tag, rest) = payload.split_first()?;
    match tag {
        1 if rest.len() == 72 => {
            let bucket: [u8; 32] = rest.get(..32)?.try_into().ok()?;
            let seq = u64::from_le_bytes(rest.get(32..40)?.try_into().ok()?);
            let object_id: [u8; 32] = rest.get(40..72)?.try_into().ok()?;
            Some(LockRecord::Vote { bucket, seq, object_id })
        }
        2 => Some(LockRecord::OwnBatch {
            envelope: rest.to_vec(),
        }),
        _ => None,
    }
}

impl LockLog {
    /// Opens (or creates) the log, returns every record in it and starts the
    /// writer thread.
    pub fn open(path: &Path) -> Result<(LockLog, Vec<LockRecord>), LockLogError> {
        let open_err = |source| LockLogError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(open_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(open_err)?;
        let mut records = Vec::new();
        let mut offset = 0usize;
        let mut good_end = 0usize;
        while offset < bytes.len() {
            let Some(header) = bytes.get(offset..offset.saturating_add(12)) else {
                break; // torn header at the end
            };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let end = offset.saturating_add(12).saturating_add(len);
            let Some(payload) = bytes.get(offset.saturating_add(12)..end) else {
                break; // torn payload at the end
            };
            let check_ok = &blake3::hash(payload).as_bytes()[..8] == header.get(4..12).unwrap_or_default();
            match (check_ok, decode(payload)) {
                (true, Some(record)) => records.push(record),
                _ if end == bytes.len() => break, // a torn last record
                _ => {
                    return Err(LockLogError::Corrupt {
                        path: path.to_path_buf(),
                        offset: offset as u64,
                        message: "record checksum or layout does not match".into(),
                    });
                }
            }
            offset = end;
            good_end = end;
        }
        if good_end < bytes.len() {
            file.set_len(good_end as u64).map_err(open_err)?;
            file.sync_data().map_err(open_err)?;
        }
        file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let (tx, rx) = std_mpsc::sync_channel(LOCK_QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("locks-log".into())
            .spawn(move || writer(file, rx))
            .map_err(open_err)?;
        Ok((LockLog { tx }, records))
    }

    /// Appends records and returns once they are on disk (fdatasync).
    pub async fn append(&self, records: Vec<LockRecord>) -> Result<(), LockLogError> {
        for r in &records {
            if let LockRecord::OwnBatch { envelope } = r
                && envelope.len() > LOCK_RECORD_MAX_BYTES
            {
                return Err(LockLogError::TooLarge(envelope.len()));
            }
        }
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.clone();
        // The channel is bounded; a full queue blocks this task, not the runtime.
        tokio::task::spawn_blocking(move || tx.send(Request { records, reply }))
            .await
            .map_err(|_| LockLogError::Stopped)?
            .map_err(|_| LockLogError::Stopped)?;
        rx.await
            .map_err(|_| LockLogError::Stopped)?
            .map_err(LockLogError::Write)
    }

    /// Appends and syncs one request at a time, without grouping: only for
    /// the benchmark that measures what group commit saves.
    pub fn append_single_sync(file: &mut File, record: &LockRecord) -> std::io::Result<()> {
        file.write_all(&encode(record))?;
        file.sync_data()
    }
}

fn writer(mut file: File, rx: std_mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let mut buf = Vec::new();
        for request in &group {
            for record in &request.records {
                buf.extend_from_slice(&encode(record));
            }
        }
        let result = file
            .write_all(&buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| e.to_string());
        for request in group {
            let _ = request.reply.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("locks.log");
        let lock = LockRecord::Vote {
            bucket: [1; 32],
            seq: 7,
            object_id: [2; 32],
        };
        let batch = LockRecord::OwnBatch { envelope: vec![9; 100] };
        {
            let (log, records) = LockLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(records.is_empty());
            log.append(vec![lock.clone(), batch.clone()])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // A crash mid-write leaves half a record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&encode(&lock)[..20]).unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        let (_, records) = LockLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(records, vec![lock.clone(), batch]);
        // Corruption in the middle refuses the start.
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        bytes[14] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(LockLog::open(&path), Err(LockLogError::Corrupt { .. })));
    }
}
