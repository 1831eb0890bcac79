//! The validator state machine: everything a node decides about claims,
//! batches, votes, certificates, heartbeats, suspicion, takeovers, needs and
//! global promotion, as one sans-IO program that the node and the simulator
//! both run.
//!
//! Shape (raft-rs `RawNode`, quinn-proto): [`Validator::step`] takes one
//! [`Input`] at `now` and [`Validator::tick`] does the periodic work; both
//! return [`Outputs`], plain records the shell carries out **in order**:
//! first every persist record (`locks`, then `held`, then
//! `store_certificates`) is made durable, then the sends go out, then the
//! shell steps [`Input::Persisted`], which counts this validator's own votes
//! (whose locks were among what it just made durable) and may form
//! certificates. That order is the safety argument of DESIGN.md
//! "Durability": nothing that depends on a lock or an own batch leaves before
//! the lock is on disk, and an owner never sends a batch it could forget.
//!
//! No clock reads, no randomness, no I/O: time comes in as `now`, signing
//! goes through [`Signer`], and nothing that feeds an output iterates a hash
//! map (every map here is ordered). The node (`node.rs`) drives it from its
//! actor; the simulator (`sim/`) drives N of them over a virtual network.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use credence_proto::v1 as pb;
use prost::Message;

use crate::core::Millis;
use crate::core::credentials::{CredentialBook, CredentialStatus};
use crate::core::envelope::{Ed25519, Kind, KnownSignatures, NetworkId, ObjectId, SignatureCheck, Verified, seal_with};
use crate::core::escrow::{
    AttestationFacts, Batch, BucketId, Certificate, CertifiedObject, Claim, ClaimRefusal, ClaimStatus, CredentialView,
    Digest, Distribution, Equivocation, FaultModel, Freeze, GlobalView, Key, Ledger, Lock, Owner, OwnerConfig,
    OwnerOutput, Route, ValidatorSet, Vote, Voter, VoterConfig, VoterOutput,
};
use crate::core::escrow::{Entry, NEEDS_PER_HEARTBEAT_MAX, NeedAd, answer_needs};
use crate::core::mutation::{Mutation, mutated};
use crate::core::quorum::{self, ArrivalHistory, Mode, RttEstimate, ScopeView};
use crate::core::wire::{self, WireError};

#[cfg(test)]
mod tests;

/// Certificates the ledger holds while waiting for what they depend on.
pub const LEDGER_WAITING_MAX: usize = 65_536;
/// Claims waiting to be retried (their credential or distribution not known
/// here yet); beyond this the oldest are refused.
pub const PENDING_CLAIMS_MAX: usize = 100_000;
/// How long a retryable claim is retried before it is refused.
pub const PENDING_CLAIM_TTL_MS: Millis = 60_000;
/// Claims held here while they wait for their owner (durably, in the
/// store's `held/v1`); beyond this new claims are refused until some certify.
pub const HELD_CLAIMS_MAX: usize = 200_000;
/// Most waiting claims of other owners judged again per tick, each at most
/// once per [`RECHECK_INTERVAL_MS`] (see `recheck_waiting`).
pub const RECHECK_PER_TICK: usize = 256;
pub const RECHECK_INTERVAL_MS: Millis = 1_000;
/// An owner caught equivocating is reported (evidence gossiped) again at
/// most this often by one validator, however many positions it equivocates
/// at: one proof names the owner, and an owner with a leaked key could
/// otherwise make every voter gossip evidence as fast as it signs batches.
pub const EQUIVOCATION_REPORT_INTERVAL_MS: Millis = 60_000;
/// An entry node gossips a claim still waiting for its owner again after
/// this long (past gossip's duplicate cache, `net::DUPLICATE_CACHE_TIME`, so
/// peers take it anew): an owner that was cut off or too slow when the claim
/// first went out still gets it.
pub const CLAIM_REPUBLISH_MS: Millis = 30_000;
/// A client's submission of a claim still waiting here hands it to its owner
/// again, at most this often.
pub const CLIENT_RESUBMIT_MIN_MS: Millis = 1_000;
/// Certificates kept in memory per bucket, newest first: enough for the
/// `prev` a vote request attaches and for a frontier; older ones are served
/// from the store's certificate log.
pub const CERTIFICATES_KEPT_PER_BUCKET: u64 = 8;
/// Fingerprints of certificate bytes remembered as applied here (a copy met
/// again is recognised without verifying it).
pub const CERTIFICATE_FINGERPRINTS_MAX: usize = 131_072;
/// Envelopes remembered as verified (claims, batches, votes), so one met
/// again inside a vote request or certificate is not checked again.
pub const KNOWN_SIGNATURES_MAX: usize = 131_072;
/// Most claim timelines kept in memory; the oldest are forgotten first.
pub const TIMELINES_MAX: usize = 1_000_000;
/// A need heard longer ago than this many heartbeat intervals is not
/// answered: its owner has gone quiet, or its later heartbeats were lost
/// and its bucket may be refilled already.
pub const NEED_MAX_AGE_HEARTBEATS: u64 = 8;

/// The steps a claim reached, on this node's clock (0 = not reached).
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub received_at: Millis,
    pub provisional_at: Millis,
    pub regional_at: Millis,
    pub global_at: Millis,
    pub disputed_at: Millis,
    pub rejected_at: Millis,
    pub reason: String,
    pub claim: Option<Claim>,
    pub home: Option<BucketId>,
    /// When this node, as the claim's entry node, last gossiped it (0 = never).
    pub published_at: Millis,
}

/// The steps of a claim's ladder, in the order a claim climbs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Received,
    Provisional,
    Regional,
    Global,
}

impl Timeline {
    /// Records that the claim reached `step` at `now`. Steps below it that
    /// this node did not see on its own (only the owner sees a batch before
    /// its certificate; a node may learn of a claim from its certificate)
    /// are stamped with the same time: every step reached has a time, and
    /// the times never decrease up the ladder. A step stamped already keeps
    /// its time.
    pub fn reach(&mut self, step: Step, now: Millis) {
        let slots = [
            (Step::Received, &mut self.received_at),
            (Step::Provisional, &mut self.provisional_at),
            (Step::Regional, &mut self.regional_at),
            (Step::Global, &mut self.global_at),
        ];
        // The latest stamp below a missing step, so a filled step never goes
        // below one stamped earlier (a `received_at` restored after a restart).
        let mut floor: Millis = 0;
        for (s, at) in slots {
            if s > step {
                break;
            }
            if *at == 0 {
                *at = now.max(floor);
            }
            floor = floor.max(*at);
        }
    }
}

/// A safety-critical record the shell makes durable (fdatasync) before
/// anything of the same [`Outputs`] leaves the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockRecord {
    /// "I voted for `object_id` at `(bucket, seq)`."
    Vote {
        bucket: [u8; 32],
        seq: u64,
        object_id: [u8; 32],
    },
    /// An owner's own signed batch (encoded `Signed`), before it is sent.
    OwnBatch { envelope: Vec<u8> },
}

/// A change to the claims this node holds durably while they wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldChange {
    Hold {
        id: [u8; 32],
        received_at: Millis,
        envelope: Vec<u8>,
    },
    /// Certified or refused: no longer held.
    Release([u8; 32]),
}

/// What the shell must do after a [`Validator::step`] or [`Validator::tick`],
/// in this order: persist, then send, then step [`Input::Persisted`].
#[derive(Debug, Default)]
pub struct Outputs {
    // Persist, in this order, before anything below leaves the node.
    /// Vote locks and own batches (`locks.log`, fdatasync).
    pub locks: Vec<LockRecord>,
    /// Claims to hold durably while they wait, and held ones that were
    /// certified or refused, in the order they happened.
    pub held: Vec<HeldChange>,
    /// Certificates to append to the certificate log (encoded `Certificate`).
    pub store_certificates: Vec<Vec<u8>>,

    // Send, once the records above are durable.
    /// The answer to the vote request this step was given.
    pub vote_reply: Option<pb::VoteResponse>,
    /// Vote requests to send: (voter key, request). Never addressed to this
    /// validator: its own votes are judged inside and counted at
    /// [`Input::Persisted`].
    pub vote_requests: Vec<(Key, pb::VoteRequest)>,
    /// Claims to gossip on their home region's topic.
    pub claims_to_publish: Vec<(String, Vec<u8>)>,
    /// Certificates formed here, to gossip to this validator's own region
    /// only (its region's certificate topic). The other regions pull them
    /// by frontier difference ([`FRONTIER_PULL_GAP_MS`]).
    pub certificates_to_publish: Vec<Vec<u8>>,
    /// Equivocation evidence found here (encoded `Evidence` envelopes signed
    /// by this node), to gossip on `evidence`.
    pub evidence_to_publish: Vec<Vec<u8>>,
    /// This validator's heartbeat, to gossip.
    pub heartbeat: Option<Vec<u8>>,
    /// Validators whose connections are not trusted any more: close and redial.
    pub disconnect: Vec<Key>,
    /// Validators whose frontier is ahead of this ledger: pull from them now.
    pub sync_from: Vec<Key>,
    /// The certificate or heartbeat this step was given was news here (relay it).
    pub news: bool,
}

impl Outputs {
    /// Appends `other`'s outputs after these.
    pub fn append(&mut self, mut other: Outputs) {
        self.locks.append(&mut other.locks);
        self.held.append(&mut other.held);
        self.store_certificates.append(&mut other.store_certificates);
        if other.vote_reply.is_some() {
            self.vote_reply = other.vote_reply;
        }
        self.vote_requests.append(&mut other.vote_requests);
        self.claims_to_publish.append(&mut other.claims_to_publish);
        self.certificates_to_publish.append(&mut other.certificates_to_publish);
        self.evidence_to_publish.append(&mut other.evidence_to_publish);
        if other.heartbeat.is_some() {
            self.heartbeat = other.heartbeat;
        }
        self.disconnect.append(&mut other.disconnect);
        self.sync_from.append(&mut other.sync_from);
        self.news |= other.news;
    }

    /// Whether anything must be persisted before the sends.
    pub fn has_persist(&self) -> bool {
        !self.locks.is_empty() || !self.held.is_empty() || !self.store_certificates.is_empty()
    }
}

/// One input to [`Validator::step`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A claim from a client (`from_client`), gossip, a hand-off or a retry.
    Claim { claim: &'a Verified, from_client: bool },
    /// A certificate from gossip, sync or a vote request.
    Certificate { raw: &'a [u8] },
    /// A validator of this region asks for this validator's vote (or hands
    /// it a claim). The answer is [`Outputs::vote_reply`].
    VoteRequest { request: &'a pb::VoteRequest },
    /// A voter answered one of this validator's vote requests.
    VoteResponse { response: &'a pb::VoteResponse },
    /// A signed heartbeat of a validator.
    Heartbeat { heartbeat: &'a Verified },
    /// A round-trip time sample to a validator.
    Rtt { key: Key, rtt_ms: f64 },
    /// Everything persisted by the outputs returned so far is durable.
    Persisted,
}

/// Signs what this validator sends: ed25519 in the node; the simulator may
/// use the same or a stand-in.
pub trait Signer: Send {
    /// The public key signatures verify under.
    fn public_key(&self) -> Key;
    /// A signature of `message` (an envelope digest).
    fn sign(&self, message: &[u8; 32]) -> [u8; 64];
}

impl Signer for ed25519_dalek::SigningKey {
    fn public_key(&self) -> Key {
        self.verifying_key().to_bytes()
    }
    fn sign(&self, message: &[u8; 32]) -> [u8; 64] {
        ed25519_dalek::Signer::sign(self, message).to_bytes()
    }
}

/// Protocol parameters every node of a network shares. Defaults are the
/// documented values; a genesis may override any of them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Quorum rule for certificates.
    pub fault_model: FaultModel,
    /// How often each validator sends a signed heartbeat.
    pub heartbeat_interval_ms: Millis,
    /// How far ahead of a node's clock a timestamp may be.
    pub max_clock_skew_ms: Millis,
    /// Phi-accrual threshold above which a validator is suspected.
    pub phi_threshold: f64,
    /// Shortest time an owner keeps a batch open.
    pub batch_min_ms: Millis,
    /// Most claims in one batch.
    pub batch_claims_max: u32,
    /// How long an owner must be suspected before its successor freezes it.
    pub takeover_after_ms: Millis,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            fault_model: FaultModel::Byzantine,
            heartbeat_interval_ms: 250,
            max_clock_skew_ms: 30_000,
            phi_threshold: 8.0,
            batch_min_ms: 5,
            batch_claims_max: 256,
            takeover_after_ms: 5_000,
        }
    }
}

/// A validator of the genesis, with its name.
#[derive(Clone, Debug)]
pub struct Member {
    pub key: Key,
    pub name: String,
    pub region: String,
    pub weight: u64,
}

/// What a [`Validator`] is built from: the genesis, as plain values.
#[derive(Clone, Debug)]
pub struct Setup {
    pub network: NetworkId,
    pub params: Params,
    pub validators: Vec<Member>,
    /// Genesis distributions (trusted by being in the genesis), with names.
    pub distributions: Vec<(Distribution, String)>,
}

impl Setup {
    /// The genesis ledger: this validator set and the genesis distributions,
    /// nothing certified yet.
    pub fn ledger(&self, waiting_max: usize) -> Result<Ledger, ValidatorError> {
        let validators = ValidatorSet::new(
            self.validators
                .iter()
                .map(|v| crate::core::escrow::Validator {
                    key: v.key,
                    region: v.region.clone(),
                    weight: v.weight,
                })
                .collect(),
            self.params.fault_model,
        )
        .map_err(|e| ValidatorError::Setup(format!("validator set: {e}")))?;
        let mut ledger = Ledger::new(validators, waiting_max);
        for (d, name) in &self.distributions {
            ledger
                .add_distribution(d.clone())
                .map_err(|e| ValidatorError::Setup(format!("genesis distribution {name}: {e}")))?;
        }
        Ok(ledger)
    }
}

/// Most samples of each kind kept between two drains (the actor drains
/// after every group of commands, so this only bounds a pathological group).
pub const SAMPLES_MAX: usize = 4096;

/// Delays the escrow measured, in ms, waiting for the actor to export them
/// as histograms.
#[derive(Debug, Default)]
pub struct Samples {
    /// Claims this node owns: received → their batch closed and sent for votes.
    pub batching: Vec<Millis>,
    /// Claims this node owns: batch sent → certified.
    pub voting: Vec<Millis>,
    /// How old each validator's heartbeat was on arrival (this node's clock
    /// against the sender's): gossip delay plus clock offset.
    pub heartbeat_age: Vec<Millis>,
}

impl Samples {
    fn claim_stages(&mut self, batching: Millis, voting: Millis) {
        if self.batching.len() < SAMPLES_MAX {
            self.batching.push(batching);
            self.voting.push(voting);
        }
    }

    fn heartbeat_age(&mut self, age: Millis) {
        if self.heartbeat_age.len() < SAMPLES_MAX {
            self.heartbeat_age.push(age);
        }
    }
}

/// Why an input was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ValidatorError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unknown distribution {0}")]
    UnknownDistribution(String),
    #[error("{0}")]
    Refused(ClaimRefusal),
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("no live bucket can fund this claim (every bucket on its path is frozen)")]
    NoLiveBucket,
    #[error("{HELD_CLAIMS_MAX} claims are already waiting here for their owners; try again later")]
    TooManyWaiting,
    #[error("invalid heartbeat: {0}")]
    Heartbeat(&'static str),
    #[error("cannot build the validator: {0}")]
    Setup(String),
    #[error("no room here yet: {0}")]
    Busy(String),
}

/// Why an operator object (a distribution or a rebalance) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the signer is not an operator of this network")]
    NotAnOperator,
    #[error(transparent)]
    Ledger(#[from] crate::core::escrow::LedgerError),
    #[error(transparent)]
    Split(#[from] crate::core::escrow::DistributionError),
    #[error("unknown distribution {0}")]
    UnknownDistribution(String),
    #[error("the distribution has no allocation in region {0:?}")]
    NoAllocation(String),
}

impl ValidatorError {
    /// Whether the input itself is at fault (forged, malformed, conflicting),
    /// as opposed to this node lacking room for it now: only the first should
    /// count against the peer that sent it.
    pub fn is_senders_fault(&self) -> bool {
        !matches!(self, ValidatorError::Busy(_) | ValidatorError::TooManyWaiting)
    }
}

/// The answer to a vote request.
#[derive(Debug, Clone, Default)]
pub struct VoteAnswer {
    pub response: pb::VoteResponse,
}

/// A batch (this node's, or a suspected owner's during a takeover) or a
/// freeze this node is collecting votes for.
struct Collecting {
    object: CertifiedObject,
    envelope: Vec<u8>,
    votes: BTreeMap<Key, (Vote, Vec<u8>)>,
    asked_at: BTreeMap<Key, Millis>,
    attestations: Vec<Vec<u8>>,
}

impl Collecting {
    /// A signed object, with no votes yet.
    fn new(object: CertifiedObject, envelope: Vec<u8>) -> Self {
        Collecting {
            object,
            envelope,
            votes: BTreeMap::new(),
            asked_at: BTreeMap::new(),
            attestations: Vec::new(),
        }
    }
}

struct PendingClaim {
    verified: Verified,
    first_tried: Millis,
}

/// Credentials as the escrow core sees them.
pub struct Credentials<'a>(pub &'a CredentialBook);

impl CredentialView for Credentials<'_> {
    fn attestation(&self, id: &Digest) -> Option<AttestationFacts> {
        let view = self.0.credential(&ObjectId(*id), 0);
        view.attestation.map(|a| AttestationFacts {
            issuer: a.issuer,
            subject: a.subject,
            schema: a.schema,
            issued_at: a.issued_at,
            // 0 means "never expires" on the wire; the core compares times.
            expires_at: if a.expires_at == 0 { u64::MAX } else { a.expires_at },
        })
    }

    fn revocation(&self, id: &Digest) -> Option<Millis> {
        let view = self.0.credential(&ObjectId(*id), 0);
        match view.status {
            CredentialStatus::Revoked => view.revocation.map(|r| r.revoked_at),
            _ => None,
        }
    }
}

/// Counts of protocol decisions, for metrics and the simulator's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Times a validator of this region began to be suspected (takeover clock started).
    pub peers_suspected: u64,
    /// Ticks on which a takeover was due but withheld: this region's quorum
    /// had not been reachable for the whole `takeover_after`.
    pub takeovers_withheld: u64,
    /// Takeovers this validator started (its owner's pending batch or a freeze).
    pub takeovers_proposed: u64,
    /// Owners found signing two batches at one `(bucket, seq)` in vote
    /// requests; each was reported once as evidence.
    pub equivocations_detected: u64,
}

/// The validator state machine (observers run it too, without a voter).
pub struct Validator {
    /// Measured delays (claim stages, heartbeat ages), drained into the
    /// metrics by the actor.
    pub samples: Samples,
    /// Counts of protocol decisions.
    pub stats: Stats,
    network: NetworkId,
    signer: Box<dyn Signer>,
    me: Key,
    /// This validator's own votes on its own batches, judged at the last
    /// tick, counted once their locks are durable ([`Input::Persisted`]).
    own_votes: Vec<pb::VoteResponse>,
    region: Option<String>,
    ledger: Ledger,
    voter: Option<Voter>,
    owners: BTreeMap<Digest, Owner>,
    owner_config: OwnerConfig,
    collecting: BTreeMap<Digest, Collecting>,
    /// Raw claim envelopes by claim id (for batch bodies and re-publication).
    claim_envelopes: BTreeMap<Digest, Vec<u8>>,
    timelines: BTreeMap<Digest, Timeline>,
    timeline_order: VecDeque<Digest>,
    pending: VecDeque<PendingClaim>,
    /// Certificate encodings by (bucket, seq), as applied here.
    certificates: BTreeMap<(Digest, u64), (Digest, Vec<u8>)>,
    /// blake3 of the exact bytes of each certificate in `certificates`.
    certificate_fingerprints: BTreeSet<[u8; 32]>,
    /// `certificate_fingerprints` oldest first, to forget the oldest.
    fingerprint_order: VecDeque<[u8; 32]>,
    conflicting_certificates: u64,
    names: BTreeMap<Key, String>,
    distribution_names: BTreeMap<Digest, String>,
    /// When this node last heard from each region (a vote or certificate of it).
    last_heard: BTreeMap<String, Millis>,
    delay: DelayState,
    /// Own batches from the lock log, resumed after the certificates replay.
    to_resume: Vec<(Batch, Vec<u8>)>,
    /// Newest batch seen per bucket of this region (from vote requests).
    seen_batches: BTreeMap<Digest, (Batch, Vec<u8>)>,
    /// When each owner was last reported for equivocating (one entry per
    /// bucket owner at most: owners are the genesis validators).
    equivocations_reported: BTreeMap<Key, Millis>,
    /// Buckets frozen since the last tick: their waiting claims move on.
    frozen: Vec<Digest>,
    /// Claims held durably here (a subset of `claim_envelopes`).
    held: BTreeSet<Digest>,
    /// Claims held, certified or refused since the last tick, in order.
    held_changes: Vec<HeldChange>,
    /// Held claims restored from the store, submitted again on the first tick.
    restored: Vec<(Verified, Millis)>,
    /// Waiting claims of other owners, judged again in turn.
    recheck: VecDeque<(Digest, Millis)>,
    /// Envelopes whose signature verified here (each checked once).
    known: KnownSignatures,
    /// Operator rebalances known here, by id.
    rebalances: BTreeMap<Digest, wire::Rebalance>,
    /// What rebalances ask each (source, destination) bucket pair to move, in total.
    transfers_owed: BTreeMap<(Digest, Digest), u64>,
    /// What certified batches moved per (source, destination) bucket pair.
    transfers_certified: BTreeMap<(Digest, Digest), u64>,
    /// The needs each validator of this region advertised in its latest
    /// heartbeat (at most one entry per validator of the region).
    needs_heard: BTreeMap<Key, HeardNeeds>,
}

/// The needs one validator's latest heartbeat carried.
#[derive(Debug)]
struct HeardNeeds {
    /// When it arrived, on this node's clock.
    at: Millis,
    /// (bucket, amount), at most [`NEEDS_PER_HEARTBEAT_MAX`], each a bucket
    /// of this region that the validator owns.
    needs: Vec<(Digest, u64)>,
}

/// Heartbeats, suspicion and RTTs: the inputs of the delay-aware quorum.
#[derive(Debug, Default)]
struct DelayState {
    heartbeat_interval_ms: Millis,
    phi_threshold: f64,
    arrivals: BTreeMap<Key, ArrivalHistory>,
    rtts: BTreeMap<Key, RttEstimate>,
    /// Latest frontier each validator reported: bucket → certified length.
    frontiers: BTreeMap<Key, BTreeMap<Digest, u64>>,
    /// Highest heartbeat seq seen per validator (older ones are stale).
    heartbeat_seqs: BTreeMap<Key, u64>,
    heartbeat_seq: u64,
    last_sent: Millis,
    /// Certified positions not yet known to every region, with their claims.
    awaiting_global: BTreeMap<(Digest, u64), Vec<Digest>>,
    /// Validators currently suspected (acted on once per transition).
    suspected: BTreeSet<Key>,
    /// Since when each validator has been suspected without a break.
    suspect_spells: BTreeMap<Key, Millis>,
    /// Since when each validator of this region has been suspected (takeover).
    suspected_since: BTreeMap<Key, Millis>,
    /// Since when this node's own region's quorum has been reachable without a break.
    quorum_since: Option<Millis>,
    /// Per region: the validator frontier pulls go to, and when the last one
    /// started ([`FRONTIER_PULL_GAP_MS`]).
    pull_sources: BTreeMap<String, (Key, Millis)>,
    takeover_after_ms: Millis,
    /// This node's own load in [0, 1] (Lifeguard scaling).
    load: f64,
    batch_min_ms: Millis,
    last_batch_close: Millis,
}

/// Most certified positions tracked while they wait to become global.
pub const AWAITING_GLOBAL_MAX: usize = 1_000_000;
/// Bounds of the vote re-request delay derived from quorum latency.
pub const VOTE_RETRY_MIN_MS: Millis = 50;
pub const VOTE_RETRY_MAX_MS: Millis = 2_000;
/// Multiple of quorum latency after which a missing vote is asked again.
pub const VOTE_RETRY_K: f64 = 4.0;
/// RTT assumed for a validator not measured yet.
pub const UNMEASURED_RTT_MS: f64 = 50.0;
/// Longest an owner keeps a batch open, whatever the quorum latency.
pub const BATCH_CLOSE_MAX_MS: Millis = 250;
/// How long a validator stays suspected before its connections are closed
/// and redialled.
pub const DISCONNECT_AFTER_MS: Millis = 2_000;
/// Lifeguard: an overloaded node raises its suspicion threshold up to this factor.
pub const LIFEGUARD_MAX_FACTOR: f64 = 3.0;
/// Shortest gap between two pulls this node starts from one region's
/// validators because their heartbeats report a frontier ahead of its ledger.
/// Certificates are gossiped only inside the region that formed them
/// ([`Outputs::certificates_to_publish`]); every other region takes them
/// from these pulls, so one pull per region per gap carries, in pages,
/// everything that region certified meanwhile.
pub const FRONTIER_PULL_GAP_MS: Millis = 500;

/// What status reports about the delay-aware quorum.
#[derive(Clone, Debug)]
pub struct QuorumReport {
    pub mode: Mode,
    /// Per region, then `"network"`.
    pub scopes: Vec<(String, ScopeView, u64)>,
    /// (key, name, phi) of every suspected validator.
    pub suspected: Vec<(Key, String, f64)>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").field("region", &self.region).finish()
    }
}

impl Validator {
    /// The escrow state of a node with `key`, from the genesis and the
    /// records of its lock log; signatures are checked with ed25519.
    pub fn new(setup: &Setup, signer: Box<dyn Signer>, locks: &[LockRecord]) -> Result<Validator, ValidatorError> {
        Self::with_check(setup, signer, locks, Arc::new(Ed25519))
    }

    /// As [`Validator::new`], with every signature the state machine
    /// verifies checked by `check`.
    pub fn with_check(
        setup: &Setup,
        signer: Box<dyn Signer>,
        locks: &[LockRecord],
        check: Arc<dyn SignatureCheck>,
    ) -> Result<Validator, ValidatorError> {
        let network = setup.network;
        let me = signer.public_key();
        let params = setup.params;
        let ledger = setup.ledger(LEDGER_WAITING_MAX)?;
        let distribution_names: BTreeMap<Digest, String> = setup
            .distributions
            .iter()
            .map(|(d, name)| (d.id, name.clone()))
            .collect();
        let region = setup.validators.iter().find(|v| v.key == me).map(|v| v.region.clone());
        let skew = params.max_clock_skew_ms;
        let vote_locks = locks.iter().filter_map(|r| match r {
            LockRecord::Vote { bucket, seq, object_id } => Some(Lock {
                bucket: *bucket,
                seq: *seq,
                object_id: *object_id,
            }),
            LockRecord::OwnBatch { .. } => None,
        });
        let voter = region.clone().map(|r| {
            Voter::restore(
                me,
                r,
                VoterConfig { clock_skew_ms: skew },
                vote_locks.collect::<Vec<_>>(),
            )
        });
        let mut escrow = Validator {
            network,
            signer,
            me,
            own_votes: Vec::new(),
            stats: Stats::default(),
            region,
            ledger,
            voter,
            owners: BTreeMap::new(),
            owner_config: OwnerConfig {
                batch_claims_max: params.batch_claims_max as usize,
                clock_skew_ms: skew,
            },
            collecting: BTreeMap::new(),
            claim_envelopes: BTreeMap::new(),
            timelines: BTreeMap::new(),
            timeline_order: Default::default(),
            pending: Default::default(),
            certificates: BTreeMap::new(),
            certificate_fingerprints: BTreeSet::new(),
            fingerprint_order: VecDeque::new(),
            samples: Samples::default(),
            conflicting_certificates: 0,
            names: setup.validators.iter().map(|v| (v.key, v.name.clone())).collect(),
            distribution_names,
            last_heard: BTreeMap::new(),
            delay: DelayState {
                heartbeat_interval_ms: params.heartbeat_interval_ms.max(1),
                phi_threshold: params.phi_threshold,
                batch_min_ms: params.batch_min_ms,
                takeover_after_ms: params.takeover_after_ms,
                ..Default::default()
            },
            to_resume: Vec::new(),
            seen_batches: BTreeMap::new(),
            equivocations_reported: BTreeMap::new(),
            frozen: Vec::new(),
            held: Default::default(),
            held_changes: Vec::new(),
            restored: Vec::new(),
            recheck: Default::default(),
            known: KnownSignatures::with_check(KNOWN_SIGNATURES_MAX, check),
            rebalances: BTreeMap::new(),
            transfers_owed: BTreeMap::new(),
            transfers_certified: BTreeMap::new(),
            needs_heard: BTreeMap::new(),
        };
        escrow.adopt_buckets();
        // An owner resumes the last batch it signed, never signs another at its seq.
        let mut last_batches: BTreeMap<Digest, (Batch, Vec<u8>)> = BTreeMap::new();
        for r in locks {
            if let LockRecord::OwnBatch { envelope } = r
                && let Ok(v) = wire::verify_nested(&network, envelope, "own batch", &mut escrow.known)
                && let Ok((batch, claims)) = wire::batch(&network, &v, &mut escrow.known)
            {
                for c in claims {
                    escrow.claim_envelopes.insert(c.id.0, c.raw);
                }
                escrow.to_resume.push((batch.clone(), envelope.clone()));
                last_batches.insert(batch.bucket.digest(), (batch, envelope.clone()));
            }
        }
        for (digest, (batch, _)) in last_batches {
            if let Some(owner) = escrow.owners.get_mut(&digest) {
                *owner = Owner::restore(escrow.me, batch.bucket.clone(), escrow.owner_config, Some(batch));
            }
        }
        Ok(escrow)
    }

    /// Creates an owner for every bucket this node owns that has none yet.
    fn adopt_buckets(&mut self) {
        let mine: Vec<BucketId> = self
            .ledger
            .distributions()
            .flat_map(|d| {
                d.buckets()
                    .filter(|b| b.id.owner == self.me)
                    .map(|b| b.id.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for bucket in mine {
            let digest = bucket.digest();
            self.owners
                .entry(digest)
                .or_insert_with(|| Owner::new(self.me, bucket, self.owner_config));
        }
    }

    /// After the stored certificates replayed: collects votes again for every
    /// batch this node signed that is not certified yet. Voters that voted
    /// before the crash vote again for the same batch (their lock allows it),
    /// so a certificate lost with the crash is formed anew instead of the
    /// chain stalling.
    pub fn resume(&mut self) {
        for (batch, envelope) in std::mem::take(&mut self.to_resume) {
            let certified = self.ledger.certified_id(&batch.bucket.digest(), batch.seq);
            if certified.is_some() || self.collecting.contains_key(&batch.id) {
                continue;
            }
            self.collecting
                .insert(batch.id, Collecting::new(CertifiedObject::Batch(batch), envelope));
        }
    }

    fn release(&mut self, id: Digest) {
        if self.held.remove(&id) {
            self.held_changes.push(HeldChange::Release(id));
        }
    }

    /// A claim that was held when the node stopped; it waits again from the
    /// next tick on (whose effects the actor makes durable before sending).
    pub fn restore_held(&mut self, claim: Verified, received_at: Millis) {
        self.restored.push((claim, received_at));
    }

    /// The ledger (read-only).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// A validator's name from the genesis.
    pub fn name_of(&self, key: &Key) -> String {
        self.names.get(key).cloned().unwrap_or_default()
    }

    /// A distribution's name, if it has one.
    pub fn distribution_name(&self, id: &Digest) -> String {
        self.distribution_names.get(id).cloned().unwrap_or_default()
    }

    /// This validator's region (none for an observer).
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// Age of this node's view of a region: 0 for its own region, else the
    /// time since a certificate of that region last arrived (`u64::MAX` if never).
    pub fn view_age_ms(&self, region: &str, now: Millis) -> u64 {
        if self.region.as_deref() == Some(region) {
            return 0;
        }
        let heard = self.last_heard.get(region).copied();
        let beat = self
            .ledger
            .validators()
            .members(region)
            .iter()
            .filter_map(|k| self.delay.arrivals.get(k).and_then(|a| a.last()))
            .max();
        heard.max(beat).map_or(u64::MAX, |at| now.saturating_sub(at))
    }

    /// The certificate threshold as a fraction.
    fn threshold(&self) -> (u64, u64) {
        self.ledger.validators().fault_model().threshold()
    }

    fn phi(&self, key: &Key, now: Millis) -> f64 {
        if key == &self.me {
            return 0.0;
        }
        self.delay.arrivals.get(key).map_or(quorum::PHI_NEVER_HEARD, |a| {
            a.phi(now, self.delay.heartbeat_interval_ms)
        })
    }

    fn is_suspected(&self, key: &Key, now: Millis) -> bool {
        let threshold = quorum::scaled_threshold(self.delay.phi_threshold, self.delay.load, LIFEGUARD_MAX_FACTOR);
        self.phi(key, now) > threshold
    }

    /// Whether anything waits on the next tick: an open batch to close,
    /// votes to collect, claims to retry or restore. The actor ticks every
    /// `batch_min_ms` while busy and less often while idle.
    pub fn is_busy(&self) -> bool {
        !self.collecting.is_empty()
            || !self.pending.is_empty()
            || !self.restored.is_empty()
            || self.owners.values().any(|o| o.open_len() > 0)
    }

    /// Sets this node's load in [0, 1] (its actor queue fill).
    pub fn set_load(&mut self, load: f64) {
        self.delay.load = load;
    }

    fn members(&self, keys: &[Key], now: Millis) -> Vec<quorum::Member> {
        keys.iter()
            .filter_map(|k| {
                let v = self.ledger.validators().get(k)?;
                let rtt_ms = if k == &self.me {
                    0.0
                } else {
                    // Not measured yet: assume a typical nearby peer rather
                    // than infinity, so start-up is not mistaken for slowness.
                    self.delay.rtts.get(k).map_or(UNMEASURED_RTT_MS, |r| r.ewma_ms)
                };
                Some(quorum::Member {
                    weight: v.weight,
                    reachable: !self.is_suspected(k, now),
                    rtt_ms,
                })
            })
            .collect()
    }

    /// Mode, per-scope reachable weight and quorum latency, and suspects.
    pub fn quorum_report(&self, now: Millis) -> QuorumReport {
        let (num, den) = self.threshold();
        let mut regions = BTreeMap::new();
        let mut scopes = Vec::new();
        let mut everyone = Vec::new();
        let region_names: Vec<String> = self.ledger.validators().regions().map(str::to_string).collect();
        for region in &region_names {
            let keys = self.ledger.validators().members(region).to_vec();
            let members = self.members(&keys, now);
            everyone.extend(members.iter().cloned());
            let view = quorum::scope_view(&members, num, den);
            scopes.push((region.clone(), view.clone(), self.view_age_ms(region, now)));
            regions.insert(region.clone(), view);
        }
        let network = quorum::scope_view(&everyone, num, den);
        scopes.push(("network".into(), network, 0));
        let mode = match &self.region {
            Some(own) => quorum::mode(own, &regions),
            // An observer is normal when every region's quorum is reachable.
            None if regions.values().all(|v| v.quorum_latency_ms.is_some()) => Mode::Normal,
            None => Mode::Regional,
        };
        let suspected = self
            .ledger
            .validators()
            .regions()
            .flat_map(|r| self.ledger.validators().members(r).to_vec())
            .filter(|k| self.is_suspected(k, now))
            .map(|k| (k, self.name_of(&k), self.phi(&k, now)))
            .collect();
        QuorumReport {
            mode,
            scopes,
            suspected,
        }
    }

    fn own_quorum_latency(&self, now: Millis) -> Option<f64> {
        let region = self.region.as_ref()?;
        let keys = self.ledger.validators().members(region).to_vec();
        let (num, den) = self.threshold();
        quorum::scope_view(&self.members(&keys, now), num, den).quorum_latency_ms
    }

    /// How long an owner waits for a missing vote: k × quorum latency, bounded.
    fn vote_retry_ms(&self, now: Millis) -> Millis {
        match self.own_quorum_latency(now) {
            Some(ql) => ((ql * VOTE_RETRY_K) as Millis).clamp(VOTE_RETRY_MIN_MS, VOTE_RETRY_MAX_MS),
            None => VOTE_RETRY_MAX_MS,
        }
    }

    /// A signed heartbeat, when one is due (validators only).
    fn heartbeat_due(&mut self, now: Millis) -> Option<Vec<u8>> {
        self.region.as_ref()?;
        if now.saturating_sub(self.delay.last_sent) < self.delay.heartbeat_interval_ms {
            return None;
        }
        self.delay.last_sent = now;
        self.delay.heartbeat_seq = self.delay.heartbeat_seq.saturating_add(1).max(now);
        let frontier = self
            .certificates
            .keys()
            .fold(BTreeMap::<Digest, u64>::new(), |mut acc, (bucket, seq)| {
                let e = acc.entry(*bucket).or_default();
                *e = (*e).max(seq.saturating_add(1));
                acc
            })
            .into_iter()
            .map(|(bucket, len)| pb::FrontierEntry {
                bucket_id: bucket.to_vec(),
                seq: self.ledger.next_seq(&bucket).unwrap_or(len),
            })
            .collect();
        let needs = self
            .own_needs(now)
            .into_iter()
            .map(|(bucket, amount)| pb::BucketNeed {
                bucket_id: bucket.to_vec(),
                amount,
            })
            .collect();
        let body = pb::Heartbeat {
            validator: self.me.to_vec(),
            sent_at: now,
            frontier,
            liquidity: vec![],
            state_digest: self.ledger.state_digest().to_vec(),
            load: self.delay.load,
            seq: self.delay.heartbeat_seq,
            needs,
        };
        Some(
            seal_with(
                &self.network,
                self.signer.as_ref(),
                Kind::Heartbeat,
                body.encode_to_vec(),
            )
            .0,
        )
    }

    /// A heartbeat arrived. `Ok(true)` when it is news (relay it).
    fn on_heartbeat(&mut self, v: &Verified, now: Millis) -> Result<bool, ValidatorError> {
        let body = pb::Heartbeat::decode(v.body.as_slice())
            .map_err(|_| ValidatorError::Heartbeat("its body does not decode"))?;
        if body.validator.as_slice() != v.signer.as_slice() {
            return Err(ValidatorError::Heartbeat("signed by someone other than its validator"));
        }
        if self.ledger.validators().get(&v.signer).is_none() {
            return Err(ValidatorError::Heartbeat("from a key that is not a validator"));
        }
        if v.signer == self.me {
            return Ok(false);
        }
        let last = self.delay.heartbeat_seqs.get(&v.signer).copied().unwrap_or(0);
        if body.seq <= last {
            return Ok(false);
        }
        self.delay.heartbeat_seqs.insert(v.signer, body.seq);
        self.delay.arrivals.entry(v.signer).or_default().heartbeat(now);
        self.samples.heartbeat_age(now.saturating_sub(body.sent_at));

        let frontier = body
            .frontier
            .iter()
            .filter_map(|f| Some((<[u8; 32]>::try_from(f.bucket_id.as_slice()).ok()?, f.seq)))
            .collect();
        self.delay.frontiers.insert(v.signer, frontier);
        self.hear_needs(v.signer, &body.needs, now);
        self.promote_global(now);
        Ok(true)
    }

    /// What the buckets this node owns ask their region for (largest first,
    /// at most [`NEEDS_PER_HEARTBEAT_MAX`]). Transfers to a bucket that other
    /// owners proposed and this node has seen in their vote requests count
    /// as on their way, so a need is not asked twice while they are voted.
    fn own_needs(&self, now: Millis) -> Vec<(Digest, u64)> {
        let mut needs: Vec<(Digest, u64)> = self
            .owners
            .iter()
            .filter_map(|(digest, owner)| {
                let incoming = self.incoming_transfers(digest);
                Some((*digest, owner.need(&self.ledger, now, incoming)?))
            })
            .collect();
        needs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        needs.truncate(NEEDS_PER_HEARTBEAT_MAX);
        needs
    }

    /// Transfers to `bucket` in other owners' batches that this node was
    /// asked to vote for and that are not certified yet.
    fn incoming_transfers(&self, bucket: &Digest) -> u64 {
        self.seen_batches
            .iter()
            .filter(|(source, (batch, _))| batch.seq >= self.ledger.next_seq(source).unwrap_or(0))
            .flat_map(|(_, (batch, _))| batch.entries.iter())
            .filter_map(|entry| match entry {
                Entry::TransferOut { to, amount } if to.digest() == *bucket => Some(*amount),
                _ => None,
            })
            .fold(0, u64::saturating_add)
    }

    /// Keeps the needs a validator of this region advertised, replacing what
    /// its earlier heartbeat said. Only buckets it owns in this region are
    /// kept, at most [`NEEDS_PER_HEARTBEAT_MAX`]; malformed entries are
    /// skipped.
    fn hear_needs(&mut self, validator: Key, needs: &[pb::BucketNeed], now: Millis) {
        let Some(region) = self.region.as_deref() else {
            return;
        };
        if self.ledger.validators().get(&validator).map(|v| v.region.as_str()) != Some(region) {
            return;
        }
        let kept: Vec<(Digest, u64)> = needs
            .iter()
            .take(NEEDS_PER_HEARTBEAT_MAX)
            .filter_map(|need| {
                let bucket = <[u8; 32]>::try_from(need.bucket_id.as_slice()).ok()?;
                let (_, plan) = self.ledger.bucket(&bucket)?;
                (need.amount > 0 && plan.id.owner == validator && plan.id.region == region)
                    .then_some((bucket, need.amount))
            })
            .collect();
        if kept.is_empty() {
            self.needs_heard.remove(&validator);
        } else {
            self.needs_heard.insert(validator, HeardNeeds { at: now, needs: kept });
        }
    }

    /// Answers the needs heard from this region (DESIGN.md "Transfers"):
    /// for each bucket this node owns, `core::escrow::answer_needs` says
    /// which transfers to queue, and they go into its open batch. Needs older
    /// than [`NEED_MAX_AGE_HEARTBEATS`] intervals, or from a suspected
    /// validator, are not answered.
    fn answer_needs(&mut self, now: Millis) {
        let max_age = self.delay.heartbeat_interval_ms.saturating_mul(NEED_MAX_AGE_HEARTBEATS);
        self.needs_heard
            .retain(|_, heard| now.saturating_sub(heard.at) <= max_age);
        if self.needs_heard.is_empty() {
            return;
        }
        let heard: Vec<(Key, Digest, u64)> = self
            .needs_heard
            .iter()
            .filter(|(validator, _)| !self.is_suspected(validator, now))
            .flat_map(|(validator, heard)| {
                heard
                    .needs
                    .iter()
                    .map(|(bucket, amount)| (*validator, *bucket, *amount))
            })
            .collect();
        let mut queue: Vec<(Digest, BucketId, u64)> = Vec::new();
        for (digest, owner) in &self.owners {
            let ads: Vec<NeedAd> = heard
                .iter()
                .map(|(advertiser, bucket, amount)| NeedAd {
                    bucket: *bucket,
                    advertiser: *advertiser,
                    amount: *amount,
                    donor_chain_seen: self.frontier_of(advertiser, digest),
                })
                .collect();
            let live = |key: &Key| *key == self.me || !self.is_suspected(key, now);
            for (to, amount) in answer_needs(&self.ledger, owner, &ads, live) {
                queue.push((*digest, to, amount));
            }
        }
        for (digest, to, amount) in queue {
            let Some(owner) = self.owners.get_mut(&digest) else {
                continue;
            };
            match owner.request_transfer(&self.ledger, to.clone(), amount) {
                Ok(()) => {
                    tracing::info!(to = %self.name_of(&to.owner), amount, "answering a bucket's need with a transfer")
                }
                Err(e) => tracing::debug!(error = %e, amount, "a need's transfer waits"),
            }
        }
    }

    /// What `bucket`'s owner last advertised it needs (0 = nothing): this
    /// node's own reckoning for its own buckets, else its owner's latest
    /// heartbeat if recent.
    pub fn advertised_need(&self, bucket: &Digest, now: Millis) -> u64 {
        if let Some(owner) = self.owners.get(bucket) {
            return owner
                .need(&self.ledger, now, self.incoming_transfers(bucket))
                .unwrap_or(0);
        }
        let max_age = self.delay.heartbeat_interval_ms.saturating_mul(NEED_MAX_AGE_HEARTBEATS);
        self.ledger
            .bucket(bucket)
            .and_then(|(_, plan)| self.needs_heard.get(&plan.id.owner))
            .filter(|heard| now.saturating_sub(heard.at) <= max_age)
            .and_then(|heard| heard.needs.iter().find(|(b, _)| b == bucket))
            .map_or(0, |(_, amount)| *amount)
    }

    /// True when a validator's reported frontier is ahead of this node's
    /// ledger for some bucket: catch up from it now (frontier difference)
    /// rather than at the next periodic pull.
    fn is_behind(&self, validator: &Key) -> bool {
        self.delay.frontiers.get(validator).is_some_and(|frontier| {
            frontier
                .iter()
                .any(|(bucket, len)| *len > self.ledger.next_seq(bucket).unwrap_or(0))
        })
    }

    /// Whether to pull from `validator`, whose heartbeat reports a frontier
    /// ahead of this ledger, now. A region's pulls go to one validator of it
    /// (its pull source), whose log cursor stays fresh, so a pull carries only
    /// what is new; at most one pull per region per [`FRONTIER_PULL_GAP_MS`].
    /// Another validator of the region becomes the source when the source's
    /// latest frontier is not ahead of this ledger on some bucket where the
    /// other's is: the source cannot supply it (it lags, or missed it).
    /// Records the pull when it is due.
    fn frontier_pull_due(&mut self, validator: &Key, now: Millis) -> bool {
        let Some(region) = self.ledger.validators().get(validator).map(|v| v.region.clone()) else {
            return false;
        };
        let due = match self.delay.pull_sources.get(&region) {
            None => true,
            Some((_, last)) if now.saturating_sub(*last) < FRONTIER_PULL_GAP_MS => false,
            Some((source, _)) => source == validator || !self.can_supply(source, validator),
        };
        if due {
            self.delay.pull_sources.insert(region, (*validator, now));
        }
        due
    }

    /// Whether `source`'s latest frontier is ahead of this ledger on every
    /// bucket where `other`'s is.
    fn can_supply(&self, source: &Key, other: &Key) -> bool {
        let empty = BTreeMap::new();
        let theirs = self.delay.frontiers.get(source).unwrap_or(&empty);
        self.delay.frontiers.get(other).is_none_or(|frontier| {
            frontier.iter().all(|(bucket, len)| {
                let mine = self.ledger.next_seq(bucket).unwrap_or(0);
                *len <= mine || theirs.get(bucket).is_some_and(|l| *l > mine)
            })
        })
    }

    /// An RTT sample to a validator (ping or request-response).
    fn on_rtt(&mut self, key: Key, rtt_ms: f64) {
        self.delay.rtts.entry(key).or_default().sample(rtt_ms);
    }

    /// Validators suspected without a break for [`DISCONNECT_AFTER_MS`],
    /// once per episode (their connections are not trusted: the shell closes
    /// and redials them). A short spell of suspicion — an overloaded node
    /// late with its heartbeats — changes the mode and the waiting, but
    /// does not cut the connection and the gossip in flight on it.
    fn newly_suspected(&mut self, now: Millis) -> Vec<Key> {
        let all: Vec<Key> = self
            .ledger
            .validators()
            .regions()
            .flat_map(|r| self.ledger.validators().members(r).to_vec())
            .filter(|k| k != &self.me)
            .collect();
        let mut fresh = Vec::new();
        for k in all {
            // Never heard of is not "newly" suspected: nothing to close.
            let heard = self.delay.arrivals.contains_key(&k);
            if heard && self.is_suspected(&k, now) {
                let since = *self.delay.suspect_spells.entry(k).or_insert(now);
                if now.saturating_sub(since) >= DISCONNECT_AFTER_MS && self.delay.suspected.insert(k) {
                    fresh.push(k);
                }
            } else {
                self.delay.suspect_spells.remove(&k);
                self.delay.suspected.remove(&k);
            }
        }
        fresh
    }

    fn frontier_of(&self, key: &Key, bucket: &Digest) -> u64 {
        if key == &self.me {
            return self.ledger.next_seq(bucket).unwrap_or(0);
        }
        self.delay
            .frontiers
            .get(key)
            .and_then(|f| f.get(bucket).copied())
            .unwrap_or(0)
    }

    fn promote_global(&mut self, now: Millis) {
        let positions: Vec<(Digest, u64)> = self.delay.awaiting_global.keys().copied().collect();
        for (bucket, seq) in positions {
            if self.is_global(&bucket, seq)
                && let Some(claims) = self.delay.awaiting_global.remove(&(bucket, seq))
            {
                for id in claims {
                    self.timeline(id).reach(Step::Global, now);
                }
            }
        }
    }

    /// Claim outflow per region of a distribution over the window ending at
    /// `now`, from certified batch timestamps.
    pub fn outflow_by_region(&self, distribution: &Digest, now: Millis, window_ms: Millis) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for c in self.ledger.certified_claims() {
            if &c.claim.distribution_id != distribution || c.batch_timestamp.saturating_add(window_ms) < now {
                continue;
            }
            if let Some((_, plan)) = self.ledger.bucket(&c.bucket) {
                let e = out.entry(plan.id.region.clone()).or_default();
                *e = e.saturating_add(c.claim.amount);
            }
        }
        out
    }

    /// Certificates seen at one position with different ids (must stay 0).
    pub fn conflicting_certificates(&self) -> u64 {
        self.conflicting_certificates
    }

    /// Adds an operator-signed distribution.
    pub fn add_distribution(&mut self, v: &Verified, operators: &BTreeSet<Key>) -> Result<(), OperatorError> {
        let d = wire::distribution(v)?;
        if !operators.contains(&d.operator) {
            return Err(OperatorError::NotAnOperator);
        }
        let name = pb::Distribution::decode(v.body.as_slice())
            .map(|b| b.name)
            .unwrap_or_default();
        self.ledger.add_distribution(d.clone())?;
        self.distribution_names.insert(d.id, name);
        self.adopt_buckets();
        Ok(())
    }

    /// Adds an operator-signed rebalance: the owners of the source region's
    /// buckets move their parts to the destination region (DESIGN.md
    /// "Transfers"). Owed amounts accumulate per bucket pair, and an owner
    /// moves what its own chain has not moved yet, so a request applies once
    /// however often it is replayed or re-delivered.
    pub fn add_rebalance(&mut self, v: &Verified, operators: &BTreeSet<Key>) -> Result<(), OperatorError> {
        let r = wire::rebalance(v)?;
        if !operators.contains(&r.operator) {
            return Err(OperatorError::NotAnOperator);
        }
        let distribution = self
            .ledger
            .distribution(&r.distribution_id)
            .ok_or_else(|| OperatorError::UnknownDistribution(hex::encode(r.distribution_id)))?;
        for region in [&r.to_region, &r.from_region] {
            if !distribution.regions().any(|held| held == region.as_str()) {
                return Err(OperatorError::NoAllocation(region.clone()));
            }
        }
        let parts = distribution.rebalance_split(&r.from_region, &r.to_region, r.amount)?;
        if self.rebalances.contains_key(&r.id) {
            return Ok(());
        }
        for (source, destination, amount) in parts {
            let owed = self.transfers_owed.entry((source, destination)).or_default();
            *owed = owed.saturating_add(amount);
        }
        self.rebalances.insert(r.id, r);
        Ok(())
    }

    /// Whether this rebalance is known here.
    pub fn has_rebalance(&self, id: &Digest) -> bool {
        self.rebalances.contains_key(id)
    }

    /// Queues, in each bucket this node owns, the transfers rebalances ask
    /// for and its chain has not made (certified, awaiting votes or queued),
    /// as far as its available escrow allows; the rest follows when it can.
    fn execute_rebalances(&mut self) {
        for ((source, destination), owed) in &self.transfers_owed {
            let Some(owner) = self.owners.get_mut(source) else {
                continue;
            };
            if owner.is_ended() {
                continue;
            }
            let Some((_, target)) = self.ledger.bucket(destination) else {
                continue;
            };
            let certified = self
                .transfers_certified
                .get(&(*source, *destination))
                .copied()
                .unwrap_or(0);
            let awaiting: u64 = self
                .collecting
                .values()
                .filter_map(|c| match &c.object {
                    CertifiedObject::Batch(batch) if batch.bucket.digest() == *source => Some(batch),
                    _ => None,
                })
                .flat_map(|batch| batch.entries.iter())
                .filter_map(|entry| match entry {
                    crate::core::escrow::Entry::TransferOut { to, amount } if to.digest() == *destination => {
                        Some(*amount)
                    }
                    _ => None,
                })
                .fold(0, u64::saturating_add);
            let queued: u64 = owner
                .open_transfers()
                .filter(|(to, _)| to.digest() == *destination)
                .map(|(_, amount)| amount)
                .fold(0, u64::saturating_add);
            let due = owed.saturating_sub(certified.saturating_add(awaiting).saturating_add(queued));
            if due == 0 {
                continue;
            }
            let to = target.id.clone();
            let result = match owner.request_transfer(&self.ledger, to.clone(), due) {
                Err(crate::core::escrow::OwnerError::Insufficient { available, .. }) if available > 0 => {
                    owner.request_transfer(&self.ledger, to, available)
                }
                other => other,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, due, "rebalance transfer waits");
            }
        }
    }

    /// Where a claimant's claim is funded.
    pub fn route(&self, distribution: &Digest, claimant: &Key) -> Option<BucketId> {
        match self.ledger.route(distribution, claimant)? {
            Route::Live { bucket, .. } => self.ledger.bucket(&bucket).map(|(_, plan)| plan.id.clone()),
            Route::NoLiveBucket { .. } => None,
        }
    }

    fn timeline(&mut self, id: Digest) -> &mut Timeline {
        if !self.timelines.contains_key(&id) {
            if self.timeline_order.len() >= TIMELINES_MAX
                && let Some(old) = self.timeline_order.pop_front()
            {
                self.timelines.remove(&old);
            }
            self.timeline_order.push_back(id);
        }
        self.timelines.entry(id).or_default()
    }

    /// A claim arrives (from a client, gossip or a retry).
    fn on_claim(
        &mut self,
        book: &CredentialBook,
        v: &Verified,
        from_client: bool,
        now: Millis,
    ) -> Result<Outputs, ValidatorError> {
        let claim = wire::claim(v)?;
        self.known.remember(v);
        let mut effects = Outputs::default();
        if self.ledger.distribution(&claim.distribution_id).is_none() {
            return Err(ValidatorError::UnknownDistribution(hex::encode(claim.distribution_id)));
        }
        if self.ledger.certified_claim(&claim.id).is_some() {
            // Already certified: submitting it again changes nothing.
            self.release(claim.id);
            return Ok(effects);
        }
        let home = self
            .route(&claim.distribution_id, &claim.claimant)
            .ok_or(ValidatorError::NoLiveBucket)?;
        let fresh = !self.claim_envelopes.contains_key(&claim.id);
        if fresh {
            if self.claim_envelopes.len() >= HELD_CLAIMS_MAX {
                return Err(ValidatorError::TooManyWaiting);
            }
            // Held durably until certified or refused: a node that restarts,
            // or a successor taking the bucket over, still has it.
            let received_at = self.timelines.get(&claim.id).map_or(0, |t| t.received_at);
            let received_at = if received_at == 0 { now } else { received_at };
            self.held_changes.push(HeldChange::Hold {
                id: claim.id,
                received_at,
                envelope: v.raw.clone(),
            });
            self.held.insert(claim.id);
        }
        self.claim_envelopes.insert(claim.id, v.raw.clone());
        {
            let t = self.timeline(claim.id);
            if t.received_at == 0 {
                t.received_at = now;
            }
            t.claim = Some(claim.clone());
            t.home = Some(home.clone());
        }
        self.ledger.note_received(claim.id);
        // A client's claim goes to its home region's topic unless this node
        // is the owner itself.
        // A client that submits a waiting claim again is answered by handing it
        // on again (at most every CLIENT_RESUBMIT_MIN_MS): the first copies may
        // have been lost while its owner was down or cut off.
        let resubmitted = from_client
            && !fresh
            && self
                .timelines
                .get(&claim.id)
                .is_some_and(|t| now.saturating_sub(t.published_at) >= CLIENT_RESUBMIT_MIN_MS);
        if from_client
            && (fresh || resubmitted)
            && (self.region.as_deref() != Some(home.region.as_str()) || home.owner != self.me)
        {
            effects.claims_to_publish.push((home.region.clone(), v.raw.clone()));
            Self::hand_to_owner(book, &claim, &v.raw, home.owner, &mut effects);
            self.timeline(claim.id).published_at = now;
        }
        let digest = home.digest();
        if self.owners.contains_key(&digest) {
            self.submit_to_owner(book, v.clone(), claim, digest, now, &mut effects)?;
        } else {
            if fresh {
                self.recheck.push_back((claim.id, now));
            }
            // Not the owner: judge what every node judges alike (rule,
            // credential, window, slots and escrow as certified) on a scratch
            // owner, so a claim that can never be paid is refused here, with
            // its reason, instead of waiting at `received`.
            let mut probe = Owner::new(home.owner, home.clone(), self.owner_config);
            if let Err(reason) = probe.submit_claim(&self.ledger, &Credentials(book), claim.clone(), now)
                && !reason.is_retryable()
            {
                self.reject(claim.id, &reason, now);
                return Err(ValidatorError::Refused(reason));
            }
        }
        Ok(effects)
    }

    /// Hands a claim straight to its bucket's owner over the vote protocol,
    /// with its credential. The region's gossip tells every voter; this is
    /// the copy the owner must get, sent point to point so that no mesh
    /// state can lose it (and sent again with each republish).
    fn hand_to_owner(book: &CredentialBook, claim: &Claim, raw: &[u8], owner: Key, effects: &mut Outputs) {
        let attestation = book
            .credential(&ObjectId(claim.attestation_id), 0)
            .attestation
            .map(|a| a.raw);
        effects.vote_requests.push((
            owner,
            pb::VoteRequest {
                object: raw.to_vec(),
                attestations: attestation.into_iter().collect(),
                certificates: Vec::new(),
            },
        ));
    }

    fn submit_to_owner(
        &mut self,
        book: &CredentialBook,
        verified: Verified,
        claim: Claim,
        digest: Digest,
        now: Millis,
        effects: &mut Outputs,
    ) -> Result<(), ValidatorError> {
        let Some(owner) = self.owners.get_mut(&digest) else {
            return Ok(());
        };
        let id = claim.id;
        if owner.holds(&id) {
            // Met again (gossip and a direct copy, a republish, a retry):
            // it is batched already; its slot is its own, not a double.
            return Ok(());
        }
        match owner.submit_claim(&self.ledger, &Credentials(book), claim, now) {
            Ok(outputs) => {
                let more = self.owner_outputs(outputs, now);
                effects.append(more);
                Ok(())
            }
            Err(reason) if reason.is_retryable() => {
                if self.pending.len() >= PENDING_CLAIMS_MAX {
                    self.pending.pop_front();
                }
                self.pending.push_back(PendingClaim {
                    verified,
                    first_tried: now,
                });
                Ok(())
            }
            Err(reason) => {
                self.reject(id, &reason, now);
                Err(ValidatorError::Refused(reason))
            }
        }
    }

    fn reject(&mut self, id: Digest, reason: &ClaimRefusal, now: Millis) {
        self.ledger.note_rejected(id, reason.clone());
        self.claim_envelopes.remove(&id);
        self.release(id);
        let t = self.timeline(id);
        if t.rejected_at == 0 {
            t.rejected_at = now;
            t.reason = reason.to_string();
        }
    }

    fn owner_outputs(&mut self, outputs: Vec<OwnerOutput>, now: Millis) -> Outputs {
        let mut effects = Outputs::default();
        for output in outputs {
            match output {
                OwnerOutput::PersistBatch(batch) => {
                    let claim_envelopes = &self.claim_envelopes;
                    let Some(body) = wire::batch_body(&batch, |id| claim_envelopes.get(id).cloned()) else {
                        tracing::error!("a batch names a claim whose envelope is gone; not sending it");
                        continue;
                    };
                    let (envelope, _) =
                        seal_with(&self.network, self.signer.as_ref(), Kind::Batch, body.encode_to_vec());
                    effects.locks.push(LockRecord::OwnBatch {
                        envelope: envelope.clone(),
                    });
                    self.collecting
                        .insert(batch.id, Collecting::new(CertifiedObject::Batch(batch), envelope));
                }
                OwnerOutput::SendBatch(batch) => {
                    self.ledger.note_provisional(&batch);
                    for claim in batch.claims() {
                        self.timeline(claim.id).reach(Step::Provisional, now);
                    }
                    // Requests go out on the next retry pass, after the batch is durable.
                    if let Some(c) = self.collecting.get_mut(&batch.id) {
                        c.asked_at.clear();
                    }
                }
                OwnerOutput::Dropped { claim, reason } => self.reject(claim.id, &reason, now),
            }
        }
        effects
    }

    /// The attestation envelopes a batch's claims present, for its voters.
    fn attach_attestations(&mut self, book_raw: impl Fn(&Digest) -> Option<Vec<u8>>) {
        for c in self.collecting.values_mut() {
            if c.attestations.is_empty()
                && let CertifiedObject::Batch(batch) = &c.object
            {
                c.attestations = batch
                    .claims()
                    .filter_map(|claim| book_raw(&claim.attestation_id))
                    .collect();
            }
        }
    }

    /// Takes one input at `now`; see the module comment for what the shell
    /// does with the outputs.
    pub fn step(&mut self, now: Millis, book: &CredentialBook, input: Input<'_>) -> Result<Outputs, ValidatorError> {
        let outputs = match input {
            Input::Claim { claim, from_client } => self.on_claim(book, claim, from_client, now)?,
            Input::Certificate { raw } => {
                let news = self.on_certificate(book, raw, now)?;
                let mut out = Outputs {
                    news,
                    ..Outputs::default()
                };
                if news {
                    // Stored, not published again: gossip relays what it
                    // delivered, and a synced one is old news.
                    out.store_certificates.push(raw.to_vec());
                }
                out
            }
            Input::VoteRequest { request } => {
                let (mut out, reply) = self.on_vote_request(book, request, now);
                out.vote_reply = Some(reply);
                out
            }
            Input::VoteResponse { response } => self.on_vote_response(book, response, now),
            Input::Heartbeat { heartbeat } => {
                let news = self.on_heartbeat(heartbeat, now)?;
                let mut out = Outputs {
                    news,
                    ..Outputs::default()
                };
                if news && self.is_behind(&heartbeat.signer) && self.frontier_pull_due(&heartbeat.signer, now) {
                    out.sync_from.push(heartbeat.signer);
                }
                out
            }
            Input::Rtt { key, rtt_ms } => {
                self.on_rtt(key, rtt_ms);
                Outputs::default()
            }
            Input::Persisted => {
                let mut out = Outputs::default();
                for response in std::mem::take(&mut self.own_votes) {
                    out.append(self.on_vote_response(book, &response, now));
                }
                out
            }
        };
        Ok(self.divert_own_requests(book, outputs, now))
    }

    /// Periodic work: restore and retry claims, execute rebalances, answer
    /// needs, close batches, move and recheck waiting claims, take over
    /// suspected owners' buckets, ask missing voters, send the heartbeat when
    /// due and name the validators whose connections are not trusted.
    pub fn tick(&mut self, now: Millis, book: &CredentialBook) -> Outputs {
        self.attach_attestations(|id| book.credential(&ObjectId(*id), 0).attestation.map(|a| a.raw));
        let mut out = self.tick_claims(book, now);
        out.heartbeat = self.heartbeat_due(now);
        out.disconnect = self.newly_suspected(now);
        self.divert_own_requests(book, out, now)
    }

    /// This validator's vote requests to itself are judged here: the lock
    /// joins the outputs' persist records, and the vote is counted at
    /// [`Input::Persisted`], once that lock is durable.
    fn divert_own_requests(&mut self, book: &CredentialBook, mut out: Outputs, now: Millis) -> Outputs {
        if !out.vote_requests.iter().any(|(voter, _)| *voter == self.me) {
            return out;
        }
        let requests = std::mem::take(&mut out.vote_requests);
        for (voter, request) in requests {
            if voter == self.me {
                let (more, response) = self.on_vote_request(book, &request, now);
                out.append(more);
                self.own_votes.push(response);
            } else {
                out.vote_requests.push((voter, request));
            }
        }
        out
    }

    /// Claims, batches, takeovers and vote requests of a tick.
    fn tick_claims(&mut self, book: &CredentialBook, now: Millis) -> Outputs {
        let mut effects = Outputs::default();
        for (claim, received_at) in std::mem::take(&mut self.restored) {
            self.timeline(claim.id.0).received_at = received_at;
            // Handed on again as when it entered: copies sent before the restart
            // may never have reached the owner.
            match self.on_claim(book, &claim, true, now) {
                Ok(more) => effects.append(more),
                Err(e) => tracing::debug!(error = %e, "a held claim no longer waits"),
            }
        }
        let pending: Vec<PendingClaim> = self.pending.drain(..).collect();
        for p in pending {
            if now.saturating_sub(p.first_tried) > PENDING_CLAIM_TTL_MS {
                let id = p.verified.id.0;
                self.reject(id, &ClaimRefusal::CredentialUnknown, now);
                continue;
            }
            let Ok(claim) = wire::claim(&p.verified) else { continue };
            let Some(home) = self.route(&claim.distribution_id, &claim.claimant) else {
                continue;
            };
            let digest = home.digest();
            let first = p.first_tried;
            let before = self.pending.len();
            let _ = self.submit_to_owner(book, p.verified, claim, digest, now, &mut effects);
            if let Some(back) = self.pending.get_mut(before) {
                back.first_tried = first;
            }
        }
        self.execute_rebalances();
        self.answer_needs(now);
        // Adaptive batching: an owner closes a batch after
        // max(batch_min, quorum latency / 2), or sooner when it is full.
        let close_every = match self.own_quorum_latency(now) {
            Some(ql) => {
                ((ql / 2.0) as Millis).clamp(self.delay.batch_min_ms, BATCH_CLOSE_MAX_MS.max(self.delay.batch_min_ms))
            }
            None => self.delay.batch_min_ms,
        };
        let digests: Vec<Digest> = if now.saturating_sub(self.delay.last_batch_close) >= close_every {
            self.delay.last_batch_close = now;
            self.owners.keys().copied().collect()
        } else {
            Vec::new()
        };
        for digest in digests {
            if let Some(owner) = self.owners.get_mut(&digest) {
                match owner.close_batch(&self.ledger, now) {
                    Ok(outputs) => {
                        let more = self.owner_outputs(outputs, now);
                        effects.append(more);
                    }
                    Err(e) => tracing::debug!(error = %e, "batch not closed"),
                }
            }
        }
        self.move_waiting_claims(book, now, &mut effects);
        self.recheck_waiting(book, now, &mut effects);
        effects.held.append(&mut self.held_changes);
        let Some(region) = self.region.clone() else {
            return effects;
        };
        self.takeovers(&region, now);
        // Objects a different certificate passed by can never certify.
        let ledger = &self.ledger;
        self.collecting.retain(|_, c| {
            let next = ledger.next_seq(&c.object.bucket().digest()).unwrap_or(0);
            c.object.seq().is_some_and(|seq| seq >= next) && !ledger.is_ended(&c.object.bucket().digest())
        });
        let members: Vec<Key> = self.ledger.validators().members(&region).to_vec();
        let retry_ms = self.vote_retry_ms(now);
        for c in self.collecting.values_mut() {
            for voter in &members {
                if c.votes.contains_key(voter) {
                    continue;
                }
                let due = c
                    .asked_at
                    .get(voter)
                    .is_none_or(|at| now.saturating_sub(*at) >= retry_ms);
                if !due {
                    continue;
                }
                c.asked_at.insert(*voter, now);
                let prev = c
                    .object
                    .seq()
                    .and_then(|seq| seq.checked_sub(1))
                    .and_then(|s| self.certificates.get(&(c.object.bucket().digest(), s)));
                effects.vote_requests.push((
                    *voter,
                    pb::VoteRequest {
                        object: c.envelope.clone(),
                        attestations: c.attestations.clone(),
                        certificates: prev.map(|(_, raw)| vec![raw.clone()]).unwrap_or_default(),
                    },
                ));
            }
        }
        effects
    }

    /// Claims that can no longer be funded where they waited (their bucket
    /// was frozen or closed, or this node's own chain ended under them) go
    /// to the bucket that funds them now: this node's own owner if that is
    /// this node, else the region's topic.
    fn move_waiting_claims(&mut self, book: &CredentialBook, now: Millis, effects: &mut Outputs) {
        let mut moving: Vec<Digest> = Vec::new();
        for owner in self.owners.values_mut() {
            moving.extend(owner.sync(&self.ledger).into_iter().map(|c| c.id));
        }
        if !self.frozen.is_empty() {
            let frozen: BTreeSet<Digest> = self.frozen.drain(..).collect();
            moving.extend(self.claim_envelopes.keys().copied().filter(|id| {
                self.timelines
                    .get(id)
                    .and_then(|t| t.home.as_ref())
                    .is_some_and(|home| frozen.contains(&home.digest()))
            }));
        }
        for id in moving {
            let Some(raw) = self.claim_envelopes.get(&id).cloned() else {
                continue;
            };
            let Ok(verified) = wire::verify_nested(&self.network, &raw, "waiting claim", &mut self.known) else {
                continue;
            };
            let Ok(claim) = wire::claim(&verified) else { continue };
            let Some(home) = self.route(&claim.distribution_id, &claim.claimant) else {
                self.reject(id, &ClaimRefusal::BucketClosed, now);
                continue;
            };
            let digest = home.digest();
            tracing::info!(claim = %hex::encode(id), owner = %self.name_of(&home.owner), "claim moves to the bucket that funds it now");
            self.timeline(id).home = Some(home.clone());
            if self.owners.contains_key(&digest) {
                let _ = self.submit_to_owner(book, verified, claim, digest, now, effects);
            } else if self.region.as_deref() != Some(home.region.as_str()) || home.owner != self.me {
                effects.claims_to_publish.push((home.region.clone(), raw));
            }
        }
    }

    /// A claim waiting here for another node's owner can become hopeless
    /// after it was accepted: another claim of its slot was certified, its
    /// bucket ran dry, its credential was revoked, its window closed. The
    /// owner refuses it then, but only the owner knows; so each tick this
    /// node judges a few waiting claims again by the owner's deterministic
    /// rules (as on entry) and records the refusal, with its reason, here too.
    fn recheck_waiting(&mut self, book: &CredentialBook, now: Millis, effects: &mut Outputs) {
        for _ in 0..RECHECK_PER_TICK {
            match self.recheck.front() {
                Some((_, at)) if now.saturating_sub(*at) >= RECHECK_INTERVAL_MS => {}
                _ => break,
            }
            let Some((id, _)) = self.recheck.pop_front() else { break };
            if self.ledger.certified_claim(&id).is_some() || !self.claim_envelopes.contains_key(&id) {
                continue;
            }
            let Some((claim, home)) = self
                .timelines
                .get(&id)
                .and_then(|t| Some((t.claim.clone()?, t.home.clone()?)))
            else {
                continue;
            };
            if self.owners.contains_key(&home.digest()) {
                continue;
            }
            let mut probe = Owner::new(home.owner, home.clone(), self.owner_config);
            match probe.submit_claim(&self.ledger, &Credentials(book), claim.clone(), now) {
                Err(reason) if !reason.is_retryable() => self.reject(id, &reason, now),
                _ => {
                    let timeline = self.timeline(id);
                    if timeline.published_at != 0 && now.saturating_sub(timeline.published_at) >= CLAIM_REPUBLISH_MS {
                        timeline.published_at = now;
                        if let Some(raw) = self.claim_envelopes.get(&id) {
                            effects.claims_to_publish.push((home.region.clone(), raw.clone()));
                            Self::hand_to_owner(book, &claim, raw, home.owner, effects);
                        }
                    }
                    self.recheck.push_back((id, now));
                }
            }
        }
    }

    /// Takeover (DESIGN.md "Takeover"): a bucket of this region whose owner
    /// has been suspected for longer than `takeover_after` is taken over by
    /// the first unsuspected owner along its successor line. When that is
    /// this node, it first certifies the owner's last batch if it has seen
    /// it, then proposes a freeze; the freeze certificate ends the chain and
    /// its remainder and claims pass to the successor.
    fn takeovers(&mut self, region: &str, now: Millis) {
        let members = self.ledger.validators().members(region).to_vec();
        for key in members {
            if key != self.me && (self.is_suspected(&key, now) || mutated(Mutation::TakeoverWithoutSuspicion)) {
                if let std::collections::btree_map::Entry::Vacant(spell) = self.delay.suspected_since.entry(key) {
                    spell.insert(now);
                    self.stats.peers_suspected = self.stats.peers_suspected.saturating_add(1);
                }
            } else {
                self.delay.suspected_since.remove(&key);
            }
        }
        // Propose only after this region's quorum has been reachable for the
        // whole of `takeover_after`: a freeze proposed from one side of a split
        // (or just after a heal, before the owner is heard again) can lock some
        // voters while others hold the owner's batch, and then neither reaches
        // a quorum.
        self.delay.quorum_since = match (self.own_quorum_latency(now), self.delay.quorum_since) {
            (None, _) => None,
            (Some(_), None) => Some(now),
            (Some(_), since) => since,
        };
        let settled = self
            .delay
            .quorum_since
            .is_some_and(|since| now.saturating_sub(since) >= self.delay.takeover_after_ms);
        if self.delay.suspected_since.is_empty() {
            return;
        }
        if !settled {
            let takeover_after = self.delay.takeover_after_ms;
            if self
                .delay
                .suspected_since
                .values()
                .any(|since| now.saturating_sub(*since) >= takeover_after)
            {
                self.stats.takeovers_withheld = self.stats.takeovers_withheld.saturating_add(1);
            }
            return;
        }
        let suspected = &self.delay.suspected_since;
        let mut takeovers = Vec::new();
        for d in self.ledger.distributions() {
            for plan in d.buckets() {
                if plan.id.region != region || plan.id.owner == self.me || self.ledger.is_ended(&plan.digest) {
                    continue;
                }
                let overdue = suspected
                    .get(&plan.id.owner)
                    .is_some_and(|since| now.saturating_sub(*since) >= self.delay.takeover_after_ms);
                if !overdue {
                    continue;
                }
                let mut current = plan.digest;
                let mut taker = None;
                for _ in 0..d.region_buckets(region).len() {
                    let Some(next) = d.successor(&current).and_then(|n| d.bucket(&n)) else {
                        break;
                    };
                    if next.id.owner == self.me || !suspected.contains_key(&next.id.owner) {
                        taker = Some(next.id.owner);
                        break;
                    }
                    current = next.digest;
                }
                if taker == Some(self.me) {
                    takeovers.push(plan.id.clone());
                }
            }
        }
        for bucket in takeovers {
            self.propose_takeover(bucket);
        }
    }

    fn propose_takeover(&mut self, bucket: BucketId) {
        let digest = bucket.digest();
        let next = self.ledger.next_seq(&digest).unwrap_or(0);
        let underway = self
            .collecting
            .values()
            .any(|c| c.object.bucket().digest() == digest && c.object.seq() == Some(next));
        if underway {
            return;
        }
        self.stats.takeovers_proposed = self.stats.takeovers_proposed.saturating_add(1);
        if let Some((batch, envelope)) = self.seen_batches.get(&digest)
            && batch.seq == next
        {
            tracing::warn!(owner = %self.name_of(&bucket.owner), seq = next, "owner suspected past takeover_after: certifying its last batch before freezing");
            self.collecting.insert(
                batch.id,
                Collecting::new(CertifiedObject::Batch(batch.clone()), envelope.clone()),
            );
            return;
        }
        let freeze = Freeze::new(self.me, bucket, next.checked_sub(1), None);
        let body = wire::freeze_body(&freeze, None);
        let (envelope, _) = seal_with(&self.network, self.signer.as_ref(), Kind::Freeze, body.encode_to_vec());
        tracing::warn!(owner = %self.name_of(&freeze.bucket.owner), at_seq = next, "owner suspected past takeover_after: proposing a freeze of its bucket");
        self.collecting
            .insert(freeze.id, Collecting::new(CertifiedObject::Freeze(freeze), envelope));
    }

    /// A validator of this region asks for this node's vote. Returns the
    /// effects (the lock to persist) and the answer to send after it.
    fn on_vote_request(
        &mut self,
        book: &CredentialBook,
        request: &pb::VoteRequest,
        now: Millis,
    ) -> (Outputs, pb::VoteResponse) {
        let mut effects = Outputs::default();
        for raw in &request.certificates {
            let _ = self.on_certificate(book, raw, now);
        }
        let refuse = |refusal: String, retry: bool| pb::VoteResponse {
            vote: vec![],
            refusal,
            retry,
        };
        let object = match wire::verify_nested(&self.network, &request.object, "vote request object", &mut self.known) {
            Ok(v) => v,
            Err(e) => return (effects, refuse(e.to_string(), false)),
        };
        if object.kind == Kind::Claim {
            // A claim handed to its owner by the node it entered at. The
            // answer carries nothing: the entry node learns the outcome as
            // every node does, from the certificate or its recheck.
            match self.on_claim(book, &object, false, now) {
                Ok(more) => effects.append(more),
                Err(e) => tracing::debug!(error = %e, "a claim handed over was not taken"),
            }
            return (effects, refuse(String::new(), false));
        }
        let judged = if object.kind == Kind::Freeze {
            let freeze = match wire::freeze(&self.network, &object, &mut self.known) {
                Ok(f) => f,
                Err(e) => return (effects, refuse(e.to_string(), false)),
            };
            let Some(voter) = self.voter.as_mut() else {
                return (effects, refuse("this node is not a validator".into(), false));
            };
            let bucket = freeze.bucket.clone();
            (voter.on_freeze(&self.ledger, &Credentials(book), &freeze, now), bucket)
        } else {
            let batch = match wire::batch(&self.network, &object, &mut self.known) {
                Ok((b, _)) => b,
                Err(e) => return (effects, refuse(e.to_string(), false)),
            };
            let Some(voter) = self.voter.as_mut() else {
                return (effects, refuse("this node is not a validator".into(), false));
            };
            let result = voter.on_batch(&self.ledger, &Credentials(book), &batch, now);
            let bucket = batch.bucket.clone();
            if let Some(evidence) = self.equivocation(&batch, &request.object, now) {
                effects.evidence_to_publish.push(evidence);
            }
            self.remember_batch(batch, &request.object);
            (result, bucket)
        };
        match judged {
            (Ok(outputs), bucket) => {
                let mut vote = None;
                let mut need = None;
                for output in outputs {
                    match output {
                        VoterOutput::Persist(_) if mutated(Mutation::VoteWithoutLock) => {}
                        VoterOutput::Persist(lock) => effects.locks.push(LockRecord::Vote {
                            bucket: lock.bucket,
                            seq: lock.seq,
                            object_id: lock.object_id,
                        }),
                        VoterOutput::SendVote(v) if vote.is_none() => {
                            let body = wire::vote_body(&v, &bucket);
                            let (raw, _) =
                                seal_with(&self.network, self.signer.as_ref(), Kind::Vote, body.encode_to_vec());
                            self.known.remember_sealed(&raw);
                            vote = Some(raw);
                        }
                        VoterOutput::SendVote(_) => {}
                        VoterOutput::NeedData(missing) => need = Some(format!("need data: {missing:?}")),
                    }
                }
                // A vote that was cast is always sent, even when more data is
                // needed for the rest (a freeze's pending batch comes first).
                let response = match (vote, need) {
                    (Some(raw), need) => pb::VoteResponse {
                        vote: raw,
                        refusal: String::new(),
                        retry: need.is_some(),
                    },
                    (None, Some(need)) => refuse(need, true),
                    (None, None) => refuse(String::new(), true),
                };
                (effects, response)
            }
            (Err(refusal), _) => {
                let retry = refusal.is_retryable();
                (effects, refuse(refusal.to_string(), retry))
            }
        }
    }

    /// Equivocation evidence when `batch` and the batch remembered for its
    /// bucket are two different batches of the owner at one seq, unless
    /// this owner was reported less than `EQUIVOCATION_REPORT_INTERVAL_MS`
    /// ago: the evidence envelope (signed by this node) to gossip.
    fn equivocation(&mut self, batch: &Batch, envelope: &[u8], now: Millis) -> Option<Vec<u8>> {
        let (known, known_envelope) = self.seen_batches.get(&batch.bucket.digest())?;
        if known.seq != batch.seq {
            return None;
        }
        let evidence = Equivocation::check(known.clone(), batch.clone()).ok()?;
        let body = wire::evidence_body(known_envelope, envelope);
        let recent = self
            .equivocations_reported
            .get(&evidence.owner)
            .is_some_and(|at| now.saturating_sub(*at) < EQUIVOCATION_REPORT_INTERVAL_MS);
        if recent {
            return None;
        }
        self.equivocations_reported.insert(evidence.owner, now);
        self.stats.equivocations_detected = self.stats.equivocations_detected.saturating_add(1);
        tracing::warn!(
            owner = %self.name_of(&evidence.owner),
            seq = evidence.seq,
            "an owner signed two different batches at one seq: gossiping the evidence"
        );
        Some(
            seal_with(
                &self.network,
                self.signer.as_ref(),
                Kind::Evidence,
                body.encode_to_vec(),
            )
            .0,
        )
    }

    /// Keeps the newest batch an owner asked this node to vote for, so that a
    /// successor taking the bucket over can certify it before freezing.
    fn remember_batch(&mut self, batch: Batch, envelope: &[u8]) {
        let digest = batch.bucket.digest();
        let next = self.ledger.next_seq(&digest).unwrap_or(0);
        if batch.seq < next || self.ledger.bucket(&digest).is_none() {
            return;
        }
        // A batch at the next position (the one a takeover certifies) beats
        // one further ahead: that one cannot be certified before it, and an
        // owner whose key signs batches far ahead must not hide the real one.
        match self.seen_batches.get(&digest) {
            Some((known, _)) if known.seq >= batch.seq && !(known.seq > next && batch.seq == next) => {}
            _ => {
                self.seen_batches.insert(digest, (batch, envelope.to_vec()));
            }
        }
    }

    /// A voter answered this node's request.
    fn on_vote_response(&mut self, book: &CredentialBook, response: &pb::VoteResponse, now: Millis) -> Outputs {
        let _ = book;
        let mut effects = Outputs::default();
        if response.vote.is_empty() {
            if !response.retry && !response.refusal.is_empty() {
                tracing::warn!(refusal = %response.refusal, "a voter refused a batch");
            }
            return effects;
        }
        let Ok(v) = wire::verify_nested(&self.network, &response.vote, "vote", &mut self.known) else {
            return effects;
        };
        let Ok(vote) = wire::vote(&v) else { return effects };
        let object_id = vote.object_id;
        let Some(c) = self.collecting.get_mut(&object_id) else {
            return effects;
        };
        if Some(vote.seq) != c.object.seq() || vote.bucket != c.object.bucket().digest() {
            return effects;
        }
        c.votes.insert(vote.signer, (vote, response.vote.clone()));
        let weight: u64 = c
            .votes
            .keys()
            .filter_map(|k| self.ledger.validators().get(k).map(|v| v.weight))
            .sum();
        if !self.ledger.validators().is_quorum(&c.object.bucket().region, weight) {
            return effects;
        }
        let Some(c) = self.collecting.remove(&object_id) else {
            return effects;
        };
        let cert = pb::Certificate {
            object: c.envelope,
            votes: c.votes.values().map(|(_, raw)| raw.clone()).collect(),
        };
        let raw = cert.encode_to_vec();
        if self
            .apply_certificate(
                Certificate {
                    object: c.object,
                    votes: c.votes.into_values().map(|(v, _)| v).collect(),
                },
                &raw,
                now,
            )
            .is_ok()
        {
            effects.store_certificates.push(raw.clone());
            effects.certificates_to_publish.push(raw);
        }
        effects
    }

    /// A certificate from gossip, sync or a vote request. `Ok(true)` when it
    /// was new here (store and relay it), `Ok(false)` for a duplicate.
    fn on_certificate(&mut self, book: &CredentialBook, raw: &[u8], now: Millis) -> Result<bool, ValidatorError> {
        let _ = book;
        // Every node stores and serves a certificate as the bytes its owner
        // formed, so the copies a node meets again (gossip duplicates, the
        // certificate logs of every peer it pulls, vote requests) are
        // byte-identical to the one it applied: recognised, not verified
        // again. Different bytes take the full path.
        if self.certificate_fingerprints.contains(blake3::hash(raw).as_bytes()) {
            return Ok(false);
        }
        let cert = wire::certificate(&self.network, raw, &mut self.known)?;
        self.apply_certificate(cert, raw, now)
    }

    fn apply_certificate(&mut self, cert: Certificate, raw: &[u8], now: Millis) -> Result<bool, ValidatorError> {
        cert.check(self.ledger.validators())
            .map_err(|e| ValidatorError::Certificate(e.to_string()))?;
        let id = cert.object.id();
        let bucket = cert.object.bucket().digest();
        let seq = cert.object.seq().unwrap_or(u64::MAX);
        // Positions older than the ones kept in memory are judged by the
        // ledger's certified ids.
        let known_id = self
            .certificates
            .get(&(bucket, seq))
            .map(|(existing, _)| *existing)
            .or_else(|| self.ledger.certified_id(&bucket, seq));
        match known_id {
            Some(existing) if existing == id => return Ok(false),
            Some(_) => {
                self.conflicting_certificates = self.conflicting_certificates.saturating_add(1);
                return Err(ValidatorError::Certificate(
                    "a different certificate exists at this position".into(),
                ));
            }
            None => {}
        }
        let claims: Vec<Claim> = match &cert.object {
            CertifiedObject::Batch(b) => b.claims().cloned().collect(),
            CertifiedObject::Freeze(_) => Vec::new(),
        };
        let transfers: Vec<(Digest, u64)> = match &cert.object {
            CertifiedObject::Batch(b) => b
                .entries
                .iter()
                .filter_map(|entry| match entry {
                    crate::core::escrow::Entry::TransferOut { to, amount } => Some((to.digest(), *amount)),
                    _ => None,
                })
                .collect(),
            CertifiedObject::Freeze(_) => Vec::new(),
        };
        let region = cert.object.bucket().region.clone();
        match self.ledger.apply(cert) {
            Ok(crate::core::escrow::ApplyOutcome::Duplicate) => Ok(false),
            Ok(_) => {
                self.last_heard.insert(region, now);
                self.remember_certificate(bucket, seq, id, raw);
                for (to, amount) in transfers {
                    let moved = self.transfers_certified.entry((bucket, to)).or_default();
                    *moved = moved.saturating_add(amount);
                }
                self.collecting.remove(&id);
                if self.delay.awaiting_global.len() < AWAITING_GLOBAL_MAX {
                    self.delay
                        .awaiting_global
                        .insert((bucket, seq), claims.iter().map(|c| c.id).collect());
                }
                if self.ledger.is_ended(&bucket) {
                    // Frozen or closed: the claims waiting for this bucket move on.
                    self.frozen.push(bucket);
                }
                for claim in claims {
                    // Certified: the certificate carries the envelope from now on.
                    self.claim_envelopes.remove(&claim.id);
                    self.release(claim.id);
                    let t = self.timeline(claim.id);
                    let mut stages = None;
                    if t.regional_at == 0 {
                        t.regional_at = now;
                        // Only an owner stamps `provisional_at`.
                        if t.provisional_at != 0 && t.received_at != 0 {
                            stages = Some((
                                t.provisional_at.saturating_sub(t.received_at),
                                now.saturating_sub(t.provisional_at),
                            ));
                        }
                    }
                    t.reach(Step::Regional, now);
                    t.claim = Some(claim);
                    if let Some((batching, voting)) = stages {
                        self.samples.claim_stages(batching, voting);
                    }
                }
                // Global already (a network of one region whose frontier is
                // this node's, or heartbeats that ran ahead of the
                // certificate): stamped now, not at the next heartbeat.
                if self.is_global(&bucket, seq)
                    && let Some(ids) = self.delay.awaiting_global.remove(&(bucket, seq))
                {
                    for id in ids {
                        self.timeline(id).reach(Step::Global, now);
                    }
                }
                Ok(true)
            }
            Err(e @ crate::core::escrow::LedgerError::WaitingFull { .. }) => Err(ValidatorError::Busy(e.to_string())),
            Err(e) => Err(ValidatorError::Certificate(e.to_string())),
        }
    }

    /// Keeps a certificate's bytes for the positions a vote request may need
    /// (the newest [`CERTIFICATES_KEPT_PER_BUCKET`] of its bucket) and its
    /// fingerprint among the newest [`CERTIFICATE_FINGERPRINTS_MAX`]: memory
    /// does not grow with history. Older ones live in the store's
    /// certificate log; one met again takes the full path and is found a
    /// duplicate by the ledger.
    fn remember_certificate(&mut self, bucket: Digest, seq: u64, id: Digest, raw: &[u8]) {
        self.certificates.insert((bucket, seq), (id, raw.to_vec()));
        let keep_from = seq.saturating_sub(CERTIFICATES_KEPT_PER_BUCKET);
        let old: Vec<(Digest, u64)> = self
            .certificates
            .range((bucket, 0)..(bucket, keep_from))
            .map(|(key, _)| *key)
            .collect();
        for key in old {
            self.certificates.remove(&key);
        }
        let fingerprint = *blake3::hash(raw).as_bytes();
        if self.certificate_fingerprints.insert(fingerprint) {
            self.fingerprint_order.push_back(fingerprint);
            if self.fingerprint_order.len() > CERTIFICATE_FINGERPRINTS_MAX
                && let Some(oldest) = self.fingerprint_order.pop_front()
            {
                self.certificate_fingerprints.remove(&oldest);
            }
        }
    }

    /// A claim's status and timeline.
    ///
    /// A position past the global threshold whose claims the next tick has
    /// yet to stamp is still reported `regional`, so a claim is `global` only
    /// once it has its `global_at`.
    pub fn claim_status(&self, book: &CredentialBook, id: &Digest) -> Option<(ClaimStatus, Timeline)> {
        let status = match self.ledger.claim_status(id, &Credentials(book), self)? {
            ClaimStatus::Global { bucket, seq } if self.delay.awaiting_global.contains_key(&(bucket, seq)) => {
                ClaimStatus::Regional { bucket, seq }
            }
            status => status,
        };
        Some((status, self.timelines.get(id).cloned().unwrap_or_default()))
    }

    /// Every funded slot, for audits.
    pub fn funded_slots(&self) -> Vec<(Digest, Digest, u64, Digest)> {
        self.ledger
            .certified_claims()
            .map(|c| (c.claim.slot(), c.bucket, c.seq, c.claim.id))
            .collect()
    }
}

/// `global`: in every region, validators holding more than the threshold of
/// its weight report a frontier past the position (this node's own ledger
/// counts for itself).
impl GlobalView for Validator {
    fn is_global(&self, bucket: &Digest, seq: u64) -> bool {
        let (num, den) = self.threshold();
        let validators = self.ledger.validators();
        validators.regions().all(|region| {
            let members = validators.members(region);
            let weight: u64 = members
                .iter()
                .filter(|k| self.frontier_of(k, bucket) > seq)
                .filter_map(|k| validators.get(k).map(|v| v.weight))
                .fold(0u64, u64::saturating_add);
            quorum::above(weight, validators.region_weight(region), num, den)
        })
    }
}
