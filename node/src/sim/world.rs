//! The simulated world: N validators, each holding the real escrow core (a [`Voter`], a
//! [`Ledger`], an [`Owner`] of its own bucket, and the credential view), wired by a small shell
//! that does what the node's shell does (persist before send, collect votes, broadcast and sync
//! certificates), over the virtual network of `net.rs`, with the faults of `faults.rs`.
//!
//! One event is one step; after every step the invariants of `invariants.rs` are checked. The
//! run is a pure function of its [`Config`]: the ordered event trace is hashed into
//! [`RunOutcome::trace_hash`], and what happened when is kept in [`RunOutcome::record`].
//!
//! Failure suspicion is the node's: validators send heartbeats to their region, and each keeps
//! phi-accrual arrival histories (`core::quorum`). A node holds claims for an owner it suspects.
//! With [`Config::takeover`], the successor of an owner suspected for [`TAKEOVER_AFTER_MS`]
//! proposes a `Freeze` of its bucket (carrying the owner's last batch it saw), unless its own
//! region's quorum is unreachable.
//!
//! Signatures are modelled by keyed blake3 MACs (one secret per validator): the shell checks them
//! as the real shell checks ed25519 before anything reaches the core, which is what lets a
//! Byzantine validator's forged votes and certificates be refused.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::core::escrow::{
    ApplyOutcome, AttestationFacts, Batch, BucketId, Certificate, CertifiedObject, Claim, CredentialView, Digest,
    Distribution, Entry, FaultModel, Freeze, Key, Ledger, LedgerError, Lock, Millis, Missing, Owner, OwnerConfig,
    OwnerOutput, Route, Validator, ValidatorSet, Vote, VoteRefusal, Voter, VoterConfig, VoterOutput, digest_parts,
    slot_of,
};
use crate::core::quorum::{self, ArrivalHistory, Member};

use super::faults::{FaultEvent, Profile, Script};
use super::invariants::{Registry, Violation, check_liquidity};
use super::net::{EventQueue, LinkModel, Micros, Partition, Rng, base_one_way_us, region_name};
use super::report::{Summary, percentile};

/// The virtual wall clock at the start of a run (ms since the Unix epoch).
const T0_MS: Millis = 1_700_000_000_000;
/// Tolerated clock difference between nodes (genesis `clock_skew`).
const SKEW_TOLERANCE_MS: u64 = 500;
const ISSUER: Key = [0xA1; 32];
const OPERATOR: Key = [0xB2; 32];
const SCHEMA: &str = "member";
const AMOUNT: u64 = 10;
/// An owner closes a batch this long after its first claim (the floor of adaptive batching).
const BATCH_DELAY_US: Micros = 10_000;
const BATCH_CLAIMS_MAX: usize = 32;
/// First re-send of an unanswered vote request; doubles up to [`RESEND_MAX_US`].
const RESEND_FIRST_US: Micros = 200_000;
const RESEND_MAX_US: Micros = 2_000_000;
/// Anti-entropy (the heartbeat's frontier exchange) period.
const SYNC_INTERVAL_US: Micros = 500_000;
/// Certificates per sync answer (bounded pages).
const SYNC_PAGE_MAX: usize = 128;
/// Certificates a ledger keeps while their predecessors are missing.
const LEDGER_WAITING_MAX: usize = 4_096;
/// A client re-submits a claim not yet certified after this long (doubling, capped).
const CLIENT_RETRY_FIRST_US: Micros = 1_000_000;
const CLIENT_RETRY_MAX_US: Micros = 4_000_000;
/// Liveness is checked this often during the tail.
const CHECK_INTERVAL_US: Micros = 250_000;
/// Heartbeat period and the phi above which a silent validator is suspected (the genesis
/// defaults `heartbeat_interval` and `phi_threshold`).
const HEARTBEAT_INTERVAL_MS: Millis = 250;
const PHI_THRESHOLD: f64 = 8.0;
/// How long an owner must be suspected before its successor proposes a freeze (the genesis
/// default `takeover_after`).
pub const TAKEOVER_AFTER_MS: Millis = 5_000;
/// Claims one node holds for owners it suspects; beyond this the client's retry stands in.
const HELD_CLAIMS_MAX: usize = 1_024;
/// Nodes beyond which per-node full liquidity checks after each step are replaced by
/// per-bucket checks (the oracle's full check still runs after every new certificate).
const FULL_NODE_CHECKS_MAX: usize = 64;

/// Wire-size estimates (bytes) following DESIGN.md's envelope: kind, signer (32), signature (64),
/// framing; bodies with the fields of each kind.
const ENVELOPE_BYTES: u64 = 110;
const CLAIM_BODY_BYTES: u64 = 170;
const BATCH_HEADER_BYTES: u64 = 120;
const VOTE_BODY_BYTES: u64 = 100;
/// Validator, sent_at, seq and state digest (the sim's frontier exchange is the sync request).
const HEARTBEAT_BODY_BYTES: u64 = 80;
/// Signer, bucket, last_seq; the pending batch comes on top.
const FREEZE_BODY_BYTES: u64 = 120;
/// A vote inside a certificate: signer and signature (the body is implied by the object).
const CERT_VOTE_BYTES: u64 = 96;

/// The sender of client submissions.
const CLIENT: usize = usize::MAX;

/// Everything that determines a run.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    pub regions: usize,
    /// Workload and faults run for this long; then faults stop and the tail begins.
    pub duration_us: Micros,
    /// The fault-free tail: the run fails if it has not converged by its end.
    pub tail_us: Micros,
    pub profile: Profile,
    /// Client claims per second of virtual time (across the network).
    pub rate_per_s: f64,
    /// Feed each core a clock that never steps back within one process life (what a correct
    /// shell does); false reproduces the stall a stepping-back clock causes.
    pub monotonic_clock: bool,
    /// Certificates a node stored survive its crash (sled survives a killed process); false
    /// models a node that loses them and must sync everything back.
    pub durable_ledger: bool,
    /// Test hook: a shell that forgets to check signatures (the invariants must catch it).
    pub skip_signature_checks: bool,
    /// Validators send heartbeats to their region and suspect silent peers (phi-accrual), which
    /// drives holding claims and takeover. Off only for the scale projection, whose figures
    /// leave heartbeat traffic out.
    pub heartbeats: bool,
    /// The successor of an owner suspected for [`TAKEOVER_AFTER_MS`] freezes its bucket (needs
    /// heartbeats). Off, an owner that fails for good stalls its bucket (safe, not live), as in
    /// the node today. On in scenarios; in the random profiles only when asked, because there it
    /// can stall a bucket for good: a successor that never saw the owner's last batch proposes a
    /// freeze at its position, and the locks split so that neither reaches a quorum.
    pub takeover: bool,
    /// Exactly these faults instead of the profile's seeded plan (the profile still sets the
    /// links and clocks).
    pub script: Option<Script>,
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub seed: u64,
    pub trace_hash: String,
    pub failure: Option<String>,
    pub summary: Summary,
    pub record: RunRecord,
}

/// What happened when, in virtual time: enough to check a scenario's claims after the run.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    /// Per node: its region and the node whose bucket succeeds its bucket (node i owns bucket i).
    pub regions: Vec<usize>,
    pub successors: Vec<Option<usize>>,
    pub certificates: Vec<CertRecord>,
    pub claims: Vec<ClaimTrace>,
    /// Every node's state digest (`Ledger::state_digest`, what heartbeats carry) just before
    /// each fault was applied; `None` for a node that was down.
    pub snapshots: Vec<Snapshot>,
    /// Every node's state digest when the run ended.
    pub final_digests: Vec<Option<Digest>>,
    /// Nodes that failed for good.
    pub failures: Vec<FailureRecord>,
}

/// One certificate formed in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub bucket: usize,
    pub seq: u64,
    /// A freeze (takeover) rather than a batch.
    pub freeze: bool,
    /// Who proposed it (the owner for a batch, the successor for a freeze) and who collected
    /// its votes.
    pub proposer: usize,
    pub collector: usize,
    pub formed_us: Micros,
    pub global_us: Option<Micros>,
}

/// One client claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimTrace {
    pub created_us: Micros,
    pub valid: bool,
    /// Its home bucket by HRW, ignoring freezes.
    pub home: Option<usize>,
    /// First sent to voters in a batch (provisional).
    pub provisional_us: Option<Micros>,
    /// Some node held it for an owner it suspected.
    pub held: bool,
    /// Not certified because another claim of the same claimant was (at most one is paid).
    pub duplicate: bool,
    /// Where it was certified: index into [`RunRecord::certificates`].
    pub certificate: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub at_us: Micros,
    pub fault: String,
    pub digests: Vec<Option<Digest>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    pub node: usize,
    pub at_us: Micros,
    /// The batch in flight when it failed: its seq and how many claims it carried.
    pub in_flight: Option<(u64, usize)>,
}

/// A certificate as it travels: the core's certificate plus the signatures the shell checks.
pub(crate) struct SimCert {
    cert: Certificate,
    /// The proposer's signature of the object (the owner's of a batch, the successor's of a
    /// freeze).
    object_sig: Digest,
    vote_sigs: Vec<Digest>,
    bucket: usize,
    seq: u64,
    bytes: u64,
    /// Memo of the signature check (the object is immutable once built).
    verified: Cell<Option<bool>>,
}

#[derive(Clone)]
enum Msg {
    Claim {
        claim: Rc<Claim>,
    },
    VoteRequest {
        batch: Rc<Batch>,
        batch_sig: Digest,
        prev: Option<Rc<SimCert>>,
    },
    Vote {
        vote: Vote,
        sig: Digest,
    },
    Cert(Rc<SimCert>),
    SyncRequest {
        frontier: Rc<Vec<u64>>,
        catching_up: bool,
    },
    SyncResponse(Vec<Rc<SimCert>>),
    FreezeRequest {
        freeze: Rc<Freeze>,
        sig: Digest,
        /// The owner's signature of the pending batch the freeze carries.
        pending_sig: Option<Digest>,
        prev: Option<Rc<SimCert>>,
    },
    Heartbeat,
}

impl Msg {
    fn tag(&self) -> u8 {
        match self {
            Msg::Claim { .. } => 1,
            Msg::VoteRequest { .. } => 2,
            Msg::Vote { .. } => 3,
            Msg::Cert(_) => 4,
            Msg::SyncRequest { .. } => 5,
            Msg::SyncResponse(_) => 6,
            Msg::FreezeRequest { .. } => 7,
            Msg::Heartbeat => 8,
        }
    }

    /// Eight bytes naming the message content, for the trace.
    fn trace_id(&self) -> [u8; 8] {
        let digest: &[u8] = match self {
            Msg::Claim { claim } => &claim.id,
            Msg::VoteRequest { batch, .. } => &batch.id,
            Msg::Vote { vote, .. } => &vote.object_id,
            Msg::Cert(cert) => &cert.object_sig,
            Msg::FreezeRequest { freeze, .. } => &freeze.id,
            Msg::Heartbeat => return [0; 8],
            Msg::SyncRequest { frontier, .. } => {
                let sum: u64 = frontier.iter().fold(0u64, |a, b| a.wrapping_add(*b));
                return sum.to_le_bytes();
            }
            Msg::SyncResponse(certs) => return (certs.len() as u64).to_le_bytes(),
        };
        let mut out = [0u8; 8];
        if let Some(head) = digest.get(..8) {
            out.copy_from_slice(head);
        }
        out
    }

    fn bytes(&self) -> u64 {
        match self {
            Msg::Claim { .. } => ENVELOPE_BYTES + CLAIM_BODY_BYTES,
            Msg::VoteRequest { batch, prev, .. } => batch_bytes(batch) + prev.as_ref().map_or(0, |c| c.bytes),
            Msg::Vote { .. } => ENVELOPE_BYTES + VOTE_BODY_BYTES,
            Msg::Cert(cert) => cert.bytes,
            Msg::SyncRequest { frontier, .. } => 48 + 8 * frontier.len() as u64,
            Msg::SyncResponse(certs) => 16 + certs.iter().map(|c| c.bytes).sum::<u64>(),
            Msg::FreezeRequest { freeze, prev, .. } => freeze_bytes(freeze) + prev.as_ref().map_or(0, |c| c.bytes),
            Msg::Heartbeat => ENVELOPE_BYTES + HEARTBEAT_BODY_BYTES,
        }
    }
}

fn batch_bytes(batch: &Batch) -> u64 {
    ENVELOPE_BYTES + BATCH_HEADER_BYTES + batch.entries.len() as u64 * (ENVELOPE_BYTES + CLAIM_BODY_BYTES)
}

fn freeze_bytes(freeze: &Freeze) -> u64 {
    ENVELOPE_BYTES + FREEZE_BODY_BYTES + freeze.pending.as_deref().map_or(0, batch_bytes)
}

fn object_bytes(object: &CertifiedObject) -> u64 {
    match object {
        CertifiedObject::Batch(batch) => batch_bytes(batch),
        CertifiedObject::Freeze(freeze) => freeze_bytes(freeze),
    }
}

/// Who signed a certified object, and the id the signature covers.
fn proposal(object: &CertifiedObject) -> (Key, Digest) {
    match object {
        CertifiedObject::Batch(batch) => (batch.signer, batch.id),
        CertifiedObject::Freeze(freeze) => (freeze.signer, freeze.id),
    }
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    CloseBatch,
    Resend,
    Sync,
    Heartbeat,
    /// Re-send the freeze this node proposes to voters that have not voted for it.
    Takeover,
}

enum Event {
    Deliver { from: usize, to: usize, msg: Msg },
    Timer { node: usize, epoch: u32, timer: Timer },
    NewClaim,
    Submit { claim: usize },
    Fault(FaultEvent),
    EndFaults,
    Check,
}

/// The credential store every node shares: attestations are issued before the distribution
/// opens, so every node knows them.
#[derive(Default)]
struct Credentials {
    attestations: HashMap<Digest, AttestationFacts>,
}

impl CredentialView for Credentials {
    fn attestation(&self, id: &Digest) -> Option<AttestationFacts> {
        self.attestations.get(id).cloned()
    }
    fn revocation(&self, _id: &Digest) -> Option<Millis> {
        None
    }
}

/// Votes a node collects for an object it asked its region to vote on: its own batch, or as a
/// successor a freeze and the pending batch the freeze carries.
struct Collecting {
    object: CertifiedObject,
    /// The proposer's signature of the object.
    sig: Digest,
    bucket: usize,
    bucket_digest: Digest,
    seq: u64,
    votes: BTreeMap<Key, (Vote, Digest)>,
}

/// A freeze this node proposes as the successor of a suspected owner.
struct Takeover {
    bucket: usize,
    freeze: Rc<Freeze>,
    sig: Digest,
    pending_sig: Option<Digest>,
    /// The frozen chain's next seq here when the request last went out: once the pending batch
    /// is certified, the freeze is asked for again at once.
    sent_at_next: u64,
    backoff_us: Micros,
}

struct Node {
    key: Key,
    region: usize,
    up: bool,
    /// Bumped on every crash: timers from an earlier life are ignored.
    epoch: u32,
    skew_ms: i64,
    jump_ms: i64,
    /// The highest time this process's clock has shown (monotonic shell clock).
    clock_floor_ms: Millis,
    byzantine: bool,
    voter: Voter,
    ledger: Ledger,
    owner: Owner,
    /// Durable records: all that survives a crash.
    durable_locks: Vec<Lock>,
    durable_batch: Option<Batch>,
    /// Certificates this node stored (sled: survives a killed process, not a lost machine).
    stored_certs: Vec<Rc<SimCert>>,
    collecting: BTreeMap<Digest, Collecting>,
    /// next_seq per bucket (index order) as this node's ledger has it.
    frontier: Vec<u64>,
    /// Highest frontier ever reached per bucket, across restarts (for the global status).
    counted: Vec<u64>,
    /// After a restart the owner sequences nothing until one sync round has caught it up.
    catching_up: bool,
    close_armed: bool,
    resend_armed: bool,
    resend_backoff_us: Micros,
    sent_msgs: u64,
    sent_bytes: u64,
    recv_msgs: u64,
    recv_bytes: u64,
    /// Genuine votes a Byzantine node has seen, to replay elsewhere.
    replay_bank: Vec<(Vote, Digest)>,
    /// Heartbeat arrivals per region peer, in this node's clock (phi-accrual).
    arrivals: BTreeMap<usize, ArrivalHistory>,
    /// Region peers suspected now, with when (this node's clock) the suspicion began.
    suspected: BTreeMap<usize, Millis>,
    /// Claims for owners this node suspects, forwarded once their route leads elsewhere or the
    /// owner is heard again.
    held: Vec<Rc<Claim>>,
    /// Newest batch seen per bucket of this region with its owner's signature: a freeze carries
    /// it as pending.
    seen: BTreeMap<usize, (Rc<Batch>, Digest)>,
    takeover: Option<Takeover>,
    takeover_armed: bool,
    /// Since when (this node's clock) its region's quorum has been reachable; `None` while
    /// isolated.
    quorum_since: Option<Millis>,
    /// Failed for good: never restarted, and left out of liveness and convergence.
    failed: bool,
    /// Fail for good right after the next batch is sent.
    fail_after_batch: bool,
}

struct ClaimRecord {
    claim: Rc<Claim>,
    slot: Digest,
    valid: bool,
    region: usize,
    created_us: Micros,
    retries: u32,
    provisional_us: Option<Micros>,
    held: bool,
}

struct CertMeta {
    formed_us: Micros,
    applied_per_region: Vec<u32>,
    global_us: Option<Micros>,
    freeze: bool,
    proposer: usize,
    collector: usize,
}

/// The whole simulated network.
pub struct World {
    cfg: Config,
    rng: Rng,
    now: Micros,
    queue: EventQueue<Event>,
    validators: ValidatorSet,
    dist: Distribution,
    creds: Credentials,
    nodes: Vec<Node>,
    secrets: Vec<Digest>,
    key_index: HashMap<Key, usize>,
    buckets: Vec<BucketId>,
    bucket_index: HashMap<Digest, usize>,
    region_members: Vec<Vec<usize>>,
    registry: Registry,
    certs: BTreeMap<(usize, u64), Rc<SimCert>>,
    cert_meta: BTreeMap<(usize, u64), CertMeta>,
    /// Highest certified seq + 1 per bucket over all certificates formed.
    global_frontier: Vec<u64>,
    oracle: Ledger,
    oracle_dirty: bool,
    claims: Vec<ClaimRecord>,
    claim_index: HashMap<Digest, usize>,
    claimants: Vec<(Key, Digest)>,
    /// Per bucket, the node whose bucket succeeds it (a freeze passes the remainder there).
    successors: Vec<Option<usize>>,
    snapshots: Vec<Snapshot>,
    failures: Vec<FailureRecord>,
    freezes_proposed: std::collections::BTreeSet<Digest>,
    honest_votes: HashMap<(usize, usize, u64), Digest>,
    link: LinkModel,
    partition: Option<Partition>,
    faults_active: bool,
    byzantine: Option<usize>,
    trace: blake3::Hasher,
    events: u64,
    counters: BTreeMap<String, u64>,
    violation: Option<Violation>,
    converged_us: Option<Micros>,
}

fn validator_key(seed: u64, index: usize) -> Key {
    digest_parts("sim/validator", &[&seed.to_le_bytes(), &(index as u64).to_le_bytes()])
}

fn sign(secret: &Digest, message: &Digest) -> Digest {
    *blake3::keyed_hash(secret, message).as_bytes()
}

fn vote_digest(vote: &Vote) -> Digest {
    digest_parts(
        "sim/vote",
        &[
            &vote.signer,
            &vote.object_id,
            &vote.bucket,
            &vote.seq.to_le_bytes(),
            vote.region.as_bytes(),
        ],
    )
}

/// The variant name of a refusal or outcome, for the counters.
fn variant(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    text.split([' ', '(', '{']).next().unwrap_or_default().to_owned()
}

impl World {
    /// Builds the network, the distribution and the fault schedule for `cfg`.
    pub fn new(cfg: Config) -> Result<Self, String> {
        if cfg.nodes == 0 || cfg.regions == 0 || cfg.regions > cfg.nodes {
            return Err(format!(
                "need 1 <= regions <= nodes (got {} nodes, {} regions)",
                cfg.nodes, cfg.regions
            ));
        }
        let mut rng = Rng::new(cfg.seed);
        let region_names: Vec<String> = (0..cfg.regions).map(region_name).collect();
        let mut region_members = vec![Vec::new(); cfg.regions];
        let mut validators = Vec::with_capacity(cfg.nodes);
        let mut secrets = Vec::with_capacity(cfg.nodes);
        let mut key_index = HashMap::new();
        for index in 0..cfg.nodes {
            let region = index % cfg.regions;
            let key = validator_key(cfg.seed, index);
            validators.push(Validator {
                key,
                region: region_names.get(region).cloned().unwrap_or_default(),
                weight: 1,
            });
            secrets.push(digest_parts("sim/secret", &[&cfg.seed.to_le_bytes(), &key]));
            key_index.insert(key, index);
            if let Some(members) = region_members.get_mut(region) {
                members.push(index);
            }
        }
        let set = ValidatorSet::new(validators.clone(), FaultModel::Byzantine).map_err(|e| e.to_string())?;

        // Budget: ample headroom, so only bugs (never exhaustion) stop valid claims.
        let expected_claims = (cfg.rate_per_s * cfg.duration_us as f64 / 1e6).ceil() as u64;
        let per_node_claims = (expected_claims.saturating_mul(6) / cfg.nodes as u64).max(200);
        let allocations: Vec<(String, u64)> = region_members
            .iter()
            .zip(&region_names)
            .map(|(members, name)| (name.clone(), members.len() as u64 * per_node_claims * AMOUNT))
            .collect();
        let total = allocations.iter().map(|(_, amount)| amount).sum();
        let dist = Distribution {
            id: digest_parts("sim/distribution", &[&cfg.seed.to_le_bytes()]),
            operator: OPERATOR,
            asset: "SIM".into(),
            total,
            schema: SCHEMA.into(),
            issuers: vec![ISSUER],
            amount_per_claim: AMOUNT,
            opens_at: T0_MS.saturating_sub(60_000),
            closes_at: T0_MS.saturating_add(365 * 24 * 3_600_000),
            allocations,
            // The breaker is on, with room for bursts of retries.
            max_outflow_per_window: 64 * AMOUNT,
            outflow_window_ms: 1_000,
        };
        let mut oracle = Ledger::new(set.clone(), usize::MAX);
        oracle.add_distribution(dist.clone()).map_err(|e| e.to_string())?;

        let byzantine = if cfg.profile.byzantine() {
            let eligible: Vec<usize> = region_members
                .iter()
                .filter(|members| members.len() >= 4)
                .flatten()
                .copied()
                .collect();
            eligible.get(rng.below(eligible.len() as u64) as usize).copied()
        } else {
            None
        };
        let skew_max: u64 = if cfg.profile.clock() { 200 } else { 20 };
        let mut nodes = Vec::with_capacity(cfg.nodes);
        let mut buckets = Vec::with_capacity(cfg.nodes);
        let mut bucket_index = HashMap::new();
        for (index, validator) in validators.iter().enumerate() {
            let bucket = BucketId {
                distribution: dist.id,
                region: validator.region.clone(),
                owner: validator.key,
            };
            bucket_index.insert(bucket.digest(), index);
            buckets.push(bucket.clone());
            let skew_ms = rng.between(0, 2 * skew_max) as i64 - skew_max as i64;
            let mut ledger = Ledger::new(set.clone(), LEDGER_WAITING_MAX);
            ledger.add_distribution(dist.clone()).map_err(|e| e.to_string())?;
            nodes.push(Node {
                key: validator.key,
                region: index % cfg.regions,
                up: true,
                epoch: 0,
                skew_ms,
                jump_ms: 0,
                clock_floor_ms: 0,
                byzantine: Some(index) == byzantine,
                voter: Voter::new(validator.key, validator.region.clone(), voter_config()),
                ledger,
                owner: Owner::new(validator.key, bucket, owner_config()),
                durable_locks: Vec::new(),
                durable_batch: None,
                stored_certs: Vec::new(),
                collecting: BTreeMap::new(),
                frontier: vec![0; cfg.nodes],
                counted: vec![0; cfg.nodes],
                catching_up: false,
                close_armed: false,
                resend_armed: false,
                resend_backoff_us: RESEND_FIRST_US,
                sent_msgs: 0,
                sent_bytes: 0,
                recv_msgs: 0,
                recv_bytes: 0,
                replay_bank: Vec::new(),
                arrivals: BTreeMap::new(),
                suspected: BTreeMap::new(),
                held: Vec::new(),
                seen: BTreeMap::new(),
                takeover: None,
                takeover_armed: false,
                quorum_since: None,
                failed: false,
                fail_after_batch: false,
            });
        }
        // Every bucket must be owned by the node of the same index.
        let planned = oracle.distribution(&dist.id).map_or(0, |d| d.buckets().count());
        if planned != cfg.nodes {
            return Err(format!("distribution has {planned} buckets for {} nodes", cfg.nodes));
        }
        let successors: Vec<Option<usize>> = buckets
            .iter()
            .map(|bucket| {
                oracle
                    .distribution(&dist.id)
                    .and_then(|d| d.successor(&bucket.digest()))
                    .and_then(|next| bucket_index.get(&next).copied())
            })
            .collect();

        let mut world = Self {
            rng,
            now: 0,
            queue: EventQueue::new(),
            validators: set,
            dist,
            creds: Credentials::default(),
            nodes,
            secrets,
            key_index,
            buckets,
            bucket_index,
            region_members,
            registry: Registry::default(),
            certs: BTreeMap::new(),
            cert_meta: BTreeMap::new(),
            global_frontier: vec![0; cfg.nodes],
            oracle,
            oracle_dirty: false,
            claims: Vec::new(),
            claim_index: HashMap::new(),
            claimants: Vec::new(),
            successors,
            snapshots: Vec::new(),
            failures: Vec::new(),
            freezes_proposed: std::collections::BTreeSet::new(),
            honest_votes: HashMap::new(),
            link: cfg.profile.links(),
            partition: None,
            faults_active: true,
            byzantine,
            trace: blake3::Hasher::new(),
            events: 0,
            counters: BTreeMap::new(),
            violation: None,
            converged_us: None,
            cfg,
        };
        world.trace.update(b"credence/sim/v1");
        world.trace.update(&world.cfg.seed.to_le_bytes());
        let plan = match &world.cfg.script {
            Some(script) => script.events.clone(),
            None => world
                .cfg
                .profile
                .plan(&mut world.rng, world.cfg.nodes, world.cfg.duration_us),
        };
        for (at, fault) in plan {
            world.queue.push(at, Event::Fault(fault));
        }
        world.queue.push(world.cfg.duration_us, Event::EndFaults);
        for node in 0..world.cfg.nodes {
            let first_sync = world.rng.below(SYNC_INTERVAL_US);
            world.queue.push(
                first_sync,
                Event::Timer {
                    node,
                    epoch: 0,
                    timer: Timer::Sync,
                },
            );
            if world.cfg.heartbeats {
                let first_beat = world.rng.below(HEARTBEAT_INTERVAL_MS * 1_000);
                world.queue.push(
                    first_beat,
                    Event::Timer {
                        node,
                        epoch: 0,
                        timer: Timer::Heartbeat,
                    },
                );
            }
        }
        if world.cfg.rate_per_s > 0.0 {
            world.queue.push(0, Event::NewClaim);
        }
        Ok(world)
    }

    /// Runs to convergence (or failure) and reports.
    pub fn run(mut self) -> RunOutcome {
        let end = self.cfg.duration_us.saturating_add(self.cfg.tail_us);
        while self.violation.is_none() && self.converged_us.is_none() {
            let Some((at, event)) = self.queue.pop() else {
                break;
            };
            if at > end {
                break;
            }
            self.now = at;
            self.events = self.events.wrapping_add(1);
            self.step(event);
            if self.violation.is_none() {
                self.check_after_step();
            }
        }
        if self.violation.is_none() && self.converged_us.is_none() {
            self.violation = Some(Violation::Liveness(self.stuck_reason()));
        }
        if self.violation.is_none() {
            self.final_checks();
        }
        self.outcome()
    }

    fn fail(&mut self, violation: Violation) {
        if self.violation.is_none() {
            self.violation = Some(violation);
        }
    }

    fn count(&mut self, what: &str) {
        if let Some(n) = self.counters.get_mut(what) {
            *n = n.saturating_add(1);
        } else {
            self.counters.insert(what.to_owned(), 1);
        }
    }

    /// The node's wall clock: true time plus its skew and any jump. With a monotonic shell
    /// clock (the default) it never goes backwards within one process life: an owner that admits
    /// a claim and then stamps its batch with an earlier time signs a batch honest voters must
    /// refuse for good (`created_at` after the timestamp), stalling its bucket.
    fn local_ms(&mut self, node: usize) -> Millis {
        let base = T0_MS as i64 + (self.now / 1_000) as i64;
        let monotonic = self.cfg.monotonic_clock;
        let Some(n) = self.nodes.get_mut(node) else {
            return T0_MS;
        };
        let raw = base.saturating_add(n.skew_ms).saturating_add(n.jump_ms).max(0) as Millis;
        if monotonic {
            n.clock_floor_ms = n.clock_floor_ms.max(raw);
            n.clock_floor_ms
        } else {
            raw
        }
    }

    fn trace_event(&mut self, tag: u8, a: usize, b: usize, id: [u8; 8]) {
        let mut record = [0u8; 25];
        record[..8].copy_from_slice(&self.now.to_le_bytes());
        record[8] = tag;
        record[9..13].copy_from_slice(&(a as u32).to_le_bytes());
        record[13..17].copy_from_slice(&(b as u32).to_le_bytes());
        record[17..].copy_from_slice(&id);
        self.trace.update(&record);
    }

    fn schedule_timer(&mut self, node: usize, after: Micros, timer: Timer) {
        let epoch = self.nodes.get(node).map_or(0, |n| n.epoch);
        self.queue
            .push(self.now.saturating_add(after), Event::Timer { node, epoch, timer });
    }

    // ---------------------------------------------------------------- network

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to {
            // A node's own vote on its own batch never touches the network.
            self.queue.push(self.now, Event::Deliver { from, to, msg });
            return;
        }
        let bytes = msg.bytes();
        if let Some(node) = self.nodes.get_mut(from) {
            node.sent_msgs = node.sent_msgs.saturating_add(1);
            node.sent_bytes = node.sent_bytes.saturating_add(bytes);
        }
        let to_region = self.nodes.get(to).map_or(0, |n| n.region);
        let base = match self.nodes.get(from) {
            Some(node) => base_one_way_us(node.region, to_region),
            // Clients sit next to the node they submit to.
            None => base_one_way_us(to_region, to_region),
        };
        let Some(delay) = self.link.delay(&mut self.rng, base) else {
            self.count("net: lost");
            return;
        };
        if self.link.duplicate_ppm > 0
            && self.rng.chance_ppm(self.link.duplicate_ppm)
            && let Some(again) = self.link.delay(&mut self.rng, base)
        {
            self.count("net: duplicated");
            self.queue.push(
                self.now.saturating_add(again),
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
        self.queue
            .push(self.now.saturating_add(delay), Event::Deliver { from, to, msg });
    }

    fn broadcast_region(&mut self, from: usize, region: usize, make: impl Fn() -> Msg) {
        let members = self.region_members.get(region).cloned().unwrap_or_default();
        for to in members {
            self.send(from, to, make());
        }
    }

    // ---------------------------------------------------------------- steps

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Event::Timer { node, epoch, timer } => {
                let live = self.nodes.get(node).is_some_and(|n| n.up && n.epoch == epoch);
                if live {
                    self.trace_event(20 + timer as u8, node, node, [0; 8]);
                    match timer {
                        Timer::CloseBatch => self.on_close_timer(node),
                        Timer::Resend => self.on_resend_timer(node),
                        Timer::Sync => self.on_sync_timer(node),
                        Timer::Heartbeat => self.on_heartbeat_timer(node),
                        Timer::Takeover => self.on_takeover_timer(node),
                    }
                }
            }
            Event::NewClaim => self.new_claim(),
            Event::Submit { claim } => self.submit(claim),
            Event::Fault(fault) => self.apply_fault(fault),
            Event::EndFaults => self.end_faults(),
            Event::Check => self.check_converged(),
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let Some(node) = self.nodes.get(to) else {
            return;
        };
        if !node.up {
            self.trace_event(10, from, to, msg.trace_id());
            self.count("net: to a crashed node");
            return;
        }
        if from != CLIENT && self.partition.as_ref().is_some_and(|p| p.blocks(from, to)) {
            self.trace_event(11, from, to, msg.trace_id());
            self.count("net: cut by partition");
            return;
        }
        self.trace_event(msg.tag(), from, to, msg.trace_id());
        let bytes = if from == to { 0 } else { msg.bytes() };
        if from != to
            && let Some(node) = self.nodes.get_mut(to)
        {
            node.recv_msgs = node.recv_msgs.saturating_add(1);
            node.recv_bytes = node.recv_bytes.saturating_add(bytes);
        }
        match msg {
            Msg::Claim { claim } => self.on_claim(to, claim),
            Msg::VoteRequest { batch, batch_sig, prev } => self.on_vote_request(to, from, batch, batch_sig, prev),
            Msg::Vote { vote, sig } => self.on_vote(to, vote, sig),
            Msg::Cert(cert) => self.accept_cert(to, from, &cert, true),
            Msg::SyncRequest { frontier, catching_up } => self.on_sync_request(to, from, &frontier, catching_up),
            Msg::SyncResponse(certs) => {
                for cert in &certs {
                    self.accept_cert(to, from, cert, false);
                }
                if let Some(node) = self.nodes.get_mut(to)
                    && node.catching_up
                {
                    node.catching_up = false;
                    self.after_ledger_change(to);
                }
            }
            Msg::FreezeRequest {
                freeze,
                sig,
                pending_sig,
                prev,
            } => self.on_freeze_request(to, from, &freeze, sig, pending_sig, prev),
            Msg::Heartbeat => self.on_heartbeat(to, from),
        }
    }

    // ---------------------------------------------------------------- client workload

    fn new_claim(&mut self) {
        if self.now >= self.cfg.duration_us {
            return;
        }
        let roll = self.rng.below(100);
        let region = self.rng.below(self.cfg.regions as u64) as usize;
        let created_ms = T0_MS + self.now / 1_000 - self.rng.below(20);
        let (claimant, attestation, valid) = if roll < 8 && !self.claimants.is_empty() {
            // The same claimant again, with a new claim: at most one may be paid.
            let pick = self.rng.below(self.claimants.len() as u64) as usize;
            let (claimant, attestation) = self.claimants.get(pick).copied().unwrap_or_default();
            (claimant, attestation, true)
        } else {
            let index = self.claimants.len() as u64;
            let claimant = digest_parts("sim/claimant", &[&self.cfg.seed.to_le_bytes(), &index.to_le_bytes()]);
            let facts = AttestationFacts {
                issuer: ISSUER,
                subject: claimant,
                schema: SCHEMA.into(),
                issued_at: T0_MS.saturating_sub(3_600_000),
                expires_at: T0_MS.saturating_add(365 * 24 * 3_600_000),
            };
            let attestation = digest_parts("sim/attestation", &[&claimant]);
            self.creds.attestations.insert(attestation, facts);
            if roll < 14 && !self.claimants.is_empty() {
                // Someone else's credential: objectively invalid, must be rejected.
                let pick = self.rng.below(self.claimants.len() as u64) as usize;
                let (_, other) = self.claimants.get(pick).copied().unwrap_or_default();
                (claimant, other, false)
            } else {
                self.claimants.push((claimant, attestation));
                (claimant, attestation, true)
            }
        };
        let id = digest_parts(
            "sim/claim",
            &[
                &self.dist.id,
                &claimant,
                &attestation,
                &created_ms.to_le_bytes(),
                &(self.claims.len() as u64).to_le_bytes(),
            ],
        );
        let claim = Claim {
            id,
            signer: claimant,
            distribution_id: self.dist.id,
            claimant,
            attestation_id: attestation,
            amount: AMOUNT,
            recipient: claimant,
            created_at: created_ms,
        };
        let index = self.claims.len();
        self.claim_index.insert(id, index);
        self.claims.push(ClaimRecord {
            slot: slot_of(&self.dist.id, &claimant),
            claim: Rc::new(claim),
            valid,
            region,
            created_us: self.now,
            retries: 0,
            provisional_us: None,
            held: false,
        });
        self.queue.push(self.now, Event::Submit { claim: index });
        let gap_us = self.rng.exponential(1e6 / self.cfg.rate_per_s.max(1e-3)).max(1.0) as Micros;
        self.queue.push(self.now.saturating_add(gap_us), Event::NewClaim);
    }

    fn submit(&mut self, index: usize) {
        let Some(record) = self.claims.get(index) else {
            return;
        };
        if self.registry.is_funded(&record.slot) {
            return;
        }
        let (claim, valid, region, retries) = (record.claim.clone(), record.valid, record.region, record.retries);
        let members = self.region_members.get(region).cloned().unwrap_or_default();
        let entry = members
            .get(self.rng.below(members.len() as u64) as usize)
            .copied()
            .unwrap_or(0);
        self.trace_event(30, CLIENT, entry, [0; 8]);
        self.send(CLIENT, entry, Msg::Claim { claim });
        if valid {
            if let Some(record) = self.claims.get_mut(index) {
                record.retries = retries.saturating_add(1);
            }
            let backoff = CLIENT_RETRY_FIRST_US
                .saturating_mul(1 << retries.min(4))
                .min(CLIENT_RETRY_MAX_US);
            self.queue
                .push(self.now.saturating_add(backoff), Event::Submit { claim: index });
        }
    }

    // ---------------------------------------------------------------- claims and owners

    fn on_claim(&mut self, to: usize, claim: Rc<Claim>) {
        let Some(node) = self.nodes.get(to) else {
            return;
        };
        if node.byzantine && self.rng.below(3) == 0 {
            self.count("byzantine: dropped a claim");
            return;
        }
        let route = node.ledger.route(&self.dist.id, &claim.claimant);
        let Some(Route::Live { bucket, .. }) = route else {
            self.count("claim: no live bucket");
            return;
        };
        let Some(owner) = self.bucket_index.get(&bucket).copied() else {
            return;
        };
        if owner != to {
            if node.suspected.contains_key(&owner) {
                self.hold(to, claim);
            } else {
                self.send(to, owner, Msg::Claim { claim });
            }
            return;
        }
        if node.catching_up {
            self.count("owner: catching up after restart");
            return;
        }
        let now_ms = self.local_ms(to);
        let Some(node) = self.nodes.get_mut(to) else {
            return;
        };
        let result = node
            .owner
            .submit_claim(&node.ledger, &self.creds, (*claim).clone(), now_ms);
        match result {
            Ok(outputs) => {
                self.count("owner: admitted");
                self.owner_outputs(to, outputs);
                self.arm_close(to);
            }
            Err(refusal) => {
                let name = format!("owner refused: {}", variant(&refusal));
                self.count(&name);
            }
        }
    }

    /// Keeps a claim whose owner this node suspects, instead of sending it into silence.
    fn hold(&mut self, node: usize, claim: Rc<Claim>) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.held.len() >= HELD_CLAIMS_MAX || n.held.iter().any(|held| held.id == claim.id) {
            return;
        }
        let record = self.claim_index.get(&claim.id).and_then(|i| self.claims.get_mut(*i));
        let first_time = record.is_some_and(|record| !std::mem::replace(&mut record.held, true));
        n.held.push(claim);
        if first_time {
            self.count("claim: held for a suspected owner");
        }
    }

    /// Routes the held claims again: to their owner if it is heard again, to its successor once
    /// a freeze moved their route, or back into the hold.
    fn release_held(&mut self, node: usize) {
        let held = self
            .nodes
            .get_mut(node)
            .map(|n| std::mem::take(&mut n.held))
            .unwrap_or_default();
        for claim in held {
            self.on_claim(node, claim);
        }
    }

    fn arm_close(&mut self, node: usize) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.close_armed || n.owner.open_len() == 0 || n.owner.in_flight().is_some() {
            return;
        }
        n.close_armed = true;
        self.schedule_timer(node, BATCH_DELAY_US, Timer::CloseBatch);
    }

    fn on_close_timer(&mut self, node: usize) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.close_armed = false;
        }
        self.close_batch(node);
    }

    fn close_batch(&mut self, node: usize) {
        let now_ms = self.local_ms(node);
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.catching_up {
            return;
        }
        match n.owner.close_batch(&n.ledger, now_ms) {
            Ok(outputs) => self.owner_outputs(node, outputs),
            Err(error) => {
                let name = format!("owner close: {}", variant(&error));
                self.count(&name);
            }
        }
    }

    fn owner_outputs(&mut self, node: usize, outputs: Vec<OwnerOutput>) {
        for output in outputs {
            match output {
                // Durable before it leaves: the order the real shell keeps.
                OwnerOutput::PersistBatch(batch) => {
                    if let Some(n) = self.nodes.get_mut(node) {
                        n.durable_batch = Some(batch);
                    }
                }
                OwnerOutput::SendBatch(batch) => self.send_batch(node, batch),
                OwnerOutput::Dropped { reason, .. } => {
                    let name = format!("owner dropped: {}", variant(&reason));
                    self.count(&name);
                }
            }
        }
    }

    fn send_batch(&mut self, node: usize, batch: Batch) {
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        let region = n.region;
        let byzantine = n.byzantine;
        let secret = self.secrets.get(node).copied().unwrap_or_default();
        let bucket = self.bucket_index.get(&batch.bucket.digest()).copied().unwrap_or(node);
        let prev = batch
            .seq
            .checked_sub(1)
            .and_then(|seq| self.certs.get(&(bucket, seq)).cloned());
        let batch_sig = sign(&secret, &batch.id);
        let batch = Rc::new(batch);
        self.start_collecting(node, CertifiedObject::Batch((*batch).clone()), batch_sig);
        for claim in batch.claims() {
            if let Some(record) = self.claim_index.get(&claim.id).and_then(|i| self.claims.get_mut(*i)) {
                record.provisional_us.get_or_insert(self.now);
            }
        }
        let claims = batch.claims().count();
        if byzantine && self.faults_active && claims > 0 && self.rng.below(2) == 0 {
            // Equivocate: a second batch at the same seq, split across the voters.
            let mut entries = batch.entries.clone();
            let mut total_after = batch.total_after;
            if entries.len() > 1
                && let Some(last) = entries.pop()
            {
                total_after = total_after.saturating_sub(last.amount());
            }
            let other = Rc::new(Batch::new(
                batch.signer,
                batch.bucket.clone(),
                batch.seq,
                batch.prev,
                batch.timestamp.saturating_add(1),
                entries,
                total_after,
            ));
            let other_sig = sign(&secret, &other.id);
            self.start_collecting(node, CertifiedObject::Batch((*other).clone()), other_sig);
            self.count("byzantine: equivocated");
            let members = self.region_members.get(region).cloned().unwrap_or_default();
            for (i, to) in members.into_iter().enumerate() {
                let (b, s) = if to == node || i % 2 == 0 {
                    (batch.clone(), batch_sig)
                } else {
                    (other.clone(), other_sig)
                };
                self.send(
                    node,
                    to,
                    Msg::VoteRequest {
                        batch: b,
                        batch_sig: s,
                        prev: prev.clone(),
                    },
                );
                if to == node {
                    self.send(
                        node,
                        to,
                        Msg::VoteRequest {
                            batch: other.clone(),
                            batch_sig: other_sig,
                            prev: prev.clone(),
                        },
                    );
                }
            }
        } else {
            self.broadcast_region(node, region, || Msg::VoteRequest {
                batch: batch.clone(),
                batch_sig,
                prev: prev.clone(),
            });
        }
        self.arm_resend(node);
        if self.nodes.get(node).is_some_and(|n| n.fail_after_batch) {
            self.fail_for_good(node);
        }
    }

    fn start_collecting(&mut self, node: usize, object: CertifiedObject, sig: Digest) {
        let (_, id) = proposal(&object);
        let bucket_digest = object.bucket().digest();
        let Some(bucket) = self.bucket_index.get(&bucket_digest).copied() else {
            return;
        };
        let Some(seq) = object.seq() else {
            return;
        };
        if let Some(n) = self.nodes.get_mut(node) {
            n.collecting.entry(id).or_insert_with(|| Collecting {
                object,
                sig,
                bucket,
                bucket_digest,
                seq,
                votes: BTreeMap::new(),
            });
        }
    }

    fn arm_resend(&mut self, node: usize) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.resend_armed {
            return;
        }
        n.resend_armed = true;
        n.resend_backoff_us = RESEND_FIRST_US;
        self.schedule_timer(node, RESEND_FIRST_US, Timer::Resend);
    }

    /// Re-sends the in-flight batch to voters that have not answered (lost messages, crashed or
    /// partitioned voters, refusals that may turn into votes).
    fn on_resend_timer(&mut self, node: usize) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let Some(batch) = n.owner.in_flight().cloned() else {
            n.resend_armed = false;
            return;
        };
        let backoff = n.resend_backoff_us;
        n.resend_backoff_us = backoff.saturating_mul(2).min(RESEND_MAX_US);
        let region = n.region;
        let secret = self.secrets.get(node).copied().unwrap_or_default();
        let batch_sig = sign(&secret, &batch.id);
        let batch = Rc::new(batch);
        self.start_collecting(node, CertifiedObject::Batch((*batch).clone()), batch_sig);
        let voted: Vec<Key> = self
            .nodes
            .get(node)
            .and_then(|n| n.collecting.get(&batch.id))
            .map(|c| c.votes.keys().copied().collect())
            .unwrap_or_default();
        let bucket = self.bucket_index.get(&batch.bucket.digest()).copied().unwrap_or(node);
        let prev = batch
            .seq
            .checked_sub(1)
            .and_then(|seq| self.certs.get(&(bucket, seq)).cloned());
        let members = self.region_members.get(region).cloned().unwrap_or_default();
        for to in members {
            let key = self.nodes.get(to).map(|n| n.key).unwrap_or_default();
            if !voted.contains(&key) {
                self.count("owner: re-sent a vote request");
                self.send(
                    node,
                    to,
                    Msg::VoteRequest {
                        batch: batch.clone(),
                        batch_sig,
                        prev: prev.clone(),
                    },
                );
            }
        }
        self.schedule_timer(node, backoff, Timer::Resend);
    }

    // ---------------------------------------------------------------- voting

    fn verify(&self, signer: &Key, message: &Digest, sig: &Digest) -> bool {
        if self.cfg.skip_signature_checks {
            return true;
        }
        self.key_index
            .get(signer)
            .and_then(|index| self.secrets.get(*index))
            .is_some_and(|secret| sign(secret, message) == *sig)
    }

    fn on_vote_request(
        &mut self,
        to: usize,
        from: usize,
        batch: Rc<Batch>,
        batch_sig: Digest,
        prev: Option<Rc<SimCert>>,
    ) {
        if !self.verify(&batch.signer, &batch.id, &batch_sig) {
            self.count("shell: forged batch refused");
            return;
        }
        if let Some(prev) = prev {
            self.accept_cert(to, from, &prev, false);
        }
        let bucket = self.bucket_index.get(&batch.bucket.digest()).copied().unwrap_or(0);
        self.note_seen(to, bucket, &batch, batch_sig);
        let now_ms = self.local_ms(to);
        let Some(node) = self.nodes.get_mut(to) else {
            return;
        };
        if node.byzantine {
            self.byzantine_vote(to, from, batch.id, &batch.bucket, batch.seq);
            return;
        }
        let result = node.voter.on_batch(&node.ledger, &self.creds, &batch, now_ms);
        match result {
            Ok(outputs) => self.voter_outputs(to, from, bucket, outputs),
            Err(refusal) => self.voter_refused(to, from, bucket, &refusal),
        }
    }

    /// Remembers the newest batch of a bucket of this node's region, which a freeze of that
    /// bucket must carry so that the batch is certified first.
    fn note_seen(&mut self, node: usize, bucket: usize, batch: &Rc<Batch>, sig: Digest) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.seen.get(&bucket).is_none_or(|(known, _)| known.seq < batch.seq) {
            n.seen.insert(bucket, (batch.clone(), sig));
        }
    }

    fn voter_refused(&mut self, to: usize, from: usize, bucket: usize, refusal: &VoteRefusal) {
        let name = match refusal {
            VoteRefusal::InvalidClaim { defect, .. } => {
                format!("voter refused: InvalidClaim {}", variant(defect))
            }
            other => format!("voter refused: {}", variant(other)),
        };
        self.count(&name);
        if let VoteRefusal::AlreadyCertified { seq } = refusal {
            // The proposer is behind on the chain (a restart, a lagging successor): hand it what
            // we have.
            let certs = self.certs_from(to, bucket, *seq);
            if !certs.is_empty() {
                self.send(to, from, Msg::SyncResponse(certs));
            }
        }
    }

    /// Carries out a voter's outputs in order: the lock is durable before its vote leaves.
    fn voter_outputs(&mut self, to: usize, from: usize, bucket: usize, outputs: Vec<VoterOutput>) {
        for output in outputs {
            match output {
                VoterOutput::Persist(lock) => {
                    if let Some(node) = self.nodes.get_mut(to) {
                        node.durable_locks.push(lock);
                    }
                    if self.faults_active && self.cfg.profile.crashes() && self.rng.below(50) == 0 {
                        // Killed after the fsync, before the vote left: the lock must hold.
                        self.count("crash: between persisting a lock and sending the vote");
                        self.crash(to);
                        let back = self.now.saturating_add(self.rng.between(300_000, 3_000_000));
                        if back < self.cfg.duration_us {
                            self.queue.push(back, Event::Fault(FaultEvent::Restart(to)));
                        }
                        return;
                    }
                }
                VoterOutput::SendVote(vote) => {
                    let durable = self.nodes.get(to).is_some_and(|n| {
                        n.durable_locks
                            .iter()
                            .any(|l| l.bucket == vote.bucket && l.seq == vote.seq && l.object_id == vote.object_id)
                    });
                    if !durable {
                        self.fail(Violation::NodeState {
                            node: to,
                            detail: "a vote left before its lock was durable".into(),
                        });
                        return;
                    }
                    if let Some(previous) = self.honest_votes.insert((to, bucket, vote.seq), vote.object_id)
                        && previous != vote.object_id
                    {
                        self.fail(Violation::DoubleVote {
                            node: to,
                            bucket,
                            seq: vote.seq,
                        });
                        return;
                    }
                    let secret = self.secrets.get(to).copied().unwrap_or_default();
                    let sig = sign(&secret, &vote_digest(&vote));
                    self.send(to, from, Msg::Vote { vote, sig });
                }
                VoterOutput::NeedData(missing) => {
                    let name = format!("voter needs: {}", variant(&missing));
                    self.count(&name);
                    if matches!(missing, Missing::Certificate { .. } | Missing::FreezeOf { .. }) {
                        self.request_sync(to, from);
                    }
                }
            }
        }
    }

    /// A successor asks this node to vote on a freeze of a bucket of its region.
    fn on_freeze_request(
        &mut self,
        to: usize,
        from: usize,
        freeze: &Freeze,
        sig: Digest,
        pending_sig: Option<Digest>,
        prev: Option<Rc<SimCert>>,
    ) {
        if !self.verify(&freeze.signer, &freeze.id, &sig) {
            self.count("shell: forged freeze refused");
            return;
        }
        let bucket = self.bucket_index.get(&freeze.bucket.digest()).copied().unwrap_or(0);
        if let Some(pending) = &freeze.pending {
            let signed = pending_sig.is_some_and(|s| self.verify(&pending.signer, &pending.id, &s));
            if !signed {
                self.count("shell: freeze with a forged pending batch refused");
                return;
            }
            if let Some(s) = pending_sig {
                self.note_seen(to, bucket, &Rc::new((**pending).clone()), s);
            }
        }
        if let Some(prev) = prev {
            self.accept_cert(to, from, &prev, false);
        }
        let now_ms = self.local_ms(to);
        let Some(node) = self.nodes.get_mut(to) else {
            return;
        };
        if node.byzantine {
            if let Some(pending) = &freeze.pending {
                self.byzantine_vote(to, from, pending.id, &pending.bucket, pending.seq);
            }
            if let Some(position) = freeze.position() {
                self.byzantine_vote(to, from, freeze.id, &freeze.bucket, position);
            }
            return;
        }
        let result = node.voter.on_freeze(&node.ledger, &self.creds, freeze, now_ms);
        match result {
            Ok(outputs) => self.voter_outputs(to, from, bucket, outputs),
            Err(refusal) => self.voter_refused(to, from, bucket, &refusal),
        }
    }

    /// A Byzantine voter: signs anything without locks, forges votes in other validators' names
    /// and replays genuine votes it has collected.
    fn byzantine_vote(&mut self, me: usize, owner: usize, object_id: Digest, bucket: &BucketId, seq: u64) {
        let Some(node) = self.nodes.get(me) else {
            return;
        };
        let (key, region) = (node.key, node.region);
        let vote = Vote {
            signer: key,
            object_id,
            bucket: bucket.digest(),
            seq,
            region: bucket.region.clone(),
        };
        let secret = self.secrets.get(me).copied().unwrap_or_default();
        let sig = sign(&secret, &vote_digest(&vote));
        self.send(
            me,
            owner,
            Msg::Vote {
                vote: vote.clone(),
                sig,
            },
        );
        if !self.faults_active || owner == me {
            return;
        }
        // A forged vote in the name of another member of the region.
        let members = self.region_members.get(region).cloned().unwrap_or_default();
        if let Some(victim) = members.get(self.rng.below(members.len() as u64) as usize).copied()
            && victim != me
        {
            let mut forged = vote.clone();
            forged.signer = self.nodes.get(victim).map(|n| n.key).unwrap_or_default();
            let fake = digest_parts("sim/forged", &[&self.rng.next_u64().to_le_bytes()]);
            self.count("byzantine: forged a vote");
            self.send(
                me,
                owner,
                Msg::Vote {
                    vote: forged,
                    sig: fake,
                },
            );
        }
        // A replayed genuine vote from the bank.
        let bank_len = self.nodes.get(me).map_or(0, |n| n.replay_bank.len());
        if bank_len > 0 {
            let pick = self.rng.below(bank_len as u64) as usize;
            if let Some((old, old_sig)) = self.nodes.get(me).and_then(|n| n.replay_bank.get(pick)).cloned() {
                self.count("byzantine: replayed a vote");
                self.send(
                    me,
                    owner,
                    Msg::Vote {
                        vote: old,
                        sig: old_sig,
                    },
                );
            }
        }
    }

    fn on_vote(&mut self, to: usize, vote: Vote, sig: Digest) {
        if !self.verify(&vote.signer, &vote_digest(&vote), &sig) {
            self.count("shell: forged vote refused");
            return;
        }
        let Some(node) = self.nodes.get_mut(to) else {
            return;
        };
        if node.byzantine && node.replay_bank.len() < 64 {
            node.replay_bank.push((vote.clone(), sig));
        }
        let Some(collecting) = node.collecting.get_mut(&vote.object_id) else {
            self.count("owner: vote for nothing collected (late or replayed)");
            return;
        };
        let region = &collecting.object.bucket().region;
        let member = self.validators.get(&vote.signer).is_some_and(|v| v.region == *region);
        if vote.bucket != collecting.bucket_digest || vote.seq != collecting.seq || vote.region != *region || !member {
            self.count("owner: vote for another position refused");
            return;
        }
        collecting.votes.insert(vote.signer, (vote, sig));
        let weight: u64 = collecting
            .votes
            .keys()
            .filter_map(|key| self.validators.get(key))
            .map(|v| v.weight)
            .sum();
        if !self.validators.is_quorum(&collecting.object.bucket().region, weight) {
            return;
        }
        let (_, id) = proposal(&collecting.object);
        let Some(collecting) = node.collecting.remove(&id) else {
            return;
        };
        let (votes, vote_sigs): (Vec<Vote>, Vec<Digest>) = collecting.votes.into_values().unzip();
        let bytes = object_bytes(&collecting.object) + CERT_VOTE_BYTES * votes.len() as u64;
        let cert = Rc::new(SimCert {
            cert: Certificate {
                object: collecting.object,
                votes,
            },
            object_sig: collecting.sig,
            vote_sigs,
            bucket: collecting.bucket,
            seq: collecting.seq,
            bytes,
            verified: Cell::new(None),
        });
        self.register_cert(&cert, to);
        if self.violation.is_some() {
            return;
        }
        self.accept_cert(to, to, &cert, false);
        for other in 0..self.cfg.nodes {
            if other != to {
                self.send(to, other, Msg::Cert(cert.clone()));
            }
        }
    }

    /// A certificate formed somewhere: the checks that need every certificate ever made, and the
    /// oracle ledger that holds them all.
    fn register_cert(&mut self, cert: &Rc<SimCert>, collector: usize) {
        if let Err(error) = cert.cert.check(&self.validators) {
            self.fail(Violation::NodeState {
                node: cert.bucket,
                detail: format!("formed a certificate the core refuses: {error}"),
            });
            return;
        }
        let slots: Vec<Digest> = match &cert.cert.object {
            CertifiedObject::Batch(batch) => batch.claims().map(Claim::slot).collect(),
            CertifiedObject::Freeze(_) => Vec::new(),
        };
        match self
            .registry
            .register(cert.bucket, cert.seq, cert.cert.object.id(), slots)
        {
            Err(violation) => self.fail(violation),
            Ok(false) => {}
            Ok(true) => {
                let (proposer, _) = proposal(&cert.cert.object);
                let freeze = matches!(cert.cert.object, CertifiedObject::Freeze(_));
                if freeze {
                    self.count("takeover: freeze certified");
                }
                self.certs.insert((cert.bucket, cert.seq), cert.clone());
                self.cert_meta.insert(
                    (cert.bucket, cert.seq),
                    CertMeta {
                        formed_us: self.now,
                        applied_per_region: vec![0; self.cfg.regions],
                        global_us: None,
                        freeze,
                        proposer: self.key_index.get(&proposer).copied().unwrap_or(usize::MAX),
                        collector,
                    },
                );
                if let Some(frontier) = self.global_frontier.get_mut(cert.bucket) {
                    *frontier = (*frontier).max(cert.seq.saturating_add(1));
                }
                match self.oracle.apply(cert.cert.clone()) {
                    Ok(ApplyOutcome::Applied { .. }) => self.oracle_dirty = true,
                    other => self.fail(Violation::NodeState {
                        node: cert.bucket,
                        detail: format!("the oracle cannot apply a formed certificate: {other:?}"),
                    }),
                }
            }
        }
    }

    fn verify_cert(&self, cert: &SimCert) -> bool {
        if let Some(known) = cert.verified.get() {
            return known;
        }
        let (signer, id) = proposal(&cert.cert.object);
        let ok = cert.vote_sigs.len() == cert.cert.votes.len()
            && self.verify(&signer, &id, &cert.object_sig)
            && cert
                .cert
                .votes
                .iter()
                .zip(&cert.vote_sigs)
                .all(|(vote, sig)| self.verify(&vote.signer, &vote_digest(vote), sig));
        cert.verified.set(Some(ok));
        ok
    }

    /// A node learns a certificate (broadcast, sync, piggybacked on a vote request).
    fn accept_cert(&mut self, to: usize, from: usize, cert: &Rc<SimCert>, pull_if_waiting: bool) {
        if !self.verify_cert(cert) {
            self.count("shell: forged certificate refused");
            return;
        }
        let Some(node) = self.nodes.get_mut(to) else {
            return;
        };
        if node.frontier.get(cert.bucket).is_some_and(|next| *next > cert.seq) {
            return;
        }
        let outcome = node.ledger.apply(cert.cert.clone());
        if matches!(outcome, Ok(ApplyOutcome::Applied { .. } | ApplyOutcome::Waiting(_))) && self.cfg.durable_ledger {
            node.stored_certs.push(cert.clone());
        }
        match outcome {
            Ok(ApplyOutcome::Applied { released }) => {
                if released == 0 {
                    self.refresh_frontier(to, cert.bucket);
                } else {
                    for bucket in 0..self.cfg.nodes {
                        self.refresh_frontier(to, bucket);
                    }
                }
                self.check_node_bucket(to, cert.bucket);
                self.after_ledger_change(to);
            }
            Ok(ApplyOutcome::Duplicate) => {}
            Ok(ApplyOutcome::Waiting(_)) => {
                if pull_if_waiting && from < self.cfg.nodes && from != to {
                    self.request_sync(to, from);
                }
            }
            Err(LedgerError::WaitingFull { .. }) => self.count("ledger: waiting buffer full"),
            Err(error) => self.fail(Violation::NodeState {
                node: to,
                detail: format!("cannot apply a certificate: {error}"),
            }),
        }
    }

    fn refresh_frontier(&mut self, node: usize, bucket: usize) {
        let Some(digest) = self.buckets.get(bucket).map(BucketId::digest) else {
            return;
        };
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let next = n.ledger.next_seq(&digest).unwrap_or(0);
        if let Some(slot) = n.frontier.get_mut(bucket) {
            *slot = next;
        }
        let counted = n.counted.get(bucket).copied().unwrap_or(0);
        if next <= counted {
            return;
        }
        if let Some(slot) = n.counted.get_mut(bucket) {
            *slot = next;
        }
        let region = n.region;
        for seq in counted..next {
            let Some(meta) = self.cert_meta.get_mut(&(bucket, seq)) else {
                continue;
            };
            if let Some(count) = meta.applied_per_region.get_mut(region) {
                *count = count.saturating_add(1);
            }
            if meta.global_us.is_none() {
                let everywhere = meta
                    .applied_per_region
                    .iter()
                    .zip(&self.region_members)
                    .all(|(count, members)| u64::from(*count) * 3 > 2 * members.len() as u64);
                if everywhere {
                    meta.global_us = Some(self.now);
                }
            }
        }
    }

    /// The owner catches up with its ledger; a certified in-flight batch frees it to close the
    /// next one at once.
    fn after_ledger_change(&mut self, node: usize) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let orphans = n.owner.sync(&n.ledger);
        let ledger = &n.ledger;
        n.collecting
            .retain(|_, c| ledger.next_seq(&c.bucket_digest).is_some_and(|next| c.seq >= next));
        let has_held = !n.held.is_empty();
        if !orphans.is_empty() {
            // Frozen under them: route them again, to the successor.
            self.count("owner: orphaned claims");
            for claim in orphans {
                self.on_claim(node, Rc::new(claim));
            }
        }
        if has_held {
            self.release_held(node);
        }
        self.advance_takeover(node);
        let ready = self
            .nodes
            .get(node)
            .is_some_and(|n| n.owner.in_flight().is_none() && n.owner.open_len() > 0 && !n.catching_up);
        if ready {
            self.close_batch(node);
        }
    }

    fn check_node_bucket(&mut self, node: usize, bucket: usize) {
        let Some(digest) = self.buckets.get(bucket).map(BucketId::digest) else {
            return;
        };
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        let next = n.ledger.next_seq(&digest).unwrap_or(0);
        let last = next.checked_sub(1);
        if let Some(seq) = last {
            let mine = n.ledger.certified_id(&digest, seq);
            if mine.as_ref() != self.registry.object_at(bucket, seq) {
                self.fail(Violation::NodeState {
                    node,
                    detail: format!("certified at (bucket {bucket}, seq {seq}) something no quorum formed"),
                });
                return;
            }
        }
        if self.cfg.nodes > FULL_NODE_CHECKS_MAX {
            // `Ledger::escrow` re-derives the whole region's flows (O(buckets in region)); at this
            // size the oracle's full check after every new certificate stands in for it.
            return;
        }
        let total = n.ledger.chain_total(&digest).unwrap_or(0);
        match n.ledger.escrow(&digest) {
            Ok(escrow) if total <= escrow => {}
            other => {
                self.fail(Violation::NodeState {
                    node,
                    detail: format!("bucket {bucket} total {total} over escrow {other:?}"),
                });
                return;
            }
        }
        {
            let report = n.ledger.liquidity_report(&self.dist.id, &self.creds);
            let checked = report
                .map_err(|error| Violation::NodeState {
                    node,
                    detail: format!("liquidity: {error}"),
                })
                .and_then(|report| check_liquidity(self.dist.total, &report));
            if let Err(violation) = checked {
                self.fail(violation);
            }
        }
    }

    // ---------------------------------------------------------------- sync

    fn request_sync(&mut self, from: usize, to: usize) {
        let Some(n) = self.nodes.get(from) else {
            return;
        };
        let frontier = Rc::new(n.frontier.clone());
        let catching_up = n.catching_up;
        self.send(from, to, Msg::SyncRequest { frontier, catching_up });
    }

    fn on_sync_timer(&mut self, node: usize) {
        if self.cfg.nodes > 1 {
            let mut peer = self.rng.below(self.cfg.nodes as u64 - 1) as usize;
            if peer >= node {
                peer += 1;
            }
            self.request_sync(node, peer);
        }
        if self.nodes.get(node).is_some_and(|n| n.byzantine) && self.faults_active {
            self.byzantine_forge_certificate(node);
        }
        let jitter = self.rng.below(SYNC_INTERVAL_US / 5);
        self.schedule_timer(node, SYNC_INTERVAL_US - SYNC_INTERVAL_US / 10 + jitter, Timer::Sync);
    }

    /// Certificates this node holds for `bucket` from `seq` on (bounded).
    fn certs_from(&self, node: usize, bucket: usize, seq: u64) -> Vec<Rc<SimCert>> {
        let mine = self
            .nodes
            .get(node)
            .and_then(|n| n.frontier.get(bucket))
            .copied()
            .unwrap_or(0);
        (seq..mine)
            .take(SYNC_PAGE_MAX)
            .filter_map(|s| self.certs.get(&(bucket, s)).cloned())
            .collect()
    }

    fn on_sync_request(&mut self, to: usize, from: usize, frontier: &[u64], catching_up: bool) {
        let Some(node) = self.nodes.get(to) else {
            return;
        };
        if node.byzantine && self.faults_active {
            self.count("byzantine: withheld a sync answer");
            return;
        }
        let mut page = Vec::new();
        for (bucket, (mine, theirs)) in node.frontier.iter().zip(frontier).enumerate() {
            for seq in *theirs..*mine {
                if page.len() >= SYNC_PAGE_MAX {
                    break;
                }
                if let Some(cert) = self.certs.get(&(bucket, seq)) {
                    page.push(cert.clone());
                }
            }
        }
        if !page.is_empty() || catching_up {
            self.send(to, from, Msg::SyncResponse(page));
        }
    }

    /// A Byzantine validator fabricates a certificate at another bucket's next position, moving
    /// that bucket's escrow to its own, with votes forged in the region's names.
    fn byzantine_forge_certificate(&mut self, me: usize) {
        if self.rng.below(3) != 0 {
            return;
        }
        let victim = self.rng.below(self.cfg.nodes as u64) as usize;
        let (Some(node), Some(target)) = (self.nodes.get(me), self.buckets.get(victim).cloned()) else {
            return;
        };
        if victim == me {
            return;
        }
        let digest = target.digest();
        let seq = node.ledger.next_seq(&digest).unwrap_or(0);
        let prev = node.ledger.last_batch_id(&digest).unwrap_or_default();
        let total = node.ledger.chain_total(&digest).unwrap_or(0);
        let Some(own) = self.buckets.get(me).cloned() else {
            return;
        };
        let amount = AMOUNT * 5;
        let batch = Batch::new(
            target.owner,
            target.clone(),
            seq,
            prev,
            self.local_ms(me),
            vec![Entry::TransferOut { to: own, amount }],
            total.saturating_add(amount),
        );
        let region = self.nodes.get(victim).map_or(0, |n| n.region);
        let members = self.region_members.get(region).cloned().unwrap_or_default();
        let mut votes = Vec::new();
        let mut vote_sigs = Vec::new();
        for member in members {
            let key = self.nodes.get(member).map(|n| n.key).unwrap_or_default();
            votes.push(Vote {
                signer: key,
                object_id: batch.id,
                bucket: digest,
                seq,
                region: target.region.clone(),
            });
            vote_sigs.push(digest_parts("sim/forged", &[&self.rng.next_u64().to_le_bytes()]));
        }
        let bytes = batch_bytes(&batch) + CERT_VOTE_BYTES * votes.len() as u64;
        let cert = Rc::new(SimCert {
            cert: Certificate {
                object: CertifiedObject::Batch(batch),
                votes,
            },
            object_sig: digest_parts("sim/forged", &[&self.rng.next_u64().to_le_bytes()]),
            vote_sigs,
            bucket: victim,
            seq,
            bytes,
            verified: Cell::new(None),
        });
        self.count("byzantine: forged a certificate");
        for to in 0..self.cfg.nodes {
            if to != me {
                self.send(me, to, Msg::Cert(cert.clone()));
            }
        }
    }

    // ---------------------------------------------------------------- suspicion and takeover

    fn on_heartbeat_timer(&mut self, node: usize) {
        let region = self.nodes.get(node).map_or(0, |n| n.region);
        let members = self.region_members.get(region).cloned().unwrap_or_default();
        for to in members {
            if to != node {
                self.send(node, to, Msg::Heartbeat);
            }
        }
        self.judge_peers(node);
        self.schedule_timer(node, HEARTBEAT_INTERVAL_MS * 1_000, Timer::Heartbeat);
    }

    fn on_heartbeat(&mut self, to: usize, from: usize) {
        let now_ms = self.local_ms(to);
        let Some(n) = self.nodes.get_mut(to) else {
            return;
        };
        n.arrivals.entry(from).or_default().heartbeat(now_ms);
        if n.suspected.remove(&from).is_some() {
            self.count("suspicion: a suspected peer was heard again");
            self.release_held(to);
        }
    }

    /// Phi-accrual over each region peer's heartbeat arrivals (a peer never heard from is
    /// suspected), then takeover of any owner suspected for long enough.
    fn judge_peers(&mut self, node: usize) {
        let now_ms = self.local_ms(node);
        let region = self.nodes.get(node).map_or(0, |n| n.region);
        let members = self.region_members.get(region).cloned().unwrap_or_default();
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let mut fresh = 0;
        let mut cleared = false;
        for peer in members {
            if peer == node {
                continue;
            }
            let phi = n
                .arrivals
                .get(&peer)
                .map_or(quorum::PHI_NEVER_HEARD, |a| a.phi(now_ms, HEARTBEAT_INTERVAL_MS));
            if phi > PHI_THRESHOLD {
                if let std::collections::btree_map::Entry::Vacant(slot) = n.suspected.entry(peer) {
                    slot.insert(now_ms);
                    fresh += 1;
                }
            } else if n.suspected.remove(&peer).is_some() {
                cleared = true;
            }
        }
        for _ in 0..fresh {
            self.count("suspicion: suspected a region peer");
        }
        if cleared {
            self.release_held(node);
        }
        let reachable = self.region_quorum_reachable(node);
        if let Some(n) = self.nodes.get_mut(node) {
            n.quorum_since = if reachable {
                Some(n.quorum_since.unwrap_or(now_ms))
            } else {
                None
            };
        }
        self.consider_takeover(node, now_ms);
    }

    /// Whether validators above the threshold of this node's region are unsuspected here
    /// (`core::quorum`; RTT is not modelled, only reachability decides). Without them nothing
    /// can be certified, so the node is `isolated`: provisional only.
    fn region_quorum_reachable(&self, node: usize) -> bool {
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let members: Vec<Member> = self
            .region_members
            .get(n.region)
            .map(|members| {
                members
                    .iter()
                    .map(|m| Member {
                        weight: self
                            .nodes
                            .get(*m)
                            .and_then(|peer| self.validators.get(&peer.key))
                            .map_or(0, |v| v.weight),
                        reachable: *m == node || !n.suspected.contains_key(m),
                        rtt_ms: 0.0,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (num, den) = match self.validators.fault_model() {
            FaultModel::Byzantine => (2, 3),
            FaultModel::Crash => (1, 2),
        };
        let own = region_name(n.region);
        let view = quorum::scope_view(&members, num, den);
        quorum::mode(&own, &[(own.clone(), view)].into_iter().collect()) != quorum::Mode::Isolated
    }

    /// As the successor of an owner suspected for [`TAKEOVER_AFTER_MS`] while this node's region
    /// quorum was reachable throughout, proposes a freeze of its bucket. A freeze proposed while
    /// isolated (or right after, before the owner is heard again) would lock the position
    /// against the owner's own batch on the other side, and once healed the two sides' locks
    /// could leave neither a quorum: the bucket would stall for good.
    fn consider_takeover(&mut self, node: usize, now_ms: Millis) {
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        if !self.cfg.takeover || n.takeover.is_some() || n.catching_up {
            return;
        }
        let long_enough = |since: Millis| now_ms.saturating_sub(since) >= TAKEOVER_AFTER_MS;
        let due: Vec<usize> = n
            .suspected
            .iter()
            .filter(|(_, since)| long_enough(**since))
            .map(|(peer, _)| *peer)
            .filter(|peer| self.successors.get(*peer).copied().flatten() == Some(node))
            .filter(|peer| {
                self.buckets
                    .get(*peer)
                    .is_some_and(|bucket| !n.ledger.is_ended(&bucket.digest()))
            })
            .collect();
        let Some(bucket) = due.first().copied() else {
            return;
        };
        if !n.quorum_since.is_some_and(long_enough) {
            self.count("takeover: withheld, the region's quorum was not reachable throughout");
            return;
        }
        self.propose_freeze(node, bucket);
    }

    fn propose_freeze(&mut self, node: usize, bucket: usize) {
        let (Some(n), Some(bucket_id)) = (self.nodes.get(node), self.buckets.get(bucket).cloned()) else {
            return;
        };
        let next = n.ledger.next_seq(&bucket_id.digest()).unwrap_or(0);
        let pending = n.seen.get(&bucket).filter(|(batch, _)| batch.seq == next).cloned();
        let last_seq = match &pending {
            Some((batch, _)) => Some(batch.seq),
            None => next.checked_sub(1),
        };
        let freeze = Rc::new(Freeze::new(
            n.key,
            bucket_id,
            last_seq,
            pending.as_ref().map(|(batch, _)| (**batch).clone()),
        ));
        let secret = self.secrets.get(node).copied().unwrap_or_default();
        let sig = sign(&secret, &freeze.id);
        let pending_sig = pending.as_ref().map(|(_, s)| *s);
        if let Some((batch, batch_sig)) = pending {
            self.start_collecting(node, CertifiedObject::Batch((*batch).clone()), batch_sig);
        }
        self.start_collecting(node, CertifiedObject::Freeze((*freeze).clone()), sig);
        if let Some(n) = self.nodes.get_mut(node) {
            n.takeover = Some(Takeover {
                bucket,
                freeze,
                sig,
                pending_sig,
                sent_at_next: next,
                backoff_us: RESEND_FIRST_US,
            });
        }
        self.count("takeover: proposed a freeze");
        if let Some(id) = self
            .nodes
            .get(node)
            .and_then(|n| n.takeover.as_ref())
            .map(|t| t.freeze.id)
        {
            self.freezes_proposed.insert(id);
        }
        self.send_freeze(node);
        if let Some(n) = self.nodes.get_mut(node)
            && !n.takeover_armed
        {
            n.takeover_armed = true;
            self.schedule_timer(node, RESEND_FIRST_US, Timer::Takeover);
        }
    }

    /// Sends the freeze to every voter of the region that has not voted for it, with the
    /// certificate before its position when this node holds it.
    fn send_freeze(&mut self, node: usize) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let Some(takeover) = &mut n.takeover else {
            return;
        };
        let bucket = takeover.bucket;
        let next = n.frontier.get(bucket).copied().unwrap_or(0);
        takeover.sent_at_next = next;
        let (freeze, sig, pending_sig) = (takeover.freeze.clone(), takeover.sig, takeover.pending_sig);
        let voted: Vec<Key> = n
            .collecting
            .get(&freeze.id)
            .map(|c| c.votes.keys().copied().collect())
            .unwrap_or_default();
        // The newest certificate of the chain held here: the one before the pending batch, or
        // before the freeze once the pending batch is certified.
        let prev = next
            .checked_sub(1)
            .and_then(|seq| self.certs.get(&(bucket, seq)).cloned());
        let members = self.region_members.get(n.region).cloned().unwrap_or_default();
        for to in members {
            let key = self.nodes.get(to).map(|m| m.key).unwrap_or_default();
            if !voted.contains(&key) {
                self.send(
                    node,
                    to,
                    Msg::FreezeRequest {
                        freeze: freeze.clone(),
                        sig,
                        pending_sig,
                        prev: prev.clone(),
                    },
                );
            }
        }
    }

    fn on_takeover_timer(&mut self, node: usize) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.takeover_armed = false;
        }
        self.advance_takeover(node);
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        n.takeover_armed = n.takeover.is_some();
        let Some(takeover) = n.takeover.as_mut() else {
            return;
        };
        let backoff = takeover.backoff_us;
        takeover.backoff_us = backoff.saturating_mul(2).min(RESEND_MAX_US);
        self.count("takeover: re-sent a freeze");
        self.send_freeze(node);
        self.schedule_timer(node, backoff, Timer::Takeover);
    }

    /// Ends this node's takeover once the bucket is frozen here or its chain moved past the
    /// freeze (the owner was not gone after all); asks again at once when the pending batch
    /// the freeze carries has just been certified.
    fn advance_takeover(&mut self, node: usize) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let Some(takeover) = &n.takeover else {
            return;
        };
        let next = n.frontier.get(takeover.bucket).copied().unwrap_or(0);
        let digest = takeover.freeze.bucket.digest();
        let position = takeover.freeze.position().unwrap_or(u64::MAX);
        if n.ledger.is_ended(&digest) {
            n.takeover = None;
            self.count("takeover: bucket frozen");
        } else if position < next {
            n.takeover = None;
            self.count("takeover: abandoned, the chain moved past the freeze");
        } else if next != takeover.sent_at_next {
            self.send_freeze(node);
        }
    }

    // ---------------------------------------------------------------- faults

    fn apply_fault(&mut self, fault: FaultEvent) {
        self.trace_event(40, 0, 0, [0; 8]);
        let digests = self.digests();
        self.snapshots.push(Snapshot {
            at_us: self.now,
            fault: fault.name(),
            digests,
        });
        match fault {
            FaultEvent::Partition(partition) => {
                let name = format!("fault: partition {}", partition.name());
                self.count(&name);
                self.partition = Some(partition);
            }
            FaultEvent::HealPartition => self.partition = None,
            FaultEvent::Crash(node) => self.crash(node),
            FaultEvent::Restart(node) => self.restart(node),
            FaultEvent::Fail(node) => self.fail_for_good(node),
            FaultEvent::FailAfterNextBatch(node) => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.fail_after_batch = true;
                }
            }
            FaultEvent::ClockJump { node, jump_ms } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.jump_ms = jump_ms;
                }
                if jump_ms != 0 {
                    self.count("fault: clock jump");
                }
            }
        }
    }

    fn crash(&mut self, node: usize) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if !n.up {
            return;
        }
        n.up = false;
        n.epoch = n.epoch.wrapping_add(1);
        self.count("fault: crash");
    }

    /// A lost machine: down for the rest of the run.
    fn fail_for_good(&mut self, node: usize) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        n.failed = true;
        n.fail_after_batch = false;
        let in_flight = n.owner.in_flight().map(|batch| (batch.seq, batch.claims().count()));
        self.failures.push(FailureRecord {
            node,
            at_us: self.now,
            in_flight,
        });
        self.count("fault: failed for good");
        self.crash(node);
    }

    /// Every node's state digest (what its heartbeats carry); `None` for a node that is down.
    fn digests(&self) -> Vec<Option<Digest>> {
        self.nodes
            .iter()
            .map(|n| n.up.then(|| n.ledger.state_digest()))
            .collect()
    }

    /// Restart from durable records only: locks and the owner's last batch. The ledger starts
    /// empty and catches up by sync.
    fn restart(&mut self, node: usize) {
        let validators = self.validators.clone();
        let dist = self.dist.clone();
        let nodes = self.cfg.nodes;
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.up || n.failed {
            return;
        }
        let mut ledger = Ledger::new(validators, LEDGER_WAITING_MAX);
        if ledger.add_distribution(dist).is_err() {
            return;
        }
        // What sled kept; the ledger re-derives everything else from it.
        for cert in &n.stored_certs {
            let _ = ledger.apply(cert.cert.clone());
        }
        n.ledger = ledger;
        let region = n.owner.bucket().region.clone();
        n.voter = Voter::restore(n.key, region, voter_config(), n.durable_locks.iter().copied());
        let bucket = n.owner.bucket().clone();
        n.owner = Owner::restore(n.key, bucket, owner_config(), n.durable_batch.clone());
        n.collecting.clear();
        n.frontier = vec![0; nodes];
        n.catching_up = true;
        n.clock_floor_ms = 0;
        n.close_armed = false;
        n.resend_armed = false;
        n.takeover_armed = false;
        n.arrivals.clear();
        n.suspected.clear();
        n.held.clear();
        n.seen.clear();
        n.takeover = None;
        n.quorum_since = None;
        n.up = true;
        let in_flight = n.owner.in_flight().is_some();
        self.count("fault: restart");
        for bucket in 0..nodes {
            self.refresh_frontier(node, bucket);
        }
        self.after_ledger_change(node);
        self.schedule_timer(node, 0, Timer::Sync);
        if self.cfg.heartbeats {
            self.schedule_timer(node, 0, Timer::Heartbeat);
        }
        if in_flight {
            self.arm_resend(node);
        }
    }

    fn end_faults(&mut self) {
        self.trace_event(41, 0, 0, [0; 8]);
        self.faults_active = false;
        self.partition = None;
        self.link = LinkModel::CALM;
        for node in 0..self.cfg.nodes {
            if let Some(n) = self.nodes.get_mut(node) {
                n.jump_ms = 0;
            }
            self.restart(node);
        }
        self.queue.push(self.now, Event::Check);
    }

    // ---------------------------------------------------------------- invariants and liveness

    fn check_after_step(&mut self) {
        if !self.oracle_dirty {
            return;
        }
        self.oracle_dirty = false;
        let checked = self
            .oracle
            .liquidity_report(&self.dist.id, &self.creds)
            .map_err(|error| Violation::NodeState {
                node: usize::MAX,
                detail: format!("oracle liquidity: {error}"),
            })
            .and_then(|report| check_liquidity(self.dist.total, &report));
        if let Err(violation) = checked {
            self.fail(violation);
        }
    }

    /// Claims a Byzantine owner can stall: their route ends at its bucket.
    fn exempt(&self, claim: &Claim) -> bool {
        let Some(byzantine) = self.byzantine else {
            return false;
        };
        match self.oracle.route(&self.dist.id, &claim.claimant) {
            Some(Route::Live { bucket, .. }) => self.bucket_index.get(&bucket) == Some(&byzantine),
            _ => true,
        }
    }

    fn pending_claims(&self) -> usize {
        self.claims
            .iter()
            .filter(|c| c.valid && !self.registry.is_funded(&c.slot) && !self.exempt(&c.claim))
            .count()
    }

    fn lagging_nodes(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| !n.failed && (!n.up || n.frontier != self.global_frontier))
            .count()
    }

    fn check_converged(&mut self) {
        if self.pending_claims() == 0 && self.lagging_nodes() == 0 {
            self.converged_us = Some(self.now);
            return;
        }
        self.queue
            .push(self.now.saturating_add(CHECK_INTERVAL_US), Event::Check);
    }

    fn stuck_reason(&self) -> String {
        let mut detail = Vec::new();
        for (bucket, global) in self.global_frontier.iter().enumerate() {
            let lowest = self
                .nodes
                .iter()
                .filter(|n| !n.failed)
                .filter_map(|n| n.frontier.get(bucket))
                .min()
                .copied()
                .unwrap_or(0);
            if lowest < *global && detail.len() < 3 {
                let owner = self.nodes.get(bucket);
                detail.push(format!(
                    "bucket {bucket}: certified up to seq {global}, lowest node at {lowest}, owner in flight {:?}",
                    owner.and_then(|n| n.owner.in_flight().map(|b| b.seq))
                ));
            }
        }
        let stuck: Vec<usize> = self
            .claims
            .iter()
            .filter(|c| c.valid && !self.registry.is_funded(&c.slot) && !self.exempt(&c.claim))
            .filter_map(|c| match self.oracle.route(&self.dist.id, &c.claim.claimant) {
                Some(Route::Live { bucket, .. }) => self.bucket_index.get(&bucket).copied(),
                _ => None,
            })
            .collect();
        let stuck_owners: Vec<String> = stuck.iter().take(5).map(usize::to_string).collect();
        let mut split: Vec<usize> = stuck.clone();
        split.sort_unstable();
        split.dedup();
        detail.extend(split.into_iter().filter_map(|bucket| self.lock_split(bucket)));
        format!(
            "not converged {:.1} s after faults stopped: {} valid claims not certified (home buckets {}), {} nodes \
             behind the certified state [{}]",
            self.cfg.tail_us as f64 / 1e6,
            self.pending_claims(),
            stuck_owners.join(","),
            self.lagging_nodes(),
            detail.join("; ")
        )
    }

    /// Whether the honest validators' locks at a bucket's next position are split so that no
    /// object can reach a quorum any more: a freeze raced the owner's batch, and the bucket is
    /// stalled for good.
    fn lock_split(&self, bucket: usize) -> Option<String> {
        let digest = self.buckets.get(bucket)?.digest();
        let seq = self.global_frontier.get(bucket).copied()?;
        let region = self.nodes.get(bucket)?.region;
        let members = self.region_members.get(region)?;
        let mut locks: BTreeMap<Digest, u64> = BTreeMap::new();
        let mut free = 0u64;
        for member in members {
            let node = self.nodes.get(*member)?;
            let lock = node
                .durable_locks
                .iter()
                .find(|lock| lock.bucket == digest && lock.seq == seq);
            match lock {
                Some(lock) if !node.byzantine => *locks.entry(lock.object_id).or_default() += 1,
                Some(_) => {}
                None => free += 1,
            }
        }
        let region_name = &self.buckets.get(bucket)?.region;
        let reachable = |count: u64| self.validators.is_quorum(region_name, count.saturating_add(free));
        if locks.len() < 2 || locks.values().any(|count| reachable(*count)) {
            return None;
        }
        let parts: Vec<String> = locks
            .iter()
            .map(|(id, count)| {
                let kind = if self.freezes_proposed.contains(id) {
                    "a freeze"
                } else {
                    "a batch"
                };
                format!("{count} for {kind}")
            })
            .collect();
        Some(format!(
            "bucket {bucket}: locks at seq {seq} split ({}, {free} free), no quorum possible: a takeover raced the \
             owner's batch",
            parts.join(", ")
        ))
    }

    fn final_checks(&mut self) {
        let expected = self.oracle.state_digest();
        for (index, node) in self.nodes.iter().enumerate().filter(|(_, n)| !n.failed) {
            if node.ledger.state_digest() != expected {
                self.fail(Violation::NodeState {
                    node: index,
                    detail: "state digest differs from the certified state after heal".into(),
                });
                return;
            }
            let checked = node
                .ledger
                .liquidity_report(&self.dist.id, &self.creds)
                .map_err(|error| Violation::NodeState {
                    node: index,
                    detail: format!("liquidity: {error}"),
                })
                .and_then(|report| check_liquidity(self.dist.total, &report));
            if let Err(violation) = checked {
                self.fail(violation);
                return;
            }
        }
        let ungobal = self.cert_meta.values().filter(|m| m.global_us.is_none()).count();
        if ungobal > 0 {
            self.fail(Violation::Liveness(format!(
                "{ungobal} certificates never reached global"
            )));
        }
    }

    fn outcome(mut self) -> RunOutcome {
        let end_us = self.converged_us.unwrap_or(self.now);
        self.trace.update(&end_us.to_le_bytes());
        self.trace.update(&self.oracle.state_digest());
        let trace_hash = self.trace.finalize().to_hex().to_string();
        let mut regional_ms = Vec::new();
        let mut global_ms = Vec::new();
        let (mut global, mut regional, mut provisional, mut received, mut rejected, mut exempt) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for record in &self.claims {
            if let Some(certified) = self.oracle.certified_claim(&record.claim.id) {
                let meta = self.cert_meta.get(&(
                    self.bucket_index.get(&certified.bucket).copied().unwrap_or(0),
                    certified.seq,
                ));
                if let Some(meta) = meta {
                    regional_ms.push(meta.formed_us.saturating_sub(record.created_us) as f64 / 1e3);
                    match meta.global_us {
                        Some(at) => {
                            global += 1;
                            global_ms.push(at.saturating_sub(record.created_us) as f64 / 1e3);
                        }
                        None => regional += 1,
                    }
                }
            } else if !record.valid || self.registry.is_funded(&record.slot) {
                rejected += 1;
            } else if self.exempt(&record.claim) {
                exempt += 1;
            } else if self.nodes.iter().any(|n| {
                n.owner
                    .in_flight()
                    .is_some_and(|b| b.claims().any(|c| c.id == record.claim.id))
            }) {
                provisional += 1;
            } else {
                received += 1;
            }
        }
        let n = self.cfg.nodes.max(1) as f64;
        let seconds = (end_us as f64 / 1e6).max(1e-6);
        let sent_msgs: u64 = self.nodes.iter().map(|n| n.sent_msgs).sum();
        let sent_bytes: u64 = self.nodes.iter().map(|n| n.sent_bytes).sum();
        let recv_msgs: u64 = self.nodes.iter().map(|n| n.recv_msgs).sum();
        let recv_bytes: u64 = self.nodes.iter().map(|n| n.recv_bytes).sum();
        let record = self.record();
        let summary = Summary {
            nodes: self.cfg.nodes,
            regions: self.cfg.regions,
            faults: self
                .cfg
                .script
                .as_ref()
                .map_or(self.cfg.profile.name(), |script| script.name)
                .to_owned(),
            duration_ms: self.cfg.duration_us / 1_000,
            virtual_end_ms: end_us / 1_000,
            converged_after_faults_ms: self
                .converged_us
                .map(|at| at.saturating_sub(self.cfg.duration_us) / 1_000),
            claims_submitted: self.claims.len() as u64,
            claims_global: global,
            claims_regional: regional,
            claims_provisional: provisional,
            claims_received: received,
            claims_rejected: rejected,
            claims_exempt_byzantine_owner: exempt,
            certificates: self.registry.len() as u64,
            regional_p50_ms: percentile(&mut regional_ms, 50.0),
            regional_p99_ms: percentile(&mut regional_ms, 99.0),
            global_p50_ms: percentile(&mut global_ms, 50.0),
            global_p99_ms: percentile(&mut global_ms, 99.0),
            messages_sent_per_node: sent_msgs as f64 / n,
            messages_received_per_node: recv_msgs as f64 / n,
            bytes_sent_per_node: sent_bytes as f64 / n,
            bytes_received_per_node: recv_bytes as f64 / n,
            messages_per_node_per_s: (sent_msgs + recv_msgs) as f64 / n / seconds,
            bytes_per_node_per_s: (sent_bytes + recv_bytes) as f64 / n / seconds,
            max_messages_sent_by_a_node: self.nodes.iter().map(|n| n.sent_msgs).max().unwrap_or(0),
            events: self.events,
            byzantine_node: self.byzantine,
            counters: self.counters.clone(),
        };
        RunOutcome {
            seed: self.cfg.seed,
            trace_hash,
            failure: self.violation.map(|v| v.to_string()),
            summary,
            record,
        }
    }

    fn record(&self) -> RunRecord {
        let mut position = BTreeMap::new();
        let certificates: Vec<CertRecord> = self
            .cert_meta
            .iter()
            .enumerate()
            .map(|(index, ((bucket, seq), meta))| {
                position.insert((*bucket, *seq), index);
                CertRecord {
                    bucket: *bucket,
                    seq: *seq,
                    freeze: meta.freeze,
                    proposer: meta.proposer,
                    collector: meta.collector,
                    formed_us: meta.formed_us,
                    global_us: meta.global_us,
                }
            })
            .collect();
        let distribution = self.oracle.distribution(&self.dist.id);
        let claims = self
            .claims
            .iter()
            .map(|record| {
                let certificate = self.oracle.certified_claim(&record.claim.id).and_then(|certified| {
                    let bucket = self.bucket_index.get(&certified.bucket)?;
                    position.get(&(*bucket, certified.seq)).copied()
                });
                ClaimTrace {
                    created_us: record.created_us,
                    valid: record.valid,
                    home: distribution
                        .and_then(|d| d.home_bucket(&record.claim.claimant))
                        .and_then(|home| self.bucket_index.get(&home).copied()),
                    provisional_us: record.provisional_us,
                    held: record.held,
                    duplicate: certificate.is_none() && self.registry.is_funded(&record.slot),
                    certificate,
                }
            })
            .collect();
        RunRecord {
            regions: self.nodes.iter().map(|n| n.region).collect(),
            successors: self.successors.clone(),
            certificates,
            claims,
            snapshots: self.snapshots.clone(),
            final_digests: self.digests(),
            failures: self.failures.clone(),
        }
    }
}

fn voter_config() -> VoterConfig {
    VoterConfig {
        clock_skew_ms: SKEW_TOLERANCE_MS,
    }
}

fn owner_config() -> OwnerConfig {
    OwnerConfig {
        batch_claims_max: BATCH_CLAIMS_MAX,
        clock_skew_ms: SKEW_TOLERANCE_MS,
    }
}
