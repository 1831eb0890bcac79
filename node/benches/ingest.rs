//! Attestation ingest through core + store, side by side with the raw
//! ed25519 batch-verification rate on the same machine, in one run.
//!
//! `cargo bench -p credence --bench ingest` (N = 20000 by default; pass a
//! number after `--` to change it). Both sides run on one thread, in batches
//! of 256 (the gossip pipeline's batch size), so the ratio is what our
//! decode + verify + apply + group-committed store costs over bare signature
//! checks.

use std::time::Instant;

use credence::core::credentials::{CredentialBook, CredentialRules};
use credence::core::envelope::{self, Kind, NetworkId, seal};
use credence::core::limits::GOSSIP_MAX_BYTES;
use credence::store::Store;
use credence_proto::v1 as pb;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use prost::Message;

const BATCH: usize = 256;

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let network = NetworkId([7; 32]);
    let issuer = SigningKey::from_bytes(&[1; 32]);
    let envelopes: Vec<Vec<u8>> = (0..n as u64)
        .map(|i| {
            let body = pb::Attestation {
                issuer: issuer.verifying_key().to_bytes().to_vec(),
                subject: blake3::hash(&i.to_le_bytes()).as_bytes().to_vec(),
                schema: "demo".into(),
                data: format!("credential {i}").into_bytes(),
                issued_at: 1_700_000_000_000,
                expires_at: 0,
                nonce: i,
            };
            seal(&network, &issuer, Kind::Attestation, body.encode_to_vec()).0
        })
        .collect();

    // Raw: ed25519 batch verification of the same signatures over the same digests.
    let decoded: Vec<_> = envelopes
        .iter()
        .map(|raw| envelope::decode(&network, raw).expect("valid envelope"))
        .collect();
    let digests: Vec<[u8; 32]> = decoded.iter().map(|u| u.id.0).collect();
    let signatures: Vec<Signature> = decoded.iter().map(|u| u.signature).collect();
    let keys: Vec<VerifyingKey> = decoded.iter().map(|u| u.signer).collect();
    let start = Instant::now();
    for ((d, s), k) in digests
        .chunks(BATCH)
        .zip(signatures.chunks(BATCH))
        .zip(keys.chunks(BATCH))
    {
        let messages: Vec<&[u8]> = d.iter().map(|m| m.as_slice()).collect();
        ed25519_dalek::verify_batch(&messages, s, k).expect("batch verifies");
    }
    let raw_secs = start.elapsed().as_secs_f64();

    // Ours: decode → batch verify → apply → append + flush per batch.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &network).expect("store");
    let mut book = CredentialBook::new(
        CredentialRules {
            max_clock_skew_ms: 30_000,
            operators: Default::default(),
        },
        [(issuer.verifying_key().to_bytes(), "demo".to_string())],
    );
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let now = 1_700_000_000_000;
    let (mut t_verify, mut t_apply, mut t_store) = (0.0, 0.0, 0.0);
    let mut keys = envelope::KeyCache::default();
    let start = Instant::now();
    for chunk in envelopes.chunks(BATCH) {
        let t0 = Instant::now();
        let items: Vec<_> = chunk
            .iter()
            .map(|raw| envelope::decode_cached(&network, raw, GOSSIP_MAX_BYTES, &mut keys).expect("decodes"))
            .collect();
        let verified_batch = envelope::verify_batch(items);
        let t1 = Instant::now();
        let mut accepted = Vec::with_capacity(verified_batch.len());
        for verified in verified_batch {
            let verified = verified.expect("verifies");
            book.apply(now, &verified).expect("applies");
            accepted.push(verified.raw);
        }
        let t2 = Instant::now();
        let entries: Vec<(u64, &[u8])> = accepted.iter().map(|raw| (now, raw.as_slice())).collect();
        store.append_credentials(&entries).expect("append");
        runtime.block_on(store.flush()).expect("flush");
        t_verify += (t1 - t0).as_secs_f64();
        t_apply += (t2 - t1).as_secs_f64();
        t_store += t2.elapsed().as_secs_f64();
    }
    let ours_secs = start.elapsed().as_secs_f64();
    assert_eq!(book.attestation_count(), n);

    let raw_rate = n as f64 / raw_secs;
    let ours_rate = n as f64 / ours_secs;
    println!("attestations: {n}, batch size {BATCH}, one thread");
    println!("raw ed25519 batch verify : {raw_rate:>10.0} /s");
    println!("core + store ingest      : {ours_rate:>10.0} /s");
    println!("ratio (ours / raw)       : {:>10.2}", ours_rate / raw_rate);
    println!(
        "time split: decode+verify {:.0}%, apply {:.0}%, store append+flush {:.0}%",
        100.0 * t_verify / ours_secs,
        100.0 * t_apply / ours_secs,
        100.0 * t_store / ours_secs
    );
}
