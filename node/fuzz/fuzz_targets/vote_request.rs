//! What a validator receives over `/credence/vote/1` once the frame is read:
//! a vote request (a batch or freeze to vote on, or a claim handed to its
//! owner, with attestations and certificates) and a vote answer, handled by
//! the escrow of a validator of the fuzzing network.
//!
//! Input: a selector byte (even: request, odd: answer), then the message.
//!
//! Holds: no panic; a vote is only ever answered for an object that decodes
//! and verifies (no vote on garbage), is itself a valid vote, and leaves with
//! the lock to write before it.
#![no_main]

use credence::core::envelope::{self, Kind};
use credence_fuzz::{NOW, book, escrow, network_id};
use credence_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((selector, message)) = data.split_first() else {
        return;
    };
    let book = book();
    let mut escrow = escrow();
    if selector % 2 == 0 {
        let Ok(request) = pb::VoteRequest::decode(message) else {
            return;
        };
        let (effects, answer) = escrow.on_vote_request(&book, &request, NOW);
        if !answer.vote.is_empty() {
            assert!(!effects.locks.is_empty(), "a vote left without its lock");
            let network = network_id();
            assert!(
                envelope::decode(&network, &request.object).is_ok_and(|u| u.verify().is_ok()),
                "voted on an object that does not verify"
            );
            let vote = envelope::decode(&network, &answer.vote).and_then(envelope::Unverified::verify);
            assert!(
                vote.is_ok_and(|v| v.kind == Kind::Vote),
                "the vote answered does not verify"
            );
        }
    } else {
        let Ok(answer) = pb::VoteResponse::decode(message) else {
            return;
        };
        let effects = escrow.on_vote_response(&book, &answer, NOW);
        // Nothing was asked, so no answer can complete a certificate.
        assert!(effects.certificates.is_empty());
    }
});
