//! A genesis file as every node loads it (`LoadedGenesis::from_bytes`: UTF-8,
//! TOML, then the validation that says what is wrong), and the escrow a
//! validator of it starts with.
//!
//! Holds: no panic; the network id is the hash of the exact bytes; a genesis
//! that loads, written back as TOML, loads again to the same genesis (as
//! `credence genesis` writes it).
#![no_main]

use std::path::Path;

use credence::config::LoadedGenesis;
use credence::core::envelope::NetworkId;
use credence::escrow::Escrow;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("genesis.toml");
    let Ok(loaded) = LoadedGenesis::from_bytes(path, data) else {
        return;
    };
    assert_eq!(loaded.network_id, NetworkId::of_genesis(data));
    assert_eq!(loaded.validators.len(), loaded.genesis.validators.len());
    let text = match toml::to_string(&loaded.genesis) {
        Ok(text) => text,
        Err(e) => panic!("a loaded genesis does not serialize: {e}"),
    };
    match LoadedGenesis::from_bytes(path, text.as_bytes()) {
        Ok(again) => assert_eq!(format!("{:?}", again.genesis), format!("{:?}", loaded.genesis)),
        Err(e) => panic!("a loaded genesis written back does not load: {e}\n{text}"),
    }
    // A node that is not one of its validators, and the first validator's
    // view, both start or refuse with an error.
    let _ = Escrow::new(&loaded, SigningKey::from_bytes(&[7; 32]), &[]);
});
