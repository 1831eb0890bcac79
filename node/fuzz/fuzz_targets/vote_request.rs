//! What a validator receives over `/credence/vote/1` once the frame is read:
//! a vote request (a batch or freeze to vote on, or a claim handed to its
//! owner, with attestations and certificates) and a vote answer, stepped
//! into the validator state machine of a validator of the fuzzing network.
//!
//! Input: a selector byte (even: request, odd: answer), then the message.
//!
//! Holds: no panic; a vote is only ever answered for an object that decodes
//! and verifies (no vote on garbage), is itself a valid vote, and leaves with
//! the lock to write before it.
#![no_main]

use credence::core::envelope::{self, Kind};
use credence::core::validator::Input;
use credence::store::locks::LockRecord;
use credence_fuzz::{NOW, book, network_id, validator};
use credence_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((selector, message)) = data.split_first() else {
        return;
    };
    let book = book();
    let mut validator = validator();
    if selector % 2 == 0 {
        let Ok(request) = pb::VoteRequest::decode(message) else {
            return;
        };
        let out = match validator.step(NOW, &book, Input::VoteRequest { request: &request }) {
            Ok(out) => out,
            Err(e) => panic!("a vote request is always answered, but the step failed: {e}"),
        };
        let Some(answer) = out.vote_reply else {
            panic!("a vote request left without an answer");
        };
        if !answer.vote.is_empty() {
            let network = network_id();
            assert!(
                envelope::decode(&network, &request.object).is_ok_and(|u| u.verify().is_ok()),
                "voted on an object that does not verify"
            );
            let vote = envelope::decode(&network, &answer.vote).and_then(envelope::Unverified::verify);
            let Ok(vote) = vote else {
                panic!("the vote answered does not verify");
            };
            assert_eq!(vote.kind, Kind::Vote, "the vote answered is not a vote");
            // The vote's lock is among the records persisted before it leaves
            // (this validator held no locks before: it starts fresh).
            let Ok(body) = pb::Vote::decode(vote.body.as_slice()) else {
                panic!("the vote answered has no vote body");
            };
            let locked = out.locks.iter().any(|lock| match lock {
                LockRecord::Vote { seq, object_id, .. } => {
                    *seq == body.seq && object_id.as_slice() == body.object_id.as_slice()
                }
                LockRecord::OwnBatch { .. } => false,
            });
            assert!(locked, "a vote left without its lock");
        }
    } else {
        let Ok(answer) = pb::VoteResponse::decode(message) else {
            return;
        };
        let out = validator.step(NOW, &book, Input::VoteResponse { response: &answer });
        // Nothing was asked, so no answer can complete a certificate.
        if let Ok(out) = out {
            assert!(out.certificates_to_publish.is_empty());
            assert!(out.store_certificates.is_empty());
        }
    }
});
