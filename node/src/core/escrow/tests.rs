//! Table-driven tests of the escrow core: voting rules through one `check` helper, owner
//! admission through `check_owner`, and the ledger's derived accounting.

use std::collections::BTreeMap;

use super::*;

pub(crate) fn key(n: u8) -> Key {
    [n; 32]
}

/// A credential store for tests.
#[derive(Debug, Clone, Default)]
pub(crate) struct Creds {
    pub attestations: BTreeMap<Digest, AttestationFacts>,
    pub revocations: BTreeMap<Digest, Millis>,
}

impl CredentialView for Creds {
    fn attestation(&self, id: &Digest) -> Option<AttestationFacts> {
        self.attestations.get(id).cloned()
    }
    fn revocation(&self, id: &Digest) -> Option<Millis> {
        self.revocations.get(id).copied()
    }
}

pub(crate) const ISSUER: u8 = 100;
pub(crate) const SCHEMA: &str = "kyc";
pub(crate) const AMOUNT: u64 = 10;
pub(crate) const OPENS: Millis = 1_000;
pub(crate) const CLOSES: Millis = 1_000_000;
pub(crate) const SKEW: u64 = 500;

/// Attestation id as the shell would compute it: a digest of its fields.
pub(crate) fn attestation_id(facts: &AttestationFacts, nonce: u64) -> Digest {
    digest_parts(
        "attestation",
        &[
            &facts.issuer,
            &facts.subject,
            facts.schema.as_bytes(),
            &facts.issued_at.to_le_bytes(),
            &facts.expires_at.to_le_bytes(),
            &nonce.to_le_bytes(),
        ],
    )
}

/// Claim id as the shell would compute it: a digest of its fields.
pub(crate) fn make_claim(
    distribution_id: Digest,
    claimant: Key,
    attestation: Digest,
    amount: u64,
    created_at: Millis,
) -> Claim {
    let recipient = claimant;
    let id = digest_parts(
        "claim",
        &[
            &distribution_id,
            &claimant,
            &attestation,
            &amount.to_le_bytes(),
            &recipient,
            &created_at.to_le_bytes(),
        ],
    );
    Claim {
        id,
        signer: claimant,
        distribution_id,
        claimant,
        attestation_id: attestation,
        amount,
        recipient,
        created_at,
    }
}

pub(crate) fn distribution(allocations: Vec<(String, u64)>, max_outflow: u64, window: u64) -> Distribution {
    let total: u64 = allocations.iter().map(|(_, a)| a).sum();
    let id = digest_parts("distribution", &[&total.to_le_bytes(), &window.to_le_bytes()]);
    Distribution {
        id,
        operator: key(200),
        asset: "CRD".into(),
        total,
        schema: SCHEMA.into(),
        issuers: vec![key(ISSUER)],
        amount_per_claim: AMOUNT,
        opens_at: OPENS,
        closes_at: CLOSES,
        allocations,
        max_outflow_per_window: max_outflow,
        outflow_window_ms: window,
    }
}

/// Two regions: "eu" = validators 1..=4, "us" = 5..=7, weight 1 each; the voter under test is 1.
struct Fx {
    ledger: Ledger,
    creds: Creds,
    dist: Distribution,
    voter: Voter,
    now: Millis,
    nonce: u64,
}

impl Fx {
    fn new() -> Self {
        Self::with_distribution(distribution(vec![("eu".into(), 600), ("us".into(), 300)], 0, 0))
    }

    fn with_distribution(dist: Distribution) -> Self {
        let mut validators = Vec::new();
        for n in 1..=4 {
            validators.push(Validator {
                key: key(n),
                region: "eu".into(),
                weight: 1,
            });
        }
        for n in 5..=7 {
            validators.push(Validator {
                key: key(n),
                region: "us".into(),
                weight: 1,
            });
        }
        let set = ValidatorSet::new(validators, FaultModel::Byzantine).unwrap();
        let mut ledger = Ledger::new(set, 64);
        ledger.add_distribution(dist.clone()).unwrap();
        let voter = Voter::new(key(1), "eu".into(), VoterConfig { clock_skew_ms: SKEW });
        Self {
            ledger,
            creds: Creds::default(),
            dist,
            voter,
            now: 50_000,
            nonce: 0,
        }
    }

    fn bucket(&self, owner: u8) -> BucketId {
        let region = if owner <= 4 { "eu" } else { "us" };
        BucketId {
            distribution: self.dist.id,
            region: region.into(),
            owner: key(owner),
        }
    }

    fn successor(&self, bucket: &BucketId) -> BucketId {
        let digest = self
            .ledger
            .distribution(&self.dist.id)
            .unwrap()
            .successor(&bucket.digest())
            .unwrap();
        let (_, plan) = self.ledger.bucket(&digest).unwrap();
        plan.id.clone()
    }

    /// The `n`-th claimant whose original home is `bucket`.
    fn claimant_for(&self, bucket: &BucketId, n: usize) -> Key {
        let active = self.ledger.distribution(&self.dist.id).unwrap();
        (0u64..)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .filter(|k| active.home_bucket(k) == Some(bucket.digest()))
            .nth(n)
            .unwrap()
    }

    fn attest(&mut self, subject: Key, schema: &str, expires_at: Millis) -> Digest {
        self.nonce += 1;
        let facts = AttestationFacts {
            issuer: key(ISSUER),
            subject,
            schema: schema.into(),
            issued_at: 0,
            expires_at,
        };
        let id = attestation_id(&facts, self.nonce);
        self.creds.attestations.insert(id, facts);
        id
    }

    /// A valid claim by the `n`-th claimant homed at `owner`'s bucket.
    fn claim(&mut self, owner: u8, n: usize) -> Claim {
        let claimant = self.claimant_for(&self.bucket(owner), n);
        let attestation = self.attest(claimant, SCHEMA, CLOSES * 10);
        make_claim(self.dist.id, claimant, attestation, AMOUNT, self.now - 100)
    }

    /// A batch at the bucket's next position with a consistent `prev` and `total_after`.
    fn batch(&self, owner: u8, entries: Vec<Entry>) -> Batch {
        let bucket = self.bucket(owner);
        let digest = bucket.digest();
        let total = entries.iter().map(Entry::amount).sum::<u64>() + self.ledger.chain_total(&digest).unwrap();
        Batch::new(
            key(owner),
            bucket,
            self.ledger.next_seq(&digest).unwrap(),
            self.ledger.last_batch_id(&digest).unwrap_or(ZERO_DIGEST),
            self.now,
            entries,
            total,
        )
    }

    fn claim_batch(&mut self, owner: u8, home: u8, n: usize) -> Batch {
        let claim = self.claim(home, n);
        self.batch(owner, vec![Entry::Claim(claim)])
    }

    fn certify(&mut self, object: CertifiedObject) -> ApplyOutcome {
        let bucket = object.bucket().clone();
        let seq = object.seq().unwrap();
        let voters: Vec<u8> = if bucket.region == "eu" {
            vec![1, 2, 3]
        } else {
            vec![5, 6, 7]
        };
        let votes = voters
            .into_iter()
            .map(|n| Vote {
                signer: key(n),
                object_id: object.id(),
                bucket: bucket.digest(),
                seq,
                region: bucket.region.clone(),
            })
            .collect();
        self.ledger.apply(Certificate { object, votes }).unwrap()
    }

    fn certify_batch(&mut self, batch: &Batch) {
        let outcome = self.certify(CertifiedObject::Batch(batch.clone()));
        assert!(matches!(outcome, ApplyOutcome::Applied { .. }), "{outcome:?}");
    }

    fn vote(&mut self, batch: &Batch) -> Result<Vec<VoterOutput>, VoteRefusal> {
        self.voter.on_batch(&self.ledger, &self.creds, batch, self.now)
    }
}

#[derive(Debug)]
enum Expect {
    /// A first vote: the lock to persist, then the vote.
    Vote,
    /// A repeated vote: no new lock.
    Revote,
    Need(Vec<Missing>),
    Refuse(VoteRefusal),
}

/// The one helper every voting-rule case goes through.
fn check(name: &str, got: Result<Vec<VoterOutput>, VoteRefusal>, expected: Expect) {
    match (&got, &expected) {
        (Ok(outputs), Expect::Vote) => {
            assert_eq!(outputs.len(), 2, "{name}: {outputs:?}");
            let (Some(VoterOutput::Persist(lock)), Some(VoterOutput::SendVote(vote))) =
                (outputs.first(), outputs.get(1))
            else {
                panic!("{name}: expected persist then vote, got {outputs:?}");
            };
            assert_eq!(lock.object_id, vote.object_id, "{name}");
            assert_eq!((lock.bucket, lock.seq), (vote.bucket, vote.seq), "{name}");
        }
        (Ok(outputs), Expect::Revote) => {
            assert!(
                matches!(outputs.as_slice(), [VoterOutput::SendVote(_)]),
                "{name}: {outputs:?}"
            );
        }
        (Ok(outputs), Expect::Need(missing)) => {
            let needs: Vec<Missing> = outputs
                .iter()
                .filter_map(|o| match o {
                    VoterOutput::NeedData(m) => Some(*m),
                    _ => None,
                })
                .collect();
            assert_eq!(&needs, missing, "{name}: {outputs:?}");
            assert!(
                !outputs
                    .iter()
                    .any(|o| matches!(o, VoterOutput::SendVote(v) if v.seq == u64::MAX)),
                "{name}"
            );
        }
        (Err(refusal), Expect::Refuse(expected)) => assert_eq!(refusal, expected, "{name}"),
        _ => panic!("{name}: expected {expected:?}, got {got:?}"),
    }
}

#[test]
fn voting_rules() {
    // --- chain position: seq 0, certificate of seq-1, prev.
    let mut fx = Fx::new();
    let c = fx.claim(2, 0);
    let b0 = fx.batch(2, vec![Entry::Claim(c)]);
    check("seq 0 votes", fx.vote(&b0), Expect::Vote);
    check("same batch again: re-vote, no new lock", fx.vote(&b0), Expect::Revote);
    let c1 = fx.claim(2, 1);
    let mut b1 = fx.batch(2, vec![Entry::Claim(c1.clone())]);
    b1.seq = 1;
    b1.prev = b0.id;
    b1.total_after = 2 * AMOUNT;
    b1.id = b1.compute_id();
    let bucket2 = fx.bucket(2).digest();
    check(
        "seq 1 without certificate of seq 0 needs data",
        fx.vote(&b1),
        Expect::Need(vec![Missing::Certificate {
            bucket: bucket2,
            seq: 0,
        }]),
    );
    fx.certify_batch(&b0);
    check("seq 1 with certificate of seq 0 votes", fx.vote(&b1), Expect::Vote);
    check(
        "certified seq is not voted again",
        fx.vote(&b0),
        Expect::Refuse(VoteRefusal::AlreadyCertified { seq: 0 }),
    );

    let mut fx = Fx::new();
    let c = fx.claim(2, 0);
    let b0 = fx.batch(2, vec![Entry::Claim(c.clone())]);
    fx.certify_batch(&b0);
    let mut wrong_prev = fx.claim_batch(2, 2, 1);
    wrong_prev.prev = [9; 32];
    wrong_prev.id = wrong_prev.compute_id();
    check(
        "prev must match the certified batch",
        fx.vote(&wrong_prev),
        Expect::Refuse(VoteRefusal::PrevMismatch {
            expected: b0.id,
            got: [9; 32],
        }),
    );

    // --- lock: never a different batch or a freeze at one position; survives restart.
    let mut fx = Fx::new();
    let a = fx.claim_batch(2, 2, 0);
    let b = fx.claim_batch(2, 2, 1);
    check("first batch at seq 0 votes", fx.vote(&a), Expect::Vote);
    check(
        "second batch at seq 0 is refused",
        fx.vote(&b),
        Expect::Refuse(VoteRefusal::Locked { seq: 0, locked: a.id }),
    );
    let freeze = Freeze::new(key(3), fx.bucket(2), None, None);
    check(
        "freeze at a locked position is refused",
        fx.voter.on_freeze(&fx.ledger, &fx.creds, &freeze, fx.now),
        Expect::Refuse(VoteRefusal::Locked { seq: 0, locked: a.id }),
    );
    let lock = Lock {
        bucket: fx.bucket(2).digest(),
        seq: 0,
        object_id: a.id,
    };
    fx.voter = Voter::restore(key(1), "eu".into(), VoterConfig { clock_skew_ms: SKEW }, [lock]);
    check(
        "restored lock still refuses the other batch",
        fx.vote(&b),
        Expect::Refuse(VoteRefusal::Locked { seq: 0, locked: a.id }),
    );
    check("restored lock re-votes its own batch", fx.vote(&a), Expect::Revote);

    // --- totals and escrow (bucket 2's share: 600 / 4 = 150).
    let mut fx = Fx::new();
    let mut bad_total = fx.claim_batch(2, 2, 0);
    bad_total.total_after = 5;
    bad_total.id = bad_total.compute_id();
    check(
        "total_after must be previous total plus entries",
        fx.vote(&bad_total),
        Expect::Refuse(VoteRefusal::TotalMismatch {
            expected: Some(AMOUNT),
            got: 5,
        }),
    );
    let to = fx.bucket(3);
    let within = fx.batch(
        2,
        vec![Entry::TransferOut {
            to: to.clone(),
            amount: 150,
        }],
    );
    check("transfer of the whole escrow votes", fx.vote(&within), Expect::Vote);
    let mut fx = Fx::new();
    let over = fx.batch(2, vec![Entry::TransferOut { to, amount: 151 }]);
    check(
        "total beyond escrow is refused",
        fx.vote(&over),
        Expect::Refuse(VoteRefusal::ExceedsEscrow {
            total_after: 151,
            escrow: 150,
        }),
    );
    let to_self = fx.batch(
        2,
        vec![Entry::TransferOut {
            to: fx.bucket(2),
            amount: 1,
        }],
    );
    check(
        "transfer to itself is refused",
        fx.vote(&to_self),
        Expect::Refuse(VoteRefusal::InvalidTransfer { index: 0 }),
    );
    let empty = fx.batch(2, vec![]);
    check(
        "empty batch is refused",
        fx.vote(&empty),
        Expect::Refuse(VoteRefusal::EmptyBatch),
    );
    let c = fx.claim(2, 0);
    let close_first = fx.batch(2, vec![Entry::Close, Entry::Claim(c)]);
    check(
        "close must be last",
        fx.vote(&close_first),
        Expect::Refuse(VoteRefusal::CloseNotLast),
    );
    let c = fx.claim(2, 0);
    let close_last = fx.batch(2, vec![Entry::Claim(c), Entry::Close]);
    check("close as last entry votes", fx.vote(&close_last), Expect::Vote);

    // --- who signs, which region, timestamps.
    let mut fx = Fx::new();
    let mut foreign = fx.claim_batch(2, 2, 0);
    foreign.signer = key(3);
    check(
        "batch signed by another than the owner is refused",
        fx.vote(&foreign),
        Expect::Refuse(VoteRefusal::NotOwner { signer: key(3) }),
    );
    let us = fx.claim_batch(5, 5, 0);
    check(
        "batch of another region is refused",
        fx.vote(&us),
        Expect::Refuse(VoteRefusal::NotMyRegion { region: "us".into() }),
    );
    let mut ahead = fx.claim_batch(2, 2, 0);
    ahead.timestamp = fx.now + SKEW + 1;
    ahead.id = ahead.compute_id();
    check(
        "timestamp ahead of the clock is refused (retryable)",
        fx.vote(&ahead),
        Expect::Refuse(VoteRefusal::TimestampAhead {
            timestamp: fx.now + SKEW + 1,
            now_ms: fx.now,
        }),
    );
    let b0 = fx.claim_batch(2, 2, 0);
    fx.certify_batch(&b0);
    let mut backwards = fx.claim_batch(2, 2, 1);
    backwards.timestamp = fx.now - 1;
    backwards.id = backwards.compute_id();
    check(
        "timestamp before the previous batch is refused",
        fx.vote(&backwards),
        Expect::Refuse(VoteRefusal::TimestampBackwards {
            last: fx.now,
            got: fx.now - 1,
        }),
    );
}

#[test]
fn claim_rules() {
    let invalid = |index, defect| Expect::Refuse(VoteRefusal::InvalidClaim { index, defect });
    let mut fx = Fx::new();
    let valid = fx.claim(2, 0);
    let claimant = valid.claimant;

    let mut cases: Vec<(&str, Claim, Expect)> = Vec::new();
    cases.push(("valid claim votes", valid.clone(), Expect::Vote));
    let mut c = valid.clone();
    c.amount = AMOUNT + 1;
    cases.push((
        "wrong amount",
        c,
        invalid(
            0,
            ClaimDefect::WrongAmount {
                expected: AMOUNT,
                got: AMOUNT + 1,
            },
        ),
    ));
    let mut c = valid.clone();
    c.signer = key(77);
    cases.push(("signer is not claimant", c, invalid(0, ClaimDefect::SignerNotClaimant)));
    let mut c = valid.clone();
    c.distribution_id = [1; 32];
    cases.push(("other distribution", c, invalid(0, ClaimDefect::WrongDistribution)));
    let mut c = valid.clone();
    c.created_at = OPENS - 1;
    cases.push((
        "created before the window",
        c,
        invalid(0, ClaimDefect::OutsideWindow { created_at: OPENS - 1 }),
    ));
    let mut c = valid.clone();
    c.created_at = fx.now + SKEW + 1;
    cases.push((
        "created after the batch timestamp plus skew",
        c,
        invalid(
            0,
            ClaimDefect::AfterBatchTimestamp {
                created_at: fx.now + SKEW + 1,
                timestamp: fx.now,
            },
        ),
    ));
    let mut c = valid.clone();
    c.attestation_id = fx.attest(key(99), SCHEMA, CLOSES * 10);
    cases.push((
        "someone else's credential",
        c,
        invalid(0, ClaimDefect::SubjectNotClaimant),
    ));
    let mut c = valid.clone();
    c.attestation_id = fx.attest(claimant, "other", CLOSES * 10);
    cases.push((
        "schema mismatch",
        c,
        invalid(0, ClaimDefect::SchemaMismatch { schema: "other".into() }),
    ));
    let mut c = valid.clone();
    c.attestation_id = fx.attest(claimant, SCHEMA, valid.created_at);
    cases.push((
        "expired before the claim",
        c,
        invalid(
            0,
            ClaimDefect::CredentialExpired {
                expires_at: valid.created_at,
            },
        ),
    ));
    let mut c = valid.clone();
    c.attestation_id = [42; 32];
    cases.push((
        "unknown attestation needs data",
        c,
        Expect::Need(vec![Missing::Attestation([42; 32])]),
    ));
    // Homed in the other region: bucket 2 is not on its successor line either.
    let elsewhere = fx.claim(5, 0);
    cases.push((
        "not home bucket",
        elsewhere,
        invalid(
            0,
            ClaimDefect::NotHomeBucket {
                home: Some(fx.bucket(5).digest()),
            },
        ),
    ));
    let mut c = valid.clone();
    c.attestation_id = fx.attest(claimant, SCHEMA, CLOSES * 10);
    fx.creds.revocations.insert(c.attestation_id, 0);
    cases.push(("revocation is not a voting condition", c, Expect::Vote));

    for (name, claim, expected) in cases {
        // A fresh voter per case so locks do not interfere.
        fx.voter = Voter::new(key(1), "eu".into(), VoterConfig { clock_skew_ms: SKEW });
        let batch = fx.batch(2, vec![Entry::Claim(claim)]);
        check(name, fx.vote(&batch), expected);
    }

    // Duplicates: within a batch, and against the chain.
    fx.voter = Voter::new(key(1), "eu".into(), VoterConfig { clock_skew_ms: SKEW });
    let mut again = valid.clone();
    again.attestation_id = fx.attest(claimant, SCHEMA, CLOSES * 10);
    again.id = [7; 32];
    let twice = fx.batch(2, vec![Entry::Claim(valid.clone()), Entry::Claim(again.clone())]);
    check(
        "slot twice in one batch",
        fx.vote(&twice),
        invalid(1, ClaimDefect::DuplicateSlotInBatch),
    );
    let b0 = fx.batch(2, vec![Entry::Claim(valid)]);
    fx.certify_batch(&b0);
    let b1 = fx.batch(2, vec![Entry::Claim(again)]);
    check(
        "slot funded earlier in the chain",
        fx.vote(&b1),
        invalid(0, ClaimDefect::SlotAlreadyFunded),
    );
}

#[test]
fn outflow_breaker_uses_chain_timestamps() {
    let dist = distribution(vec![("eu".into(), 600), ("us".into(), 300)], 2 * AMOUNT, 10_000);
    let mut fx = Fx::with_distribution(dist);
    let three: Vec<Entry> = (0..3).map(|n| Entry::Claim(fx.claim(2, n))).collect();
    let over = fx.batch(2, three);
    check(
        "three claims in one window exceed 2",
        fx.vote(&over),
        Expect::Refuse(VoteRefusal::OutflowExceeded {
            outflow: 3 * AMOUNT,
            limit: 2 * AMOUNT,
        }),
    );
    let two: Vec<Entry> = (0..2).map(|n| Entry::Claim(fx.claim(2, n))).collect();
    let b0 = fx.batch(2, two);
    check("two claims fit", fx.vote(&b0), Expect::Vote);
    fx.certify_batch(&b0);
    fx.now += 9_999;
    let c = fx.claim(2, 2);
    let inside = fx.batch(2, vec![Entry::Claim(c)]);
    check(
        "one more inside the window exceeds",
        fx.vote(&inside),
        Expect::Refuse(VoteRefusal::OutflowExceeded {
            outflow: 3 * AMOUNT,
            limit: 2 * AMOUNT,
        }),
    );
    fx.now += 1;
    let c = fx.claim(2, 2);
    let after = fx.batch(2, vec![Entry::Claim(c)]);
    check("the window has moved on", fx.vote(&after), Expect::Vote);
}

#[test]
fn freeze_rules_and_successor_routing() {
    let mut fx = Fx::new();
    let bucket2 = fx.bucket(2);
    let successor = fx.successor(&bucket2);
    let succ_owner = successor.owner[0];
    // The owner's last batch is known only through the freeze.
    let pending = fx.claim_batch(2, 2, 0);
    let freeze = Freeze::new(key(3), bucket2.clone(), Some(0), Some(pending.clone()));
    let got = fx.voter.on_freeze(&fx.ledger, &fx.creds, &freeze, fx.now);
    let outputs = got.clone().unwrap();
    assert!(
        matches!(outputs.first(), Some(VoterOutput::Persist(l)) if l.object_id == pending.id),
        "the pending batch is voted first: {outputs:?}"
    );
    check(
        "freeze waits for its pending batch's certificate",
        Ok(outputs.into_iter().skip(2).collect()),
        Expect::Need(vec![Missing::Certificate {
            bucket: bucket2.digest(),
            seq: 0,
        }]),
    );
    fx.certify_batch(&pending);
    let mismatched = Freeze::new(key(3), bucket2.clone(), Some(0), Some(fx.batch(3, vec![Entry::Close])));
    check(
        "freeze carrying a batch that is not at last_seq is refused",
        fx.voter.on_freeze(&fx.ledger, &fx.creds, &mismatched, fx.now),
        Expect::Refuse(VoteRefusal::FreezePendingMismatch),
    );
    check(
        "freeze votes once its pending batch is certified",
        fx.voter.on_freeze(&fx.ledger, &fx.creds, &freeze, fx.now),
        Expect::Vote,
    );
    let mut outsider = freeze.clone();
    outsider.signer = key(5);
    check(
        "freeze by a validator of another region is refused",
        fx.voter.on_freeze(&fx.ledger, &fx.creds, &outsider, fx.now),
        Expect::Refuse(VoteRefusal::NotRegionValidator { signer: key(5) }),
    );

    // A claim homed at bucket 2 routes to the successor once the freeze is certified.
    let moved = fx.claim(2, 1);
    let at_successor = fx.batch(succ_owner, vec![Entry::Claim(moved.clone())]);
    check(
        "without the freeze certificate the voter asks for it",
        fx.vote(&at_successor),
        Expect::Need(vec![Missing::FreezeOf {
            bucket: bucket2.digest(),
        }]),
    );
    fx.certify(CertifiedObject::Freeze(freeze));
    check(
        "after the freeze the successor funds it",
        fx.vote(&at_successor),
        Expect::Vote,
    );
    // Another voter, unlocked at the successor's seq 0.
    fx.voter = Voter::new(key(4), "eu".into(), VoterConfig { clock_skew_ms: SKEW });
    let funded_before = Entry::Claim(fx.claim(2, 0));
    let again = fx.batch(succ_owner, vec![funded_before]);
    check(
        "a slot funded by the frozen bucket stays funded",
        fx.vote(&again),
        Expect::Refuse(VoteRefusal::InvalidClaim {
            index: 0,
            defect: ClaimDefect::SlotAlreadyFunded,
        }),
    );
    let after_freeze = fx.claim_batch(2, 2, 2);
    check(
        "a frozen chain takes no batch",
        fx.vote(&after_freeze),
        Expect::Refuse(VoteRefusal::ChainEnded),
    );
    // The successor inherits the remainder: 150 share + 140 passed on.
    assert_eq!(fx.ledger.escrow(&successor.digest()), Ok(150 + 140));
}

#[derive(Debug)]
enum OwnerExpect {
    Accepted,
    Refused(ClaimRefusal),
}

/// The one helper every owner-admission case goes through.
fn check_owner(name: &str, got: Result<Vec<OwnerOutput>, ClaimRefusal>, expected: OwnerExpect) {
    match (&got, &expected) {
        (Ok(_), OwnerExpect::Accepted) => {}
        (Err(refusal), OwnerExpect::Refused(expected)) => assert_eq!(refusal, expected, "{name}"),
        _ => panic!("{name}: expected {expected:?}, got {got:?}"),
    }
}

#[test]
fn owner_admission() {
    let mut fx = Fx::new();
    let config = OwnerConfig {
        batch_claims_max: 100,
        clock_skew_ms: SKEW,
    };
    let mut owner = Owner::new(key(2), fx.bucket(2), config);
    let valid = fx.claim(2, 0);
    let claimant = valid.claimant;
    let now = fx.now;
    let submit =
        |fx: &Fx, owner: &mut Owner, claim: Claim, now: Millis| owner.submit_claim(&fx.ledger, &fx.creds, claim, now);
    check_owner(
        "valid claim",
        submit(&fx, &mut owner, valid.clone(), now),
        OwnerExpect::Accepted,
    );
    let mut dup = valid.clone();
    dup.attestation_id = fx.attest(claimant, SCHEMA, CLOSES * 10);
    check_owner(
        "duplicate slot",
        submit(&fx, &mut owner, dup, now),
        OwnerExpect::Refused(ClaimRefusal::DuplicateSlot),
    );
    let other = fx.claim(2, 1);
    let mut c = other.clone();
    c.attestation_id = fx.attest(key(99), SCHEMA, CLOSES * 10);
    check_owner(
        "someone else's credential",
        submit(&fx, &mut owner, c, now),
        OwnerExpect::Refused(ClaimRefusal::SomeoneElsesCredential),
    );
    let mut c = other.clone();
    c.attestation_id = fx.attest(other.claimant, SCHEMA, CLOSES * 10);
    fx.creds.revocations.insert(c.attestation_id, now - 5);
    check_owner(
        "revoked credential",
        submit(&fx, &mut owner, c, now),
        OwnerExpect::Refused(ClaimRefusal::CredentialRevoked { revoked_at: now - 5 }),
    );
    let mut c = other.clone();
    c.attestation_id = fx.attest(other.claimant, SCHEMA, now);
    check_owner(
        "expired credential",
        submit(&fx, &mut owner, c, now),
        OwnerExpect::Refused(ClaimRefusal::CredentialExpired { expires_at: now }),
    );
    let mut c = other.clone();
    c.amount = 1;
    check_owner(
        "wrong amount",
        submit(&fx, &mut owner, c, now),
        OwnerExpect::Refused(ClaimRefusal::WrongAmount {
            expected: AMOUNT,
            got: 1,
        }),
    );
    check_owner(
        "window closed",
        submit(&fx, &mut owner, other.clone(), CLOSES),
        OwnerExpect::Refused(ClaimRefusal::WindowClosed { closes_at: CLOSES }),
    );
    let elsewhere = fx.claim(3, 0);
    check_owner(
        "not home bucket",
        submit(&fx, &mut owner, elsewhere, now),
        OwnerExpect::Refused(ClaimRefusal::NotHomeBucket {
            home: Some(fx.bucket(3).digest()),
        }),
    );
    // Escrow 150 = 15 claims; one is queued, move 130 away, then one more fits, not two.
    owner.request_transfer(&fx.ledger, fx.bucket(3), 130).unwrap();
    check_owner(
        "last claim fits",
        submit(&fx, &mut owner, other, now),
        OwnerExpect::Accepted,
    );
    let third = fx.claim(2, 2);
    check_owner(
        "bucket exhausted",
        submit(&fx, &mut owner, third, now),
        OwnerExpect::Refused(ClaimRefusal::BucketExhausted {
            available: 0,
            amount: AMOUNT,
        }),
    );
}

#[test]
fn owner_chains_batches() {
    let mut fx = Fx::new();
    let config = OwnerConfig {
        batch_claims_max: 2,
        clock_skew_ms: SKEW,
    };
    let mut owner = Owner::new(key(2), fx.bucket(2), config);
    let claims: Vec<Claim> = (0..5).map(|n| fx.claim(2, n)).collect();
    let out = owner
        .submit_claim(&fx.ledger, &fx.creds, claims[0].clone(), fx.now)
        .unwrap();
    assert!(out.is_empty());
    let out = owner
        .submit_claim(&fx.ledger, &fx.creds, claims[1].clone(), fx.now)
        .unwrap();
    let [OwnerOutput::PersistBatch(b0), OwnerOutput::SendBatch(sent)] = out.as_slice() else {
        panic!("a full batch is persisted then sent: {out:?}");
    };
    assert_eq!(b0, sent);
    assert_eq!((b0.seq, b0.prev, b0.total_after), (0, ZERO_DIGEST, 2 * AMOUNT));
    // While b0 is in flight, claims queue up to the limit, then the owner is busy.
    owner
        .submit_claim(&fx.ledger, &fx.creds, claims[2].clone(), fx.now)
        .unwrap();
    owner
        .submit_claim(&fx.ledger, &fx.creds, claims[3].clone(), fx.now)
        .unwrap();
    check_owner(
        "open batch full while one is in flight",
        owner.submit_claim(&fx.ledger, &fx.creds, claims[4].clone(), fx.now),
        OwnerExpect::Refused(ClaimRefusal::Busy),
    );
    assert_eq!(owner.close_batch(&fx.ledger, fx.now), Ok(vec![]), "one batch in flight");
    check("voters accept the owner's batch", fx.vote(b0), Expect::Vote);
    fx.certify_batch(b0);
    let out = owner.close_batch(&fx.ledger, fx.now + 1).unwrap();
    let Some(OwnerOutput::SendBatch(b1)) = out.get(1) else {
        panic!("{out:?}");
    };
    assert_eq!((b1.seq, b1.prev, b1.total_after), (1, b0.id, 4 * AMOUNT));
    check("voters accept the chained batch", fx.vote(b1), Expect::Vote);
    // A restarted owner resumes its persisted batch instead of signing another at seq 1.
    let restored = Owner::restore(key(2), fx.bucket(2), config, Some(b1.clone()));
    assert_eq!(restored.in_flight(), Some(b1));
}

#[test]
fn ledger_accounting() {
    let mut fx = Fx::new();
    let d = fx.dist.id;
    // A transfer from 2 to 3 credits 3 when the certificate is applied.
    let t = fx.batch(
        2,
        vec![Entry::TransferOut {
            to: fx.bucket(3),
            amount: 50,
        }],
    );
    fx.certify_batch(&t);
    assert_eq!(fx.ledger.escrow(&fx.bucket(3).digest()), Ok(200));
    // A claim certified, then its credential revoked before the batch: disputed.
    let c = fx.claim(3, 0);
    let b = fx.batch(3, vec![Entry::Claim(c.clone())]);
    fx.certify_batch(&b);
    assert_eq!(
        fx.ledger.claim_status(&c.id, &fx.creds, &NoGlobalView),
        Some(ClaimStatus::Regional {
            bucket: fx.bucket(3).digest(),
            seq: 0
        })
    );
    assert_eq!(
        fx.ledger.recipient_balances(&fx.creds).unwrap().get(&(d, c.recipient)),
        Some(&AMOUNT)
    );
    fx.creds.revocations.insert(c.attestation_id, fx.now + 1);
    assert!(
        matches!(
            fx.ledger.claim_status(&c.id, &fx.creds, &NoGlobalView),
            Some(ClaimStatus::Regional { .. })
        ),
        "revoked after the batch: not disputed"
    );
    fx.creds.revocations.insert(c.attestation_id, fx.now);
    assert!(matches!(
        fx.ledger.claim_status(&c.id, &fx.creds, &NoGlobalView),
        Some(ClaimStatus::Disputed { .. })
    ));
    assert_eq!(
        fx.ledger.recipient_balances(&fx.creds).unwrap().get(&(d, c.recipient)),
        None
    );
    let liquidity = fx.ledger.liquidity(&d, &fx.creds).unwrap();
    let b3 = liquidity.iter().find(|l| l.bucket == fx.bucket(3).digest()).unwrap();
    assert_eq!(
        (b3.escrow, b3.spent, b3.available, b3.disputed, b3.transferred_in),
        (200, AMOUNT, 200 - AMOUNT, AMOUNT, 50)
    );
    let sum = |f: fn(&BucketLiquidity) -> u64| liquidity.iter().map(f).sum::<u64>();
    assert_eq!(
        sum(|l| l.spent) + sum(|l| l.available) + sum(|l| l.stranded),
        fx.dist.total,
        "conservation"
    );
}

#[test]
fn ledger_waits_and_is_order_independent() {
    let mut fx = Fx::new();
    let t = fx.batch(
        2,
        vec![Entry::TransferOut {
            to: fx.bucket(3),
            amount: 100,
        }],
    );
    fx.certify_batch(&t);
    // Bucket 3 spends beyond its share, using the credit: 16 claims = 160 > 150.
    let claims: Vec<Entry> = (0..16).map(|n| Entry::Claim(fx.claim(3, n))).collect();
    let spend = fx.batch(3, claims);
    fx.certify_batch(&spend);
    let mut next = spend.clone();
    next.seq = 1;
    next.prev = spend.id;
    next.entries = vec![Entry::Claim(fx.claim(3, 20))];
    next.total_after = spend.total_after + AMOUNT;
    next.id = next.compute_id();
    fx.certify_batch(&next);
    let expected = fx.ledger.state_digest();

    let certs = |object: CertifiedObject, region_keys: [u8; 3]| {
        let votes = region_keys
            .iter()
            .map(|n| Vote {
                signer: key(*n),
                object_id: object.id(),
                bucket: object.bucket().digest(),
                seq: object.seq().unwrap(),
                region: object.bucket().region.clone(),
            })
            .collect();
        Certificate { object, votes }
    };
    let mut other = Ledger::new(fx.ledger.validators().clone(), 8);
    let c_next = certs(CertifiedObject::Batch(next), [1, 2, 3]);
    let c_spend = certs(CertifiedObject::Batch(spend), [1, 2, 3]);
    let c_t = certs(CertifiedObject::Batch(t.clone()), [1, 2, 3]);
    assert!(
        matches!(other.apply(c_next.clone()), Ok(ApplyOutcome::Waiting(_))),
        "no distribution yet"
    );
    other.add_distribution(fx.dist.clone()).unwrap();
    assert!(
        matches!(other.apply(c_spend), Ok(ApplyOutcome::Waiting(_))),
        "waits for the credit"
    );
    assert_eq!(other.apply(c_t), Ok(ApplyOutcome::Applied { released: 2 }));
    assert_eq!(other.waiting_len(), 0);
    assert_eq!(other.state_digest(), expected);
    assert_eq!(other.apply(c_next), Ok(ApplyOutcome::Duplicate));

    // A second certificate at a certified position is an error, not a fork.
    let mut fork = t;
    fork.timestamp += 1;
    fork.id = fork.compute_id();
    assert!(matches!(
        other.apply(certs(CertifiedObject::Batch(fork), [1, 2, 3])),
        Err(LedgerError::ConflictingCertificate { seq: 0, .. })
    ));
    // Too few votes is no certificate.
    let thin = Certificate {
        object: CertifiedObject::Batch(fx.batch(4, vec![Entry::Close])),
        votes: vec![],
    };
    assert!(matches!(other.apply(thin), Err(LedgerError::Certificate(_))));
}

#[test]
fn single_validator_region_strands_its_remainder() {
    let validators = ValidatorSet::new(
        vec![Validator {
            key: key(1),
            region: "solo".into(),
            weight: 1,
        }],
        FaultModel::Crash,
    )
    .unwrap();
    let dist = distribution(vec![("solo".into(), 100)], 0, 0);
    let mut ledger = Ledger::new(validators, 8);
    ledger.add_distribution(dist.clone()).unwrap();
    let bucket = BucketId {
        distribution: dist.id,
        region: "solo".into(),
        owner: key(1),
    };
    let close = Batch::new(key(1), bucket.clone(), 0, ZERO_DIGEST, 5, vec![Entry::Close], 0);
    let vote = Vote {
        signer: key(1),
        object_id: close.id,
        bucket: bucket.digest(),
        seq: 0,
        region: "solo".into(),
    };
    let applied = ledger.apply(Certificate {
        object: CertifiedObject::Batch(close),
        votes: vec![vote],
    });
    assert_eq!(applied, Ok(ApplyOutcome::Applied { released: 0 }));
    let liquidity = ledger.liquidity(&dist.id, &Creds::default()).unwrap();
    assert_eq!(liquidity.len(), 1);
    assert_eq!((liquidity[0].available, liquidity[0].stranded), (0, 100));
    assert!(matches!(
        ledger.route(&dist.id, &key(9)),
        Some(Route::NoLiveBucket { .. })
    ));
}

#[test]
fn distribution_checks_and_thresholds() {
    let fx = Fx::new();
    let mut bad = fx.dist.clone();
    bad.total += 1;
    assert!(matches!(
        ActiveDistribution::activate(bad, fx.ledger.validators()),
        Err(DistributionError::AllocationMismatch { .. })
    ));
    let mut bad = fx.dist.clone();
    bad.allocations = vec![("mars".into(), 900)];
    assert!(matches!(
        ActiveDistribution::activate(bad, fx.ledger.validators()),
        Err(DistributionError::UnknownRegion { .. })
    ));
    let v = fx.ledger.validators();
    assert!(!v.is_quorum("eu", 2), "2 of 4 is not > 2/3");
    assert!(v.is_quorum("eu", 3));
    let crash = ValidatorSet::new(
        (1..=4)
            .map(|n| Validator {
                key: key(n),
                region: "eu".into(),
                weight: 1,
            })
            .collect(),
        FaultModel::Crash,
    )
    .unwrap();
    assert!(!crash.is_quorum("eu", 2), "2 of 4 is not > 1/2");
    assert!(crash.is_quorum("eu", 3));
    // Shares: 600 over four equal weights, 300 over three.
    let active = fx.ledger.distribution(&fx.dist.id).unwrap();
    let shares: Vec<u64> = active.buckets().map(|b| b.share).collect();
    assert_eq!(shares.iter().sum::<u64>(), 900);
    assert!(shares.iter().all(|s| *s == 150 || *s == 100), "{shares:?}");
}

#[test]
fn equivocation_evidence() {
    let mut fx = Fx::new();
    let a = fx.claim_batch(2, 2, 0);
    let b = fx.claim_batch(2, 2, 1);
    let evidence = Equivocation::check(a.clone(), b.clone()).unwrap();
    assert_eq!((evidence.owner, evidence.seq), (key(2), 0));
    assert_eq!(Equivocation::check(b.clone(), a.clone()), Ok(evidence));
    assert_eq!(Equivocation::check(a.clone(), a.clone()), Err(EvidenceError::SameBatch));
    let other = fx.batch(3, vec![Entry::Close]);
    assert_eq!(Equivocation::check(a, other), Err(EvidenceError::DifferentPosition));
}

#[test]
fn status_ladder_and_pending_liquidity() {
    let mut fx = Fx::new();
    let d = fx.dist.id;
    let c = fx.claim(2, 0);
    let status = |fx: &Fx, id: &Digest| fx.ledger.claim_status(id, &fx.creds, &NoGlobalView);
    assert_eq!(status(&fx, &c.id), None, "never seen");
    fx.ledger.note_received(c.id);
    assert_eq!(status(&fx, &c.id), Some(ClaimStatus::Received));
    let b0 = fx.batch(2, vec![Entry::Claim(c.clone())]);
    fx.ledger.note_provisional(&b0);
    let bucket = fx.bucket(2).digest();
    assert_eq!(status(&fx, &c.id), Some(ClaimStatus::Provisional { bucket, seq: 0 }));
    let pending = |fx: &Fx| {
        let all = fx.ledger.liquidity(&d, &fx.creds).unwrap();
        all.into_iter().find(|l| l.bucket == bucket).unwrap()
    };
    assert_eq!((pending(&fx).pending, pending(&fx).spent), (AMOUNT, 0));
    fx.certify_batch(&b0);
    assert_eq!(status(&fx, &c.id), Some(ClaimStatus::Regional { bucket, seq: 0 }));
    assert_eq!((pending(&fx).pending, pending(&fx).spent), (0, AMOUNT));
    struct Everything;
    impl GlobalView for Everything {
        fn is_global(&self, _: &Digest, _: u64) -> bool {
            true
        }
    }
    assert_eq!(
        fx.ledger.claim_status(&c.id, &fx.creds, &Everything),
        Some(ClaimStatus::Global { bucket, seq: 0 })
    );
    let refused = fx.claim(2, 1);
    fx.ledger
        .note_rejected(refused.id, ClaimRefusal::SomeoneElsesCredential);
    assert_eq!(
        status(&fx, &refused.id),
        Some(ClaimStatus::Rejected {
            reason: ClaimRefusal::SomeoneElsesCredential
        })
    );
}

#[test]
fn owner_revalidates_stale_entries_and_hands_back_orphans() {
    let mut fx = Fx::new();
    let config = OwnerConfig {
        batch_claims_max: 10,
        clock_skew_ms: SKEW,
    };
    // A restarted owner whose ledger lags: it admits a claim whose slot is already certified.
    let funded = fx.claim(2, 0);
    let b0 = fx.batch(2, vec![Entry::Claim(funded.clone())]);
    let stale = fx.ledger.clone();
    fx.certify_batch(&b0);
    let mut owner = Owner::restore(key(2), fx.bucket(2), config, None);
    let mut again = funded.clone();
    again.attestation_id = fx.attest(funded.claimant, SCHEMA, CLOSES * 10);
    again.id = [5; 32];
    let fresh = fx.claim(2, 1);
    owner.submit_claim(&stale, &fx.creds, again.clone(), fx.now).unwrap();
    owner.submit_claim(&stale, &fx.creds, fresh.clone(), fx.now).unwrap();
    let out = owner.close_batch(&fx.ledger, fx.now).unwrap();
    assert_eq!(
        out.first(),
        Some(&OwnerOutput::Dropped {
            claim: again,
            reason: ClaimRefusal::DuplicateSlot
        })
    );
    let Some(OwnerOutput::SendBatch(b1)) = out.last() else {
        panic!("{out:?}");
    };
    assert_eq!(b1.claims().collect::<Vec<_>>(), vec![&fresh]);
    check("the revalidated batch is voted", fx.vote(b1), Expect::Vote);

    // The bucket is frozen under the in-flight batch: its claims come back for re-routing.
    let freeze = Freeze::new(key(3), fx.bucket(2), Some(0), None);
    fx.certify(CertifiedObject::Freeze(freeze));
    assert_eq!(owner.sync(&fx.ledger), vec![fresh]);
    assert!(owner.is_ended());
    assert_eq!(owner.close_batch(&fx.ledger, fx.now), Err(OwnerError::ChainEnded));
}

#[test]
fn voter_needs_the_distribution_first() {
    let mut fx = Fx::new();
    let other = distribution(vec![("eu".into(), 40)], 0, 1);
    let bucket = BucketId {
        distribution: other.id,
        region: "eu".into(),
        owner: key(2),
    };
    let batch = Batch::new(key(2), bucket, 0, ZERO_DIGEST, fx.now, vec![Entry::Close], 0);
    check(
        "unknown distribution needs data",
        fx.vote(&batch),
        Expect::Need(vec![Missing::Distribution(other.id)]),
    );
    fx.ledger.add_distribution(other).unwrap();
    check("known distribution votes", fx.vote(&batch), Expect::Vote);
}

#[test]
fn a_rebalance_splits_by_share_across_source_buckets_and_sums_exactly() {
    let fx = Fx::new();
    let active = fx.ledger.distribution(&fx.dist.id).unwrap();
    // eu's 600 is 150 per bucket: 101 splits 25 each, the remainder to the first.
    let parts = active.rebalance_split("eu", "us", 101).unwrap();
    assert_eq!(parts.len(), 4);
    assert_eq!(parts.iter().map(|(_, _, amount)| amount).sum::<u64>(), 101);
    assert_eq!(parts[0].2, 26);
    assert!(parts[1..].iter().all(|(_, _, amount)| *amount == 25));
    let eu = active.region_buckets("eu");
    let us = active.region_buckets("us");
    for (i, (source, destination, _)) in parts.iter().enumerate() {
        assert_eq!(source, &eu[i]);
        assert_eq!(destination, &us[i % us.len()]);
    }
    // Parts that round to zero are left out; nothing moves within a region or nowhere.
    assert_eq!(active.rebalance_split("eu", "us", 1).unwrap().len(), 1);
    assert!(active.rebalance_split("eu", "eu", 10).is_err());
    assert!(active.rebalance_split("eu", "mars", 10).is_err());
    assert!(active.rebalance_split("eu", "us", 0).is_err());
}

#[test]
fn a_transfer_moves_escrow_to_its_destination_once_certified() {
    let mut fx = Fx::new();
    let active = fx.ledger.distribution(&fx.dist.id).unwrap().clone();
    let (source, destination, amount) = active.rebalance_split("eu", "us", 40).unwrap()[0];
    let source_id = active.bucket(&source).unwrap().id.clone();
    let destination_id = active.bucket(&destination).unwrap().id.clone();
    let before = fx.ledger.escrow(&destination).unwrap();
    let config = OwnerConfig {
        batch_claims_max: 8,
        clock_skew_ms: SKEW,
    };
    let mut owner = Owner::new(source_id.owner, source_id.clone(), config);
    owner
        .request_transfer(&fx.ledger, destination_id.clone(), amount)
        .unwrap();
    assert_eq!(
        owner
            .open_transfers()
            .map(|(to, a)| (to.clone(), a))
            .collect::<Vec<_>>(),
        vec![(destination_id, amount)]
    );
    let batch = sent_batch(&mut owner, &fx.ledger, fx.now);
    fx.certify_batch(&batch);
    assert_eq!(fx.ledger.escrow(&destination).unwrap(), before + amount);
}

/// Moves `amount` of `owner`'s bucket to us-5 with a certified transfer, leaving it low.
/// Closes the owner's open batch and returns the batch it sends.
fn sent_batch(owner: &mut Owner, ledger: &Ledger, now: Millis) -> Batch {
    owner
        .close_batch(ledger, now)
        .unwrap()
        .into_iter()
        .find_map(|o| match o {
            OwnerOutput::SendBatch(batch) => Some(batch),
            _ => None,
        })
        .unwrap()
}

fn drain(fx: &mut Fx, owner: u8, amount: u64) {
    let batch = fx.batch(
        owner,
        vec![Entry::TransferOut {
            to: fx.bucket(5),
            amount,
        }],
    );
    fx.certify_batch(&batch);
}

/// The one helper every need case goes through.
fn check_need(name: &str, got: Option<u64>, expected: Option<u64>) {
    assert_eq!(got, expected, "{name}");
}

#[test]
fn an_owner_advertises_a_need_only_when_low_with_demand() {
    let mut fx = Fx::new();
    let config = OwnerConfig {
        batch_claims_max: 100,
        clock_skew_ms: SKEW,
    };
    let now = fx.now;
    drain(&mut fx, 2, 140);
    let mut owner = Owner::new(key(2), fx.bucket(2), config);
    check_need("low without demand asks nothing", owner.need(&fx.ledger, now, 0), None);
    let claim = fx.claim(2, 0);
    owner.submit_claim(&fx.ledger, &fx.creds, claim, now).unwrap();
    check_need(
        "a queued claim is demand: empty asks for the target",
        owner.need(&fx.ledger, now, 0),
        Some(4 * AMOUNT),
    );
    check_need("transfers on their way count", owner.need(&fx.ledger, now, 25), None);
    check_need("part of the way", owner.need(&fx.ledger, now, 5), Some(4 * AMOUNT - 5));
    check_need(
        "a closed distribution asks nothing",
        owner.need(&fx.ledger, CLOSES, 0),
        None,
    );
    let batch = sent_batch(&mut owner, &fx.ledger, now);
    check_need(
        "a claim in flight is demand",
        owner.need(&fx.ledger, now, 0),
        Some(4 * AMOUNT),
    );
    fx.certify_batch(&batch);
    let restarted = Owner::new(key(2), fx.bucket(2), config);
    check_need(
        "a certified spend is demand",
        restarted.need(&fx.ledger, now, 0),
        Some(4 * AMOUNT),
    );
    let mut closing = restarted.clone();
    closing.request_close();
    check_need("a closing chain asks nothing", closing.need(&fx.ledger, now, 0), None);

    // A bucket that refused a claim for lack of escrow has demand, though it spent nothing.
    drain(&mut fx, 3, 145);
    let mut starved = Owner::new(key(3), fx.bucket(3), config);
    check_need("low, nothing asked of it yet", starved.need(&fx.ledger, now, 0), None);
    let claim = fx.claim(3, 0);
    assert!(matches!(
        starved.submit_claim(&fx.ledger, &fx.creds, claim, now),
        Err(ClaimRefusal::BucketExhausted { .. })
    ));
    check_need(
        "refused for lack of escrow",
        starved.need(&fx.ledger, now, 0),
        Some(4 * AMOUNT - 5),
    );
    let plenty = Owner::new(key(4), fx.bucket(4), config);
    check_need("plenty asks nothing", plenty.need(&fx.ledger, now, 0), None);
}

/// The one helper every answering case goes through: what `donor` queues for `ads`, as
/// (destination owner, amount), with the owners in `suspected` left out of the donors.
fn check_answers(name: &str, fx: &Fx, donor: &Owner, ads: &[NeedAd], suspected: &[u8], expected: &[(u8, u64)]) {
    let got: Vec<(u8, u64)> = answer_needs(&fx.ledger, donor, ads, |k| !suspected.iter().any(|s| key(*s) == *k))
        .into_iter()
        .map(|(to, amount)| (to.owner[0], amount))
        .collect();
    assert_eq!(got, expected, "{name}");
}

fn ad(fx: &Fx, bucket: u8, advertiser: u8, amount: u64, donor_chain_seen: u64) -> NeedAd {
    NeedAd {
        bucket: fx.bucket(bucket).digest(),
        advertiser: key(advertiser),
        amount,
        donor_chain_seen,
    }
}

#[test]
fn donors_answer_a_need_in_proportion_once_and_only_when_it_is_genuine() {
    let mut fx = Fx::new();
    let config = OwnerConfig {
        batch_claims_max: 100,
        clock_skew_ms: SKEW,
    };
    // eu buckets hold 150 each; 2 is drained to 10 and asks for 30 (to reach 4 claims).
    drain(&mut fx, 2, 140);
    let donors: Vec<Owner> = [1u8, 3, 4]
        .iter()
        .map(|n| Owner::new(key(*n), fx.bucket(*n), config))
        .collect();
    let need = [ad(&fx, 2, 2, 30, 0)];
    for donor in &donors {
        check_answers(
            "three equal donors give a third each",
            &fx,
            donor,
            &need,
            &[],
            &[(2, 10)],
        );
    }
    let lowest = [1u8, 3, 4].into_iter().min_by_key(|n| fx.bucket(*n).digest()).unwrap();
    for (n, donor) in [1u8, 3, 4].iter().zip(&donors) {
        let part = if *n == lowest { 8 } else { 6 };
        check_answers(
            "the remainder goes to the lowest donor",
            &fx,
            donor,
            &[ad(&fx, 2, 2, 20, 0)],
            &[],
            &[(2, part)],
        );
    }
    let d1 = &donors[0];
    check_answers(
        "asking for more than it lacks gets what brings it to the target",
        &fx,
        d1,
        &[ad(&fx, 2, 2, 1_000_000, 0)],
        &[],
        &[(2, 10)],
    );
    check_answers(
        "a suspected donor's part falls to the others",
        &fx,
        d1,
        &need,
        &[4],
        &[(2, 15)],
    );
    check_answers(
        "an ad twice is answered once",
        &fx,
        d1,
        &[need[0].clone(), need[0].clone()],
        &[],
        &[(2, 10)],
    );
    check_answers("only the owner's ad counts", &fx, d1, &[ad(&fx, 2, 3, 30, 0)], &[], &[]);
    check_answers("another region's bucket", &fx, d1, &[ad(&fx, 5, 5, 30, 0)], &[], &[]);
    check_answers("its own bucket", &fx, d1, &[ad(&fx, 1, 1, 30, 0)], &[], &[]);
    check_answers("nothing asked", &fx, d1, &[ad(&fx, 2, 2, 0, 0)], &[], &[]);
    check_answers(
        "a bucket at the target lacks nothing",
        &fx,
        d1,
        &[ad(&fx, 3, 3, 30, 0)],
        &[],
        &[],
    );
    let unknown = NeedAd {
        bucket: [9; 32],
        ..need[0].clone()
    };
    check_answers("an unknown bucket", &fx, d1, &[unknown], &[], &[]);
    let mut poor = Owner::new(key(4), fx.bucket(4), config);
    poor.request_transfer(&fx.ledger, fx.bucket(3), 110).unwrap();
    check_answers("a donor at its reserve gives nothing", &fx, &poor, &need, &[], &[]);

    // Once answered, donor 1 does not answer again while its transfer is queued, in flight, or
    // certified but not yet applied by the needy owner.
    let mut d1 = donors[0].clone();
    for (to, amount) in answer_needs(&fx.ledger, &d1, &need, |_| true) {
        d1.request_transfer(&fx.ledger, to, amount).unwrap();
    }
    check_answers("queued: not again", &fx, &d1, &need, &[], &[]);
    let batch = sent_batch(&mut d1, &fx.ledger, fx.now);
    check_answers("in flight: not again", &fx, &d1, &need, &[], &[]);
    fx.certify_batch(&batch);
    assert_eq!(
        fx.ledger.escrow(&fx.bucket(2).digest()),
        Ok(160),
        "credited when certified"
    );
    // Inside eu the 10 cancel: eu holds its allocation, less nothing, and shows only the 140
    // that left for us; bucket rows still show both sides.
    let report = fx.ledger.liquidity_report(&fx.dist.id, &fx.creds).unwrap();
    let eu = &report.regions["eu"];
    assert_eq!((eu.escrow, eu.transferred_in, eu.transferred_out), (600, 0, 140));
    assert_eq!(
        eu.spent + eu.transferred_out + eu.available + eu.stranded,
        600,
        "eu conserves"
    );
    assert_eq!(report.regions["us"].escrow, 300 + 140);
    let rows = |f: fn(&BucketLiquidity) -> u64| report.buckets.iter().map(f).sum::<u64>();
    assert_eq!((rows(|b| b.transferred_in), rows(|b| b.transferred_out)), (150, 150));
    check_answers("certified, not yet seen by the needy owner", &fx, &d1, &need, &[], &[]);
    // Seen: bucket 2 now holds 20 and lacks 20; donor 1's surplus is 100 of 320 in all.
    let answered = answer_needs(&fx.ledger, &d1, &[ad(&fx, 2, 2, 20, 1)], |_| true);
    assert!(
        matches!(answered.as_slice(), [(to, amount)] if *to == fx.bucket(2) && (6..=8).contains(amount)),
        "a fresh need after the credit is answered anew: {answered:?}"
    );

    // An ended bucket neither asks nor gives.
    let freeze = Freeze::new(key(1), fx.bucket(4), None, None);
    fx.certify(CertifiedObject::Freeze(freeze));
    check_answers(
        "an ended bucket lacks nothing",
        &fx,
        &d1,
        &[ad(&fx, 4, 4, 30, 0)],
        &[],
        &[],
    );
    let ended = Owner::new(key(4), fx.bucket(4), config);
    check_answers("an ended donor gives nothing", &fx, &ended, &need, &[], &[]);
}
