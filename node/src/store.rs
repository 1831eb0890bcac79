//! The node's durable state on sled: the only module that touches sled.
//!
//! Trees carry a version in their name (`credlog/v1`), and `meta/v1` holds the
//! schema version and the network id, so a data directory from another network
//! or an incompatible version is refused at start instead of misread.
//!
//! **Invariant:** only envelopes whose signature verified and that the core
//! accepted are appended to the credential log; the log is append-only and its
//! positions are stable, which is what lets peers sync from a cursor.

pub mod locks;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::core::Millis;
use crate::core::envelope::NetworkId;

/// Version of the on-disk layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;
/// sled's page cache size.
pub const CACHE_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;
/// Largest page of the credential log served in one sync answer.
pub const SYNC_PAGE_MAX: u32 = 512;

const META_TREE: &str = "meta/v1";
const CREDLOG_TREE: &str = "credlog/v1";
const CERTLOG_TREE: &str = "certlog/v1";
const HELD_TREE: &str = "held/v1";
const KEY_SCHEMA: &[u8] = b"schema_version";
const KEY_NETWORK: &[u8] = b"network_id";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source} (is another node running on this data directory?)")]
    Open { path: PathBuf, source: sled::Error },
    #[error("store at {path} belongs to network {found}, not {expected}; use another --data-dir")]
    WrongNetwork {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("store at {path} has layout version {found}; this build reads version {SCHEMA_VERSION}")]
    WrongVersion { path: PathBuf, found: u32 },
    #[error("store at {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("the store flush task failed: {0}")]
    FlushTask(String),
}

/// A record read back from sled that does not have the layout this build
/// writes (a damaged or foreign data directory).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("log key is {0} bytes, not 8")]
    KeyLength(usize),
    #[error("{what} of {len} bytes is shorter than its 8-byte timestamp")]
    Short { what: &'static str, len: usize },
}

/// The sled key of a log position: big-endian, so keys sort as positions.
pub fn position_key(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

/// A log position from its sled key.
pub fn decode_position(key: &[u8]) -> Result<u64, RecordError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| RecordError::KeyLength(key.len()))
}

/// The sled value of a credential log entry or a held claim: the time
/// (8 bytes BE), then the envelope.
pub fn stamped_value(at: Millis, envelope: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(envelope.len().saturating_add(8));
    value.extend_from_slice(&at.to_be_bytes());
    value.extend_from_slice(envelope);
    value
}

/// The time and the envelope of a [`stamped_value`].
pub fn decode_stamped(value: &[u8], what: &'static str) -> Result<(Millis, Vec<u8>), RecordError> {
    let (stamp, envelope) = value
        .split_first_chunk::<8>()
        .ok_or(RecordError::Short { what, len: value.len() })?;
    Ok((u64::from_be_bytes(*stamp), envelope.to_vec()))
}

/// A credential log entry from its sled key and value, as replay reads it.
pub fn decode_log_entry(key: &[u8], value: &[u8]) -> Result<LogEntry, RecordError> {
    let position = decode_position(key)?;
    let (learned_at, envelope) = decode_stamped(value, "credential log entry")?;
    Ok(LogEntry {
        position,
        learned_at,
        envelope,
    })
}

/// One entry of the credential log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub position: u64,
    pub learned_at: Millis,
    pub envelope: Vec<u8>,
}

/// One group commit's writes: log entries, certificates, and the claims held
/// (or no longer held) while they wait for their owner.
#[derive(Debug, Default)]
pub struct Write {
    pub entries: Vec<(Millis, Vec<u8>)>,
    pub certificates: Vec<Vec<u8>>,
    pub held: Vec<HeldChange>,
}

pub use crate::core::validator::HeldChange;

/// Handle to the node's store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    credlog: sled::Tree,
    certlog: sled::Tree,
    /// Claims waiting for their owner: claim id → received_at (8 bytes BE) ‖ envelope.
    held: sled::Tree,
    /// Both logs' lengths, kept here because sled's `last()` is slow under
    /// write load; the lock also keeps appends in order.
    lens: Arc<Mutex<LogLens>>,
}

#[derive(Debug, Default)]
struct LogLens {
    credentials: u64,
    certificates: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the store for `network`.
    pub fn open(path: &Path, network: &NetworkId) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let meta = db.open_tree(META_TREE)?;
        match meta.get(KEY_SCHEMA)? {
            None => {
                meta.insert(KEY_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                meta.insert(KEY_NETWORK, &network.0)?;
                db.flush()?;
            }
            Some(version) => {
                let found = <[u8; 4]>::try_from(version.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        path: path.to_path_buf(),
                        message: "schema version is not 4 bytes".into(),
                    })?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::WrongVersion {
                        path: path.to_path_buf(),
                        found,
                    });
                }
                let stored = meta.get(KEY_NETWORK)?.map(|v| v.to_vec()).unwrap_or_default();
                if stored != network.0 {
                    return Err(StoreError::WrongNetwork {
                        path: path.to_path_buf(),
                        found: hex::encode(stored),
                        expected: hex::encode(network.0),
                    });
                }
            }
        }
        let credlog = db.open_tree(CREDLOG_TREE)?;
        let certlog = db.open_tree(CERTLOG_TREE)?;
        let held = db.open_tree(HELD_TREE)?;
        let mut store = Store {
            path: path.to_path_buf(),
            db,
            credlog,
            certlog,
            held,
            lens: Arc::default(),
        };
        let lens = LogLens {
            credentials: store.next_position(&store.credlog)?,
            certificates: store.next_position(&store.certlog)?,
        };
        store.lens = Arc::new(Mutex::new(lens));
        Ok(store)
    }

    fn next_position(&self, tree: &sled::Tree) -> Result<u64, StoreError> {
        match tree.last()? {
            None => Ok(0),
            Some((key, _)) => self.position_of(&key).map(|p| p.saturating_add(1)),
        }
    }

    fn lens(&self) -> MutexGuard<'_, LogLens> {
        // The lengths are updated after their batch applied; a panic in
        // between cannot leave them ahead of the tree.
        self.lens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of entries in the credential log (= the next position).
    pub fn credential_log_len(&self) -> Result<u64, StoreError> {
        Ok(self.lens().credentials)
    }

    /// Appends accepted envelopes; returns the position of the first. Not
    /// durable until [`Store::flush`] returns.
    ///
    /// Plain inserts, not a sled batch: sled 0.34 writes out and syncs its
    /// log buffer for every batch, which made each append cost a disk sync.
    /// A batch's atomicity is not needed here: sled recovers a prefix of its
    /// log after a crash, and the entries are inserted in position order, so
    /// what survives is a prefix of the appended entries.
    pub fn append_credentials(&self, entries: &[(Millis, &[u8])]) -> Result<u64, StoreError> {
        let mut lens = self.lens();
        let first = lens.credentials;
        for (learned_at, envelope) in entries {
            self.credlog
                .insert(position_key(lens.credentials), stamped_value(*learned_at, envelope))?;
            lens.credentials = lens.credentials.saturating_add(1);
        }
        Ok(first)
    }

    /// Entries from `cursor`, at most `limit` (capped at [`SYNC_PAGE_MAX`]).
    pub fn credential_log_page(&self, cursor: u64, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let limit = limit.clamp(1, SYNC_PAGE_MAX) as usize;
        self.credlog
            .range(position_key(cursor)..)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                self.entry(&key, &value)
            })
            .collect()
    }

    /// Every entry of the credential log, in order (for replay on start).
    pub fn credential_log(&self) -> impl Iterator<Item = Result<LogEntry, StoreError>> + '_ {
        self.credlog.iter().map(|item| {
            let (key, value) = item?;
            self.entry(&key, &value)
        })
    }

    /// Number of certificates in the certificate log.
    pub fn certificate_log_len(&self) -> Result<u64, StoreError> {
        Ok(self.lens().certificates)
    }

    /// Appends encoded certificates (in the order this node applied them);
    /// inserted one by one like credentials, for the same reason.
    pub fn append_certificates(&self, certificates: &[&[u8]]) -> Result<u64, StoreError> {
        let mut lens = self.lens();
        let first = lens.certificates;
        for c in certificates {
            self.certlog.insert(position_key(lens.certificates), *c)?;
            lens.certificates = lens.certificates.saturating_add(1);
        }
        Ok(first)
    }

    /// Certificates from `cursor`, at most `limit` (capped at [`SYNC_PAGE_MAX`]).
    pub fn certificate_log_page(&self, cursor: u64, limit: u32) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let limit = limit.clamp(1, SYNC_PAGE_MAX) as usize;
        self.certlog
            .range(position_key(cursor)..)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                Ok((self.position_of(&key)?, value.to_vec()))
            })
            .collect()
    }

    /// Every certificate, in order (for replay on start).
    pub fn certificate_log(&self) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> + '_ {
        self.certlog.iter().map(|item| Ok(item?.1.to_vec()))
    }

    /// Holds claims that wait for their owner and forgets those that were
    /// certified or refused, in order (durable with the next flush).
    pub fn update_held_claims(&self, changes: &[HeldChange]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for change in changes {
            match change {
                HeldChange::Hold {
                    id,
                    received_at,
                    envelope,
                } => batch.insert(id, stamped_value(*received_at, envelope)),
                HeldChange::Release(id) => batch.remove(id),
            }
        }
        self.held.apply_batch(batch)?;
        Ok(())
    }

    /// Number of claims held.
    pub fn held_claims_len(&self) -> usize {
        self.held.len()
    }

    /// Every held claim as (received_at, envelope), for replay on start.
    pub fn held_claims(&self) -> impl Iterator<Item = Result<(Millis, Vec<u8>), StoreError>> + '_ {
        self.held.iter().map(|item| {
            let (_, value) = item?;
            decode_stamped(&value, "held claim").map_err(|e| self.corrupt(e))
        })
    }

    /// Makes everything written so far survive a killed process.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // sled's own `flush_async` future has been seen never to complete
        // under load; the blocking flush on the blocking pool always does.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::FlushTask(e.to_string()))??;
        Ok(())
    }

    /// Appends to both logs and flushes, on the blocking pool; the task
    /// resolves when the entries survive a killed process. Only one may run
    /// at a time: positions follow the order of the writes.
    pub fn write_task(&self, write: Write) -> tokio::task::JoinHandle<Result<(), StoreError>> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let entries: Vec<(Millis, &[u8])> = write.entries.iter().map(|(at, raw)| (*at, raw.as_slice())).collect();
            let certificates: Vec<&[u8]> = write.certificates.iter().map(Vec::as_slice).collect();
            if !entries.is_empty() {
                store.append_credentials(&entries)?;
            }
            if !certificates.is_empty() {
                store.append_certificates(&certificates)?;
            }
            if !write.held.is_empty() {
                store.update_held_claims(&write.held)?;
            }
            store.db.flush()?;
            Ok(())
        })
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn position_of(&self, key: &[u8]) -> Result<u64, StoreError> {
        decode_position(key).map_err(|e| self.corrupt(e))
    }

    fn entry(&self, key: &[u8], value: &[u8]) -> Result<LogEntry, StoreError> {
        decode_log_entry(key, value).map_err(|e| self.corrupt(e))
    }

    fn corrupt(&self, error: RecordError) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_with_another_layout_are_refused_not_misread() {
        let entry = LogEntry {
            position: 3,
            learned_at: 9,
            envelope: b"env".to_vec(),
        };
        assert_eq!(decode_log_entry(&position_key(3), &stamped_value(9, b"env")), Ok(entry));
        assert_eq!(
            decode_log_entry(&[0; 7], &stamped_value(9, b"")),
            Err(RecordError::KeyLength(7))
        );
        assert_eq!(
            decode_log_entry(&position_key(0), &[0; 7]),
            Err(RecordError::Short {
                what: "credential log entry",
                len: 7
            })
        );
        assert_eq!(decode_stamped(&stamped_value(5, b""), "held claim"), Ok((5, vec![])));
    }

    #[tokio::test]
    async fn log_survives_reopen_and_other_networks_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let net = NetworkId([1; 32]);
        {
            let store = Store::open(dir.path(), &net).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(store.append_credentials(&[(5, b"a"), (6, b"bb")]).ok(), Some(0));
            assert_eq!(store.append_credentials(&[(7, b"c")]).ok(), Some(2));
            store.flush().await.unwrap_or_else(|e| panic!("{e}"));
        }
        let store = Store::open(dir.path(), &net).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.credential_log_len().ok(), Some(3));
        let page = store.credential_log_page(1, 10).unwrap_or_default();
        assert_eq!(
            page.iter().map(|e| (e.position, e.learned_at)).collect::<Vec<_>>(),
            [(1, 6), (2, 7)]
        );
        assert_eq!(page.first().map(|e| e.envelope.clone()), Some(b"bb".to_vec()));
        drop(store);
        assert!(matches!(
            Store::open(dir.path(), &NetworkId([2; 32])),
            Err(StoreError::WrongNetwork { .. })
        ));
    }

    #[tokio::test]
    async fn held_claims_survive_reopen_until_released() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let net = NetworkId([1; 32]);
        {
            let store = Store::open(dir.path(), &net).unwrap_or_else(|e| panic!("{e}"));
            let hold = |id: u8, at: Millis, raw: &[u8]| HeldChange::Hold {
                id: [id; 32],
                received_at: at,
                envelope: raw.to_vec(),
            };
            store
                .update_held_claims(&[hold(1, 10, b"one"), hold(2, 20, b"two")])
                .unwrap_or_else(|e| panic!("{e}"));
            // Applied in order: 3 is held then released, 4 released then held again.
            store
                .update_held_claims(&[
                    hold(3, 30, b"three"),
                    HeldChange::Release([1; 32]),
                    HeldChange::Release([3; 32]),
                    HeldChange::Release([4; 32]),
                    hold(4, 40, b"four"),
                ])
                .unwrap_or_else(|e| panic!("{e}"));
            store.flush().await.unwrap_or_else(|e| panic!("{e}"));
        }
        let store = Store::open(dir.path(), &net).unwrap_or_else(|e| panic!("{e}"));
        let held: Vec<(Millis, Vec<u8>)> = store.held_claims().filter_map(Result::ok).collect();
        assert_eq!(held, vec![(20, b"two".to_vec()), (40, b"four".to_vec())]);
        assert_eq!(store.held_claims_len(), 2);
    }
}
