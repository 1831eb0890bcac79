//! A genesis file as every node loads it (`LoadedGenesis::from_bytes`: UTF-8,
//! TOML, then the validation that says what is wrong), and the validator
//! state machine a node of it starts with (`LoadedGenesis::setup`).
//!
//! Holds: no panic; the network id is the hash of the exact bytes; a genesis
//! that loads, written back as TOML, loads again to the same genesis (as
//! `credence genesis` writes it).
#![no_main]

use std::path::Path;

use credence::config::LoadedGenesis;
use credence::core::envelope::NetworkId;
use credence::core::validator::Validator;
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
    // The machine's setup names every validator of the genesis, and a node
    // that is not one of them starts or refuses with an error.
    let setup = loaded.setup();
    assert_eq!(setup.validators.len(), loaded.validators.len());
    assert_eq!(setup.distributions.len(), loaded.genesis.distributions.len());
    let _ = Validator::new(&setup, Box::new(SigningKey::from_bytes(&[7; 32])), &[]);
});
