//! A certificate as it arrives by gossip, in a sync page, in a vote request
//! or from the node's own certificate log on start: `wire::certificate` (the
//! object, its nested claims, every vote) and the escrow applying it.
//!
//! Holds: no panic; the wire decode is deterministic; a certificate the
//! escrow applied is not new the second time, and neither are its bytes.
#![no_main]

use credence::core::envelope::KnownSignatures;
use credence::core::wire;
use credence_fuzz::{NOW, book, escrow, network_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let network = network_id();
    let first = wire::certificate(&network, data, &mut KnownSignatures::new(64));
    // Known signatures only spare checks; they never change the answer.
    let mut known = KnownSignatures::new(64);
    let _ = wire::certificate(&network, data, &mut known);
    assert_eq!(wire::certificate(&network, data, &mut known), first);

    let book = book();
    let mut escrow = escrow();
    if let Ok(true) = escrow.on_certificate(&book, data, NOW) {
        assert!(
            first.is_ok(),
            "the escrow applied a certificate the wire decode refuses"
        );
        assert!(matches!(escrow.on_certificate(&book, data, NOW), Ok(false)));
    }
});
