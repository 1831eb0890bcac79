//! `locks.log`: the append-only, fdatasync'd log of safety-critical records —
//! a validator's vote locks and an owner's own batches — written before the
//! vote or batch leaves the node.
//!
//! sled's `flush` is `sync_file_range`, enough for a killed process but not for
//! a lost machine, so these few records get their own file and a real
//! `fdatasync`. Writes are group-committed: one writer thread takes every
//! request waiting, writes them all, syncs once and answers them all.
//!
//! File: the 8-byte magic [`MAGIC`], then records. Record: `len u32 LE |
//! len_check u32 LE | check [u8; 8] | payload`, where `len_check` is a hash of
//! the length alone and `check` the first bytes of blake3 of the payload.
//! Payload `1 | bucket | seq u64 LE | object_id` for a lock, `2 | envelope` for
//! a batch.
//!
//! What open may cut, and nothing else: a **torn last record** — a crash
//! mid-write that was never acknowledged — whose bytes end the file: a header
//! shorter than 16 bytes, a header whose length checks out but whose payload
//! runs past the end, a last record whose payload fails its check, or a tail of
//! zeros (a file extended but never written). A damaged length field, a length
//! over the cap, or a bad record followed by more bytes is corruption: the
//! node refuses to start rather than forget a vote. Because the length has its
//! own check, one flipped bit in it can no longer make every later record look
//! like a torn tail.
//!
//! A write that fails partway (a full disk) is cut back to the last synced
//! length before anything else is appended; if that cut or any sync fails, the
//! writer refuses every later append, so no record ever follows a partial one.
//!
//! Logs written before the magic existed (`len | check | payload`, no file
//! header) are read with the same strict rule and rewritten in this format
//! once, atomically, at open.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

/// Largest record accepted (an owner's batch envelope with its claims).
pub const LOCK_RECORD_MAX_BYTES: usize = 2 * 1024 * 1024;
/// Requests waiting for the writer thread.
pub const LOCK_QUEUE_CAPACITY: usize = 4096;
/// The first bytes of every lock log in the current format.
pub const MAGIC: [u8; 8] = *b"CRDLOCK\x02";
/// Bytes before each record's payload.
const HEADER_BYTES: usize = 16;
/// Bytes before each record's payload in the format without a magic.
const LEGACY_HEADER_BYTES: usize = 12;
/// Largest payload: a batch envelope at the cap plus its tag byte.
const PAYLOAD_MAX_BYTES: usize = LOCK_RECORD_MAX_BYTES + 1;

pub use crate::core::validator::LockRecord;

/// Why the lock log failed.
#[derive(Debug, thiserror::Error)]
pub enum LockLogError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is corrupt at byte {offset}: {message}; it holds vote locks, so the node refuses to start (restore the file from a backup; never delete it on a validator that has voted)"
    )]
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

fn payload_of(record: &LockRecord) -> Vec<u8> {
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
    payload
}

fn len_check(len: [u8; 4]) -> [u8; 4] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"credence/locks.log/len");
    hasher.update(&len);
    let hash = hasher.finalize();
    let mut out = [0u8; 4];
    out.copy_from_slice(&hash.as_bytes()[..4]);
    out
}

fn payload_check(payload: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&blake3::hash(payload).as_bytes()[..8]);
    out
}

fn encode(record: &LockRecord) -> Vec<u8> {
    let payload = payload_of(record);
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len().saturating_add(HEADER_BYTES));
    out.extend_from_slice(&len);
    out.extend_from_slice(&len_check(len));
    out.extend_from_slice(&payload_check(&payload));
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

/// What reading a log's bytes found.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub records: Vec<LockRecord>,
    /// Where the last whole record ends; bytes past it are a torn tail.
    pub good_end: usize,
}

/// A damaged record: where, and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: usize,
    pub message: &'static str,
}

/// A whole log file's bytes, read.
#[derive(Debug, PartialEq, Eq)]
pub enum LogRead {
    /// No file, or only a prefix of the magic (a creation that was torn).
    Empty,
    /// The current format.
    Current(Parsed),
    /// The format without a magic.
    Legacy(Parsed),
}

/// Reads a log file's bytes exactly as [`LockLog::open`] does, touching no
/// file: the records and where the whole ones end, or where the damage is.
pub fn read_log(bytes: &[u8]) -> Result<LogRead, Damage> {
    if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
        Ok(LogRead::Empty)
    } else if bytes.starts_with(&MAGIC) {
        parse(bytes, MAGIC.len(), false).map(LogRead::Current)
    } else {
        parse(bytes, 0, true).map(LogRead::Legacy)
    }
}

/// A whole log file in the current format holding `records`: what
/// [`read_log`] reads back as exactly these records.
pub fn encode_log(records: &[LockRecord]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    for record in records {
        bytes.extend_from_slice(&encode(record));
    }
    bytes
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Reads records from `start`, in the current format (`legacy` false) or the
/// one without a length check (`legacy` true), under the rule in the module
/// comment.
fn parse(bytes: &[u8], start: usize, legacy: bool) -> Result<Parsed, Damage> {
    let header_bytes = if legacy { LEGACY_HEADER_BYTES } else { HEADER_BYTES };
    let mut records = Vec::new();
    let mut offset = start;
    while offset < bytes.len() {
        let rest = bytes.get(offset..).unwrap_or_default();
        let torn = Ok(Parsed {
            records: records.clone(),
            good_end: offset,
        });
        let Some(header) = rest.get(..header_bytes) else {
            return torn; // a torn header: its bytes end the file
        };
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(header.get(..4).unwrap_or(&[0; 4]));
        let check_at: usize = if legacy { 4 } else { 8 };
        if !legacy && header.get(4..8) != Some(&len_check(len_bytes)[..]) {
            if all_zero(rest) {
                return torn; // the file was extended, the write never landed
            }
            return Err(Damage {
                offset,
                message: "the record's length field is damaged",
            });
        }
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > PAYLOAD_MAX_BYTES || len == 0 {
            if legacy && all_zero(rest) {
                return torn;
            }
            return Err(Damage {
                offset,
                message: "the record's length is outside 1..=LOCK_RECORD_MAX_BYTES",
            });
        }
        let Some(payload) = rest.get(header_bytes..header_bytes.saturating_add(len)) else {
            return torn; // the payload runs past the end of the file
        };
        let is_last = header_bytes.saturating_add(len) == rest.len();
        let check_ok = header.get(check_at..check_at.saturating_add(8)) == Some(&payload_check(payload)[..]);
        match (check_ok, decode(payload)) {
            (true, Some(record)) => records.push(record),
            _ if is_last => return torn,
            _ => {
                return Err(Damage {
                    offset,
                    message: "the record's checksum or layout does not match, and more records follow it",
                });
            }
        }
        offset = offset.saturating_add(header_bytes).saturating_add(len);
    }
    Ok(Parsed {
        records,
        good_end: offset,
    })
}

/// fsyncs the directory holding `path`, so a created or renamed file survives
/// a lost machine.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// Rewrites `records` as a fresh log at `path`: a temporary file, synced, then
/// renamed over the old one.
fn rewrite(path: &Path, records: &[LockRecord]) -> std::io::Result<()> {
    let tmp = path.with_extension("log.rewrite");
    let bytes = encode_log(records);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

impl LockLog {
    /// Opens (or creates) the log, returns every record in it and starts the
    /// writer thread. Refuses a damaged log with [`LockLogError::Corrupt`].
    pub fn open(path: &Path) -> Result<(LockLog, Vec<LockRecord>), LockLogError> {
        let open_err = |source| LockLogError::Open {
            path: path.to_path_buf(),
            source,
        };
        let corrupt = |damage: Damage| LockLogError::Corrupt {
            path: path.to_path_buf(),
            offset: damage.offset as u64,
            message: damage.message.into(),
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(open_err(e)),
        };
        let (records, good_end) = match read_log(&bytes).map_err(corrupt)? {
            LogRead::Empty => {
                // New, or its creation was torn before the magic was whole.
                rewrite(path, &[]).map_err(open_err)?;
                (Vec::new(), MAGIC.len())
            }
            LogRead::Current(parsed) => (parsed.records, parsed.good_end),
            LogRead::Legacy(parsed) => {
                // The format without a magic: read strictly, rewritten once.
                rewrite(path, &parsed.records).map_err(open_err)?;
                let len = MAGIC
                    .len()
                    .saturating_add(parsed.records.iter().map(|r| encode(r).len()).sum::<usize>());
                (parsed.records, len)
            }
        };
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(open_err)?;
        let on_disk = file.metadata().map_err(open_err)?.len();
        if (good_end as u64) < on_disk {
            tracing::warn!(
                path = %path.display(),
                cut_bytes = on_disk.saturating_sub(good_end as u64),
                "cutting a torn last record off the lock log (a write that was never acknowledged)"
            );
            file.set_len(good_end as u64).map_err(open_err)?;
            file.sync_data().map_err(open_err)?;
        }
        file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let (tx, rx) = std_mpsc::sync_channel(LOCK_QUEUE_CAPACITY);
        let sink = Writer {
            file,
            good_len: good_end as u64,
            failed: None,
        };
        std::thread::Builder::new()
            .name("locks-log".into())
            .spawn(move || sink.run(rx))
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

/// What the writer thread needs of its file; a trait so tests can make a
/// write fail partway.
trait LogFile: Write {
    fn sync_data(&mut self) -> std::io::Result<()>;
    fn cut_to(&mut self, len: u64) -> std::io::Result<()>;
}

impl LogFile for File {
    fn sync_data(&mut self) -> std::io::Result<()> {
        File::sync_data(self)
    }
    fn cut_to(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)?;
        self.seek(SeekFrom::Start(len))?;
        File::sync_data(self)
    }
}

/// The writer thread's state: the file, how much of it is synced and whole,
/// and why it stopped taking appends, if it has.
struct Writer<F> {
    file: F,
    good_len: u64,
    failed: Option<String>,
}

impl<F: LogFile> Writer<F> {
    fn run(mut self, rx: std_mpsc::Receiver<Request>) {
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
            let result = self.write_group(&buf);
            for request in group {
                let _ = request.reply.send(result.clone());
            }
        }
    }

    /// Writes and syncs one group; on failure leaves the file at its last
    /// whole length or stops taking appends.
    fn write_group(&mut self, buf: &[u8]) -> Result<(), String> {
        if let Some(why) = &self.failed {
            return Err(format!(
                "the lock log stopped taking appends after an earlier failure: {why}"
            ));
        }
        if let Err(e) = self.file.write_all(buf) {
            // Nothing of this group was acknowledged: cut what did land, so
            // the next record follows a whole one.
            let why = format!("write failed: {e}");
            if let Err(cut) = self.file.cut_to(self.good_len) {
                self.failed = Some(format!("{why}; cutting the partial record failed too: {cut}"));
            }
            return Err(why);
        }
        if let Err(e) = self.file.sync_data() {
            // After a failed fsync the kernel may have dropped the pages:
            // nothing later can be trusted to follow them.
            let why = format!("fdatasync failed: {e}");
            let _ = self.file.cut_to(self.good_len);
            self.failed = Some(why.clone());
            return Err(why);
        }
        self.good_len = self.good_len.saturating_add(buf.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(seq: u64) -> LockRecord {
        LockRecord::Vote {
            bucket: [1; 32],
            seq,
            object_id: [2; 32],
        }
    }

    fn write_log(path: &Path, records: &[LockRecord]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for r in records {
            bytes.extend_from_slice(&encode(r));
        }
        std::fs::write(path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        bytes
    }

    #[tokio::test]
    async fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("locks.log");
        let lock = vote(7);
        let batch = LockRecord::OwnBatch { envelope: vec![9; 100] };
        {
            let (log, records) = LockLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(records.is_empty());
            log.append(vec![lock.clone(), batch.clone()])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let whole = std::fs::read(&path).unwrap_or_default();
        // A crash mid-write leaves half a record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&encode(&lock)[..20]).unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        let (_, records) = LockLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(records, vec![lock.clone(), batch]);
        assert_eq!(
            std::fs::read(&path).unwrap_or_default(),
            whole,
            "only the torn bytes are cut"
        );
        // Corruption in the middle refuses the start.
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        bytes[MAGIC.len() + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(LockLog::open(&path), Err(LockLogError::Corrupt { .. })));
        assert_eq!(
            std::fs::read(&path).unwrap_or_default(),
            bytes,
            "a refused log is left as it was"
        );
    }

    #[test]
    fn a_damaged_length_field_refuses_the_start_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("locks.log");
        let records = [vote(1), vote(2), vote(3)];
        let good = write_log(&path, &records);
        // Every bit of every length field, in every record.
        let record_len = encode(&vote(1)).len();
        for record in 0..3 {
            for byte in 0..4 {
                for bit in 0..8 {
                    let mut bytes = good.clone();
                    bytes[MAGIC.len() + record * record_len + byte] ^= 1 << bit;
                    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
                    let opened = LockLog::open(&path);
                    assert!(
                        matches!(opened, Err(LockLogError::Corrupt { .. })),
                        "record {record} byte {byte} bit {bit}: {:?}",
                        opened.map(|(_, r)| r.len())
                    );
                    assert_eq!(std::fs::read(&path).unwrap_or_default(), bytes);
                }
            }
        }
        // The case as found: byte 3 of the first record's length XOR 0x32.
        let mut bytes = good.clone();
        bytes[MAGIC.len() + 3] ^= 0x32;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let err = LockLog::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("refuses to start") && err.contains("length"), "{err}");
    }

    #[test]
    fn a_damaged_log_without_the_magic_refuses_the_start_too() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("locks.log");
        // The format before the magic: `len | check | payload`.
        let legacy = |r: &LockRecord| {
            let payload = payload_of(r);
            let mut out = (payload.len() as u32).to_le_bytes().to_vec();
            out.extend_from_slice(&payload_check(&payload));
            out.extend_from_slice(&payload);
            out
        };
        let good: Vec<u8> = [vote(1), vote(2), vote(3)].iter().flat_map(legacy).collect();
        let mut damaged = good.clone();
        damaged[3] ^= 0x32;
        std::fs::write(&path, &damaged).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(LockLog::open(&path), Err(LockLogError::Corrupt { .. })));
        assert_eq!(std::fs::read(&path).unwrap_or_default(), damaged);
        // Whole, it is read and rewritten with the magic, losing nothing.
        std::fs::write(&path, &good).unwrap_or_else(|e| panic!("{e}"));
        let (_, records) = LockLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(records, vec![vote(1), vote(2), vote(3)]);
        assert!(std::fs::read(&path).unwrap_or_default().starts_with(&MAGIC));
        let (_, again) = LockLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, records);
    }

    #[test]
    fn only_a_torn_last_record_is_cut() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("locks.log");
        let good = write_log(&path, &[vote(1), vote(2)]);
        let third = encode(&vote(3));
        // Every prefix of a third record, and a zero-filled extension.
        for cut in 1..third.len() {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&third[..cut]);
            std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
            let (_, records) = LockLog::open(&path).unwrap_or_else(|e| panic!("prefix {cut}: {e}"));
            assert_eq!(records, vec![vote(1), vote(2)], "prefix {cut}");
            assert_eq!(std::fs::read(&path).unwrap_or_default(), good);
        }
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[0; 300]);
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let (_, records) = LockLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(records.len(), 2);
        // A last record whose payload is damaged but whose bytes end the file.
        let mut bytes = good.clone();
        let mut last = third.clone();
        let n = last.len();
        last[n - 1] ^= 1;
        bytes.extend_from_slice(&last);
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let (_, records) = LockLog::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(records.len(), 2);
        // The same damage with a record after it is corruption.
        let mut bytes = good.clone();
        bytes.extend_from_slice(&last);
        bytes.extend_from_slice(&encode(&vote(4)));
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(LockLog::open(&path), Err(LockLogError::Corrupt { .. })));
    }

    /// A file whose writes land only `room` bytes and then fail, like a disk
    /// that fills up mid-write.
    struct FullDisk {
        bytes: Vec<u8>,
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room.saturating_sub(self.bytes.len()));
            if n == 0 {
                return Err(std::io::Error::other("no space left on device"));
            }
            self.bytes.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl LogFile for FullDisk {
        fn sync_data(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn cut_to(&mut self, len: u64) -> std::io::Result<()> {
            self.bytes.truncate(len as usize);
            Ok(())
        }
    }

    #[test]
    fn a_write_that_fails_partway_leaves_no_partial_record_behind() {
        let one = encode(&vote(1));
        let mut writer = Writer {
            file: FullDisk {
                bytes: MAGIC.to_vec(),
                room: MAGIC.len() + one.len() + one.len() / 2,
            },
            good_len: MAGIC.len() as u64,
            failed: None,
        };
        assert_eq!(writer.write_group(&one), Ok(()));
        // The second record fits only in half: the write fails and is cut.
        assert!(writer.write_group(&encode(&vote(2))).is_err());
        let mut expected = MAGIC.to_vec();
        expected.extend_from_slice(&one);
        assert_eq!(writer.file.bytes, expected);
        // Room again: the next record follows the whole first one.
        writer.file.room = usize::MAX;
        assert_eq!(writer.write_group(&encode(&vote(3))), Ok(()));
        let parsed = parse(&writer.file.bytes, MAGIC.len(), false);
        assert_eq!(parsed.map(|p| p.records), Ok(vec![vote(1), vote(3)]));
    }
}
