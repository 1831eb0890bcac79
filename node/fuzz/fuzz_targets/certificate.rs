//! A certificate as it arrives by gossip, in a sync page, in a vote request
//! or from the node's own certificate log on start: `wire::certificate` (the
//! object, its nested claims, every vote) and the validator state machine
//! applying it (`Input::Certificate`).
//!
//! Holds: no panic; the wire decode is deterministic; a certificate the
//! validator applied is news once, is then to be stored (and only then), and
//! is not news the second time.
#![no_main]

use credence::core::envelope::KnownSignatures;
use credence::core::validator::Input;
use credence::core::wire;
use credence_fuzz::{NOW, book, network_id, validator};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let network = network_id();
    let first = wire::certificate(&network, data, &mut KnownSignatures::new(64));
    // Known signatures only spare checks; they never change the answer.
    let mut known = KnownSignatures::new(64);
    let _ = wire::certificate(&network, data, &mut known);
    assert_eq!(wire::certificate(&network, data, &mut known), first);

    let book = book();
    let mut validator = validator();
    let Ok(out) = validator.step(NOW, &book, Input::Certificate { raw: data }) else {
        return;
    };
    if out.news {
        assert!(
            first.is_ok(),
            "the validator applied a certificate the wire decode refuses"
        );
        assert_eq!(
            out.store_certificates,
            vec![data.to_vec()],
            "a certificate that was news is not stored as it came"
        );
        let again = validator.step(NOW, &book, Input::Certificate { raw: data });
        assert!(
            again.is_ok_and(|o| !o.news && o.store_certificates.is_empty()),
            "a certificate was news twice"
        );
    } else {
        assert!(
            out.store_certificates.is_empty(),
            "a certificate that was no news is stored again"
        );
    }
});
