//! `locks.log` as read on start (`store::locks::read_log`, exactly what
//! `LockLog::open` does without the file): vote locks and an owner's own
//! batches, the torn-tail rule and the refusal of damage.
//!
//! Holds: no panic; whole records end inside the file; what is kept is a
//! prefix whose bytes read back alone as the same records; the records kept,
//! written as a fresh log, read back as exactly those records; a damage is
//! reported inside the file.
#![no_main]

use credence::store::locks::{LogRead, MAGIC, encode_log, read_log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = match read_log(data) {
        Ok(LogRead::Empty) => {
            assert!(data.len() < MAGIC.len());
            return;
        }
        Ok(LogRead::Current(parsed)) => {
            assert!(parsed.good_end >= MAGIC.len());
            // The prefix kept reads back alone as the same records.
            let prefix = data.get(..parsed.good_end).unwrap_or_default();
            match read_log(prefix) {
                Ok(LogRead::Current(again)) => assert_eq!(again, parsed),
                other => panic!("the kept prefix reads as {other:?}"),
            }
            parsed
        }
        Ok(LogRead::Legacy(parsed)) => parsed,
        Err(damage) => {
            assert!(damage.offset < data.len(), "damage reported past the end: {damage:?}");
            return;
        }
    };
    assert!(parsed.good_end <= data.len());
    // Round trip: the records kept, rewritten (as open does for a legacy
    // log), read back as exactly these records and nothing to cut.
    let fresh = encode_log(&parsed.records);
    match read_log(&fresh) {
        Ok(LogRead::Current(again)) => {
            assert_eq!(again.records, parsed.records);
            assert_eq!(again.good_end, fresh.len());
        }
        other => panic!("a rewritten log reads as {other:?}"),
    }
});
