//! The admin token: what the admin (fault-injection) calls require besides
//! the node's `--enable-fault-injection` flag.
//!
//! At every start with fault injection on, the node writes a fresh random
//! token to [`ADMIN_TOKEN_FILE`] in its store directory (`DATA_DIR/store/`
//! for a node started from a config, `DIR/store/` for `--dev --data-dir DIR`),
//! mode 0600, so only whoever can read the node's files can make admin calls.
//! A client sends it as the [`ADMIN_TOKEN_METADATA`] request metadata
//! (`credence block-peer --admin-token-file FILE`, or
//! `$CREDENCE_ADMIN_TOKEN_FILE`; `credence-testnet` reads each node's file).
//! The node keeps only the token's blake3 digest and compares digests, which
//! `blake3::Hash` does in constant time, so an answer's timing says nothing
//! about how much of a guess was right.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};
use zeroize::Zeroizing;

/// Name of the token file, in the node's store directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The request metadata key that carries the token.
pub const ADMIN_TOKEN_METADATA: &str = "x-credence-admin-token";
/// Random bytes in a token (hex-encoded in the file): as many as a key, so
/// guessing is out of the question.
pub const ADMIN_TOKEN_BYTES: usize = 32;
/// Longest token file a client reads: a token and a newline, with room to
/// spare; anything larger is not a token file.
const TOKEN_FILE_MAX_BYTES: u64 = 1024;

/// Why a token could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("cannot write the admin token {path}: {source} (is the data directory writable?)")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot read the admin token {path}: {source} (the node writes it there at start when it runs with \
         --enable-fault-injection; pass --admin-token-file DATA_DIR/store/{ADMIN_TOKEN_FILE})"
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an admin token file (a token is {} hex characters on one line)", ADMIN_TOKEN_BYTES * 2)]
    Malformed { path: PathBuf },
}

/// Where a node with this store directory keeps its token.
pub fn token_file(store_dir: &Path) -> PathBuf {
    store_dir.join(ADMIN_TOKEN_FILE)
}

/// The token a node accepts (only its digest is kept).
#[derive(Clone, Debug)]
pub struct AdminToken {
    digest: blake3::Hash,
    path: PathBuf,
}

impl AdminToken {
    /// Writes a fresh token to `store_dir`'s token file (mode 0600, replacing
    /// the last start's) and returns what the node checks calls against.
    pub fn create(store_dir: &Path) -> Result<AdminToken, AdminTokenError> {
        let path = token_file(store_dir);
        let write_err = |source| AdminTokenError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(store_dir).map_err(write_err)?;
        let secret: Zeroizing<[u8; ADMIN_TOKEN_BYTES]> = Zeroizing::new(rand::random());
        let text = Zeroizing::new(hex::encode(*secret));
        // Written beside the file and renamed over it, so a reader sees the
        // old token or the new one, never half of one; the new file is 0600
        // from its creation.
        let temp = store_dir.join(format!("{ADMIN_TOKEN_FILE}.new"));
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(write_err)?;
        file.write_all(format!("{}\n", text.as_str()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write_err)?;
        std::fs::rename(&temp, &path).map_err(write_err)?;
        Ok(AdminToken {
            digest: blake3::hash(text.as_bytes()),
            path,
        })
    }

    /// The file the token was written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses a call that does not carry this token.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(value) = metadata.get(ADMIN_TOKEN_METADATA) else {
            return Err(Status::unauthenticated(format!(
                "this admin call needs the node's admin token, sent as {ADMIN_TOKEN_METADATA} metadata; the node \
                 writes it to {} at start (credence block-peer --admin-token-file FILE)",
                self.path.display()
            )));
        };
        // Compared as digests: `blake3::Hash` equality is constant-time.
        if blake3::hash(value.as_bytes()) != self.digest {
            return Err(Status::unauthenticated(format!(
                "wrong admin token; it changes at every start of the node: read {} again",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// Reads a token file written by a node.
pub fn read_token_file(path: &Path) -> Result<Zeroizing<String>, AdminTokenError> {
    let read_err = |source| AdminTokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > TOKEN_FILE_MAX_BYTES {
        return Err(AdminTokenError::Malformed {
            path: path.to_path_buf(),
        });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
    let token = text.trim();
    if token.len() != ADMIN_TOKEN_BYTES * 2 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AdminTokenError::Malformed {
            path: path.to_path_buf(),
        });
    }
    Ok(Zeroizing::new(token.to_string()))
}

/// A request carrying `token` (read with [`read_token_file`]).
pub fn with_token<T>(message: T, token: &str) -> Result<tonic::Request<T>, Status> {
    let value: MetadataValue<_> = token
        .parse()
        .map_err(|_| Status::invalid_argument("the admin token is not valid metadata (not hex?)"))?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(ADMIN_TOKEN_METADATA, value);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn metadata(token: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(t) = token {
            map.insert(ADMIN_TOKEN_METADATA, t.parse().expect("ascii"));
        }
        map
    }

    #[test]
    fn the_token_file_is_private_and_only_its_token_passes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = AdminToken::create(dir.path()).expect("written");
        let mode = std::fs::metadata(token.path()).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        let text = read_token_file(token.path()).expect("readable");
        assert!(token.check(&metadata(Some(&text))).is_ok());
        let last = if text.ends_with('0') { '1' } else { '0' };
        let off_by_one = format!("{}{last}", &text[..text.len() - 1]);
        for (case, presented) in [
            ("none", None),
            ("empty", Some("")),
            ("one character off", Some(off_by_one.as_str())),
        ] {
            let err = token.check(&metadata(presented)).expect_err(case);
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{case}");
            assert!(err.message().contains("token"), "{case}: {}", err.message());
        }
        // A new start writes a new token; the old one no longer passes.
        let again = AdminToken::create(dir.path()).expect("rewritten");
        assert!(again.check(&metadata(Some(&text))).is_err());
        let with = with_token((), &read_token_file(again.path()).expect("readable")).expect("metadata");
        assert!(again.check(with.metadata()).is_ok());
    }

    #[test]
    fn a_file_that_is_not_a_token_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t");
        std::fs::write(&path, "not a token\n").expect("write");
        assert!(matches!(read_token_file(&path), Err(AdminTokenError::Malformed { .. })));
        let missing = read_token_file(&dir.path().join("missing")).expect_err("missing");
        assert!(missing.to_string().contains("--admin-token-file"), "{missing}");
    }
}
