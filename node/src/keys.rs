//! Key files: one ed25519 secret per file, hex-encoded, mode 0600.
//!
//! A node's libp2p identity is derived from the same key, so a validator's
//! PeerId and its voting key are one key. Secrets are zeroed on drop.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path} already exists; pass a new --out path or remove it first")]
    Exists { path: PathBuf },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is readable by group or others (mode {mode:04o}); fix it with: chmod 600 {path}")]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("key file {path} does not hold a key: expected 64 hex characters (an ed25519 secret)")]
    Malformed { path: PathBuf },
}

/// A fresh random key.
pub fn generate() -> SigningKey {
    // The thread RNG is a CSPRNG seeded from the operating system.
    let secret: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
    SigningKey::from_bytes(&secret)
}

/// Writes a key file with mode 0600; refuses to overwrite an existing file.
pub fn write(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                KeyError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.to_bytes())));
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads a key file, refusing one that group or others can read.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
    let mut secret = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), secret.as_mut_slice()).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
    })?;
    Ok(SigningKey::from_bytes(&secret))
}

/// The libp2p identity of a key: the same ed25519 key.
pub fn libp2p_keypair(key: &SigningKey) -> libp2p::identity::Keypair {
    let mut secret = key.to_bytes();
    // `ed25519_from_bytes` zeroes the buffer it is given.
    match libp2p::identity::Keypair::ed25519_from_bytes(&mut secret) {
        Ok(keypair) => keypair,
        // Any 32 bytes are a valid ed25519 secret, so this arm is unreachable;
        // a fresh identity keeps the node running rather than panicking.
        Err(_) => libp2p::identity::Keypair::generate_ed25519(),
    }
}

/// The PeerId of an ed25519 public key.
pub fn peer_id_of(public: &[u8; 32]) -> Option<libp2p::PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(public).ok()?;
    Some(libp2p::PeerId::from_public_key(&libp2p::identity::PublicKey::from(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_load_round_trips_and_loose_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("k.key");
        let key = generate();
        write(&path, &key).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        let loaded = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.to_bytes(), key.to_bytes());
        assert!(matches!(write(&path, &key), Err(KeyError::Exists { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
        let err = load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn peer_id_matches_the_derived_keypair() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let keypair = libp2p_keypair(&key);
        assert_eq!(
            Some(keypair.public().to_peer_id()),
            peer_id_of(&key.verifying_key().to_bytes())
        );
    }
}
