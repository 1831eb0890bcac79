//! The store's records as a node reads them back from sled on start and
//! replays them (`node::replay`): credential log entries (8-byte position
//! key, time-stamped envelope) applied to the credential book and the
//! validator state machine, certificates from the certificate log, and the
//! claims held while they wait for their owner.
//!
//! Input: records one after the other, each a tree byte (0: credential log,
//! 1: certificate log, 2: held claims), a 2-byte little-endian length and
//! the record; a credential log record starts with its key's length.
//!
//! Holds: no panic on any record; an entry that decodes, encoded again as the
//! store writes it, decodes to the same entry.
#![no_main]

use credence::core::envelope::{self, Unverified};
use credence::core::validator::Input;
use credence::node::replay_entry;
use credence::store::{decode_log_entry, decode_stamped, position_key, stamped_value};
use credence_fuzz::{NOW, book, network, validator};
use libfuzzer_sys::fuzz_target;

/// Most records taken from one input.
const RECORDS_MAX: usize = 32;

fuzz_target!(|data: &[u8]| {
    let genesis = &network().genesis;
    let mut book = book();
    let mut validator = validator();
    let mut rest = data;
    for _ in 0..RECORDS_MAX {
        let Some((&tree, tail)) = rest.split_first() else { break };
        let Some((len, tail)) = tail.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (record, tail) = tail.split_at(len);
        rest = tail;
        match tree % 3 {
            0 => {
                let Some((&key_len, record)) = record.split_first() else {
                    continue;
                };
                let (key, value) = record.split_at(usize::from(key_len).min(record.len()));
                let Ok(entry) = decode_log_entry(key, value) else {
                    continue;
                };
                let again = decode_log_entry(
                    &position_key(entry.position),
                    &stamped_value(entry.learned_at, &entry.envelope),
                );
                assert_eq!(again.as_ref(), Ok(&entry));
                // A stored entry that no longer applies refuses the start with
                // its position; it must never panic.
                let _ = replay_entry(genesis, &mut book, &mut validator, &entry);
            }
            1 => {
                let _ = validator.step(NOW, &book, Input::Certificate { raw: record });
            }
            _ => {
                let Ok((received_at, raw)) = decode_stamped(record, "held claim") else {
                    continue;
                };
                assert_eq!(stamped_value(received_at, &raw), record);
                if let Ok(claim) = envelope::decode(&genesis.network_id, &raw).and_then(Unverified::verify) {
                    validator.restore_held(claim, received_at);
                }
            }
        }
    }
    validator.resume();
    let _ = validator.tick(NOW, &book);
});
