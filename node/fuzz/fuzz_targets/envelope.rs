//! The signed envelope from any peer or client: decode (every cap and shape
//! check), the id, the vouched decode, strict, known and batch verification.
//!
//! Holds: no panic; every decode path agrees on the id; a decoded envelope
//! re-encoded decodes to the same object; verification agrees however it is
//! reached.
#![no_main]

use credence::core::envelope::{self, KnownSignatures, Unverified, Voucher};
use credence_fuzz::network_id;
use credence_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let network = network_id();
    let decoded = envelope::decode(&network, data);
    let id = envelope::object_id(&network, data);
    let vouched = envelope::decode_vouched(&network, data, Voucher::Known);
    // The id and the vouched decode run the same shape checks.
    assert_eq!(vouched.is_ok(), id.is_some());
    let Ok(unverified) = decoded else {
        return;
    };
    assert_eq!(id, Some(unverified.id));
    let vouched = match vouched {
        Ok(v) => v,
        Err(e) => panic!("decoded, but the vouched decode refused it: {e}"),
    };
    assert_eq!(
        (vouched.kind, &vouched.body, vouched.id),
        (unverified.kind, &unverified.body, unverified.id)
    );
    assert_eq!(vouched.signer, unverified.signer.to_bytes());
    assert!(data.len() <= credence::core::limits::ENVELOPE_MAX_BYTES);

    // Round trip: the fields, encoded again, decode to the same object.
    let again = pb::Signed {
        kind: unverified.kind.to_wire() as i32,
        body: unverified.body.clone(),
        signer: unverified.signer.to_bytes().to_vec(),
        signature: unverified.signature.to_bytes().to_vec(),
    }
    .encode_to_vec();
    if again.len() <= credence::core::limits::ENVELOPE_MAX_BYTES {
        match envelope::decode(&network, &again) {
            Ok(u) => assert_eq!(
                (u.kind, &u.body, u.id),
                (unverified.kind, &unverified.body, unverified.id)
            ),
            Err(e) => panic!("a decoded envelope encoded again does not decode: {e}"),
        }
    }

    // Verification: strict, through the known set (twice: the second time
    // from memory) and in a batch of two agree.
    let strict = unverified.clone().verify().map(|v| v.id);
    let mut known = KnownSignatures::new(8);
    assert_eq!(envelope::verify_known(&network, data, &mut known).map(|v| v.id), strict);
    assert_eq!(envelope::verify_known(&network, data, &mut known).map(|v| v.id), strict);
    let batch: Vec<Unverified> = vec![unverified.clone(), unverified];
    for result in envelope::verify_batch(batch) {
        assert_eq!(result.map(|v| v.id), strict);
    }
});
